"""A tiny random Llama on the bundled tokenizer's vocabulary: every real code path, steps in milliseconds."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from grpo_helpers.models import add_lora


def tiny_llama(tokenizer, *, seed: int = 0, attn_implementation: str = "sdpa") -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, attn_implementation=attn_implementation)
    return LlamaForCausalLM(config)


def tiny_lora(tokenizer, *, seed: int = 0):
    return add_lora(tiny_llama(tokenizer, seed=seed), r=4, alpha=8, dropout=0.0)


def length_reward(completions: list[str], **kwargs) -> list[float]:
    """A reward a random model earns unevenly (character count), so groups have variance and gradients flow."""
    return [len(c) / 100.0 for c in completions]
