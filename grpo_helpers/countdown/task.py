"""Countdown as one task of the contract in grpo_helpers/task.py: its rewards, judge, prompt, traces, signals and
claim checker.

Countdown rows stay small (`nums`, `target`, `solution`, optionally `tier` and `num_solutions`): the prompt is
built from them (`data.build_messages`), and every column reaches the reward functions by name.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any, Sequence

import torch

from grpo_helpers.config import ConfigError
from grpo_helpers.countdown.claims import check_claims
from grpo_helpers.countdown.data import validate_rows
from grpo_helpers.countdown.game import require_task, task_key
from grpo_helpers.countdown.prompts import EXAMPLE_ANSWER, build_messages
from grpo_helpers.countdown.rewards import GROUNDED_WEIGHTS, REWARD_FUNCTIONS, evaluate_expression, uses_numbers_reward
from grpo_helpers.countdown.traces import make_traces
from grpo_helpers.inference import ask
from grpo_helpers.task import Task, extract_answer


def countdown_signals(completions: Sequence[str], rows: Sequence[dict]) -> dict[str, float]:
    """Countdown's own hack-monitor shares: answers that copy the prompt's example, answers built from exactly the
    task's numbers (a task-independent answer is not)."""
    n = len(completions)
    example = "".join(EXAMPLE_ANSWER.split())
    answers = [extract_answer(c) for c in completions]
    return {
        "hack/copies_example": sum(a is not None and "".join(a.split()) == example for a in answers) / n,
        "hack/uses_numbers": sum(uses_numbers_reward(list(completions), nums=[r["nums"] for r in rows])) / n,
    }


def countdown_task(reward_weights: dict[str, float] | None = None) -> Task:
    """The Countdown task with these training weights (default: the CPU recipe's grounded rewards)."""
    weights = dict(reward_weights or GROUNDED_WEIGHTS)
    for name in weights:
        if name not in REWARD_FUNCTIONS:
            raise ConfigError(f"reward_weights key={name!r} is not allowed: choose one of "
                              f"{', '.join(map(repr, REWARD_FUNCTIONS))}")
    return Task(reward_funcs=dict(REWARD_FUNCTIONS), reward_weights=weights, correct_reward="equation",
                format_reward="format", prompt=build_messages, traces=make_traces, signals=countdown_signals,
                question_key=lambda row: task_key(row)[0], example_answer=EXAMPLE_ANSWER, check_claims=check_claims,
                check_rows=validate_rows, name="countdown")


def solve_task(model: torch.nn.Module, tokenizer, nums: Sequence[int], target: int, *, max_new_tokens: int = 256,
               greedy: bool = True, temperature: float = 1.0, seed: int = 0) -> dict[str, Any]:
    """Ask the model one task with the chapter's prompt and check its answer with the verifier of chapter 02.

    `value` is the exact value of the answer (safe evaluator, never eval), so a wrong answer shows how far off it is."""
    nums, target = require_task(nums, target)
    asked = ask(model, tokenizer, {"nums": nums, "target": target}, task=countdown_task(),
                max_new_tokens=max_new_tokens, greedy=greedy, temperature=temperature, seed=seed)
    value: Fraction | None = None if asked["answer"] is None else evaluate_expression(asked["answer"])
    return {"nums": nums, "target": target, "completion": asked["completion"], "answer": asked["answer"],
            "value": value, "format": asked["rewards"]["format"], "equation": asked["rewards"]["equation"],
            "correct": asked["correct"], "tokens": asked["tokens"], "truncated": asked["truncated"]}


__all__ = ["countdown_task", "countdown_signals", "solve_task"]
