"""Group rollouts: G sampled completions for each prompt, with the prompt's prefill done once.

`model.generate(num_return_sequences=G)` copies every prompt G times *before* the forward pass, so the prompt
(often longer than the completion) is processed G times. Here the B prompts are prefilled once, the key/value
cache is repeated G times, and the decode loop samples all B*G rows together. The loop is short and explicit so
that its cost is visible: one forward of B*G new tokens per step. It is written once, in transformers' plain
terms (decoding.py's `PlainDecoding`); the speed tricks that make it cheap on a CPU swap in behind one switch (`fast`,
grpo_helpers/fast.py) without changing what is sampled.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from grpo_helpers.decoding import PlainDecoding, position_ids_from_mask
from grpo_helpers.fast import FastDecoding
from grpo_helpers.task import tokenize_prompts


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


def decoding(model: torch.nn.Module, *, fast: bool, bf16: bool | None = None, cuda_graph: bool = True) -> PlainDecoding:
    """The plain decoding, or the speed tricks' (grpo_helpers/fast.py: same tokens greedy, same distribution)."""
    if not fast:
        return PlainDecoding(model)
    return FastDecoding(model, bf16=bf16, cuda_graph=cuda_graph)


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
    fast: bool = True,
    bf16: bool | None = None,
    cuda_graph: bool = True,
) -> Rollout:
    """Sample `group_size` completions for each prompt (already rendered with the chat template).

    `greedy` takes the argmax (for evaluation); then all G samples of a prompt are identical, so use group_size=1
    with it. `fast` switches on the speed tricks of grpo_helpers/fast.py; with them, bf16=None picks bf16 autocast
    only on a GPU with fast bf16 matmuls (bf16=True asks for it anywhere), and `cuda_graph` replays the decode step
    as a CUDA graph on a GPU.
    """
    if group_size < 1 or max_new_tokens < 1:
        raise ValueError(f"group_size={group_size} and max_new_tokens={max_new_tokens} must both be >= 1")
    device = next(model.parameters()).device
    eos_id, pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    warpers = _warpers(temperature, top_k, top_p)
    start = time.perf_counter()

    enc = tokenize_prompts(tokenizer, prompts).to(device)  # left-padded whatever the tokenizer's padding_side
    prompt_ids, prompt_mask = enc["input_ids"], enc["attention_mask"]  # (B, P)
    with sampling_mode(model), decoding(model, fast=fast, bf16=bf16, cuda_graph=cuda_graph) as how:
        # prefill the B prompts once, then share their cache across the G samples of each
        cache = how.new_cache(prompt_ids.shape[1] + max_new_tokens)
        out = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=position_ids_from_mask(prompt_mask),
                    past_key_values=cache, use_cache=True, logits_to_keep=1)
        how.repeat_rows(cache, group_size)
        logits = out.logits[:, -1, :].float().repeat_interleave(group_size, dim=0)  # (B*G, V)
        decode = how.decoder(cache, prompt_mask.repeat_interleave(group_size, dim=0))
        finished = torch.zeros(logits.shape[0], dtype=torch.bool, device=device)  # (B*G,)
        tokens: list[torch.Tensor] = []
        for step in range(max_new_tokens):  # one forward of B*G new tokens per step
            if greedy:
                next_token = logits.argmax(dim=-1)
            else:
                next_token = how.sample(warpers(None, logits).softmax(dim=-1), generator)  # (B*G,)
            next_token = torch.where(finished, torch.full_like(next_token, pad_id), next_token)
            tokens.append(next_token)
            finished |= next_token == eos_id
            if finished.all() or step == max_new_tokens - 1:
                break
            logits = decode(next_token, finished=finished).float()  # (B*G, V)

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
