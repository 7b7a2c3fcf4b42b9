"""Checkpoint folders and random-number states: what any training loop here needs to stop and continue exactly.

A checkpoint is a folder `checkpoints/step-NNNNNN/` written under a temporary name and renamed when complete, so
a kill mid-write leaves the previous one intact. Both loops (the cold start's SFT and GRPO) use these helpers.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

CHECKPOINT_PREFIX = "step-"
STATE_FILE = "trainer_state.pt"


def seed_everything(seed: int) -> None:
    """One seed for python, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_path(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / "checkpoints" / f"{CHECKPOINT_PREFIX}{step:06d}"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders of an interrupted write are ignored)."""
    folder = Path(output_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    done = [p for p in folder.iterdir() if p.name.startswith(CHECKPOINT_PREFIX) and (p / STATE_FILE).is_file()
            and ".tmp" not in p.name]
    return sorted(done, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def write_checkpoint(output_dir: str | Path, step: int, write: Callable[[Path], None], *, keep_last: int) -> Path:
    """`write(folder)` fills a temporary folder, which is then renamed to the step's checkpoint; only the newest
    `keep_last` checkpoints are kept (older ones are deleted after the new one is complete)."""
    final = checkpoint_path(output_dir, step)
    tmp = final.with_name(final.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in list_checkpoints(output_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_adapter_weights(model: torch.nn.Module, folder: Path, device: torch.device) -> None:
    """Put a saved LoRA adapter's weights (folder/adapter_model.safetensors) into a peft model."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    # safetensors takes "cpu" or "cuda:N", not "cpu:0" (gloo ranks)
    weights = load_file(str(folder / "adapter_model.safetensors"), device="cpu" if device.type == "cpu" else str(device))
    set_peft_model_state_dict(model, weights)
