"""Tests for grpo_helpers.traces: every claim a cold-start trace writes is checked against independent arithmetic."""

from __future__ import annotations

import random
import re
from collections import Counter

import pytest

from grpo_helpers.countdown import game
from grpo_helpers.countdown.claims import check_claims
from grpo_helpers.countdown.rewards import equation_reward, evaluate_expression, format_reward
from grpo_helpers.countdown.traces import make_trace, make_traces

TIERS = ("2x20", "3x20", "3x99", "4x99")
STEP = re.compile(r"^(\d+) ([-+*/]) (\d+) = (\d+), then ((?:\d+ )*\d+)(: no)?\.$")
CHECK = re.compile(r"^(\d+) ([-+*/]) (\d+) = (\d+)(?:, not (\d+)|\. (Found it))\.$")
TAIL = re.compile(r"\n</think>\n<answer>([^<>]*)</answer>$")
SLIP = re.compile(r"^(\d+ [-+*/] \d+) = (\d+)\. Check: \1 = (\d+), not \2(.*)$")
VERIFY = re.compile(r"^Verify: (.+)\. All numbers used once\.$")


def tasks_of(tier: str, n: int, seed: int) -> list[dict]:
    size, largest = map(int, tier.split("x"))
    return game.generate_countdown(n, sizes=(size,), max_number=largest, seed=seed)


@pytest.fixture(scope="module")
def tiered_tasks() -> dict[str, list[dict]]:
    return {tier: tasks_of(tier, 40, seed=11 + i) for i, tier in enumerate(TIERS)}


# ---------------------------------------------------------------------------------------------------------------
# Independent reference: whole, non-negative steps only (the trace's own rules), written without the module's code


def whole_results(a: int, b: int) -> dict[str, int]:
    hi, lo = max(a, b), min(a, b)
    out = {"+": hi + lo, "-": hi - lo, "*": hi * lo}
    if lo and hi % lo == 0:
        out["/"] = hi // lo
    return out


def whole_solvable(values: tuple[int, ...], target: int, memo: dict | None = None) -> bool:
    memo = {} if memo is None else memo
    key = tuple(sorted(values))
    if key not in memo:
        if len(key) == 1:
            memo[key] = key[0] == target
        else:
            memo[key] = any(
                whole_solvable(tuple(x for k, x in enumerate(key) if k not in (i, j)) + (r,), target, memo)
                for i in range(len(key)) for j in range(i + 1, len(key))
                for r in whole_results(key[i], key[j]).values())
    return memo[key]


def without_slip(line: str, target: int) -> tuple[str, bool]:
    """A line with a deliberate slip ("9 * 4 = 34. Check: 9 * 4 = 36, not 34, then 2 36.") as the line it would be
    without it, after checking the slip is false and is caught on the spot; (line, whether it had a slip)."""
    m = SLIP.match(line)
    if not m:
        return line, False
    a, op, b = m[1].split(" ")
    assert whole_results(int(a), int(b)).get(op) != int(m[2]), f"the slip {m[1]} = {m[2]} is true: {line!r}"
    if m[4] == ".":  # a miss among the last checks, first claimed to hit the target
        assert int(m[2]) == target, f"a slip in the last checks claims the target: {line!r}"
        return f"{m[1]} = {m[3]}, not {target}.", True
    assert m[4] == ". Found it." or m[4].startswith(", then "), f"a slip in an unexpected place: {line!r}"
    return f"{m[1]} = {m[3]}{m[4]}", True


def check_verify(line: str, nums: list[int], target: int) -> None:
    """The final check recomputes the answer from the given numbers: true steps that use each number once, then
    the results, ending at the target."""
    m = VERIFY.match(line)
    assert m, f"not a final check: {line!r}"
    state = Counter(nums)
    for step in m[1].split(", "):
        a, op, b, _, c = step.split(" ")
        assert whole_results(int(a), int(b)).get(op) == int(c), f"false step {step!r} in {line!r}"
        assert state[int(a)] >= 1 and state[int(b)] >= 1 + (a == b), f"{step!r} uses numbers not on the table"
        state = state - Counter([int(a), int(b)]) + Counter([int(c)])
    assert state == Counter([target]), f"{line!r} does not end at {target} with every number used once"


def check_trace(completion: str, nums: list[int], target: int, *, recover: bool = False) -> None:
    """Replays the trace: every step's arithmetic, the numbers left after it, every 'no.', and the checks of the
    last two numbers (every operation in order, each compared with the target, up to the one that hits it). A
    recovering trace may make one slip, caught where it is made, and ends with a final check (`check_verify`)."""
    tail = TAIL.search(completion)
    assert tail, f"trace does not end with </think> and an answer block: {completion!r}"
    assert completion.startswith(" "), "the trace continues the prompt's '<think>' after a space"
    lines = completion[1:tail.start()].split("\n")
    if recover:
        check_verify(lines.pop(), nums, target)
    unslipped = [without_slip(line, target) for line in lines]
    assert sum(slipped for _, slipped in unslipped) <= (1 if recover else 0), f"too many slips: {lines!r}"
    lines = [line for line, _ in unslipped]
    state = Counter(nums)
    while lines and STEP.match(lines[0]):
        line = lines.pop(0)
        m = STEP.match(line)
        a, op, b, c = int(m[1]), m[2], int(m[3]), int(m[4])
        assert a >= b, f"larger operand first: {line!r}"
        assert whole_results(a, b).get(op) == c, f"false arithmetic: {line!r}"
        assert state[a] >= 1 and state[b] >= 1 + (a == b), f"{line!r} uses numbers not on the table {dict(state)}"
        left = Counter(map(int, m[5].split()))
        assert left == state - Counter([a, b]) + Counter([c]), f"{line!r}: wrong numbers left from {dict(state)}"
        solvable = whole_solvable(tuple(left.elements()), target)
        if m[6]:  # a dead end: the numbers left cannot make the target with whole non-negative steps
            assert not solvable, f"{line!r} says no, but {sorted(left.elements())} can make {target}"
        else:
            assert solvable, f"{line!r} is taken, but {sorted(left.elements())} cannot make {target}"
            state = left
    checks = [CHECK.match(line) for line in lines]
    assert lines and all(checks), f"unexpected check lines {lines!r} in {completion!r}"
    a, b = int(checks[0][1]), int(checks[0][3])
    assert a >= b and state == Counter([a, b]), f"the checks {lines!r} are not about the table {dict(state)}"
    results = whole_results(a, b)
    ops = list(results)
    first_hit = next(i for i, op in enumerate(ops) if results[op] == target)
    assert [m[2] for m in checks] == ops[:first_hit + 1], f"not every operation up to the hit, in order: {lines!r}"
    for m in checks:
        assert (int(m[1]), int(m[3])) == (a, b) and int(m[4]) == results[m[2]], f"false check {m[0]!r}"
        if m[6]:
            assert int(m[4]) == target, f"{m[0]!r} claims the target {target}"
        else:
            assert int(m[5]) == target and int(m[4]) != target, f"{m[0]!r} is not a check against {target}"
    assert checks[-1][6], f"the last check must hit the target: {lines[-1]!r}"
    # the answer block holds an expression over exactly the task's numbers (equation_reward checks its value)
    assert sorted(map(int, re.findall(r"\d+", tail[1]))) == sorted(nums)


# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tier", TIERS)
def test_traces_score_full_reward_and_every_claim_is_true(tiered_tasks, tier):
    tasks = tiered_tasks[tier]
    rows = make_traces(tasks, seed=0)
    assert len(rows) >= len(tasks) // 2, f"only {len(rows)} of {len(tasks)} {tier} tasks got a trace"
    completions = [r["completion"] for r in rows]
    assert format_reward(completions) == [1.0] * len(rows)
    assert equation_reward(completions, nums=[r["nums"] for r in rows], target=[r["target"] for r in rows]) \
        == [1.0] * len(rows)
    for row in rows:
        check_trace(row["completion"], row["nums"], row["target"])


@pytest.mark.parametrize("tier", TIERS)
def test_make_traces_keeps_exactly_the_whole_number_solvable_tasks(tiered_tasks, tier):
    tasks = tiered_tasks[tier]
    rows = make_traces(tasks, seed=3)
    kept = [t for t in tasks if whole_solvable(tuple(t["nums"]), t["target"])]
    assert [{k: v for k, v in r.items() if k != "completion"} for r in rows] == kept  # task fields kept, in order
    if tier.startswith("2"):  # two numbers: no fraction can help, every (solvable) task gets a trace
        assert len(rows) == len(tasks)


def test_traces_are_deterministic_for_a_seed_and_differ_between_seeds(tiered_tasks):
    tasks = tiered_tasks["3x20"] + tiered_tasks["4x99"]
    first, again, other = make_traces(tasks, seed=5), make_traces(tasks, seed=5), make_traces(tasks, seed=6)
    assert first == again
    assert [r["completion"] for r in first] != [r["completion"] for r in other]
    assert [r["nums"] for r in first] == [r["nums"] for r in other]  # the same tasks, written differently
    # and the rng passed to make_trace is what varies them
    task = tiered_tasks["4x99"][0]
    texts = {make_trace(task["nums"], task["target"], rng=random.Random(s)) for s in range(20)}
    assert len(texts) > 1


def test_trace_shape_for_a_known_task():
    trace = make_trace([9, 4, 2], 18, rng=random.Random(0))
    check_trace(trace, [9, 4, 2], 18)
    assert trace.endswith("</think>\n<answer>" + trace.rsplit("<answer>", 1)[1])
    assert equation_reward([trace], nums=[[9, 4, 2]], target=[18]) == [1.0]
    two = make_trace([7, 3], 21, rng=random.Random(0))
    assert two == " 7 + 3 = 10, not 21.\n7 - 3 = 4, not 21.\n7 * 3 = 21. Found it.\n</think>\n<answer>7 * 3</answer>"


@pytest.mark.parametrize("nums,target", [
    ([1, 1], 7),  # impossible
    ([5], 5),  # a single number is no game
    ([3, 3, 8, 8], 24),  # possible, but only through the fraction 8 / 3
])
def test_tasks_without_a_whole_number_solution_get_no_trace(nums, target):
    assert make_trace(nums, target, rng=random.Random(0)) is None
    assert make_traces([{"nums": nums, "target": target}], seed=0) == []
    if len(nums) == 4:  # the solver finds the fractional solution the trace cannot write
        answer = game.solve(nums, target)
        assert answer is not None and evaluate_expression(answer) == target


def test_make_traces_leaves_out_only_the_unsolvable_task():
    tasks = [{"nums": [2, 3], "target": 6}, {"nums": [1, 1], "target": 7}, {"nums": [9, 4, 2], "target": 18}]
    rows = make_traces(tasks, seed=0)
    assert [(r["nums"], r["target"]) for r in rows] == [([2, 3], 6), ([9, 4, 2], 18)]


@pytest.mark.parametrize("tier", TIERS)
def test_recovering_traces_make_one_caught_slip_and_verify_the_answer(tiered_tasks, tier):
    """Every claim is true except the marked slip, caught in its own line; the claim checker of the aha metric
    (countdown/claims.py) sees exactly that slip corrected and nothing left standing."""
    tasks = tiered_tasks[tier]
    rows = make_traces(tasks, seed=1, recovery_share=1.0)
    assert len(rows) == len(make_traces(tasks, seed=1))  # the same tasks get a trace
    places: Counter = Counter()
    for row in rows:
        check_trace(row["completion"], row["nums"], row["target"], recover=True)
        claims = check_claims(row["completion"])
        assert claims.uncorrected == [] and len(claims.corrected) == 1, row["completion"]
        slip = next(line for line in row["completion"].split("\n") if "Check:" in line)
        places["hit" if slip.endswith("Found it.") else "step" if ", then " in slip else "miss"] += 1
    # on a step taken, on a miss among the last checks, on the hit itself (2 numbers: no step to take)
    assert set(places) == ({"hit", "miss"} if tier.startswith("2") else {"hit", "miss", "step"}), places
    assert equation_reward([r["completion"] for r in rows], nums=[r["nums"] for r in rows],
                           target=[r["target"] for r in rows]) == [1.0] * len(rows)


def test_recovery_share_mixes_traces_and_zero_leaves_them_unchanged(tiered_tasks):
    tasks = tiered_tasks["3x20"] + tiered_tasks["4x99"]
    assert make_traces(tasks, seed=4, recovery_share=0.0) == make_traces(tasks, seed=4)
    mixed = make_traces(tasks, seed=4, recovery_share=0.5)
    share = sum("\nVerify: " in r["completion"] for r in mixed) / len(mixed)
    assert 0.3 <= share <= 0.7, share
    for row in mixed:
        clean = check_claims(row["completion"]).corrected == []
        assert clean or "\nVerify: " in row["completion"]  # slips only in recovering traces
    for bad in (-0.1, 1.5, "half", True):
        with pytest.raises(ValueError, match="recovery_share"):
            make_traces(tasks, seed=4, recovery_share=bad)


def test_the_replay_check_catches_slips_that_are_not_caught():
    good = (" 9 * 4 = 34. Check: 9 * 4 = 36, not 34, then 2 36.\n36 + 2 = 38, not 18.\n"
            "36 - 2 = 18. Check: 36 - 2 = 34, not 18.\n36 * 2 = 72, not 18.\n36 / 2 = 18. Found it.\n"
            "Verify: 9 * 4 = 36, 36 / 2 = 18. All numbers used once.\n</think>\n<answer>(9 * 4) / 2</answer>")
    with pytest.raises(AssertionError, match="too many slips"):  # two slips where one is allowed
        check_trace(good, [9, 4, 2], 18, recover=True)
    one = good.replace("36 - 2 = 18. Check: 36 - 2 = 34, not 18.", "36 - 2 = 34, not 18.")
    check_trace(one, [9, 4, 2], 18, recover=True)
    with pytest.raises(AssertionError):  # a clean trace has no slip
        check_trace(one.replace("\nVerify: 9 * 4 = 36, 36 / 2 = 18. All numbers used once.", ""), [9, 4, 2], 18)
    for bad in (one.replace("9 * 4 = 34. Check: 9 * 4 = 36, not 34,", "9 * 4 = 34,"),  # the slip not caught
                one.replace("Check: 9 * 4 = 36, not 34", "Check: 9 * 4 = 35, not 34"),  # a false re-check
                one.replace("9 * 4 = 34. Check: 9 * 4 = 36, not 34", "9 * 4 = 36. Check: 9 * 4 = 36, not 36"),  # no slip
                one.replace("Verify: 9 * 4 = 36,", "Verify: 9 * 4 = 35,"),  # a false final check
                one.replace("Verify: 9 * 4 = 36, 36 / 2 = 18.", "Verify: 9 * 4 = 36."),  # not at the target
                one.replace("\nVerify: 9 * 4 = 36, 36 / 2 = 18. All numbers used once.", "")):  # no final check
        with pytest.raises(AssertionError):
            check_trace(bad, [9, 4, 2], 18, recover=True)


def test_the_replay_check_catches_false_claims():
    """The checker above is what makes these tests able to fail: a tampered trace is rejected."""
    good = (" 9 + 4 = 13, then 2 13: no.\n9 * 4 = 36, then 2 36.\n36 + 2 = 38, not 18.\n36 - 2 = 34, not 18.\n"
            "36 * 2 = 72, not 18.\n36 / 2 = 18. Found it.\n</think>\n<answer>(9 * 4) / 2</answer>")
    check_trace(good, [9, 4, 2], 18)
    for bad in (good.replace("9 + 4 = 13", "9 + 4 = 14").replace("2 13", "2 14"),  # false sum
                good.replace("then 2 13: no.", "then 2 12: no."),  # wrong numbers left
                good.replace("9 + 4 = 13, then 2 13: no.", "9 * 4 = 36, then 2 36: no."),  # a false no: 36 / 2 = 18
                good.replace("36 / 2 = 18", "36 / 2 = 17"),  # false quotient, target missing
                good.replace("36 - 2 = 34, not 18.\n", ""),  # an operation skipped
                good.replace("38, not 18", "38, not 19"),  # checked against the wrong target
                good.replace("36 * 2 = 72, not 18.\n36 / 2 = 18. Found it.", "36 * 2 = 72. Found it."),  # false hit
                good.replace("</answer>", "</answer> ")):  # not the exact ending
        with pytest.raises(AssertionError):
            check_trace(bad, [9, 4, 2], 18)
