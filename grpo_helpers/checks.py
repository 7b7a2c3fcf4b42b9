"""Argument checks shared by every module: one kind of mistake, one check, one wording.

Each raises `error` (ValueError unless the caller passes its own subclass, such as config's ConfigError) with a
message that names the argument, the bad value and what is allowed.
"""

from __future__ import annotations

from typing import Any, Sequence


def require_int(name: str, value: Any, minimum: int = 1, *, error: type[Exception] = ValueError) -> None:
    """An integer (not a bool) of at least `minimum`."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise error(f"{name}={value!r} is not allowed: an integer >= {minimum}")


def require_choice(name: str, value: Any, choices: Sequence, *, error: type[Exception] = ValueError) -> None:
    """One of `choices`."""
    if value not in choices:
        raise error(f"{name}={value!r} is not allowed: choose one of {', '.join(map(repr, choices))}")
