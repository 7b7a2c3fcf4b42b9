"""The reward-hack property: under the CPU recipe's weights a task-independent answer earns (almost) nothing, a
correct well-formed answer earns the maximum. The seed's shaped weights pay a fixed answer 40 % (the hack).
Words and length pay nothing: corrections, re-checks and padding never raise a wrong answer's reward."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from grpo_helpers.countdown import game, prompts
from grpo_helpers.config import PRESETS
from grpo_helpers.countdown.rewards import (
    GROUNDED_WEIGHTS, REWARD_FUNCTIONS, SHAPED_WEIGHTS, closeness_reward, evaluate_expression, expression_numbers,
    grounded_format_reward, score_completions,
)

TIERS = ("2x10", "2x20", "3x20", "3x99", "4x99")
TASKS_PER_TIER = 420  # 2100 tasks in all

# Answers that do not look at the task: what a policy that stopped reading the prompt writes.
CONSTANT_COMPLETIONS = {
    "example_well_formed": f" x</think>\n<answer>{prompts.EXAMPLE_ANSWER}</answer>",
    "example_no_think": f"<answer>{prompts.EXAMPLE_ANSWER}</answer>",
    "bare_one": " I think</think>\n<answer>1</answer>",
    "empty_answer": " hmm</think>\n<answer> </answer>",
    "no_reasoning_empty_answer": "</think>\n<answer></answer>",
    "fixed_expression": " 5 plus 7 doubled</think>\n<answer>(5 + 7) * 2</answer>",
    "empty_string": "",
    "long_junk": ("1 + 2 = 3 </think> <answer> ((( 9 * 9 " * 400) + "</answer>",
}


def well_formed(answer: str) -> str:
    return f" reasoning</think>\n<answer>{answer}</answer>"


@pytest.fixture(scope="module")
def tasks() -> list[dict]:
    rows = []
    for i, tier in enumerate(TIERS):
        size, largest = map(int, tier.split("x"))
        rows += game.generate_countdown(TASKS_PER_TIER, sizes=(size,), max_number=largest, seed=100 + i)
    assert len(rows) >= 2000
    return rows


def mean_total(completion: str, tasks: list[dict], weights: dict[str, float]) -> float:
    scores = score_completions([completion] * len(tasks), nums=[t["nums"] for t in tasks],
                               target=[t["target"] for t in tasks], weights=weights)
    return sum(scores.total) / len(tasks)


def test_cpu_preset_uses_the_grounded_weights():
    assert PRESETS["cpu"]["reward_weights"] == GROUNDED_WEIGHTS


def test_grounded_weights_maximum_is_the_sum_of_weights():
    assert set(GROUNDED_WEIGHTS) <= set(REWARD_FUNCTIONS)
    assert sum(GROUNDED_WEIGHTS.values()) == pytest.approx(1.5)
    assert all(w > 0 for w in GROUNDED_WEIGHTS.values())


@pytest.mark.parametrize("name", list(CONSTANT_COMPLETIONS))
def test_a_task_independent_answer_earns_at_most_a_tenth_of_the_maximum(tasks, name):
    maximum = sum(GROUNDED_WEIGHTS.values())
    mean = mean_total(CONSTANT_COMPLETIONS[name], tasks, GROUNDED_WEIGHTS)
    assert mean <= 0.1 * maximum, f"{name!r} earns {mean:.3f} on average, {mean / maximum:.0%} of the maximum"


def test_a_correct_well_formed_answer_earns_exactly_the_maximum(tasks):
    maximum = sum(GROUNDED_WEIGHTS.values())
    answers = [t["solution"] for t in tasks]
    scores = score_completions([well_formed(a) for a in answers], nums=[t["nums"] for t in tasks],
                               target=[t["target"] for t in tasks], weights=GROUNDED_WEIGHTS)
    assert scores.total == [maximum] * len(tasks)
    # the exhaustive solver's answers (other expressions than the generator's) earn it too
    some = tasks[::50]
    solved = [game.solve(t["nums"], t["target"]) for t in some]
    scores = score_completions([well_formed(a) for a in solved], nums=[t["nums"] for t in some],
                               target=[t["target"] for t in some], weights=GROUNDED_WEIGHTS)
    assert scores.total == [maximum] * len(some)


def test_a_correct_answer_beats_every_constant_on_every_task(tasks):
    some = tasks[::7]
    nums, target = [t["nums"] for t in some], [t["target"] for t in some]
    correct = score_completions([well_formed(t["solution"]) for t in some], nums=nums, target=target,
                                weights=GROUNDED_WEIGHTS).total
    for name, completion in CONSTANT_COMPLETIONS.items():
        constant = score_completions([completion] * len(some), nums=nums, target=target,
                                     weights=GROUNDED_WEIGHTS).total
        assert all(c > k for c, k in zip(correct, constant)), name


def test_shaped_weights_pay_the_prompts_example_the_hack(tasks):
    """The seed's shaped recipe does NOT have the property: copying the example earns >= 30 % everywhere."""
    maximum = sum(SHAPED_WEIGHTS.values())
    mean = mean_total(CONSTANT_COMPLETIONS["example_well_formed"], tasks, SHAPED_WEIGHTS)
    assert mean >= 0.3 * maximum
    assert mean == pytest.approx(0.4 * maximum, abs=0.01)  # think_closed + answer_block + format, on every task
    assert mean_total(CONSTANT_COMPLETIONS["example_well_formed"], tasks, GROUNDED_WEIGHTS) < 0.01 * maximum


# ---------------------------------------------------------------------------------------------------------------
# grounded_format_reward and closeness_reward


@pytest.mark.parametrize("completion,nums,want", [
    (well_formed("3 * 5 + 7"), [3, 5, 7], 1.0),  # correct
    (well_formed("3 + 5 + 7"), [7, 5, 3], 1.0),  # wrong value, right numbers: still grounded format
    (well_formed("(3 + 5) / (7 - 7)"), [3, 5, 7, 7], 1.0),  # undefined value, right numbers
    (well_formed("3 * 5 + 7"), [3, 5, 7, 1], 0.0),  # a number missing
    (well_formed("3 * 5 + 7 + 7"), [3, 5, 7], 0.0),  # a number used twice
    (well_formed(prompts.EXAMPLE_ANSWER), [3, 5, 7], 0.0),  # the prompt's example
    (well_formed(prompts.EXAMPLE_ANSWER), [2, 3, 1], 1.0),  # ... on the one task it is built from
    ("<answer>3 * 5 + 7</answer>", [3, 5, 7], 0.0),  # right numbers, no think block
    (well_formed("3 * 5 + 7") + " done", [3, 5, 7], 0.0),  # text after the answer
    (well_formed("3 ** 5 + 7"), [3, 5, 7], 0.0),  # not in the grammar
    (well_formed(""), [3, 5, 7], 0.0),
    ("", [3, 5, 7], 0.0),
])
def test_grounded_format_reward(completion, nums, want):
    assert grounded_format_reward([completion], nums=[nums], target=[22]) == [want]


@pytest.mark.parametrize("answer,nums,target,want", [
    ("3 * 5 + 7", [3, 5, 7], 22, 1.0),  # exact
    ("3 + 5 + 7", [3, 5, 7], 22, 1 - 7 / 22),  # 15 for 22
    ("3 * (5 + 7)", [3, 5, 7], 22, 1 - 14 / 22),  # 36 for 22: above the target counts the same as below
    ("7 / (5 - 3)", [3, 5, 7], 22, 1 - 18.5 / 22),  # a fraction, 3.5
    ("3 * 5 * 7", [3, 5, 7], 22, 0.0),  # 105: farther than the target itself, floored at 0
    ("3 - 5 - 7", [3, 5, 7], 22, 0.0),  # -9
    ("2 - 1", [1, 2], 1, 1.0),
    ("2 + 1", [1, 2], 1, 0.0),  # 3 for 1: |3 - 1| / 1 = 2, floored
    ("3 * 5 + 7", [3, 5, 7, 1], 22, 0.0),  # wrong numbers: no credit even when the value is right
    ("3 * 5 + 7 + 1 - 1", [3, 5, 7], 22, 0.0),  # extra numbers
    ("(3 * 5 + 7) / (7 - 7)", [3, 5, 7, 7, 7], 22, 0.0),  # division by zero
    ("3 * 5 + 7 / 0", [3, 5, 7, 0], 22, 0.0),
    (prompts.EXAMPLE_ANSWER, [3, 5, 7], 22, 0.0),
    ("", [3, 5, 7], 22, 0.0),
])
def test_closeness_reward_values(answer, nums, target, want):
    got = closeness_reward([well_formed(answer)], nums=[nums], target=[target])
    assert got == [pytest.approx(want)]
    assert 0.0 <= got[0] <= 1.0


def test_closeness_is_monotone_in_the_distance_and_needs_no_layout():
    nums = [[10, 2]] * 4
    got = closeness_reward([well_formed("10 + 2"), well_formed("10 * 2"), well_formed("10 - 2"),
                            "<answer>10 / 2</answer>"], nums=nums, target=[12] * 4)
    assert got == [1.0, pytest.approx(1 - 8 / 12), pytest.approx(1 - 4 / 12), pytest.approx(1 - 7 / 12)]
    assert closeness_reward(["no answer at all"], nums=[[10, 2]], target=[12]) == [0.0]


def test_reward_columns_must_match_the_completions():
    with pytest.raises(ValueError):
        closeness_reward([well_formed("1 + 2")] * 2, nums=[[1, 2]], target=[3, 3])
    with pytest.raises(ValueError):
        grounded_format_reward([well_formed("1 + 2")], nums=None)
    with pytest.raises(TypeError):
        closeness_reward([None], nums=[[1, 2]], target=[3])


hostile = st.one_of(
    st.text(max_size=300),
    st.text(alphabet="0123456789+-*/() <>answer/think\n", max_size=300),
    st.builds(well_formed, st.text(alphabet="0123456789+-*/() .", max_size=80)),
)


@settings(max_examples=200, deadline=1000)  # the deadline is a hang guard
@given(completion=hostile, nums=st.lists(st.integers(1, 20), min_size=1, max_size=5), target=st.integers(1, 500))
def test_grounded_rewards_never_raise_on_junk(completion, nums, target):
    for fn in (grounded_format_reward, closeness_reward):
        got = fn([completion], nums=[nums], target=[target])
        assert len(got) == 1 and isinstance(got[0], float) and 0.0 <= got[0] <= 1.0
    total = score_completions([completion], nums=[nums], target=[target], weights=GROUNDED_WEIGHTS).total[0]
    assert 0.0 <= total <= sum(GROUNDED_WEIGHTS.values())


# ---------------------------------------------------------------------------------------------------------------
# Words and length pay nothing: traces that catch their own slips teach "Wait," and "Check:", so a policy could learn
# to write them (or just to write more) for reward instead of answering right. No reward may pay for them.

CORRECTIONS = ("Wait,", "Wait, that leaves 7 unused.", "Let me check.", "Let me check again:", "Actually,", "Aha!",
               "Hmm, that is wrong.", "I made a mistake.", "Double-check:", "Verified \u2713", "Correct!", "Found it.")
FILLER = ("", " ", "\n", "Let me think step by step.", "Okay.", "...")
TASK_INDEPENDENT = (prompts.EXAMPLE_ANSWER, "(5 + 7) * 2", "1", "")  # and the target alone, and the target + 0
NO_ANSWER = ("\n</think>\n", "\n</think>", "")  # the answer left out, or the completion cut before it


def solves(answer: str, nums: list[int], target: int) -> bool:
    """The game's rule, from the verifier's parts (not the reward under test)."""
    return sorted(expression_numbers(answer) or []) == sorted(nums) and evaluate_expression(answer) == target


@st.composite
def steps(draw, nums: list[int], target: int, *, honest: bool) -> str:
    """One step on two of the task's numbers: an honest trace line, or a re-check whose claim may be false."""
    a, b, op = draw(st.sampled_from(nums)), draw(st.sampled_from(nums)), draw(st.sampled_from("+-*/"))
    value = evaluate_expression(f"{a} {op} {b}")
    shown = "undefined" if value is None else str(value)
    if honest:
        return f"{a} {op} {b} = {shown}, not {target}."
    claim = draw(st.sampled_from([shown, str(target), str(draw(st.integers(0, 999)))]))
    step = f"{a} {op} {b}"
    return draw(st.sampled_from([f"Check: {step} = {shown}, not {claim}.", f"Verify: {step} = {claim} \u2713",
                                 f"{step} = {claim}. Found it.", f"Aha! {step} = {claim}, so {target}."]))


@st.composite
def stuffed_completions(draw, *, padding: bool) -> tuple[list[int], int, str, str]:
    """(nums, target, stuffed, plain): a completion ending in a wrong answer built from the task's numbers, a
    task-independent answer or no answer, with many (repeated) pieces inserted into its reasoning and after it,
    and the same completion without them. The pieces are correction words and re-check lines, true or false, or,
    with `padding`, filler and honest lines: length alone, ending in a wrong answer."""
    nums = draw(st.lists(st.integers(1, 99), min_size=2, max_size=4))
    target = draw(st.integers(1, 100))
    kind = "wrong" if padding else draw(st.sampled_from(["wrong", "task-independent", "none"]))
    if kind == "wrong":
        order = draw(st.permutations(nums))
        answer = str(order[0])
        for n in order[1:]:
            op = draw(st.sampled_from("+-*/"))
            answer = draw(st.sampled_from([f"{answer} {op} {n}", f"({answer}) {op} {n}", f"{n} {op} ({answer})"]))
    elif kind == "task-independent":
        answer = draw(st.sampled_from([*TASK_INDEPENDENT, str(target), f"{target} + 0"]))
    else:
        answer = None
    assume(answer is None or not solves(answer, nums, target))
    plain_lines = draw(st.lists(steps(nums, target, honest=True), max_size=4))
    if padding:
        piece = st.one_of(st.sampled_from(FILLER), steps(nums, target, honest=True))
    else:
        verify = [] if answer is None else [f"Verify: {answer} = {target} \u2713", f"So the answer is {answer}."]
        piece = st.one_of(st.sampled_from([*CORRECTIONS, *verify]), steps(nums, target, honest=False))
    pieces = draw(st.lists(piece, min_size=1, max_size=5)) * draw(st.integers(1, 40))
    inside = draw(st.integers(0, len(pieces)))  # the rest goes after the answer
    rng = draw(st.randoms(use_true_random=False))
    lines = list(plain_lines)
    for text in pieces[:inside]:
        lines.insert(rng.randint(0, len(lines)), text)
    ending = draw(st.sampled_from(NO_ANSWER)) if answer is None else f"\n</think>\n<answer>{answer}</answer>"
    after = "".join(f"\n{text}" for text in pieces[inside:])
    return nums, target, " " + "\n".join(lines) + ending + after, " " + "\n".join(plain_lines) + ending


def assert_pays_nothing(more: str, plain: str, *, nums: list[int], target: int) -> None:
    """Every reward function, and the CPU preset's weighted total, gives `more` at most what it gives `plain`, and
    neither solves the task. (Token counts for the overlong penalty are word counts here: more text, more tokens.)"""
    columns = {"nums": [nums] * 2, "target": [target] * 2, "max_completion_length": 160,
               "completion_lengths": [len(more.split()), len(plain.split())]}
    for name, function in REWARD_FUNCTIONS.items():
        got, without = function([more, plain], **columns)
        assert got <= without, f"{name} pays {got} with the words, {without} without: {more!r}"
    got, without = score_completions([more, plain], nums=columns["nums"], target=columns["target"],
                                     weights=PRESETS["cpu"]["reward_weights"]).total
    assert got <= without, f"the CPU recipe pays {got} with the words, {without} without: {more!r}"
    assert REWARD_FUNCTIONS["equation"]([more, plain], **columns) == [0.0, 0.0]


@settings(max_examples=300, deadline=1000)  # the deadline is a hang guard
@given(case=stuffed_completions(padding=False))
def test_correction_words_and_rechecks_pay_nothing(case):
    nums, target, stuffed, plain = case
    assert_pays_nothing(stuffed, plain, nums=nums, target=target)


@settings(max_examples=200, deadline=1000)
@given(case=stuffed_completions(padding=True))
def test_length_alone_pays_nothing(case):
    nums, target, padded, short = case
    assert_pays_nothing(padded, short, nums=nums, target=target)
