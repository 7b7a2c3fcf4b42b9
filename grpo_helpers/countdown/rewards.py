"""Countdown's verifiable rewards: a format check, an exact equation check, and shaped partial credit.

A completion is the text the model wrote after the prefilled "<think>". It is untrusted: it can hold anything,
so nothing here calls eval/exec, every check runs in time linear in the completion (plain `str.find`/`count`, no
backtracking regex), and every reward function returns 0.0 instead of raising on any string.

Each reward function has the TRL signature `fn(completions, **kwargs) -> list[float]`: dataset columns arrive as
per-completion lists (`nums=[[..], ..]`, `target=[..]`) and unknown kwargs (`prompts`, ...) are ignored.
"""

from __future__ import annotations

import ast
import operator
import re
from fractions import Fraction
from typing import Any, Callable, Sequence

from grpo_helpers.scoring import RewardBreakdown, score_with
from grpo_helpers.task import ANSWER_CLOSE, ANSWER_OPEN, extract_answer

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"

# Bounds of the verifier, checked before parsing (length, characters, paren depth, literal size) and while
# walking the tree (node count, depth, size of intermediate values). A Countdown answer with six numbers is
# ~30 characters, 11 nodes and values well under 2**64, so these only ever reject abuse.
MAX_EXPRESSION_CHARS = 200
MAX_LITERAL_DIGITS = 12
MAX_NODES = 64
MAX_DEPTH = 32
MAX_BITS = 256

_ALLOWED_CHARS = re.compile(r"[0-9+\-*/() \t\r\n]*")  # ASCII only: rejects unicode digits such as "١٢"
_LONG_LITERAL = re.compile(r"[0-9]{%d}" % (MAX_LITERAL_DIGITS + 1))
_OPERATORS: dict[type, Callable[[Fraction, Fraction], Fraction]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
}


class _Rejected(Exception):
    """The expression is outside the allowed grammar or bounds (internal: public functions return None)."""


def _paren_depth(text: str) -> int:
    depth = deepest = 0
    for char in text:
        depth += (char == "(") - (char == ")")
        deepest = max(deepest, depth)
    return deepest


def _parse(text: str) -> tuple[ast.expr, list[int]] | None:
    """Bounded parse into an AST of integer literals and + - * /, plus its literals in order; None if not allowed.

    Unary minus (and plus) is rejected: the game has positive numbers and binary operations only, and "-3"
    acts like "0 - 3", a number the task did not give.
    """
    if not isinstance(text, str) or len(text) > MAX_EXPRESSION_CHARS or not _ALLOWED_CHARS.fullmatch(text):
        return None
    if _paren_depth(text) > MAX_DEPTH or _LONG_LITERAL.search(text):  # before ast.parse, which can recurse deeply
        return None
    try:
        tree = ast.parse(" ".join(text.split()), mode="eval")  # newlines inside a multi-line answer are spaces
    except (SyntaxError, ValueError, RecursionError, MemoryError):  # "1 2", "07", "(", ...
        return None
    literals: list[int] = []
    try:
        _check(tree.body, depth=1, literals=literals, budget=[MAX_NODES])
    except _Rejected:
        return None
    return tree.body, literals


def _check(node: ast.AST, *, depth: int, literals: list[int], budget: list[int]) -> None:
    budget[0] -= 1
    if depth > MAX_DEPTH or budget[0] < 0:
        raise _Rejected
    if isinstance(node, ast.Constant) and type(node.value) is int:  # bool is an int subclass: excluded
        literals.append(node.value)
    elif isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        _check(node.left, depth=depth + 1, literals=literals, budget=budget)
        _check(node.right, depth=depth + 1, literals=literals, budget=budget)
    else:
        raise _Rejected  # **, //, %, unary ops, names, calls, attributes, strings, ...


def _value(node: ast.expr) -> Fraction:
    """Exact value of a checked tree; raises ZeroDivisionError or _Rejected (an intermediate grew too large)."""
    if isinstance(node, ast.Constant):
        return Fraction(node.value)
    value = _OPERATORS[type(node.op)](_value(node.left), _value(node.right))
    if max(value.numerator.bit_length(), value.denominator.bit_length()) > MAX_BITS:
        raise _Rejected
    return value


def expression_numbers(text: str) -> list[int] | None:
    """The integer literals of an allowed expression, in order (its value may be undefined); None if not allowed."""
    parsed = _parse(text)
    return None if parsed is None else parsed[1]


def evaluate_expression(text: str) -> Fraction | None:
    """Exact value of an arithmetic expression (ints, + - * /, parentheses), or None if not allowed or undefined.

    Fractions, not floats: "(1/3)*3" is exactly 1, and no tolerance lets a wrong answer pass.
    """
    parsed = _parse(text)
    if parsed is None:
        return None
    try:
        return _value(parsed[0])
    except (ZeroDivisionError, _Rejected):
        return None


def _is_formatted(completion: str) -> bool:
    """`<think>` + completion == <think>reasoning</think>, a newline, <answer>...</answer>, optional whitespace.

    Reasoning and answer may span lines. Exactly one think block and one answer block: no think/answer tag may
    appear inside the reasoning or the answer. The newline may be "\\n" or "\\r\\n".
    """
    text = completion.rstrip()
    close = text.find(THINK_CLOSE)
    if close < 0 or THINK_OPEN in text[:close]:
        return False
    rest = text[close + len(THINK_CLOSE):]
    if rest.startswith("\r\n"):
        rest = rest[2:]
    elif rest.startswith("\n"):
        rest = rest[1:]
    else:
        return False
    if not (rest.startswith(ANSWER_OPEN) and rest.endswith(ANSWER_CLOSE)):
        return False
    inner = rest[len(ANSWER_OPEN):-len(ANSWER_CLOSE)]
    return not any(tag in inner for tag in (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE))


def _has_one_answer_block(completion: str) -> bool:
    close = completion.find(THINK_CLOSE)
    if close < 0:
        return False
    rest = completion[close + len(THINK_CLOSE):]
    if rest.count(ANSWER_OPEN) != 1 or rest.count(ANSWER_CLOSE) != 1:
        return False
    return rest.find(ANSWER_OPEN) < rest.find(ANSWER_CLOSE)


def _parsed_answer(completion: str) -> tuple[ast.expr, list[int]] | None:
    answer = extract_answer(completion)
    return None if answer is None else _parse(answer)


def _uses_numbers(completion: str, nums: Sequence[int]) -> bool:
    parsed = _parsed_answer(completion)
    return parsed is not None and sorted(parsed[1]) == sorted(nums)


def _is_correct(completion: str, nums: Sequence[int], target: int) -> bool:
    parsed = _parsed_answer(completion)
    if parsed is None or sorted(parsed[1]) != sorted(nums):
        return False
    try:
        return _value(parsed[0]) == target
    except (ZeroDivisionError, _Rejected):
        return False


def _strings(completions: Sequence[str]) -> Sequence[str]:
    for i, completion in enumerate(completions):
        if not isinstance(completion, str):
            raise TypeError(f"completions[{i}] is a {type(completion).__name__}: completions must be strings")
    return completions


def _column(name: str, values: Any, n: int) -> list:
    """A per-completion dataset column, as TRL passes it; a wrong length is a caller bug, not a zero reward."""
    if values is None or len(values) != n:
        raise ValueError(f"{name} must be a list with one entry per completion ({n}), "
                         f"got {None if values is None else len(values)} entries")
    return list(values)


def format_reward(completions: list[str], **kwargs: Any) -> list[float]:
    """1.0 when the completion has the exact think-then-answer layout, else 0.0."""
    return [float(_is_formatted(c)) for c in _strings(completions)]


def equation_reward(completions: list[str], *, nums: list[list[int]], target: list[int], **kwargs: Any) -> list[float]:
    """1.0 when the last answer uses the given numbers, each exactly once, and equals the target exactly."""
    nums, target = _column("nums", nums, len(completions)), _column("target", target, len(completions))
    return [float(_is_correct(c, n, t)) for c, n, t in zip(_strings(completions), nums, target)]


def think_closed_reward(completions: list[str], **kwargs: Any) -> list[float]:
    """Partial credit: the model stopped thinking (a `</think>` appears)."""
    return [float(THINK_CLOSE in c) for c in _strings(completions)]


def answer_block_reward(completions: list[str], **kwargs: Any) -> list[float]:
    """Partial credit: exactly one `<answer>...</answer>` block after `</think>` (layout not otherwise checked)."""
    return [float(_has_one_answer_block(c)) for c in _strings(completions)]


def uses_numbers_reward(completions: list[str], *, nums: list[list[int]], **kwargs: Any) -> list[float]:
    """Partial credit: the last answer parses and its literals are exactly the given numbers, whatever its value."""
    nums = _column("nums", nums, len(completions))
    return [float(_uses_numbers(c, n)) for c, n in zip(_strings(completions), nums)]


def _closeness(completion: str, nums: Sequence[int], target: int) -> float:
    parsed = _parsed_answer(completion)
    if parsed is None or sorted(parsed[1]) != sorted(nums):
        return 0.0
    try:
        value = _value(parsed[0])
    except (ZeroDivisionError, _Rejected):
        return 0.0
    return max(0.0, 1.0 - float(abs(value - target)) / max(abs(target), 1))


def grounded_format_reward(completions: list[str], *, nums: list[list[int]], **kwargs: Any) -> list[float]:
    """1.0 for the exact think-then-answer layout AND an answer built from exactly the task's numbers: format
    credit that a fixed answer (the prompt's example, a bare "1") cannot collect across tasks."""
    nums = _column("nums", nums, len(completions))
    return [float(_is_formatted(c) and _uses_numbers(c, n)) for c, n in zip(_strings(completions), nums)]


def closeness_reward(completions: list[str], *, nums: list[list[int]], target: list[int], **kwargs: Any) -> list[float]:
    """Partial credit for getting near: 1 - |value - target| / target (at least 0) when the answer uses exactly
    the task's numbers, else 0. An exact answer scores 1."""
    nums, target = _column("nums", nums, len(completions)), _column("target", target, len(completions))
    return [_closeness(c, n, t) for c, n, t in zip(_strings(completions), nums, target)]


def overlong_penalty_reward(completions: list[str], *, completion_lengths: list[int] | None = None,
                            max_completion_length: int | None = None, overlong_buffer: int | None = None,
                            **kwargs: Any) -> list[float]:
    """DAPO's soft overlong punishment: 0 up to `max_completion_length - overlong_buffer` tokens, then falling
    linearly to -1 at the cap (a completion cut there). The buffer defaults to a fifth of the cap (DAPO: 4k of
    20k). Lengths are in tokens, so the trainer passes them; TRL's `get_soft_overlong_punishment` computes the same."""
    if completion_lengths is None or max_completion_length is None:
        raise ValueError("overlong_penalty needs completion_lengths and max_completion_length (token counts, which "
                         "the trainer passes): it cannot be computed from the text alone")
    if len(completion_lengths) != len(completions):
        raise ValueError(f"{len(completion_lengths)} completion_lengths for {len(completions)} completions")
    buffer = overlong_buffer if overlong_buffer is not None else max(1, round(0.2 * max_completion_length))
    if not 0 < buffer <= max_completion_length:
        raise ValueError(f"overlong_buffer={buffer!r} is not allowed: an integer in [1, max_completion_length]")
    start = max_completion_length - buffer
    return [0.0 if n <= start else -1.0 if n >= max_completion_length else (start - n) / buffer
            for n in map(int, completion_lengths)]


REWARD_FUNCTIONS: dict[str, Callable[..., list[float]]] = {
    "format": format_reward,
    "equation": equation_reward,
    "think_closed": think_closed_reward,
    "answer_block": answer_block_reward,
    "uses_numbers": uses_numbers_reward,
    "grounded_format": grounded_format_reward,
    "closeness": closeness_reward,
    "overlong_penalty": overlong_penalty_reward,
}
# The seed's recipe: all-or-nothing. Fine for a 3B model, which is sometimes right from the start.
SPARSE_WEIGHTS = {"format": 1.0, "equation": 1.0}
# Stepping stones for the layout alone: each stage of it, then the right numbers, then the right value. Kept to show
# a reward hack: 40 % of the maximum goes to any well-formed answer, whatever the task, and a 135M policy finds that.
SHAPED_WEIGHTS = {"think_closed": 0.25, "answer_block": 0.25, "format": 0.5, "uses_numbers": 0.5, "equation": 1.0}
# The CPU recipe: every partial credit needs an answer built from the task's own numbers, so a task-independent
# answer earns (almost) nothing, while a correct, well-formed answer earns the maximum (1.5).
GROUNDED_WEIGHTS = {"grounded_format": 0.25, "closeness": 0.25, "equation": 1.0}


def score_completions(completions: list[str], *, nums: list[list[int]], target: list[int],
                      weights: dict[str, float], step: int | None = None,
                      time_limit: float | None = None, **extra: Any) -> RewardBreakdown:
    """Countdown's reward functions on a batch (chapter 02): `scoring.score_with` over `REWARD_FUNCTIONS`."""
    return score_with(REWARD_FUNCTIONS, completions, weights=weights, step=step, time_limit=time_limit,
                      columns={"nums": nums, "target": target, **extra})
