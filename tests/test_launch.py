"""The distributed path for real: `accelerate launch` with 2 CPU processes over gloo, through launch/launch.sh."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from tiny import tiny_llama

ROOT = Path(__file__).resolve().parent.parent
LAUNCH = ROOT / "launch" / "launch.sh"


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, tokenizer) -> Path:
    """A tiny random Llama saved with the bundled tokenizer: loaded by path, like any local model."""
    folder = tmp_path_factory.mktemp("tiny-model")
    tiny_llama(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def launch_command(model_dir: Path, output_dir: Path, **overrides) -> list[str]:
    settings = dict(model=str(model_dir), num_tasks=60, test_size=8, num_prompts=2, group_size=3, max_new_tokens=6,
                    beta=0.04, lr=1e-2, lora_r=4, lora_alpha=8, max_steps=2, save_every=2, eval_every=0, eval_tasks=4,
                    reward_weights={"length": 1.0}, sft_steps=0, output_dir=str(output_dir))
    settings.update(overrides)
    sets = [arg for name, value in settings.items() for arg in ("--set", name, yaml.safe_dump(value).strip()
                                                               .removesuffix("...").strip())]
    return ["bash", str(LAUNCH), "cpu_2proc", "--cpu", "--config", "cpu", "--timeout", "60",
            "--import", str(ROOT / "tests" / "tiny_rewards.py"), *sets]


def run_env() -> dict[str, str]:
    env = dict(os.environ, ACCELERATE=str(Path(sys.executable).parent / "accelerate"), OMP_NUM_THREADS="1",
               PYTHONPATH=str(ROOT / "tests"))
    env.pop("MASTER_PORT", None)
    return env


def launch(model_dir: Path, output_dir: Path, **overrides) -> subprocess.CompletedProcess:
    done = subprocess.run(launch_command(model_dir, output_dir, **overrides), env=run_env(), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return done


def checksums(stdout: str) -> list[float]:
    line = next(line for line in stdout.splitlines() if line.startswith("trainable-weight checksum per rank:"))
    return json.loads(line.split(":", 1)[1])


@pytest.mark.slow  # two launches of two processes each (~1 min)
def test_two_cpu_ranks_stay_in_sync_see_different_prompts_write_once_and_resume(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    first = launch(tiny_model_dir, out, lr_scheduler="linear")
    assert "2 process(es), DistributedType.MULTI_CPU" in first.stdout
    sums = checksums(first.stdout)
    assert len(sums) == 2 and sums[0] == sums[1]

    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]  # one line per step: only the main process writes
    # the schedule runs once per step, not once per process: linear from 1e-2 over 2 steps
    assert [m["learning_rate"] for m in metrics] == [pytest.approx(5e-3), 0.0]
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-000002"]
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert len(list(tmp_path.rglob("metrics.jsonl"))) == 1

    rows = [json.loads(line) for line in (out / "completions.jsonl").read_text().splitlines()]
    for step in (1, 2):
        seen = {rank: {(tuple(r["nums"]), r["target"]) for r in rows if r["step"] == step and r["rank"] == rank}
                for rank in (0, 1)}
        assert len(seen[0]) == 2 and len(seen[1]) == 2  # num_prompts tasks per rank
        assert not seen[0] & seen[1], f"ranks shared a prompt at step {step}"
    # both ranks' rewards are in the logged mean (gathered before logging)
    step1 = [r["reward"] for r in rows if r["step"] == 1]
    assert metrics[0]["reward"] == pytest.approx(sum(step1) / len(step1), abs=1e-6)

    resumed = launch(tiny_model_dir, out, max_steps=3, resume=True, lr_scheduler="linear")  # the same run, longer
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    sums = checksums(resumed.stdout)
    assert sums[0] == sums[1]


@pytest.mark.slow  # one launch of two processes: a cold start, then GRPO from its adapter
def test_the_cold_start_runs_on_both_ranks_before_grpo(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    done = launch(tiny_model_dir, out, sft_steps=3, sft_batch_size=2, sft_traces=20, max_steps=1, save_every=1)
    cold = [json.loads(line) for line in (out / "cold_start" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in cold] == [1, 2, 3]  # written once, by the main process
    assert (out / "cold_start" / "adapter" / "adapter_model.safetensors").is_file()
    saved = yaml.safe_load((out / "checkpoints" / "step-000001" / "config.yaml").read_text())
    assert saved["model"]["init_adapter"] == str(out / "cold_start" / "adapter")  # GRPO started from it
    sums = checksums(done.stdout)
    assert len(sums) == 2 and sums[0] == sums[1]


@pytest.mark.slow  # one launch of two processes on a task from a user's file
def test_a_task_from_a_users_file_trains_on_both_ranks(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    command = launch_command(tiny_model_dir, out, eval_every=2, reward_weights={"says_colour": 1.0, "brevity": 1.0})
    done = subprocess.run([*command, "--task", str(ROOT / "tests" / "tiny_task.py")], env=run_env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    sums = checksums(done.stdout)
    assert len(sums) == 2 and sums[0] == sums[1]
    rows = [json.loads(line) for line in (out / "completions.jsonl").read_text().splitlines()]
    assert {r["rank"] for r in rows} == {0, 1} and all(r["card"] < 24 for r in rows)  # the file's training rows
    assert {"rewards/says_colour/mean", "rewards/brevity/mean"} <= set(json.loads(
        (out / "metrics.jsonl").read_text().splitlines()[-1]))
    evals = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines()]
    assert evals[-1]["eval/num_tasks"] == 4  # eval_tasks of the file's 8 held-out rows


@pytest.mark.slow
def test_a_dead_rank_stops_the_run_instead_of_hanging(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(launch_command(tiny_model_dir, out, max_steps=10_000, save_every=0), env=run_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        while not (out / "metrics.jsonl").is_file():  # training is under way on both ranks
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()[-3000:]
            time.sleep(0.5)
        rank1 = [p for p in psutil.Process(proc.pid).children(recursive=True)
                 if "train_grpo.py" in " ".join(p.cmdline()) and p.environ().get("RANK") == "1"]
        assert len(rank1) == 1
        rank1[0].kill()
        killed = time.monotonic()
        code = proc.wait(timeout=120)
        assert code != 0
        assert time.monotonic() - killed < 120
    finally:
        if proc.poll() is None:
            for child in psutil.Process(proc.pid).children(recursive=True):
                child.kill()
            proc.kill()


def test_the_cross_rank_checksum_cannot_pass_on_empty_shards():
    """Under ZeRO-3 a rank's local parameter tensors are empty: a plain sum would be 0 on every rank and the
    cross-rank check could never fail. The checksum refuses to sum what it cannot see."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_grpo", ROOT / "launch" / "train_grpo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    import torch

    model = torch.nn.Linear(3, 2)
    assert module.adapter_checksum(model) == pytest.approx(float(sum(p.double().sum() for p in model.parameters())))
    model.weight = torch.nn.Parameter(torch.empty(0))  # what a ZeRO-3 shard looks like outside a gather
    with pytest.raises(RuntimeError, match="empty"):
        module.adapter_checksum(model)
