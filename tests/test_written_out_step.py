"""Chapter 04's GRPO step written out by hand equals the trainer's update on the same rollout, and the check can
fail: a change to either side alone breaks it."""

from __future__ import annotations

import pytest
import torch

from grpo_helpers import trainer as trainer_module
from grpo_helpers.countdown.data import generate_countdown
from grpo_helpers.config import load_config
from grpo_helpers.logprobs import completion_logprobs
from grpo_helpers.loss import group_advantages, grpo_loss
from grpo_helpers.preflight import thrown_away
from grpo_helpers.rollout import generate_groups
from grpo_helpers.trainer import GRPOTrainer
from tiny import tiny_lora

TASKS = generate_countdown(40, seed=1)


def make_trainer(tokenizer, tmp_path, *, memory_lean: bool) -> GRPOTrainer:
    config = load_config("cpu", num_tasks=40, test_size=8, eval_tasks=4, num_prompts=2, group_size=4,
                         max_new_tokens=8, beta=0.04, temperature=1.0, max_grad_norm=0.0, eval_every=0,
                         dynamic_sampling=0, reward_weights={"length": 1.0, "format": 1.0}, memory_lean=memory_lean,
                         output_dir=str(tmp_path))
    return GRPOTrainer(config, train_dataset=TASKS[:32], eval_dataset=TASKS[32:], model=tiny_lora(tokenizer),
                       tokenizer=tokenizer)


def written_out_step(trainer: GRPOTrainer, *, advantage_sign: float = 1.0):
    """Chapter 04's cell: sample, score, advantages, log-probs, grpo_loss, backward; the LoRA gradients."""
    cfg, model, tokenizer, G = trainer.config, trainer.unwrapped_model, trainer.tokenizer, trainer.config.rollout.group_size
    tasks = next(trainer.sampler)
    rollout = generate_groups(model, tokenizer, trainer.task.render_prompts(tokenizer, tasks), group_size=G,
                              max_new_tokens=cfg.rollout.max_new_tokens, temperature=cfg.rollout.temperature,
                              top_p=cfg.rollout.top_p, top_k=cfg.rollout.top_k, generator=trainer.generator, fast=False)
    scores = trainer.task.score(rollout.texts, tasks, repeat=G, weights=cfg.rewards.reward_weights)
    advantages = advantage_sign * group_advantages(torch.tensor(scores.total), G, scale=cfg.loss.scale_rewards)
    ids, mask = rollout.full_sequences()  # (B*G, P + C)
    C = rollout.completion_ids.shape[1]
    with torch.no_grad(), model.disable_adapter():  # the reference: the same model with the adapter off
        ref_logps = completion_logprobs(model, ids, mask, C, temperature=cfg.rollout.temperature)  # (B*G, C)
    model.train()
    model.zero_grad(set_to_none=True)
    logps = completion_logprobs(model, ids, mask, C, temperature=cfg.rollout.temperature)  # (B*G, C)
    loss, _ = grpo_loss(logps, old_logps=None, ref_logps=ref_logps, advantages=advantages,
                        completion_mask=rollout.completion_mask, loss_type=cfg.loss.loss_type, beta=cfg.loss.beta,
                        clip_eps_low=cfg.loss.clip_eps_low, clip_eps_high=cfg.loss.clip_eps_high,
                        max_completion_length=cfg.rollout.max_new_tokens)
    loss.backward()
    return tasks, rollout, scores, lora_gradients(model)


def lora_gradients(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}


def compare(tokenizer, tmp_path, *, memory_lean: bool, advantage_sign: float = 1.0) -> None:
    trainer = make_trainer(tokenizer, tmp_path, memory_lean=memory_lean)
    with thrown_away(trainer):
        tasks, rollout, scores, by_hand = written_out_step(trainer, advantage_sign=advantage_sign)
        trainer.model.zero_grad(set_to_none=True)
        trainer.optimize([trainer.prepare_batch(tasks, rollout, scores)], update=False)
        by_trainer = lora_gradients(trainer.unwrapped_model)
    assert any(g.abs().sum() > 0 for g in by_hand.values()), "nothing to compare: all gradients zero"
    assert by_hand.keys() == by_trainer.keys()
    for name in by_hand:
        torch.testing.assert_close(by_trainer[name], by_hand[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("memory_lean", [False, True])
def test_the_written_out_step_is_the_trainers_update(tokenizer, length_reward, tmp_path, memory_lean):
    compare(tokenizer, tmp_path, memory_lean=memory_lean)


def test_the_check_fails_when_the_written_out_step_changes(tokenizer, length_reward, tmp_path):
    with pytest.raises(AssertionError):
        compare(tokenizer, tmp_path, memory_lean=False, advantage_sign=-1.0)


def test_the_check_fails_when_the_trainers_loss_changes(tokenizer, length_reward, tmp_path, monkeypatch):
    def scaled(*args, **kwargs):  # e.g. another normaliser of the token sum
        loss, stats = grpo_loss(*args, **kwargs)
        return loss * 1.1, stats

    monkeypatch.setattr(trainer_module, "grpo_loss", scaled)
    with pytest.raises(AssertionError):
        compare(tokenizer, tmp_path, memory_lean=False)
