"""Argument checks shared by every module: one kind of mistake, one check, one wording.

Each raises `error` (ValueError unless the caller passes its own subclass, such as config's ConfigError) with a
message that names the argument, the bad value and what is allowed.
"""

from __future__ import annotations

from numbers import Integral
from typing import Any, Sequence


def require_int(name: str, value: Any, minimum: int = 1, *, error: type[Exception] = ValueError) -> None:
    """An integer (not a bool) of at least `minimum`."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise error(f"{name}={value!r} is not allowed: an integer >= {minimum}")


def require_choice(name: str, value: Any, choices: Sequence, *, error: type[Exception] = ValueError) -> None:
    """One of `choices`."""
    if value not in choices:
        raise error(f"{name}={value!r} is not allowed: choose one of {', '.join(map(repr, choices))}")


def require_task(nums: Any, target: Any, *, row: int | None = None) -> tuple[list[int], int]:
    """Clean (nums, target) of one Countdown task: a non-empty list of positive integers and a positive integer.
    `row` names the row of a dataset in the message."""
    where = "" if row is None else f"row {row}: field "
    if not isinstance(nums, (list, tuple)) or not nums or not all(
            isinstance(x, Integral) and not isinstance(x, bool) and x > 0 for x in nums):
        shown = repr(nums) if len(repr(nums)) <= 80 else repr(nums)[:77] + "..."
        raise ValueError(f"{where}{'nums' if row is None else repr('nums')}={shown} is not allowed: a non-empty list "
                         f"of positive integers, e.g. [3, 5, 7]")
    if not isinstance(target, Integral) or isinstance(target, bool) or target <= 0:
        raise ValueError(f"{where}{'target' if row is None else repr('target')}={target!r} is not allowed: a "
                         f"positive integer")
    return [int(x) for x in nums], int(target)
