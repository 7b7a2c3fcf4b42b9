"""One recipe in one place: a params file reaches each chapter as the preset plus only what the file sets.

A parameter name that two chapters declare receives the same value in both from a params file, so only names that
mean the same thing everywhere may be shared. Chapter 04 builds its training config from the preset and the
reader's overrides: run through each params file, that config differs from the preset only where the file says so.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from grpo_helpers.config import FIELD_SECTION, PRESETS, load_config
from grpo_helpers.run_notebooks import chapter_notebooks, declared_parameters, load_params

ROOT = Path(__file__).resolve().parent.parent
PARAMS = sorted((ROOT / "params").glob("*.yaml"))
SHARED = {"run_dir", "seed", "model", "preset"}  # the same meaning in every chapter that declares them


def test_only_names_with_one_meaning_are_shared_between_chapters():
    declared_by = defaultdict(list)
    for notebook in chapter_notebooks():
        for name in declared_parameters(notebook):
            declared_by[name].append(notebook.name[:2])
    shared = {name: chapters for name, chapters in declared_by.items() if len(chapters) > 1}
    assert set(shared) <= SHARED, {name: shared[name] for name in set(shared) - SHARED}


def chapter_04_config(params: dict, run_dir: Path):
    """Chapter 04's parameters cell, papermill's overrides, then its config cell, as papermill runs them."""
    cells = json.loads((ROOT / "notebooks" / "04_single_node_training.ipynb").read_text())["cells"]
    code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
    parameters = next("".join(c["source"]) for c in cells if "parameters" in c["metadata"].get("tags", []))
    declared = declared_parameters(ROOT / "notebooks" / "04_single_node_training.ipynb")
    scope: dict = {}
    exec(parameters, scope)
    scope.update({k: v for k, v in params.items() if k in declared}, run_dir=str(run_dir))
    exec(next(c for c in code if "config = load_config(preset" in c), scope)
    return scope["config"], {k for k in params if k in declared}


@pytest.mark.parametrize("path", PARAMS, ids=[p.stem for p in PARAMS])
def test_chapter_04_trains_the_preset_plus_what_the_params_file_sets(path, tmp_path):
    params = load_params(path)
    config, passed = chapter_04_config(params, tmp_path)
    preset = load_config(params.get("preset", "cpu")).flat()
    changed = {k for k, v in config.flat().items() if v != preset[k]}
    allowed = (passed & set(FIELD_SECTION)) | {"output_dir"}
    assert changed <= allowed, f"{path.name} changes {sorted(changed - allowed)} behind the reader's back"
    for key in passed & set(FIELD_SECTION):
        assert config.flat()[key] == params[key]
    if "output_dir" not in params:  # training output follows the run folder (-p run_dir ../runs/mine moves it)
        assert config.train.output_dir == str(tmp_path / "train")


@pytest.mark.parametrize("path", sorted((ROOT / "launch" / "configs").glob("*.yaml")), ids=lambda p: p.stem)
def test_each_launch_config_is_its_preset_plus_the_fields_it_lists(path):
    listed = yaml.safe_load(path.read_text())
    preset = listed.pop("preset")
    assert preset in PRESETS
    config = load_config(str(path)).flat()
    expected = load_config(preset).flat()
    for key in config:
        assert config[key] == (listed[key] if key in listed else expected[key]), key
