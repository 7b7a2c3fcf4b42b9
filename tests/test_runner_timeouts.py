"""The notebook runner cannot hang: every cell has a time limit, longer for cells tagged `long`, and a cell past it
stops the run with the notebook and the cell named (nbclient once waited forever on a widget cell)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from grpo_helpers.run_notebooks import NOTEBOOKS_DIR, chapter_notebooks, run


def notebook(folder: Path, name: str, cells: list[tuple[str, list[str]]]) -> Path:
    """A chapter-like notebook on this project's kernel: a parameters cell, then (source, tags) code cells."""
    all_cells = [("seed = 1", ["parameters"]), *cells]
    nb = {"cells": [{"cell_type": "code", "execution_count": None, "id": f"c{i}", "metadata": {"tags": tags},
                     "outputs": [], "source": source} for i, (source, tags) in enumerate(all_cells)],
          "metadata": {"kernelspec": {"display_name": "grpo-notebooks (Python)", "language": "python",
                                      "name": "grpo-notebooks"}, "language_info": {"name": "python"}},
          "nbformat": 4, "nbformat_minor": 5}
    path = folder / name
    path.write_text(json.dumps(nb))
    return path


@pytest.mark.slow  # two kernels start (~10 s)
def test_a_cell_past_its_limit_stops_the_run_naming_it_and_long_cells_get_longer(tmp_path, capsys):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    notebook(folder, "01_patient.ipynb", [("import time\ntime.sleep(4)", ["long"])])
    notebook(folder, "02_stuck.ipynb", [("import time\ntime.sleep(120)  # a stuck widget, say", [])])
    with pytest.raises(SystemExit):
        run({}, out_dir=tmp_path / "run", folder=folder, ordinary_timeout=2, long_timeout=60)
    message = capsys.readouterr().err
    assert "FAILED: 02_stuck.ipynb: a cell ran past its time limit (2 s" in message
    assert "time.sleep(120)" in message and "--only 02" in message
    assert (tmp_path / "run" / "01_patient.ipynb").is_file()  # the long cell took 4 s > 2 s and was allowed


@pytest.mark.slow  # four kernels start (~20 s)
def test_a_chapter_that_trains_nothing_runs_again_after_a_hang_and_one_that_trains_does_not(tmp_path, capsys):
    """The widget hang came once in six runs: a fresh kernel gets past it. A chapter with `long` cells is not run
    again (its half-written run folder would refuse it); it stops with the cell named."""
    folder = tmp_path / "notebooks"
    folder.mkdir()
    hangs_once = (f"import time\nfrom pathlib import Path\nmarker = Path({str(tmp_path / 'tried')!r})\n"
                  f"if not marker.exists():\n    marker.touch()\n    time.sleep(120)  # the first kernel hangs here")
    notebook(folder, "01_widgets.ipynb", [(hangs_once, []), ("print('after the widget')", [])])
    records = run({}, out_dir=tmp_path / "run", folder=folder, ordinary_timeout=3, long_timeout=60)
    assert [r["notebook"] for r in records] == ["01_widgets.ipynb"]
    assert "01_widgets.ipynb: a cell ran past its time limit (3 s) and its kernel was stopped; the chapter trains " \
           "nothing, so it runs again from the start in a fresh kernel (try 2 of 2)" in capsys.readouterr().err
    assert "after the widget" in (tmp_path / "run" / "01_widgets.ipynb").read_text()

    (tmp_path / "tried").unlink()
    notebook(folder, "01_widgets.ipynb", [("print('trains')", ["long"]), (hangs_once, [])])
    with pytest.raises(SystemExit):
        run({}, out_dir=tmp_path / "run2", folder=folder, ordinary_timeout=3, long_timeout=60)
    message = capsys.readouterr().err
    assert "FAILED: 01_widgets.ipynb: a cell ran past its time limit (3 s" in message
    assert "runs again" not in message


def test_the_chapters_tag_their_training_cells_long():
    """A training or large-evaluation cell under the ordinary limit would stop `make demo` on a slow machine."""
    for chapter in chapter_notebooks(NOTEBOOKS_DIR):
        for cell in json.loads(chapter.read_text())["cells"]:
            source = "".join(cell["source"])
            if cell["cell_type"] == "code" and (".train()" in source or "evaluate_tiers(" in source):
                assert "long" in cell["metadata"].get("tags", []), f"{chapter.name}: untagged cell\n{source[:200]}"
