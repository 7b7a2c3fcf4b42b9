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
"""

from __future__ import annotations

import random
from dataclasses import dataclass
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


def _last_step_lines(a: Item, b: Item, target: int) -> tuple[list[str], Item | None]:
    """One line per operation on the last two numbers, each checked against the target, up to the one that hits
    it; that item, or None (every line then says "not")."""
    lines = []
    for _, made, words in _moves(a, b):
        if made.value == target:
            return lines + [f"{words}. Found it."], made
        lines.append(f"{words}, not {target}.")
    return lines, None


def _search(items: tuple[Item, ...], target: int, rng: random.Random, lines: list[str]) -> Item | None:
    """Write the search for target over items into lines; returns the final item (always found when solvable)."""
    if len(items) == 2:
        checks, hit = _last_step_lines(items[0], items[1], target)
        lines.extend(checks)
        return hit
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
    lines.append(f"{words}, then {left}.")
    return _search(rest + (made,), target, rng, lines)


def make_trace(nums: Sequence[int], target: int, *, rng: random.Random) -> str | None:
    """The completion (text after the prompt's `<think>`) for one task, or None when no whole-number solution
    exists. The caller's rng picks the dead ends and the order, so traces vary from task to task."""
    items = tuple(Item(int(n), str(int(n)), True) for n in nums)
    if len(items) == 1:
        return None
    lines: list[str] = []
    found = _search(items, int(target), rng, lines)
    if found is None:
        return None
    return " " + "\n".join(lines) + f"\n{THINK_CLOSE}\n{ANSWER_OPEN}{found.expr}{ANSWER_CLOSE}"


def make_traces(tasks: list[dict], *, seed: int) -> list[dict]:
    """`{"nums", "target", "completion"}` for every task that has a whole-number solution, each verified by the
    reward functions (format 1 and equation 1); tasks without such a solution are left out."""
    rng = random.Random(seed)
    rows = []
    for task in tasks:
        trace = make_trace(task["nums"], task["target"], rng=rng)
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
