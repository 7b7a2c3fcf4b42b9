"""Seconds per GRPO step on the standard job, peak memory, and how the cost grows with G and length (JSON).

    python bench/step_time.py                   # the standard job: 1 warm-up + 5 timed steps
    python bench/step_time.py --sweep           # also G in (2, 4, 8) and max_new_tokens in (32, 64, 128)
    python bench/step_time.py --set lora_dropout 0   # the standard job with one field changed
    python bench/step_time.py --model random:Qwen/Qwen2.5-3B --device cuda   # GPU: Qwen2.5-3B shape, random weights
    python bench/step_time.py --model random:bench/model_configs/Qwen2.5-3B --tokenizer DIR --device cuda  # offline

The standard job is the one the peers in ../shared/peers run (TRL GRPOTrainer, AgileRL): the bundled
SmolLM2-135M-Instruct, LoRA r16/alpha64 on all projections, 2 prompts x G=4, 64 new tokens, temperature 0.7,
beta 0.04 (reference = adapter disabled), lr 5e-6, one update per rollout, 2 torch threads. Each configuration runs
in a fresh subprocess, so every peak RSS (ru_maxrss: the whole process, model load included) is its own.
Never run this beside other CPU work: with 2 cores any concurrent load inflates the timings.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

STANDARD = {"num_prompts": 2, "group_size": 4, "max_new_tokens": 64, "temperature": 0.7, "beta": 0.04, "lr": 5e-6,
            "lora_r": 16, "lora_alpha": 64, "lora_dropout": 0.05, "loss_type": "dapo", "eval_every": 0, "save_every": 0}


def rss_mib() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 2**20


def peak_rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def random_model(config_source: str, tokenizer_source: str, device: str, settings):
    """A model with the architecture of `config_source` (hub id or folder holding a config.json) and random weights,
    built directly on `device` (a 3B model initialises in seconds on a GPU), with the job's LoRA and checkpointing.
    For timing only: nothing is downloaded but the config and tokenizer, and nothing if both are folders."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from grpo_helpers.models import load_tokenizer, ready_for_training, resolve_attention, resolve_dtype

    tokenizer = load_tokenizer(tokenizer_source)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(
            AutoConfig.from_pretrained(config_source), dtype=resolve_dtype(settings.dtype, device),
            attn_implementation=resolve_attention(settings.attn_implementation, device))
    model = ready_for_training(model, tokenizer, gradient_checkpointing=settings.gradient_checkpointing, use_lora=True,
                               lora_r=settings.lora_r, lora_alpha=settings.lora_alpha,
                               lora_dropout=settings.lora_dropout, lora_target_modules=settings.lora_target_modules)
    return model, tokenizer


def run_one(args: argparse.Namespace, overrides: dict) -> dict:
    """Train `warmup + steps` steps of one configuration in this process and summarise the timed ones."""
    torch.set_num_threads(args.threads)
    from grpo_helpers.config import load_config
    from grpo_helpers.countdown.data import train_test_split
    from grpo_helpers.countdown.game import generate_countdown
    from grpo_helpers.trainer import GRPOTrainer

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        config = load_config("cpu", **{**STANDARD, **overrides, "output_dir": out, "seed": args.seed,
                                       "max_steps": args.warmup + args.steps,
                                       "reward_weights": {"format": 1.0, "equation": 1.0}})
        model = tokenizer = None
        if args.model.startswith("random:"):
            source = args.model.removeprefix("random:")
            model, tokenizer = random_model(source, args.tokenizer or source, args.device, config.model)
        train, test = train_test_split(generate_countdown(200, seed=args.seed), test_size=8, seed=args.seed)
        trainer = GRPOTrainer(config, train_dataset=train, eval_dataset=test, model=model, tokenizer=tokenizer)
        load_s, rss_after_load = time.perf_counter() - t0, rss_mib()
        rows, peaks = [], []
        for _ in range(args.warmup + args.steps):
            metrics, _ = trainer.train_step()
            rows.append(metrics)
            peaks.append(peak_rss_mib())  # shows which step set the peak
    timed = rows[args.warmup:]

    def median(key: str) -> float:
        return round(statistics.median(r[key] for r in timed), 3)

    tokens = sum(r["completions/total_tokens"] for r in timed)
    result = {
        "config": {**STANDARD, **overrides}, "model": args.model, "device": args.device,
        "sec_per_step_median": median("time/step"),
        "sec_per_step_all": [round(r["time/step"], 3) for r in rows],
        "generation_sec_median": median("time/generation"), "reference_sec_median": median("time/reference"),
        "train_sec_median": median("time/train"),
        "completion_tokens_per_step_mean": tokens / len(timed),
        "completion_tokens_per_sec": round(tokens / sum(r["time/step"] for r in timed), 2),
        "gen_tokens_per_sec_median": median("gen_tokens_per_sec"),
        "ms_per_completion_token": round(1000 * sum(r["time/step"] for r in timed) / tokens, 2),
        "mean_reward_per_step_all": [round(r["reward"], 3) for r in rows],
        "load_sec": round(load_s, 2), "rss_after_load_mib": round(rss_after_load, 1),
        "peak_rss_mib": peak_rss_mib(), "peak_rss_mib_after_each_step": peaks,
        "completion_tokens_per_step_all": [int(r["completions/total_tokens"]) for r in rows],
    }
    if torch.cuda.is_available() and args.device == "cuda":
        result["cuda_peak_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        result["cuda_peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 2)
        result["attn_implementation"] = trainer.unwrapped_model.config._attn_implementation
        result["dtype"] = str(next(trainer.unwrapped_model.parameters()).dtype)
        result["gpu"] = torch.cuda.get_device_name()
    return result


def in_subprocess(args: argparse.Namespace, overrides: dict) -> dict:
    cmd = [sys.executable, __file__, "--one", json.dumps(overrides), "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--threads", str(args.threads), "--seed", str(args.seed),
           "--model", args.model, "--device", args.device] + (["--tokenizer", args.tokenizer] if args.tokenizer else [])
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--sweep", action="store_true", help="also vary group size and completion length")
    parser.add_argument("--model", default="bundled", help="'bundled' or 'random:<hub id>' (config only)")
    parser.add_argument("--tokenizer", help="for random:<source>: another tokenizer (hub id or folder), e.g. offline")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--set", nargs=2, action="append", default=[], metavar=("FIELD", "VALUE"),
                        help="change a field of the standard job (YAML value), e.g. --set lora_dropout 0")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one configuration, print its JSON
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(run_one(args, json.loads(args.one))))
        return

    changes = {name: yaml.safe_load(value) for name, value in args.set}
    report = {"machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads,
                          "torch": torch.__version__, "python": platform.python_version()},
              "standard": in_subprocess(args, changes)}
    if args.sweep:
        sweep = [{"group_size": g} for g in (2, 8)] + [{"max_new_tokens": n} for n in (32, 128)]
        rows = [in_subprocess(args, {**changes, **overrides}) for overrides in sweep]
        report["sweep"] = [{**overrides, "sec_per_step_median": r["sec_per_step_median"],
                            "completion_tokens_per_step_mean": r["completion_tokens_per_step_mean"],
                            "ms_per_completion_token": r["ms_per_completion_token"], "peak_rss_mib": r["peak_rss_mib"]}
                           for overrides, r in zip(sweep, rows)]
    print(json.dumps(report))


if __name__ == "__main__":
    main()
