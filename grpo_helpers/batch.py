"""A rollout prepared for the loss, and the ways the loss reads it: in pieces, and as log-probabilities.

A `Batch` holds one rollout (B prompts x G completions) with everything the loss needs that carries no gradient:
advantages, and the reference's and the sampling policy's log-probs when the loss uses them. Memory-saving passes
cut a batch into pieces of whole groups (`pieces`); every tensor row is one completion, prompt-major.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from grpo_helpers.logprobs import completion_logprobs, grouped_completion_logprobs
from grpo_helpers.loss import group_advantages
from grpo_helpers.scoring import RewardBreakdown
from grpo_helpers.rollout import Rollout, sampling_mode


@dataclass
class Batch:
    """One rollout prepared for the loss; every tensor row is one completion (prompt-major)."""

    rollout: Rollout
    input_ids: torch.Tensor  # (B*G, P + C)
    attention_mask: torch.Tensor  # (B*G, P + C)
    advantages: torch.Tensor  # (B*G,)
    ref_logps: torch.Tensor | None  # (B*G, C)
    old_logps: torch.Tensor | None  # (B*G, C)
    rewards: torch.Tensor  # (B*G,)
    per_function: dict[str, list[float]] = field(default_factory=dict)
    tasks: list[dict] = field(default_factory=list)
    dynamic: dict[str, float] = field(default_factory=dict)  # dynamic sampling: zero-std shares, fresh prompts
    loss_mask: torch.Tensor | None = None  # (B*G, C) tokens the loss counts; None: every completion token

    @property
    def scored(self) -> torch.Tensor:
        """The tokens the loss counts: the completion mask, less whatever `loss_mask` leaves out."""
        return self.rollout.completion_mask if self.loss_mask is None else self.loss_mask


def select(batch: Batch, prompts: slice, rows: slice) -> Batch:
    """Prompts `prompts` of the batch and completion rows `rows` (the caller keeps the two consistent)."""
    r = batch.rollout
    rollout = Rollout(prompt_ids=r.prompt_ids[prompts], prompt_mask=r.prompt_mask[prompts],
                      completion_ids=r.completion_ids[rows], completion_mask=r.completion_mask[rows],
                      lengths=r.lengths[rows], truncated=r.truncated[rows], texts=r.texts[rows],
                      group_size=r.group_size, seconds=r.seconds)
    return Batch(rollout=rollout, input_ids=batch.input_ids[rows], attention_mask=batch.attention_mask[rows],
                 advantages=batch.advantages[rows],
                 ref_logps=None if batch.ref_logps is None else batch.ref_logps[rows],
                 old_logps=None if batch.old_logps is None else batch.old_logps[rows],
                 rewards=batch.rewards[rows], tasks=batch.tasks[prompts],
                 loss_mask=None if batch.loss_mask is None else batch.loss_mask[rows])


def pieces(batch: Batch, prompts_per_piece: int) -> list[Batch]:
    """The batch cut into runs of `prompts_per_piece` prompts with their G completions (rows stay prompt-major)."""
    G, prompts = batch.rollout.group_size, batch.rollout.prompt_ids.shape[0]
    if prompts_per_piece >= prompts:
        return [batch]
    return [select(batch, slice(start, start + prompts_per_piece), slice(start * G, (start + prompts_per_piece) * G))
            for start in range(0, prompts, prompts_per_piece)]


def hf_checkpointing(model: torch.nn.Module) -> bool:
    """Whether transformers' gradient checkpointing is on for this forward (it forbids a cache across a group)."""
    inner = getattr(model, "module", model)  # under a DDP or DeepSpeed wrapper
    return getattr(inner, "is_gradient_checkpointing", False) and model.training


def batch_logprobs(model: torch.nn.Module, batch: Batch, *, temperature: float, lean: bool,
                   return_entropy: bool = False):
    """Completion log-probs (B*G, C) (and the entropy at each position, with `return_entropy`). `lean`: each prompt
    runs once per group unless HF checkpointing forbids a cache; else the B*G full sequences run as they are."""
    r = batch.rollout
    if not lean or hf_checkpointing(model):
        return completion_logprobs(model, batch.input_ids, batch.attention_mask, r.completion_ids.shape[1],
                                   temperature=temperature, return_entropy=return_entropy)
    return grouped_completion_logprobs(model, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask,
                                       r.group_size, temperature=temperature, return_entropy=return_entropy)


def to_batch(rollout: Rollout, scores: RewardBreakdown, tasks: list[dict], *, scale_rewards: str,
             batch_std: float | None = None, dynamic: dict[str, float] | None = None,
             mask_truncated: bool = False) -> Batch:
    """The rollout with its rewards and group-relative advantages (GRPO's only use of the rewards).
    `mask_truncated`: completions cut at the length cap get no loss (DAPO's overlong filtering); they are still
    scored by the model, so the attention sees them as sampled."""
    rewards = torch.tensor(scores.total, dtype=torch.float32)  # (B*G,)
    advantages = group_advantages(rewards, rollout.group_size, scale=scale_rewards, batch_std=batch_std)  # (B*G,)
    ids, mask = rollout.full_sequences()  # (B*G, P + C)
    return Batch(rollout=rollout, input_ids=ids, attention_mask=mask, advantages=advantages.to(ids.device),
                 ref_logps=None, old_logps=None, rewards=rewards, per_function=scores.per_function, tasks=tasks,
                 dynamic=dynamic or {},
                 loss_mask=rollout.completion_mask * ~rollout.truncated[:, None] if mask_truncated else None)


def add_fixed_logprobs(batch: Batch, policy: torch.nn.Module, *, reference: torch.nn.Module | None,
                       temperature: float, reference_needed: bool, old_needed: bool, lean: bool) -> None:
    """The log-probs the loss holds fixed, without dropout noise: the reference's (for the KL; a LoRA policy's
    reference is itself with the adapter off, else `reference`, a frozen copy) and, when several passes are
    taken over one rollout, the sampling policy's (the ratio's denominator). `lean`: see `batch_logprobs`."""
    with sampling_mode(policy):
        if reference_needed:
            if reference is None:
                with policy.disable_adapter():
                    batch.ref_logps = batch_logprobs(policy, batch, temperature=temperature, lean=lean)
            else:
                batch.ref_logps = batch_logprobs(reference, batch, temperature=temperature, lean=lean)
        if old_needed:
            batch.old_logps = batch_logprobs(policy, batch, temperature=temperature, lean=lean)
