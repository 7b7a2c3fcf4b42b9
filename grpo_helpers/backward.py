"""The memory-lean backward (`memory_lean: true`): the gradient of a whole rollout window's loss, a few rows at a time.

A window (grad_accum_steps batches of B prompts x G completions) rarely fits through the model at once on a small
machine. `window_backward` feeds it through in pieces of `prompts_per_pass` prompts, each piece
`completions_per_pass` completions at a time, and scales each part's loss so that the summed gradients equal the
whole window's: the gradients of the trainer's plain backward (tests/test_trainer.py compares them). Under
several processes the gradients stay local (`no_sync`) and are averaged once at the end, as DDP's all-reduce
would. DeepSpeed (which steps inside its backward) and transformers' gradient checkpointing (no cache across a
group) take one plain backward per prompt piece instead.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable

import torch
from accelerate import Accelerator

from grpo_helpers.batch import Batch, batch_logprobs, hf_checkpointing, pieces, select
from grpo_helpers.distributed import average_gradients, zero_stage
from grpo_helpers.logprobs import grouped_logprobs_backward
from grpo_helpers.loss import WINDOW_NORMALISED, window_share

# (log-probs, batch, entropy=None) -> loss, stats; the entropy (same shape as the log-probs) only feeds the stats
LossFn = Callable[..., tuple[torch.Tensor, dict[str, float]]]


def part_weight(part: Batch, batch: Batch, *, loss_type: str, batches: int) -> float:
    """What turns a part's loss into its share of the window's loss.

    dapo's and cispo's losses are already shares (token sums over the whole window's tokens); bnpo's token mean is
    reweighed by the part's share of the batch's tokens; grpo and dr_grpo (per-sequence means or sums) by its share
    of rows. Then each batch is one of `batches` accumulated."""
    if loss_type in WINDOW_NORMALISED:
        within = 1.0
    elif loss_type == "bnpo":
        within = float(part.scored.sum().clamp(min=1) / batch.scored.sum().clamp(min=1))
    else:
        within = part.advantages.shape[0] / batch.advantages.shape[0]
    return within * window_share(loss_type, batches=batches)


def window_backward(model: torch.nn.Module, batches: list[Batch], loss_fn: LossFn, *, accelerator: Accelerator,
                    loss_type: str, prompts_per_pass: int, completions_per_pass: int, temperature: float,
                    check_finite: Callable[[torch.Tensor], None]) -> list[dict[str, float]]:
    """Leave the window's loss gradient on the model's parameters (averaged over processes); return each batch's
    share of the window's loss and its stats, computed from the parts' log-probs (and entropies: the policy's, in
    the same forward that trains it, as TRL logs it)."""
    small_passes = zero_stage(accelerator) is None and not hf_checkpointing(model)
    per_batch = []
    for index, batch in enumerate(batches):
        logps, entropies = [], []
        parts = pieces(batch, prompts_per_pass)
        for number, piece in enumerate(parts):
            if small_passes:  # gradients stay local; averaged once below
                with accelerator.no_sync(model):
                    piece_logps, entropy = _small_passes(
                        model, piece, batch, loss_fn, accelerator=accelerator, loss_type=loss_type,
                        batches=len(batches), completions_per_pass=completions_per_pass, temperature=temperature,
                        check_finite=check_finite)
            else:
                last = index == len(batches) - 1 and number == len(parts) - 1
                with nullcontext() if last else accelerator.no_sync(model):  # all-reduce once, on the last backward
                    piece_logps, entropy = batch_logprobs(model, piece, temperature=temperature, lean=True,
                                                          return_entropy=True)  # with gradient
                    piece_loss, _ = loss_fn(piece_logps, piece)
                    check_finite(piece_loss)
                    accelerator.backward(piece_loss * part_weight(piece, batch, loss_type=loss_type,
                                                                  batches=len(batches)))
            logps.append(piece_logps.detach())
            entropies.append(entropy)
        with torch.no_grad():  # the whole batch's loss value and stats (finite: its parts were)
            loss, stats = loss_fn(torch.cat(logps), batch, entropy=torch.cat(entropies))
        per_batch.append({"loss": loss.item() * window_share(loss_type, batches=len(batches)), **stats})
    if small_passes:
        average_gradients(accelerator, model)
    return per_batch


def _small_passes(model, piece: Batch, batch: Batch, loss_fn: LossFn, *, accelerator: Accelerator, loss_type: str,
                  batches: int, completions_per_pass: int, temperature: float,
                  check_finite) -> tuple[torch.Tensor, torch.Tensor]:
    """Backward of the piece's loss share, `completions_per_pass` completions at a time; its log-probs and
    entropies."""
    r = piece.rollout

    def share(logps: torch.Tensor, rows: slice) -> torch.Tensor:
        part = select(piece, slice(None), rows)
        loss, _ = loss_fn(logps, part)
        check_finite(loss)
        return loss * part_weight(part, batch, loss_type=loss_type, batches=batches)

    return grouped_logprobs_backward(model, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask,
                                     r.group_size, share, completions_per_pass=completions_per_pass,
                                     backward=accelerator.backward,
                                     temperature=temperature, return_entropy=True)
