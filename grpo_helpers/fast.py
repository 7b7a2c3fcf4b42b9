"""The speed tricks, in one place and behind one switch (`fast`, on by default: `ModelConfig.fast`). The training
side's memory savings are another switch, `memory_lean` (backward.py).

Each trick computes what the plain code computes: the plain decoding in decoding.py (transformers' growing
cache and mask, `torch.multinomial`, the LoRA branch as peft runs it) and peft's dropout. A learner reads those;
this file is what makes the same algorithm cheap enough to watch on a laptop CPU. tests/test_fast.py checks each
trick against the plain version; bench/RESULTS.md ("Why the speed tricks") says what each one buys and why.

- `FastDecoding`: how `generate_groups` decodes when fast: LoRA folded into the weights, oneDNN linears (bf16
  autocast instead on a GPU that is fast at it), a preallocated cache with fixed-shape steps (a CUDA graph on a
  GPU), and an inverse-CDF sampler.
- `fuse_lora_dropout`: LoRA's dropout and A matrix as one layer that keeps a 1-byte mask for the backward.
"""

from __future__ import annotations

import sys
from contextlib import ExitStack, contextmanager
from typing import Iterator

import numpy as np
import torch
from transformers import Cache, DynamicCache, StaticCache
from transformers.cache_utils import StaticLayer

from grpo_helpers.distributed import zero3_sharded
from grpo_helpers.decoding import PlainDecoding, position_ids_from_mask
from grpo_helpers.hardware import bf16_is_fast, release_freed_memory


# ---------------------------------------------------------------------------------------------- decoding
class FastDecoding(PlainDecoding):
    """The plain decoding's four choices (context, cache, step, sampler), each replaced by a faster equal one."""

    def __init__(self, model: torch.nn.Module, *, bf16: bool | None = None, cuda_graph: bool = True):
        self.model, self.cuda_graph = model, cuda_graph
        self.device = next(model.parameters()).device
        # bf16=None: autocast on a GPU that is fast at bf16 only. On a CPU, even one with AMX, fp32 with oneDNN
        # linears decoded the bundled model faster than autocast did (bench/RESULTS.md), and it samples from the
        # very numbers the fp32 trainer scores. Autocast only for a model that computes in fp32 (bf16 weights are
        # bf16 already).
        default = self.device.type == "cuda" and bf16_is_fast(self.device)
        self.bf16 = (default if bf16 is None else bf16) and model.get_input_embeddings().weight.dtype == torch.float32
        self._stack = ExitStack()

    def __enter__(self) -> "FastDecoding":
        self._stack.enter_context(lora_folded(self.model))
        if self.bf16:
            self._stack.enter_context(torch.autocast(self.device.type, dtype=torch.bfloat16))
        else:
            self._stack.enter_context(onednn_decode_linears(self.model))
        return self

    def __exit__(self, *exc) -> bool | None:
        return self._stack.__exit__(*exc)

    def new_cache(self, length: int) -> Cache:
        return preallocated_cache(self.model, length, autocast=self.bf16)

    def repeat_rows(self, cache: Cache, repeats: int) -> None:
        if isinstance(cache, DynamicCache):
            return super().repeat_rows(cache, repeats)
        for layer in cache.layers:
            layer.keys = layer.keys.repeat_interleave(repeats, dim=0)
            layer.values = layer.values.repeat_interleave(repeats, dim=0)
            layer.batch_size *= repeats

    def decoder(self, cache: Cache, mask: torch.Tensor):
        """Fixed-shape steps where the cache is preallocated and attention is SDPA (the 4D mask is SDPA's format),
        recorded as a CUDA graph on a GPU unless turned off or the weights are DeepSpeed ZeRO-3 shards (gathered by
        hooks during the forward); else the plain growing mask."""
        if not isinstance(cache, StaticCache) or getattr(self.model.config, "_attn_implementation", None) != "sdpa":
            return super().decoder(cache, mask)
        capture = self.cuda_graph and mask.device.type == "cuda" and not zero3_sharded(self.model.parameters())
        return FixedShapeDecoder(self.model, cache, mask, capture=capture)

    def sample(self, probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return sample_tokens(probs, generator)


def preallocated_cache(model: torch.nn.Module, length: int, *, autocast: bool) -> Cache:
    """A key/value cache written in place: a growing one copies all of itself on every decoded token.

    Models whose layers are not all plain full-attention layers (sliding windows, ...) keep transformers' growing
    cache, which handles them, and so does bf16 autocast of fp32 weights: there keys (rotated with fp32 tables) and
    values come out in different dtypes, which one preallocated cache cannot hold.
    """
    if autocast:
        return DynamicCache()
    cache = StaticCache(config=model.config, max_cache_len=length)
    if all(type(layer) is StaticLayer for layer in cache.layers):
        return cache
    return DynamicCache()


class FixedShapeDecoder:
    """The decode step with every input at a fixed address and shape, so that a GPU can replay it as a graph.

    A decode step is a few hundred small kernels (norms, projections, attention, per layer); on a GPU launching them
    costs far more than their arithmetic. Recorded once per rollout as a CUDA graph, a step is then one launch. The
    inputs live in buffers updated in place: the token, the positions, and a 4D mask over the whole preallocated
    cache (True where a row may attend), which is what transformers' SDPA attention takes. The cache writes
    each step's keys at its own position counter, also inside the graph. Without `capture` (on a CPU) the same
    buffers are used eagerly, which also skips transformers' per-step mask building, and rows that have finished
    are dropped from the batch once a quarter of those left have (`KEEP_WHEN`): their tokens are padding anyway,
    and a CPU's step costs per row (a batch of 64 greedy evaluations whose answers end at ~120 of 160 tokens:
    fewer rows for the last third of the steps). Every row is computed as before, so the sampled tokens are too.
    """

    KEEP_WHEN = 0.75  # drop finished rows when at most this share of the rows still decoded is unfinished

    def __init__(self, model: torch.nn.Module, cache: Cache, mask: torch.Tensor, *, capture: bool):
        rows, prompt_length = mask.shape
        self.model, self.cache, self.capture = model, cache, capture
        self.allowed = torch.zeros(rows, 1, 1, cache.get_max_length(), dtype=torch.bool, device=mask.device)
        self.allowed[:, 0, 0, :prompt_length] = mask.bool()  # (N, 1, 1, L): the prompt, not its padding
        self.column = prompt_length  # the cache slot the next fed token is written to
        self.token = torch.zeros(rows, 1, dtype=torch.long, device=mask.device)  # (N, 1)
        self.position = position_ids_from_mask(mask)[:, -1:].clone()  # (N, 1)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: torch.Tensor | None = None  # the graph's output buffer
        self.rows = torch.arange(rows, device=mask.device)  # (A,) the batch rows still decoded (all, with a graph)

    def _step(self) -> torch.Tensor:
        out = self.model(input_ids=self.token, attention_mask=self.allowed, position_ids=self.position,
                         past_key_values=self.cache, use_cache=True)
        return out.logits[:, -1, :]

    def __call__(self, token: torch.Tensor, finished: torch.Tensor | None = None) -> torch.Tensor:
        """Feed `token` (N,), get the next logits (N, V); with a graph, a buffer the next call overwrites. Without
        one, the rows of `finished` (N,) may be left out: their logits are then 0."""
        if not self.capture and finished is not None:
            self._drop_finished(finished)
        self.token.copy_(token[self.rows, None])
        self.allowed[:, :, :, self.column] = True
        self.column += 1
        self.position.add_(1)
        if self.graph is not None:
            self.graph.replay()
            return self.logits
        if not self.capture:
            logits = self._step()  # (A, V)
            if len(self.rows) == len(token):
                return logits
            full = logits.new_zeros(len(token), logits.shape[-1])  # (N, V)
            full[self.rows] = logits
            return full
        # First step: run it eagerly on a side stream (the warm-up recording needs: kernels chosen, workspaces
        # allocated) - that is this step's result - then record the step for the following ones.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            logits = self._step()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = self._step()  # recorded, not run: the cache's position counter is not advanced twice
        return logits

    def _drop_finished(self, finished: torch.Tensor) -> None:
        """Keep only the unfinished rows (buffers and cache), once enough rows have finished to pay for the copy."""
        left = (~finished[self.rows]).nonzero().squeeze(1)  # (A',) positions in the rows still decoded
        if len(left) == 0 or len(left) > self.KEEP_WHEN * len(self.rows):
            return
        self.rows = self.rows[left]
        self.allowed, self.token, self.position = self.allowed[left], self.token[left], self.position[left]
        for layer in self.cache.layers:
            layer.keys, layer.values = layer.keys[left], layer.values[left]
            layer.batch_size = len(left)


def sample_tokens(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row of probs (N, V), by inverting the cumulative distribution at one uniform draw per row.

    Same distribution as torch.multinomial, which on a CPU draws an exponential variate per vocabulary entry
    (49k per row); this draws one number per row. A token of probability 0 is never
    picked: the first index whose cumulative sum exceeds the draw always added mass. That needs a sequential,
    exactly non-decreasing cumsum, which parallel GPU scans do not promise, so other devices use multinomial.
    """
    if probs.device.type != "cpu":
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)
    cdf = probs.cumsum(dim=-1)  # (N, V)
    total = cdf[:, -1:]  # (N, 1), 1 up to rounding
    u = torch.rand(probs.shape[0], 1, generator=generator, device=probs.device, dtype=cdf.dtype)  # (N, 1)
    draw = torch.minimum(u * total, torch.nextafter(total, torch.zeros_like(total)))  # strictly below the total
    return torch.searchsorted(cdf, draw, right=True).squeeze(1)  # (N,)


def _onednn_linear(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")


@contextmanager
def onednn_decode_linears(model: torch.nn.Module) -> Iterator[None]:
    """Run the model's fp32 CPU linear layers through oneDNN while decoding; restored afterwards.

    A decode step multiplies a few rows (B*G tokens) by every weight matrix. For so few rows oneDNN's kernel
    (PyTorch's own op, the one torch.compile emits for CPU linears) is faster than MKL's sgemm, which `F.linear`
    uses, most of all on the 49k-row LM head. Same products up to float rounding. No-op where oneDNN is missing,
    off the CPU, for non-fp32 weights, and with autograd on.
    """
    usable = (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
              and not torch.is_grad_enabled())
    layers = [m for m in model.modules() if type(m) is torch.nn.Linear and m.weight.device.type == "cpu"
              and m.weight.dtype == torch.float32 and "forward" not in vars(m)] if usable else []
    for layer in layers:
        layer.forward = _onednn_linear.__get__(layer)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward


_SAME_SIZE_INT = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _bits(weight: torch.Tensor) -> torch.Tensor:
    """The raw bit patterns, so that -0.0 and 0.0 (or two NaNs) count as different values."""
    return weight.view(_SAME_SIZE_INT[weight.element_size()])


def _lora_delta(layer) -> torch.Tensor:
    return sum(layer.get_delta_weight(name) for name in layer.active_adapters if name in layer.lora_A)


@contextmanager
def lora_folded(model: torch.nn.Module) -> Iterator[None]:
    """Sample from W + scale * B @ A as one matrix per layer: a decode step then costs what the base model's does.

    With the adapter applied as an extra branch, each of the ~200 LoRA layers adds three small matmuls per decoded
    token. The fold is done in place, with no copy of the weights (a copy is 400 MB for the bundled model): on the
    way back the same delta is subtracted, which gives back the original bits for nearly every entry, and the few
    entries where rounding does not (checked while folding) are put back from a small saved list. A per-layer
    checksum of the bits (a sum: it detects a change such as a LoRA weight edited while folded, though in principle
    two changes could cancel) is compared afterwards; if the body raised, its exception is kept and the failed check
    is added to it as a note. No-op for models without LoRA layers and for DeepSpeed ZeRO-3 weights (its per-layer
    hooks re-partition weights during the forward: nothing to fold).
    """
    from peft.tuners.lora import Linear as LoraLinear

    layers = [m for m in model.modules() if isinstance(m, LoraLinear) and not m.merged and not m.disable_adapters]
    if not layers or not hasattr(model, "disable_adapter") or zero3_sharded(m.get_base_layer().weight
                                                                            for m in layers):
        yield
        return
    folded_layers = []
    try:
        with torch.no_grad():
            for layer in layers:
                weight, delta = layer.get_base_layer().weight.data, _lora_delta(layer)
                round_trip = (weight + delta).to(weight.dtype)  # peft keeps LoRA in fp32
                round_trip = (round_trip - delta).to(weight.dtype)  # what unfolding will give back
                misses = (_bits(round_trip) != _bits(weight)).view(-1).nonzero().squeeze(1)
                del round_trip
                checksum = _bits(weight).sum(dtype=torch.int64)
                folded_layers.append((layer, misses, weight.view(-1)[misses].clone(), checksum))
                weight.add_(delta)  # computed in fp32 and rounded once, as round_trip was
        release_freed_memory()  # the per-layer temporaries, before decoding allocates its own
        with model.disable_adapter():
            yield
    finally:
        changed = 0
        with torch.no_grad():  # every layer is unfolded before anything is reported
            for layer, misses, originals, checksum in folded_layers:
                weight = layer.get_base_layer().weight.data
                weight.sub_(_lora_delta(layer))
                weight.view(-1)[misses] = originals
                changed += int(_bits(weight).sum(dtype=torch.int64) != checksum)
        message = (f"lora_folded: {changed} base weight matrices did not come back bit for bit after sampling (the "
                   f"LoRA delta changed while folded?); the run must not continue")
        in_flight = sys.exc_info()[1]
        if changed and in_flight is not None:
            in_flight.add_note(message)  # never hide the error that is already on its way
    if changed:
        raise RuntimeError(message)


# ---------------------------------------------------------------------------------------------- training
def dropout_keep_mask(shape: torch.Size, p: float, device: torch.device) -> torch.Tensor:
    """A bool mask, True with probability 1 - p per entry: what nn.Dropout draws, in one byte per entry.

    On a CPU torch's generator draws one Mersenne Twister number per entry, on one core; the mask is taken instead
    from 32-bit words of a SFC64 stream (numpy) whose seed is drawn from torch's generator, so
    `torch.manual_seed`, a saved and restored RNG state or `fork_rng` replay it exactly as they would `torch.rand`.
    P(drop) = round(p * 2**32) / 2**32.
    """
    if device.type != "cpu":
        return torch.rand(shape, device=device) >= p
    count = int(np.prod(shape))
    seed = int(torch.randint(2**62, (1,)))
    words = np.random.SFC64(seed).random_raw((count + 1) // 2).view(np.uint32)[:count]  # 2 words per draw
    return torch.from_numpy(words >= np.uint32(round(p * 2**32))).view(shape)


def _masked(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """x * keep, with the bool mask read as 0/1 bytes (the bool product first casts the mask to float)."""
    return x * keep.view(torch.uint8)


class _DroppedLinear(torch.autograd.Function):
    """y = dropout(x) @ W.T that keeps a 1-byte mask for backward, not a dropped copy of x plus a float mask."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, p: float) -> torch.Tensor:
        keep = dropout_keep_mask(x.shape, p, x.device)
        ctx.save_for_backward(x, weight, keep)
        ctx.scale = 1.0 / (1.0 - p)
        return torch.nn.functional.linear(_masked(x, keep), weight) * ctx.scale

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight, keep = ctx.saved_tensors
        grad = grad * ctx.scale
        grad_x = _masked(grad @ weight, keep) if ctx.needs_input_grad[0] else None
        grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_weight = grad.reshape(-1, grad.shape[-1]).t() @ _masked(x, keep).reshape(-1, x.shape[-1])
        return grad_x, grad_weight, None


class DropoutLinear(torch.nn.Linear):
    """LoRA's A matrix with the adapter's dropout fused in (peft runs them as two modules).

    Unfused, every adapted layer keeps the dropped copy of its input and a float mask for the backward: with
    seven adapted projections per block that is most of a LoRA training step's activation memory. Same
    distribution as nn.Dropout followed by the linear layer; the weight is the same Parameter, so checkpoints and
    saved adapters do not change. Used by every configuration with LoRA dropout > 0 (the GPU preset's 0.05).
    """

    def __init__(self, linear: torch.nn.Linear, p: float):
        if linear.bias is not None or not 0 < p < 1:
            raise ValueError(f"DropoutLinear needs a bias-free linear layer and 0 < p < 1, got p={p!r}")
        super().__init__(linear.in_features, linear.out_features, bias=False, device="meta")
        self.weight, self.p = linear.weight, p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return torch.nn.functional.linear(x, self.weight)
        return _DroppedLinear.apply(x, self.weight, self.p)


def fuse_lora_dropout(model: torch.nn.Module) -> None:
    """Replace each LoRA layer's Dropout + A pair by one `DropoutLinear` (in place)."""
    from peft.tuners.lora import Linear as LoraLinear

    for module in model.modules():
        if not isinstance(module, LoraLinear):
            continue
        for name, dropout in list(module.lora_dropout.items()):
            if isinstance(dropout, torch.nn.Dropout) and dropout.p > 0 and type(module.lora_A[name]) is torch.nn.Linear:
                module.lora_A[name] = DropoutLinear(module.lora_A[name], dropout.p)
                module.lora_dropout[name] = torch.nn.Identity()
