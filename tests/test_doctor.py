"""The GRPO doctor: each rule fires on a synthetic history that shows its problem and stays silent on a healthy one."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from grpo_helpers.doctor import Doctor, DoctorReport, diagnose, diagnose_run, report


def healthy(steps: int = 12, **changes) -> list[dict]:
    """A run that learns: rewards with spread, finished completions, steady entropy and speed, accuracy rising."""
    rows = []
    for i in range(1, steps + 1):
        row = {"step": i, "reward": 0.3 + 0.02 * i, "frac_reward_zero_std": 0.3, "completions/clipped_ratio": 0.05,
               "completions/mean_length": 90.0, "entropy": 0.8, "kl": 0.01, "clip_ratio/region_mean": 0.02,
               "loss": 0.05, "grad_norm": 0.4, "tokens_per_sec": 120.0, "hack/accuracy": 0.2 + 0.02 * i,
               "hack/uses_numbers": 0.95, "hack/identical_answers": 0.0, "hack/copies_example": 0.0}
        for key, value in changes.items():
            row[key] = value(i) if callable(value) else value
        rows.append(row)
    return rows


def rules(history, **kwargs) -> set[str]:
    return {finding.rule for finding in diagnose(history, **kwargs)}


def test_a_healthy_run_gets_a_clean_bill():
    assert rules(healthy()) == set()
    assert "nothing looks wrong" in report([])


@pytest.mark.parametrize("rule,changes", [
    ("no_signal", {"frac_reward_zero_std": 1.0}),
    ("truncated", {"completions/clipped_ratio": 0.8}),
    ("entropy_collapse", {"entropy": lambda i: 0.8 if i <= 5 else 0.05}),
    ("unstable_update", {"kl": 3.0}),
    ("unstable_update", {"clip_ratio/region_mean": 0.4}),
    ("reward_hacking", {"hack/accuracy": 0.1}),  # reward rises (healthy's 0.3 -> 0.54), accuracy flat
    ("loss_near_zero", {"loss": 0.0004}),
    ("throughput_collapse", {"tokens_per_sec": lambda i: 120.0 if i <= 6 else 40.0}),
    ("exploding_gradients", {"grad_norm": lambda i: 0.4 if i <= 6 else 12.0}),  # 30x, above the floor of 10
    ("exploding_gradients", {"grad_norm": 2000.0}),  # flat, but no healthy run has such norms
    ("accuracy_declined", {"hack/accuracy": lambda i: 0.4 if i <= 6 else 0.12}),  # issue 30's run: ~0.4, then 0.12
])
def test_each_rule_fires_on_its_problem(rule, changes):
    findings = diagnose(healthy(**changes))
    assert rule in {f.rule for f in findings}, findings
    finding = next(f for f in findings if f.rule == rule)
    assert finding.evidence and finding.advice and finding.severity in ("problem", "note")


@pytest.mark.parametrize("changes", [
    {"frac_reward_zero_std": lambda i: 1.0 if i < 10 else 0.2},  # flat groups early only: recovered
    {"completions/clipped_ratio": 0.3},
    {"entropy": lambda i: 0.8 - 0.02 * i},  # a slow, normal decline
    {"kl": 0.3, "clip_ratio/region_mean": 0.1},
    {"reward": 0.4},  # reward flat: nothing to explain, whatever accuracy does
    {"loss": 0.0004, "grad_norm": 0.0},  # zero loss and zero gradient is no_signal's business, not this note's
    {"tokens_per_sec": lambda i: 120.0 - 2 * i},
    {"entropy": None, "kl": None},  # not logged (beta = 0, no entropy): the rules that need them stay silent
    {"grad_norm": lambda i: 0.01 if i <= 6 else 0.5},  # from almost no signal to ordinary sizes: 50x, no blow-up
    {"grad_norm": lambda i: 5000.0 if i in (3, 10) else 0.4},  # one spiky step at each end: the medians ignore it
    {"grad_norm": None},  # not logged
    # (reward flat in these three, so that the reward-hacking rule has nothing to say about the accuracy)
    {"reward": 0.4, "hack/accuracy": lambda i: 0.3 + (0.12 if i % 2 else -0.12)},  # one step's noise: flat means
    {"reward": 0.4, "hack/accuracy": lambda i: 0.4 if i <= 6 else 0.32},  # a small fall (0.08) is within noise
    {"reward": 0.4, "hack/accuracy": lambda i: 0.1 if i <= 6 else 0.04},  # from a best of 0.1: little to lose
])
def test_rules_stay_silent_where_nothing_is_wrong(changes):
    assert rules(healthy(**changes)) == set()


# The lr = 1.0 run of issue 32, 6 steps: grad_norm reached 122,542 and entropy fell to 0 ("strugg strugg ...")
BLOW_UP = {"grad_norm": lambda i: [0.9, 40.0, 900.0, 8_000.0, 60_000.0, 122_542.0][i - 1],
           "entropy": lambda i: [0.9, 0.6, 0.2, 0.02, 0.0, 0.0][i - 1], "completions/clipped_ratio": 1.0}


def test_a_six_step_blow_up_is_named_with_its_numbers():
    findings = {f.rule: f for f in diagnose(healthy(steps=6, **BLOW_UP))}
    assert {"exploding_gradients", "entropy_collapse", "truncated"} <= set(findings)
    assert findings["entropy_collapse"].evidence == "entropy 0.567 (first 3 steps) -> 0.007 (last 3)"
    exploding = findings["exploding_gradients"]
    assert exploding.evidence == "median grad_norm 40 (first 3 steps) -> 60,000 (last 3), 122,542 at step 6"
    assert "lower lr" in exploding.advice
    calm = {"grad_norm": 0.9, "entropy": 0.9, "completions/clipped_ratio": 0.05}  # the same 6 steps, healthy
    assert rules(healthy(steps=6, **calm)) == set()


def test_the_decline_is_named_with_where_the_best_was():
    finding = next(f for f in diagnose(healthy(steps=16, **{"hack/accuracy": lambda i: [0.2, 0.3, 0.4, 0.45, 0.5, 0.45,
                                                                                         0.4, 0.3, 0.2, 0.15, 0.1,
                                                                                         0.1, 0.1, 0.1, 0.1, 0.1][i - 1]}))
                   if f.rule == "accuracy_declined")
    assert finding.evidence == "training accuracy (mean of 5 steps) 0.44 at steps 3-7 -> 0.10 over the last 5"


@pytest.mark.parametrize("steps", [0, 1, 2, 4])
def test_a_history_shorter_than_the_window_is_too_short_to_judge(steps):
    """A 2-step run with zero reward and every group flat got "nothing looks wrong"; it is too short to judge."""
    flat = healthy(steps=steps, reward=0.0, frac_reward_zero_std=1.0, **{"completions/clipped_ratio": 0.9})
    findings = diagnose(flat)
    assert {f.rule for f in findings} == {"too_short"}
    text = report(findings)
    assert "too short to judge" in text.lower() and f"{steps} step(s) logged; most rules need 5" in text
    assert "nothing looks wrong" not in text
    assert rules(healthy(steps=5)) == set()  # from the window on, a healthy run gets its clean bill again


def test_the_doctor_callback_does_not_announce_that_a_run_has_only_begun(capsys):
    doctor = Doctor()
    trainer = SimpleNamespace(history=[], last_completions=[], accelerator=SimpleNamespace(is_main_process=True))
    for metrics in healthy(steps=3):
        trainer.history.append(metrics)
        doctor.on_step_end(trainer, metrics)
    assert [f.rule for f in doctor.findings] == ["too_short"] and capsys.readouterr().out == ""


@pytest.mark.parametrize("is_main", [True, False])
def test_the_report_callback_sets_the_verdict_and_only_the_main_process_prints_it(capsys, is_main):
    trainer = SimpleNamespace(history=healthy(steps=3), last_completions=[], findings=[],
                              accelerator=SimpleNamespace(is_main_process=is_main))
    DoctorReport().on_train_end(trainer)
    assert [f.rule for f in trainer.findings] == ["too_short"]
    assert ("GRPO doctor:" in capsys.readouterr().out) == is_main


def test_reward_hacking_quotes_the_top_scoring_completions(tmp_path):
    history = healthy(**{"hack/accuracy": 0.1})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in history))
    completions = [{"step": 12, "reward": r, "completion": f"<answer>(1 + 2) / 3</answer> #{r}"} for r in (0.1, 0.9)]
    completions.append({"step": 11, "reward": 5.0, "completion": "an older step"})
    (tmp_path / "completions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in completions))
    finding = next(f for f in diagnose_run(tmp_path) if f.rule == "reward_hacking")
    assert "#0.9" in finding.evidence and "older step" not in finding.evidence
    assert finding.evidence.index("#0.9") < finding.evidence.index("#0.1")
    assert "GRPO doctor:" in report(diagnose_run(tmp_path))


def test_a_folder_without_metrics_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no logged steps"):
        diagnose_run(tmp_path)
    with pytest.raises(ValueError, match="window=0"):
        diagnose(healthy(), window=0)


def evaluations(accuracies: list[float], *, tasks: int = 64, every: int = 8) -> list[dict]:
    """eval.jsonl rows: held-out accuracy on the same `tasks` tasks at steps 0, every, 2 * every, ..."""
    return [{"step": i * every, "eval/accuracy": a, "eval/num_tasks": tasks} for i, a in enumerate(accuracies)]


def test_a_held_out_fall_beyond_noise_is_named_with_where_the_best_was():
    findings = {f.rule: f for f in diagnose(healthy(), evaluations=evaluations([0.2, 0.35, 0.3, 0.12]))}
    finding = findings["held_out_declined"]
    assert finding.evidence == ("held-out accuracy 0.35 at step 8 -> 0.12 at step 24 (64 tasks; two standard "
                                "errors of the difference: 0.14)")
    assert "step 8" in finding.advice and finding.severity == "problem"


@pytest.mark.parametrize("accuracies,tasks", [
    ([0.2, 0.35, 0.3, 0.22], 64),  # a fall of 0.13 on 64 tasks: inside two standard errors (0.16)
    ([0.2, 0.3, 0.35], 64),  # still rising
    ([0.35], 64),  # one evaluation: nothing to fall from
    ([0.02, 0.05, 0.01], 2000),  # beyond the noise on many tasks, but a fall of 0.04 is too small to name
])
def test_held_out_noise_and_a_rising_run_are_not_a_decline(accuracies, tasks):
    assert "held_out_declined" not in rules(healthy(), evaluations=evaluations(accuracies, tasks=tasks))


def test_the_doctor_reads_a_folders_evaluations_and_hears_each_one(tmp_path, capsys):
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in healthy()))
    assert "held_out_declined" not in {f.rule for f in diagnose_run(tmp_path)}  # no eval.jsonl: silent
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps(row) + "\n" for row in evaluations([0.4, 0.1])))
    assert "held_out_declined" in {f.rule for f in diagnose_run(tmp_path)}
    doctor = Doctor()
    trainer = SimpleNamespace(history=healthy(), last_completions=[], eval_history=evaluations([0.4]),
                              accelerator=SimpleNamespace(is_main_process=True))
    doctor.on_eval(trainer, trainer.eval_history[-1])
    assert "held_out_declined" not in {f.rule for f in doctor.findings}
    trainer.eval_history += evaluations([0.4, 0.1])[1:]
    doctor.on_eval(trainer, trainer.eval_history[-1])
    assert "held_out_declined" in {f.rule for f in doctor.findings}
    assert "GRPO doctor at step 8: [problem] Held-out accuracy fell" in capsys.readouterr().out


@pytest.mark.parametrize("held_out,expected", [
    ([0.16, 0.30, 0.39], {"training_accuracy_noise"}),  # issue 30's CPU run: held-out rose while training fell
    ([0.16, 0.40, 0.10], {"accuracy_declined", "held_out_declined"}),  # both fell: a real decline
    ([0.16], {"accuracy_declined"}),  # no evaluation after the training peak: nothing contradicts it
])
def test_a_training_fall_that_held_out_accuracy_contradicts_is_a_note(held_out, expected):
    history = healthy(reward=0.4, **{"hack/accuracy": lambda i: 0.4 if i <= 6 else 0.12})
    found = {f.rule: f for f in diagnose(history, evaluations=evaluations(held_out, every=5))}
    assert set(found) == expected
    if "training_accuracy_noise" in found:
        assert found["training_accuracy_noise"].severity == "note"
        assert found["training_accuracy_noise"].evidence.endswith(
            "held-out accuracy 0.16 (step 0), 0.30 (step 5), 0.39 (step 10)")
