"""The "aha" moment, counted: completions that state something false, correct it, and end with a correct answer.

DeepSeek-R1 reported that RL taught its model to stop, re-check and fix its own reasoning. Whether a small model
does the same is measured here from the task's claim checker (`Task.check_claims`, which recomputes each claim), not
from phrases such as "wait": a reward or a metric that counts words can be satisfied by words alone.

Per step and per evaluation, over the completions judged:
- `aha/self_corrected`: the share with at least one false claim that a later true claim corrects;
- `aha/rate`: the share that does so AND ends with a correct answer (the task's judge): an aha;
- `aha/false_claims`: the share with a false claim left standing (the "13 * 10 = 16. Found it." failure).
Chapter 06 shows the ahas themselves (`inference.find_aha`, `inference.highlight`).
"""

from __future__ import annotations

from typing import Sequence

from grpo_helpers.task import Claims, Task


def checked_claims(task: Task, completions: Sequence[str]) -> list[Claims]:
    """Each completion's claims, recomputed by the task; an error that says what to give when it has no checker."""
    if task.check_claims is None:
        raise ValueError(f"task {task.name!r} has no check_claims: give the Task a function that recomputes what a "
                         f"completion claims (completion -> Claims), as countdown/claims.py does, to count self-corrections")
    return [task.check_claims(text) for text in completions]


def aha_metrics(completions: Sequence[str], rows: Sequence[dict], *, task: Task,
                correct: Sequence[bool] | None = None) -> dict[str, float]:
    """`aha/self_corrected`, `aha/rate`, `aha/false_claims` over completions (completion i answers rows[i]); {} for a
    task without a claim checker. `correct` reuses judgements already made."""
    if task.check_claims is None or not completions:
        return {}
    claims = checked_claims(task, completions)
    correct = task.correct(list(completions), rows) if correct is None else correct
    n = len(completions)
    return {"aha/self_corrected": sum(bool(c.corrected) for c in claims) / n,
            "aha/rate": sum(bool(c.corrected) and ok for c, ok in zip(claims, correct)) / n,
            "aha/false_claims": sum(bool(c.uncorrected) for c in claims) / n}


def aha_flags(records: list[dict], *, task: Task) -> list[bool]:
    """Per evaluation record: is its first sample an aha (a false claim corrected, the answer correct)? Paired
    across two models on the same tasks, for `evaluation.sign_test`."""
    claims = checked_claims(task, [r["completions"][0] for r in records])
    return [bool(c.corrected) and r["correct"][0] for c, r in zip(claims, records)]


__all__ = ["checked_claims", "aha_metrics", "aha_flags"]
