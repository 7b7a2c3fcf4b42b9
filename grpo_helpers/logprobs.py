"""Per-token log-probabilities of completions, with and without the memory-lean passes the trainer can use.

`completion_logprobs` is the one chapter 03 writes out: the decoder's hidden states, then the LM head in
checkpointed chunks, so no N x C x V logits are ever held. `grouped_completion_logprobs` runs each prompt once per
group; `grouped_logprobs_backward` (the memory-lean backward's core) takes a loss's gradient a few completions at a
time. `naive_completion_logprobs` is the usual forward, kept as the reference the tests and benchmarks compare to.
Every function scores with `generate`'s positions (decoding.position_ids_from_mask), so log-probs match what was
sampled.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint
from transformers import DynamicCache

from grpo_helpers.decoding import position_ids_from_mask
from grpo_helpers.distributed import unsharded_head


def _final_hidden(model, input_ids: Tensor, attention_mask: Tensor, *, position_ids: Tensor | None = None,
                  cache: DynamicCache | None = None) -> Tensor:
    """The decoder's final (normed) hidden states, (N, T, H), taken by a hook during a call of `model` itself.

    Calling the top-level model (asking it for no logits at all) rather than its decoder keeps
    wrappers working: DistributedDataParallel synchronises gradients only for a pass through its own forward.
    With `cache`, the keys/values of earlier tokens are read from it and this call's are appended to it.
    """
    captured: list[Tensor] = []
    no_positions = torch.zeros(0, dtype=torch.long, device=input_ids.device)  # the model's own LM head is skipped

    def keep(module, args, output) -> None:  # returns None: the model's own output is left unchanged
        captured.append(output.last_hidden_state)

    hook = getattr(model, "module", model).get_decoder().register_forward_hook(keep)  # DDP: real model in .module
    try:
        model(input_ids=input_ids, attention_mask=attention_mask,
              position_ids=position_ids_from_mask(attention_mask) if position_ids is None else position_ids,
              past_key_values=cache, use_cache=cache is not None, logits_to_keep=no_positions)
    finally:
        hook.remove()
    return captured[0]


def _token_logps(logits: Tensor, targets: Tensor, temperature: float, return_entropy: bool):
    """fp32 log-softmax at the sampling temperature, gathered at the target tokens (entropy detached, for logs)."""
    logps_all = F.log_softmax(logits.float() / temperature, dim=-1)  # (..., V)
    logps = logps_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (...)
    if not return_entropy:
        return logps
    with torch.no_grad():
        entropy = -(logps_all.exp() * logps_all).sum(-1)  # (...)
    return logps, entropy


def _check_lengths(input_ids: Tensor, attention_mask: Tensor, completion_len: int, temperature: float) -> None:
    if input_ids.ndim != 2 or attention_mask.shape != input_ids.shape:
        raise ValueError(f"input_ids and attention_mask must both be (N, T), got {tuple(input_ids.shape)} "
                         f"and {tuple(attention_mask.shape)}")
    if not isinstance(completion_len, int) or not 1 <= completion_len < input_ids.shape[1]:
        raise ValueError(f"completion_len={completion_len!r} is not allowed: an integer in [1, T-1] with "
                         f"T={input_ids.shape[1]} (at least one prompt token must precede the completion)")
    if not temperature > 0:
        raise ValueError(f"temperature={temperature!r} is not allowed: a number > 0")


def completion_logprobs(model, input_ids: Tensor, attention_mask: Tensor, completion_len: int, *,
                        chunk_size: int = 128, temperature: float = 1.0, return_entropy: bool = False):
    """Log-probs (N, C) of the last C = completion_len tokens, without ever holding N x C x V logits.

    The decoder backbone gives hidden states; the C positions that predict completion tokens go through the
    LM head `chunk_size` tokens at a time. With several chunks each is checkpointed, so autograd keeps only its
    (chunk, H) input and recomputes the (chunk, V) logits in backward: peak memory is one chunk of logits, not all
    of them (a single chunk is kept as it is: recomputing it would not lower the peak).
    Works for a plain HF causal LM, a peft model and a DDP-wrapped one (see `_final_hidden`). Assumes the head
    is a plain linear layer (no logit soft-capping or scaling), true for Llama, Qwen2 and SmolLM2.
    """
    _check_lengths(input_ids, attention_mask, completion_len, temperature)
    hidden = _final_hidden(model, input_ids, attention_mask)  # (N, T, H)
    hidden = hidden[:, -completion_len - 1:-1]  # (N, C, H): position t predicts token t+1
    return _head_logps(model, hidden, input_ids[:, -completion_len:], chunk_size, temperature, return_entropy)


def _head_logps(model, hidden: Tensor, targets: Tensor, chunk_size: int, temperature: float, return_entropy: bool):
    """LM head + log-softmax over (N, C, H) hidden states, `chunk_size` positions at a time (see above)."""
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size!r} is not allowed: an integer >= 1 (tokens per LM-head chunk)")
    shape = targets.shape  # (N, C)
    hidden, targets = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)  # (N*C, H), (N*C,)
    head = unsharded_head(getattr(model, "module", model).get_output_embeddings())  # the module itself on one process

    def chunk_logps(h: Tensor, y: Tensor):
        return _token_logps(head(h), y, temperature, return_entropy)

    # one chunk peaks at its own logits with or without recomputation: checkpoint only when there are several
    recompute = torch.is_grad_enabled() and targets.numel() > chunk_size
    pieces = []
    for start in range(0, targets.numel(), chunk_size):
        h, y = hidden[start:start + chunk_size], targets[start:start + chunk_size]
        pieces.append(checkpoint(chunk_logps, h, y, use_reentrant=False) if recompute else chunk_logps(h, y))
    if not return_entropy:
        return torch.cat(pieces).view(shape)  # (N, C)
    return torch.cat([p[0] for p in pieces]).view(shape), torch.cat([p[1] for p in pieces]).view(shape)


def grouped_completion_logprobs(model, prompt_ids: Tensor, prompt_mask: Tensor, completion_ids: Tensor,
                                completion_mask: Tensor, group_size: int, *, chunk_size: int = 128,
                                temperature: float = 1.0, return_entropy: bool = False):
    """`completion_logprobs` of G completions per prompt, with each prompt run through the model once, not G times.

    The B prompts (B, P) go through the model once, filling a key/value cache; the cache is repeated G times
    and the B*G completions (B*G, C) attend to it. Same values as scoring the B*G full sequences (up to float
    rounding) and the gradient still reaches the prompt's keys and values, for a fraction of the tokens when
    prompts are long: 2 x (140 + 64 x 4) tokens instead of 8 x (140 + 64) in the standard job.
    The prompt's last hidden state predicts the first completion token. Rows are prompt-major (row i*G + g).
    Needs a model that accepts `past_key_values` in training, so not with HF gradient checkpointing.
    """
    _check_groups(prompt_ids, prompt_mask, completion_ids, completion_mask, group_size, temperature)
    if completion_ids.shape[1] == 1:  # nothing to share: keep one pass, through the (possibly DDP) wrapper
        ids = torch.cat([prompt_ids.repeat_interleave(group_size, dim=0), completion_ids], dim=1)
        mask = torch.cat([prompt_mask.repeat_interleave(group_size, dim=0), completion_mask], dim=1)
        return completion_logprobs(model, ids, mask, 1, chunk_size=chunk_size, temperature=temperature,
                                   return_entropy=return_entropy)
    # the prompt pass goes through the unwrapped model: under DDP only the last forward before backward may use
    # the wrapper (it prepares the gradient all-reduce); gradients from both passes reach the same parameters
    prompt_out = _prompt_pass(getattr(model, "module", model), prompt_ids, prompt_mask)
    hidden = _rows_hidden(model, prompt_out, prompt_mask, completion_ids, completion_mask, group_size,
                          slice(0, completion_ids.shape[0]))  # (B*G, C, H)
    return _head_logps(model, hidden, completion_ids, chunk_size, temperature, return_entropy)


def _check_groups(prompt_ids: Tensor, prompt_mask: Tensor, completion_ids: Tensor, completion_mask: Tensor,
                  group_size: int, temperature: float) -> None:
    if prompt_ids.ndim != 2 or prompt_mask.shape != prompt_ids.shape:
        raise ValueError(f"prompt_ids and prompt_mask must both be (B, P), got {tuple(prompt_ids.shape)} and "
                         f"{tuple(prompt_mask.shape)}")
    if completion_ids.ndim != 2 or completion_mask.shape != completion_ids.shape \
            or completion_ids.shape[0] != prompt_ids.shape[0] * group_size:
        raise ValueError(f"completion_ids and completion_mask must both be (B*G, C) = ({prompt_ids.shape[0]}*"
                         f"{group_size}, C), got {tuple(completion_ids.shape)} and {tuple(completion_mask.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature={temperature!r} is not allowed: a number > 0")


def _prompt_pass(model, prompt_ids: Tensor, prompt_mask: Tensor) -> list[Tensor]:
    """The prompts' last hidden state (B, H) and every layer's keys and values: what the completions read."""
    cache = DynamicCache()
    first = _final_hidden(model, prompt_ids, prompt_mask, cache=cache)[:, -1]  # (B, H)
    return [first] + [t for layer in cache.layers for t in (layer.keys, layer.values)]


def _rows_hidden(model, prompt_out: list[Tensor], prompt_mask: Tensor, completion_ids: Tensor,
                 completion_mask: Tensor, group_size: int, rows: slice) -> Tensor:
    """Final hidden states (r, C, H) for completion rows `rows`, reading their prompts' keys and values from
    `prompt_out` (what `_prompt_pass` returns); the prompt's last state predicts the first completion token."""
    first, keys, values = prompt_out[0], prompt_out[1::2], prompt_out[2::2]
    owner = torch.arange(rows.start, rows.stop, device=first.device) // group_size  # each row's prompt
    cache = DynamicCache()
    for layer, (k, v) in enumerate(zip(keys, values)):
        cache.update(k[owner], v[owner], layer)  # differentiable: the gradient reaches the prompt's keys/values
    mask = torch.cat([prompt_mask[owner], completion_mask[rows]], dim=1)  # (r, P + C)
    positions = position_ids_from_mask(mask)[:, prompt_mask.shape[1]:-1]  # (r, C - 1)
    if positions.shape[1]:
        rest = _final_hidden(model, completion_ids[rows, :-1], mask[:, :-1], position_ids=positions, cache=cache)
    else:  # one-token completions: the prompt's last state is all there is
        rest = first.new_zeros(len(owner), 0, first.shape[-1])
    return torch.cat([first[owner][:, None], rest], dim=1)  # (r, C, H)


def grouped_logprobs_backward(model, prompt_ids: Tensor, prompt_mask: Tensor, completion_ids: Tensor,
                              completion_mask: Tensor, group_size: int, loss_fn, *, completions_per_pass: int = 1,
                              backward=Tensor.backward, chunk_size: int = 128, temperature: float = 1.0,
                              return_entropy: bool = False):
    """Forward and backward of a loss of the B*G completions' log-probs, `completions_per_pass` completions at a
    time.

    Activation memory is what training on a CPU runs out of first: scoring a whole group keeps every layer's
    activations for the prompt and all G completions until the backward. Here the prompts run once without a
    graph; their keys and values become leaf tensors that each small pass of completions reads (as in
    `grouped_completion_logprobs`), and each pass's backward leaves its gradient on them. Last, the prompts run
    again with a graph, one prompt at a time, and receive those gradients: gradient checkpointing of the prompt,
    by hand, because transformers turns the key/value cache off under its own checkpointing. Peak activations:
    one prompt or `completions_per_pass` completions, whichever is larger. Cost: one extra forward of the prompts.

    `loss_fn(logps, rows)` gets the log-probs (r, C) of completions `rows` (a slice of the B*G rows) and returns
    their scalar share of the loss; `backward` is called on it (pass `accelerator.backward`). The gradient equals
    that of the summed shares computed in one pass (up to float rounding). Dropout draws the same masks in both
    passes of a prompt (the RNG state is replayed); the draws go prompt by prompt, then the completions.
    Returns the detached log-probs (B*G, C), and with `return_entropy` also the policy's entropy at each
    completion position (B*G, C), taken from the same logits, so it costs no extra forward.
    Under DistributedDataParallel call it inside `no_sync` and reduce the gradients yourself: the last backward
    here goes through the unwrapped model.
    """
    _check_groups(prompt_ids, prompt_mask, completion_ids, completion_mask, group_size, temperature)
    if not isinstance(completions_per_pass, int) or completions_per_pass < 1:
        raise ValueError(f"completions_per_pass={completions_per_pass!r} is not allowed: an integer >= 1")
    inner = getattr(model, "module", model)  # under DDP, the prompt passes bypass the wrapper
    devices = [prompt_ids.device] if prompt_ids.device.type == "cuda" else []
    prompts = [slice(i, i + 1) for i in range(prompt_ids.shape[0])]  # one prompt's graph at a time
    rng_states, outputs = [], []
    with torch.no_grad():
        for one in prompts:
            rng_states.append((torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in devices]))
            outputs.append(_prompt_pass(inner, prompt_ids[one], prompt_mask[one]))
    leaves = [torch.cat(parts).requires_grad_() for parts in zip(*outputs)]  # (B, ...) each
    del outputs
    n_rows, logps, entropies = completion_ids.shape[0], [], []
    for start in range(0, n_rows, completions_per_pass):
        rows = slice(start, min(start + completions_per_pass, n_rows))
        hidden = _rows_hidden(model, leaves, prompt_mask, completion_ids, completion_mask, group_size, rows)
        piece = _head_logps(model, hidden, completion_ids[rows], chunk_size, temperature, return_entropy)
        if return_entropy:
            piece, entropy = piece
            entropies.append(entropy)
        backward(loss_fn(piece, rows))  # piece: (r, C)
        logps.append(piece.detach())
    with torch.random.fork_rng(devices=devices):
        for one, (cpu_state, cuda_states) in zip(prompts, rng_states):
            torch.set_rng_state(cpu_state)  # the dropout masks of this prompt's first pass
            for device, state in zip(devices, cuda_states):
                torch.cuda.set_rng_state(state, device)
            outputs = _prompt_pass(inner, prompt_ids[one], prompt_mask[one])
            pairs = [(out, leaf.grad[one]) for out, leaf in zip(outputs, leaves) if leaf.grad is not None]
            if pairs:
                torch.autograd.backward([out for out, _ in pairs], [grad for _, grad in pairs])
            del outputs, pairs
    if return_entropy:
        return torch.cat(logps), torch.cat(entropies)  # (B*G, C) each
    return torch.cat(logps)  # (B*G, C)


def naive_completion_logprobs(model, input_ids: Tensor, attention_mask: Tensor, completion_len: int, *,
                              temperature: float = 1.0, return_entropy: bool = False, all_positions: bool = False):
    """Reference: the usual forward that materialises N x (C+1) x V logits (TRL's logits_to_keep way), or with
    all_positions=True the plain forward's full N x T x V logits."""
    _check_lengths(input_ids, attention_mask, completion_len, temperature)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids_from_mask(attention_mask),
                   use_cache=False, logits_to_keep=0 if all_positions else completion_len + 1).logits
    logits = logits[:, -completion_len - 1:-1]  # (N, C, V): position t predicts token t + 1
    return _token_logps(logits, input_ids[:, -completion_len:], temperature, return_entropy)


__all__ = ["completion_logprobs", "grouped_completion_logprobs", "grouped_logprobs_backward",
           "naive_completion_logprobs"]
