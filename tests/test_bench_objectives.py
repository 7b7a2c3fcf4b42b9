"""bench/objectives.py end to end at smoke sizes: it writes one JSON line per run and a figure, a second call resumes
(skips what is done), and a results file of another matrix is refused, never overwritten."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def bench(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "bench" / "objectives.py"), "--smoke", "--seeds", "1",
                           "--eval-tasks", "2", "--results", str(tmp_path / "matrix.jsonl"),
                           "--figure", str(tmp_path / "matrix.png"), "--work", str(tmp_path / "work"), *extra],
                          capture_output=True, text=True, cwd=ROOT, timeout=900)


@pytest.mark.slow
def test_the_matrix_runs_resumes_and_refuses_another_matrix(tmp_path):
    first = bench(tmp_path, "--steps", "1", "--arms", "dapo", "cispo")
    assert first.returncode == 0, first.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "matrix.jsonl").read_text().splitlines()]
    assert [row["arm"] for row in rows] == ["start", "dapo", "cispo"]
    assert all(set(row["eval"]) == {"3x10", "3x20"} for row in rows)
    assert rows[1]["switch"] == {} and rows[2]["switch"] == {"loss_type": "cispo"}
    assert (tmp_path / "matrix.png").stat().st_size > 0
    summary = json.loads(first.stdout.strip().splitlines()[-1])
    assert [(row["arm"], row["tier"]) for row in summary["summary"]] == [("dapo", "3x10"), ("dapo", "3x20"),
                                                                         ("cispo", "3x10"), ("cispo", "3x20")]

    again = bench(tmp_path, "--steps", "1", "--arms", "dapo", "cispo", "gspo")  # only gspo is new
    assert again.returncode == 0, again.stderr[-3000:]
    arms = [json.loads(line)["arm"] for line in (tmp_path / "matrix.jsonl").read_text().splitlines()]
    assert arms == ["start", "dapo", "cispo", "gspo"]

    before = (tmp_path / "matrix.jsonl").read_text()
    other = bench(tmp_path, "--steps", "2", "--arms", "dapo")
    assert other.returncode != 0 and "holds a matrix with other settings" in other.stderr
    assert (tmp_path / "matrix.jsonl").read_text() == before
