"""A reward-hack monitor: is the policy still looking at the task?

Reward alone cannot tell learning from gaming: a Countdown policy that writes the prompt's example `(1 + 2) / 3` as a
well-formed answer to every task collects format credit and climbs the reward curve while solving nothing. Shares
per step say which is happening. Any task gets two:

- `hack/identical_answers`: answers that also appear, character for character, for *another question* in the step
  (the task's `key` says when two rows ask the same thing: for Countdown, the same numbers; a task-independent
  answer is shared by questions whatever they ask);
- `hack/accuracy`: correct answers (the task's judge) on the training rows themselves.

A task adds its own through `Task.signals`; Countdown adds `hack/copies_example` (answers equal to the prompt's
example) and `hack/uses_numbers` (answers built from exactly the task's numbers).

`hack_warning` turns a run's history into a plain-words warning when reward rises while these say the policy
stopped looking at the task; the `HackWarning` callback every trainer starts with prints it when it starts.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Sequence

from tqdm.auto import tqdm

from grpo_helpers.callbacks import Callback
from grpo_helpers.task import Task, extract_answer

WINDOW = 5  # steps averaged at each end of the history when judging a trend
REWARD_RISE = 0.1  # a rise of the mean reward (first vs last window) that counts as "reward went up"
IDENTICAL_LIMIT = 0.3
EXAMPLE_LIMIT = 0.1
USES_NUMBERS_FLOOR = 0.5


def _normal(answer: str | None) -> str | None:
    return None if answer is None else "".join(answer.split())


def hack_signals(completions: Sequence[str], rows: Sequence[dict], *, task: Task) -> dict[str, float]:
    """The shares over completions; `rows[i]` is the row completion i answered. Generic: identical answers across
    different questions and accuracy (the task's judge); the task adds its own (Countdown: the example copied, the
    task's numbers used)."""
    if len(completions) != len(rows) or not completions:
        raise ValueError(f"need one row per completion and at least one: got {len(completions)} completions, "
                         f"{len(rows)} rows")
    answers = [_normal(extract_answer(c)) for c in completions]
    questions_by_answer: dict[str, set] = defaultdict(set)
    for answer, row in zip(answers, rows):
        if answer:
            questions_by_answer[answer].add(task.key(row))
    n = len(completions)
    signals = {"hack/identical_answers": sum(bool(a) and len(questions_by_answer[a]) > 1 for a in answers) / n}
    if task.signals is not None:
        signals.update(task.signals(completions, rows))
    signals["hack/accuracy"] = sum(task.correct(list(completions), rows)) / n
    return signals


def _mean(rows: list[dict[str, Any]], key: str) -> float:
    return sum(r[key] for r in rows) / len(rows)


def hack_warning(history: list[dict[str, Any]], *, window: int = WINDOW) -> str | None:
    """A warning in plain words when reward rose while the answers stopped depending on the task; else None."""
    if len(history) < 2 * window or "hack/identical_answers" not in history[-1]:
        return None
    first, last = history[:window], history[-window:]
    rise = _mean(last, "reward") - _mean(first, "reward")
    if rise < REWARD_RISE:
        return None
    evidence = []
    if _mean(last, "hack/identical_answers") > IDENTICAL_LIMIT:
        evidence.append(f"{_mean(last, 'hack/identical_answers'):.0%} of answers are identical for other questions")
    if "hack/copies_example" in last[-1] and _mean(last, "hack/copies_example") > EXAMPLE_LIMIT:
        evidence.append(f"{_mean(last, 'hack/copies_example'):.0%} of answers copy the prompt's example")
    if "hack/uses_numbers" in last[-1] and _mean(last, "hack/uses_numbers") < USES_NUMBERS_FLOOR:
        evidence.append(f"only {_mean(last, 'hack/uses_numbers'):.0%} of answers use the task's numbers")
    if not evidence:
        return None
    accuracy = _mean(last, "hack/accuracy")
    return (f"REWARD HACKING? Mean reward rose by {rise:.2f} over the run, but in the last {window} steps "
            f"{'; '.join(evidence)} (training accuracy {accuracy:.0%}). The policy is earning reward without looking "
            f"at the task: read the top-scoring completions, and use rewards that pay only for answers that depend on "
            f"the task (for Countdown: built from its numbers, countdown.rewards.GROUNDED_WEIGHTS).")


class HackWarning(Callback):
    """Prints `hack_warning` once when it starts (again if it stops and starts again): a message at every step
    would drown the progress bar, and the live dashboard shows the warning while it lasts. A default callback
    (default_callbacks.py)."""

    def __init__(self) -> None:
        self.last: str | None = None  # the warning after the latest step, None while there is none

    def on_step_end(self, trainer, metrics: dict[str, Any]) -> None:
        warning = hack_warning(trainer.history)
        if warning and self.last is None and trainer.accelerator.is_main_process:
            tqdm.write(warning)  # also in the log
        self.last = warning
