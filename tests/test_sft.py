"""The cold start (SFT on solver traces) and dynamic sampling, on a tiny random Llama."""

from __future__ import annotations

import json

import pytest
import torch

from grpo_helpers.config import ConfigError, load_config
from grpo_helpers.countdown.game import generate_tiers
from grpo_helpers.countdown.prompts import render_prompts
from grpo_helpers.countdown.task import countdown_task
from grpo_helpers.task import tokenize_prompts
from grpo_helpers.logprobs import completion_logprobs
from grpo_helpers.rollout import generate_groups, select_groups
from grpo_helpers.sft import ColdStart, balanced_sample, sft_loss, trace_batch
from grpo_helpers.trainer import GRPOTrainer
from tiny import tiny_lora

TASKS = generate_tiers(120, tiers=["2x20", "3x20"], seed=3)


def sft_config(tmp_path, **overrides):
    values = dict(sft_steps=4, sft_batch_size=2, sft_traces=40, sft_lr=1e-2, sft_save_every=2,
                  output_dir=str(tmp_path), max_new_tokens=8)
    values.update(overrides)
    return load_config("cpu", **values)


def test_trace_batch_targets_exactly_the_completion_and_eos(tokenizer):
    rows = [{**TASKS[0], "completion": " 4 + 3 = 7. Found it.\n</think>\n<answer>3 + 4</answer>"},
            {**TASKS[70], "completion": " x"}]
    ids, mask, completion_mask = trace_batch(tokenizer, rows, task=countdown_task())
    C = completion_mask.shape[1]
    prompts = tokenize_prompts(tokenizer, render_prompts(tokenizer, rows))
    assert torch.equal(ids[:, :-C], prompts["input_ids"]) and torch.equal(mask[:, :-C], prompts["attention_mask"])
    for i, row in enumerate(rows):
        expected = tokenizer(row["completion"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        n = int(completion_mask[i].sum())
        assert ids[i, -C:][:n].tolist() == expected  # the completion, then EOS: the only targets
        assert completion_mask[i, n:].sum() == 0 and mask[i, -C:].tolist() == completion_mask[i].tolist()


def test_sft_loss_is_the_mean_nll_of_completion_tokens(tokenizer):
    model = tiny_lora(tokenizer)
    rows = [{**t, "completion": f" try.\n</think>\n<answer>{t['solution']}</answer>"} for t in TASKS[:3]]
    ids, mask, completion_mask = trace_batch(tokenizer, rows, task=countdown_task())
    logps = completion_logprobs(model, ids, mask, completion_mask.shape[1])
    expected = -(logps * completion_mask).sum() / completion_mask.sum()
    assert sft_loss(model, ids, mask, completion_mask).item() == pytest.approx(expected.item(), rel=1e-6)


def test_balanced_sample_draws_every_tier_alike():
    picked = balanced_sample(TASKS, 20, seed=0)
    assert [t["tier"] for t in picked].count("2x20") == 10 == [t["tier"] for t in picked].count("3x20")
    assert picked == balanced_sample(TASKS, 20, seed=0) and picked != balanced_sample(TASKS, 20, seed=1)


class Interrupted(Exception):
    pass


def test_cold_start_learns_its_traces_logs_and_resumes_exactly(tokenizer, tmp_path):
    def run(folder, resume=False, stop_at=None):
        def crash(trainer, metrics):
            if metrics["step"] == stop_at:  # after the step-4 checkpoint, before step 5's
                raise Interrupted

        trainer = ColdStart(sft_config(folder, sft_steps=6, resume=resume), train_dataset=TASKS,
                            model=tiny_lora(tokenizer), tokenizer=tokenizer, callbacks=[crash])
        try:
            trainer.train()
        except Interrupted:
            pass
        return trainer

    full = run(tmp_path / "full")
    assert full.history[-1]["loss"] < full.history[0]["loss"]  # it fits the traces
    logged = [json.loads(line) for line in (tmp_path / "full" / "cold_start" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in logged] == [1, 2, 3, 4, 5, 6]
    assert (full.adapter_dir / "adapter_model.safetensors").is_file()

    crashed = run(tmp_path / "split", stop_at=5)
    assert crashed.step == 5 and not crashed.adapter_dir.exists()
    resumed = run(tmp_path / "split", resume=True)  # from the step-4 checkpoint; step 5 is redone
    assert [m["step"] for m in resumed.history] == [1, 2, 3, 4, 5, 6]
    assert [m["loss"] for m in resumed.history] == pytest.approx([m["loss"] for m in full.history], abs=1e-6)
    for (name, a), (_, b) in zip(full.unwrapped_model.named_parameters(), resumed.unwrapped_model.named_parameters()):
        assert torch.allclose(a, b, atol=1e-6), name

    again = run(tmp_path / "split", resume=True)  # a finished cold start is reused, not redone
    assert len(again.history) == 6 and again.step == 6


def test_grpo_starts_from_the_cold_start_adapter(tokenizer, tmp_path):
    cold = ColdStart(sft_config(tmp_path), train_dataset=TASKS, model=tiny_lora(tokenizer), tokenizer=tokenizer)
    adapter = cold.train()
    from grpo_helpers.models import DEFAULT_LORA_TARGETS, start_from_adapter

    fresh = tiny_lora(tokenizer, seed=5)
    start_from_adapter(fresh, adapter, r=4, alpha=8, target_modules=DEFAULT_LORA_TARGETS)
    lora = [(name, a, b) for (name, a), (_, b) in zip(cold.unwrapped_model.named_parameters(), fresh.named_parameters())
            if "lora_" in name]
    assert lora and all(torch.equal(a, b) for _, a, b in lora)
    with pytest.raises(ValueError, match="lora_r"):
        start_from_adapter(tiny_lora(tokenizer), adapter, r=8, alpha=8, target_modules=DEFAULT_LORA_TARGETS)
    with pytest.raises(FileNotFoundError, match="not a saved adapter"):
        start_from_adapter(tiny_lora(tokenizer), tmp_path / "nowhere", r=4, alpha=8, target_modules=["q_proj"])


def test_recovery_share_reaches_the_task_traces_and_a_users_traces_need_not_know_it(tokenizer, tmp_path):
    """sft_recovery_share > 0: Countdown's traces slip once, catch it and verify; at 0 a user's traces(rows, seed)
    is called as before."""
    for share, recovering in ((1.0, True), (0.0, False)):
        cold = ColdStart(sft_config(tmp_path / str(share), sft_recovery_share=share), train_dataset=TASKS,
                         model=tiny_lora(tokenizer), tokenizer=tokenizer)
        assert all(("\nVerify: " in r["completion"]) == recovering for r in cold.traces)
    seen = []
    users = countdown_task()
    users.traces = lambda rows, seed: seen.append(seed) or [{**r, "completion": " 1</think>\n<answer>1</answer>"}
                                                           for r in rows]
    ColdStart(sft_config(tmp_path / "user"), train_dataset=TASKS, task=users, model=tiny_lora(tokenizer),
              tokenizer=tokenizer)
    assert seen == [load_config("cpu").train.seed]
    with pytest.raises(ConfigError, match="sft_recovery_share"):
        load_config("cpu", sft_recovery_share=1.5)


def test_select_groups_rebuilds_one_rollout_from_several(tokenizer):
    model = tiny_lora(tokenizer)
    prompts_a = render_prompts(tokenizer, TASKS[:2])
    prompts_b = render_prompts(tokenizer, TASKS[70:71])  # a 3-number prompt: longer, other padding
    gen = torch.Generator().manual_seed(0)
    a = generate_groups(model, tokenizer, prompts_a, group_size=2, max_new_tokens=5, generator=gen)
    b = generate_groups(model, tokenizer, prompts_b, group_size=2, max_new_tokens=9, generator=gen)
    joined = select_groups([a, b], [(0, 0), (1, 0)], pad_id=tokenizer.pad_token_id)
    assert joined.texts == a.texts[:2] + b.texts[:2]
    ids, mask = joined.full_sequences()
    for row, (source, index) in enumerate([(a, 0), (a, 1), (b, 0), (b, 1)]):
        src_ids, src_mask = source.full_sequences()
        keep_src, keep = src_mask[index].bool(), mask[row].bool()
        assert ids[row][keep].tolist() == src_ids[index][keep_src].tolist()  # same real tokens, only padding moved
    # the loss scores the joined rows exactly as it scores them in their own rollout
    joined_logps = completion_logprobs(model, ids, mask, joined.completion_ids.shape[1])
    own_ids, own_mask = b.full_sequences()
    own = completion_logprobs(model, own_ids, own_mask, b.completion_ids.shape[1])
    n = int(b.completion_mask[0].sum())
    assert torch.allclose(joined_logps[2, :n], own[0, :n], atol=1e-5)


def test_dynamic_sampling_swaps_groups_without_signal_and_logs_it(tokenizer, tmp_path, length_reward):
    def trainer(dynamic):
        config = load_config("cpu", num_prompts=2, group_size=2, max_new_tokens=4, max_steps=1, eval_every=0,
                             save_every=0, dynamic_sampling=dynamic, beta=0.0,
                             reward_weights={"equation": 1.0}, output_dir=str(tmp_path / str(dynamic)))
        return GRPOTrainer(config, train_dataset=TASKS[:60], eval_dataset=TASKS[60:70], model=tiny_lora(tokenizer),
                           tokenizer=tokenizer)

    plain = trainer(0)
    batch, _ = plain.make_batch()
    assert batch.dynamic == {}
    swapping = trainer(3)
    batch, _ = swapping.make_batch()  # a random model never solves a task: every group has zero spread
    discarded = batch.dynamic.pop("dynamic/discarded_tokens")
    assert batch.dynamic == {"dynamic/zero_std_before": 1.0, "dynamic/zero_std_after": 1.0,
                             "dynamic/extra_prompts": 3}
    assert 3 * 2 * 1 <= discarded <= 3 * 2 * 4  # 3 groups swapped out: 2 samples of 1 to 4 tokens each
    assert swapping.sampler.state_dict() != plain.sampler.state_dict()  # fresh prompts were drawn
    assert len(batch.tasks) == 2 and batch.rewards.shape == (4,)

    rewarded = trainer(3)
    rewarded.config.rewards.reward_weights = {"length": 1.0}  # a random model earns this unevenly
    batch, _ = rewarded.make_batch()
    assert batch.dynamic["dynamic/zero_std_after"] <= batch.dynamic["dynamic/zero_std_before"]
    metrics, _ = rewarded.train_step()
    assert {"dynamic/zero_std_before", "dynamic/extra_prompts", "hack/uses_numbers", "aha/rate", "aha/false_claims",
            "aha/self_corrected"} <= set(metrics)  # Countdown's claims are recomputed every step
    swapped_out = metrics["generated_tokens"] - metrics["completions/total_tokens"]  # the cost of the fresh prompts
    assert (swapped_out > 0) == (metrics["dynamic/extra_prompts"] > 0)
    metrics, _ = plain.train_step()
    assert metrics["generated_tokens"] == metrics["completions/total_tokens"]
