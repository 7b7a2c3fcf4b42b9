"""Every strategy on all GPUs of this machine: one GPU, DDP, DeepSpeed ZeRO-2 and ZeRO-3, each launched through
launch/launch.sh as a user launches it, for the bundled model and the Qwen2.5-3B shape (random weights, nothing
downloaded). One JSON line per run: seconds per step and completion tokens per second after warm-up, and what each
rank held (model states and peak GPU memory, from the run's model_states.json).

    python bench/scale_gpu.py                                  # all strategies, both models, 6 steps (2 warm-up)
    python bench/scale_gpu.py --strategies ddp zero3 --models qwen2.5-3b-shape --steps 10
    python bench/scale_gpu.py --cpu                            # the same matrix on 2 CPU processes (checks the script)

The job per rank is the standard one of bench/step_time.py (2 prompts x G=4, 64 new tokens) for the bundled model
and the gpu-qwen2.5-3b preset's (4 prompts x G=12, 1024 new tokens, LoRA r16) for the 3B shape; the number of
GPUs multiplies the prompts per step, so compare tokens per second, not seconds per step, across GPU counts.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from grpo_helpers.launcher import settings_arguments  # noqa: E402
from grpo_helpers.model_states import read_model_states  # noqa: E402

GPU_STRATEGIES = ("single_gpu", "ddp", "zero2", "zero3")
CPU_STRATEGIES = ("cpu_2proc", "cpu_zero2", "cpu_zero3")
JOBS = {
    "bundled": dict(config="cpu", settings=dict(num_prompts=2, group_size=4, max_new_tokens=64, temperature=0.7,
                                                sft_steps=0, dynamic_sampling=0, beta=0.04, lr=5e-6)),
    "qwen2.5-3b-shape": dict(config=str(ROOT / "launch" / "configs" / "qwen2.5-3b-countdown.yaml"),
                             settings=dict(dataset="generated", num_tasks=2000, test_size=50)),
}


def random_qwen_shape(folder: Path) -> Path:
    """A model folder with Qwen2.5-3B's architecture (bench/model_configs) and random bf16 weights, and the bundled
    tokenizer (its ids fit the larger vocabulary): timing only, built offline."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from grpo_helpers.models import bundled_model_dir, load_tokenizer

    if not (folder / "config.json").is_file():
        config = AutoConfig.from_pretrained(ROOT / "bench" / "model_configs" / "Qwen2.5-3B")
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        model.save_pretrained(folder)
        load_tokenizer(str(bundled_model_dir())).save_pretrained(folder)
        del model
    return folder


def run(strategy: str, job: str, *, model: str | None, steps: int, processes: int, cpu: bool, folder: Path) -> dict:
    """One launch; its measurements, or the tail of its output if it failed."""
    settings = {**JOBS[job]["settings"], "max_steps": steps, "save_every": 0, "eval_every": 0,
                "output_dir": str(folder), "overwrite": True}
    if model is not None:
        settings["model"] = model
    command = ["bash", str(ROOT / "launch" / "launch.sh"), strategy, "--config", JOBS[job]["config"],
               *(["--cpu"] if cpu else []), *settings_arguments(settings)]
    env = {**os.environ, "NUM_PROCESSES": str(processes)}
    if cpu:
        env["OMP_NUM_THREADS"] = "1"
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    row: dict = {"strategy": strategy, "model": job, "processes": processes}
    if done.returncode != 0:
        return {**row, "error": (done.stdout + done.stderr)[-2000:]}
    metrics = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    timed = metrics[min(2, len(metrics) - 1):]  # after warm-up (compilation, allocator growth)
    states = read_model_states(folder / "model_states.json")
    return {**row, "timed_steps": len(timed),
            "s_per_step": statistics.mean(m["time/step"] for m in timed),
            "tokens_per_sec": statistics.mean(m["tokens_per_sec"] for m in timed),
            "parameters": states["parameters"], "trainable": states["trainable"],
            "ranks": [{key: round(value / 2**30, 4) for key, value in rank.items()} for rank in states["ranks"]],
            "unit": "GiB"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strategies", nargs="+", default=None, help=f"default: {' '.join(GPU_STRATEGIES)}")
    parser.add_argument("--models", nargs="+", default=list(JOBS), choices=list(JOBS))
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--cpu", action="store_true", help="2 CPU processes per strategy (checks the script here)")
    parser.add_argument("--work", default=None, help="folder for runs and the random 3B model (default: a temp dir)")
    args = parser.parse_args()
    if not args.cpu and not torch.cuda.is_available():
        raise SystemExit("no GPU here: run on a GPU machine, or with --cpu to check the script on 2 CPU processes")
    strategies = args.strategies or (CPU_STRATEGIES if args.cpu else GPU_STRATEGIES)
    gpus = 2 if args.cpu else torch.cuda.device_count()
    work = Path(args.work or tempfile.mkdtemp(prefix="scale_gpu-"))
    for job in args.models:
        model = str(random_qwen_shape(work / "qwen2.5-3b-shape")) if job == "qwen2.5-3b-shape" else None
        for strategy in strategies:
            processes = 1 if strategy == "single_gpu" else gpus
            print(json.dumps(run(strategy, job, model=model, steps=args.steps, processes=processes, cpu=args.cpu,
                                 folder=work / f"{job}-{strategy}")), flush=True)


if __name__ == "__main__":
    main()
