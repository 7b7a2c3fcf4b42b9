"""grpo_helpers.loss against plain float64 references written here, independent of the package."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from grpo_helpers.loss import (_final_hidden, _head_logps, completion_logprobs, group_advantages,
                               grouped_completion_logprobs, grouped_logprobs_backward, grpo_loss,
                               naive_completion_logprobs)
from grpo_helpers.fast import DropoutLinear
from grpo_helpers.models import add_lora
from grpo_helpers.rollout import generate_groups
from tiny import tiny_llama, tiny_lora

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


# ---------------------------------------------------------------- chunked log-probs on a tiny Llama

def tiny_model(lora: bool):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    model = LlamaForCausalLM(config)
    if lora:
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, task_type="CAUSAL_LM",
                                                 target_modules=["q_proj", "v_proj", "down_proj"]))
        for name, p in model.named_parameters():  # LoRA B starts at zero; make the adapter actually change outputs
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.1)
    return model


def tiny_batch(n=5, prompt=6, completion=8):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 1000, (n, prompt + completion), generator=g)  # (N, T)
    mask = torch.ones_like(ids)
    for i in range(n):
        mask[i, : i % 3] = 0  # left-padded prompts
        mask[i, prompt + completion - i:] = 0  # right-padded completions
    return ids, mask, completion


@pytest.mark.parametrize("lora", [False, True])
def test_chunked_logprobs_match_naive_values_and_gradients(lora):
    model = tiny_model(lora)
    ids, mask, c = tiny_batch()
    params = [p for p in model.parameters() if p.requires_grad]
    if lora:
        assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    weights = torch.randn(ids.shape[0], c)  # a random linear functional of the log-probs
    results = []
    for fn, extra in ((naive_completion_logprobs, {}), (naive_completion_logprobs, {"all_positions": True}),
                      (completion_logprobs, {"chunk_size": 7})):
        logps, entropy = fn(model, ids, mask, c, temperature=0.7, return_entropy=True, **extra)
        grads = torch.autograd.grad((logps * weights * mask[:, -c:]).sum(), params)
        results.append((logps, entropy, grads))
    naive, naive_ent, naive_grads = results[0]
    for other, other_ent, other_grads in results[1:]:  # full N x T x V logits, then the chunked pass
        assert other.shape == (ids.shape[0], c)
        assert (naive - other).abs().max() <= 1e-5
        assert (naive_ent - other_ent).abs().max() <= 1e-5
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(naive_grads, other_grads))
    assert max(g.abs().max() for g in results[-1][2]) > 0  # gradients reach the (LoRA) parameters


def test_chunked_logprobs_are_real_logprobs_and_work_without_grad():
    model = tiny_model(lora=False)
    ids, mask, c = tiny_batch()
    with torch.no_grad():
        logits = model(input_ids=ids[:1], attention_mask=mask[:1]).logits[0]  # (T, V), row 0 has no left pad
        chunked = completion_logprobs(model, ids, mask, c, chunk_size=3)
    expected = torch.log_softmax(logits[-c - 1:-1], -1).gather(-1, ids[0, -c:, None]).squeeze(-1)
    assert not chunked.requires_grad
    assert torch.allclose(chunked[0], expected, atol=1e-5)
    assert (chunked <= 0).all()


def test_chunked_logprobs_keep_no_vocab_sized_tensor_for_backward():
    """The memory claim itself: with several chunks autograd saves no (tokens x V) logits outside the chunk being
    recomputed; a single chunk is saved whole."""
    model = tiny_model(lora=True)
    ids, mask, c = tiny_batch()
    vocab = model.config.vocab_size
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}  # saving a weight costs nothing

    def largest_saved_vocab_tensor(fn, **kwargs) -> int:
        seen = []

        def pack(t):
            is_weight = t.untyped_storage().data_ptr() in weights
            if t.ndim >= 1 and t.shape[-1] == vocab and t.dtype.is_floating_point and not is_weight:
                seen.append(t.numel() // vocab)  # rows of logits held for backward
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn(model, ids, mask, c, **kwargs)
        return max(seen, default=0)

    assert largest_saved_vocab_tensor(naive_completion_logprobs) >= ids.shape[0] * c  # the reference does
    assert largest_saved_vocab_tensor(completion_logprobs, chunk_size=4) == 0
    one_chunk = ids.shape[0] * c  # all positions fit one chunk: kept as is, since recomputing would not lower the peak
    assert largest_saved_vocab_tensor(completion_logprobs, chunk_size=one_chunk) == one_chunk


def test_logprob_errors():
    model = tiny_model(lora=False)
    ids, mask, c = tiny_batch()
    with pytest.raises(ValueError, match="completion_len=14"):
        completion_logprobs(model, ids, mask, ids.shape[1])
    with pytest.raises(ValueError, match="chunk_size=0"):
        completion_logprobs(model, ids, mask, c, chunk_size=0)
    with pytest.raises(ValueError, match="attention_mask"):
        completion_logprobs(model, ids, mask[:, 1:], c)


def _ddp_worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    """One rank: local LoRA gradients, then gradients through DDP (which must average them over ranks)."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=120))  # a lost peer fails the test instead of hanging it
    model = tiny_model(lora=True)  # same seed on every rank: identical weights
    ids, mask, c = tiny_batch()
    ids = (ids + 37 * rank) % 1000  # each rank scores different completions
    params = [p for p in model.parameters() if p.requires_grad]
    local = torch.autograd.grad(completion_logprobs(model, ids, mask, c, chunk_size=4).sum(), params)
    ddp = DistributedDataParallel(model)
    completion_logprobs(ddp, ids, mask, c, chunk_size=4).sum().backward()
    torch.save({"local": local, "ddp": [p.grad for p in params]}, f"{out_dir}/rank{rank}.pt")
    # DDP first: were its reducer to drop the last reference to the gloo group, the group's destructor would run
    # holding the GIL while a gloo thread waits for it (a torch deadlock that hung this test once)
    del ddp
    dist.destroy_process_group()


@pytest.mark.slow  # spawns two processes (~25 s of imports)
def test_chunked_logprobs_through_ddp_average_gradients_over_ranks(tmp_path):
    """The pass goes through the DDP wrapper's forward, so its gradient hooks fire and ranks stay in sync."""
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for p0, p1, l0, l1 in zip(ranks[0]["ddp"], ranks[1]["ddp"], ranks[0]["local"], ranks[1]["local"]):
        assert torch.allclose(p0, p1, atol=1e-6)
        assert torch.allclose(p0, (l0 + l1) / 2, atol=1e-6)
    assert not torch.allclose(ranks[0]["local"][0], ranks[1]["local"][0])  # the ranks really differed


def _groups(tokenizer, group_size: int = 3):
    """A LoRA model whose adapter matters, and a real rollout with a short and a long (left-padded) prompt."""
    model = tiny_lora(tokenizer)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.3)
    prompts = ["Count: one two three", "A much longer prompt that needs left padding in the batch, surely"]
    rollout = generate_groups(model, tokenizer, prompts, group_size=group_size, max_new_tokens=10,
                              generator=torch.Generator().manual_seed(0))
    return model, rollout


def test_grouped_logprobs_equal_full_sequence_logprobs_and_gradients(tokenizer):
    """Running each prompt once and sharing its keys/values changes nothing but the cost."""
    model, r = _groups(tokenizer)
    for row in (1, 3, 4):  # as if these samples had stopped early: right padding inside the completions
        r.completion_mask[row, 3 + row:] = 0
    ids, mask = r.full_sequences()
    width = r.completion_ids.shape[1]
    real = r.completion_mask.bool()
    params = [p for p in model.parameters() if p.requires_grad]
    full = completion_logprobs(model, ids, mask, width, chunk_size=5, temperature=0.7)
    full_grads = torch.autograd.grad((full * real).sum(), params)
    grouped = grouped_completion_logprobs(model, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask,
                                          r.group_size, chunk_size=5, temperature=0.7)
    grouped_grads = torch.autograd.grad((grouped * real).sum(), params)
    assert (grouped - full)[real].abs().max() < 1e-5
    assert max((a - b).abs().max().item() for a, b in zip(grouped_grads, full_grads)) < 1e-5
    assert any(g.abs().sum() > 0 for g in grouped_grads)


def _weighted_share(weights: torch.Tensor, mask: torch.Tensor):
    """A loss split over rows, as the trainer splits grpo_loss: each slice of rows returns its own share."""
    return lambda logps, rows: (logps * weights[rows] * mask[rows]).sum()


@pytest.mark.parametrize("completions_per_pass", [1, 2, 4, 6])
def test_logprobs_backward_in_small_passes_equals_one_pass(tokenizer, completions_per_pass):
    """Scoring a few completions at a time, prompt recomputed at the end, gives the one-pass values and gradients."""
    model, r = _groups(tokenizer)
    r.completion_mask[1, 4:] = 0
    real = r.completion_mask.float()
    weights = torch.randn(r.completion_ids.shape, generator=torch.Generator().manual_seed(3))
    params = [p for p in model.parameters() if p.requires_grad]
    whole = grouped_completion_logprobs(model, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask,
                                        r.group_size, chunk_size=5, temperature=0.7)
    whole_grads = torch.autograd.grad(_weighted_share(weights, real)(whole, slice(None)), params)
    calls = []

    def share(logps, rows):
        calls.append((rows.start, rows.stop))
        return _weighted_share(weights, real)(logps, rows)

    logps = grouped_logprobs_backward(model, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask,
                                      r.group_size, share, completions_per_pass=completions_per_pass, chunk_size=5,
                                      temperature=0.7)
    n = r.completion_ids.shape[0]
    assert calls == [(s, min(s + completions_per_pass, n)) for s in range(0, n, completions_per_pass)]
    assert not logps.requires_grad
    assert (logps - whole.detach())[real.bool()].abs().max() < 1e-5
    grads = [p.grad for p in params]
    assert max((a - b).abs().max().item() for a, b in zip(grads, whole_grads)) < 1e-5
    assert all(g.abs().sum() > 0 for g in whole_grads[:2])


def test_logprobs_backward_returns_the_entropy_of_the_full_forward(tokenizer):
    """The entropy logged every step comes from the training passes' own logits: it equals the entropy of the
    naive full-sequence forward (float64), and asking for it changes neither log-probs nor gradients."""
    model, r = _groups(tokenizer)
    r.completion_mask[1, 4:] = 0
    real = r.completion_mask.bool()
    weights = torch.randn(r.completion_ids.shape, generator=torch.Generator().manual_seed(5))
    params = [p for p in model.parameters() if p.requires_grad]
    runs = []
    for return_entropy in (False, True):
        for p in params:
            p.grad = None
        out = grouped_logprobs_backward(model, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask,
                                        r.group_size, _weighted_share(weights, real.float()), completions_per_pass=3,
                                        chunk_size=5, temperature=0.7, return_entropy=return_entropy)
        runs.append((out, [p.grad.clone() for p in params]))
    (plain, plain_grads), ((logps, entropy), grads) = runs
    assert torch.equal(plain, logps) and all(torch.equal(a, b) for a, b in zip(plain_grads, grads))
    ids, mask = r.full_sequences()
    c = r.completion_ids.shape[1]
    with torch.no_grad():
        _, reference = naive_completion_logprobs(model.double(), ids, mask, c, temperature=0.7, return_entropy=True)
    model.float()
    assert entropy.shape == logps.shape and not entropy.requires_grad
    assert (entropy.double() - reference)[real].abs().max() < 1e-4
    assert (entropy[real] > 0).all()


def test_logprobs_backward_replays_the_prompts_dropout(tokenizer):
    """With dropout on, the recomputed prompt pass must draw the masks of the first one, or the gradient is wrong."""
    _, r = _groups(tokenizer)
    model = add_lora(tiny_llama(tokenizer), r=4, alpha=8, dropout=0.3)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.3)
    assert any(isinstance(m, DropoutLinear) for m in model.modules())
    model.train()
    weights = torch.randn(r.completion_ids.shape, generator=torch.Generator().manual_seed(3))
    real = r.completion_mask.float()
    params = [p for p in model.parameters() if p.requires_grad]
    torch.manual_seed(5)  # the reference, one graph, the same mask draws in order: each prompt, then the completions
    from transformers import DynamicCache
    caches = [DynamicCache() for _ in r.prompt_ids]
    first = torch.cat([_final_hidden(model, r.prompt_ids[i:i + 1], r.prompt_mask[i:i + 1], cache=cache)[:, -1]
                       for i, cache in enumerate(caches)])
    cache = DynamicCache()
    for layer in range(len(caches[0].layers)):
        cache.update(torch.cat([c.layers[layer].keys for c in caches]),
                     torch.cat([c.layers[layer].values for c in caches]), layer)
    cache.batch_repeat_interleave(r.group_size)
    mask = torch.cat([r.prompt_mask.repeat_interleave(r.group_size, dim=0), r.completion_mask], dim=1)
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)[:, r.prompt_ids.shape[1]:-1]
    rest = _final_hidden(model, r.completion_ids[:, :-1], mask[:, :-1], position_ids=positions, cache=cache)
    hidden = torch.cat([first.repeat_interleave(r.group_size, dim=0)[:, None], rest], dim=1)
    reference = _head_logps(model, hidden, r.completion_ids, 5, 1.0, False)
    reference_grads = torch.autograd.grad(_weighted_share(weights, real)(reference, slice(None)), params)
    torch.manual_seed(5)
    logps = grouped_logprobs_backward(model, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask,
                                      r.group_size, _weighted_share(weights, real), completions_per_pass=6, chunk_size=5)
    assert (logps - reference.detach()).abs().max() < 1e-5
    assert max((p.grad - g).abs().max().item() for p, g in zip(params, reference_grads)) < 1e-5


def test_logprobs_backward_errors(tokenizer):
    model, r = _groups(tokenizer)
    with pytest.raises(ValueError, match="completions_per_pass=0"):
        grouped_logprobs_backward(model, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask, 3,
                                  lambda logps, rows: logps.sum(), completions_per_pass=0)
    with pytest.raises(ValueError, match=r"\(2\*4, C\)"):
        grouped_logprobs_backward(model, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask, 4,
                                  lambda logps, rows: logps.sum())


def test_grouped_logprobs_errors(tokenizer):
    model, r = _groups(tokenizer)
    with pytest.raises(ValueError, match=r"\(2\*4, C\)"):
        grouped_completion_logprobs(model, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask, 4)
    with pytest.raises(ValueError, match="prompt_mask"):
        grouped_completion_logprobs(model, r.prompt_ids, r.prompt_mask[:, 1:], r.completion_ids, r.completion_mask, 3)
    with pytest.raises(ValueError, match="temperature=0"):
        grouped_completion_logprobs(model, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask, 3,
                                    temperature=0)
