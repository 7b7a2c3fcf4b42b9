"""Fault injection (issue 32): a cold start run again into a folder that holds one, and resumes with a changed
config. A trained adapter is never silently replaced, and the record of what a run was trained with is kept."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import yaml

from grpo_helpers.checkpoint import list_checkpoints
from grpo_helpers.config import ConfigError, load_config
from grpo_helpers.config_history import HISTORY_FILE
from grpo_helpers.countdown.game import generate_countdown, generate_tiers
from grpo_helpers.run_folder import LOCK_FILE, RunFolderError
from grpo_helpers.sft import run_cold_start
from grpo_helpers.trainer import GRPOTrainer
import tiny
from tiny import tiny_lora

TASKS = generate_countdown(40, seed=1)
TIERED = generate_tiers(120, tiers=["2x20", "3x20"], seed=3)  # rows the solver writes traces for


class Interrupted(Exception):
    pass


def cold_start(tokenizer, folder: Path, *, callbacks=(), **overrides) -> Path:
    values = dict(sft_steps=3, sft_batch_size=2, sft_traces=40, sft_lr=1e-2, sft_save_every=2, max_new_tokens=8,
                  output_dir=str(folder))
    values.update(overrides)
    return run_cold_start(load_config("cpu", **values), train_dataset=TIERED, model=tiny_lora(tokenizer),
                          tokenizer=tokenizer, callbacks=callbacks)


def grpo_config(folder: Path, **overrides):
    values = dict(num_tasks=40, test_size=8, eval_tasks=4, max_steps=2, num_prompts=2, group_size=3,
                  max_new_tokens=8, beta=0.0, lr=1e-2, save_every=1, eval_every=0, temperature=1.0,
                  dynamic_sampling=0, curriculum="uniform", reward_weights={"length": 1.0, "format": 1.0},
                  output_dir=str(folder))
    values.update(overrides)
    return load_config("cpu", **values)


def grpo(tokenizer, folder: Path, **overrides) -> GRPOTrainer:
    return GRPOTrainer(grpo_config(folder, **overrides), train_dataset=TASKS[:32], eval_dataset=TASKS[32:],
                       model=tiny_lora(tokenizer), tokenizer=tokenizer)


def files(folder: Path) -> dict[str, str]:
    """Every file under folder -> its sha256: what a run left, byte for byte."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def logged_steps(path: Path) -> list[int]:
    return [json.loads(line)["step"] for line in path.read_text().splitlines()]


def history(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / HISTORY_FILE).read_text().splitlines()]


# ---------------------------------------------------------------------------------------------------------------
# 1. The cold start's folder


def test_a_cold_start_into_a_folder_holding_one_is_refused_and_resume_reuses_it(tokenizer, tmp_path):
    adapter = cold_start(tokenizer, tmp_path)
    folder = tmp_path / "cold_start"
    before = files(folder)
    with pytest.raises(RunFolderError, match=r"cold_start already holds a cold start \(3 logged steps in "
                                             r"metrics\.jsonl, checkpoints up to step-000003, a trained adapter in "
                                             r"adapter/\)\. Set resume=True to reuse it .* overwrite=True"):
        cold_start(tokenizer, tmp_path)
    assert files(folder) == before  # adapter, metrics, checkpoints and config: byte for byte

    trained = []
    reused = cold_start(tokenizer, tmp_path, resume=True, callbacks=[lambda trainer, m: trained.append(m["step"])])
    assert reused == adapter and trained == []  # a finished cold start is reused: no step retrained
    assert files(folder) == before and not (folder / LOCK_FILE).exists()


def test_overwrite_trains_again_from_scratch_and_an_adapter_alone_is_kept_too(tokenizer, tmp_path):
    cold_start(tokenizer, tmp_path)
    folder = tmp_path / "cold_start"
    (folder / "metrics.jsonl").unlink()
    shutil.rmtree(folder / "checkpoints")
    with pytest.raises(RunFolderError, match=r"already holds a cold start \(a trained adapter in adapter/\)"):
        cold_start(tokenizer, tmp_path)  # the adapter a GRPO run may have been built from
    assert (folder / "adapter" / "adapter_model.safetensors").is_file()

    cold_start(tokenizer, tmp_path, overwrite=True, sft_steps=4)
    assert logged_steps(folder / "metrics.jsonl") == [1, 2, 3, 4]
    assert [p.name for p in list_checkpoints(folder)] == ["step-000002", "step-000004"]
    assert [(row["from_step"], row["config"]["cold_start"]["sft_steps"]) for row in history(folder)] == [(0, 4)]


def test_resume_without_a_whole_checkpoint_says_so(tokenizer, tmp_path):
    def crash(trainer, metrics):
        raise Interrupted  # after step 1 is logged, before the first checkpoint (step 2)

    with pytest.raises(Interrupted):
        cold_start(tokenizer, tmp_path, callbacks=[crash])
    with pytest.raises(RunFolderError, match=r"holds a cold start \(1 logged steps in metrics\.jsonl\) but no whole "
                                             r"checkpoint to resume it from\. Set overwrite=True"):
        cold_start(tokenizer, tmp_path, resume=True)
    cold_start(tokenizer, tmp_path, resume=True, overwrite=True)  # resume where possible, else start again
    assert logged_steps(tmp_path / "cold_start" / "metrics.jsonl") == [1, 2, 3]


# ---------------------------------------------------------------------------------------------------------------
# 6. Resume with a changed config


def test_a_resume_that_changes_the_run_is_refused_naming_each_change(tokenizer, length_reward, tmp_path):
    grpo(tokenizer, tmp_path).train()
    recorded = (tmp_path / "config.yaml").read_text()
    with pytest.raises(ConfigError) as caught:
        grpo(tokenizer, tmp_path, resume=True, max_steps=3, max_new_tokens=16, lr=2e-2)
    message = str(caught.value)
    assert (f"(as recorded in {tmp_path / 'config.yaml'}; resuming at step 2): lr 0.01 -> 0.02; max_new_tokens "
            f"8 -> 16. To continue this run, set them back to the recorded values") in message
    assert "resume=False and overwrite=True" in message and "max_steps" in message.split("may change only:")[1]
    assert (tmp_path / "config.yaml").read_text() == recorded and len(history(tmp_path)) == 1
    assert logged_steps(tmp_path / "metrics.jsonl") == [1, 2]


def test_safe_changes_are_kept_in_the_config_history(tokenizer, length_reward, tmp_path):
    grpo(tokenizer, tmp_path).train()
    grpo(tokenizer, tmp_path, resume=True, max_steps=3, save_every=3, keep_last=1).train()
    assert logged_steps(tmp_path / "metrics.jsonl") == [1, 2, 3]
    assert [(row["from_step"], row["config"]["train"]["max_steps"], row["config"]["train"]["save_every"])
            for row in history(tmp_path)] == [(0, 2, 1), (2, 3, 3)]
    assert yaml.safe_load((tmp_path / "config.yaml").read_text()) == history(tmp_path)[-1]["config"]

    grpo(tokenizer, tmp_path, resume=True, max_steps=3, save_every=3, keep_last=1).train()  # unchanged: no entry
    assert len(history(tmp_path)) == 2
    grpo(tokenizer, tmp_path, overwrite=True).train()  # a new run: its history starts afresh
    assert [(row["from_step"], row["config"]["train"]["max_steps"]) for row in history(tmp_path)] == [(0, 2)]


def test_a_run_with_its_own_reward_functions_resumes(tokenizer, tmp_path):
    """The trainer records the weights of functions passed in (not the config's): a resume compares those."""
    rows = [{"prompt": f"Count to {n}:"} for n in range(16)]

    def trainer(**overrides) -> GRPOTrainer:
        return GRPOTrainer(grpo_config(tmp_path, **overrides), train_dataset=rows, reward_funcs=[tiny.length_reward],
                           model=tiny_lora(tokenizer), tokenizer=tokenizer)

    trainer().train()
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["rewards"]["reward_weights"] == {"length_reward": 1.0}
    resumed = trainer(resume=True, max_steps=3)
    assert resumed.step == 2 and [row["step"] for row in resumed.train()] == [1, 2, 3]


def test_a_cold_start_resume_checks_only_what_the_cold_start_uses(tokenizer, tmp_path):
    cold_start(tokenizer, tmp_path)
    folder = tmp_path / "cold_start"
    with pytest.raises(ConfigError, match=r"would change what the cold start in .*cold_start was trained with .*: "
                                          r"sft_lr 0\.01 -> 0\.02\. To continue this cold start"):
        cold_start(tokenizer, tmp_path, resume=True, sft_lr=2e-2)
    cold_start(tokenizer, tmp_path, resume=True, max_new_tokens=16, lr=1e-3)  # GRPO's settings: not the cold start's
    assert len(history(folder)) == 1 and history(folder)[0]["config"]["rollout"]["max_new_tokens"] == 8
