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
from accelerate import Accelerator
from accelerate.utils import gather_object

from grpo_helpers.config import ConfigError
from grpo_helpers.distributed import gathered_state_dict, zero_stage

CHECKPOINT_PREFIX = "step-"
STATE_FILE = "trainer_state.pt"
MANIFEST_FILE = "manifest.json"
DEEPSPEED_FOLDER, DEEPSPEED_TAG = "deepspeed", "engine"  # the engine's own checkpoint, under DeepSpeed only


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
    complete). One process; `save_training_checkpoint` is the same done by every rank together."""
    tmp = _start_checkpoint(output_dir, step)
    write(tmp)
    return _finish_checkpoint(output_dir, step, keep_last=keep_last)


def _temporary_path(output_dir: str | Path, step: int) -> Path:
    """Where a checkpoint is written before it counts: one name every rank agrees on (the run folder's lock
    keeps any other run out)."""
    final = checkpoint_path(output_dir, step)
    return final.with_name(final.name + ".tmp")


def _start_checkpoint(output_dir: str | Path, step: int) -> Path:
    tmp = _temporary_path(output_dir, step)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def _finish_checkpoint(output_dir: str | Path, step: int, *, keep_last: int) -> Path:
    tmp, final = _temporary_path(output_dir, step), checkpoint_path(output_dir, step)
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


def strategy_of(accelerator: Accelerator) -> dict[str, Any]:
    """How the optimizer state is laid out: the strategy and the number of processes. DDP and a launch over several
    machines are the same thing here (a full copy of everything on every rank)."""
    stage = zero_stage(accelerator)
    name = f"DeepSpeed ZeRO-{stage}" if stage is not None else "DDP" if accelerator.num_processes > 1 else "one process"
    return {"name": name, "world_size": accelerator.num_processes}


def save_training_checkpoint(output_dir: str | Path, step: int, *, accelerator: Accelerator, model: torch.nn.Module,
                             unwrapped_model: torch.nn.Module, optimizer, scheduler, sampler, keep_last: int,
                             generator: torch.Generator | None = None,
                             more: Callable[[Path], None] | None = None) -> Path:
    """Everything a loop needs to continue exactly, written by every rank together (call it on all of them):
    weights (the adapter, gathered under ZeRO-3), optimizer and scheduler, each rank's RNG states and sampling
    generator, the task sampler's position; under DeepSpeed also the engine's own checkpoint (each rank writes its
    shard of the optimizer state). The main process writes the rest, `more(folder)` included, then the manifest.
    `model` is the prepared one (DeepSpeed's engine), `unwrapped_model` the model inside it."""
    weights = gathered_state_dict(accelerator, model)  # a collective under ZeRO-3
    ranks = gather_object([{"rng": rng_state(), "generator": None if generator is None else generator.get_state()}])
    if accelerator.is_main_process:
        _start_checkpoint(output_dir, step)
    accelerator.wait_for_everyone()
    tmp = _temporary_path(output_dir, step)
    deepspeed = zero_stage(accelerator) is not None
    if deepspeed:  # every rank writes its own shard (a folder every rank can reach, as for the run itself)
        model.save_checkpoint(str(tmp / DEEPSPEED_FOLDER), tag=DEEPSPEED_TAG, exclude_frozen_parameters=True)
    if accelerator.is_main_process:
        unwrapped_model.save_pretrained(tmp / "model", state_dict=weights)
        state = {"step": step, "strategy": strategy_of(accelerator), "scheduler": scheduler.state_dict(),
                 "sampler": sampler.state_dict(), "ranks": ranks,
                 "optimizer": None if deepspeed else optimizer.state_dict()}
        torch.save(state, tmp / STATE_FILE)
        if more is not None:
            more(tmp)
        _finish_checkpoint(output_dir, step, keep_last=keep_last)
    accelerator.wait_for_everyone()
    return checkpoint_path(output_dir, step)


def resume_training(output_dir: str | Path, *, accelerator: Accelerator, model: torch.nn.Module,
                    unwrapped_model: torch.nn.Module, optimizer, scheduler, sampler,
                    generator: torch.Generator | None = None) -> int | None:
    """Load the newest whole checkpoint into these objects (on every rank, each taking its own RNG states) and
    return its step; None when there is none. A checkpoint written under another strategy or number of processes
    is refused with what to do instead: its optimizer state is laid out for that one."""
    path = newest_checkpoint(output_dir)
    if path is None:
        return None
    state = torch.load(path / STATE_FILE, weights_only=False, map_location="cpu")
    written, here = state.get("strategy"), strategy_of(accelerator)
    if written is not None and written != here:
        raise ConfigError(
            f"{path} was written under {written['name']} on {written['world_size']} process(es); this run is "
            f"{here['name']} on {here['world_size']}: its optimizer state and each rank's random streams are laid "
            f"out for that one, so resume with the same launch (same wrapper and process count), or start a new run "
            f"from its weights with init_adapter={path / 'model'}")
    if zero_stage(accelerator) is not None:  # weights and this rank's optimizer shard, from the engine's files
        model.load_checkpoint(str(path / DEEPSPEED_FOLDER), tag=DEEPSPEED_TAG, load_module_strict=False,
                              load_optimizer_states=True, load_lr_scheduler_states=False)
    else:
        load_model_weights(unwrapped_model, path / "model", accelerator.device)
        optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    sampler.load_state_dict(state["sampler"])
    mine = state["ranks"][accelerator.process_index] if "ranks" in state else state  # before: one state for all
    set_rng_state(mine["rng"])
    if generator is not None:
        generator.set_state(mine["generator"])
    return state["step"]
