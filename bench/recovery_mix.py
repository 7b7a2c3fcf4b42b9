"""Which share of recovering traces should the cold start see? One cold start per share, judged on held-out tasks.

    python bench/recovery_mix.py --shares 0 0.5 --out /tmp/recovery_mix          # the CPU recipe's sizes
    python bench/recovery_mix.py --shares 0 0.5 --sft-steps 20 --tier-tasks 16   # a quick look
    python bench/recovery_mix.py --shares 0.5 --reuse --grpo-steps 40            # then GRPO, as chapter 04 does

A recovering trace (countdown/traces.py, `sft_recovery_share`) makes one slip and catches it ("9 * 4 = 34. Check:
9 * 4 = 36, not 34") and recomputes its answer before `</think>`. Each share trains the CPU preset's cold start
from the same seed on the same split, then answers the same held-out tasks greedily (the preset's tiers and, with
--seed-tasks, the seed tier); printed per share and tier as JSON lines: accuracy with its Wilson 95 % interval, the
aha metrics (claims recomputed, grpo_helpers/aha.py), mean length and the training minutes, then the paired
sign test of every share against the first on the same tasks. With --grpo-steps the preset's GRPO then trains from
each cold start (as chapter 04 does) and the GRPO adapter is judged instead; --reuse takes a finished cold start
from --out rather than training it again.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without `pip install -e .`

from grpo_helpers.config import load_config  # noqa: E402
from grpo_helpers.countdown.data import held_out_tier, load_split  # noqa: E402
from grpo_helpers.countdown.task import countdown_task  # noqa: E402
from grpo_helpers.evaluation import evaluate_tiers, paired_sign_test, split_by, tier_metrics  # noqa: E402
from grpo_helpers.inference import load_policy  # noqa: E402
from grpo_helpers.sft import run_cold_start  # noqa: E402
from grpo_helpers.trainer import GRPOTrainer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shares", nargs="+", type=float, default=[0.0, 0.5])
    parser.add_argument("--sft-steps", type=int, default=None, help="default: the cpu preset's")
    parser.add_argument("--tier-tasks", type=int, default=100, help="held-out tasks per tier")
    parser.add_argument("--seed-tasks", type=int, default=0, help="also judge this many seed-tier tasks")
    parser.add_argument("--grpo-steps", type=int, default=0,
                        help="GRPO steps after each cold start (0: judge the cold start itself)")
    parser.add_argument("--reuse", action="store_true", help="reuse a finished cold start in --out")
    parser.add_argument("--out", default="/tmp/recovery_mix")
    args = parser.parse_args()

    task = countdown_task()
    results = {}
    for share in args.shares:
        overrides = {"sft_recovery_share": share, "output_dir": f"{args.out}/share-{share}", "resume": args.reuse,
                     "overwrite": not args.reuse}
        if args.sft_steps is not None:
            overrides["sft_steps"] = args.sft_steps
        config = load_config("cpu", **overrides)
        train, test = load_split(config.data, seed=config.train.seed)
        start = time.perf_counter()
        adapter = run_cold_start(config, train_dataset=train)
        if args.grpo_steps:
            grpo = config.replace(init_adapter=str(adapter), max_steps=args.grpo_steps, eval_every=0, resume=False,
                                  overwrite=True, output_dir=f"{args.out}/share-{share}/grpo")
            trainer = GRPOTrainer(grpo, train_dataset=train, eval_dataset=test)
            trainer.train()
            adapter = trainer.save_adapter(f"{grpo.train.output_dir}/adapter")
            del trainer
        minutes = (time.perf_counter() - start) / 60
        policy, tokenizer = load_policy(config.model.model, adapter)
        tasks = test + (held_out_tier(args.seed_tasks, tier="seed", train=train) if args.seed_tasks else [])
        results[share] = evaluate_tiers(policy, tokenizer, tasks, task=task,
                                        per_tier=args.tier_tasks, max_new_tokens=config.rollout.max_new_tokens,
                                        greedy=True, batch_size=config.train.eval_batch_size, seed=config.train.seed, desc=f"share {share}")
        for tier, result in results[share].items():
            metrics = tier_metrics({tier: result}, task=task)
            sizes = sorted(split_by(result, key=lambda record: len(record["nums"]), task=task).items())
            print(json.dumps({"share": share, "tier": tier, "tasks": result.num_tasks, "solved": sum(result.solved),
                              "accuracy": round(result.accuracy, 3),
                              "accuracy_ci": [round(x, 3) for x in result.accuracy_ci],
                              "by_size": {n: [sum(part.solved), part.num_tasks, [round(x, 3) for x in part.accuracy_ci]]
                                          for n, part in sizes},
                              **{k[5:]: round(v, 3) for k, v in metrics.items() if k.startswith("eval/aha/")},
                              "mean_length": round(result.mean_length, 1), "train_minutes": round(minutes, 1),
                              "sft_steps": config.cold_start.sft_steps, "grpo_steps": args.grpo_steps}), flush=True)
        del policy
    first = args.shares[0]
    for share in args.shares[1:]:
        for tier in results[first]:
            print(json.dumps({"paired": f"share {share} vs {first}", "tier": tier,
                              **paired_sign_test(results[first][tier], results[share][tier])}), flush=True)


if __name__ == "__main__":
    main()
