"""Chapter 04's GRPO step written out by hand equals the trainer's update on the same rollout: the chapter's own cell
runs here on a tiny model, and the check fails when either side changes alone."""

from __future__ import annotations

import json

import pytest
import torch

from grpo_helpers import trainer as trainer_module
from grpo_helpers.config import load_config
from grpo_helpers.countdown.game import generate_countdown
from grpo_helpers.logprobs import completion_logprobs
from grpo_helpers.loss import group_advantages, grpo_loss
from grpo_helpers.preflight import thrown_away
from grpo_helpers.rollout import generate_groups
from grpo_helpers.run_notebooks import NOTEBOOKS_DIR
from grpo_helpers.trainer import GRPOTrainer
from tiny import tiny_lora

TASKS = generate_countdown(40, seed=1)
CELL_ID = "one-grpo-step"


def chapter_cell() -> str:
    """The source of chapter 04's written-out step, as committed."""
    (chapter,) = NOTEBOOKS_DIR.glob("04_*.ipynb")
    cells = [c for c in json.loads(chapter.read_text())["cells"] if c.get("id") == CELL_ID]
    assert len(cells) == 1, f"chapter 04 has {len(cells)} cells with id {CELL_ID!r}"
    return "".join(cells[0]["source"])


def make_trainer(tokenizer, tmp_path, *, memory_lean: bool, beta: float) -> GRPOTrainer:
    config = load_config("cpu", num_tasks=40, test_size=8, eval_tasks=4, num_prompts=2, group_size=4,
                         max_new_tokens=8, beta=beta, temperature=1.0, max_grad_norm=0.5, eval_every=0,
                         dynamic_sampling=0, reward_weights={"length": 1.0, "format": 1.0}, memory_lean=memory_lean,
                         output_dir=str(tmp_path))
    return GRPOTrainer(config, train_dataset=TASKS[:32], eval_dataset=TASKS[32:], model=tiny_lora(tokenizer),
                       tokenizer=tokenizer)


def run_cell(trainer: GRPOTrainer, **replaced) -> dict:
    """Chapter 04's cell with the names its earlier cells define; `replaced` swaps some of them."""
    names = {"torch": torch, "trainer": trainer, "config": trainer.config, "G": trainer.config.rollout.group_size,
             "thrown_away": thrown_away, "generate_groups": generate_groups, "group_advantages": group_advantages,
             "completion_logprobs": completion_logprobs, "grpo_loss": grpo_loss, **replaced}
    exec(compile(chapter_cell(), "04_single_node_training.ipynb#one-grpo-step", "exec"), names)
    return names


@pytest.mark.parametrize("memory_lean, beta", [(False, 0.0), (True, 0.0), (True, 0.04)])
def test_the_written_out_step_is_the_trainers_update(tokenizer, length_reward, tmp_path, memory_lean, beta):
    trainer = make_trainer(tokenizer, tmp_path, memory_lean=memory_lean, beta=beta)
    sampler_state = trainer.sampler.state_dict()
    names = run_cell(trainer)
    assert names["exact"], "the check was not asserted"
    assert sum(float(g.abs().sum()) for g in names["by_hand"]) > 0, "nothing compared: every gradient is zero"
    assert trainer.sampler.state_dict() == sampler_state, "the step was not thrown away"
    assert all(p.grad is None for p in trainer.unwrapped_model.parameters())


def test_the_check_fails_when_the_written_out_step_changes(tokenizer, length_reward, tmp_path):
    def reversed_advantages(*args, **kwargs):
        return -group_advantages(*args, **kwargs)

    trainer = make_trainer(tokenizer, tmp_path, memory_lean=False, beta=0.0)
    with pytest.raises(AssertionError, match="not close"):
        run_cell(trainer, group_advantages=reversed_advantages)


def test_the_check_fails_when_the_trainers_loss_changes(tokenizer, length_reward, tmp_path, monkeypatch):
    def scaled(*args, **kwargs):  # e.g. another normaliser of the token sum
        loss, stats = grpo_loss(*args, **kwargs)
        return loss * 1.1, stats

    monkeypatch.setattr(trainer_module, "grpo_loss", scaled)
    trainer = make_trainer(tokenizer, tmp_path, memory_lean=False, beta=0.0)
    with pytest.raises(AssertionError, match="not close"):
        run_cell(trainer)
