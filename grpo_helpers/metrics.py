"""What a GRPO step logs: TRL's metric names where they exist, gathered over every process.

Rewards, lengths and clipping describe the rollout; the hack monitor's shares and the per-tier training accuracy
say whether the policy still answers the task it was given (grpo_helpers/monitor.py).
"""

from __future__ import annotations

from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object

from grpo_helpers.aha import aha_metrics
from grpo_helpers.batch import Batch
from grpo_helpers.distributed import gather, mean, total
from grpo_helpers.monitor import hack_signals
from grpo_helpers.task import Task


def step_metrics(batches: list[Batch], stats: dict[str, float], *, task: Task, step: int, reward_names: list[str],
                 learning_rate: float, accelerator: Accelerator) -> dict[str, Any]:
    """One step's metrics row from its batches and the update's stats (loss, grad_norm, clip ratios, kl)."""
    G = batches[0].rollout.group_size
    rewards = gather(accelerator, torch.cat([b.rewards for b in batches]))  # (all completions,)
    lengths = gather(accelerator, torch.cat([b.rollout.lengths for b in batches]).float())
    truncated = gather(accelerator, torch.cat([b.rollout.truncated for b in batches]).float())
    groups = rewards.view(-1, G)
    metrics: dict[str, Any] = {
        "step": step, "reward": rewards.mean().item(), "reward_std": groups.std(dim=1).mean().item(),
        "frac_reward_zero_std": (groups.amax(1) == groups.amin(1)).float().mean().item(),
    }
    if "kl" in stats:  # measured only when beta > 0 (there is no reference pass otherwise)
        metrics["kl"] = stats["kl"]
    if "entropy" in stats:  # the policy's mean token entropy on the trained completions (TRL's `entropy`)
        metrics["entropy"] = stats["entropy"]
    for name in reward_names:
        values = torch.tensor([v for b in batches for v in b.per_function[name]])
        metrics[f"rewards/{name}/mean"] = gather(accelerator, values).mean().item()
    metrics.update({
        "loss": stats["loss"], "grad_norm": stats["grad_norm"],
        "clip_ratio/low_mean": stats["clip_ratio/low_mean"], "clip_ratio/high_mean": stats["clip_ratio/high_mean"],
        "clip_ratio/region_mean": stats["clip_ratio/region_mean"],
        "completions/mean_length": lengths.mean().item(), "completions/min_length": lengths.min().item(),
        "completions/max_length": lengths.max().item(), "completions/clipped_ratio": truncated.mean().item(),
        "completions/total_tokens": lengths.sum().item(),
        "learning_rate": learning_rate,
        "gen_tokens_per_sec": sum(b.rollout.tokens_per_sec for b in batches) / len(batches),
    })
    # the hack monitor and per-tier training accuracy, over every process's completions
    answered = gather_object([(text, b.tasks[i // G]) for b in batches for i, text in enumerate(b.rollout.texts)])
    metrics.update(hack_signals([text for text, _ in answered], [row for _, row in answered], task=task))
    metrics.update(aha_metrics([text for text, _ in answered], [row for _, row in answered], task=task))
    metrics.update(tier_accuracy(answered, task=task))
    discarded = total(accelerator, sum(b.dynamic.get("dynamic/discarded_tokens", 0) for b in batches))
    metrics["generated_tokens"] = metrics["completions/total_tokens"] + discarded  # the step's generation cost
    for key in sorted({k for b in batches for k in b.dynamic} - {"dynamic/discarded_tokens"}):  # shares and counts
        metrics[key] = mean(accelerator, sum(b.dynamic[key] for b in batches) / len(batches))
    return metrics


def tier_accuracy(answered: list[tuple[str, dict]], *, task: Task) -> dict[str, float]:
    """`train/accuracy/<tier>`: the share of correct completions (the task's judge) per difficulty tier (rows
    without a tier: none)."""
    tiered = [(text, row) for text, row in answered if row.get("tier")]
    if not tiered:
        return {}
    correct = task.correct([text for text, _ in tiered], [row for _, row in tiered])
    by_tier: dict[str, list[float]] = {}
    for (_, row), ok in zip(tiered, correct):
        by_tier.setdefault(row["tier"], []).append(float(ok))
    return {f"train/accuracy/{tier}": sum(values) / len(values) for tier, values in sorted(by_tier.items())}


def completion_rows(batches: list[Batch], *, step: int, rank: int) -> list[dict[str, Any]]:
    """One row per sampled completion (completions.jsonl): the row's columns, the text, its rewards and advantage."""
    rows = []
    for b in batches:
        G = b.rollout.group_size
        for i, text in enumerate(b.rollout.texts):
            row = b.tasks[i // G]
            rows.append({"step": step, "rank": rank, **{k: v for k, v in row.items() if k != "prompt"},
                         "completion": text, "reward": b.rewards[i].item(), "advantage": b.advantages[i].item(),
                         **{f"rewards/{k}": v[i] for k, v in b.per_function.items()}})
    return rows
