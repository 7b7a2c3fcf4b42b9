"""GSPO (sequence-level ratios) and CISPO (clipped importance weights) against float64 loop references: loss value
and gradient, masked tokens, on-policy and off-policy (several passes over one rollout), as TRL computes them."""

from __future__ import annotations

import math

import pytest
import torch

from grpo_helpers.config import ConfigError, load_config
from grpo_helpers.loss import grpo_loss
from test_loss import random_batch

AGGREGATIONS = ["grpo", "bnpo", "dr_grpo", "dapo"]


def gspo_reference(logps, old, ref, adv, mask, *, loss_type, beta, lo, hi, max_len=None, window=None):
    """One ratio per completion: exp(mean over its tokens of logp - old), clipped per sequence, every token of the
    completion weighted by it; then the usual aggregation. Loops, float64."""
    n, c = logps.shape
    rows, total, tokens = [], 0.0, 0
    for i in range(n):
        positions = [t for t in range(c) if mask[i, t]]
        if not positions:
            rows.append(torch.zeros((), dtype=logps.dtype))
            continue
        old_row = old[i] if old is not None else logps[i].detach()
        ratio = torch.exp(sum(logps[i, t] - old_row[t] for t in positions) / len(positions))
        surrogate = torch.minimum(ratio * adv[i], torch.clamp(ratio, 1 - lo, 1 + hi) * adv[i])
        row_sum = 0.0
        for t in positions:
            term = -surrogate
            if beta > 0:
                d = ref[i, t] - logps[i, t]
                term = term + beta * (torch.exp(d) - d - 1)
            row_sum = row_sum + term
        rows.append(row_sum / len(positions))
        total, tokens = total + row_sum, tokens + len(positions)
    return {"grpo": lambda: sum(rows) / n, "bnpo": lambda: total / max(tokens, 1),
            "dr_grpo": lambda: total / (n * max_len),
            "dapo": lambda: total / (window if window is not None else max(tokens, 1))}[loss_type]()


def cispo_reference(logps, old, adv, mask, *, eps_max, sequence=False, window=None):
    """-sum over tokens of min(ratio, eps_max) (a constant) * A * logp, over the window's tokens. Loops, float64."""
    n, c = logps.shape
    total, tokens = 0.0, 0
    for i in range(n):
        positions = [t for t in range(c) if mask[i, t]]
        old_row = old[i] if old is not None else logps[i].detach()
        if sequence and positions:
            seq = math.exp(sum((logps[i, t] - old_row[t]).item() for t in positions) / len(positions))
        for t in positions:
            ratio = seq if sequence else math.exp((logps[i, t] - old_row[t]).item())
            total = total - min(ratio, eps_max) * adv[i] * logps[i, t]
            tokens += 1
    return total / (window if window is not None else max(tokens, 1))


@pytest.mark.parametrize("loss_type", AGGREGATIONS)
@pytest.mark.parametrize("beta,use_old", [(0.0, True), (0.04, True), (0.0, False)])
def test_gspo_matches_the_sequence_level_reference(loss_type, beta, use_old):
    logps, old, ref, adv, mask = random_batch(seed=20 + AGGREGATIONS.index(loss_type))
    if use_old:  # GSPO's ratios sit near 1: per-token noise whose mean over each row's tokens is that row's offset
        noise = 0.01 * torch.randn(old.shape, generator=torch.Generator().manual_seed(7), dtype=old.dtype) * mask
        noise = noise - (noise.sum(1, keepdim=True) / mask.sum(1, keepdim=True).clamp(min=1)) * mask
        offsets = torch.tensor([1e-3, 1e-4, -1e-3, -1e-4, 6e-4, -6e-4], dtype=old.dtype)[:, None]  # in, out, ...
        old = logps.detach() - (noise + offsets) * mask
    else:
        old = None
    kwargs = dict(max_completion_length=12 if loss_type == "dr_grpo" else None,
                  num_items_in_window=40 if loss_type == "dapo" else None)
    loss, stats = grpo_loss(logps, old_logps=old, ref_logps=ref if beta > 0 else None, advantages=adv,
                            completion_mask=mask, loss_type=loss_type, beta=beta, clip_eps_low=3e-4,
                            clip_eps_high=4e-4, importance_sampling_level="sequence", **kwargs)
    (grad,) = torch.autograd.grad(loss, logps)
    expected = gspo_reference(logps, old, ref, adv, mask, loss_type=loss_type, beta=beta, lo=3e-4, hi=4e-4,
                              max_len=kwargs["max_completion_length"], window=kwargs["num_items_in_window"])
    (expected_grad,) = torch.autograd.grad(expected, logps)
    assert loss.item() == pytest.approx(expected.item(), abs=1e-9)
    assert torch.allclose(grad, expected_grad, atol=1e-9)
    if use_old:  # with ratios spread by a few 1e-4, the 3e-4 / 4e-4 range clips some sequences but not all
        rows = [i for i in range(mask.shape[0]) if mask[i].sum() > 0]
        log_ratios = [((logps[i] - old[i]) * mask[i]).sum().item() / mask[i].sum().item() for i in rows]
        outside = [not -3e-4 <= math.expm1(r) <= 4e-4 for r in log_ratios]
        assert any(outside) and not all(outside), log_ratios
        clipped_tokens = sum(mask[i].sum().item() for i, out, r in zip(rows, outside, log_ratios)
                             if out and (r > 0) == (adv[i] > 0))
        assert stats["clip_ratio/region_mean"] == pytest.approx(clipped_tokens / mask.sum().item())


def test_gspo_gives_every_token_of_a_completion_the_same_ratio():
    logps, old, _, adv, mask = random_batch(seed=4)
    _, stats = grpo_loss(logps, old_logps=old, ref_logps=None, advantages=adv, completion_mask=mask, beta=0.0,
                         importance_sampling_level="sequence")
    rows = [i for i in range(mask.shape[0]) if mask[i].sum() > 0]
    seq = [math.exp(((logps[i] - old[i]) * mask[i]).sum().item() / mask[i].sum().item()) for i in rows]
    assert stats["ratio_min"] == pytest.approx(min(seq)) and stats["ratio_max"] == pytest.approx(max(seq))


@pytest.mark.parametrize("sequence", [False, True])
@pytest.mark.parametrize("use_old", [True, False])
def test_cispo_matches_the_reference(sequence, use_old):
    logps, old, _, adv, mask = random_batch(seed=31)
    old = old if use_old else None
    loss, stats = grpo_loss(logps, old_logps=old, ref_logps=None, advantages=adv, completion_mask=mask,
                            loss_type="cispo", beta=0.0, cispo_eps_max=1.3, num_items_in_window=40,
                            importance_sampling_level="sequence" if sequence else "token")
    (grad,) = torch.autograd.grad(loss, logps)
    expected = cispo_reference(logps, old, adv, mask, eps_max=1.3, sequence=sequence, window=40)
    (expected_grad,) = torch.autograd.grad(expected, logps)
    assert loss.item() == pytest.approx(expected.item(), abs=1e-9)
    assert torch.allclose(grad, expected_grad, atol=1e-9)
    if use_old and not sequence:  # token ratios spread by exp(0.4 * N(0, 1)): some above the 1.3 cap
        capped = [(math.exp((logps[i, t] - old[i, t]).item()) > 1.3, adv[i].item() > 0) for i, t in mask.nonzero().tolist()]
        assert any(over for over, _ in capped) and not all(over for over, _ in capped)
        assert stats["clip_ratio/high_mean"] == pytest.approx(sum(o and up for o, up in capped) / len(capped))
        assert stats["clip_ratio/low_mean"] == 0  # cispo has no lower bound


def test_cispo_keeps_a_gradient_where_the_clipped_surrogate_has_none():
    """A token far above the clip range with a positive advantage: PPO-style clipping zeroes its gradient, CISPO's
    capped weight does not (the reason MiniMax-M1 gives for it)."""
    logps = torch.tensor([[-1.0]], dtype=torch.float64, requires_grad=True)
    old = torch.tensor([[-2.0]], dtype=torch.float64)  # ratio e = 2.7 > 1.28
    common = dict(old_logps=old, ref_logps=None, advantages=torch.tensor([1.0], dtype=torch.float64),
                  completion_mask=torch.ones(1, 1), beta=0.0, clip_eps_high=0.28)
    (clipped,) = torch.autograd.grad(grpo_loss(logps, **common, loss_type="dapo")[0], logps)
    (cispo,) = torch.autograd.grad(grpo_loss(logps, **common, loss_type="cispo", cispo_eps_max=5.0)[0], logps)
    assert clipped.item() == 0.0
    assert cispo.item() == pytest.approx(-math.e)


@pytest.mark.parametrize("loss_type,level", [("cispo", "token"), ("cispo", "sequence"), ("grpo", "sequence")])
def test_masked_tokens_never_matter_for_the_new_objectives(loss_type, level):
    logps, old, _, adv, mask = random_batch(seed=8, dtype=torch.float32)
    keep = mask.bool()
    garbage = torch.randn_like(old) * 200
    results = []
    for dirty in (False, True):
        lp = torch.where(keep, logps, garbage).detach().requires_grad_() if dirty else logps
        o = torch.where(keep, old, -garbage) if dirty else old
        loss, stats = grpo_loss(lp, old_logps=o, ref_logps=None, advantages=adv, completion_mask=mask, beta=0.0,
                                loss_type=loss_type, importance_sampling_level=level)
        results.append((loss, torch.autograd.grad(loss, lp)[0], stats))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
    assert results[0][2] == results[1][2]


def test_the_new_choices_are_validated():
    logps, old, ref, adv, mask = random_batch()
    with pytest.raises(ValueError, match="importance_sampling_level='tokens'.*'token', 'sequence'"):
        grpo_loss(logps, old_logps=old, ref_logps=ref, advantages=adv, completion_mask=mask,
                  importance_sampling_level="tokens")
    with pytest.raises(ConfigError, match="importance_sampling_level"):
        load_config("cpu", importance_sampling_level="seq")
    with pytest.raises(ConfigError, match="cispo_eps_max"):
        load_config("cpu", loss_type="cispo", cispo_eps_max=0)
    config = load_config("cpu", loss_type="cispo", importance_sampling_level="sequence", mask_truncated_completions=True)
    assert config.loss.loss_type == "cispo" and config.loss.mask_truncated_completions is True


def test_overlong_penalty_is_daposs_soft_punishment():
    from grpo_helpers.countdown.rewards import overlong_penalty_reward, score_completions

    lengths = [10, 80, 81, 90, 99, 100]
    got = overlong_penalty_reward(["x"] * 6, completion_lengths=lengths, max_completion_length=100)  # buffer 20
    assert got == pytest.approx([0.0, 0.0, -0.05, -0.5, -0.95, -1.0])
    scored = score_completions(["<answer>1</answer>"] * 2, nums=[[1], [1]], target=[1, 1],
                               weights={"equation": 1.0, "overlong_penalty": 1.0}, completion_lengths=[5, 100],
                               max_completion_length=100)
    assert scored.total == pytest.approx([1.0, 0.0])
    from grpo_helpers.scoring import RewardError

    with pytest.raises(RewardError, match="needs completion_lengths"):
        score_completions(["x"], nums=[[1]], target=[1], weights={"overlong_penalty": 1.0})


def test_a_reward_function_without_kwargs_still_works_when_lengths_are_passed(monkeypatch):
    from grpo_helpers.countdown import rewards

    monkeypatch.setitem(rewards.REWARD_FUNCTIONS, "plain", lambda completions, nums, target: [1.0] * len(completions))
    scored = rewards.score_completions(["a", "b"], nums=[[1], [1]], target=[1, 1], weights={"plain": 1.0},
                                       completion_lengths=[3, 4], max_completion_length=8)
    assert scored.total == [1.0, 1.0]


# ---------------------------------------------------------------- the trainer runs them


def trainer_for(tokenizer, tmp_path, **overrides):
    from grpo_helpers.trainer import GRPOTrainer
    from test_trainer import TASKS, small_config
    from tiny import tiny_lora

    return GRPOTrainer(small_config(tmp_path, **overrides), train_dataset=TASKS[:32], eval_dataset=TASKS[32:],
                       model=tiny_lora(tokenizer), tokenizer=tokenizer)


@pytest.mark.parametrize("overrides", [dict(loss_type="cispo"), dict(importance_sampling_level="sequence",
                                                                      loss_type="grpo", clip_eps_low=3e-4,
                                                                      clip_eps_high=4e-4, num_iterations=2)])
def test_the_trainer_trains_with_the_new_objectives(tokenizer, length_reward, tmp_path, overrides):
    trainer = trainer_for(tokenizer, tmp_path, beta=0.0, max_steps=1, save_every=0, **overrides)
    before = [p.detach().clone() for p in trainer.model.parameters() if p.requires_grad]
    history = trainer.train()
    after = [p.detach() for p in trainer.model.parameters() if p.requires_grad]
    assert math.isfinite(history[-1]["loss"]) and any(not torch.equal(a, b) for a, b in zip(after, before))


def test_masked_truncated_completions_carry_no_gradient(tokenizer, length_reward, tmp_path):
    """With 3 new tokens the tiny random model never reaches EOS: every completion is truncated, so with
    mask_truncated_completions the loss has nothing to count and no weight gets a gradient."""
    for mask, expect_gradient in ((False, True), (True, False)):
        trainer = trainer_for(tokenizer, tmp_path / str(mask), max_new_tokens=3, beta=0.0,
                              mask_truncated_completions=mask)
        batch, _ = trainer.make_batch()
        assert bool(batch.rollout.truncated.all())
        window = max(1, int(batch.scored.sum()))
        loss, _ = trainer._loss(batch_logps(trainer, batch), batch, window)
        grads = torch.autograd.grad(loss, [p for p in trainer.model.parameters() if p.requires_grad], allow_unused=True)
        moved = any(g is not None and g.abs().sum() > 0 for g in grads)
        assert moved == expect_gradient


def batch_logps(trainer, batch):
    from grpo_helpers.batch import batch_logprobs

    trainer.model.train()
    return batch_logprobs(trainer.model, batch, temperature=trainer.config.rollout.temperature, lean=True)


def test_the_trainer_passes_token_lengths_to_the_overlong_penalty(tokenizer, length_reward, tmp_path):
    trainer = trainer_for(tokenizer, tmp_path, max_new_tokens=4, reward_weights={"length": 1.0,
                                                                                  "overlong_penalty": 1.0})
    batch, _ = trainer.make_batch()
    assert batch.per_function["overlong_penalty"] == [-1.0 if cut else 0.0 for cut in batch.rollout.truncated.tolist()]
