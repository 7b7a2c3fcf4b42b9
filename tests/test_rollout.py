"""Group rollouts: prefill once, then decode G samples per prompt; must equal plain generation, token for token."""

from __future__ import annotations

import pytest
import torch

from grpo_helpers import rollout as rollout_module
from grpo_helpers.rollout import generate_groups, lora_folded, onednn_decode_linears, sample_tokens
from tiny import tiny_lora, tiny_llama

PROMPTS = ["Count: one two three", "A much longer prompt that needs left padding in the batch, surely"]


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])  # fixed-shape / growing-mask decode steps
def test_greedy_rollout_matches_generate_on_each_unpadded_prompt(tokenizer, attn_implementation):
    model = tiny_llama(tokenizer, attn_implementation=attn_implementation).eval()
    assert model.config._attn_implementation == attn_implementation
    rollout = generate_groups(model, tokenizer, PROMPTS, group_size=1, max_new_tokens=12, greedy=True)
    for i, prompt in enumerate(PROMPTS):
        ids = tokenizer([prompt], return_tensors="pt", add_special_tokens=False)
        reference = model.generate(**ids, max_new_tokens=12, do_sample=False, eos_token_id=None)
        expected = reference[0, ids["input_ids"].shape[1]:]
        got = rollout.completion_ids[i][: len(expected)]
        assert torch.equal(got, expected), (got, expected)


def test_a_right_padding_tokenizer_is_padded_on_the_left_anyway(tokenizer):
    """The prefill assumes left padding (prompts end where sampling starts); a tokenizer configured to pad on the
    right must not corrupt it."""
    import copy

    model = tiny_llama(tokenizer).eval()
    right = copy.deepcopy(tokenizer)
    right.padding_side = "right"
    expected = generate_groups(model, tokenizer, PROMPTS, group_size=1, max_new_tokens=12, greedy=True)
    got = generate_groups(model, right, PROMPTS, group_size=1, max_new_tokens=12, greedy=True)
    assert torch.equal(got.completion_ids, expected.completion_ids)
    assert right.padding_side == "right"  # the caller's tokenizer is left as it was


def test_groups_are_prompt_major_with_masks_lengths_and_truncation(tokenizer):
    model = tiny_lora(tokenizer)
    eos = tokenizer.eos_token_id
    rollout = generate_groups(model, tokenizer, PROMPTS, group_size=3, max_new_tokens=10,
                              generator=torch.Generator().manual_seed(0))
    assert rollout.completion_ids.shape[0] == 6 and len(rollout.texts) == 6
    for row, mask, length, cut in zip(rollout.completion_ids, rollout.completion_mask, rollout.lengths,
                                      rollout.truncated):
        assert int(mask.sum()) == int(length)
        assert mask[:length].all() and not mask[length:].any()  # a prefix of ones: scored up to EOS
        ended = (row[:length] == eos).any()
        assert bool(cut) == (not ended)
        if ended:
            assert row[length - 1] == eos
    ids, mask = rollout.full_sequences()
    assert torch.equal(ids[3, : rollout.prompt_ids.shape[1]], rollout.prompt_ids[1])  # row 3 = prompt 1, sample 0


def test_same_generator_seed_same_samples_and_mode_restored(tokenizer):
    model = tiny_lora(tokenizer).train()
    runs = [generate_groups(model, tokenizer, PROMPTS, group_size=2, max_new_tokens=8,
                            generator=torch.Generator().manual_seed(3)) for _ in range(2)]
    assert torch.equal(runs[0].completion_ids, runs[1].completion_ids)
    assert model.training, "sampling must restore train mode"
    other = generate_groups(model, tokenizer, PROMPTS, group_size=2, max_new_tokens=8,
                            generator=torch.Generator().manual_seed(4))
    assert not torch.equal(other.completion_ids, runs[0].completion_ids)


def lora_that_matters(tokenizer):
    """The tiny LoRA model with a non-zero adapter (B starts at zero), so folding it changes the weights."""
    model = tiny_lora(tokenizer)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.3)
    return model


def test_folded_lora_samples_like_the_adapter_and_leaves_the_weights_untouched(tokenizer):
    """Sampling runs on W + scale * B @ A folded into one matrix; afterwards every weight has its old bits."""
    model = lora_that_matters(tokenizer)
    before = {n: p.detach().clone() for n, p in model.state_dict().items()}
    ids = tokenizer(["Count: one two three"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        adapter = model(input_ids=ids).logits
        with model.disable_adapter():
            base = model(input_ids=ids).logits
        with lora_folded(model):
            folded = model(input_ids=ids).logits  # adapter branch still on as well would count it twice
    assert not torch.allclose(base, adapter, atol=1e-3)  # the adapter matters
    assert torch.allclose(folded, adapter, atol=1e-5)
    after = model.state_dict()
    assert all(torch.equal(before[n].view(torch.int32), after[n].view(torch.int32)) for n in before
               if before[n].dtype == torch.float32)
    assert all(layer.disable_adapters is False for layer in model.modules() if hasattr(layer, "lora_A"))


def test_folding_in_place_restores_entries_that_rounding_would_lose(tokenizer):
    """Weights just below a power of two (or signed zeros) do not survive w + d - d: they come back from the list."""
    model = lora_that_matters(tokenizer)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "q_proj.base_layer.weight" in name:
                param[0, :8] = torch.nextafter(torch.tensor(1.0), torch.tensor(0.0))  # 0.99999994: w + d - d != w
                param[1, :8] = -0.0
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    weight, delta = layer.base_layer.weight.data, layer.get_delta_weight("default")
    assert not torch.equal((((weight + delta) - delta)).view(torch.int32), weight.view(torch.int32))  # a real case
    with torch.no_grad(), lora_folded(model):
        assert not torch.equal(layer.base_layer.weight, before["base_model.model.model.layers.0.self_attn.q_proj"
                                                               ".base_layer.weight"])  # folded in place
    for name, param in model.named_parameters():
        assert torch.equal(param.detach().view(torch.int32), before[name].view(torch.int32)), name


def test_folding_bf16_weights_rounds_once_and_restores_every_bit(tokenizer):
    """bf16 base weights with fp32 LoRA (peft's layout on a GPU): the fold is W + delta in fp32, rounded once."""
    model = lora_that_matters(tokenizer)
    layer = model.base_model.model.model.layers[0].mlp.up_proj
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "base_layer"):
                module.base_layer.weight.data = module.base_layer.weight.data.bfloat16()
    before = layer.base_layer.weight.detach().clone()
    expected = (before.float() + layer.get_delta_weight("default")).bfloat16()
    with torch.no_grad(), lora_folded(model):
        assert torch.equal(layer.base_layer.weight.view(torch.int16), expected.view(torch.int16))
    assert torch.equal(layer.base_layer.weight.view(torch.int16), before.view(torch.int16))


def test_folding_refuses_to_continue_when_the_weights_do_not_come_back(tokenizer):
    model = lora_that_matters(tokenizer)
    with torch.no_grad(), pytest.raises(RuntimeError, match="bit for bit"), lora_folded(model):
        next(p for n, p in model.named_parameters() if "lora_B" in n).mul_(2)  # the delta changes meanwhile


def test_folding_never_hides_an_error_raised_while_folded(tokenizer):
    model = lora_that_matters(tokenizer)
    with torch.no_grad(), pytest.raises(KeyError, match="from the body") as caught, lora_folded(model):
        next(p for n, p in model.named_parameters() if "lora_B" in n).mul_(2)
        raise KeyError("from the body")
    assert any("did not come back bit for bit" in note for note in caught.value.__notes__)


def test_sample_tokens_follows_the_distribution_and_never_picks_zero_probability():
    probs = torch.tensor([[0.1, 0.0, 0.6, 0.3, 0.0]]).repeat(20_000, 1)  # (N, V)
    tokens = sample_tokens(probs, torch.Generator().manual_seed(0))
    freq = torch.bincount(tokens, minlength=5).float() / tokens.numel()
    assert torch.allclose(freq, probs[0], atol=0.015), freq
    assert freq[1] == 0 and freq[4] == 0
    edge = torch.tensor([[0.0, 1.0, 0.0]])  # every draw must land on the only possible token
    assert (sample_tokens(edge.repeat(1000, 1), torch.Generator().manual_seed(1)) == 1).all()


def test_onednn_decode_linears_give_the_same_logits_and_are_undone(tokenizer):
    model = lora_that_matters(tokenizer).eval()
    ids = tokenizer(["Count: one two three"], return_tensors="pt")["input_ids"]
    linears = [m for m in model.modules() if type(m) is torch.nn.Linear]
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        with onednn_decode_linears(model):
            assert all("forward" in vars(m) for m in linears)  # really swapped, LM head included
            fast = model(input_ids=ids).logits
    assert torch.allclose(fast, plain, atol=1e-5)
    assert not any("forward" in vars(m) for m in linears)
    with onednn_decode_linears(model):  # with autograd on it must not touch the layers (the op has no backward)
        assert not any("forward" in vars(m) for m in linears)


def _decoders_used(monkeypatch) -> list:
    made = []
    real = rollout_module._decoder

    def spy(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(rollout_module, "_decoder", spy)
    return made


def test_fixed_shape_decoding_samples_what_the_growing_mask_samples(tokenizer, monkeypatch):
    """The fixed-shape step (a 4D mask over the whole preallocated cache) is the same computation as transformers'
    growing 2D mask: same tokens from the same generator, left-padded prompts included. fp32 (bf16=False): where bf16
    is fast (AMX) the default samples under autocast, which takes the growing cache."""
    model = lora_that_matters(tokenizer)
    made = _decoders_used(monkeypatch)
    fixed = generate_groups(model, tokenizer, PROMPTS, group_size=3, max_new_tokens=16, bf16=False,
                            generator=torch.Generator().manual_seed(7))
    assert type(made[-1]).__name__ == "_FixedShapeDecoder" and made[-1].graph is None  # no graph on a CPU
    monkeypatch.setattr(rollout_module, "_decoder",
                        lambda model, cache, mask, cuda_graph: rollout_module._GrowingMaskDecoder(model, cache, mask))
    growing = generate_groups(model, tokenizer, PROMPTS, group_size=3, max_new_tokens=16, bf16=False,
                              generator=torch.Generator().manual_seed(7))
    assert torch.equal(fixed.completion_ids, growing.completion_ids)
    assert int(fixed.lengths.sum()) > 6  # really decoded past the first token


def test_bf16_autocast_of_fp32_weights_decodes_with_a_growing_cache(tokenizer, monkeypatch):
    """Where the CPU (or GPU) is fast at bf16, fp32 weights sample under autocast; keys and values then differ in
    dtype, which a preallocated cache cannot hold (this failed on a Xeon with AMX). Greedy tokens still follow
    the model: the same as an fp32 run for a few tokens at least (bf16 rounding may change later choices)."""
    model = tiny_llama(tokenizer).eval()
    made = _decoders_used(monkeypatch)
    fast = generate_groups(model, tokenizer, PROMPTS, group_size=1, max_new_tokens=6, greedy=True, bf16=True)
    assert type(made[-1]).__name__ == "_GrowingMaskDecoder"
    plain = generate_groups(model, tokenizer, PROMPTS, group_size=1, max_new_tokens=6, greedy=True, bf16=False)
    assert torch.equal(fast.completion_ids[:, :2], plain.completion_ids[:, :2])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graph_decoding_samples_what_eager_decoding_samples(tokenizer, monkeypatch):
    """bf16 weights on a GPU (the default there): the recorded graph replays the same steps as plain launches."""
    model = lora_that_matters(tokenizer).to("cuda", torch.bfloat16)
    made = _decoders_used(monkeypatch)
    runs = {}
    for graph in (True, False):
        runs[graph] = generate_groups(model, tokenizer, PROMPTS, group_size=3, max_new_tokens=24, cuda_graph=graph,
                                      generator=torch.Generator("cuda").manual_seed(11))
        assert (made[-1].graph is not None) == graph  # really replayed (and really not)
    assert torch.equal(runs[True].completion_ids, runs[False].completion_ids)
    assert runs[True].texts == runs[False].texts
    greedy = [generate_groups(model, tokenizer, PROMPTS, group_size=1, max_new_tokens=24, greedy=True, cuda_graph=g)
              for g in (True, False)]
    assert torch.equal(greedy[0].completion_ids, greedy[1].completion_ids)
