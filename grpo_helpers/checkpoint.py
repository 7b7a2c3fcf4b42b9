"""Checkpoint folders and random-number states: what any training loop here needs to stop and continue exactly.

A checkpoint is a folder `checkpoints/step-NNNNNN/` written under a temporary name and renamed when complete, so
a kill mid-write leaves the previous one intact. Its `manifest.json`, written last, lists every file with its
size and sha256: a checkpoint counts only when every file is there at that size, so a file truncated or deleted
later (a full disk, a copy cut short) makes resume fall back to the newest checkpoint that is still whole, and say
why; resume also checks the checksums, so bytes overwritten at the same size (which would load silently and crash
later) are caught the same way. Both loops (the cold start's SFT and GRPO) use these helpers.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

CHECKPOINT_PREFIX = "step-"
STATE_FILE = "trainer_state.pt"
MANIFEST_FILE = "manifest.json"


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


def _step_folders(output_dir: str | Path) -> list[Path]:
    """Every checkpoint folder (temporary folders of an interrupted write left out), oldest first."""
    folder = Path(output_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)
             and p.name[len(CHECKPOINT_PREFIX):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def _sha256(path: Path) -> str:
    """The file's sha256, read in blocks (a full model's weights need not fit in memory twice)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_manifest(folder: Path) -> None:
    paths = [p for p in sorted(folder.rglob("*")) if p.is_file()]
    manifest = {"files": {str(p.relative_to(folder)): p.stat().st_size for p in paths},
                "sha256": {str(p.relative_to(folder)): _sha256(p) for p in paths}}
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))


def checkpoint_problem(folder: str | Path, *, verify_checksums: bool = False) -> str | None:
    """Why the checkpoint folder is not whole (a missing or short file, no manifest), or None when it is.
    verify_checksums also reads every file against its sha256 in the manifest, which catches bytes overwritten at
    the same size; it costs a full read, so only resume asks for it. A manifest written before checksums were
    kept has sizes only, and is checked by size."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
        files, checksums = manifest["files"], manifest.get("sha256", {})
    except FileNotFoundError:
        return f"no {MANIFEST_FILE} (the write did not finish)"
    except (ValueError, KeyError, TypeError, AttributeError):
        return f"{MANIFEST_FILE} is unreadable"
    if not isinstance(files, dict) or not isinstance(checksums, dict):
        return f"{MANIFEST_FILE} is unreadable"
    for name, size in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} is {path.stat().st_size} bytes, {size} were written"
    if STATE_FILE not in files:
        return f"no {STATE_FILE}"
    if verify_checksums:
        for name, expected in checksums.items():
            if name in files and _sha256(folder / name) != expected:
                return f"{name} does not match the sha256 in {MANIFEST_FILE} (its bytes changed after it was written)"
    return None


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Whole checkpoints by their manifest's sizes (see `checkpoint_problem`), oldest first."""
    return [p for p in _step_folders(output_dir) if checkpoint_problem(p) is None]


def newest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest whole checkpoint, sizes and checksums verified; each newer one that is not whole is skipped with
    a warning saying why."""
    for path in reversed(_step_folders(output_dir)):
        problem = checkpoint_problem(path, verify_checksums=True)
        if problem is None:
            return path
        warnings.warn(f"skipping checkpoint {path}: {problem}", stacklevel=2)
    return None


def write_checkpoint(output_dir: str | Path, step: int, write: Callable[[Path], None], *, keep_last: int) -> Path:
    """`write(folder)` fills a temporary folder, which gets its manifest and is then renamed to the step's
    checkpoint; only the newest `keep_last` whole checkpoints are kept (older ones are deleted after the new one is
    complete)."""
    final = checkpoint_path(output_dir, step)
    tmp = final.with_name(final.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    _write_manifest(tmp)
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


def load_model_weights(model: torch.nn.Module, folder: Path, device: torch.device) -> None:
    """A checkpoint's `model/` folder into the model: the adapter's weights for a peft model, else every weight."""
    if hasattr(model, "disable_adapter"):
        load_adapter_weights(model, folder, device)
        return
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(folder, dtype=model.dtype)
    model.load_state_dict(loaded.state_dict())


def save_training_checkpoint(output_dir: str | Path, step: int, *, model: torch.nn.Module, optimizer, scheduler,
                             sampler, keep_last: int, generator: torch.Generator | None = None,
                             state_dict: dict[str, torch.Tensor] | None = None,
                             more: Callable[[Path], None] | None = None) -> Path:
    """Everything a loop needs to continue exactly: weights (`state_dict` if gathered, else the model's own),
    optimizer, scheduler, RNG states, the sampling generator and the task sampler's position; `more(folder)` adds
    the loop's own files. Call on the main process only."""
    def write(folder: Path) -> None:
        model.save_pretrained(folder / "model", state_dict=state_dict)
        state = {"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                 "rng": rng_state(), "sampler": sampler.state_dict()}
        if generator is not None:
            state["generator"] = generator.get_state()
        torch.save(state, folder / STATE_FILE)
        if more is not None:
            more(folder)

    return write_checkpoint(output_dir, step, write, keep_last=keep_last)


def resume_training(output_dir: str | Path, *, model: torch.nn.Module, optimizer, scheduler, sampler,
                    device: torch.device, generator: torch.Generator | None = None) -> int | None:
    """Load the newest whole checkpoint into these objects and return its step; None when there is none."""
    path = newest_checkpoint(output_dir)
    if path is None:
        return None
    load_model_weights(model, path / "model", device)
    state = torch.load(path / STATE_FILE, weights_only=False, map_location="cpu")
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    sampler.load_state_dict(state["sampler"])
    if generator is not None:
        generator.set_state(state["generator"])
    return state["step"]
