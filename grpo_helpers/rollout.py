"""Group rollouts: G sampled completions for each prompt, with the prompt's prefill done once.

`model.generate(num_return_sequences=G)` copies every prompt G times *before* the forward pass, so the prompt
(often longer than the completion) is processed G times. Here the B prompts are prefilled once, the key/value
cache is repeated G times, and the decode loop samples all B*G rows together. The loop is short and explicit so
that its cost is visible: one forward of B*G new tokens per step.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch
from transformers import (Cache, DynamicCache, LogitsProcessorList, StaticCache, TemperatureLogitsWarper,
                          TopKLogitsWarper, TopPLogitsWarper)
from transformers.cache_utils import StaticLayer

from grpo_helpers.data import tokenize_prompts
from grpo_helpers.loss import position_ids_from_mask  # the loss scores with the same positions
from grpo_helpers.models import bf16_is_fast, release_freed_memory


@dataclass
class Rollout:
    """One step's samples. Row i*G + g is sample g of prompt i (prompt-major order)."""

    prompt_ids: torch.Tensor  # (B, P) left-padded prompts
    prompt_mask: torch.Tensor  # (B, P) 1 on real prompt tokens
    completion_ids: torch.Tensor  # (B*G, C) right-padded with pad_token_id after EOS
    completion_mask: torch.Tensor  # (B*G, C) 1 up to and including EOS
    lengths: torch.Tensor  # (B*G,) completion tokens, EOS included
    truncated: torch.Tensor  # (B*G,) True when max_new_tokens was reached before EOS
    texts: list[str]  # (B*G,) decoded completions, special tokens removed
    group_size: int
    seconds: float  # wall time of the rollout

    @property
    def tokens_per_sec(self) -> float:
        return float(self.lengths.sum()) / max(self.seconds, 1e-9)

    def full_sequences(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt + completion per row, as scored by the loss: ids and attention mask, both (B*G, P + C)."""
        prompt_ids = self.prompt_ids.repeat_interleave(self.group_size, dim=0)  # (B*G, P)
        prompt_mask = self.prompt_mask.repeat_interleave(self.group_size, dim=0)  # (B*G, P)
        ids = torch.cat([prompt_ids, self.completion_ids], dim=1)  # (B*G, P + C)
        mask = torch.cat([prompt_mask, self.completion_mask], dim=1)  # (B*G, P + C)
        return ids, mask


def select_groups(rollouts: list[Rollout], picks: list[tuple[int, int]], *, pad_id: int) -> Rollout:
    """A rollout made of whole groups taken from several: picks[j] = (which rollout, which prompt in it).

    Prompts are left-padded and completions right-padded again to the longest kept, so the result reads exactly
    like one rollout (dynamic sampling uses it to swap groups that carry no signal for fresh ones)."""
    G = rollouts[0].group_size
    P = max(rollouts[r].prompt_ids.shape[1] for r, _ in picks)
    C = max(rollouts[r].completion_ids.shape[1] for r, _ in picks)
    pad = torch.nn.functional.pad
    prompt_ids, prompt_mask, completion_ids, completion_mask, lengths, truncated, texts = [], [], [], [], [], [], []
    for r, i in picks:
        one, rows = rollouts[r], slice(i * G, (i + 1) * G)
        left, right = P - one.prompt_ids.shape[1], C - one.completion_ids.shape[1]
        prompt_ids.append(pad(one.prompt_ids[i:i + 1], (left, 0), value=pad_id))  # (1, P)
        prompt_mask.append(pad(one.prompt_mask[i:i + 1], (left, 0), value=0))
        completion_ids.append(pad(one.completion_ids[rows], (0, right), value=pad_id))  # (G, C)
        completion_mask.append(pad(one.completion_mask[rows], (0, right), value=0))
        lengths.append(one.lengths[rows])
        truncated.append(one.truncated[rows])
        texts += one.texts[rows]
    return Rollout(prompt_ids=torch.cat(prompt_ids), prompt_mask=torch.cat(prompt_mask),
                   completion_ids=torch.cat(completion_ids), completion_mask=torch.cat(completion_mask),
                   lengths=torch.cat(lengths), truncated=torch.cat(truncated), texts=texts, group_size=G,
                   seconds=sum(one.seconds for one in rollouts))


def _preallocated_cache(model: torch.nn.Module, length: int, *, autocast: bool) -> Cache:
    """A key/value cache written in place: a growing one copies all of itself on every decoded token.

    On a CPU those copies were a quarter of a decode step. Models whose layers are not all plain full-attention
    layers (sliding windows, ...) keep transformers' growing cache, which handles them, and so does bf16 autocast
    of fp32 weights: there keys (rotated with fp32 tables) and values come out in different dtypes, which one
    preallocated cache cannot hold.
    """
    if autocast:
        return DynamicCache()
    cache = StaticCache(config=model.config, max_cache_len=length)
    if all(type(layer) is StaticLayer for layer in cache.layers):
        return cache
    return DynamicCache()


def _repeat_rows(cache: Cache, repeats: int) -> None:
    """Row i becomes rows i*repeats ... i*repeats + repeats - 1 (prompt-major, as the samples are laid out)."""
    if isinstance(cache, DynamicCache):
        cache.batch_repeat_interleave(repeats)
        return
    for layer in cache.layers:
        layer.keys = layer.keys.repeat_interleave(repeats, dim=0)
        layer.values = layer.values.repeat_interleave(repeats, dim=0)
        layer.batch_size *= repeats


class _GrowingMaskDecoder:
    """Decode steps as transformers takes them by default: the 2D attention mask grows a column per token."""

    def __init__(self, model: torch.nn.Module, cache: Cache, mask: torch.Tensor):
        self.model, self.cache, self.mask = model, cache, mask  # mask: (N, P)
        self.position = position_ids_from_mask(mask)[:, -1:]  # (N, 1) the last prompt token's position

    def __call__(self, token: torch.Tensor) -> torch.Tensor:
        """Feed `token` (N,), get the next logits (N, V)."""
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)  # (N, P + steps)
        self.position = self.position + 1
        out = self.model(input_ids=token[:, None], attention_mask=self.mask, position_ids=self.position,
                         past_key_values=self.cache, use_cache=True)
        return out.logits[:, -1, :]


class _FixedShapeDecoder:
    """The same decode step with every input at a fixed address and shape, so that a GPU can replay it as a graph.

    A decode step is a few hundred small kernels (norms, projections, attention, per layer); on a GPU launching them
    costs far more than their arithmetic (measured in bench/RESULTS.md, GPU section). Recorded once per rollout as a
    CUDA graph, a step is then one launch. The
    inputs live in buffers updated in place: the token, the positions, and a 4D mask over the whole preallocated
    cache (True where a row may attend), which is what transformers' SDPA attention takes. The cache writes
    each step's keys at its own position counter, also inside the graph. Without `capture` (on a CPU) the same
    buffers are used eagerly, which also skips transformers' per-step mask building.
    """

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

    def _step(self) -> torch.Tensor:
        out = self.model(input_ids=self.token, attention_mask=self.allowed, position_ids=self.position,
                         past_key_values=self.cache, use_cache=True)
        return out.logits[:, -1, :]

    def __call__(self, token: torch.Tensor) -> torch.Tensor:
        """Feed `token` (N,), get the next logits (N, V); with a graph, a buffer the next call overwrites."""
        self.token.copy_(token[:, None])
        self.allowed[:, :, :, self.column] = True
        self.column += 1
        self.position.add_(1)
        if self.graph is not None:
            self.graph.replay()
            return self.logits
        if not self.capture:
            return self._step()
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


def _decoder(model: torch.nn.Module, cache: Cache, mask: torch.Tensor, *, cuda_graph: bool):
    """Fixed-shape steps where the cache is preallocated and attention is SDPA (the 4D mask is SDPA's format),
    recorded as a CUDA graph on a GPU unless turned off or the weights are DeepSpeed ZeRO-3 shards (gathered by
    hooks during the forward); else transformers' growing mask."""
    if not isinstance(cache, StaticCache) or getattr(model.config, "_attn_implementation", None) != "sdpa":
        return _GrowingMaskDecoder(model, cache, mask)
    capture = cuda_graph and mask.device.type == "cuda" and not _zero3_sharded(model.parameters())
    return _FixedShapeDecoder(model, cache, mask, capture=capture)


def _zero3_sharded(params: Iterable[torch.Tensor]) -> bool:
    """DeepSpeed ZeRO-3 marks its sharded weights with `ds_id`; its hooks re-gather them during every forward."""
    return any(hasattr(p, "ds_id") for p in params)


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
    token, a large share of a CPU decode step. The fold is done in place, with no copy of the weights (a copy
    is 400 MB for the bundled model): on the way back the same delta is subtracted, which gives back the original
    bits for nearly every entry, and the few entries where rounding does not (checked while folding) are put back
    from a small saved list. A per-layer checksum of the bits (a sum: it detects a change such as a LoRA weight
    edited while folded, though in principle two changes could cancel) is compared afterwards; if the body raised,
    its exception is kept and the failed check is added to it as a note. No-op for models
    without LoRA layers and for DeepSpeed ZeRO-3 weights (its per-layer hooks re-partition weights during the
    forward: nothing to fold).
    """
    from peft.tuners.lora import Linear as LoraLinear

    layers = [m for m in model.modules() if isinstance(m, LoraLinear) and not m.merged and not m.disable_adapters]
    if not layers or not hasattr(model, "disable_adapter") or _zero3_sharded(m.get_base_layer().weight
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


@contextmanager
def sampling_mode(model: torch.nn.Module) -> Iterator[None]:
    """Dropout off (LoRA dropout included) and no autograd while sampling; the previous mode is restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _onednn_linear(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")


@contextmanager
def onednn_decode_linears(model: torch.nn.Module) -> Iterator[None]:
    """Run the model's fp32 CPU linear layers through oneDNN while decoding; restored afterwards.

    A decode step multiplies a few rows (B*G tokens) by every weight matrix. For so few rows oneDNN's kernel
    (PyTorch's own op, the one torch.compile emits for CPU linears) is faster than MKL's sgemm, which `F.linear`
    uses, most of all on the 49k-row LM head (bench/RESULTS.md, "Why the speed tricks"). Same products up to
    float rounding. No-op where oneDNN is missing, off the CPU, for non-fp32 weights, and with autograd on.
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


def _warpers(temperature: float, top_k: int, top_p: float) -> LogitsProcessorList:
    warpers = LogitsProcessorList([TemperatureLogitsWarper(temperature)])
    if top_k > 0:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))
    return warpers


def generate_groups(
    model: torch.nn.Module,
    tokenizer,
    prompts: list[str],
    *,
    group_size: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    greedy: bool = False,
    generator: torch.Generator | None = None,
    bf16: bool | None = None,
    cuda_graph: bool = True,
) -> Rollout:
    """Sample `group_size` completions for each prompt (already rendered with the chat template).

    bf16=None picks bf16 autocast only where the hardware has fast bf16 matmuls. `greedy` takes the argmax
    (for evaluation); then all G samples of a prompt are identical, so use group_size=1 with it. `cuda_graph`:
    on a GPU, replay the decode step as a CUDA graph where the model allows it (see `_FixedShapeDecoder`).
    """
    if group_size < 1 or max_new_tokens < 1:
        raise ValueError(f"group_size={group_size} and max_new_tokens={max_new_tokens} must both be >= 1")
    device = next(model.parameters()).device
    # autocast only for a model that computes in fp32 (bf16 weights are bf16 already)
    use_bf16 = ((bf16_is_fast(device) if bf16 is None else bf16)
                and model.get_input_embeddings().weight.dtype == torch.float32)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else nullcontext()
    eos_id, pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    warpers = _warpers(temperature, top_k, top_p)
    start = time.perf_counter()

    enc = tokenize_prompts(tokenizer, prompts).to(device)  # left-padded whatever the tokenizer's padding_side
    prompt_ids, prompt_mask = enc["input_ids"], enc["attention_mask"]  # (B, P)
    fast_linears = nullcontext() if use_bf16 else onednn_decode_linears(model)
    with sampling_mode(model), lora_folded(model), fast_linears, autocast:
        cache = _preallocated_cache(model, prompt_ids.shape[1] + max_new_tokens, autocast=use_bf16)
        out = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=position_ids_from_mask(prompt_mask),
                    past_key_values=cache, use_cache=True, logits_to_keep=1)
        _repeat_rows(cache, group_size)  # prefill once, share it across the G samples
        logits = out.logits[:, -1, :].float().repeat_interleave(group_size, dim=0)  # (B*G, V)
        mask = prompt_mask.repeat_interleave(group_size, dim=0)  # (B*G, P)
        decode = _decoder(model, cache, mask, cuda_graph=cuda_graph)
        finished = torch.zeros(mask.shape[0], dtype=torch.bool, device=device)  # (B*G,)
        tokens: list[torch.Tensor] = []
        for step in range(max_new_tokens):
            if greedy:
                next_token = logits.argmax(dim=-1)
            else:
                next_token = sample_tokens(warpers(None, logits).softmax(dim=-1), generator)  # (B*G,)
            next_token = torch.where(finished, torch.full_like(next_token, pad_id), next_token)
            tokens.append(next_token)
            finished |= next_token == eos_id
            if finished.all() or step == max_new_tokens - 1:
                break
            logits = decode(next_token).float()  # (B*G, V)

    completion_ids = torch.stack(tokens, dim=1)  # (B*G, C)
    is_eos = completion_ids == eos_id
    has_eos = is_eos.any(dim=1)
    first_eos = torch.where(has_eos, is_eos.int().argmax(dim=1), torch.full_like(has_eos, completion_ids.shape[1], dtype=torch.long))
    columns = torch.arange(completion_ids.shape[1], device=device)[None, :]
    completion_mask = (columns <= first_eos[:, None]).long()  # (B*G, C) EOS itself is scored
    lengths = completion_mask.sum(dim=1)
    texts = tokenizer.batch_decode(completion_ids * completion_mask + pad_id * (1 - completion_mask),
                                   skip_special_tokens=True)
    return Rollout(prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=completion_ids,
                   completion_mask=completion_mask, lengths=lengths, truncated=~has_eos, texts=texts,
                   group_size=group_size, seconds=time.perf_counter() - start)
