"""Group rollouts: prefill once, then decode G samples per prompt; must equal plain generation, token for token.

The speed tricks (fast=True, the default) are checked against the plain loop in tests/test_fast.py."""

from __future__ import annotations

import pytest
import torch

from grpo_helpers.rollout import generate_groups
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
