"""The learning record of a training run (JSON) and its curves (PNG): reward, hack monitor, per-tier accuracy.

    python bench/learning_curve.py runs/<timestamp>/train --out bench/cpu_learning_curve.png

Reads `metrics.jsonl` and `eval.jsonl` of a trainer output folder (and `cold_start/metrics.jsonl` when the run
had a cold start) and prints what learning is judged by: held-out accuracy per tier with Wilson 95 % intervals at
each evaluation, the hack monitor's shares at the start and end, and the cost. TRL's CPU learning reference
(`../shared/peers/learning/`) trained with the old shaped reward, so its reward curve is not comparable to this one.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from grpo_helpers.dashboard import load_run, plot_metrics  # noqa: E402

MONITOR = ("reward", "hack/accuracy", "hack/uses_numbers", "hack/identical_answers", "hack/copies_example",
           "frac_reward_zero_std", "dynamic/zero_std_before", "completions/mean_length")


def window_means(history: list[dict], window: int = 10) -> dict:
    def mean(rows: list[dict], key: str) -> float | None:
        values = [r[key] for r in rows if key in r]
        return round(sum(values) / len(values), 3) if values else None

    return {f"first_{window}": {k: mean(history[:window], k) for k in MONITOR},
            f"last_{window}": {k: mean(history[-window:], k) for k in MONITOR}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a trainer output folder (with metrics.jsonl)")
    parser.add_argument("--out", default="learning_curve.png")
    args = parser.parse_args()

    history, evals = load_run(args.run)
    if not history:
        raise SystemExit(f"{args.run} has no metrics.jsonl rows")
    report = {"steps": len(history), "grpo_minutes": round(sum(m["time/step"] for m in history) / 60, 1),
              "evals": evals, **window_means(history)}
    cold = Path(args.run) / "cold_start" / "metrics.jsonl"
    if cold.is_file():
        rows = [json.loads(line) for line in cold.read_text().splitlines() if line]
        report["cold_start"] = {"steps": len(rows), "minutes": round(sum(r["time/step"] for r in rows) / 60, 1),
                                "first_loss": rows[0]["loss"], "last_loss": rows[-1]["loss"]}
    fig = plot_metrics(history, evals, title=f"cold start + GRPO on 2 CPU cores ({Path(args.run).parent.name})")
    fig.savefig(args.out, dpi=110)
    report["figure"] = args.out
    print(json.dumps(report))


if __name__ == "__main__":
    main()
