"""The objectives matrix (grpo_helpers.objectives): each arm is the baseline plus its one switch, the summary pools
seeds correctly, and the figure draws every arm; bad arm names are one clear error."""

from __future__ import annotations

import matplotlib
import pytest

matplotlib.use("Agg")

from grpo_helpers.config import load_config  # noqa: E402
from grpo_helpers.errors import UsageError  # noqa: E402
from grpo_helpers.evaluation import wilson_interval  # noqa: E402
from grpo_helpers.objectives import ARMS, BASELINE, arm_config, plot_objectives, summarize  # noqa: E402


def flat(config) -> dict:
    return config.flat()


def test_every_arm_is_the_baseline_with_its_own_switch_only(tmp_path):
    baseline = flat(arm_config("dapo", seed=1, steps=3, output_dir=tmp_path))
    assert baseline["num_iterations"] == BASELINE["num_iterations"] == 2  # ratios differ from 1 on pass two
    assert baseline == flat(load_config("cpu", num_iterations=2, max_steps=3, seed=1, eval_every=0, save_every=0,
                                        keep_last=1, overwrite=True, output_dir=str(tmp_path)))
    for arm, switch in ARMS.items():
        config = flat(arm_config(arm, seed=1, steps=3, output_dir=tmp_path))
        changed = {key for key in config if config[key] != baseline[key]}
        assert changed == {key for key, value in switch.items() if baseline[key] != value}, arm
        assert config["max_steps"] == 3 and config["seed"] == 1


def test_an_unknown_arm_is_one_clear_error(tmp_path):
    with pytest.raises(UsageError, match="arm='gspo2' is not allowed: one of dapo, grpo"):
        arm_config("gspo2", seed=1, steps=1, output_dir=tmp_path)


def fake_run(arm: str, seed: int, solved: dict[str, int], reward: float) -> dict:
    return {"arm": arm, "seed": seed, "steps": 2 + seed, "reward": [0.1, 0.2, reward], "entropy": [0.5, 0.4, 0.3],
            "generated_tokens": 1000 * seed, "eval": {tier: {"solved": n, "tasks": 20} for tier, n in solved.items()}}


def test_summary_pools_seeds_per_arm_and_tier():
    runs = [fake_run("grpo", 2, {"3x10": 6, "3x20": 1}, 0.5), fake_run("dapo", 1, {"3x10": 4, "3x20": 2}, 0.3),
            fake_run("grpo", 1, {"3x10": 8, "3x20": 3}, 0.7)]
    rows = summarize(runs)
    assert [(r["arm"], r["tier"]) for r in rows] == [("dapo", "3x10"), ("dapo", "3x20"), ("grpo", "3x10"),
                                                     ("grpo", "3x20")]  # ARMS order, then tiers
    grpo = rows[2]
    assert grpo["seeds"] == [1, 2] and grpo["solved"] == 14 and grpo["answers"] == 40
    assert (grpo["low"], grpo["high"]) == wilson_interval(14, 40)
    assert grpo["per_seed"] == [0.4, 0.3] and grpo["final_reward"] == pytest.approx(0.6)
    assert grpo["generated_tokens"] == 1500 and grpo["steps"] == 3.5


def test_the_figure_has_a_bar_per_arm_and_tier_and_a_curve_per_run():
    runs = [fake_run(arm, seed, {"3x10": 5, "3x20": 2}, 0.4) for arm in ("dapo", "cispo") for seed in (1, 2)]
    fig = plot_objectives(runs, start={"3x10": {"solved": 3, "tasks": 20}, "3x20": {"solved": 1, "tasks": 20}})
    bars, curves = fig.axes
    assert len(bars.patches) == 2 * 2
    assert [t.get_text() for t in bars.get_xticklabels()] == ["dapo", "cispo"]
    assert len(curves.lines) == 4
    assert sum(1 for line in bars.lines if line.get_linestyle() == "--") == 2  # the starting adapter, per tier
