"""One recipe in one place: a parameter set reaches each chapter as the preset plus only what the set says.

A parameter set is a folder of per-chapter files (params/<set>/NN.yaml), each holding only names its chapter
declares, so that plain `papermill -f` has nothing unknown to warn about and a reader's typo is the one warning. Only
names that mean the same thing everywhere may be declared by two chapters, and within a set they carry one value.
Chapter 04 builds its training config from the preset and the reader's overrides: run through each set, that config
differs from the preset only where the set says so.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from grpo_helpers.config import FIELD_SECTION, PRESETS, load_config
from grpo_helpers.run_notebooks import NOTEBOOKS_DIR, chapter, chapter_notebooks, declared_parameters, load_params

ROOT = Path(__file__).resolve().parent.parent
PARAMS = sorted(p for p in (ROOT / "params").iterdir() if p.is_dir())
CHAPTER_FILES = sorted((ROOT / "params").glob("*/*.yaml"))
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


def test_the_sets_hold_only_chapter_files():
    assert {p.name for p in PARAMS} == {"cpu", "gpu", "smoke"}
    assert not list((ROOT / "params").glob("*.yaml")), "a flat file next to the sets would give papermill unknown names"
    chapters = {chapter(nb) for nb in chapter_notebooks()}
    assert {p.stem for p in CHAPTER_FILES} <= chapters, [p for p in CHAPTER_FILES if p.stem not in chapters]


@pytest.mark.parametrize("path", CHAPTER_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_plain_papermill_finds_nothing_unknown_in_a_chapter_file(path):
    """What papermill would warn about with `-f` this file: the names the chapter's parameters cell lacks."""
    notebook = next(nb for nb in chapter_notebooks() if chapter(nb) == path.stem)
    unknown = set(yaml.safe_load(path.read_text())) - set(declared_parameters(notebook))
    assert unknown == set(), f"{path.relative_to(ROOT)} sets {sorted(unknown)}, which {notebook.name} does not declare"


@pytest.mark.parametrize("path", PARAMS, ids=lambda p: p.name)
def test_a_set_gives_a_shared_name_one_value(path):
    values = defaultdict(dict)
    for file in sorted(path.glob("*.yaml")):
        for name, value in yaml.safe_load(file.read_text()).items():
            values[name][file.name] = value
    differing = {name: by_file for name, by_file in values.items() if len(set(map(repr, by_file.values()))) > 1}
    assert differing == {}, f"{path.name}: chapters disagree on {differing}"


def readme_papermill_example() -> list[str]:
    """The README's `papermill ... -f ../params/...` line (run from notebooks/), as arguments."""
    lines = [line for line in (ROOT / "README.md").read_text().splitlines()
             if line.startswith("papermill ") and " -f ../params/" in line]
    assert len(lines) == 1, lines
    return shlex.split(lines[0])


@pytest.mark.parametrize(("misspelt", "warned"), [(False, []), (True, ["max_step"])], ids=["as-written", "typo"])
def test_the_readme_papermill_example_warns_about_the_readers_typo_alone(misspelt, warned, tmp_path):
    command = readme_papermill_example()
    assert command[:2] == ["papermill", "04_single_node_training.ipynb"] and "max_steps" in command
    if misspelt:
        command[command.index("max_steps")] = "max_step"
    command[2] = str(tmp_path / "out.ipynb")
    result = subprocess.run([sys.executable, "-m", *command, "--prepare-only"], cwd=NOTEBOOKS_DIR,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    prefix = "Passed unknown parameter: "
    found = [line.split(prefix, 1)[1] for line in (result.stdout + result.stderr).splitlines() if prefix in line]
    assert found == warned


def write_set(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


@pytest.mark.parametrize(("files", "message"), [
    ({"04.yaml": "preset: cpu\nlive_steps: 1\n"},
     r"unknown parameter 'live_steps' \(.*04\.yaml\): 04_single_node_training\.ipynb does not declare it"),
    ({"04.yaml": "max_step: 3\n"}, r"unknown parameter 'max_step' .*; did you mean 'max_steps'\?"),
    ({"99.yaml": "seed: 1\n"}, r"99\.yaml: no chapter 99; a parameter set holds one NN\.yaml per chapter"),
    ({"04.yaml": "- 3\n"}, r"04\.yaml must hold a mapping of parameter names to values, not a list"),
    ({}, r"a folder without any NN\.yaml chapter file"),
])
def test_the_runner_refuses_a_set_papermill_would_run_on_with_defaults(files, message, tmp_path):
    with pytest.raises(SystemExit, match=message):
        load_params(write_set(tmp_path / "mine", files))


def test_the_runner_points_an_old_flat_path_at_its_folder():
    with pytest.raises(SystemExit, match=r"params/cpu\.yaml does not exist; parameter sets are folders of per-chapter "
                                         r"files: did you mean .*params/cpu\?"):
        load_params(ROOT / "params" / "cpu.yaml")


@pytest.mark.parametrize("path", PARAMS, ids=lambda p: p.name)
def test_the_runner_gives_each_chapter_what_plain_papermill_would(path):
    assert load_params(path) == {file.stem: yaml.safe_load(file.read_text()) for file in path.glob("*.yaml")}


def test_a_flat_file_reaches_each_chapter_with_the_names_it_declares(tmp_path):
    flat = tmp_path / "mine.yaml"
    flat.write_text("seed: 7\nmax_steps: 3\nlive_steps: 1\n")
    params = load_params(flat)
    assert params["04"] == {"seed": 7, "max_steps": 3} and params["07"] == {"seed": 7, "live_steps": 1}
    assert params["02"] == {"seed": 7}


@pytest.mark.parametrize("path", PARAMS, ids=lambda p: p.name)
def test_chapter_04_trains_the_preset_plus_what_the_params_file_sets(path, tmp_path):
    params = load_params(path)["04"]
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
