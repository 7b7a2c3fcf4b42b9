"""The training loop on a tiny random Llama: what changes, what is logged, and that no work is ever lost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from grpo_helpers.callbacks import Callback
from grpo_helpers.config import ConfigError, load_config
from grpo_helpers.countdown.game import generate_countdown
from grpo_helpers.doctor import DoctorReport
from grpo_helpers.logprobs import completion_logprobs
from grpo_helpers.monitor import HackWarning
from grpo_helpers.trainer import GRPOTrainer, list_checkpoints
from tiny import tiny_llama, tiny_lora

TASKS = generate_countdown(40, seed=1)
TIMING_KEYS = ("time/", "tokens_per_sec", "gen_tokens_per_sec")
DOCUMENTED_KEYS = [
    "step", "reward", "reward_std", "frac_reward_zero_std", "kl", "loss", "clip_ratio/low_mean",
    "clip_ratio/high_mean", "clip_ratio/region_mean", "completions/mean_length", "completions/clipped_ratio",
    "grad_norm", "learning_rate", "time/generation", "time/reference", "time/train", "time/step", "tokens_per_sec",
    "entropy",
]


def small_config(output_dir, reward="length", **overrides):
    values = dict(num_tasks=40, test_size=8, eval_tasks=4, max_steps=2, num_prompts=2, group_size=3,
                  max_new_tokens=8, beta=0.04, lr=1e-2, save_every=1, eval_every=0, temperature=1.0,
                  reward_weights={reward: 1.0, "format": 1.0}, output_dir=str(output_dir))
    values.update(overrides)
    return load_config("cpu", **values)


def make_trainer(tokenizer, output_dir, **overrides):
    return GRPOTrainer(small_config(output_dir, **overrides), train_dataset=TASKS[:32], eval_dataset=TASKS[32:],
                       model=tiny_lora(tokenizer), tokenizer=tokenizer)


def comparable(metrics):
    return {k: v for k, v in metrics.items() if not k.startswith(TIMING_KEYS)}


def test_training_changes_lora_weights_but_not_base_weights(tokenizer, length_reward, tmp_path):
    trainer = make_trainer(tokenizer, tmp_path)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    history = trainer.train()
    assert any(h["frac_reward_zero_std"] < 1.0 for h in history), "no group had reward variance: nothing to learn"
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed), sorted(changed)[:5]
    assert any("lora_B" in n for n in changed)


def test_reference_logprobs_are_the_base_models(tokenizer, length_reward, tmp_path):
    trainer = make_trainer(tokenizer, tmp_path)
    with torch.no_grad():  # make the adapter matter, so "adapter off" is a real claim
        for name, param in trainer.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    batch, _ = trainer.make_batch()
    base = tiny_llama(tokenizer).eval().to(batch.input_ids.device)  # same seed: the weights under the adapter
    width = batch.rollout.completion_ids.shape[1]
    with torch.no_grad():
        expected = completion_logprobs(base, batch.input_ids, batch.attention_mask, width)
        policy = completion_logprobs(trainer.model.eval(), batch.input_ids, batch.attention_mask, width)
    assert torch.allclose(batch.ref_logps, expected, atol=1e-5)
    assert not torch.allclose(policy, expected, atol=1e-3), "the adapter should change the policy"


def test_metrics_file_has_every_documented_key(tokenizer, length_reward, tmp_path, capsys):
    trainer = make_trainer(tokenizer, tmp_path, eval_every=1)
    trainer.train()
    assert "GRPO doctor:" in capsys.readouterr().out  # train() ends with the doctor's verdict
    assert isinstance(trainer.findings, list) and len(trainer.last_completions) == 2 * 3
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        missing = [k for k in DOCUMENTED_KEYS + ["rewards/length/mean", "rewards/format/mean"] if k not in row]
        assert not missing, missing
    completions = [json.loads(line) for line in (tmp_path / "completions.jsonl").read_text().splitlines()]
    assert len(completions) == 2 * 2 * 3 and {"completion", "reward", "rewards/length", "advantage"} <= set(completions[0])
    evals = [json.loads(line) for line in (tmp_path / "eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [0, 1, 2] and all(0 <= e["eval/accuracy"] <= 1 for e in evals)


class Ends(Callback):
    """Counts train() ends and keeps the verdict the default callbacks left for the ones after them."""

    def __init__(self):
        self.calls, self.findings = 0, None

    def on_train_end(self, trainer):
        self.calls += 1
        self.findings = list(trainer.findings)


def test_a_callbacks_train_end_runs_once_after_the_doctors_verdict(tokenizer, length_reward, tmp_path, capsys):
    ends = Ends()
    trainer = GRPOTrainer(small_config(tmp_path), train_dataset=TASKS[:32], eval_dataset=TASKS[32:],
                          model=tiny_lora(tokenizer), tokenizer=tokenizer, callbacks=[ends])
    assert [type(cb) for cb in trainer.callbacks] == [HackWarning, DoctorReport, Ends]
    trainer.train()
    assert ends.calls == 1 and ends.findings == trainer.findings != []  # two steps: at least "too short to judge"
    assert "GRPO doctor:" in capsys.readouterr().out


def test_the_default_callbacks_can_be_removed(tokenizer, length_reward, tmp_path, capsys):
    trainer = make_trainer(tokenizer, tmp_path)
    trainer.callbacks = [cb for cb in trainer.callbacks if not isinstance(cb, DoctorReport)]
    trainer.train()
    assert trainer.findings == [] and "GRPO doctor" not in capsys.readouterr().out


def test_checkpoints_keep_the_last_k(tokenizer, length_reward, tmp_path):
    trainer = make_trainer(tokenizer, tmp_path, max_steps=4, keep_last=2)
    trainer.train()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000003", "step-000004"]
    saved = list_checkpoints(tmp_path)[-1]
    assert {"model", "trainer_state.pt", "config.yaml"} <= {p.name for p in saved.iterdir()}
    state = torch.load(saved / "trainer_state.pt", weights_only=False)
    assert state["step"] == 4 and "sampler" in state and state["strategy"] == {"name": "one process", "world_size": 1}
    assert {"python", "numpy", "torch"} <= set(state["ranks"][0]["rng"])  # each rank's own random streams


def test_a_token_budget_stops_the_run_after_the_step_that_spends_it(tokenizer, length_reward, tmp_path):
    from grpo_helpers.objectives import TokenBudget

    one_step = 2 * 3 * 8  # prompts x G x max_new_tokens: no step generates more
    budget = TokenBudget(one_step + 1)  # more than one step can spend
    trainer = GRPOTrainer(small_config(tmp_path, max_steps=8, save_every=0), train_dataset=TASKS[:32],
                          eval_dataset=TASKS[32:], model=tiny_lora(tokenizer), tokenizer=tokenizer, callbacks=[budget])
    history = trainer.train()
    spent = [row["generated_tokens"] for row in history]
    assert 2 <= len(history) < 8 and sum(spent[:-1]) < one_step + 1 <= sum(spent) == budget.spent
    assert [p.name for p in list_checkpoints(tmp_path)] == [f"step-{len(history):06d}"]  # the stopped run is saved
    with pytest.raises(Exception, match=r"token budget=0 is not allowed"):
        TokenBudget(0)


RUN_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    from grpo_helpers.countdown import rewards
    from grpo_helpers.config import load_config
    from grpo_helpers.countdown.game import generate_countdown
    from grpo_helpers.models import load_tokenizer
    from grpo_helpers.trainer import Callback, GRPOTrainer
    from tiny import length_reward, tiny_lora

    rewards.REWARD_FUNCTIONS["length"] = length_reward
    kill_at = int(sys.argv[2])

    class KillAfterCheckpoint(Callback):
        def on_checkpoint(self, trainer, path):
            if trainer.step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no flush: a real crash

    tokenizer = load_tokenizer()
    tasks = generate_countdown(40, seed=1)
    config = load_config("cpu", num_tasks=40, test_size=8, eval_tasks=4, max_steps=4, num_prompts=2, group_size=3,
                         max_new_tokens=8, beta=0.04, lr=1e-2, save_every=2, eval_every=2, deterministic=True,
                         reward_weights={{"length": 1.0, "format": 1.0}}, output_dir=sys.argv[1],
                         resume=sys.argv[3] == "resume")
    GRPOTrainer(config, train_dataset=tasks[:32], eval_dataset=tasks[32:], model=tiny_lora(tokenizer),
                tokenizer=tokenizer, callbacks=[KillAfterCheckpoint()]).train()
""")


def run_script(tmp_path, output_dir, kill_at, mode):
    script = tmp_path / "run.py"
    script.write_text(RUN_SCRIPT.format(tests=str(Path(__file__).parent)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(script), str(output_dir), str(kill_at), mode], env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_resume_after_sigkill_reproduces_the_uninterrupted_run(tmp_path):
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    done = run_script(tmp_path, straight, kill_at=-1, mode="fresh")
    assert done.returncode == 0, done.stderr[-3000:]
    killed = run_script(tmp_path, crashed, kill_at=2, mode="fresh")
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert [p.name for p in list_checkpoints(crashed)] == ["step-000002"]
    resumed = run_script(tmp_path, crashed, kill_at=-1, mode="resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    read = lambda d, name: [comparable(json.loads(line)) for line in (d / name).read_text().splitlines()]
    assert read(crashed, "metrics.jsonl") == read(straight, "metrics.jsonl")
    assert read(crashed, "eval.jsonl") == read(straight, "eval.jsonl")
    assert read(crashed, "completions.jsonl") == read(straight, "completions.jsonl")


def test_a_crash_during_checkpoint_write_keeps_the_previous_one(tokenizer, length_reward, tmp_path, monkeypatch):
    trainer = make_trainer(tokenizer, tmp_path, max_steps=3)
    trainer.train_step()
    trainer.step = 1
    first = trainer.save_checkpoint()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed mid-write")

    trainer.train_step()
    trainer.step = 2
    with monkeypatch.context() as patched, pytest.raises(KeyboardInterrupt):
        patched.setattr(torch, "save", crash)
        trainer.save_checkpoint()
    assert list_checkpoints(tmp_path) == [first]  # the half-written folder is not mistaken for a checkpoint
    fresh = make_trainer(tokenizer, tmp_path, resume=True)
    assert fresh.step == 1


def test_nan_loss_stops_with_the_step_and_keeps_the_last_checkpoint(tokenizer, length_reward, tmp_path, monkeypatch):
    import grpo_helpers.trainer as trainer_module

    trainer = make_trainer(tokenizer, tmp_path, max_steps=3)
    real_loss = trainer_module.grpo_loss

    def nan_after_first_step(*args, **kwargs):
        loss, stats = real_loss(*args, **kwargs)
        return (loss * float("nan") if trainer.step >= 1 else loss), stats

    monkeypatch.setattr(trainer_module, "grpo_loss", nan_after_first_step)
    with pytest.raises(FloatingPointError, match="at step 2") as error:
        trainer.train()
    assert "step-000001" in str(error.value)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000001"]


@pytest.mark.parametrize("field, value", [("group_size", 1), ("loss_type", "ppo"), ("num_prompts", 0),
                                          ("eval_tasks", 10_000)])
def test_bad_configs_fail_when_the_config_is_built(field, value):
    """The trainer takes a built config, so these errors come before any model or data is loaded."""
    with pytest.raises(ConfigError, match=field):
        load_config("cpu", **{field: value})


def _gradients_of_one_update(trainer, batch):
    """The gradients the optimizer stepped with (taken just before they are cleared), and the logged stats."""
    captured, clear = {}, trainer.optimizer.zero_grad

    def snapshot(*args, **kwargs):
        captured.update({n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None})
        clear(*args, **kwargs)

    trainer.optimizer.zero_grad = snapshot
    return captured, trainer.optimize([batch])


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo", "cispo"])
def test_memory_lean_passes_give_the_plain_gradient(tokenizer, length_reward, tmp_path, loss_type):
    """The memory-lean backward (the batch cut into prompt groups and completions) saves memory only: the plain
    path's gradient and logged loss, for every loss; so does its one-backward-per-piece path (taken under HF
    gradient checkpointing or DeepSpeed)."""
    settings = dict(num_prompts=3, beta=0.04, loss_type=loss_type, max_grad_norm=0.0)
    plain = make_trainer(tokenizer, tmp_path / "plain", memory_lean=False, **settings)
    whole = make_trainer(tokenizer, tmp_path / "whole", prompts_per_pass=3, completions_per_pass=100, **settings)
    split = make_trainer(tokenizer, tmp_path / "split", prompts_per_pass=1, completions_per_pass=1, **settings)
    pairs = make_trainer(tokenizer, tmp_path / "pairs", prompts_per_pass=2, completions_per_pass=3, **settings)
    one_backward = make_trainer(tokenizer, tmp_path / "one", prompts_per_pass=2, **settings)
    one_backward.model.gradient_checkpointing_enable()
    assert all(t.config.train.memory_lean for t in (whole, split, pairs, one_backward))
    for trainer in (plain, whole, split, pairs, one_backward):  # the same non-zero adapter: policy differs from reference
        torch.manual_seed(5)
        with torch.no_grad():
            for name, param in trainer.model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.3)
    batch, _ = plain.make_batch()
    for row in range(batch.rollout.completion_mask.shape[0]):  # as if row i stopped early: lengths differ
        batch.rollout.completion_mask[row, 2 + row % 5:] = 0
    expected, expected_stats = _gradients_of_one_update(plain, batch)
    assert any(g.abs().sum() > 0 for g in expected.values())
    assert expected_stats["kl"] > 0 and expected_stats["entropy"] > 0
    for trainer in (whole, split, pairs, one_backward):
        got, got_stats = _gradients_of_one_update(trainer, batch)
        assert expected.keys() == got.keys() and expected
        for name in expected:
            assert torch.allclose(got[name], expected[name], atol=1e-6, rtol=1e-4), name
        assert got_stats["loss"] == pytest.approx(expected_stats["loss"], abs=1e-6)
        assert got_stats["kl"] == pytest.approx(expected_stats["kl"], abs=1e-6)
        assert got_stats["entropy"] == pytest.approx(expected_stats["entropy"], abs=1e-5)  # every path logs it alike


def test_dapo_normaliser_divides_the_window_exactly_over_processes(tokenizer, length_reward, tmp_path):
    """DDP averages gradients over P processes, so each rank divides its token sum by W / P: exactly (TRL), not
    by W // P, which scales the loss by W / (P * (W // P)) when P does not divide W (3.85 % at W = 27, P = 2)."""
    from grpo_helpers.loss import grpo_loss

    trainer = make_trainer(tokenizer, tmp_path, beta=0.0, loss_type="dapo")
    batch, _ = trainer.make_batch()
    logps = torch.randn(batch.rollout.completion_ids.shape, dtype=torch.float32)
    trainer.world_size = 2  # what the normaliser sees on each of two ranks
    got, _ = trainer._loss(logps, batch, window_tokens=27)
    expected, _ = grpo_loss(logps, old_logps=None, ref_logps=None, advantages=batch.advantages,
                            completion_mask=batch.rollout.completion_mask, loss_type="dapo", beta=0.0,
                            max_completion_length=trainer.config.rollout.max_new_tokens, num_items_in_window=13.5)
    assert torch.equal(got, expected)


def test_the_run_records_the_split_it_actually_used(tokenizer, length_reward, tmp_path):
    """The config says num_tasks=40 here, but 32 + 8 tasks were passed in: data_split.json says what was used."""
    from grpo_helpers.task import split_digest

    trainer = make_trainer(tokenizer, tmp_path, max_steps=1, num_tasks=2000, test_size=100)
    trainer.train()
    expected = split_digest(TASKS[:32], TASKS[32:])
    assert expected["train_tasks"] == 32 and expected["test_tasks"] == 8
    for folder in (tmp_path, tmp_path / "checkpoints" / "step-000001"):
        assert json.loads((folder / "data_split.json").read_text()) == expected
    assert split_digest(TASKS[:31], TASKS[31:])["sha256"] != expected["sha256"]


@pytest.mark.parametrize("memory_lean", [False, True])
@pytest.mark.parametrize("accum,iterations", [(2, 1), (1, 2), (2, 2)])
def test_accumulation_and_several_passes_match_a_plain_reference(tokenizer, length_reward, tmp_path, accum,
                                                                 iterations, memory_lean):
    """grad_accum_steps batches summed into one optimizer step, and num_iterations steps on one rollout window:
    the trainer's gradients (plain, or through its memory-lean small passes) at every optimizer step equal a
    whole-batch backward of the same loss at the same weights, and it takes exactly num_iterations steps."""
    from grpo_helpers.loss import grpo_loss

    trainer = make_trainer(tokenizer, tmp_path, loss_type="grpo", grad_accum_steps=accum, num_iterations=iterations,
                           max_grad_norm=0.0, beta=0.04, memory_lean=memory_lean)
    batches = [trainer.make_batch()[0] for _ in range(accum)]
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    seen = []  # per optimizer step: (weights before it, gradients it applied)
    real_step = trainer.optimizer.step

    def recording_step(*args, **kwargs):
        seen.append(([p.detach().clone() for p in params], [p.grad.detach().clone() for p in params]))
        return real_step(*args, **kwargs)

    trainer.optimizer.step = recording_step
    trainer.optimize(batches)
    assert len(seen) == iterations
    cfg = trainer.config
    for weights, grads in seen:
        with torch.no_grad():
            for p, value in zip(params, weights):
                p.copy_(value)
        trainer.model.zero_grad(set_to_none=True)
        trainer.model.train()
        for batch in batches:
            logps = completion_logprobs(trainer.model, batch.input_ids, batch.attention_mask,
                                        batch.rollout.completion_ids.shape[1], temperature=cfg.rollout.temperature)
            loss, _ = grpo_loss(logps, old_logps=batch.old_logps, ref_logps=batch.ref_logps,
                                advantages=batch.advantages, completion_mask=batch.rollout.completion_mask,
                                loss_type="grpo", beta=0.04, clip_eps_low=cfg.loss.clip_eps_low,
                                clip_eps_high=cfg.loss.clip_eps_high, max_completion_length=cfg.rollout.max_new_tokens)
            (loss / accum).backward()
        for p, got in zip(params, grads):
            expected = torch.zeros_like(p) if p.grad is None else p.grad
            assert torch.allclose(got, expected, rtol=1e-3, atol=1e-6), (got - expected).abs().max()
    assert any(g.abs().sum() > 0 for _, grads in seen for g in grads), "nothing to compare: all gradients zero"


def test_preflight_is_one_step_that_train_never_notices(tokenizer, length_reward, tmp_path):
    """The pre-flight check samples, scores and backpropagates a whole step, then puts back prompts, random numbers
    and gradients: a run trained after it is the run trained without it, metric for metric and weight for weight."""
    from grpo_helpers.preflight import preflight

    plain = make_trainer(tokenizer, tmp_path / "plain", dynamic_sampling=2)
    checked = make_trainer(tokenizer, tmp_path / "checked", dynamic_sampling=2)
    report = preflight(checked)
    assert checked.step == 0 and not checked.history
    assert all(p.grad is None for p in checked.model.parameters())
    assert len(report.lengths) == 2 * 3 and report.seconds_per_step > 0 and "entropy" in report.metrics
    assert [comparable(m) for m in plain.train()] == [comparable(m) for m in checked.train()]
    for (name, a), (_, b) in zip(plain.model.named_parameters(), checked.model.named_parameters()):
        assert torch.equal(a, b), name


def test_preflight_warns_of_completions_cut_at_max_new_tokens(tokenizer, length_reward, tmp_path):
    from grpo_helpers.preflight import preflight

    report = preflight(make_trainer(tokenizer, tmp_path, max_new_tokens=4))  # a random tiny model rarely stops in 4
    assert report.metrics["completions/clipped_ratio"] >= 0.5
    assert "truncated" in {f.rule for f in report.findings}
    text = str(report)
    assert "pre-flight: 6 completions from the policy as it starts (2 prompts x 3)" in text and "WARNING" in text and "max_new_tokens" in text
