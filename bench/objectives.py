"""The objectives matrix of chapter 07: every arm of grpo_helpers.objectives.ARMS x seeds, one budget, JSON out.

    python bench/objectives.py --init-adapter runs/<timestamp>/train/cold_start/adapter   # ~1 h 35 min, 2 cores

Each run trains one arm from the same starting adapter (chapter 04's cold start; without --init-adapter one is
trained first with the cpu preset's cold start, about 15 minutes more) until it has generated --token-budget tokens
(--steps steps at most) and evaluates it greedily on the first --eval-tasks held-out tasks of each tier. Every
finished run is appended to --results (JSON lines, rewritten atomically), and runs already there are skipped, so a
killed matrix resumes where it stopped. After every run it redraws the figure, and at the end it prints the summary
(grpo_helpers.objectives.summarize) as one JSON object.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from grpo_helpers.config import load_config  # noqa: E402
from grpo_helpers.countdown.data import load_jsonl, load_split, save_jsonl  # noqa: E402
from grpo_helpers.objectives import ARMS, evaluate_start, plot_objectives, run_arm, summarize  # noqa: E402
from grpo_helpers.sft import ColdStart  # noqa: E402

SMOKE = dict(group_size=2, max_new_tokens=16, num_prompts=1, sft_steps=2)  # --smoke: sizes that only test the path


def cold_start(work: Path, *, seed: int, train_dataset: list[dict], overrides: dict) -> str:
    """The cpu preset's cold start, trained once into `work` (reused when it is already there)."""
    adapter = work / "cold_start" / "adapter"
    if not (adapter / "adapter_config.json").is_file():
        config = load_config("cpu", seed=seed, output_dir=str(work), overwrite=True, **overrides)
        adapter = ColdStart(config, train_dataset=train_dataset).train()
    return str(adapter)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--init-adapter", default="", help="the adapter every arm starts from (default: train one)")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS), metavar="ARM")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--token-budget", type=int, default=10000,
                        help="tokens generated per run (dynamic sampling's swapped-out groups count); 0: --steps steps")
    parser.add_argument("--steps", type=int, default=12, help="GRPO steps per run at most")
    parser.add_argument("--eval-tasks", type=int, default=32, help="held-out tasks per tier, greedy")
    parser.add_argument("--data-seed", type=int, default=42, help="the train/test split (chapter 01's)")
    parser.add_argument("--results", default="bench/objectives.jsonl")
    parser.add_argument("--figure", default="bench/objectives.png")
    parser.add_argument("--work", default="runs/objectives", help="run folders and the cold start")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the path, measures nothing")
    args = parser.parse_args()

    overrides = SMOKE if args.smoke else {}
    sft_steps = overrides.get("sft_steps")
    run_sizes = {k: v for k, v in overrides.items() if k != "sft_steps"}
    work, results_path = Path(args.work), Path(args.results)
    train_tasks, test_tasks = load_split(load_config("cpu").data, seed=args.data_seed)
    adapter = args.init_adapter or cold_start(work, seed=args.data_seed, train_dataset=train_tasks,
                                              overrides={} if sft_steps is None else {"sft_steps": sft_steps})
    rows = load_jsonl(results_path) if results_path.is_file() else []
    weights = Path(adapter) / "adapter_model.safetensors"
    settings = {"token_budget": args.token_budget, "steps": args.steps, "eval_tasks": args.eval_tasks,
                "sizes": run_sizes, "data_seed": args.data_seed,
                "init_adapter_sha256": hashlib.sha256(weights.read_bytes()).hexdigest()[:16]}  # not its path
    other = next((row["settings"] for row in rows if row.get("settings") != settings), None)
    if other is not None:  # a different budget is a different matrix: never mixed in, never overwritten
        raise SystemExit(f"{results_path} holds a matrix with other settings ({other}; this one: {settings}): "
                         f"pass another --results, or move that file away to start over")
    if not any(row["arm"] == "start" for row in rows):
        start = evaluate_start(seed=args.seeds[0], output_dir=work / "start", train_dataset=train_tasks,
                               eval_dataset=test_tasks, init_adapter=adapter, eval_tasks=args.eval_tasks, **run_sizes)
        rows.append({"arm": "start", "settings": settings, "init_adapter": adapter, "eval": start})
        save_jsonl(rows, results_path)

    def draw() -> None:
        runs = [row for row in rows if row["arm"] != "start"]
        seeds = sorted({row["seed"] for row in runs})
        budget = (f"{args.token_budget:,} generated tokens per run" if args.token_budget
                  else f"{args.steps} GRPO steps per run")
        fig = plot_objectives(runs, start=start, title=f"{budget} from the cold start, seeds {seeds}, "
                                                        f"{args.eval_tasks} held-out tasks per tier")
        fig.savefig(args.figure, dpi=110)
        plt.close(fig)

    start = next(row["eval"] for row in rows if row["arm"] == "start")
    began = time.perf_counter()
    for seed in args.seeds:
        for arm in args.arms:
            if any(row["arm"] == arm and row.get("seed") == seed for row in rows):
                continue  # done before a restart
            result = run_arm(arm, seed=seed, steps=args.steps, output_dir=work / f"{arm.replace(' ', '_')}-{seed}",
                             train_dataset=train_tasks, eval_dataset=test_tasks, init_adapter=adapter,
                             eval_tasks=args.eval_tasks, token_budget=args.token_budget, **run_sizes)
            rows.append({**result, "settings": settings})
            save_jsonl(rows, results_path)
            draw()
            print(json.dumps({"arm": arm, "seed": seed, "eval": result["eval"], "steps": result["steps"],
                              "generated_tokens": result["generated_tokens"], "seconds": round(result["seconds"])}),
                  flush=True)
    print(json.dumps({"settings": settings, "start": start, "figure": args.figure,
                      "summary": summarize([row for row in rows if row["arm"] != "start"]),
                      "minutes_this_call": round((time.perf_counter() - began) / 60, 1)}))


if __name__ == "__main__":
    main()
