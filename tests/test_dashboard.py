"""Tests for grpo_helpers.dashboard.LiveDashboard: when it writes its figure file, and the doctor it carries."""

from __future__ import annotations

from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")

from grpo_helpers.dashboard import LiveDashboard  # noqa: E402


def row(step: int) -> dict:
    return {"step": step, "reward": 0.1 * step, "completions/mean_length": 50.0, "completions/clipped_ratio": 0.0,
            "frac_reward_zero_std": 0.5, "time/step": 1.0}


def fake_trainer(max_steps: int) -> SimpleNamespace:
    return SimpleNamespace(history=[], eval_history=[], last_completions=[],
                           accelerator=SimpleNamespace(is_main_process=True),
                           config=SimpleNamespace(train=SimpleNamespace(max_steps=max_steps)))


def test_the_figure_file_is_written_at_checkpoints_and_the_last_step_only(tmp_path, capsys):
    path = tmp_path / "figures" / "dashboard.png"
    dashboard, trainer = LiveDashboard(every=1, save_to=path), fake_trainer(max_steps=4)
    for step in (1, 2):
        trainer.history.append(row(step))
        dashboard.on_step_end(trainer, row(step))
    assert not path.exists(), "a redraw between checkpoints wrote the figure file"
    assert "step    2 | reward 0.200" in capsys.readouterr().out  # outside a kernel it prints one line a step
    dashboard.on_checkpoint(trainer, tmp_path / "checkpoint-2")
    saved = path.stat().st_mtime_ns
    trainer.history.append(row(3))
    dashboard.on_step_end(trainer, row(3))
    assert path.stat().st_mtime_ns == saved
    trainer.history.append(row(4))
    dashboard.on_step_end(trainer, row(4))
    assert path.stat().st_mtime_ns > saved


def test_an_evaluation_writes_the_figure_file(tmp_path):
    path = tmp_path / "dashboard.png"
    dashboard, trainer = LiveDashboard(save_to=path), fake_trainer(max_steps=10)
    trainer.history.append(row(1))
    trainer.eval_history.append({"step": 1, "eval/accuracy": 0.25, "eval/format_rate": 0.5, "eval/mean_length": 40.0})
    dashboard.on_eval(trainer, trainer.eval_history[-1])
    assert path.is_file() and path.stat().st_size > 0


def test_outside_a_kernel_the_doctor_says_each_new_finding_once(capsys):
    dashboard, trainer = LiveDashboard(), fake_trainer(max_steps=20)
    for step in range(1, 8):
        metrics = {**row(step), "reward": 0.3, "frac_reward_zero_std": 1.0}  # no group carries a signal
        trainer.history.append(metrics)
        dashboard.on_step_end(trainer, metrics)
        out = capsys.readouterr().out
        assert ("GRPO doctor at step" in out) == (step == 5), (step, out)  # judged from the 5th step, said once
        if step == 5:
            assert "frac_reward_zero_std = 1.00" in out and "dynamic_sampling" in out
    assert [finding.rule for finding in dashboard.doctor.findings] == ["no_signal"]
    assert LiveDashboard(doctor=False).doctor is None
