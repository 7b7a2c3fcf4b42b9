"""What a run was trained with, kept: a resume may not change what the run learns, and every config it ran under
stays on record.

A resume continues a run from its checkpoint, so each setting that shapes the updates (the model, the data, the
rollout, the rewards, the loss, the optimizer, the seed) must be the one the checkpoint was trained with: a changed
one would make a run that no config describes. `SAFE_ON_RESUME` lists the settings that may change: how long to
train, when to save, evaluate and report, where the folder is, and how the same computation is carried out.

In the run folder, `config.yaml` is the latest config and `config_history.jsonl` holds every config the run was
trained under, oldest first, each with the step it applied from (a line applies until the next line's step).
"""

from __future__ import annotations

import json
import os
from dataclasses import fields
from pathlib import Path
from typing import Any, Collection

import yaml

from grpo_helpers.config import FIELD_SECTION, ColdStartConfig, ConfigError, DataConfig, GRPOConfig, ModelConfig
from grpo_helpers.run_folder import read_json_lines

CONFIG_FILE = "config.yaml"
HISTORY_FILE = "config_history.jsonl"

ALL_FIELDS = frozenset(FIELD_SECTION)
SAFE_ON_RESUME = frozenset({
    # how long and where. A longer max_steps extends the run; a linear or cosine lr schedule and the linear
    # curriculum are then stretched over the new max_steps from the resumed step on
    "max_steps", "output_dir", "resume", "overwrite",
    # when to save, evaluate and report, and how long a reward function may take: the updates stay the same
    "save_every", "keep_last", "eval_every", "eval_tasks", "eval_greedy", "eval_batch_size", "report_to",
    "reward_time_limit",
    # how the same computation is carried out: memory, speed and kernels, the same gradient
    "memory_lean", "prompts_per_pass", "completions_per_pass", "gradient_checkpointing", "attn_implementation", "fast", "cuda_graph",
    "deterministic",
    # where the run started from: a resumed run's weights come from its checkpoint, and the cold start keeps its own
    # record in cold_start/
    "init_adapter", *(f.name for f in fields(ColdStartConfig)),
})
# what the cold start's training depends on (it trains a fresh adapter: init_adapter does not apply), and of that
# what may change on its resume
COLD_START_FIELDS = frozenset({*(f.name for f in fields(ModelConfig)), *(f.name for f in fields(DataConfig)),
                               *(f.name for f in fields(ColdStartConfig)), "seed", "max_grad_norm"}) - {"init_adapter"}
COLD_START_SAFE_ON_RESUME = frozenset({"sft_save_every", "gradient_checkpointing", "attn_implementation", "fast"})


def _flat(nested: dict[str, Any]) -> dict[str, Any]:
    """{section: {field: value}} -> {field: value} (field names are unique across sections)."""
    return {name: value for section in nested.values() if isinstance(section, dict) for name, value in section.items()}


def _as_saved(config: GRPOConfig) -> dict[str, Any]:
    """The config as config.yaml holds it (through YAML, so that values compare with a saved file's)."""
    return yaml.safe_load(yaml.safe_dump(config.to_dict(), sort_keys=False))


def _changes(old: dict[str, Any], new: dict[str, Any], names: Collection[str]) -> dict[str, tuple[Any, Any]]:
    """name -> (old, new) for each of `names` in both configs whose values differ (a field only one side has is a
    package version's change, not the user's)."""
    old, new = _flat(old), _flat(new)
    return {name: (old[name], new[name]) for name in sorted(names) if name in old and name in new
            and old[name] != new[name]}


def check_resume(folder: Path, config: GRPOConfig, *, step: int, what: str, names: Collection[str] = ALL_FIELDS,
                 may_change: Collection[str] = SAFE_ON_RESUME) -> None:
    """Refuse to resume the run in `folder` at `step` with a config whose `names` differ from its config.yaml,
    except those in `may_change`: one ConfigError naming each changed field, old and new value, and what to do."""
    path = folder / CONFIG_FILE
    if not path.is_file():
        return  # nothing recorded to compare with
    try:
        saved = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML ({error}), so the config this {what} was trained with cannot be "
                          f"checked: restore it, or delete it to resume without the check") from None
    changed = {name: values for name, values in _changes(saved, _as_saved(config), names).items()
               if name not in may_change}
    if changed:
        listed = "; ".join(f"{name} {old!r} -> {new!r}" for name, (old, new) in changed.items())
        raise ConfigError(f"resume=True would change what the {what} in {folder} was trained with (as recorded in "
                          f"{path}; resuming at step {step}): {listed}. To continue this {what}, set them back to "
                          f"the recorded values; to train with the new ones, start a new {what} (another "
                          f"output_dir, or resume=False and overwrite=True to replace this one). A resume may change "
                          f"only: {', '.join(sorted(set(may_change) & set(names)))}")


def record_config(folder: Path, config: GRPOConfig, *, step: int, names: Collection[str] = ALL_FIELDS) -> None:
    """Write config.yaml and add the config to config_history.jsonl, from `step` on, when its `names` differ from
    the config recorded last (else nothing changes). Step 0 starts the history afresh: a fresh run, whose folder may
    hold a replaced run's record. A folder from before the history was kept gets its config.yaml as the first entry,
    so that it is not lost."""
    path, history_path = folder / CONFIG_FILE, folder / HISTORY_FILE
    history = [] if step == 0 else read_json_lines(history_path)
    if not history and step > 0 and path.is_file():
        history = [{"from_step": 0, "config": yaml.safe_load(path.read_text())}]
    new = _as_saved(config)
    if history and not _changes(history[-1]["config"], new, names):
        return
    history.append({"from_step": step, "config": new})
    folder.mkdir(parents=True, exist_ok=True)
    tmp = history_path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in history))
    os.replace(tmp, history_path)
    config.save_yaml(path)
