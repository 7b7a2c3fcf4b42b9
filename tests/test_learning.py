"""A learning regression check that can fail: a short seeded cold start + GRPO run on the bundled model.

The assertion is about correctness, not reward: after 8 GRPO steps from a 12-step cold start, greedy accuracy on 48
held-out tasks of the training tier (2 numbers <= 10) must rise by at least MIN_GAIN. The cold start is kept short
on purpose: with the one-check-per-line traces a longer one nearly solves this tier and leaves GRPO nothing to show.
Measured on the reference machine (2 vCPU, fp32), 2026-12-01: as shipped 15/48 -> 21/48 (+0.125); with the
advantages' sign flipped (GRPO pushing *away* from the better completions, `group_advantages` in `grpo_helpers.batch.to_batch`
negated) 15/48 -> 4/48, which fails. MIN_GAIN = 0.04 (two tasks) also fails a trainer that changes nothing.
"""

from __future__ import annotations

import pytest

from grpo_helpers.config import load_config
from grpo_helpers.countdown.data import train_test_split
from grpo_helpers.countdown.game import generate_tiers
from grpo_helpers.sft import run_cold_start
from grpo_helpers.trainer import GRPOTrainer

pytestmark = pytest.mark.slow

TIER = "2x10"
SFT_STEPS = 12  # a deliberately short cold start: it solves some but not all of the tier, leaving RL room
MIN_GAIN = 0.04  # held-out greedy accuracy, GRPO minus cold start (two of 48 tasks)


def learning_run(output_dir) -> tuple[float, float, dict, GRPOTrainer]:
    """(cold-start accuracy, accuracy after GRPO, the evaluation after GRPO, the trainer) on TIER's held-out tasks."""
    rows = generate_tiers(3000, tiers=[TIER], seed=0)
    train, test = train_test_split(rows, test_size=48, seed=0)
    config = load_config("cpu", tiers=[TIER], sft_steps=SFT_STEPS, sft_batch_size=8, num_prompts=2, group_size=4,
                         max_new_tokens=48, max_steps=8, eval_every=0, save_every=0, eval_tasks=48, lr=5e-5,
                         dynamic_sampling=2, seed=0, output_dir=str(output_dir))
    adapter = run_cold_start(config, train_dataset=train)
    trainer = GRPOTrainer(config.replace(init_adapter=str(adapter)), train_dataset=train, eval_dataset=test)
    before = trainer.evaluate()["eval/accuracy"]
    trainer.train()
    final = trainer.evaluate()
    return before, final["eval/accuracy"], final, trainer


@pytest.mark.timeout(30 * 60)  # ~270 s on an idle 2-core machine
def test_grpo_improves_held_out_accuracy_of_a_cold_start(tmp_path):
    before, after, final, trainer = learning_run(tmp_path)
    assert 0 < before < 1, f"the cold start should solve some but not all {TIER} tasks, got accuracy {before}"
    assert after >= before + MIN_GAIN, (
        f"GRPO did not improve on the cold start: held-out accuracy {before:.3f} -> {after:.3f} "
        f"(rewards per step: {[round(m['reward'], 2) for m in trainer.history]})")
    # still answering the task, not a fixed string: held-out answers built from the task's numbers (48 greedy
    # answers; one training step's 8 samples are too few to judge)
    assert final["eval/uses_numbers"] > 0.5, final
