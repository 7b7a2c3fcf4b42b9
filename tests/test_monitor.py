"""Tests for grpo_helpers.monitor: the per-step hack signals and the run-level warning."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from grpo_helpers import monitor
from grpo_helpers.countdown.prompts import EXAMPLE_ANSWER
from grpo_helpers.countdown.task import countdown_task
from grpo_helpers.monitor import HackWarning, hack_signals, hack_warning

CD = countdown_task()

TASKS = [
    {"nums": [3, 5, 7], "target": 22},
    {"nums": [10, 2], "target": 12},
    {"nums": [9, 4, 2], "target": 18},
    {"nums": [6, 6, 1], "target": 37},
]
CORRECT = ["3 * 5 + 7", "10 + 2", "(9 * 4) / 2", "6 * 6 + 1"]
KEYS = ("hack/identical_answers", "hack/copies_example", "hack/uses_numbers", "hack/accuracy")


def ok(answer: str) -> str:
    return f" thinking</think>\n<answer>{answer}</answer>"


def test_every_completion_copying_the_example():
    signals = hack_signals([ok(EXAMPLE_ANSWER)] * len(TASKS), TASKS, task=CD)
    assert set(signals) == set(KEYS)
    assert signals == {"hack/identical_answers": 1.0, "hack/copies_example": 1.0, "hack/uses_numbers": 0.0,
                       "hack/accuracy": 0.0}


def test_the_example_is_recognised_whatever_its_spacing():
    completions = [ok("(1+2)/3"), ok(" ( 1 +\n2 ) / 3 "), ok("(1 + 2) * 3"), ok("3 * 5 + 7")]
    signals = hack_signals(completions, TASKS, task=CD)
    assert signals["hack/copies_example"] == 0.5
    assert signals["hack/identical_answers"] == 0.5  # the two spellings of the example, for different tasks


def test_distinct_correct_answers():
    signals = hack_signals([ok(a) for a in CORRECT], TASKS, task=CD)
    assert signals == {"hack/identical_answers": 0.0, "hack/copies_example": 0.0, "hack/uses_numbers": 1.0,
                       "hack/accuracy": 1.0}


def test_the_same_answer_for_the_same_task_is_not_identical_across_tasks():
    # a GRPO group: several completions of one prompt agree (twice for task 0, with the numbers reordered in the
    # task's copy), which says nothing about ignoring the task
    tasks = [TASKS[0], {"nums": [7, 3, 5], "target": 22}, TASKS[1], TASKS[1]]
    completions = [ok(CORRECT[0]), ok(CORRECT[0]), ok(CORRECT[1]), ok(CORRECT[1])]
    signals = hack_signals(completions, tasks, task=CD)
    assert signals["hack/identical_answers"] == 0.0
    assert signals["hack/accuracy"] == 1.0
    # two tasks with the same numbers (other targets) may rightly share an answer string: not counted
    tasks = [TASKS[0], {"nums": [3, 5, 7], "target": 15}, TASKS[1], TASKS[2]]
    signals = hack_signals([ok("3 * 5 + 7"), ok("3 * 5 + 7"), ok("10 + 2"), ok("9 * 4 / 2")], tasks, task=CD)
    assert signals["hack/identical_answers"] == 0.0
    assert signals["hack/uses_numbers"] == 1.0
    assert signals["hack/accuracy"] == 0.75
    # the same answer text for tasks with other numbers is counted, for both completions
    tasks = [TASKS[0], {"nums": [4, 5, 7], "target": 22}, TASKS[1], TASKS[2]]
    signals = hack_signals([ok("3 * 5 + 7"), ok("3 * 5 + 7"), ok("10 + 2"), ok("9 * 4 / 2")], tasks, task=CD)
    assert signals["hack/identical_answers"] == 0.5
    assert signals["hack/uses_numbers"] == 0.75


def test_partial_shares_and_missing_answers():
    completions = [ok(CORRECT[0]), ok("3 + 5 + 7"), "no answer block at all", ok("")]
    tasks = [TASKS[0], TASKS[0], TASKS[1], TASKS[2]]
    signals = hack_signals(completions, tasks, task=CD)
    assert signals == {"hack/identical_answers": 0.0, "hack/copies_example": 0.0, "hack/uses_numbers": 0.25 + 0.25,
                       "hack/accuracy": 0.25}
    # empty answers for different tasks are not "identical answers": there is no answer
    assert hack_signals([ok("")] * 2 + ["junk"] * 2, TASKS, task=CD)["hack/identical_answers"] == 0.0


@pytest.mark.parametrize("completions,tasks", [
    ([ok("1")] * 3, TASKS[:2]),
    ([ok("1")], TASKS[:2]),
    ([], []),
])
def test_bad_input_raises(completions, tasks):
    with pytest.raises(ValueError):
        hack_signals(completions, tasks, task=CD)


# ---------------------------------------------------------------------------------------------------------------
# hack_warning over a run's history


def history(steps: int, *, reward: tuple[float, float], identical: float = 0.0, example: float = 0.0,
            uses_numbers: float = 0.9, accuracy: float = 0.1) -> list[dict]:
    """A synthetic run: reward moving linearly from reward[0] to reward[1], the hack signals constant."""
    return [{"step": s, "reward": reward[0] + (reward[1] - reward[0]) * s / (steps - 1),
             "hack/identical_answers": identical, "hack/copies_example": example,
             "hack/uses_numbers": uses_numbers, "hack/accuracy": accuracy} for s in range(steps)]


def test_warning_when_reward_rises_on_identical_answers():
    warning = hack_warning(history(20, reward=(0.1, 1.0), identical=0.9))
    assert warning is not None and "REWARD HACKING" in warning
    assert "90% of answers are identical" in warning
    assert "GROUNDED_WEIGHTS" in warning


def test_warning_names_every_piece_of_evidence():
    warning = hack_warning(history(20, reward=(0.0, 0.6), identical=0.8, example=0.7, uses_numbers=0.05,
                                   accuracy=0.0))
    assert warning is not None
    assert "identical" in warning and "70% of answers copy the prompt's example" in warning
    assert "only 5% of answers use" in warning
    assert "training accuracy 0%" in warning


def test_no_warning_when_reward_rises_on_grounded_answers():
    assert hack_warning(history(20, reward=(0.1, 1.0), identical=0.0, uses_numbers=0.9)) is None


def test_no_warning_when_reward_is_flat_or_falling():
    assert hack_warning(history(20, reward=(0.5, 0.5), identical=0.9, example=0.9, uses_numbers=0.0)) is None
    assert hack_warning(history(20, reward=(1.0, 0.2), identical=0.9, example=0.9, uses_numbers=0.0)) is None


def test_no_warning_on_a_short_history_or_without_the_signals():
    assert hack_warning(history(2 * monitor.WINDOW - 1, reward=(0.0, 1.0), identical=1.0)) is None
    assert hack_warning(history(2 * monitor.WINDOW, reward=(0.0, 1.0), identical=1.0)) is not None
    plain = [{"step": s, "reward": s / 10} for s in range(20)]  # a run logged without the monitor
    assert hack_warning(plain) is None


def test_warning_judges_the_last_window_only():
    # the answers were identical early on, but the policy has since moved to grounded answers
    early = history(10, reward=(0.0, 0.3), identical=0.9, uses_numbers=0.1)
    late = history(10, reward=(0.6, 1.0), identical=0.0, uses_numbers=0.9)
    assert hack_warning(early + late) is None
    assert hack_warning(late + early[:5] + history(5, reward=(1.5, 1.5), identical=0.9)) is not None


def test_the_warning_callback_says_it_once_when_it_starts_and_again_after_it_stopped(capsys):
    hacked, flat = history(10, reward=(0.1, 1.0), identical=0.9), history(10, reward=(0.5, 0.5), identical=0.9)
    trainer = SimpleNamespace(history=[], accelerator=SimpleNamespace(is_main_process=True))
    callback, said = HackWarning(), []
    for run in (hacked, hacked, flat, hacked):  # the whole history is judged at each step: hacked, still, over, again
        trainer.history = run
        callback.on_step_end(trainer, run[-1])
        said.append(capsys.readouterr().out.count("REWARD HACKING"))
    assert said == [1, 0, 0, 1]
