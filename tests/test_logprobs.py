"""grpo_helpers.logprobs: chunked, grouped and small-pass log-probs against the plain forward's, values and gradients."""

from __future__ import annotations

from datetime import timedelta

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from grpo_helpers.fast import DropoutLinear
from grpo_helpers.logprobs import (_final_hidden, _head_logps, completion_logprobs, grouped_completion_logprobs,
                                   grouped_logprobs_backward, naive_completion_logprobs)
from grpo_helpers.models import add_lora
from grpo_helpers.rollout import generate_groups
from tiny import tiny_llama, tiny_lora


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
