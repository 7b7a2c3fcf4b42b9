"""Dataset statistics and their figure (chapter 01): targets, sizes, difficulty, prompt lengths."""

from __future__ import annotations

import random
import statistics
from collections import Counter
from typing import Any

from grpo_helpers.checks import require_int
from grpo_helpers.countdown.game import count_solutions
from grpo_helpers.countdown.prompts import render_prompts

def dataset_stats(rows: list[dict], tokenizer=None, *, sample_size: int = 1000, seed: int = 0,
                  progress: bool = False) -> dict:
    """Numbers for the dataset plots: every target and task size; the difficulty (count_solutions) and prompt
    token length on a random sample of `sample_size` rows (the solver costs ~ms per 4-number task)."""
    require_int("sample_size", sample_size, 1)
    sample = rows if len(rows) <= sample_size else random.Random(seed).sample(rows, sample_size)
    if progress:
        from tqdm.auto import tqdm
        sample_iter = tqdm(sample, desc="count_solutions")
    else:
        sample_iter = sample
    difficulty = [count_solutions(r["nums"], r["target"]) for r in sample_iter]
    stats: dict[str, Any] = {
        "num_tasks": len(rows),
        "targets": [r["target"] for r in rows],
        "sizes": dict(sorted(Counter(len(r["nums"]) for r in rows).items())),
        "sample_size": len(sample),
        "difficulty": difficulty,
        "solvable_fraction": sum(d > 0 for d in difficulty) / len(difficulty),
        "median_solutions": statistics.median(difficulty),
        "prompt_tokens": None,
    }
    if tokenizer is not None:
        ids = tokenizer(render_prompts(tokenizer, sample), add_special_tokens=False)["input_ids"]
        stats["prompt_tokens"] = [len(x) for x in ids]
    return stats


def plot_dataset_stats(stats: dict):
    """2x2 figure: targets, difficulty (power-of-two buckets), task sizes, prompt token lengths."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    ax = axes[0, 0]
    ax.hist(stats["targets"], bins=50, color="tab:blue")
    ax.set(title=f"target ({stats['num_tasks']} tasks)", xlabel="target", ylabel="tasks")

    ax = axes[0, 1]
    # solutions per task in power-of-two buckets 0, 1, 2-3, 4-7, ...: the spread covers orders of magnitude
    buckets = Counter(0 if d == 0 else int(d).bit_length() for d in stats["difficulty"])
    top = max(buckets)
    labels = ["0"] + [str(2 ** (k - 1)) if k == 1 else f"{2 ** (k - 1)}-{2 ** k - 1}" for k in range(1, top + 1)]
    ax.bar(labels, [buckets.get(k, 0) for k in range(top + 1)], color="tab:orange")
    ax.tick_params(axis="x", labelrotation=45)
    ax.set(title=f"solutions per task (sample of {stats['sample_size']}; 0 = impossible)",
           xlabel="distinct expression trees", ylabel="tasks")

    ax = axes[1, 0]
    ax.bar([str(k) for k in stats["sizes"]], list(stats["sizes"].values()), color="tab:green")
    ax.set(title="numbers per task", xlabel="numbers", ylabel="tasks")

    ax = axes[1, 1]
    if stats.get("prompt_tokens"):
        ax.hist(stats["prompt_tokens"], bins=20, color="tab:purple")
        ax.set(title="prompt length", xlabel="tokens", ylabel="tasks")
    else:
        ax.text(0.5, 0.5, "no tokenizer given", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
    fig.tight_layout()
    return fig


__all__ = ["dataset_stats", "plot_dataset_stats"]
