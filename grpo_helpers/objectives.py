"""Objectives compared on one budget: the arms of chapter 07 and bench/objectives.py, one switch at a time.

Every arm starts from the same adapter (chapter 04's cold start), trains on the same prompts with the same group
size and token cap until it has generated the same number of tokens (`TokenBudget`: an arm whose completions are
shorter, or that samples fewer fresh prompts, gets more steps for the same compute), and is judged by held-out
greedy accuracy with Wilson 95 % intervals; only the switch its name says differs from the baseline (the `cpu`
preset's dapo). All arms take `num_iterations = 2` passes per rollout: with a single pass the policy that is
trained is the one that sampled, every importance ratio is exactly 1, and GSPO's sequence ratio and CISPO's capped
weight change nothing (GSPO is then grpo, CISPO is dapo). The second pass is where they differ.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

from grpo_helpers.callbacks import Callback
from grpo_helpers.config import load_config
from grpo_helpers.errors import UsageError
from grpo_helpers.evaluation import wilson_interval
from grpo_helpers.trainer import GRPOTrainer

BASELINE: dict[str, Any] = {"num_iterations": 2}  # on top of the cpu preset: see the module docstring
ARMS: dict[str, dict[str, Any]] = {
    "dapo": {},  # the baseline: the cpu preset's token-level sum over the window, beta 0, dynamic sampling on
    "grpo": {"loss_type": "grpo"},
    "dr_grpo": {"loss_type": "dr_grpo"},
    "gspo": {"loss_type": "grpo", "importance_sampling_level": "sequence", "clip_eps_low": 3e-4,
             "clip_eps_high": 4e-4},  # GSPO's paper: sequence ratios, per-sequence mean, tiny clip ranges
    "cispo": {"loss_type": "cispo"},
    "beta 0.04": {"beta": 0.04},  # a KL penalty to the cold start (costs a reference pass)
    "mask truncated": {"mask_truncated_completions": True},
    "no dynamic sampling": {"dynamic_sampling": 0},
}


class TokenBudget(Callback):
    """Stops training after the step at which the tokens generated so far (kept or swapped out by dynamic sampling)
    reach `tokens`: the matrix's budget. The last step overshoots it by at most one step's tokens."""

    def __init__(self, tokens: int):
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
            raise UsageError(f"token budget={tokens!r} is not allowed: a whole number of tokens >= 1")
        self.tokens, self.spent = tokens, 0.0

    def on_step_end(self, trainer: GRPOTrainer, metrics: dict[str, Any]) -> None:
        self.spent += metrics["generated_tokens"]
        if self.spent >= self.tokens:
            trainer.should_stop = True


def arm_config(arm: str, *, seed: int, steps: int, output_dir: str | Path, init_adapter: str = "",
               preset: str = "cpu", **overrides: Any):
    """The preset (the matrix's is `cpu`), then BASELINE, then the arm's switch, then `overrides` (model, sizes)."""
    if arm not in ARMS:
        raise UsageError(f"arm={arm!r} is not allowed: one of {', '.join(ARMS)}")
    return load_config(preset, **{**BASELINE, **ARMS[arm], **overrides}, max_steps=steps, seed=seed,
                       init_adapter=init_adapter, eval_every=0, save_every=0, keep_last=1, overwrite=True,
                       output_dir=str(output_dir))


def run_arm(arm: str, *, seed: int, steps: int, output_dir: str | Path, train_dataset: list[dict],
            eval_dataset: list[dict], init_adapter: str = "", eval_tasks: int = 32, token_budget: int = 0,
            **overrides: Any) -> dict[str, Any]:
    """Train one arm for `steps` steps (with a `token_budget`: until it has generated that many tokens, `steps` at
    most) and evaluate it greedily on the first `eval_tasks` held-out tasks of each tier; returns what the comparison
    needs: curves, tokens generated, time, and per-tier successes."""
    config = arm_config(arm, seed=seed, steps=steps, output_dir=output_dir, init_adapter=init_adapter,
                        eval_tasks=eval_tasks, **overrides)
    callbacks = [TokenBudget(token_budget)] if token_budget else []
    trainer = GRPOTrainer(config, train_dataset=train_dataset, eval_dataset=eval_dataset, callbacks=callbacks)
    history = trainer.train()
    result = {
        "arm": arm, "seed": seed, "steps": len(history), "switch": ARMS[arm],
        "reward": [row["reward"] for row in history],
        "entropy": [row.get("entropy") for row in history],
        "zero_std": [row.get("dynamic/zero_std_before", row["frac_reward_zero_std"]) for row in history],
        "generated_tokens": sum(row["generated_tokens"] for row in history),
        "extra_prompts": sum(row.get("dynamic/extra_prompts", 0) for row in history),
        "seconds": sum(row["time/step"] for row in history),
        "eval": _solved_per_tier(trainer),
    }
    del trainer
    gc.collect()
    return result


def evaluate_start(*, seed: int, output_dir: str | Path, train_dataset: list[dict], eval_dataset: list[dict],
                   init_adapter: str = "", eval_tasks: int = 32, **overrides: Any) -> dict[str, dict[str, int]]:
    """Where every arm starts: the starting adapter's successes per tier, on the same held-out tasks."""
    config = arm_config("dapo", seed=seed, steps=1, output_dir=output_dir, init_adapter=init_adapter,
                        eval_tasks=eval_tasks, **overrides)
    trainer = GRPOTrainer(config, train_dataset=train_dataset, eval_dataset=eval_dataset)  # trains nothing
    solved = _solved_per_tier(trainer)
    del trainer
    gc.collect()
    return solved


def _solved_per_tier(trainer: GRPOTrainer) -> dict[str, dict[str, int]]:
    """Greedy successes per tier ("all" for tasks without tiers) on the trainer's `eval_tasks` held-out tasks."""
    evaluation = trainer.evaluate()
    tiers = sorted({key.split("/")[1] for key in evaluation if key.endswith("/accuracy_low")})
    prefixes = {tier: f"eval/{tier}/" for tier in tiers} or {"all": "eval/"}
    return {tier: {"solved": round(evaluation[f"{p}accuracy"] * evaluation[f"{p}num_tasks"]),
                   "tasks": evaluation[f"{p}num_tasks"]} for tier, p in prefixes.items()}


def summarize(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per arm and tier: successes pooled over seeds (seeds x tasks answers, the same tasks each seed) with a
    Wilson 95 % interval, each seed's accuracy, and the mean steps, final reward and tokens generated."""
    rows = []
    for arm in [a for a in ARMS if any(r["arm"] == a for r in results)]:
        runs = sorted((r for r in results if r["arm"] == arm), key=lambda r: r["seed"])
        for tier in sorted(runs[0]["eval"]):
            solved = sum(r["eval"][tier]["solved"] for r in runs)
            answers = sum(r["eval"][tier]["tasks"] for r in runs)
            low, high = wilson_interval(solved, answers)
            rows.append({"arm": arm, "tier": tier, "seeds": [r["seed"] for r in runs], "solved": solved,
                         "answers": answers, "accuracy": solved / answers, "low": low, "high": high,
                         "per_seed": [r["eval"][tier]["solved"] / r["eval"][tier]["tasks"] for r in runs],
                         "steps": sum(r["steps"] for r in runs) / len(runs),
                         "final_reward": sum(r["reward"][-1] for r in runs) / len(runs),
                         "generated_tokens": sum(r["generated_tokens"] for r in runs) / len(runs)})
    return rows


def plot_objectives(results: list[dict[str, Any]], *, start: dict[str, dict[str, int]] | None = None,
                    title: str = "objectives on one budget"):
    """Held-out accuracy per arm and tier (pooled over seeds, Wilson 95 %; the dashed line is the starting
    adapter's) beside every run's reward curve."""
    import matplotlib.pyplot as plt

    rows = summarize(results)
    tiers = sorted({row["tier"] for row in rows})
    arms = list(dict.fromkeys(row["arm"] for row in rows))
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 4.5), constrained_layout=True)
    width = 0.8 / max(1, len(tiers))
    for t, tier in enumerate(tiers):
        mine = [next(r for r in rows if r["arm"] == arm and r["tier"] == tier) for arm in arms]
        x = [i + (t - (len(tiers) - 1) / 2) * width for i in range(len(arms))]
        acc = [r["accuracy"] for r in mine]
        err = [[a - r["low"] for a, r in zip(acc, mine)], [r["high"] - a for a, r in zip(acc, mine)]]
        bars = left.bar(x, acc, width=width, yerr=err, capsize=3, label=tier)
        if start and tier in start:
            left.axhline(start[tier]["solved"] / start[tier]["tasks"], ls="--", lw=1,
                         color=bars.patches[0].get_facecolor(), label=f"{tier} at the start")
    left.set_xticks(range(len(arms)), arms, rotation=30, ha="right")
    left.set(title="held-out greedy accuracy (seeds pooled, Wilson 95 %)", ylim=(0, 1))
    left.legend(fontsize=8)
    colors = {arm: plt.cm.tab10(i % 10) for i, arm in enumerate(arms)}
    first_seed = min(r["seed"] for r in results)
    for run in results:
        first = run["seed"] == first_seed
        right.plot(range(1, len(run["reward"]) + 1), run["reward"], color=colors[run["arm"]], alpha=0.8,
                   ls="-" if first else "--", label=run["arm"] if first else None)
    right.set(title="training reward per step (one line per seed)", xlabel="step")
    right.legend(fontsize=7, ncol=2)
    fig.suptitle(title)
    return fig


__all__ = ["ARMS", "BASELINE", "TokenBudget", "arm_config", "run_arm", "evaluate_start", "summarize",
           "plot_objectives"]
