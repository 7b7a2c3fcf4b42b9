"""The scale path for real: DDP, DeepSpeed ZeRO-2, ZeRO-3 and two machines, each started by its launch/ wrapper as
a user starts it (2 CPU processes over gloo, the tiny model), with a cold start, a checkpoint every step, a rank
killed mid-run and the run resumed; a user's task file on two ranks; the cross-rank checksum.

Tolerances. The two-machine launch is the DDP code path (one process per machine instead of two on one): it must
equal the 2-process run exactly. DeepSpeed sums the same fp32 gradients in other buckets and order, so losses,
gradient norms and KL agree to rounding (relative 1e-5, or 1e-7 absolute for GRPO's near-cancelling loss; measured:
2.5e-6 relative, and 7e-9 absolute on a loss of 2.4e-4); the sampled completions and rewards are the same tokens and
numbers. Adam divides each update by the root of its gradient's running square, so a rounding
difference in a small gradient moves its weight by up to a few lr-sized steps' worth of that difference: the
adapters agree to 5e-4 relative per tensor (measured after 2 cold-start and 3 GRPO steps: 2.3e-5).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml
from safetensors.torch import load_file

from grpo_helpers.model_states import read_model_states
from tiny import tiny_llama

ROOT = Path(__file__).resolve().parent.parent
WRAPPERS = {"ddp": "cpu_2proc.sh", "zero2": "cpu_zero2.sh", "zero3": "cpu_zero3.sh", "two_machines": "cpu_2node.sh"}
SETTINGS = dict(num_tasks=60, test_size=8, num_prompts=2, group_size=3, max_new_tokens=6, beta=0.04, lr=1e-2,
                lr_scheduler="linear", lora_r=4, lora_alpha=8, max_steps=3, save_every=1, eval_every=0, eval_tasks=4,
                reward_weights={"length": 1.0}, sft_steps=2, sft_batch_size=2, sft_traces=20)
TIMING = ("time/", "tokens_per_sec", "gen_tokens")


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, tokenizer) -> Path:
    folder = tmp_path_factory.mktemp("tiny-model")
    tiny_llama(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def command(strategy: str, model_dir: Path, output_dir: Path, **overrides) -> list[str]:
    settings = {**SETTINGS, "model": str(model_dir), "output_dir": str(output_dir), **overrides}
    sets = [arg for name, value in settings.items()
            for arg in ("--set", name, yaml.safe_dump(value).strip().removesuffix("...").strip())]
    return ["bash", str(ROOT / "launch" / WRAPPERS[strategy]), "--timeout", "60",
            "--import", str(ROOT / "tests" / "tiny_rewards.py"), *sets]


def environment() -> dict[str, str]:
    env = dict(os.environ, ACCELERATE=str(Path(sys.executable).parent / "accelerate"), OMP_NUM_THREADS="1",
               PYTHONPATH=str(ROOT / "tests"))
    env.pop("MASTER_PORT", None)
    return env


def run(strategy: str, model_dir: Path, output_dir: Path, **overrides) -> str:
    done = subprocess.run(command(strategy, model_dir, output_dir, **overrides), env=environment(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return done.stdout


def checksums(stdout: str) -> list[float]:
    line = next(line for line in stdout.splitlines() if line.startswith("trainable-weight checksum per rank:"))
    return json.loads(line.split(":", 1)[1])


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def without_timings(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.startswith(TIMING)} for row in rows]


def completions(output_dir: Path) -> list[tuple]:
    return [(r["step"], r["rank"], r["completion"], r["reward"]) for r in lines(output_dir / "completions.jsonl")]


def kill_rank_1(proc: subprocess.Popen, *, once: Path) -> None:
    """Wait until `once` exists, then kill -9 the training process whose RANK is 1 (a crashed GPU, an OOM kill)."""
    deadline = time.monotonic() + 300
    while not once.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()[-3000:]
        time.sleep(0.05)
    rank1 = [p for p in psutil.Process(proc.pid).children(recursive=True)
             if "train_grpo.py" in " ".join(p.cmdline()) and p.environ().get("RANK") == "1"]
    assert len(rank1) == 1
    rank1[0].kill()


def stopped_without_hanging(proc: subprocess.Popen) -> str:
    """The run's exit after a rank died: non-zero, within the collective timeout and then some, with its output."""
    try:
        output, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            for child in psutil.Process(proc.pid).children(recursive=True):
                child.kill()
            proc.kill()
    assert proc.returncode != 0, output[-3000:]
    return output


class Runs:
    """Each strategy's uninterrupted run, made once for the module and shared by the tests that compare with it."""

    def __init__(self, model_dir: Path, folder: Path):
        self.model_dir, self.folder, self.done = model_dir, folder, {}

    def full(self, strategy: str) -> tuple[Path, str]:
        if strategy not in self.done:
            out = self.folder / strategy
            self.done[strategy] = (out, run(strategy, self.model_dir, out))
        return self.done[strategy]


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory) -> Runs:
    return Runs(tiny_model_dir, tmp_path_factory.mktemp("strategies"))


@pytest.mark.slow  # one launch of two processes
def test_ddp_cold_starts_then_trains_in_sync_each_rank_on_its_own_prompts(runs):
    out, stdout = runs.full("ddp")
    assert "2 process(es), DistributedType.MULTI_CPU" in stdout
    sums = checksums(stdout)
    assert len(sums) == 2 and sums[0] == sums[1]
    assert [m["step"] for m in lines(out / "cold_start" / "metrics.jsonl")] == [1, 2]  # written once, by rank 0
    saved = yaml.safe_load((out / "checkpoints" / "step-000003" / "config.yaml").read_text())
    assert saved["model"]["init_adapter"] == str(out / "cold_start" / "adapter")  # GRPO started from it

    metrics = lines(out / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2, 3]  # one line per step: only the main process writes
    # the schedule runs once per step, not once per process: linear from 1e-2 over 3 steps
    assert [m["learning_rate"] for m in metrics] == [pytest.approx(2 / 3 * 1e-2), pytest.approx(1 / 3 * 1e-2), 0.0]
    rows = lines(out / "completions.jsonl")
    for step in (1, 2, 3):
        seen = {rank: {(tuple(r["nums"]), r["target"]) for r in rows if r["step"] == step and r["rank"] == rank}
                for rank in (0, 1)}
        assert len(seen[0]) == 2 and len(seen[1]) == 2  # num_prompts tasks per rank
        assert not seen[0] & seen[1], f"ranks shared a prompt at step {step}"
    step1 = [r["reward"] for r in rows if r["step"] == 1]  # both ranks' rewards are in the logged mean
    assert metrics[0]["reward"] == pytest.approx(sum(step1) / len(step1), abs=1e-6)


@pytest.mark.slow  # one launch of two processes
def test_two_machines_train_exactly_as_two_processes_on_one(runs):
    out, stdout = runs.full("two_machines")
    assert "--machine_rank 0 --main_process_ip 127.0.0.1" in stdout and "--machine_rank 1" in stdout
    reference, reference_stdout = runs.full("ddp")
    for log in ("cold_start/metrics.jsonl", "metrics.jsonl"):
        assert without_timings(lines(out / log)) == without_timings(lines(reference / log)), log
    assert completions(out) == completions(reference)
    assert checksums(stdout) == checksums(reference_stdout)


@pytest.mark.slow  # one launch of two processes each
@pytest.mark.parametrize("strategy", ["zero2", "zero3"])
def test_deepspeed_trains_as_ddp_does_to_rounding(runs, strategy):
    out, stdout = runs.full(strategy)
    assert "2 process(es), DistributedType.DEEPSPEED" in stdout
    sums = checksums(stdout)  # under ZeRO-3 each rank's sum is over the gathered weights
    assert len(sums) == 2 and sums[0] == sums[1]
    reference, _ = runs.full("ddp")
    for log in ("cold_start/metrics.jsonl", "metrics.jsonl"):
        ours, theirs = without_timings(lines(out / log)), without_timings(lines(reference / log))
        assert [sorted(row) for row in ours] == [sorted(row) for row in theirs]
        for mine, ddp in zip(ours, theirs):
            for key, value in ddp.items():
                assert mine[key] == pytest.approx(value, rel=1e-5, abs=1e-7), f"{log} step {ddp['step']} {key}"
    # the rollouts ran on whole weights (ZeRO-3 gathers its shards for them): the same tokens were sampled
    assert completions(out) == completions(reference)
    ours, theirs = (load_file(folder / "adapter" / "adapter_model.safetensors") for folder in (out, reference))
    assert ours.keys() == theirs.keys()
    for name, weight in theirs.items():
        assert (ours[name] - weight).norm() <= 5e-4 * weight.norm(), name
    assert (out / "checkpoints" / "step-000003" / "deepspeed" / "engine").is_dir()  # DeepSpeed's own state too

    # what each rank held (model_states.json, measured on the live tensors): DDP all of it, in fp32 AdamW's bytes;
    # ZeRO-2 half the gradients, ZeRO-3 half the weights too
    ddp, ours = (read_model_states(folder / "model_states.json") for folder in (reference, out))
    assert (ours["parameters"], ours["trainable"]) == (ddp["parameters"], ddp["trainable"])
    states = [{part: rank[part] for part in ("weights", "gradients", "optimizer")} for rank in ddp["ranks"]]
    assert states[0] == {"weights": 4 * ddp["parameters"], "gradients": 4 * ddp["trainable"],
                         "optimizer": 8 * ddp["trainable"]} == states[1]
    assert all(rank["peak_rss"] > rank["weights"] for rank in ours["ranks"])  # the whole process, weights and all
    for rank in ours["ranks"]:
        assert rank["gradients"] == pytest.approx(ddp["ranks"][0]["gradients"] / 2, rel=0.01)
        shard = 2 if strategy == "zero3" else 1
        assert rank["weights"] == pytest.approx(ddp["ranks"][0]["weights"] / shard, rel=0.01)


@pytest.mark.slow  # two launches of two processes each
@pytest.mark.parametrize("strategy", ["ddp", "zero2", "zero3"])
def test_a_killed_rank_stops_the_run_and_resume_gives_the_uninterrupted_run(runs, strategy, tmp_path):
    """kill -9 of rank 1 once the step-2 checkpoint is whole; the run stops with a message (no hang); resuming
    gives every metric, completion and weight the uninterrupted run has: each rank takes back its own random
    streams, DeepSpeed its sharded optimizer state."""
    out = tmp_path / "run"
    proc = subprocess.Popen(command(strategy, runs.model_dir, out), env=environment(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    kill_rank_1(proc, once=out / "checkpoints" / "step-000002")
    output = stopped_without_hanging(proc)
    assert "exitcode  : -9" in output  # the launcher names the rank that died
    stdout = run(strategy, runs.model_dir, out, resume=True)
    full, full_stdout = runs.full(strategy)
    for log in ("cold_start/metrics.jsonl", "metrics.jsonl"):
        assert without_timings(lines(out / log)) == without_timings(lines(full / log)), log
    assert completions(out) == completions(full)
    assert checksums(stdout) == checksums(full_stdout)


@pytest.mark.slow  # one launch of two machines
def test_a_dead_machine_stops_the_two_machine_run(runs, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(command("two_machines", runs.model_dir, out, sft_steps=0, max_steps=10_000, save_every=0),
                            env=environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    kill_rank_1(proc, once=out / "metrics.jsonl")
    output = stopped_without_hanging(proc)
    assert "cpu_2node: a machine exited with status" in output
    assert not [p for p in psutil.process_iter(["cmdline"]) if str(out) in " ".join(p.info["cmdline"] or [])]


@pytest.mark.slow  # reads a checkpoint the ZeRO-2 run wrote
def test_a_checkpoint_resumes_only_under_the_strategy_that_wrote_it(runs):
    from accelerate import Accelerator

    from grpo_helpers.checkpoint import resume_training
    from grpo_helpers.config import ConfigError

    out, _ = runs.full("zero2")
    state = torch.load(out / "checkpoints" / "step-000003" / "trainer_state.pt", weights_only=False)
    assert state["strategy"] == {"name": "DeepSpeed ZeRO-2", "world_size": 2} and len(state["ranks"]) == 2
    with pytest.raises(ConfigError, match=r"written under DeepSpeed ZeRO-2 on 2 process\(es\); this run is one process "
                                          r"on 1.*init_adapter=.*step-000003/model"):
        resume_training(out, accelerator=Accelerator(cpu=True), model=None, unwrapped_model=None, optimizer=None,
                        scheduler=None, sampler=None)


@pytest.mark.slow  # one launch of two processes on a task from a user's file
def test_a_task_from_a_users_file_trains_on_both_ranks(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    settings = dict(sft_steps=0, max_steps=2, save_every=2, eval_every=2,
                    reward_weights={"says_colour": 1.0, "brevity": 1.0})
    done = subprocess.run([*command("ddp", tiny_model_dir, out, **settings), "--task", str(ROOT / "tests" / "tiny_task.py")],
                          env=environment(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    sums = checksums(done.stdout)
    assert len(sums) == 2 and sums[0] == sums[1]
    rows = [json.loads(line) for line in (out / "completions.jsonl").read_text().splitlines()]
    assert {r["rank"] for r in rows} == {0, 1} and all(r["card"] < 24 for r in rows)  # the file's training rows
    assert {"rewards/says_colour/mean", "rewards/brevity/mean"} <= set(json.loads(
        (out / "metrics.jsonl").read_text().splitlines()[-1]))
    evals = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines()]
    assert evals[-1]["eval/num_tasks"] == 4  # eval_tasks of the file's 8 held-out rows


def test_the_cross_rank_checksum_cannot_pass_on_empty_shards():
    """Under ZeRO-3 a rank's local parameter tensors are empty: a plain sum would be 0 on every rank and the
    cross-rank check could never fail. The checksum refuses to sum what it cannot see."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_grpo", ROOT / "launch" / "train_grpo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    import torch

    model = torch.nn.Linear(3, 2)
    assert module.adapter_checksum(model) == pytest.approx(float(sum(p.detach().double().sum() for p in model.parameters())))
    model.weight = torch.nn.Parameter(torch.empty(0))  # what a ZeRO-3 shard looks like outside a gather
    with pytest.raises(RuntimeError, match="empty"):
        module.adapter_checksum(model)
