"""Fault injection on what a user types and what a crash leaves on disk: numbers written as people write them
(`1e-5`) in every entry point, a log line torn by a crash, and a checkpoint whose bytes changed at the same size.
Each case either goes on with a one-line note naming the file, or fails with a message naming the file and line."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path

import pytest

import grpo_helpers.run_notebooks as run_notebooks
from grpo_helpers.checkpoint import MANIFEST_FILE, checkpoint_path
from grpo_helpers.config import load_config
from grpo_helpers.countdown.game import generate_tiers
from grpo_helpers.run_folder import LogFileError, read_json_lines
from grpo_helpers.sft import ColdStart
from grpo_helpers.yaml_values import load_yaml
from test_nothing_lost import ROOT, trainer_for  # one small GRPO run, shared with the older fault tests
from tiny import tiny_lora


def logged_steps(path: Path) -> list[int]:
    """Each line's step; json.loads on every line, so a torn line left behind fails here."""
    return [json.loads(line)["step"] for line in path.read_text().splitlines()]


# ---------------------------------------------------------------------------------------------------------------
# Numbers as people type them


@pytest.mark.parametrize("text,value", [
    ("1e-5", 1e-5), ("5E-7", 5e-7), ("1.0e+3", 1000.0), ("1.0e3", 1000.0), ("-2e3", -2000.0), (".5e1", 5.0),
    ("1.0e-06", 1e-6), ("7", 7), ("0.5", 0.5), ("true", True),  # what PyYAML read right already is unchanged
    ("1e", "1e"), ("e5", "e5"), ("v1e5", "v1e5"), ("'1e-5'", "1e-5"), ("1e-5x", "1e-5x"),
])
def test_yaml_reads_scientific_notation_as_a_float_and_nothing_else_changes(text, value):
    read = load_yaml(text)
    assert read == value and type(read) is type(value)


def test_a_config_file_reads_numbers_as_typed(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("preset: cpu\nlr: 1e-5\nsft_lr: 5E-7\ntrain:\n  max_grad_norm: 1.0e+0\n")
    config = load_config(str(path))
    assert (config.train.lr, config.cold_start.sft_lr, config.train.max_grad_norm) == (1e-5, 5e-7, 1.0)


def _train_grpo():
    """launch/train_grpo.py as a module (it is a script under `accelerate launch`, not part of the package)."""
    spec = importlib.util.spec_from_file_location("train_grpo", ROOT / "launch" / "train_grpo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_grpo_set_reads_numbers_as_typed():
    train_grpo = _train_grpo()
    args = train_grpo.parse_args(["--set", "lr", "1e-6", "--set", "max_steps", "3",
                                  "--set", "reward_weights", "{format: 1.0}"])
    overrides = train_grpo.set_overrides(args.set)
    assert overrides == {"lr": 1e-6, "max_steps": 3, "reward_weights": {"format": 1.0}}
    assert load_config(args.config, **overrides).train.lr == 1e-6
    with pytest.raises(SystemExit, match=r"--set reward_weights '\{format: 1' is not valid YAML .*quote a string"):
        train_grpo.set_overrides([["reward_weights", "{format: 1"]])


def test_a_params_file_reads_numbers_as_typed(tmp_path):
    flat = tmp_path / "mine.yaml"
    flat.write_text("seed: 7\nlr: 5e-7\nown_lr: 1E-4\n")
    params = run_notebooks.load_params(flat)
    assert params["04"]["lr"] == 5e-7 and params["08"]["own_lr"] == 1e-4


class NotebooksWouldRun(Exception):
    """Raised in place of executing the notebooks: the test needs only what they would have received."""


def test_run_notebooks_p_reads_numbers_as_typed(monkeypatch, tmp_path):
    received = {}

    def capture(params, **kwargs):
        received.update(params)
        raise NotebooksWouldRun

    monkeypatch.setattr(run_notebooks, "run", capture)
    with pytest.raises(NotebooksWouldRun):
        run_notebooks.main(["--params", str(ROOT / "params" / "smoke"), "--only", "04", "-p", "lr", "5e-7",
                            "-p", "own_lr", "1e-4", "--out", str(tmp_path / "run")])
    assert received["04"]["lr"] == 5e-7 and received["08"]["own_lr"] == 1e-4
    with pytest.raises(SystemExit, match=r"-p lr '\[5e-7' is not valid YAML"):
        run_notebooks.main(["--params", str(ROOT / "params" / "smoke"), "-p", "lr", "[5e-7"])


# ---------------------------------------------------------------------------------------------------------------
# A log line torn by a crash


@pytest.mark.parametrize("name,torn", [
    ("completions.jsonl", b'{"step": 3, "completion": "hal'),
    ("metrics.jsonl", b'{"step": 3, "loss": "\xe2\x80'),  # cut inside a UTF-8 character
])
def test_resume_cuts_a_torn_last_log_line_says_so_and_goes_on(tokenizer, length_reward, tmp_path, name, torn):
    trainer_for(tokenizer, tmp_path, max_steps=3).train()
    shutil.rmtree(checkpoint_path(tmp_path, 3))  # the crash came after step 3 was logged, before its checkpoint
    log = tmp_path / name
    log.write_bytes(log.read_bytes() + torn)
    torn_line = len(log.read_bytes().splitlines())
    with pytest.warns(UserWarning, match=rf"{re.escape(str(log))}: cut line {torn_line}, torn by a crash "
                                         rf"mid-write, and [1-9]\d* row\(s\) logged past step 2"):
        resumed = trainer_for(tokenizer, tmp_path, max_steps=4, resume=True)
    assert resumed.step == 2
    resumed.train()
    assert logged_steps(tmp_path / "metrics.jsonl") == [1, 2, 3, 4]
    assert sorted(set(logged_steps(tmp_path / "completions.jsonl"))) == [1, 2, 3, 4]


def test_a_damaged_log_line_before_the_last_names_the_file_and_line(tokenizer, length_reward, tmp_path):
    trainer_for(tokenizer, tmp_path, max_steps=3).train()
    log = tmp_path / "metrics.jsonl"
    lines = log.read_text().splitlines()
    lines[1] = lines[1][:20]  # line 2 of 3 cut short, whole lines after it: not what a crash leaves
    damaged = "\n".join(lines) + "\n"
    log.write_text(damaged)
    with pytest.raises(LogFileError, match=rf"{re.escape(str(log))} line 2 of 3 is damaged \(.*\): .*fix or delete "
                                           rf"line 2, or start the run again with overwrite=True"):
        trainer_for(tokenizer, tmp_path, max_steps=4, resume=True)
    assert log.read_text() == damaged  # nothing was cut: the user decides


def test_a_live_log_with_a_half_written_last_line_reads_without_it(tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "rew')  # a dashboard reading while a line is written
    assert read_json_lines(log) == [{"step": 1}, {"step": 2}]
    assert log.read_text().endswith('"rew')  # reading changes nothing


class Interrupted(Exception):
    """A crash of the cold start after a step was logged."""


def test_the_cold_start_resumes_past_a_torn_metrics_line(tokenizer, tmp_path):
    config = load_config("cpu", sft_steps=4, sft_batch_size=2, sft_traces=40, sft_lr=1e-2, sft_save_every=2,
                         max_new_tokens=8, output_dir=str(tmp_path))
    tiers = generate_tiers(120, tiers=["2x20", "3x20"], seed=3)

    def crash(trainer: ColdStart, metrics: dict) -> None:
        if metrics["step"] == 3:  # after the step-2 checkpoint
            raise Interrupted

    crashed = ColdStart(config, train_dataset=tiers, model=tiny_lora(tokenizer), tokenizer=tokenizer,
                        callbacks=[crash])
    with pytest.raises(Interrupted):
        crashed.train()
    log = crashed.metrics_path
    log.write_bytes(log.read_bytes() + b'{"step": 4, "lo')
    with pytest.warns(UserWarning, match=rf"{re.escape(str(log))}: cut line 4, torn by a crash mid-write, and 1 "
                                         rf"row\(s\) logged past step 2"):
        resumed = ColdStart(config.replace(resume=True), train_dataset=tiers, model=tiny_lora(tokenizer),
                            tokenizer=tokenizer)
    resumed.train()
    assert [row["step"] for row in resumed.history] == [1, 2, 3, 4] == logged_steps(log)


# ---------------------------------------------------------------------------------------------------------------
# A checkpoint damaged at the same size


def _overwrite_inside(path: Path) -> None:
    """Bytes changed in the middle of the file, its size kept: a size check cannot see it."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(255 - b for b in data[middle:middle + 64])
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("victim", ["model/adapter_model.safetensors", "trainer_state.pt"])
def test_resume_skips_a_checkpoint_damaged_at_the_same_size(tokenizer, length_reward, tmp_path, victim):
    trainer_for(tokenizer, tmp_path, max_steps=3).train()
    manifest = json.loads((checkpoint_path(tmp_path, 3) / MANIFEST_FILE).read_text())
    assert set(manifest["sha256"]) == set(manifest["files"])
    damaged = checkpoint_path(tmp_path, 3) / victim
    size = damaged.stat().st_size
    _overwrite_inside(damaged)
    assert damaged.stat().st_size == size
    with pytest.warns(UserWarning, match=rf"skipping checkpoint .*step-000003: {victim} does not match the sha256 "
                                         rf"in {MANIFEST_FILE}"):
        resumed = trainer_for(tokenizer, tmp_path, max_steps=3, resume=True)
    assert resumed.step == 2  # the previous whole checkpoint
    resumed.train()
    assert logged_steps(tmp_path / "metrics.jsonl") == [1, 2, 3]


def test_a_manifest_without_checksums_still_loads(tokenizer, length_reward, tmp_path, recwarn):
    trainer_for(tokenizer, tmp_path, max_steps=3).train()
    for step in (2, 3):  # as written before checksums were kept: sizes only
        manifest_path = checkpoint_path(tmp_path, step) / MANIFEST_FILE
        manifest = json.loads(manifest_path.read_text())
        manifest_path.write_text(json.dumps({"files": manifest["files"]}))
    resumed = trainer_for(tokenizer, tmp_path, max_steps=3, resume=True)
    assert resumed.step == 3
    assert not [w for w in recwarn if "skipping checkpoint" in str(w.message)]
