"""What each rank holds of the model states (weights, gradients, optimizer state), measured from the live tensors:
the numbers chapter 05 puts beside the computed table (`launcher.memory_per_gpu_gib`). Activations, caches and the
libraries' own memory are not model states and are not counted."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch


def tensor_bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def local_bytes(param: torch.Tensor) -> int:
    """This rank's storage of a weight: under ZeRO-3 its shard (DeepSpeed keeps it in `ds_tensor`; the parameter
    itself is empty outside a gather), else the whole tensor."""
    shard = getattr(param, "ds_tensor", None)
    return tensor_bytes(param if shard is None else shard)


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    """All and trainable parameters, whole (ZeRO-3 records a sharded weight's full size in `ds_numel`)."""
    sizes = [(getattr(p, "ds_numel", p.numel()), p.requires_grad) for p in model.parameters()]
    return {"parameters": sum(n for n, _ in sizes), "trainable": sum(n for n, trains in sizes if trains)}


def innermost_optimizer(optimizer) -> torch.optim.Optimizer:
    """The torch optimizer that steps: accelerate wraps it, DeepSpeed's ZeRO optimizer wraps it again."""
    while hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    return optimizer


class ModelStateMeter:
    """Measures a rank's model states. Gradients are read just before each optimizer step (a step pre-hook on the
    torch optimizer), when they exist: the full trainable gradients under DDP, this rank's partition under ZeRO-2/3.
    Optimizer state is Adam's moments plus, under DeepSpeed, the fp32 copies of the partition it steps."""

    def __init__(self, *, model: torch.nn.Module, optimizer) -> None:
        self.model, self.optimizer = model, innermost_optimizer(optimizer)
        self.gradients = 0
        self.optimizer.register_step_pre_hook(self._before_step)

    def _before_step(self, optimizer: torch.optim.Optimizer, args, kwargs) -> None:
        held = sum(tensor_bytes(p.grad) for group in optimizer.param_groups for p in group["params"]
                   if p.grad is not None)
        self.gradients = max(self.gradients, held)

    def report(self) -> dict[str, int]:
        """Bytes of each model state on this rank, now (gradients: the most seen at a step)."""
        weights = {id(p) for p in self.model.parameters()}
        copies = sum(tensor_bytes(p) for group in self.optimizer.param_groups for p in group["params"]
                     if id(p) not in weights)
        moments = sum(tensor_bytes(value) for state in self.optimizer.state.values() for value in state.values()
                      if torch.is_tensor(value) and value.dim() > 0)
        return {"weights": sum(local_bytes(p) for p in self.model.parameters()), "gradients": self.gradients,
                "optimizer": copies + moments}


def peak_memory() -> dict[str, int]:
    """This process's peak memory, model states and everything else: resident set size on any machine, and on a GPU
    the most torch allocated there (what the GPU benchmark compares across strategies)."""
    import resource

    peaks = {"peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        peaks["peak_cuda_allocated"] = torch.cuda.max_memory_allocated()
    return peaks


def write_model_states(path: str | Path, *, strategy: dict[str, Any], counts: dict[str, int],
                       ranks: list[dict[str, int]]) -> None:
    """One JSON file per run (main process; atomic): the strategy, the parameter counts and each rank's bytes (its
model states, and its peaks)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"strategy": strategy, **counts, "ranks": ranks}, indent=1))
    os.replace(tmp, path)


def read_model_states(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


__all__ = ["ModelStateMeter", "parameter_counts", "peak_memory", "write_model_states", "read_model_states", "innermost_optimizer",
           "local_bytes"]
