"""Notebook-side launching helpers: failures surface, commands are the wrappers' commands, memory formulas."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from accelerate.commands.config.config_args import load_config_from_file

from grpo_helpers.launcher import (ACCELERATE_CONFIGS, FP32_ADAMW, accelerate_config, memory_per_gpu_gib, stream_command,
                                   train_command)


def test_stream_command_echoes_output_and_raises_on_failure(capsys):
    stream_command([sys.executable, "-c", "print('hello from the child')"])
    assert "hello from the child" in capsys.readouterr().out
    with pytest.raises(subprocess.CalledProcessError) as failed:
        stream_command([sys.executable, "-c", "import sys; print('last words'); sys.exit(3)"])
    assert failed.value.returncode == 3 and "last words" in failed.value.output


def test_train_command_passes_overrides_as_yaml_and_names_bad_configs():
    command = train_command("cpu_2proc", config="cpu", cpu=True,
                            overrides={"max_steps": 3, "reward_weights": {"format": 1.0}, "output_dir": "runs/x"})
    assert command[1:4] == ["launch", "--config_file", str(ACCELERATE_CONFIGS / "cpu_2proc.yaml")]
    assert command[4].endswith("launch/train_grpo.py") and "--cpu" in command
    sets = {command[i + 1]: command[i + 2] for i, arg in enumerate(command) if arg == "--set"}
    assert yaml.safe_load(sets["reward_weights"]) == {"format": 1.0}
    assert yaml.safe_load(sets["max_steps"]) == 3 and sets["output_dir"] == "runs/x"
    with pytest.raises(ValueError, match="'zero4' does not exist: choose one of cpu_2node, cpu_2proc, cpu_zero2, cpu_zero3, ddp"):
        accelerate_config("zero4")


@pytest.mark.parametrize("name", ["cpu_2proc", "single_gpu", "ddp", "zero2", "zero3"])
def test_accelerate_configs_are_accepted_by_accelerate(name):
    """accelerate's own loader builds its config object from each file (unknown keys or values would fail)."""
    config = load_config_from_file(str(accelerate_config(name)))
    assert config.num_processes >= 1
    if name.startswith("zero"):
        assert config.deepspeed_config["zero_stage"] == int(name[-1])


def test_memory_table_follows_the_zero_formulas():
    gib = 2**30
    table = memory_per_gpu_gib(3e9, 8)
    assert table["DDP"]["total"] == pytest.approx(16 * 3e9 / gib)
    assert table["ZeRO-1"]["total"] == pytest.approx((2 + 2 + 12 / 8) * 3e9 / gib)
    assert table["ZeRO-2"]["total"] == pytest.approx((2 + 14 / 8) * 3e9 / gib)
    assert table["ZeRO-3"]["total"] == pytest.approx(16 / 8 * 3e9 / gib)
    lora = memory_per_gpu_gib(3e9, 8, trainable_fraction=0.01)
    assert lora["DDP"]["weights"] == pytest.approx(2 * 3e9 / gib)  # frozen weights still cost their bf16 bytes
    assert lora["DDP"]["optimizer"] == pytest.approx(12 * 3e7 / gib)
    fp32 = memory_per_gpu_gib(3e9, 2, trainable_fraction=0.01, bytes_per_param=FP32_ADAMW)  # the CPU runs
    assert fp32["ZeRO-2"]["weights"] == pytest.approx(4 * 3e9 / gib)
    assert fp32["ZeRO-2"]["optimizer"] == pytest.approx(8 * 3e7 / 2 / gib)
    with pytest.raises(ValueError, match="num_gpus=0"):
        memory_per_gpu_gib(3e9, 0)


@pytest.mark.parametrize("name", ["zero2", "zero3"])
def test_deepspeed_configs_build_a_deepspeed_plugin(name):
    """Every key of the deepspeed section is a DeepSpeedPlugin argument, and DeepSpeed accepts the values."""
    from accelerate.utils import DeepSpeedPlugin

    settings = load_config_from_file(str(accelerate_config(name))).deepspeed_config
    plugin = DeepSpeedPlugin(**settings)
    assert plugin.zero_stage == settings["zero_stage"]
    assert plugin.deepspeed_config["zero_optimization"]["stage"] == settings["zero_stage"]


@pytest.mark.parametrize("file,preset,changes", [
    ("cpu.yaml", "cpu", {"output_dir": "runs/launch-cpu"}),
    ("qwen2.5-3b-countdown.yaml", "gpu-qwen2.5-3b", {"prompts_per_pass": 4}),
])
def test_training_configs_match_their_presets(file, preset, changes):
    """The launch configs are the presets written out: a preset change must not leave a stale copy behind."""
    from grpo_helpers.config import load_config

    written = load_config(str(ACCELERATE_CONFIGS.parent / "configs" / file))
    assert written == load_config(preset, **changes)
