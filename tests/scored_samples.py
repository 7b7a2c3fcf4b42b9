"""Countdown completions whose scores are known by hand, and a stand-in for sampling that returns them: shared by
the evaluation tests (test_evaluation.py) and chapter 06's tools' (test_inference.py)."""

from __future__ import annotations

import torch

from grpo_helpers.countdown.task import countdown_task
from grpo_helpers.evaluation import EvalResult, score_samples
from grpo_helpers.rollout import Rollout

CD = countdown_task()
TASKS = [{"nums": [3, 5, 7], "target": 22}, {"nums": [2, 4], "target": 8}, {"nums": [1, 9], "target": 10}]
GOOD = {0: " 3*5=15, 15+7=22</think>\n<answer>3 * 5 + 7</answer>", 1: " ok</think>\n<answer>2 * 4</answer>",
        2: " ok</think>\n<answer>1 + 9</answer>"}
WRONG_NUMBERS = " 22</think>\n<answer>22</answer>"  # right value, not the given numbers: verifier says 0
UNFORMATTED = "I think 2 * 4. <answer>2 * 4</answer>"  # right answer, but no </think>: correct, not formatted


def fake_generate(texts_for):
    """Stands in for rollout.generate_groups: completions chosen from the prompt, so scores are known exactly."""
    calls = []

    def generate(model, tokenizer, prompts, *, group_size, max_new_tokens, generator=None, **kwargs):
        calls.append({"prompts": len(prompts), "group_size": group_size, "seed": generator.initial_seed(), **kwargs})
        texts = [t for p in prompts for t in texts_for(p, group_size)]
        lengths = torch.tensor([len(t.split()) for t in texts])  # (B*G,)
        return Rollout(prompt_ids=torch.zeros(len(prompts), 1), prompt_mask=torch.ones(len(prompts), 1),
                       completion_ids=torch.zeros(len(texts), 1), completion_mask=torch.ones(len(texts), 1),
                       lengths=lengths, truncated=torch.zeros(len(texts), dtype=torch.bool), texts=texts,
                       group_size=group_size, seconds=0.0)

    return generate, calls


def handcrafted() -> EvalResult:
    """k=2 samples for 3 tasks. task 0: correct, wrong; task 1: unformatted-correct, correct; task 2: wrong, wrong."""
    completions = [[GOOD[0], WRONG_NUMBERS], [UNFORMATTED, GOOD[1]], [WRONG_NUMBERS, WRONG_NUMBERS]]
    return score_samples(TASKS, completions, lengths=[[10, 20], [30, 40], [50, 60]], task=CD)
