"""Verified reasoning traces for a cold start: a short search in words, written by the solver.

A 135M model samples no correct (and no well-formed) Countdown answer at all, so RL from it has nothing to
amplify. DeepSeek-R1 starts RL from a small supervised "cold start" on good reasoning; Stream-of-Search trains a
small model on search traces. A trace here is what we want the policy to write after the prompt's `<think>`:
a few combinations of two numbers checked against the target (dead ends said to be dead ends), then the
combination that works, then the answer:

     9 + 4 = 13, then 2 13: no.
    9 * 4 = 36, then 2 36.
    36 + 2 = 38, not 18.
    36 - 2 = 34, not 18.
    36 * 2 = 72, not 18.
    36 / 2 = 18. Found it.
    </think>
    <answer>(9 * 4) / 2</answer>

The last two numbers are tried one operation per line (+, -, *, / in that order), each result compared with
the target right where it is written, stopping at the one that hits: the answer then copies the line just
above it. (An earlier layout listed all results on one line, "36 and 2: 38 (+), 34 (-), 72 (*), 18 (/). Yes.",
and the cold-started model often computed the right result and then answered with the wrong operation.)
Every claim in a trace is computed. Only whole non-negative intermediate values are used (so the words stay
simple): a dead end's "no" means no way on from there with such steps (the game also allows fractions, which the
traces never use). Each trace is kept only when the reward functions give it format 1 and equation 1.

A recovering trace (`recover=True`; the cold start's `sft_recovery_share`) shows what clean traces never do: a
mistake caught. One step is first miscomputed and re-checked on the spot, and the answer is recomputed from the
given numbers before `</think>` (Gandhi et al. 2025: traces with verification and backtracking let RL improve a
small model on Countdown where clean ones did not):

     9 * 4 = 34. Check: 9 * 4 = 36, not 34, then 2 36.
    36 + 2 = 38, not 18.
    ...
    36 / 2 = 18. Found it.
    Verify: 9 * 4 = 36, 36 / 2 = 18. All numbers used once.

The slip falls on a step taken (as above), on a miss of the last two numbers first claimed to hit ("36 - 2 = 18.
Check: 36 - 2 = 34, not 18."), or on the hit itself. Every other claim is true, and the slip is corrected in the
line that makes it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Sequence

from grpo_helpers.countdown.game import solvable_in_whole_steps
from grpo_helpers.countdown.rewards import ANSWER_CLOSE, ANSWER_OPEN, THINK_CLOSE, equation_reward, format_reward

MAX_DEAD_ENDS = 2  # failed first steps written before the one that works (0..MAX_DEAD_ENDS, drawn per trace)


@dataclass(frozen=True)
class Item:
    """A number on the table and the expression that made it."""

    value: int
    expr: str
    atomic: bool  # a given number (needs no parentheses inside a larger expression)


def _wrap(item: Item) -> str:
    return item.expr if item.atomic else f"({item.expr})"


def _moves(a: Item, b: Item) -> list[tuple[str, Item, str]]:
    """Every whole, non-negative result of one operation on a and b, larger operand first:
    (op, the new item, the step in words such as "9 - 4 = 5")."""
    if a.value < b.value:
        a, b = b, a
    out = [("+", a.value + b.value), ("-", a.value - b.value), ("*", a.value * b.value)]
    if b.value and a.value % b.value == 0:
        out.append(("/", a.value // b.value))
    return [(op, Item(value, f"{_wrap(a)} {op} {_wrap(b)}", False), f"{a.value} {op} {b.value} = {value}")
            for op, value in out]


def _pairs(items: tuple[Item, ...]) -> list[tuple[int, int]]:
    return [(i, j) for i in range(len(items)) for j in range(i + 1, len(items))]


@dataclass
class Writer:
    """What one trace's writing carries along: the rng, whether a deliberate slip is still to come, and the steps
    that make the answer (its final check recomputes them)."""

    rng: random.Random
    slip_pending: bool
    path: list[str] = field(default_factory=list)

    def slip_now(self, places: int) -> int | None:
        """Which of `places` places to slip on, or None (no slip pending, or nowhere to slip)."""
        if not self.slip_pending or places == 0:
            return None
        self.slip_pending = False
        return self.rng.randrange(places)


def _slipped(words: str, wrong: int) -> str:
    """"9 * 4 = 36" written first as a false claim and then re-checked: "9 * 4 = 34. Check: 9 * 4 = 36, not 34"."""
    operation = words.rsplit(" = ", 1)[0]
    return f"{operation} = {wrong}. Check: {words}, not {wrong}"


def _last_step_lines(a: Item, b: Item, target: int, writer: Writer) -> tuple[list[str], Item | None]:
    """One line per operation on the last two numbers, each checked against the target, up to the one that hits
    it; that item, or None (every line then says "not"). A pending slip claims the target for one of the misses
    (the bundled model's own failure, "13 * 10 = 16. Found it.") and re-checks it on the spot; with no miss before
    the hit, the hit itself is first miscomputed."""
    moves = _moves(a, b)
    hit = next((i for i, (_, made, _) in enumerate(moves) if made.value == target), len(moves))
    slip = writer.slip_now(max(hit, 1) if hit < len(moves) else 0)
    lines = []
    for i, (_, made, words) in enumerate(moves):
        if made.value == target:
            writer.path.append(words)
            line = _slipped(words, _wrong_value(target, writer.rng)) if i == slip else words
            return lines + [f"{line}. Found it."], made
        lines.append(f"{_slipped(words, target)}." if i == slip else f"{words}, not {target}.")
    return lines, None


def _wrong_value(right: int, rng: random.Random) -> int:
    """A plausible slip: off by 1 to 3, never negative, never right."""
    return rng.choice([v for v in (right - 3, right - 2, right - 1, right + 1, right + 2, right + 3) if v >= 0])


def _search(items: tuple[Item, ...], target: int, writer: Writer, lines: list[str]) -> Item | None:
    """Write the search for target over items into lines; returns the final item (always found when solvable).
    A pending slip lands on the step taken half the time, else later."""
    if len(items) == 2:
        checks, hit = _last_step_lines(items[0], items[1], target, writer)
        lines.extend(checks)
        return hit
    rng = writer.rng
    memo: dict = {}  # the solver's tables, shared by the checks of this step's moves
    good, dead = [], []
    for i, j in _pairs(items):
        rest = tuple(x for k, x in enumerate(items) if k not in (i, j))
        for _, made, words in _moves(items[i], items[j]):
            solvable = solvable_in_whole_steps([x.value for x in rest + (made,)], target, memo=memo)
            (good if solvable else dead).append((words, made, rest))
    if not good:
        return None
    rng.shuffle(dead)
    for words, made, rest in dead[:rng.randint(0, MAX_DEAD_ENDS)]:
        left = " ".join(str(x.value) for x in rest + (made,))
        lines.append(f"{words}, then {left}: no.")
    words, made, rest = rng.choice(good)
    left = " ".join(str(x.value) for x in rest + (made,))
    slip = writer.slip_now(2) if writer.slip_pending else None  # 0: slip here; 1: keep it for a later step
    if slip == 0:
        lines.append(f"{_slipped(words, _wrong_value(made.value, rng))}, then {left}.")
    else:
        writer.slip_pending = slip == 1
        lines.append(f"{words}, then {left}.")
    writer.path.append(words)
    return _search(rest + (made,), target, writer, lines)


def make_trace(nums: Sequence[int], target: int, *, rng: random.Random, recover: bool = False) -> str | None:
    """The completion (text after the prompt's `<think>`) for one task, or None when no whole-number solution
    exists. The caller's rng picks the dead ends and the order, so traces vary from task to task. With `recover`,
    one step goes wrong and is re-checked where it is written ("Check: ..."), and a last line recomputes the answer's
    steps from the given numbers before `</think>`."""
    items = tuple(Item(int(n), str(int(n)), True) for n in nums)
    if len(items) == 1:
        return None
    writer, lines = Writer(rng=rng, slip_pending=recover), []
    found = _search(items, int(target), writer, lines)
    if found is None:
        return None
    if recover:
        lines.append(f"Verify: {', '.join(writer.path)}. All numbers used once.")
    return " " + "\n".join(lines) + f"\n{THINK_CLOSE}\n{ANSWER_OPEN}{found.expr}{ANSWER_CLOSE}"


def make_traces(tasks: list[dict], *, seed: int, recovery_share: float = 0.0) -> list[dict]:
    """`{"nums", "target", "completion"}` for every task that has a whole-number solution, each verified by the
    reward functions (format 1 and equation 1); tasks without such a solution are left out. A `recovery_share` of
    the traces (drawn per task) show a slip caught and a final check (`make_trace(..., recover=True)`)."""
    if not (isinstance(recovery_share, (int, float)) and not isinstance(recovery_share, bool)
            and 0.0 <= recovery_share <= 1.0):
        raise ValueError(f"recovery_share={recovery_share!r} is not allowed: a number from 0 to 1")
    rng = random.Random(seed)
    rows = []
    for task in tasks:
        recover = recovery_share > 0 and rng.random() < recovery_share  # no draw at 0: clean traces stay as they were
        trace = make_trace(task["nums"], task["target"], rng=rng, recover=recover)
        if trace is None:
            continue
        rows.append({**task, "completion": trace})
    if rows:
        completions = [r["completion"] for r in rows]
        formats = format_reward(completions)
        correct = equation_reward(completions, nums=[r["nums"] for r in rows], target=[r["target"] for r in rows])
        bad = [r for r, f, c in zip(rows, formats, correct) if f != 1.0 or c != 1.0]
        if bad:  # a bug in the writer, never the model's fault: fail loudly
            raise AssertionError(f"{len(bad)} traces fail the reward check, e.g. {bad[0]}")
    return rows
