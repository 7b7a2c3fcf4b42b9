"""Calling reward functions safely: each one checked, timed and limited, then weighted into one total.

Reward functions follow TRL's convention, `f(completions, **kwargs) -> list[float]`: every dataset column other
than `prompt` arrives by name as a list with one entry per completion (a prompt's value repeated across its group),
`prompts` holds each completion's prompt, and the trainer adds `completion_lengths` and `max_completion_length`.
They may be a user's own code, so every call is checked: one finite number per completion, else a `RewardError`
that names the function, the step and what was wrong.
"""

from __future__ import annotations

import inspect
import math
import numbers
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

RewardFunction = Callable[..., Sequence[float]]


@dataclass
class RewardBreakdown:
    total: list[float]  # (N,) weighted sum per completion
    per_function: dict[str, list[float]]  # name -> (N,) unweighted reward of each function
    seconds: dict[str, float] = field(default_factory=dict)  # name -> time the function took on this batch


class RewardError(RuntimeError):
    """A reward function failed or returned something other than one finite number per completion. Reward
    functions may be the user's own code: the message names the function, the step and what was wrong."""


@contextmanager
def _time_limit(seconds: float | None, name: str, where: str):
    """Interrupt a reward function that runs past `seconds` (SIGALRM: the main thread on Unix). Elsewhere the
    limit is checked when the function returns."""
    if not seconds or threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGALRM"):
        yield
        return

    def interrupt(signum, frame):
        raise RewardError(f"reward function {name!r} ran past reward_time_limit={seconds} s{where}: make it "
                          f"faster, or raise the limit")

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _checked(name: str, scores: Any, n: int, where: str) -> list[float]:
    """One finite number per completion, as floats; anything else is a RewardError naming what is wrong."""
    try:
        values = list(scores)
    except TypeError:
        raise RewardError(f"reward function {name!r} returned {type(scores).__name__} {scores!r}{where}: return a "
                          f"list with one number per completion") from None
    if len(values) != n:
        raise RewardError(f"reward function {name!r} returned {len(values)} scores for {n} completions{where}: "
                          f"return exactly one number per completion")
    for i, value in enumerate(values):
        if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy / torch scalars
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise RewardError(f"reward function {name!r} returned {value!r} ({type(value).__name__}) for completion "
                              f"{i}{where}: every score must be a number")
        if not math.isfinite(value):
            raise RewardError(f"reward function {name!r} returned {value} for completion {i}{where}: every score "
                              f"must be finite")
        values[i] = float(value)
    return values


def _accepted(function: Callable[..., Any], extra: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments the function can take: all of them with **kwargs, else those it names (a user's
    `f(completions, answer)` keeps working whatever other columns the rows hold)."""
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return extra
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return extra
    return {key: value for key, value in extra.items() if key in parameters}


def call_reward(name: str, function: RewardFunction, completions: list[str], *, columns: dict[str, Any],
                step: int | None = None, time_limit: float | None = None) -> tuple[list[float], float]:
    """Run one reward function on a batch, checked: (scores, seconds it took). `columns` (the dataset's columns, the
    prompts, the completions' token lengths) reach the function as keyword arguments, as TRL passes them."""
    where = "" if step is None else f" at step {step}"
    start = time.perf_counter()
    try:
        with _time_limit(time_limit, name, where):
            scores = function(completions, **_accepted(function, columns))
    except RewardError:
        raise
    except Exception as error:
        raise RewardError(f"reward function {name!r} raised {type(error).__name__}: {error}{where}") from error
    seconds = time.perf_counter() - start
    if time_limit and seconds > time_limit:
        raise RewardError(f"reward function {name!r} took {seconds:.1f} s, past reward_time_limit={time_limit} s"
                          f"{where}: make it faster, or raise the limit")
    return _checked(name, scores, len(completions), where), seconds


def score_with(functions: dict[str, RewardFunction], completions: list[str], *, weights: dict[str, float],
               columns: dict[str, Any], step: int | None = None, time_limit: float | None = None) -> RewardBreakdown:
    """Every weighted reward function (by name, from `functions`) on a batch, each output checked, plus the
    weighted total (what GRPO turns into advantages) and the time each function took. `columns` reach each
    function as keyword arguments (a dataset may have a column named like any argument here, `step` included)."""
    if not weights:
        raise ValueError(f"weights is empty: name at least one of {', '.join(map(repr, functions))}")
    for name, weight in weights.items():
        if name not in functions:
            raise ValueError(f"unknown reward function {name!r}: choose from {', '.join(map(repr, functions))}")
        if not isinstance(weight, (int, float)) or isinstance(weight, bool):
            raise ValueError(f"weight of {name!r} is {weight!r}: it must be a number")
    per_function, seconds = {}, {}
    for name in weights:
        per_function[name], seconds[name] = call_reward(name, functions[name], completions, columns=columns,
                                                        step=step, time_limit=time_limit)
    total = [sum(weights[name] * per_function[name][i] for name in weights) for i in range(len(completions))]
    return RewardBreakdown(total=total, per_function=per_function, seconds=seconds)


def zero_std_fraction(totals: Sequence[float], group_size: int) -> float:
    """Share of groups whose rewards are all equal: their advantages are all zero, so GRPO learns nothing there."""
    if not isinstance(group_size, int) or group_size < 1 or len(totals) == 0 or len(totals) % group_size:
        raise ValueError(f"group_size={group_size!r} must be a positive integer dividing the number of "
                         f"rewards ({len(totals)}, which must be > 0)")
    groups = [totals[i:i + group_size] for i in range(0, len(totals), group_size)]
    return sum(max(g) - min(g) <= 1e-9 for g in groups) / len(groups)


__all__ = ["RewardFunction", "RewardBreakdown", "RewardError", "call_reward", "score_with", "zero_std_fraction"]
