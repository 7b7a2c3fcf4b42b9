"""The GRPO objective: group-relative advantages, clipped surrogate + k3 KL (the log-probs it reads: logprobs.py).

Rows are prompt-major: row i*G + g is completion g of prompt i. For each completion token t of row i

    ratio_it = pi(o_it) / pi_old(o_it)
    loss_it  = -min(ratio_it * A_i, clip(ratio_it, 1 - eps_low, 1 + eps_high) * A_i) + beta * k3_it
    k3_it    = exp(ref_it - logp_it) - (ref_it - logp_it) - 1        (an unbiased, always >= 0 estimate of KL(pi||ref))

and the loss_type decides how the token losses are averaged (see `grpo_loss`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from grpo_helpers.checks import require_choice, require_int
from grpo_helpers.config import IMPORTANCE_LEVELS, LOSS_TYPES, REWARD_SCALES

WINDOW_NORMALISED = ("dapo", "cispo")  # loss types whose loss divides by the whole window's tokens


def group_advantages(rewards: Tensor, group_size: int, *, scale: str = "group", eps: float = 1e-4,
                     batch_std: float | None = None) -> Tensor:
    """Reward minus its group mean, divided by the group std, the batch std or nothing (Dr. GRPO's `none`).
    `batch_std` is the std for scale="batch" when the batch is larger than `rewards` (the rewards of every process,
    gathered); default: the std of `rewards`.

    Only the comparison within a group matters, so a group whose completions all scored the same teaches nothing:
    its advantages are exact zeros (no rounding noise from the mean). Stds are unbiased, as in TRL.
    """
    if rewards.ndim != 1:
        raise ValueError(f"rewards must be 1-D (N,), got shape {tuple(rewards.shape)}")
    require_int("group_size", group_size)
    if rewards.numel() % group_size != 0:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of group_size={group_size}: "
                         "N must be a multiple of group_size (rows are prompt-major, i*G + g)")
    require_choice("scale", scale, REWARD_SCALES)
    grouped = rewards.view(-1, group_size)  # (B, G)
    centred = grouped - grouped.mean(dim=1, keepdim=True)  # (B, G)
    if scale == "group":
        centred = centred / (grouped.std(dim=1, keepdim=True) + eps)
    elif scale == "batch":
        centred = centred / ((rewards.std() if batch_std is None else batch_std) + eps)
    constant = grouped.amax(dim=1, keepdim=True) == grouped.amin(dim=1, keepdim=True)  # (B, 1)
    return torch.where(constant, torch.zeros_like(centred), centred).view(-1)  # (N,)


def _check_loss_inputs(logps: Tensor, named: dict[str, Tensor | None], advantages: Tensor, loss_type: str,
                       beta: float, max_completion_length: int | None, num_items_in_window: float | None,
                       importance_sampling_level: str) -> None:
    require_choice("loss_type", loss_type, LOSS_TYPES)
    require_choice("importance_sampling_level", importance_sampling_level, IMPORTANCE_LEVELS)
    if logps.ndim != 2:
        raise ValueError(f"logps must be (N, C), got shape {tuple(logps.shape)}")
    for name, tensor in named.items():
        if tensor is not None and tensor.shape != logps.shape:
            raise ValueError(f"{name} must have the shape of logps {tuple(logps.shape)}, got {tuple(tensor.shape)}")
    if advantages.shape != logps.shape[:1]:
        raise ValueError(f"advantages must be (N,) = ({logps.shape[0]},), got {tuple(advantages.shape)}")
    if beta < 0:
        raise ValueError(f"beta={beta!r} is not allowed: a number >= 0")
    if beta > 0 and named["ref_logps"] is None:
        raise ValueError(f"beta={beta} needs ref_logps (the reference policy's log-probs); pass them or set beta=0")
    if max_completion_length is not None and max_completion_length < logps.shape[1]:
        raise ValueError(f"max_completion_length={max_completion_length!r} is not allowed: an integer >= the "
                         f"completion length C={logps.shape[1]}")
    if loss_type == "dr_grpo" and max_completion_length is None:
        raise ValueError("loss_type='dr_grpo' needs max_completion_length (its normaliser is N x max length)")
    if num_items_in_window is not None and not num_items_in_window > 0:
        raise ValueError(f"num_items_in_window={num_items_in_window!r} is not allowed: a number > 0")


def grpo_loss(logps: Tensor, *, old_logps: Tensor | None, ref_logps: Tensor | None, advantages: Tensor,
              completion_mask: Tensor, loss_type: str = "dapo", beta: float = 0.04, clip_eps_low: float = 0.2,
              clip_eps_high: float = 0.2, max_completion_length: int | None = None,
              num_items_in_window: float | None = None, entropy: Tensor | None = None,
              importance_sampling_level: str = "token", cispo_eps_max: float = 5.0) -> tuple[Tensor, dict[str, float]]:
    """Clipped GRPO surrogate + beta * k3 KL, per token (N, C), aggregated by `loss_type`:

    grpo     mean over each sequence's tokens, then over sequences (short completions weigh more per token)
    bnpo     mean over all tokens of this batch
    dr_grpo  sum / (N * max_completion_length): a constant normaliser, no length bias (Dr. GRPO)
    dapo     sum / num_items_in_window: every token of the accumulation window weighs the same (DAPO)
    cispo    -min(ratio, cispo_eps_max).detach() * A * logp per token, aggregated as dapo (MiniMax-M1's CISPO):
             the weight is clipped, never the gradient, so a rare token that matters still gets one

    importance_sampling_level="sequence" (GSPO) replaces the token ratios by one per completion, exp of the mean
    token log-ratio over its completion tokens, clipped (or, for cispo, capped) per sequence; it combines with
    every loss_type (GSPO's paper: grpo's per-sequence mean). Both follow TRL's formulas and aggregation; the
    one deliberate difference: cispo's cap is its own field, not clip_eps_high (a PPO-style 0.2-0.28 bound would
    silently become a weight cap of 0.28 when a user switches loss_type).

    With gradient accumulation the trainer divides grpo/bnpo/dr_grpo losses by the number of accumulated
    batches; for dapo it instead passes num_items_in_window = completion tokens of the whole window summed over
    processes (divided by the process count when DDP averages gradients, as TRL does); default: this batch's
    tokens. old_logps=None means the batch was sampled by this very policy (mu = 1): ratio 1, same gradient.
    Masked tokens (completion_mask 0) never reach the loss or its gradient, whatever values they hold.
    """
    _check_loss_inputs(logps, {"old_logps": old_logps, "ref_logps": ref_logps, "completion_mask": completion_mask,
                               "entropy": entropy}, advantages, loss_type, beta, max_completion_length,
                       num_items_in_window, importance_sampling_level)
    mask = completion_mask.bool()  # (N, C)
    old_logps = logps.detach() if old_logps is None else old_logps
    adv = advantages.unsqueeze(1)  # (N, 1)
    log_ratio = torch.where(mask, logps - old_logps, 0.0)  # (N, C); 0 on masked tokens
    if importance_sampling_level == "sequence":  # GSPO: one ratio per completion
        log_ratio = log_ratio.sum(1, keepdim=True) / mask.sum(1, keepdim=True).clamp(min=1)  # (N, 1)
    ratio = torch.exp(log_ratio)  # (N, C) or (N, 1)
    if loss_type == "cispo":
        per_token = -torch.clamp(ratio, max=cispo_eps_max).detach() * adv * torch.where(mask, logps, 0.0)
    else:
        clipped = torch.clamp(ratio, 1 - clip_eps_low, 1 + clip_eps_high)
        per_token = -torch.min(ratio * adv, clipped * adv)  # (N, C) or (N, 1)
    kl = None
    if ref_logps is not None:
        delta = torch.where(mask, ref_logps - logps, 0.0)  # (N, C)
        kl = torch.exp(delta) - delta - 1  # k3 estimator of KL(pi || ref)
        if beta > 0:
            per_token = per_token + beta * kl
    per_token = torch.where(mask, per_token, 0.0)
    tokens = mask.sum().clamp(min=1)
    if loss_type == "grpo":
        loss = (per_token.sum(1) / mask.sum(1).clamp(min=1)).mean()
    elif loss_type == "bnpo":
        loss = per_token.sum() / tokens
    elif loss_type == "dr_grpo":
        loss = per_token.sum() / (logps.shape[0] * max_completion_length)
    else:  # dapo, cispo
        loss = per_token.sum() / (tokens if num_items_in_window is None else num_items_in_window)
    bounds = (None, cispo_eps_max) if loss_type == "cispo" else (1 - clip_eps_low, 1 + clip_eps_high)
    return loss, _loss_stats(ratio.expand_as(logps), adv, mask, kl, entropy, *bounds)


def window_share(loss_type: str, *, batches: int) -> float:
    """What one batch's loss is multiplied by to make its share of a window of `batches` accumulated batches.

    dapo and cispo divide by the whole window's tokens already (num_items_in_window); the per-batch means and sums
    of grpo, bnpo and dr_grpo are averaged over the batches."""
    return 1.0 if loss_type in WINDOW_NORMALISED else 1.0 / batches


@torch.no_grad()
def _loss_stats(ratio: Tensor, adv: Tensor, mask: Tensor, kl: Tensor | None, entropy: Tensor | None,
                low_bound: float | None, high_bound: float) -> dict[str, float]:
    """Token means over completion tokens; clipping counts only where the clip actually cuts the gradient (for
    cispo, which has no lower bound: where the weight is capped on a token it would push up)."""
    tokens = mask.sum().clamp(min=1)

    def masked_mean(x: Tensor) -> float:
        return (torch.where(mask, x.double(), 0.0).sum() / tokens).item()

    low = (ratio < low_bound) & (adv < 0) if low_bound is not None else torch.zeros_like(mask)  # (N, C)
    high = (ratio > high_bound) & (adv > 0)
    real = ratio[mask]
    stats = {
        "clip_ratio/low_mean": masked_mean(low),
        "clip_ratio/high_mean": masked_mean(high),
        "clip_ratio/region_mean": masked_mean(low | high),
        "ratio_min": real.min().item() if real.numel() else 1.0,
        "ratio_max": real.max().item() if real.numel() else 1.0,
    }
    if kl is not None:
        stats["kl"] = masked_mean(kl)
    if entropy is not None:
        stats["entropy"] = masked_mean(entropy)
    return stats


__all__ = ["group_advantages", "grpo_loss", "window_share"]
