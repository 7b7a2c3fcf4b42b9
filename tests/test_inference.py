"""Chapter 06's tools: adapters load back exactly, merging changes nothing, one task is asked and judged, two models
are compared side by side (the evaluation itself: test_evaluation.py; "aha" moments: test_aha.py)."""

from __future__ import annotations

import json
from fractions import Fraction

import matplotlib
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

matplotlib.use("Agg")

from grpo_helpers import inference
from grpo_helpers.countdown.task import solve_task
from grpo_helpers.evaluation import score_samples
from grpo_helpers.inference import compare, load_policy, merge_and_save, plot_comparison
from scored_samples import CD, GOOD, TASKS, WRONG_NUMBERS, fake_generate, handcrafted
from tiny import tiny_llama, tiny_lora


def trained_adapter(tokenizer, folder, *, seed=0):
    """A tiny LoRA whose B matrices are non-zero (a fresh LoRA is a no-op), saved like GRPOTrainer.save_adapter."""
    model = tiny_lora(tokenizer, seed=seed)
    torch.manual_seed(123)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.3)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model.eval()


def logits(model, tokenizer, text="Using the numbers [3, 5, 7], create an equation"):
    batch = tokenizer([text], return_tensors="pt")
    with torch.no_grad():
        return model(**batch).logits  # (1, T, V)


# ------------------------------------------------------------------ loading and merging


def test_adapter_round_trip_gives_identical_outputs(tokenizer, tmp_path):
    original = trained_adapter(tokenizer, tmp_path / "adapter")
    loaded, loaded_tokenizer = load_policy(tiny_llama(tokenizer), tmp_path / "adapter")
    assert loaded_tokenizer.padding_side == "left" and loaded_tokenizer.pad_token == tokenizer.pad_token
    assert torch.equal(logits(original, tokenizer), logits(loaded, tokenizer))
    assert not torch.allclose(logits(tiny_llama(tokenizer).eval(), tokenizer), logits(loaded, tokenizer), atol=1e-3), \
        "the adapter should change the outputs, or this test proves nothing"
    first = solve_task(original, tokenizer, [3, 5, 7], 22, max_new_tokens=8, greedy=False, seed=7)
    second = solve_task(loaded, loaded_tokenizer, [3, 5, 7], 22, max_new_tokens=8, greedy=False, seed=7)
    assert first == second and first["tokens"] >= 1


def test_base_model_given_by_folder_name(tokenizer, tmp_path):
    trained_adapter(tokenizer, tmp_path / "adapter")
    tiny_llama(tokenizer).save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    from_folder, _ = load_policy(str(tmp_path / "base"), tmp_path / "adapter", device="cpu")
    from_object, _ = load_policy(tiny_llama(tokenizer), tmp_path / "adapter")
    assert torch.allclose(logits(from_folder, tokenizer), logits(from_object, tokenizer), atol=1e-6)


def test_merged_model_equals_adapter_model(tokenizer, tmp_path):
    trained_adapter(tokenizer, tmp_path / "adapter")
    policy, tok = load_policy(tiny_llama(tokenizer), tmp_path / "adapter")
    expected = logits(policy, tokenizer)
    merge_and_save(policy, tok, tmp_path / "merged")
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    standalone = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert not any("lora" in name for name, _ in standalone.named_parameters())
    assert torch.allclose(logits(standalone, tokenizer), expected, atol=1e-5)
    assert torch.equal(logits(policy, tokenizer), expected), "merge_and_save must leave the adapter model unchanged"
    merged, _ = load_policy(tiny_llama(tokenizer), tmp_path / "adapter", merge=True)
    assert not hasattr(merged, "disable_adapter")
    assert torch.allclose(logits(merged, tokenizer), expected, atol=1e-5)


def test_merge_and_save_needs_an_adapter(tokenizer, tmp_path):
    with pytest.raises(TypeError, match="no adapter to merge"):
        merge_and_save(tiny_llama(tokenizer), tokenizer, tmp_path / "merged")


def test_missing_adapter_path_names_path_and_expectation(tokenizer, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere.*adapter_config.json.*GRPOTrainer.save_adapter"):
        load_policy(tiny_llama(tokenizer), tmp_path / "nowhere")


def test_folder_without_adapter_config(tokenizer, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty.*no adapter_config.json and no adapter_model.safetensors"):
        load_policy(tiny_llama(tokenizer), tmp_path / "empty")


def test_checkpoint_and_full_model_folders_get_a_hint(tokenizer, tmp_path):
    trained_adapter(tokenizer, tmp_path / "step-000002" / "model")
    with pytest.raises(FileNotFoundError, match=r"training checkpoint.*step-000002/model"):
        load_policy(tiny_llama(tokenizer), tmp_path / "step-000002")
    tiny_llama(tokenizer).save_pretrained(tmp_path / "full")
    with pytest.raises(FileNotFoundError, match="full model folder"):
        load_policy(tiny_llama(tokenizer), tmp_path / "full")


def test_adapter_for_another_shape_is_a_clear_error(tokenizer, tmp_path):
    trained_adapter(tokenizer, tmp_path / "adapter")
    narrow = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
    with pytest.raises(ValueError, match=r"does not fit the base model a LlamaForCausalLM\(hidden_size=32") as info:
        load_policy(narrow, tmp_path / "adapter")
    assert isinstance(info.value.__cause__, RuntimeError)  # the library's error is kept as the cause


def test_adapter_for_another_depth_is_a_clear_error(tokenizer, tmp_path):
    """peft only warns when some adapter weights are missing; a half-applied adapter must not pass silently."""
    trained_adapter(tokenizer, tmp_path / "adapter")
    deeper = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                          num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2))
    with pytest.raises(ValueError, match=r"does not fit.*are missing from the file"):
        load_policy(deeper, tmp_path / "adapter")


def test_model_object_without_tokenizer_anywhere(tokenizer, tmp_path):
    tiny_lora(tokenizer).save_pretrained(tmp_path / "adapter")  # no tokenizer files
    with pytest.raises(ValueError, match="pass tokenizer="):
        load_policy(tiny_llama(tokenizer), tmp_path / "adapter")
    model, tok = load_policy(tiny_llama(tokenizer), tmp_path / "adapter", tokenizer=tokenizer)
    assert tok is tokenizer and hasattr(model, "disable_adapter")


# ------------------------------------------------------------------ one task


def test_solve_task_reports_answer_value_and_rewards(tokenizer, monkeypatch):
    generate, calls = fake_generate(lambda prompt, g: [" 2*4=8, wait: 8 - 1 = 7</think>\n<answer>(2 * 4) - 1</answer>"])
    monkeypatch.setattr(inference, "generate_groups", generate)
    out = solve_task(tiny_llama(tokenizer), tokenizer, [2, 4, 1], 7, greedy=True)
    assert out["answer"] == "(2 * 4) - 1" and out["value"] == Fraction(7)
    assert (out["format"], out["equation"], out["correct"]) == (1.0, 1.0, True)
    assert calls[0]["greedy"] is True and calls[0]["group_size"] == 1
    wrong = solve_task(tiny_llama(tokenizer), tokenizer, [2, 4, 1], 9)
    assert wrong["value"] == 7 and wrong["equation"] == 0.0 and not wrong["correct"]


@pytest.mark.parametrize("nums, target, match", [
    ([], 5, "nums"), ([1, -2], 5, "nums"), ([1, 2.5], 5, "nums"), ("1 2", 3, "nums"), ([True, 2], 3, "nums"),
    ([1, 2], 0, "target"), ([1, 2], "3", "target"),
])
def test_solve_task_rejects_bad_tasks(tokenizer, nums, target, match):
    with pytest.raises(ValueError, match=match):
        solve_task(None, tokenizer, nums, target)


# ------------------------------------------------------------------ comparing two models


def test_compare_lists_tasks_one_model_solves():
    base = handcrafted()  # first samples: correct, correct, wrong
    tuned = score_samples(TASKS, [[WRONG_NUMBERS, GOOD[0]], [GOOD[1], GOOD[1]], [GOOD[2], WRONG_NUMBERS]],
                          lengths=[[1, 1]] * 3, task=CD)  # first samples: wrong, correct, correct
    out = compare(base, tuned)
    assert [r["index"] for r in out["only_base"]] == [0] and [r["index"] for r in out["only_tuned"]] == [2]
    assert out["only_tuned"][0]["tuned"] == GOOD[2] and out["only_tuned"][0]["base"] == WRONG_NUMBERS
    assert (out["both"], out["neither"]) == (1, 0)
    row = next(r for r in out["table"] if r["metric"] == "format_rate")
    assert row["base"] == pytest.approx(2 / 3) and row["tuned"] == 1.0 and row["change"] == pytest.approx(1 / 3)
    other_tasks = score_samples(TASKS[:2], [[GOOD[0]] * 2, [GOOD[1]] * 2], lengths=[[1, 1]] * 2, task=CD)
    with pytest.raises(ValueError, match="same task"):
        compare(base, other_tasks)


def test_plot_comparison_draws_wilson_error_bars():
    base = handcrafted()
    fig = plot_comparison(base, base)
    ax = fig.axes[0]
    assert len(ax.patches) == 6  # 3 metrics x 2 models
    heights = sorted({round(p.get_height(), 6) for p in ax.patches})
    assert heights == [round(2 / 3, 6)]
    lines = [c for c in ax.containers if hasattr(c, "has_yerr") and c.has_yerr]
    assert len(lines) == 2


# ------------------------------------------------------------------ the bundled model


@pytest.mark.slow
def test_bundled_model_with_a_saved_adapter(tmp_path):
    from grpo_helpers.models import add_lora, load_model_and_tokenizer

    base, tok = load_model_and_tokenizer(device="cpu")
    add_lora(base, r=4, alpha=8, dropout=0.0).save_pretrained(tmp_path / "adapter")
    tok.save_pretrained(tmp_path / "adapter")
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["r"] == 4
    policy, tokenizer = load_policy("bundled:smollm2-135m-instruct", tmp_path / "adapter", device="cpu")
    out = solve_task(policy, tokenizer, [3, 5, 7], 22, max_new_tokens=12)
    assert out["tokens"] >= 1 and isinstance(out["completion"], str)
    with policy.disable_adapter():  # a fresh LoRA (B = 0) is exactly the base model
        base_out = solve_task(policy, tokenizer, [3, 5, 7], 22, max_new_tokens=12)
    assert base_out == out
