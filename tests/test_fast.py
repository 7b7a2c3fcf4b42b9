"""The speed tricks (grpo_helpers/fast.py), each against the plain code it replaces: same tokens, same logits, same
distribution, same gradients, and every weight back bit for bit."""

from __future__ import annotations

import pytest
import torch

from grpo_helpers.fast import (DropoutLinear, FastDecoding, dropout_keep_mask, lora_folded, onednn_decode_linears,
                               sample_tokens)
from grpo_helpers.models import add_lora
from grpo_helpers.decoding import PlainDecoding
from grpo_helpers.rollout import generate_groups
from tiny import tiny_lora, tiny_llama

PROMPTS = ["Count: one two three", "A much longer prompt that needs left padding in the batch, surely"]


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_the_switch_changes_speed_not_what_is_decoded(tokenizer, attn_implementation):
    """fast=False runs the plain loop (growing cache, peft's LoRA branch, multinomial): greedy tokens are the same
    as with every trick on, and the plain sampler is seeded like the fast one."""
    model = add_lora(tiny_llama(tokenizer, attn_implementation=attn_implementation), r=4, alpha=8, dropout=0.0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.3)  # an adapter that matters, so folding it changes the weights
    runs = {fast: generate_groups(model, tokenizer, PROMPTS, group_size=1, max_new_tokens=16, greedy=True, fast=fast,
                                  bf16=False) for fast in (True, False)}
    assert torch.equal(runs[True].completion_ids, runs[False].completion_ids)
    assert int(runs[True].lengths.sum()) > 6  # really decoded past the first token
    sampled = [generate_groups(model, tokenizer, PROMPTS, group_size=3, max_new_tokens=8, fast=False,
                               generator=torch.Generator().manual_seed(5)) for _ in range(2)]
    assert torch.equal(sampled[0].completion_ids, sampled[1].completion_ids)


def test_the_plain_loop_uses_no_trick(tokenizer, monkeypatch):
    """With fast=False nothing of fast.py runs: a fold, a oneDNN swap or the fast sampler would fail here."""
    import grpo_helpers.fast as fast

    def forbidden(*args, **kwargs):
        raise AssertionError("a speed trick ran with fast=False")

    for name in ("lora_folded", "onednn_decode_linears", "sample_tokens", "preallocated_cache"):
        monkeypatch.setattr(fast, name, forbidden)
    monkeypatch.setattr(FastDecoding, "__init__", forbidden)
    rollout = generate_groups(lora_that_matters(tokenizer), tokenizer, PROMPTS, group_size=2, max_new_tokens=6,
                              fast=False, generator=torch.Generator().manual_seed(0))
    assert rollout.completion_ids.shape[0] == 4


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
    real = FastDecoding.decoder

    def spy(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(FastDecoding, "decoder", spy)
    return made


def test_fixed_shape_decoding_samples_what_the_growing_mask_samples(tokenizer, monkeypatch):
    """The fixed-shape step (a 4D mask over the whole preallocated cache) is the same computation as transformers'
    growing 2D mask: same tokens from the same generator, left-padded prompts included. fp32 (bf16=False): where bf16
    is fast (AMX) the default samples under autocast, which takes the growing cache."""
    model = lora_that_matters(tokenizer)
    made = _decoders_used(monkeypatch)
    fixed = generate_groups(model, tokenizer, PROMPTS, group_size=3, max_new_tokens=16, bf16=False,
                            generator=torch.Generator().manual_seed(7))
    assert type(made[-1]).__name__ == "FixedShapeDecoder" and made[-1].graph is None  # no graph on a CPU
    monkeypatch.setattr(FastDecoding, "decoder", PlainDecoding.decoder)
    growing = generate_groups(model, tokenizer, PROMPTS, group_size=3, max_new_tokens=16, bf16=False,
                              generator=torch.Generator().manual_seed(7))
    assert torch.equal(fixed.completion_ids, growing.completion_ids)
    assert int(fixed.lengths.sum()) > 6  # really decoded past the first token


def test_dropping_finished_rows_decodes_the_same_tokens(tokenizer, monkeypatch):
    """Rows that have finished leave the fixed-shape batch (on a CPU), and the rows left decode exactly as in the
    whole batch, greedy and sampled (the sampler still draws for every row). The tiny model rarely ends a row by
    itself, so a token it writes midway in one row is made the end of text."""
    import copy

    from grpo_helpers.fast import FixedShapeDecoder

    model = lora_that_matters(tokenizer)
    made = _decoders_used(monkeypatch)
    decode = dict(group_size=3, max_new_tokens=16, bf16=False)
    for greedy in (False, True):
        first = generate_groups(model, tokenizer, PROMPTS, greedy=greedy, generator=torch.Generator().manual_seed(7),
                                **decode)
        ends = copy.deepcopy(tokenizer)
        ends.eos_token = tokenizer.convert_ids_to_tokens(int(first.completion_ids[1, 4]))  # row 1 ends there
        runs = []
        for keep_when in (0.0, 1.0):  # never drop / drop as soon as a row finishes
            monkeypatch.setattr(FixedShapeDecoder, "KEEP_WHEN", keep_when)
            runs.append(generate_groups(model, ends, PROMPTS, greedy=greedy,
                                        generator=torch.Generator().manual_seed(7), **decode))
            assert (len(made[-1].rows) < 6) == (keep_when == 1.0)  # rows really were (and were not) dropped
        assert int(runs[0].lengths[1]) <= 5 and int(runs[0].lengths.max()) > 5  # row 1 ended early, others ran on
        assert torch.equal(runs[0].completion_ids, runs[1].completion_ids)


def test_bf16_autocast_of_fp32_weights_decodes_with_a_growing_cache(tokenizer, monkeypatch):
    """Under bf16 autocast (a GPU's default, a CPU's when asked) fp32 weights give keys and values of another
    dtype, which a preallocated cache cannot hold (this failed on a Xeon with AMX). Greedy tokens still follow
    the model: the same as an fp32 run for a few tokens at least (bf16 rounding may change later choices)."""
    model = tiny_llama(tokenizer).eval()
    made = _decoders_used(monkeypatch)
    fast = generate_groups(model, tokenizer, PROMPTS, group_size=1, max_new_tokens=6, greedy=True, bf16=True)
    assert type(made[-1]).__name__ == "GrowingMaskDecoder"
    plain = generate_groups(model, tokenizer, PROMPTS, group_size=1, max_new_tokens=6, greedy=True, bf16=False)
    assert torch.equal(fast.completion_ids[:, :2], plain.completion_ids[:, :2])


def test_a_cpu_decodes_in_fp32_unless_asked_even_with_fast_bf16(tokenizer, monkeypatch):
    """On a CPU the default (bf16=None) is fp32 with oneDNN linears, on AMX machines too: faster there, and the
    sampler then draws from the numbers the fp32 trainer scores."""
    import grpo_helpers.fast as fast

    monkeypatch.setattr(fast, "bf16_is_fast", lambda device: True)  # as on a Xeon with AMX
    model = tiny_llama(tokenizer).eval()
    assert fast.FastDecoding(model).bf16 is False
    assert fast.FastDecoding(model, bf16=True).bf16 is True


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


def test_fused_lora_dropout_is_dropout_then_linear():
    """Output and both gradients equal Dropout (with the mask it drew) followed by the linear layer."""
    torch.manual_seed(0)
    linear, p = torch.nn.Linear(6, 3, bias=False), 0.3
    fused = DropoutLinear(linear, p)
    assert fused.weight is linear.weight
    x = torch.randn(4, 5, 6, requires_grad=True)
    torch.manual_seed(1)
    y = fused(x)
    torch.manual_seed(1)
    keep = dropout_keep_mask(x.shape, p, x.device)  # the mask the fused layer draws, from the same seed
    x_ref = x.detach().clone().requires_grad_()
    w_ref = linear.weight.detach().clone().requires_grad_()
    y_ref = torch.nn.functional.linear(x_ref * keep / (1 - p), w_ref)
    assert torch.allclose(y, y_ref, atol=1e-6)
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    assert torch.allclose(x.grad, x_ref.grad, atol=1e-6)
    assert torch.allclose(linear.weight.grad, w_ref.grad, atol=1e-6)
    assert 0 < (~keep).float().mean() < 0.6  # some entries really were dropped
    fused.eval()
    assert torch.equal(fused(x), torch.nn.functional.linear(x, linear.weight))


def test_fused_lora_dropout_drops_at_the_configured_rate():
    fused = DropoutLinear(torch.nn.Linear(1, 1, bias=False), 0.05)
    torch.nn.init.ones_(fused.weight)
    out = fused(torch.ones(200_000, 1)).detach()
    assert abs((out == 0).float().mean().item() - 0.05) < 0.003
    assert abs(out.mean().item() - 1.0) < 0.01  # scaled by 1 / (1 - p): the expectation is unchanged


def test_dropout_mask_follows_torch_rng_state():
    """The mask is replayed by torch's RNG state (what resume and the recomputed prompt pass rely on)."""
    state = torch.get_rng_state()
    first = dropout_keep_mask(torch.Size([300, 7]), 0.3, torch.device("cpu"))
    second = dropout_keep_mask(torch.Size([300, 7]), 0.3, torch.device("cpu"))
    torch.set_rng_state(state)
    assert torch.equal(dropout_keep_mask(torch.Size([300, 7]), 0.3, torch.device("cpu")), first)
    assert not torch.equal(first, second)  # the generator moved on
    assert first.dtype == torch.bool and first.shape == (300, 7)
    assert abs((~first).float().mean().item() - 0.3) < 0.03


def test_add_lora_fuses_dropout_without_changing_what_is_saved(tokenizer):
    model = add_lora(tiny_llama(tokenizer), r=4, alpha=8, dropout=0.1)
    plain = add_lora(tiny_llama(tokenizer), r=4, alpha=8, dropout=0.0)
    assert any(isinstance(m, DropoutLinear) for m in model.modules())
    assert not any(isinstance(m, torch.nn.Dropout) for m in model.modules())
    assert model.state_dict().keys() == plain.state_dict().keys()
    unfused = add_lora(tiny_llama(tokenizer), r=4, alpha=8, dropout=0.1, fast=False)  # the switch off: peft's own
    assert any(isinstance(m, torch.nn.Dropout) for m in unfused.modules())
    assert not any(isinstance(m, DropoutLinear) for m in unfused.modules())
    with pytest.raises(ValueError, match="p=0"):
        DropoutLinear(torch.nn.Linear(2, 2, bias=False), 0)
