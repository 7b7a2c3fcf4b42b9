"""grpo_helpers.loss against plain float64 references written here, independent of the package."""

from __future__ import annotations

import math

import pytest
import torch

from grpo_helpers.loss import group_advantages, grpo_loss

LOSS_TYPES = ["grpo", "bnpo", "dr_grpo", "dapo"]


# ---------------------------------------------------------------- references: explicit loops, float64

def ref_advantages(rewards: list[float], group_size: int, scale: str, eps: float = 1e-4) -> list[float]:
    def std(xs):  # unbiased
        m = sum(xs) / len(xs)
        return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))

    out = []
    for i in range(0, len(rewards), group_size):
        group = rewards[i:i + group_size]
        mean = sum(group) / len(group)
        for r in group:
            if max(group) == min(group):
                out.append(0.0)
            elif scale == "group":
                out.append((r - mean) / (std(group) + eps))
            elif scale == "batch":
                out.append((r - mean) / (std(rewards) + eps))
            else:
                out.append(r - mean)
    return out


def ref_loss(logps, old, ref, adv, mask, *, loss_type, beta, lo, hi, max_len=None, window=None):
    """Token loops in float64; tensors only so autograd can give the reference gradient."""
    n, c = logps.shape
    rows, total, tokens = [], 0.0, 0
    for i in range(n):
        row_sum, row_tokens = 0.0, 0
        for t in range(c):
            if mask[i, t] == 0:
                continue
            ratio = torch.exp(logps[i, t] - (old[i, t] if old is not None else logps[i, t].detach()))
            surrogate = torch.minimum(ratio * adv[i], torch.clamp(ratio, 1 - lo, 1 + hi) * adv[i])
            term = -surrogate
            if beta > 0:
                d = ref[i, t] - logps[i, t]
                term = term + beta * (torch.exp(d) - d - 1)
            row_sum, row_tokens = row_sum + term, row_tokens + 1
        rows.append(row_sum / max(row_tokens, 1))
        total, tokens = total + row_sum, tokens + row_tokens
    if loss_type == "grpo":
        return sum(rows) / n
    if loss_type == "bnpo":
        return total / max(tokens, 1)
    if loss_type == "dr_grpo":
        return total / (n * max_len)
    return total / (window if window is not None else max(tokens, 1))


def random_batch(n=6, c=9, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    logps = -torch.rand(n, c, generator=g, dtype=dtype) * 3
    old = logps + 0.4 * torch.randn(n, c, generator=g, dtype=dtype)  # ratios well beyond the clip range
    ref = logps + 0.3 * torch.randn(n, c, generator=g, dtype=dtype)
    adv = torch.randn(n, generator=g, dtype=dtype)
    lengths = torch.randint(0, c + 1, (n,), generator=g)
    lengths[0] = c  # at least one full row; others may be empty
    mask = (torch.arange(c) < lengths.unsqueeze(1)).long()  # right-padded completions
    return logps.requires_grad_(), old, ref, adv, mask


# ---------------------------------------------------------------- advantages

@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_advantages_match_reference(scale):
    rewards = torch.tensor([0.0, 1.0, 1.0, 2.0, 3.0, 3.0, 3.0, 3.0, -1.0, 0.5, 2.5, 0.0], dtype=torch.float64)
    got = group_advantages(rewards, 4, scale=scale)
    assert torch.allclose(got, torch.tensor(ref_advantages(rewards.tolist(), 4, scale), dtype=torch.float64),
                          atol=1e-12)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_advantages_shift_invariant_and_zero_mean(scale):
    rewards = torch.rand(16, dtype=torch.float64)
    base = group_advantages(rewards, 4, scale=scale)
    assert torch.allclose(base, group_advantages(rewards + 7.3, 4, scale=scale), atol=1e-9)
    assert base.view(4, 4).sum(1).abs().max() < 1e-9


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_equal_rewards_in_a_group_give_exact_zeros(scale):
    group = torch.full((7,), 0.9)  # float32: 0.9 minus the mean of seven 0.9s is not exactly 0
    assert (group - group.mean()).abs().max() > 0
    rewards = torch.cat([group, torch.arange(7.0), torch.full((7,), 0.3)])  # (21,)
    adv = group_advantages(rewards, 7, scale=scale)
    assert torch.equal(adv[:7], torch.zeros(7)) and torch.equal(adv[14:], torch.zeros(7))
    assert (adv[7:14] != 0).sum() == 6  # 0..6 minus its mean 3: only the middle one is zero


def test_batch_scaling_uses_the_std_of_every_process():
    """Two ranks' rewards: each rank's advantages, scaled by the std of both ranks' rewards (gathered), are the
    halves of the whole batch's; with its own std a rank would get other values."""
    rewards = torch.tensor([0.0, 1.0, 1.0, 2.0, 3.0, 3.0, 3.0, 9.0], dtype=torch.float64)
    whole = group_advantages(rewards, 2, scale="batch")
    halves = [group_advantages(part, 2, scale="batch", batch_std=float(rewards.std())) for part in rewards.split(4)]
    assert torch.allclose(torch.cat(halves), whole, atol=1e-12)
    assert not torch.allclose(group_advantages(rewards[:4], 2, scale="batch"), whole[:4], atol=1e-3)


def test_advantage_errors():
    with pytest.raises(ValueError, match="group_size=4"):
        group_advantages(torch.zeros(6), 4)
    with pytest.raises(ValueError, match="scale='std'.*'group'"):
        group_advantages(torch.zeros(8), 4, scale="std")
    with pytest.raises(ValueError, match="1-D"):
        group_advantages(torch.zeros(2, 4), 4)


# ---------------------------------------------------------------- loss values, stats and gradients

@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("beta,use_old", [(0.0, True), (0.04, True), (0.1, False)])
def test_loss_and_gradient_match_reference(loss_type, beta, use_old):
    logps, old, ref, adv, mask = random_batch(seed=10 * LOSS_TYPES.index(loss_type) + int(100 * beta))
    kwargs = dict(max_completion_length=12 if loss_type == "dr_grpo" else None,
                  num_items_in_window=40 if loss_type == "dapo" else None)
    old = old if use_old else None
    loss, stats = grpo_loss(logps, old_logps=old, ref_logps=ref if beta > 0 else None, advantages=adv,
                            completion_mask=mask, loss_type=loss_type, beta=beta, clip_eps_low=0.2,
                            clip_eps_high=0.28, **kwargs)
    (grad,) = torch.autograd.grad(loss, logps)
    expected = ref_loss(logps, old, ref, adv, mask, loss_type=loss_type, beta=beta, lo=0.2, hi=0.28,
                        max_len=kwargs["max_completion_length"], window=kwargs["num_items_in_window"])
    (expected_grad,) = torch.autograd.grad(expected, logps)
    assert abs(loss.item() - expected.item()) <= 1e-6
    assert torch.allclose(grad, expected_grad, atol=1e-6)
    assert isinstance(stats["ratio_max"], float)


def test_stats_match_reference():
    logps, old, ref, adv, mask = random_batch(n=8, c=7, seed=3)
    _, stats = grpo_loss(logps, old_logps=old, ref_logps=ref, advantages=adv, completion_mask=mask,
                         clip_eps_low=0.2, clip_eps_high=0.28, entropy=torch.full_like(old, 2.5))
    ratios, kls, low, high = [], [], 0, 0
    for i, t in mask.nonzero().tolist():
        r = math.exp(logps[i, t].item() - old[i, t].item())
        d = ref[i, t].item() - logps[i, t].item()
        ratios.append(r)
        kls.append(math.exp(d) - d - 1)
        low += r < 0.8 and adv[i] < 0
        high += r > 1.28 and adv[i] > 0
    n = len(ratios)
    assert low > 0 and high > 0  # the batch exercises both clip sides
    assert stats["kl"] == pytest.approx(sum(kls) / n, abs=1e-9)
    assert stats["clip_ratio/low_mean"] == pytest.approx(low / n)
    assert stats["clip_ratio/high_mean"] == pytest.approx(high / n)
    assert stats["clip_ratio/region_mean"] == pytest.approx((low + high) / n)
    assert stats["ratio_min"] == pytest.approx(min(ratios)) and stats["ratio_max"] == pytest.approx(max(ratios))
    assert stats["entropy"] == pytest.approx(2.5)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_on_policy_gradient_is_plain_policy_gradient(loss_type):
    """At ratio 1 and beta 0: d loss / d logp_it = -A_i * mask_it / normaliser_i."""
    logps, _, _, adv, mask = random_batch(seed=11)
    n, c = logps.shape
    loss, _ = grpo_loss(logps, old_logps=None, ref_logps=None, advantages=adv, completion_mask=mask,
                        loss_type=loss_type, beta=0.0, max_completion_length=c)
    (grad,) = torch.autograd.grad(loss, logps)
    normaliser = {"grpo": n * mask.sum(1, keepdim=True).clamp(min=1), "bnpo": mask.sum(), "dr_grpo": n * c,
                  "dapo": mask.sum()}[loss_type]
    assert torch.allclose(grad, -adv.unsqueeze(1) * mask / normaliser, atol=1e-12)
    assert loss.item() == pytest.approx(-(adv.unsqueeze(1) * mask / normaliser).sum().item())


def test_equal_rewards_give_zero_policy_gradient():
    logps, old, _, _, mask = random_batch(n=8, seed=5)
    rewards = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0], dtype=torch.float64)
    adv = group_advantages(rewards, 4)
    loss, _ = grpo_loss(logps, old_logps=old, ref_logps=None, advantages=adv, completion_mask=mask, beta=0.0)
    (grad,) = torch.autograd.grad(loss, logps)
    assert torch.equal(grad[:4], torch.zeros_like(grad[:4]))
    assert grad[4:].abs().sum() > 0


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_masked_tokens_never_matter(loss_type):
    logps, old, ref, adv, mask = random_batch(seed=7, dtype=torch.float32)
    garbage = torch.randn_like(old) * 200  # finite but absurd: exp() of it overflows float32 if ever taken
    keep = mask.bool()
    outs = []
    for variant in (0, 1):
        lp = logps if variant == 0 else torch.where(keep, logps, garbage).detach().requires_grad_()
        o = old if variant == 0 else torch.where(keep, old, -garbage)
        r = ref if variant == 0 else torch.where(keep, ref, garbage.flip(0))
        loss, stats = grpo_loss(lp, old_logps=o, ref_logps=r, advantages=adv, completion_mask=mask,
                                loss_type=loss_type, max_completion_length=9)
        (grad,) = torch.autograd.grad(loss, lp)
        outs.append((loss, grad, stats))
    assert torch.equal(outs[0][0], outs[1][0])
    assert torch.equal(outs[0][1], outs[1][1])
    assert outs[0][2] == outs[1][2]
    assert torch.equal(outs[1][1][~keep], torch.zeros(int((~keep).sum())))


def test_loss_errors():
    logps, old, ref, adv, mask = random_batch()
    common = dict(old_logps=old, ref_logps=ref, advantages=adv, completion_mask=mask)
    with pytest.raises(ValueError, match="loss_type='ppo'.*'grpo', 'bnpo', 'dr_grpo', 'dapo'"):
        grpo_loss(logps, **common, loss_type="ppo")
    with pytest.raises(ValueError, match="dr_grpo.*max_completion_length"):
        grpo_loss(logps, **common, loss_type="dr_grpo")
    with pytest.raises(ValueError, match="old_logps must have the shape"):
        grpo_loss(logps, **{**common, "old_logps": old[:, :-1]})
    with pytest.raises(ValueError, match="advantages must be"):
        grpo_loss(logps, **{**common, "advantages": adv[:-1]})
    with pytest.raises(ValueError, match="needs ref_logps"):
        grpo_loss(logps, **{**common, "ref_logps": None}, beta=0.04)
    with pytest.raises(ValueError, match="max_completion_length=4"):
        grpo_loss(logps, **common, loss_type="dr_grpo", max_completion_length=4)
