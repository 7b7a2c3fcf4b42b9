"""Launching multi-process training from a notebook, and what each data-parallel scheme costs in memory.

A notebook cell that runs `!accelerate launch ...` hides a failure from papermill (the cell still succeeds);
`stream_command` prints the subprocess's output into the cell as it comes and raises when it fails.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import deque
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ACCELERATE_CONFIGS = PROJECT_ROOT / "launch" / "accelerate"


def accelerate_config(name: str) -> Path:
    """The accelerate config file `launch/accelerate/<name>.yaml`, or an error listing the ones there are."""
    path = ACCELERATE_CONFIGS / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in ACCELERATE_CONFIGS.glob("*.yaml"))
        raise ValueError(f"accelerate config {name!r} does not exist: choose one of {', '.join(known)}")
    return path


def settings_arguments(overrides: dict[str, object] | None) -> list[str]:
    """`--set NAME VALUE` pairs for train_grpo.py (values as YAML, as on a command line)."""
    import yaml

    return [arg for name, value in (overrides or {}).items()
            for arg in ("--set", name, yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip())]


def train_command(accelerate_name: str, *, config: str, overrides: dict[str, object] | None = None,
                  cpu: bool = False, timeout: float = 600.0) -> list[str]:
    """The `accelerate launch ... launch/train_grpo.py ...` command line (the same one launch/*.sh run)."""
    accelerate = Path(sys.executable).parent / "accelerate"
    command = [str(accelerate) if accelerate.is_file() else "accelerate", "launch", "--config_file",
               str(accelerate_config(accelerate_name)), str(PROJECT_ROOT / "launch" / "train_grpo.py"),
               "--config", config, "--timeout", str(timeout)]
    if cpu:
        command.append("--cpu")
    return command + settings_arguments(overrides)


def stream_command(command: list[str], *, cwd: str | Path = PROJECT_ROOT, env: dict[str, str] | None = None,
                   keep_lines: int = 40) -> None:
    """Run `command`, echoing its output line by line; raise CalledProcessError (with the last lines) on failure."""
    print("+", " ".join(command), flush=True)
    tail: deque[str] = deque(maxlen=keep_lines)
    with subprocess.Popen(command, cwd=cwd, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, bufsize=1) as process:
        for line in process.stdout:
            print(line, end="", flush=True)
            tail.append(line)
    if process.returncode != 0:
        raise subprocess.CalledProcessError(process.returncode, command, output="".join(tail))


BF16_MIXED_ADAMW = (2, 2, 12)
"""Bytes per parameter of (weights, gradients, optimizer state) under bf16 mixed-precision AdamW."""
FP32_ADAMW = (4, 4, 8)
"""The same in plain fp32 (the CPU runs): no separate master copy, Adam's two fp32 moments."""


def memory_per_gpu_gib(num_params: float, num_gpus: int, *, trainable_fraction: float = 1.0,
                       bytes_per_param: tuple[int, int, int] = BF16_MIXED_ADAMW) -> dict[str, dict]:
    """Model-state memory per GPU (GiB) under DDP and ZeRO stages 1-3.

    By default for bf16 mixed-precision AdamW: per trainable parameter 2 bytes of bf16 weights, 2 of bf16
    gradients, 12 of fp32 optimizer state (master copy, Adam's two moments); frozen parameters (LoRA's base) hold
    only their 2 bytes of weights. ZeRO-1 shards the optimizer state over the GPUs, ZeRO-2 also the gradients,
    ZeRO-3 also the weights. Activations, the KV cache and temporary buffers come on top and depend on batch and
    sequence length. `bytes_per_param` = (weights, gradients, optimizer state), e.g. FP32_ADAMW.
    """
    if num_params <= 0 or num_gpus < 1 or not 0 < trainable_fraction <= 1:
        raise ValueError(f"num_params={num_params}, num_gpus={num_gpus}, trainable_fraction={trainable_fraction}: "
                         "need num_params > 0, num_gpus >= 1 and 0 < trainable_fraction <= 1")
    trainable, n = num_params * trainable_fraction, num_gpus
    weight_bytes, grad_bytes, optimizer_bytes = bytes_per_param
    weights, grads, optimizer = weight_bytes * num_params, grad_bytes * trainable, optimizer_bytes * trainable
    table = {
        "DDP": (weights, grads, optimizer),
        "ZeRO-1": (weights, grads, optimizer / n),
        "ZeRO-2": (weights, grads / n, optimizer / n),
        "ZeRO-3": (weights / n, grads / n, optimizer / n),
    }
    gib = 2**30
    return {name: {"weights": w / gib, "gradients": g / gib, "optimizer": o / gib, "total": (w + g + o) / gib}
            for name, (w, g, o) in table.items()}


__all__ = ["accelerate_config", "settings_arguments", "train_command", "stream_command", "memory_per_gpu_gib", "BF16_MIXED_ADAMW", "FP32_ADAMW"]
