"""Mean reward against wall-clock minutes for a training run, beside TRL's 30-minute CPU run on the same job (JSON).

    python bench/learning_curve.py runs/<timestamp>/train --out bench/cpu_learning_curve.png

The TRL reference (`../shared/peers/learning/trl_fp32_log.json`: TRL 1.16, 2 prompts x 4, 128 tokens, LoRA lr 1e-4,
beta 0, shaped reward 0.25 closing </think> + 0.25 one answer block + 0.5 strict format + 1.0 correct) is drawn when
the file exists. Our `cpu` preset's shaped reward has the same four terms plus 0.5 for using exactly the given numbers.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from grpo_helpers.dashboard import load_run  # noqa: E402

TRL_LOG = Path(__file__).resolve().parent.parent.parent / "shared" / "peers" / "learning" / "trl_fp32_log.json"


def moving_mean(values: list[float], window: int) -> list[float]:
    return [sum(values[max(0, i - window + 1):i + 1]) / len(values[max(0, i - window + 1):i + 1])
            for i in range(len(values))]


def summary(minutes: list[float], rewards: list[float], window: int = 5) -> dict:
    within = [r for m, r in zip(minutes, rewards) if m <= 30.0] or rewards[:1]
    first, last = rewards[:window], within[-window:]
    return {"steps": len(rewards), "minutes": round(minutes[-1], 1), "steps_within_30_min": len(within),
            f"mean_reward_first_{window}": round(sum(first) / len(first), 3),
            f"mean_reward_last_{window}_within_30_min": round(sum(last) / len(last), 3),
            "max_reward": round(max(rewards), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a trainer output folder (with metrics.jsonl)")
    parser.add_argument("--out", default="learning_curve.png")
    parser.add_argument("--trl-log", default=str(TRL_LOG))
    args = parser.parse_args()

    history, evals = load_run(args.run)
    if not history:
        raise SystemExit(f"{args.run} has no metrics.jsonl rows")
    minutes, elapsed = [], 0.0
    for row in history:
        elapsed += row["time/step"] / 60
        minutes.append(elapsed)
    rewards = [row["reward"] for row in history]
    report = {"ours": summary(minutes, rewards), "evals": evals}

    fig, ax = plt.subplots(figsize=(8, 4.2))
    ax.plot(minutes, rewards, ".", alpha=0.35, color="C0")
    ax.plot(minutes, moving_mean(rewards, 5), color="C0", label=f"grpo-notebooks ({len(rewards)} steps)")
    if Path(args.trl_log).is_file():
        log = json.loads(Path(args.trl_log).read_text())
        trl_minutes = [sum(log["step_sec_callback"][:i + 1]) / 60 for i in range(len(log["step_sec_callback"]))]
        trl_rewards = [row["reward"] for row in log["log_history"] if "reward" in row][:len(trl_minutes)]
        trl_minutes = trl_minutes[:len(trl_rewards)]
        ax.plot(trl_minutes, trl_rewards, ".", alpha=0.35, color="C1")
        ax.plot(trl_minutes, moving_mean(trl_rewards, 5), color="C1", label=f"TRL 1.16 ({len(trl_rewards)} steps)")
        report["trl"] = summary(trl_minutes, trl_rewards)
    ax.axvline(30, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("training minutes (2 CPU cores)")
    ax.set_ylabel("mean reward per step (dots), 5-step mean (line)")
    ax.set_title("Same job, same machine: bundled SmolLM2-135M, LoRA, 2 prompts x 4, 128 tokens")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    report["figure"] = args.out
    print(json.dumps(report))


if __name__ == "__main__":
    main()
