"""Configs: validated on construction with errors that name the field, overridable by plain names, YAML in/out."""

from __future__ import annotations

import pytest

from grpo_helpers.config import PRESETS, ConfigError, GRPOConfig, config_from_dict, load_config


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_build_and_round_trip_through_yaml(preset, tmp_path):
    config = load_config(preset)
    config.save_yaml(tmp_path / "c.yaml")
    assert load_config(str(tmp_path / "c.yaml")) == config


def test_gpu_preset_has_the_seed_settings():
    c = load_config("gpu-qwen2.5-3b")
    assert (c.model.model, c.model.lora_r, c.model.lora_alpha) == ("Qwen/Qwen2.5-3B", 16, 64)
    assert (c.rollout.group_size, c.rollout.num_prompts, c.rollout.max_new_tokens) == (12, 4, 1024)


def test_plain_and_dotted_overrides_reach_their_section():
    c = load_config("cpu", group_size=6, **{"loss.beta": 0.1}, train={"lr": 3e-5})
    assert (c.rollout.group_size, c.loss.beta, c.train.lr) == (6, 0.1, 3e-5)
    assert c.replace(max_steps=7).train.max_steps == 7 and c.train.max_steps != 7


@pytest.mark.parametrize("field, value, allowed", [
    ("group_size", 1, "integer >= 2"),
    ("loss_type", "ppo", "'grpo', 'bnpo', 'dr_grpo', 'dapo'"),
    ("temperature", 0.0, "(0.0, 10.0]"),
    ("top_p", 1.5, "(0.0, 1.0]"),
    ("dtype", "fp8", "'auto'"),
    ("scale_rewards", "median", "'group', 'batch', 'none'"),
    ("reward_weights", {"": 1.0}, "a reward function's name"),
    ("test_size", 10**6, "fewer than num_tasks"),
    ("max_steps", 2.5, "integer >= 1"),
    ("deterministic", "yes", "true or false"),
])
def test_bad_values_name_the_field_the_value_and_what_is_allowed(field, value, allowed):
    with pytest.raises(ConfigError) as error:
        load_config("cpu", **{field: value})
    message = str(error.value)
    assert field.split("_")[0] in message and allowed in message, message


def test_unknown_fields_are_errors_with_a_suggestion():
    with pytest.raises(ConfigError, match="did you mean group_size"):
        config_from_dict({"groupsize": 4})
    with pytest.raises(ConfigError, match="unknown config field 'model.lr'"):
        config_from_dict({"model.lr": 1e-3})


def test_missing_file_and_non_mapping_yaml(tmp_path):
    with pytest.raises(ConfigError, match="neither a preset"):
        load_config(str(tmp_path / "nope.yaml"))
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(str(tmp_path / "list.yaml"))


def test_defaults_are_valid_and_flat_names_are_unique():
    flat = GRPOConfig().flat()
    assert len(flat) == sum(len(section) for section in GRPOConfig().to_dict().values())


@pytest.mark.parametrize("zero_stage", [2, 3])
def test_a_deepspeed_run_refuses_accumulation_before_loading(zero_stage):
    from grpo_helpers.config import fit_strategy

    config = load_config("cpu", grad_accum_steps=2)
    with pytest.raises(ConfigError, match="grad_accum_steps=2 is not supported under DeepSpeed"):
        fit_strategy(config, zero_stage=zero_stage)
    assert fit_strategy(config, zero_stage=None) is config  # without DeepSpeed accumulation is fine


@pytest.mark.parametrize("zero_stage", [2, 3])
def test_a_deepspeed_step_is_one_backward_over_the_whole_batch(zero_stage, capsys):
    """The engine steps inside every backward: prompts_per_pass (memory only) is raised to the batch, said once;
    what else the run does (resume, dynamic sampling) is kept."""
    from grpo_helpers.config import fit_strategy

    config = load_config("cpu", num_prompts=4, prompts_per_pass=1, dynamic_sampling=2, resume=True)
    fitted = fit_strategy(config, zero_stage=zero_stage)
    assert fitted.train.prompts_per_pass == 4
    assert (fitted.rollout.dynamic_sampling, fitted.train.resume) == (2, True)
    assert f"DeepSpeed ZeRO-{zero_stage}: one backward per step, so prompts_per_pass=1 becomes num_prompts=4" \
        in capsys.readouterr().out
    assert fit_strategy(fitted, zero_stage=zero_stage, verbose=True) is fitted
    assert capsys.readouterr().out == ""


def test_countdown_refuses_a_reward_name_it_does_not_have():
    """The config holds any task's weights; the Countdown task checks the names against its own functions (the
    trainer builds it before any model loads)."""
    from grpo_helpers.countdown.task import countdown_task

    allowed = "reward_weights key='accuracy' is not allowed: choose one of 'format', 'equation'"
    with pytest.raises(ConfigError, match=allowed):
        countdown_task({"accuracy": 1.0})

