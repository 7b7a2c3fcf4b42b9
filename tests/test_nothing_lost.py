"""Fault injection: runs that would overwrite or mix each other, checkpoints cut short, reward functions that
misbehave, and bad configs, data and parameters. Each case fails loudly with a message that names what was wrong
(and nothing a user had is lost)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from grpo_helpers.countdown import rewards
from grpo_helpers.checkpoint import list_checkpoints
from grpo_helpers.config import ConfigError, load_config
from grpo_helpers.countdown.data import load_countdown
from grpo_helpers.countdown.game import count_solutions, generate_countdown, solve
from grpo_helpers.countdown.stats import dataset_stats
from grpo_helpers.inference import load_policy
from grpo_helpers.countdown.rewards import score_completions
from grpo_helpers.scoring import RewardError
from grpo_helpers.run_folder import LOCK_FILE, RunFolderError, RunLock, json_line
from grpo_helpers.run_notebooks import main as run_notebooks_main
from grpo_helpers.trainer import Callback, GRPOTrainer
from tiny import tiny_lora

TASKS = generate_countdown(40, seed=1)
ROOT = Path(__file__).resolve().parent.parent


def trainer_for(tokenizer, output_dir, **overrides) -> GRPOTrainer:
    values = dict(num_tasks=40, test_size=8, eval_tasks=4, max_steps=2, num_prompts=2, group_size=3,
                  max_new_tokens=8, beta=0.0, lr=1e-2, save_every=1, eval_every=0, temperature=1.0,
                  dynamic_sampling=0, curriculum="uniform", reward_weights={"length": 1.0, "format": 1.0},
                  output_dir=str(output_dir))
    values.update(overrides)
    return GRPOTrainer(load_config("cpu", **values), train_dataset=TASKS[:32], eval_dataset=TASKS[32:],
                       model=tiny_lora(tokenizer), tokenizer=tokenizer)


def logged_steps(folder: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (folder / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------------------------------------------
# One live run per folder


def test_a_second_trainer_on_a_live_folder_is_refused(tokenizer, length_reward, tmp_path):
    second = trainer_for(tokenizer, tmp_path, seed=7)
    refused = []

    class StartAnother(Callback):
        def on_step_end(self, trainer, metrics):
            if not refused:
                with pytest.raises(RunFolderError, match="in use by another run") as caught:
                    second.train()
                refused.append(str(caught.value))

    first = trainer_for(tokenizer, tmp_path)
    first.callbacks.append(StartAnother())
    first.train()
    assert refused and str(os.getpid()) in refused[0]
    assert logged_steps(tmp_path) == [1, 2]  # only the first run's steps: nothing mixed in
    assert not (tmp_path / LOCK_FILE).exists()  # released when the run ended


def test_a_lock_held_by_another_live_process_is_refused_and_a_dead_ones_is_taken_over(tokenizer, length_reward,
                                                                                     tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": holder.pid, "host": os.uname().nodename,
                                                      "started": "earlier"}))
        with pytest.raises(RunFolderError, match=f"pid {holder.pid}"):
            trainer_for(tokenizer, tmp_path).train()
        assert not (tmp_path / "metrics.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone (a crashed run): its lock does not block the folder
    trainer_for(tokenizer, tmp_path).train()
    assert logged_steps(tmp_path) == [1, 2] and not (tmp_path / LOCK_FILE).exists()


def test_a_failing_run_releases_its_lock(tmp_path):
    with pytest.raises(KeyError):
        with RunLock(tmp_path):
            assert (tmp_path / LOCK_FILE).is_file()
            raise KeyError("boom")
    assert not (tmp_path / LOCK_FILE).exists()


def test_a_fresh_run_into_a_used_folder_is_refused_unless_overwrite(tokenizer, length_reward, tmp_path):
    trainer_for(tokenizer, tmp_path, max_steps=3).train()
    before = (tmp_path / "metrics.jsonl").read_text()
    with pytest.raises(RunFolderError, match=r"already holds a run \(3 logged steps.*step-000003.*resume=True"):
        trainer_for(tokenizer, tmp_path).train()
    assert (tmp_path / "metrics.jsonl").read_text() == before  # the earlier run is untouched
    trainer_for(tokenizer, tmp_path, overwrite=True).train()
    assert logged_steps(tmp_path) == [1, 2]
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000001", "step-000002"]


def test_resume_and_a_second_train_call_are_not_fresh_runs(tokenizer, length_reward, tmp_path):
    trainer = trainer_for(tokenizer, tmp_path)
    trainer.train()
    trainer.config = trainer.config.replace(max_steps=3)
    trainer.train()  # the same trainer continues its own run
    assert logged_steps(tmp_path) == [1, 2, 3]
    trainer_for(tokenizer, tmp_path, max_steps=4, resume=True).train()
    assert logged_steps(tmp_path) == [1, 2, 3, 4]


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints cut short


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("victim", ["trainer_state.pt", "model/adapter_model.safetensors"])
def test_resume_skips_a_cut_off_checkpoint_and_says_why(tokenizer, length_reward, tmp_path, victim):
    trainer_for(tokenizer, tmp_path, max_steps=3).train()
    _truncate(tmp_path / "checkpoints" / "step-000003" / victim)
    with pytest.warns(UserWarning, match=f"skipping checkpoint .*step-000003: {victim} is .* bytes"):
        resumed = trainer_for(tokenizer, tmp_path, max_steps=3, resume=True)
    assert resumed.step == 2
    assert list_checkpoints(tmp_path)[-1].name == "step-000002"


def test_a_checkpoint_without_its_manifest_does_not_count(tokenizer, length_reward, tmp_path):
    trainer_for(tokenizer, tmp_path, max_steps=2).train()
    (tmp_path / "checkpoints" / "step-000002" / "manifest.json").unlink()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000001"]


def test_a_cut_off_adapter_names_its_path(tokenizer, tmp_path):
    model = tiny_lora(tokenizer)
    model.save_pretrained(tmp_path / "adapter")
    weights = tmp_path / "adapter" / "adapter_model.safetensors"
    _truncate(weights)
    from tiny import tiny_llama

    with pytest.raises(ValueError, match=f"{weights}.*truncated"):
        load_policy(tiny_llama(tokenizer), tmp_path / "adapter", tokenizer=tokenizer)


# ---------------------------------------------------------------------------------------------------------------
# User reward functions


def _bad(output):
    return lambda completions, **kwargs: output(len(completions))


@pytest.mark.parametrize("output,message", [
    (lambda n: [1.0] * (n - 1), "returned 2 scores for 3 completions"),
    (lambda n: [1.0] * (n + 1), "returned 4 scores for 3 completions"),
    (lambda n: ["1"] * n, r"returned '1' \(str\) for completion 0"),
    (lambda n: [None] * n, r"returned None \(NoneType\) for completion 0"),
    (lambda n: None, "returned NoneType None"),
    (lambda n: [1.0, float("inf"), 0.0], "returned inf for completion 1"),
    (lambda n: [1.0, float("nan"), 0.0], "returned nan for completion 1"),
    (lambda n: [True] * n, r"returned True \(bool\)"),
])
def test_every_bad_reward_output_is_named(monkeypatch, output, message):
    monkeypatch.setitem(rewards.REWARD_FUNCTIONS, "mine", _bad(output))
    with pytest.raises(RewardError, match=f"reward function 'mine' {message}.* at step 5"):
        score_completions(["a", "b", "c"], nums=[[1, 2]] * 3, target=[3] * 3, weights={"mine": 1.0}, step=5)


def test_numpy_and_torch_scores_are_accepted(monkeypatch):
    import numpy as np
    import torch

    monkeypatch.setitem(rewards.REWARD_FUNCTIONS, "np", lambda c, **k: np.ones(len(c)))
    monkeypatch.setitem(rewards.REWARD_FUNCTIONS, "pt", lambda c, **k: torch.zeros(len(c)))
    scores = score_completions(["a", "b"], nums=[[1, 2]] * 2, target=[3] * 2, weights={"np": 1.0, "pt": 2.0})
    assert scores.total == [1.0, 1.0] and set(scores.seconds) == {"np", "pt"}


def test_a_raising_reward_is_named_with_the_step_inside_training(tokenizer, monkeypatch, tmp_path):
    def broken(completions, **kwargs):
        raise KeyError("missing column")

    monkeypatch.setitem(rewards.REWARD_FUNCTIONS, "length", broken)
    with pytest.raises(RewardError, match=r"reward function 'length' raised KeyError: 'missing column' at step 1"):
        trainer_for(tokenizer, tmp_path).train()


def test_a_slow_reward_is_stopped_by_the_time_limit(monkeypatch):
    def slow(completions, **kwargs):
        time.sleep(30)
        return [0.0] * len(completions)

    monkeypatch.setitem(rewards.REWARD_FUNCTIONS, "slow", slow)
    start = time.perf_counter()
    with pytest.raises(RewardError, match=r"'slow' ran past reward_time_limit=0.5 s at step 2"):
        score_completions(["a"], nums=[[1, 2]], target=[3], weights={"slow": 1.0}, step=2, time_limit=0.5)
    assert time.perf_counter() - start < 5


def test_reward_time_is_logged_per_function_and_metrics_are_strict_json(tokenizer, length_reward, tmp_path):
    trainer_for(tokenizer, tmp_path, max_steps=1).train()
    row = json.loads((tmp_path / "metrics.jsonl").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert row["time/reward/length"] >= 0 and row["time/reward/format"] >= 0
    assert json_line({"a": float("inf"), "b": [float("nan"), 1.0]}) == '{"a": null, "b": [null, 1.0]}'


# ---------------------------------------------------------------------------------------------------------------
# Configs, data and parameters


@pytest.mark.parametrize("field,value", [("resume", "no"), ("eval_greedy", 0), ("use_lora", "yes"),
                                         ("cuda_graph", 1), ("overwrite", "true")])
def test_booleans_must_be_booleans(field, value):
    with pytest.raises(ConfigError, match=f"{field}={value!r} is not allowed: true or false"):
        load_config("cpu", **{field: value})


@pytest.mark.parametrize("text,message", [
    ("preset: cpu\nmax_steps: [1\n", r"bad\.yaml is not valid YAML"),
    ("", r"bad\.yaml is empty"),
    ("# only a comment\n", r"bad\.yaml is empty"),
    ("preset: cpu\ntrain: 5\n", r"section 'train' must be a mapping of its fields .* got 5"),
])
def test_bad_yaml_files_are_named(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(str(path))


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_float_in_one_row_names_that_row(tmp_path):
    rows = [{"nums": [1, 2, 3], "target": 6}, {"nums": [4, 5], "target": 9}, {"nums": [1, 2.5], "target": 3}]
    with pytest.raises(ValueError, match=r"row 2: field 'nums'=\[1, 2\.5\]"):
        load_countdown(str(_jsonl(tmp_path / "t.jsonl", rows)))
    assert load_countdown(str(_jsonl(tmp_path / "ok.jsonl", rows[:2])))[1] == {"nums": [4, 5], "target": 9,
                                                                               "solution": None}


def test_a_string_target_in_json_is_refused_and_csv_text_is_read_as_numbers(tmp_path):
    with pytest.raises(ValueError, match=r"row 1: field 'target'='6' is not allowed"):
        load_countdown(str(_jsonl(tmp_path / "t.jsonl", [{"nums": [1, 5], "target": 6},
                                                         {"nums": [1, 5], "target": "6"}])))
    csv = tmp_path / "t.csv"
    csv.write_text('nums,target\n"[1, 5]",6\n"[2, 3]",5\n')
    assert [(r["nums"], r["target"]) for r in load_countdown(str(csv))] == [([1, 5], 6), ([2, 3], 5)]
    csv.write_text('nums,target\n"[1, 5]",six\n')
    with pytest.raises(ValueError, match=r"row 0: field 'target'='six'"):
        load_countdown(str(csv))


@pytest.mark.parametrize("name,text", [("empty.jsonl", ""), ("blank.jsonl", "\n\n"), ("empty.csv", ""),
                                       ("header.csv", "nums,target\n"), ("empty.json", "[]")])
def test_an_empty_file_is_one_clear_line(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    with pytest.raises(ValueError, match=f"{name}' holds no rows"):
        load_countdown(str(tmp_path / name))


@pytest.mark.parametrize("name", ["data.txt", "./tasks", "missing/tasks.jsonl"])
def test_a_missing_local_file_is_not_looked_up_on_the_hub(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_countdown(name)
    assert time.perf_counter() - start < 2  # no network retries


def test_an_existing_file_of_an_unknown_type_is_named(tmp_path):
    (tmp_path / "tasks.txt").write_text("1 2 3\n")
    with pytest.raises(ValueError, match=r"tasks\.txt' has the type '\.txt': use \.jsonl/\.json/\.parquet/\.csv"):
        load_countdown(str(tmp_path / "tasks.txt"))


@pytest.mark.parametrize("call", [lambda nums: solve(nums, 24), lambda nums: count_solutions(nums, 24),
                                  lambda nums: dataset_stats([{"nums": nums, "target": 24}])])
def test_too_many_numbers_is_an_error_not_a_hang(call):
    start = time.perf_counter()
    with pytest.raises(ValueError, match="10000 numbers is too many to solve: the game has at most 6"):
        call(list(range(1, 10_001)))
    assert time.perf_counter() - start < 2


def test_the_runner_refuses_a_parameter_no_chapter_declares(tmp_path):
    smoke = ROOT / "params" / "smoke"
    with pytest.raises(SystemExit, match=r"unknown parameter 'group_sise' \(-p\): no chapter declares it; did you "
                                         r"mean 'group_size'\?"):
        run_notebooks_main(["--params", str(smoke), "-p", "group_sise", "4", "--only", "01"])
    typo = tmp_path / "typo.yaml"
    typo.write_text("seed: 7\nmax_step: 3\n")
    with pytest.raises(SystemExit, match=r"unknown parameter 'max_step' \(.*typo\.yaml\).*'max_steps'"):
        run_notebooks_main(["--params", str(typo), "--only", "01", "--out", str(tmp_path / "run")])
    assert not (tmp_path / "run").exists()  # refused before anything ran
