"""The notebooks stay runnable and clean: hygiene checks, papermill runs in order, and nbval on prepared copies."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import papermill
import pytest

from grpo_helpers.run_notebooks import (NOTEBOOKS_DIR, chapter, chapter_notebooks, declared_parameters, load_params,
                                       run, safe_to_run_again, shared_paths)

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = chapter_notebooks()
SMOKE = load_params(ROOT / "params" / "smoke")


def code_cells(notebook: Path) -> list[dict]:
    return [c for c in json.loads(notebook.read_text())["cells"] if c["cell_type"] == "code"]


def test_there_are_notebooks():
    assert [p.name[:2] for p in NOTEBOOKS] == sorted(p.name[:2] for p in NOTEBOOKS) and len(NOTEBOOKS) >= 1


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_exactly_one_parameters_cell(notebook):
    tagged = [c for c in code_cells(notebook) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{notebook.name} has {len(tagged)} cells tagged 'parameters'"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs(notebook):
    dirty = [i for i, c in enumerate(code_cells(notebook)) if c.get("outputs") or c.get("execution_count")]
    assert not dirty, f"{notebook.name}: code cells {dirty} carry outputs or execution counts"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_shell_escapes(notebook):
    """A `!cmd` line's failure does not fail its cell, so papermill would report success on a broken step."""
    for cell in code_cells(notebook):
        source = "".join(cell["source"])
        assert not re.search(r"^\s*!", source, re.M), f"{notebook.name} has a '!' shell line:\n{source}"
        assert "get_ipython().system" not in source and "%%bash" not in source and "%%sh" not in source


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_parameters_have_plain_literal_defaults(notebook):
    for name, default in declared_parameters(notebook).items():
        assert default not in (None, ""), f"{notebook.name}: parameter {name} has no default"


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """All chapters in order under the smoke parameters, in one run folder (artifacts flow between chapters)."""
    out = tmp_path_factory.mktemp("smoke_run")
    records = run(SMOKE, out_dir=out)
    return out, records


@pytest.mark.slow
@pytest.mark.timeout(30 * 60)  # the smoke run of all chapters, set up here: ~300 s on an idle 2-core machine
def test_every_notebook_runs_under_papermill(smoke_run):
    out, records = smoke_run
    assert [r["notebook"] for r in records] == [p.name for p in NOTEBOOKS]
    for record in records:
        executed = json.loads(Path(record["output"]).read_text())
        errors = [o for c in executed["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
        assert not errors
    assert (out / "data" / "train.jsonl").is_file() and (out / "data" / "test.jsonl").is_file()


NBVAL_NOTEBOOKS = [notebook for notebook in NOTEBOOKS if safe_to_run_again(notebook)]


def test_nbval_covers_the_chapters_that_train_nothing():
    assert [chapter(notebook) for notebook in NBVAL_NOTEBOOKS] == ["01", "02", "03"]


@pytest.mark.slow
@pytest.mark.timeout(30 * 60)  # sets up the smoke run when run alone (-k nbval)
def test_nbval_lax_on_prepared_notebooks(tmp_path, smoke_run):
    """`pytest --nbval-lax` works on copies that papermill --prepare-only wrote with the smoke values (nbval cannot
    inject parameters). The committed chapters carry no outputs, so nbval can only check that every cell runs, which
    the papermill run above checks for every chapter; here it runs the chapters that train nothing (no `long` cell),
    so that the suite does not train every chapter twice (4 of its 25 minutes on a fresh clone)."""
    run_dir, _ = smoke_run  # reuse the smoke run's artifacts (data split) so the copies find them
    for notebook in NBVAL_NOTEBOOKS:
        declared = declared_parameters(notebook)
        params = dict(SMOKE.get(chapter(notebook), {}))
        params.update(shared_paths(declared, run_dir / "nbval"))
        papermill.execute_notebook(str(notebook), str(tmp_path / notebook.name), parameters=params,
                                   prepare_only=True, progress_bar=False)
    result = subprocess.run([sys.executable, "-m", "pytest", "--nbval-lax", "-q", "-p", "no:cacheprovider",
                             *sorted(str(p) for p in tmp_path.glob("*.ipynb"))],
                            cwd=NOTEBOOKS_DIR, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_run_summary_reports_time_reward_curve_and_base_vs_tuned(tmp_path):
    from grpo_helpers.run_notebooks import write_summary

    (tmp_path / "train").mkdir()
    rows = [{"step": i, "reward": 0.1 * i, "frac_reward_zero_std": 0.25, "kl": 0.0, "completions/mean_length": 50,
             "completions/clipped_ratio": 0.5, "time/step": 30.0, "rewards/format/mean": 0.1} for i in range(1, 7)]
    (tmp_path / "train" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "train" / "eval.jsonl").write_text(json.dumps(
        {"step": 0, "eval/accuracy": 0.0, "eval/format_rate": 0.1, "eval/mean_length": 90}) + "\n")
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "comparison.json").write_text(json.dumps(
        {"tasks": 32, "samples_per_task": 2, "base": {"tasks": 32, "accuracy": 0.0, "format_rate": 0.25},
         "tuned": {"tasks": 32, "accuracy": 0.0625, "format_rate": 0.5}}))
    (tmp_path / "eval" / "own_task.json").write_text(json.dumps(
        {"task": "largest", "held_out": 200, "steps": 24, "train_minutes": 5.2, "base": 0.285, "base_ci": [0.227, 0.351],
         "after": 0.805, "after_ci": [0.745, 0.854], "paired": {"only_after": 108, "only_before": 4, "p_value": 2.5e-27}}))
    records = [{"notebook": "04_single_node_training.ipynb", "seconds": 120.0, "output": "x/04.ipynb", "figures": 3}]
    text = write_summary(records, tmp_path, "params/cpu.yaml").read_text()
    assert "on 200 questions 0.285 [0.227, 0.351] -> 0.805 [0.745, 0.854]; right only after 108, only before 4" in text
    assert "Total time: 2.0 min" in text and "| 04_single_node_training.ipynb | 120 | 3 |" in text
    assert "6 steps in 3.0 min; mean reward of the first 2 steps 0.150 -> last 2 steps 0.550" in text
    assert "step 0: 0.000 (format 0.100)" in text
    assert "| accuracy | 0.000 | 0.062 |" in text and "| format_rate | 0.250 | 0.500 |" in text
    assert (tmp_path / "reward_curve.png").stat().st_size > 10_000 and "![reward curve](reward_curve.png)" in text
