"""Can the notebook runner hang? The widget chapters executed again and again on a machine kept busy.

    python bench/soak_notebooks.py --runs 20 --chapters 02 06 --busy 2 --out /tmp/soak
    python bench/soak_notebooks.py --runs 3 --chapters 02 --busy 0       # a quick look on an idle machine

Issue 32: `run_notebooks --only 02` once hung 9.5 min on chapter 02's ipywidgets cell, one run in six, under load
(cell "running", kernel idle). The runner now bounds every cell and runs a chapter that trains nothing again in a
fresh kernel after a cell past its limit. This executes each chapter `--runs` times at smoke sizes
(`params/smoke`) while `--busy` processes multiply matrices beside it (the load of a learner's laptop or of the
test suite), and prints one JSON line per execution (chapter, exit status, seconds, load average, whether the
runner had to run the chapter again, whether this script had to kill it) and a last line with the totals. A run
still going after `--hang-after` seconds is killed and counted as a hang: the runner's own limits should have
stopped it long before. A stall can also end well and hide in `seconds` (the first soak found one: a widget cell's
reply read 900 s late, at its time limit; `run_notebooks.PolledChannel`), so each run also reports `read_late`: the
longest wait, over its code cells, between the kernel's last word on a cell (its reply and its idle status, timestamped
by the kernel) and papermill's record of the cell's end, with that cell's index.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RETRY_SAYS = "runs again from the start"  # run_notebooks' message when a chapter is run once more
BUSY_LOOP = "import torch\nx = torch.randn(512, 512)\nwhile True:\n    x = torch.tanh(x @ x)\n"


def start_busy(count: int) -> list[subprocess.Popen]:
    """`count` single-threaded processes that multiply matrices until killed: a loaded machine, reproducibly."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return [subprocess.Popen([sys.executable, "-c", BUSY_LOOP], env=env) for _ in range(count)]


def read_late(executed: Path) -> dict:
    """The longest delay between the kernel finishing a code cell and the runner recording its end: the time a
    missed wake-up cost (milliseconds when nothing is missed), and the cell it happened on."""
    worst = {"seconds": 0.0, "cell": None}
    if not executed.is_file():
        return worst
    for index, cell in enumerate(json.loads(executed.read_text())["cells"]):
        kernel, runner = cell["metadata"].get("execution", {}), cell["metadata"].get("papermill", {})
        done = [kernel[key] for key in ("shell.execute_reply", "iopub.status.idle") if key in kernel]
        if cell["cell_type"] != "code" or not done or not runner.get("end_time"):
            continue
        late = (datetime.fromisoformat(runner["end_time"]) - max(map(datetime.fromisoformat, done))).total_seconds()
        if late > worst["seconds"]:
            worst = {"seconds": round(late, 3), "cell": index}
    return worst


def execute_once(*, chapter: str, run: int, out: Path, hang_after: float) -> dict:
    """One `run_notebooks --params params/smoke --only <chapter>` in its own run folder, timed and read."""
    folder = out / f"{chapter}-{run}"
    log = out / f"{chapter}-{run}.log"
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    with log.open("w") as sink:
        process = subprocess.Popen([sys.executable, "-m", "grpo_helpers.run_notebooks", "--params", "params/smoke",
                                    "--only", chapter, "--out", str(folder)], cwd=ROOT, stdout=sink,
                                   stderr=subprocess.STDOUT)
        try:
            status, killed = process.wait(timeout=hang_after), False
        except subprocess.TimeoutExpired:
            process.kill()
            status, killed = process.wait(), True
    text = log.read_text(errors="replace")
    return {"chapter": chapter, "run": run, "exit": status, "seconds": round(time.perf_counter() - start, 1),
            "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2),
            "runner_retried": RETRY_SAYS in text, "killed_as_hung": killed,
            "read_late": read_late(next(folder.glob(f"{chapter}_*.ipynb"), folder / "missing")), "log": str(log)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chapters", nargs="+", default=["02", "06"], help="chapter numbers to execute")
    parser.add_argument("--runs", type=int, default=10, help="executions of each chapter")
    parser.add_argument("--busy", type=int, default=2, help="matrix-multiplying processes beside the runs")
    parser.add_argument("--hang-after", type=float, default=3600.0,
                        help="seconds after which a run is killed and counted as a hang")
    parser.add_argument("--out", type=Path, default=Path("/tmp/soak_notebooks"))
    args = parser.parse_args()
    if args.runs < 1 or args.busy < 0:
        parser.error(f"--runs {args.runs} / --busy {args.busy}: need at least one run and zero or more busy processes")
    args.out.mkdir(parents=True, exist_ok=True)
    busy = start_busy(args.busy)
    records = []
    try:
        for run in range(1, args.runs + 1):
            for chapter in args.chapters:
                record = execute_once(chapter=chapter, run=run, out=args.out, hang_after=args.hang_after)
                records.append(record)
                print(json.dumps(record), flush=True)
    finally:
        for process in busy:
            process.kill()
    print(json.dumps({"executions": len(records), "busy_processes": args.busy,
                      "failed": sum(r["exit"] != 0 for r in records),
                      "runner_retried": sum(r["runner_retried"] for r in records),
                      "killed_as_hung": sum(r["killed_as_hung"] for r in records),
                      "most_read_late_seconds": max(r["read_late"]["seconds"] for r in records),
                      "slowest_seconds": {c: max(r["seconds"] for r in records if r["chapter"] == c)
                                          for c in args.chapters}}))


if __name__ == "__main__":
    main()
