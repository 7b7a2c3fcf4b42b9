"""Does GRPO peak and then decline? The `cpu` preset's GRPO with the held-out set evaluated every few steps.

    python bench/grpo_curve.py --cold-start runs/tutorial/train/cold_start/adapter --eval-every 8 --eval-tasks 50
    python bench/grpo_curve.py --out /tmp/grpo_curve                  # trains the preset's cold start first

Chapter 04 evaluates only at the first and last step, so a run that rises and falls between them looks like a run
that rose a little (issue 30: training accuracy ~0.4 at step 24, 0.12 at step 40). This trains the preset's GRPO
from a cold start (the preset's own, trained into --out unless --cold-start names a finished one) with greedy
held-out evaluation every --eval-every steps on --eval-tasks tasks of each tier, and prints JSON lines: one per
evaluation (accuracy per tier with its Wilson 95 % interval, the aha metrics, mean length), one per window of
training steps (training accuracy, reward, entropy, length, grad norm: what moves first), and last the best
evaluation against the final one. Overrides of the preset (`--set lr 1e-5`) test a remedy on the same tasks.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without `pip install -e .`

from grpo_helpers.config import load_config  # noqa: E402
from grpo_helpers.countdown.data import load_split  # noqa: E402
from grpo_helpers.sft import run_cold_start  # noqa: E402
from grpo_helpers.trainer import GRPOTrainer  # noqa: E402
from grpo_helpers.yaml_values import command_line_value  # noqa: E402

WINDOW_METRICS = ("hack/accuracy", "reward", "entropy", "completions/mean_length", "grad_norm",
                  "frac_reward_zero_std")


def window_means(history: list[dict], *, size: int) -> list[dict]:
    """Mean of each training metric over consecutive windows of `size` steps (single steps are too noisy: a
    2-prompt batch's accuracy moves in steps of 1/16)."""
    out = []
    for first in range(0, len(history), size):
        rows = history[first:first + size]
        out.append({"steps": [rows[0]["step"], rows[-1]["step"]],
                    **{name: round(sum(r[name] for r in rows) / len(rows), 3) for name in WINDOW_METRICS}})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cold-start", default="", help="a finished cold start's adapter folder (default: train one)")
    parser.add_argument("--eval-every", type=int, default=8)
    parser.add_argument("--eval-tasks", type=int, default=50, help="held-out tasks per tier at each evaluation")
    parser.add_argument("--window", type=int, default=5, help="training steps averaged per printed line")
    parser.add_argument("--set", nargs=2, action="append", default=[], metavar=("FIELD", "VALUE"),
                        help="override a preset field (repeatable), e.g. --set lr 1e-5")
    parser.add_argument("--out", default="/tmp/grpo_curve")
    args = parser.parse_args()

    overrides = {name: command_line_value(value, option="--set") for name, value in args.set}
    config = load_config("cpu", output_dir=args.out, overwrite=True, **overrides)
    train, test = load_split(config.data, seed=config.train.seed)
    cold_start = Path(args.cold_start) if args.cold_start else run_cold_start(config, train_dataset=train)
    grpo = config.replace(init_adapter=str(cold_start), eval_every=args.eval_every, eval_tasks=args.eval_tasks,
                          output_dir=f"{args.out}/grpo")
    trainer = GRPOTrainer(grpo, train_dataset=train, eval_dataset=test)
    history = trainer.train()
    tiers = sorted({key.split("/")[1] for row in trainer.eval_history for key in row
                    if key.endswith("/accuracy") and key.count("/") == 2})
    for row in trainer.eval_history:
        print(json.dumps({"eval_step": row["step"], "accuracy": round(row["eval/accuracy"], 3),
                          **{tier: [round(row[f"eval/{tier}/accuracy"], 3),
                                    [round(row[f"eval/{tier}/accuracy_low"], 3),
                                     round(row[f"eval/{tier}/accuracy_high"], 3)]] for tier in tiers},
                          "aha_rate": row.get("eval/aha/rate"), "false_claims": row.get("eval/aha/false_claims"),
                          "mean_length": round(row["eval/mean_length"], 1)}), flush=True)
    for window in window_means(history, size=args.window):
        print(json.dumps({"train_window": window}), flush=True)
    best = max(trainer.eval_history, key=lambda row: row["eval/accuracy"])
    final = trainer.eval_history[-1]
    print(json.dumps({"best_step": best["step"], "best_accuracy": round(best["eval/accuracy"], 3),
                      "final_step": final["step"], "final_accuracy": round(final["eval/accuracy"], 3),
                      "overrides": overrides, "minutes": round(sum(r["time/step"] for r in history) / 60, 1)}))


if __name__ == "__main__":
    main()
