"""How the rollout decodes, in transformers' plain terms: the one to read (rollout.py runs it, fast.py speeds it up).

`PlainDecoding` makes four choices: the cache (transformers' growing `DynamicCache`), how a prompt's cache is
repeated for its G samples, the decode step (a 2D attention mask that grows a column per token) and the sampler
(`torch.multinomial`). `grpo_helpers.fast.FastDecoding` makes the same four choices faster. The positions it
assigns (`position_ids_from_mask`) are the ones the log-probs score with (logprobs.py).
"""

from __future__ import annotations

import torch
from transformers import Cache, DynamicCache


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, as `generate` assigns them; the log-probs (logprobs.py) score with the
    same ones, so scores match what was sampled."""
    return (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 1)  # (N, T)


class PlainDecoding:
    """How the rollout keeps its cache, takes a decode step and samples: transformers' own way, the one to read.

    `grpo_helpers.fast.FastDecoding` makes the same four choices faster (`fast=True`, the default)."""

    def __init__(self, model: torch.nn.Module):
        self.model = model

    def __enter__(self) -> "PlainDecoding":
        return self

    def __exit__(self, *exc) -> None:
        return None

    def new_cache(self, length: int) -> Cache:
        return DynamicCache()  # grows by one column per decoded token

    def repeat_rows(self, cache: Cache, repeats: int) -> None:
        """Row i becomes rows i*repeats ... i*repeats + repeats - 1 (prompt-major, as the samples are laid out)."""
        cache.batch_repeat_interleave(repeats)

    def decoder(self, cache: Cache, mask: torch.Tensor) -> "GrowingMaskDecoder":
        return GrowingMaskDecoder(self.model, cache, mask)

    def sample(self, probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)  # (N,)


class GrowingMaskDecoder:
    """One decode step as transformers takes it: the 2D attention mask grows a column per token."""

    def __init__(self, model: torch.nn.Module, cache: Cache, mask: torch.Tensor):
        self.model, self.cache, self.mask = model, cache, mask  # mask: (N, P)
        self.position = position_ids_from_mask(mask)[:, -1:]  # (N, 1) the last prompt token's position

    def __call__(self, token: torch.Tensor, finished: torch.Tensor | None = None) -> torch.Tensor:
        """Feed `token` (N,), get the next logits (N, V). (`finished` rows are computed all the same: their tokens
        are replaced by padding; the fast decoder skips them.)"""
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)  # (N, P + steps)
        self.position = self.position + 1
        out = self.model(input_ids=token[:, None], attention_mask=self.mask, position_ids=self.position,
                         past_key_values=self.cache, use_cache=True)
        return out.logits[:, -1, :]
