from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grpo_helpers.config import load_config
from grpo_helpers.countdown.rewards import (
    GROUNDED_WEIGHTS, MAX_EXPRESSION_CHARS, REWARD_FUNCTIONS, SHAPED_WEIGHTS, SPARSE_WEIGHTS,
    evaluate_expression, expression_numbers, extract_answer, format_reward, score_completions,
)
from grpo_helpers.scoring import RewardBreakdown, zero_std_fraction

NAMES = ("think_closed", "answer_block", "format", "uses_numbers", "equation")  # the table below; see also
# tests/test_hack_proof_rewards.py for grounded_format and closeness


def ok(answer: str, reasoning: str = " 3 times 5 is 15, plus 7 is 22.") -> str:
    """A completion (text after the prefilled <think>) with the exact layout."""
    return f"{reasoning}</think>\n<answer>{answer}</answer>"


# (id, completion, nums, target, expected rewards in NAMES order)
CASES = [
    ("correct", ok("3 * 5 + 7"), [3, 5, 7], 22, (1, 1, 1, 1, 1)),
    ("correct_any_order", ok("7 + 5 * 3"), [3, 5, 7], 22, (1, 1, 1, 1, 1)),
    ("wrong_value", ok("3 + 5 + 7"), [3, 5, 7], 22, (1, 1, 1, 1, 0)),
    ("reused_number", ok("(3 * 5 + 7) * 7 / 7"), [3, 5, 7], 22, (1, 1, 1, 0, 0)),
    ("missing_number", ok("3 * 5 + 7"), [1, 3, 5, 7], 22, (1, 1, 1, 0, 0)),
    ("extra_number", ok("3 * 5 + 7 + 0"), [3, 5, 7], 22, (1, 1, 1, 0, 0)),
    ("power", ok("3 ** 2 + 13"), [3, 2, 13], 22, (1, 1, 1, 0, 0)),
    ("floor_div", ok("44 // 2"), [44, 2], 22, (1, 1, 1, 0, 0)),
    ("import", ok("__import__('os').system('echo pwned')"), [3, 5, 7], 22, (1, 1, 1, 0, 0)),
    ("names", ok("a * b + c"), [3, 5, 7], 22, (1, 1, 1, 0, 0)),
    ("float", ok("3 * 5 + 7.0"), [3, 5, 7], 22, (1, 1, 1, 0, 0)),
    ("float_half", ok("1.5 * 2"), [3], 3, (1, 1, 1, 0, 0)),
    ("unicode_digits", ok("٣ * ٥ + ٧"), [3, 5, 7], 22, (1, 1, 1, 0, 0)),
    ("tower_of_powers", ok("9**9**9"), [9, 9, 9], 22, (1, 1, 1, 0, 0)),
    ("division_by_zero", ok("3 * 5 + 7 + 1 / 0"), [3, 5, 7, 1, 0], 22, (1, 1, 1, 1, 0)),
    ("huge_literal", ok("9" * 150), [3, 5, 7], 22, (1, 1, 1, 0, 0)),
    ("deep_parens", ok("(" * 10_000 + "3 * 5 + 7" + ")" * 10_000), [3, 5, 7], 22, (1, 1, 1, 0, 0)),
    ("unary_minus", ok("-3 + 5 * 7"), [3, 5, 7], 32, (1, 1, 1, 0, 0)),
    ("equals_sign", ok("3 * 5 + 7 = 22"), [3, 5, 7], 22, (1, 1, 1, 0, 0)),
    ("leading_zero", ok("03 * 5 + 7"), [3, 5, 7], 22, (1, 1, 1, 0, 0)),
    ("exact_fractions", ok("8 / (3 - 8 / 3)"), [3, 3, 8, 8], 24, (1, 1, 1, 1, 1)),
    ("empty_answer", ok(""), [3, 5, 7], 22, (1, 1, 1, 0, 0)),
    ("two_answer_blocks", " r</think>\n<answer>3 + 5 + 7</answer><answer>3 * 5 + 7</answer>", [3, 5, 7], 22,
     (1, 0, 0, 1, 1)),
    ("answer_before_think_close", " r<answer>3 * 5 + 7</answer></think>\n", [3, 5, 7], 22, (1, 0, 0, 1, 1)),
    ("no_think_close", "<answer>3 * 5 + 7</answer>", [3, 5, 7], 22, (0, 0, 0, 1, 1)),
    ("no_newline", " r</think><answer>3 * 5 + 7</answer>", [3, 5, 7], 22, (1, 1, 0, 1, 1)),
    ("text_after_answer", ok("3 * 5 + 7") + " Done!", [3, 5, 7], 22, (1, 1, 0, 1, 1)),
    ("trailing_whitespace", ok("3 * 5 + 7") + "\n\n  \t", [3, 5, 7], 22, (1, 1, 1, 1, 1)),
    ("multiline_think", ok("3 * 5 + 7", reasoning="\nFirst, 3*5=15.\n\nThen 15+7=22.\n"), [3, 5, 7], 22,
     (1, 1, 1, 1, 1)),
    ("multiline_answer", ok("\n3 * 5\n+ 7\n"), [3, 5, 7], 22, (1, 1, 1, 1, 1)),
    ("crlf", " a\r\nb</think>\r\n<answer>3 * 5 + 7</answer>\r\n", [3, 5, 7], 22, (1, 1, 1, 1, 1)),
    ("second_think_in_reasoning", " r<think>again</think>\n<answer>3 * 5 + 7</answer>", [3, 5, 7], 22,
     (1, 1, 0, 1, 1)),
    ("think_tag_in_answer", ok("3 * 5 + 7</think>"), [3, 5, 7], 22, (1, 1, 0, 0, 0)),
    ("less_than_in_reasoning", ok("3 * 5 + 7", reasoning=" 15 < 22 and 3 > 1"), [3, 5, 7], 22, (1, 1, 1, 1, 1)),
    ("many_open_tags", " r</think>\n" + "<answer>" * 2000 + "3 * 5 + 7</answer>", [3, 5, 7], 22, (1, 0, 0, 1, 1)),
    ("empty", "", [3, 5, 7], 22, (0, 0, 0, 0, 0)),
    ("rambling", "I am not sure what to do here" * 100, [3, 5, 7], 22, (0, 0, 0, 0, 0)),
]


@pytest.mark.parametrize("completion,nums,target,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_reward_table(completion, nums, target, expected):
    for name, want in zip(NAMES, expected):
        got = REWARD_FUNCTIONS[name]([completion], nums=[nums], target=[target])
        assert got == [float(want)], f"{name}: got {got}, want {want}"


@pytest.mark.parametrize("text,expected", [
    ("1 + 2", Fraction(3)),
    ("(1/3)*3", Fraction(1)),
    ("1/3", Fraction(1, 3)),
    ("10 - 4 - 3", Fraction(3)),  # left-associative
    ("2 * (3 + 4)", Fraction(14)),
    ("  (((7)))\n", Fraction(7)),
    ("(" * 32 + "1" + ")" * 32, Fraction(1)),  # MAX_DEPTH parentheses are fine
    ("1+" * 31 + "1", Fraction(32)),  # 63 nodes, depth 32: at the limits
    ("999999999999 * " * 5 + "999999999999", Fraction(999999999999) ** 6),  # 240 bits: allowed
])
def test_evaluate_valid(text, expected):
    assert evaluate_expression(text) == expected


@pytest.mark.parametrize("text", [
    "", "   ", "1.5", "١٢", "１２", "9**9**9", "2 ** 3", "1/0", "5 / (3 - 3)", "7 // 2", "7 % 2", "-1", "+1", "~1",
    "__import__('os')", "a", "x.y", "'3'", "(1)(2)", "[1]", "1 if 1 else 2", "lambda: 1", "1_000", "0x10", "1e3",
    "1 < 2", "1 2", "(1 + 2", "1 + 2)", "07", "True", "9" * 13, "1 + " * 99 + "1", "(" * 33 + "1" + ")" * 33,
    "(" * 10_000 + "1" + ")" * 10_000, "1+" * 32 + "1", "999999999999 * " * 6 + "999999999999",
    "1" + " " * MAX_EXPRESSION_CHARS,
])
def test_evaluate_rejects(text):
    assert evaluate_expression(text) is None


def test_expression_numbers_keep_literals_of_undefined_values():
    assert expression_numbers("(1 + 2) / (3 - 3)") == [1, 2, 3, 3]
    assert evaluate_expression("(1 + 2) / (3 - 3)") is None
    assert expression_numbers("2 ** 3") is None


@pytest.mark.parametrize("completion,expected", [
    ("<answer> 1 + 2 </answer>", "1 + 2"),
    ("<answer>1</answer> then <answer>\n2\n</answer>", "2"),
    ("<answer>1</answer> then <answer>2", "1"),  # an unclosed block does not count
    ("<answer>a<answer>b</answer>", "b"),  # the open tag nearest the last close tag
    ("</answer><answer>", None),
    ("no tags", None),
])
def test_extract_answer(completion, expected):
    assert extract_answer(completion) == expected


def test_score_completions_weighted_total():
    completions = [ok("3 * 5 + 7"), ok("3 + 5 + 7"), " no idea", "<answer>3*5+7</answer>"]
    nums, target = [[3, 5, 7]] * 4, [22] * 4
    sparse = score_completions(completions, nums=nums, target=target, weights=SPARSE_WEIGHTS)
    shaped = score_completions(completions, nums=nums, target=target, weights=SHAPED_WEIGHTS)
    assert isinstance(sparse, RewardBreakdown)
    assert sparse.total == [2.0, 1.0, 0.0, 1.0]
    assert set(sparse.per_function) == {"format", "equation"}
    assert shaped.total == [2.5, 1.5, 0.0, 1.5]
    assert shaped.per_function["uses_numbers"] == [1.0, 1.0, 0.0, 1.0]
    halved = score_completions(completions, nums=nums, target=target, weights={"equation": 0.5})
    assert halved.total == [0.5, 0.0, 0.0, 0.5]


def test_score_completions_unknown_name():
    with pytest.raises(ValueError, match=r"'accuracy'.*'format', 'equation', 'think_closed'"):
        score_completions(["x"], nums=[[1]], target=[1], weights={"accuracy": 1.0})
    with pytest.raises(ValueError, match="at least one"):
        score_completions(["x"], nums=[[1]], target=[1], weights={})
    with pytest.raises(ValueError, match="'format'.*must be a number"):
        score_completions(["x"], nums=[[1]], target=[1], weights={"format": "1"})


def test_trl_style_kwargs_and_bad_columns():
    completions = [ok("1 + 2"), ok("1 * 2")]
    extra = dict(prompts=["p", "p"], completion_ids=[[1], [2]], trainer_state=None, solution=[None, None])
    assert REWARD_FUNCTIONS["equation"](completions, nums=[[1, 2], [1, 2]], target=[3, 3], **extra) == [1.0, 0.0]
    assert format_reward(completions, **extra) == [1.0, 1.0]
    with pytest.raises(ValueError, match="one entry per completion"):
        REWARD_FUNCTIONS["equation"](completions, nums=[[1, 2]], target=[3, 3])
    with pytest.raises(TypeError, match=r"completions\[1\]"):
        format_reward(["ok", None])


def test_registry_and_presets_match_config():
    assert set(REWARD_FUNCTIONS) == set(NAMES) | {"grounded_format", "closeness", "overlong_penalty"}
    assert set(SPARSE_WEIGHTS) <= set(REWARD_FUNCTIONS) and set(SHAPED_WEIGHTS) <= set(REWARD_FUNCTIONS)
    assert set(GROUNDED_WEIGHTS) <= set(REWARD_FUNCTIONS)
    assert load_config("cpu").rewards.reward_weights == GROUNDED_WEIGHTS


@pytest.mark.parametrize("totals,group_size,expected", [
    ([0.0, 0.0, 1.0, 0.0], 2, 0.5),
    ([1.0, 1.0, 1.0, 1.0], 2, 1.0),
    ([0.0, 0.5, 1.0, 0.0, 0.0, 2.5], 3, 0.0),
    ([0.1 + 0.2, 0.3], 2, 1.0),  # float noise is not variance
])
def test_zero_std_fraction(totals, group_size, expected):
    assert zero_std_fraction(totals, group_size) == expected


@pytest.mark.parametrize("totals,group_size", [([1.0, 2.0, 3.0], 2), ([], 2), ([1.0], 0)])
def test_zero_std_fraction_rejects(totals, group_size):
    with pytest.raises(ValueError, match="group_size"):
        zero_std_fraction(totals, group_size)


# --- properties -------------------------------------------------------------------------------------------------

FRAGMENTS = ["<think>", "</think>", "<answer>", "</answer>", "\n", "\r\n", " ", "(", ")", "+", "-", "*", "/", "**",
             "3", "5", "7", "22", "x", "<", ">", "١", "=", "."]
hostile_text = st.one_of(st.text(max_size=300), st.lists(st.sampled_from(FRAGMENTS), max_size=80).map("".join))


@settings(max_examples=300, deadline=1000)  # the deadline is a hang guard; speed targets live in bench/
@given(completion=hostile_text)
def test_any_text_scores_without_error(completion):
    breakdown = score_completions([completion], nums=[[3, 5, 7]], target=[22], weights=SHAPED_WEIGHTS)
    rewards = {name: values[0] for name, values in breakdown.per_function.items()}
    assert all(r in (0.0, 1.0) for r in rewards.values())
    assert 0.0 <= breakdown.total[0] <= sum(SHAPED_WEIGHTS.values())
    if rewards["format"]:
        assert rewards["think_closed"] and rewards["answer_block"]
    if rewards["equation"]:
        assert rewards["uses_numbers"]
    assert extract_answer(completion) is None or isinstance(extract_answer(completion), str)


OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a / b}


@st.composite
def expression_trees(draw):
    """(nums, rendered expression, reference value or None on division by zero) using each number once."""
    nums = draw(st.lists(st.integers(1, 99), min_size=1, max_size=6))
    leaves = draw(st.permutations(nums))
    space = draw(st.sampled_from(["", " ", "\n"]))

    def build(items):
        if len(items) == 1:
            return str(items[0]), Fraction(items[0])
        split = draw(st.integers(1, len(items) - 1))
        op = draw(st.sampled_from(sorted(OPS)))
        (left, a), (right, b) = build(items[:split]), build(items[split:])
        value = None if a is None or b is None or (op == "/" and b == 0) else OPS[op](a, b)
        return f"({left}{space}{op}{space}{right})", value

    text, value = build(leaves)
    return nums, text, value


@settings(max_examples=300, deadline=1000)
@given(tree=expression_trees())
def test_random_trees_match_reference(tree):
    nums, text, value = tree
    assert evaluate_expression(text) == value
    assert sorted(expression_numbers(text)) == sorted(nums)
    completion = ok(text)
    if value is not None and value.denominator == 1:
        target = int(value)
        assert REWARD_FUNCTIONS["equation"]([completion], nums=[nums], target=[target]) == [1.0]
        assert REWARD_FUNCTIONS["equation"]([completion], nums=[nums], target=[target + 1]) == [0.0]
        assert REWARD_FUNCTIONS["equation"]([completion], nums=[nums + [1]], target=[target]) == [0.0]
    assert REWARD_FUNCTIONS["uses_numbers"]([completion], nums=[nums], target=[0]) == [1.0]
