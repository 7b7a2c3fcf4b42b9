"""What a user types wrong gets one line that names the value, the file and what to do (issue 32, item 7): no
traceback of every rank, no retries against a hub for a file that is simply not there, no silent acceptance."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from grpo_helpers.config import ConfigError, load_config
from grpo_helpers.countdown.data import load_countdown
from grpo_helpers.errors import MissingFileError
from grpo_helpers.run_notebooks import main as run_notebooks_main
from grpo_helpers.trainer import GRPOTrainer
from test_nothing_lost import trainer_for

ROOT = Path(__file__).resolve().parent.parent


def test_a_broken_params_file_is_one_line_naming_file_and_line(tmp_path):
    broken = tmp_path / "mine.yaml"
    broken.write_text("seed: 7\nmax_steps: [3\n")
    with pytest.raises(SystemExit, match=r"mine\.yaml line 3 is not valid YAML \(.*\): write one `name: value` per"):
        run_notebooks_main(["--params", str(broken)])


def test_a_folder_or_a_bare_missing_name_as_dataset_says_so_without_asking_the_hub(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("the hub was asked"))
    with pytest.raises(ValueError, match=r"is a folder: give one .jsonl/.json/.parquet/.csv file inside it"):
        load_countdown(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MissingFileError, match=r"dataset file 'mydata' does not exist .*a hub dataset is named owner/"):
        load_countdown("mydata")


def test_max_new_tokens_beyond_any_context_is_refused():
    with pytest.raises(ConfigError, match=r"max_new_tokens=1000000000 is not allowed: an integer in 1\.\.32,768"):
        load_config("cpu", max_new_tokens=10**9)


def test_a_launch_typo_is_one_line_before_any_rank_and_paths_are_where_you_stand(tmp_path):
    """launch/cpu_2proc.sh checks the settings once, in one process, before accelerate starts; a relative --config is
    read from where the command runs (it used to be read from the repository root)."""
    (tmp_path / "mine.yaml").write_text("preset: cpu\nmax_steps: 3\n")
    env = dict(os.environ, ACCELERATE=str(Path(sys.executable).parent / "accelerate"))
    done = subprocess.run(["bash", str(ROOT / "launch" / "cpu_2proc.sh"), "--config", "mine.yaml", "--set",
                           "max_step", "4"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip().splitlines()[0]]  # one line
    assert "unknown config field 'max_step'; did you mean max_steps" in done.stderr  # mine.yaml itself was found
    assert "+ " not in done.stdout  # accelerate never started


def test_ctrl_c_says_where_the_run_can_continue_from(tokenizer, length_reward, tmp_path, capsys):
    trainer = trainer_for(tokenizer, tmp_path, max_steps=3, save_every=1)
    original = GRPOTrainer.train_step

    def interrupted(self, **kwargs):
        if self.step == 1:
            raise KeyboardInterrupt
        return original(self, **kwargs)

    trainer.train_step = interrupted.__get__(trainer)
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    said = capsys.readouterr()
    assert "interrupted during step 2; the newest checkpoint" in said.out + said.err
    assert "step-000001, is whole: build the same config with resume=True" in said.out + said.err
