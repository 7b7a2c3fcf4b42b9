"""What several processes (DDP, DeepSpeed ZeRO-2/3) change in a training loop, so the loop itself need not say.

Each helper is a no-op (or the plain value) on one process without DeepSpeed, which is what a learner runs.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, Iterable

import torch
from accelerate import Accelerator


def zero_stage(accelerator: Accelerator) -> int | None:
    """The DeepSpeed ZeRO stage in use, or None without DeepSpeed."""
    plugin = accelerator.state.deepspeed_plugin
    return None if plugin is None else plugin.zero_stage


def size_deepspeed_engine(accelerator: Accelerator, *, micro_batch: int, max_grad_norm: float) -> None:
    """DeepSpeed sizes its engine from a batch size (there is no DataLoader to read it from) and clips inside its
    step; call before `accelerator.prepare`."""
    plugin = accelerator.state.deepspeed_plugin
    if plugin is not None:
        plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = micro_batch
        # the cold start's engine left its own total here: a second engine in the same process must size afresh
        plugin.deepspeed_config["train_batch_size"] = (
            micro_batch * plugin.deepspeed_config.get("gradient_accumulation_steps", 1) * accelerator.num_processes)
        plugin.deepspeed_config["gradient_clipping"] = max_grad_norm


def zero3_sharded(params: Iterable[torch.Tensor]) -> bool:
    """DeepSpeed ZeRO-3 marks its sharded weights with `ds_id`; its hooks re-gather them during every forward."""
    return any(hasattr(p, "ds_id") for p in params)


def gathered(params: list[torch.Tensor]):
    """A context in which these parameters are whole on every rank: gathered if ZeRO-3 shards them, else as they are."""
    if not zero3_sharded(params):
        return nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=None)


def unsharded_head(head: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The LM head as a function that needs no collective: what the chunked log-probs call once per chunk. Under
    ZeRO-3 each call of the module would gather its weight, and ranks whose completions differ in length run
    different numbers of chunks (a collective mismatch), and a checkpointed chunk would recompute with the weight
    released. So the frozen weight is gathered once, here, by every rank alike; elsewhere the module is returned."""
    if not zero3_sharded(head.parameters()):
        return head
    if any(p.requires_grad for p in head.parameters()):
        raise ValueError("a trainable LM head under DeepSpeed ZeRO-3 is not supported (its chunks would need the same "
                         "number of gathers on every rank): train with LoRA (use_lora=true), or use ZeRO-2")
    with gathered(list(head.parameters())):
        weight = head.weight.detach().clone()
        bias = None if head.bias is None else head.bias.detach().clone()
    return lambda hidden: torch.nn.functional.linear(hidden, weight, bias)


def whole_weights(accelerator: Accelerator, model: torch.nn.Module):
    """A context in which every weight is whole on every rank (`model`: the prepared one, DeepSpeed's engine).

    DeepSpeed ZeRO-3 shards every weight across ranks; sampling token by token needs whole matrices, so they are
    gathered for the rollout: each rank briefly holds the full model (for a 3B model in bf16, ~6 GB per GPU on top
    of its shard). Its per-module hooks are set aside meanwhile (DeepSpeed's own `unwrap_model_for_generation`, as
    TRL does): left on, they ran for every layer at every token, and decoding was 6x slower (measured on 2 CPU
    processes). Run on CPU processes in the tests (tests/test_scale_path.py); not yet measured on GPUs."""
    if zero_stage(accelerator) != 3:
        return nullcontext()
    from deepspeed.runtime.zero.stage3 import unwrap_model_for_generation

    return unwrap_model_for_generation(model)


def gathered_state_dict(accelerator: Accelerator, model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """Under ZeRO-3 the weights are sharded: gather them (a collective, every rank calls it). Else None: the
    unwrapped model saves its own weights."""
    if zero_stage(accelerator) != 3:
        return None
    return accelerator.get_state_dict(model)


def gather(accelerator: Accelerator, values: torch.Tensor) -> torch.Tensor:
    """Every process's values, concatenated, on the CPU."""
    return accelerator.gather(values.to(accelerator.device)).cpu()


def total(accelerator: Accelerator, value: float | int) -> float:
    """The sum of a number over processes."""
    return accelerator.reduce(torch.tensor(value, device=accelerator.device), reduction="sum").item()


def mean(accelerator: Accelerator, value: float) -> float:
    """The mean of a number over processes."""
    return accelerator.reduce(torch.tensor(value, device=accelerator.device), reduction="mean").item()


def average_gradients(accelerator: Accelerator, model: torch.nn.Module) -> None:
    """What DDP's all-reduce does, once per step, for gradients accumulated under `no_sync`."""
    if accelerator.num_processes == 1:
        return
    params = [p for p in model.parameters() if p.requires_grad]
    flat = torch.cat([(torch.zeros_like(p) if p.grad is None else p.grad).reshape(-1) for p in params])
    flat = accelerator.reduce(flat, reduction="mean")
    for p, grad in zip(params, flat.split([p.numel() for p in params])):
        p.grad = grad.view_as(p).clone()


def clip_gradients(accelerator: Accelerator, model: torch.nn.Module, max_norm: float) -> float:
    """Clip to max_norm (0 = no clipping); the norm before clipping, for the logs (NaN: DeepSpeed before step 1)."""
    if max_norm > 0 or zero_stage(accelerator) is not None:
        norm = accelerator.clip_grad_norm_(model.parameters(), max_norm)
    else:
        norm = torch.norm(torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None]))
    return float("nan") if norm is None else float(norm)
