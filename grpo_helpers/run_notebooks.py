"""Run the tutorial headlessly: every chapter notebook in order, with one parameter set, into runs/<timestamp>/.

    python -m grpo_helpers.run_notebooks --params params/cpu            # what `make demo` runs
    python -m grpo_helpers.run_notebooks --params params/smoke --only 01 02 -p seed 7

A parameter set is a folder with one file per chapter, params/<set>/NN.yaml for NN_*.ipynb, holding only names that
chapter declares in its `parameters` cell: the same file works with plain `papermill -f`, which then has nothing
unknown to warn about. A chapter without a file runs on its defaults. Your own single flat file works too: each
chapter receives the names it declares. Every chapter also receives `run_dir` (the run folder, shared by all chapters
so that the data split, the adapter and the figures flow from one chapter to the next). A name that no chapter it
reaches declares is refused before anything runs (papermill would only log a warning and run on with the default).
A failing cell stops the run with the notebook and cell named; the partially executed notebook is kept. No cell can
hang the run: each has a time limit, `--cell-timeout` (15 min) for ordinary cells (a widget cell once hung for good
in nbclient, kernel idle), `--long-cell-timeout` (4 h) for the cells tagged `long` (training, large evaluations).
A chapter with no `long` cell trains nothing and rewrites only what a second run would, so after a cell past its
limit it runs once more from the start in a fresh kernel (that hang came once in six runs); a chapter that trains
stops with the cell named, since running it again would meet its own half-written run folder.
"""

from __future__ import annotations

import argparse
import base64
import difflib
import json
import sys
import time
from datetime import datetime
from functools import partial
from queue import Empty
from pathlib import Path
from typing import Any

import yaml
from jupyter_client.asynchronous import AsyncKernelClient
from jupyter_client.channels import AsyncZMQSocketChannel
from jupyter_client.manager import AsyncKernelManager
from traitlets import Type

from grpo_helpers.yaml_values import command_line_value, load_yaml

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"
CELL_TIMEOUT = 15 * 60  # seconds for an ordinary cell: the slowest of them takes ~2 min on the slowest CPU
LONG_CELL_TIMEOUT = 4 * 3600  # seconds for a cell tagged `long`: chapter 04's GRPO takes ~25 min on the slowest CPU


WAKE_UP_EVERY = 1.0  # seconds between fresh looks at a kernel channel while waiting for a message


class PolledChannel(AsyncZMQSocketChannel):
    """A kernel channel that waits in slices of WAKE_UP_EVERY. asyncio sometimes misses ZMQ's wake-up for a message
    already in the socket; nbclient then sleeps out the cell's whole time limit although the cell has finished
    (bench/soak_notebooks.py: chapter 02's widget cell replied in 30 ms, its reply was read 900 s later, once in 12
    runs under load; issue 32's "hang", nbclient issue 312). A fresh poll sees the waiting message, so a missed
    wake-up costs at most a slice."""

    async def get_msg(self, timeout: float | None = None) -> dict[str, Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                return await super().get_msg(timeout=WAKE_UP_EVERY if left is None else min(WAKE_UP_EVERY, left))
            except Empty:
                if left is not None and left <= WAKE_UP_EVERY:
                    raise


class PolledKernelClient(AsyncKernelClient):
    """nbclient's kernel client with the replies and outputs read through PolledChannel."""

    shell_channel_class = Type(PolledChannel)
    iopub_channel_class = Type(PolledChannel)


class PolledKernelManager(AsyncKernelManager):
    """The kernel manager papermill is given (`kernel_manager_class`), so that its client is a PolledKernelClient."""

    client_factory = Type(klass=PolledKernelClient)  # AsyncKernelManager builds its clients with this, not client_class


def chapter(notebook: Path) -> str:
    """The chapter's number: the name of its file in a parameter set (params/cpu/04.yaml for 04_*.ipynb)."""
    return notebook.name[:2]


def chapter_notebooks(folder: Path = NOTEBOOKS_DIR, only: list[str] | None = None) -> list[Path]:
    """Chapter notebooks (NN_name.ipynb) in order; `only` keeps those whose name starts with a given prefix."""
    found = sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb"))
    if only:
        found = [p for p in found if any(p.name.startswith(prefix) for prefix in only)]
        if not found:
            raise SystemExit(f"--only {' '.join(only)} matches no notebook in {folder}")
    return found


def declared_parameters(notebook: Path) -> dict[str, Any]:
    """Names and defaults in the notebook's `parameters` cell (papermill's own inspection)."""
    import papermill

    return {name: info["default"] for name, info in papermill.inspect_notebook(str(notebook)).items()}


def check_parameter_names(names: dict[str, str], notebooks: list[Path]) -> None:
    """Every name (-> where it came from) must be declared by one of `notebooks`: a typo is refused with the close
    match, never dropped while the run goes on with the default."""
    declared = set().union(*(declared_parameters(nb) for nb in notebooks))
    unknown = [name for name in names if name not in declared]
    if unknown:
        nobody, who = (("no chapter declares it", "the chapters declare") if len(notebooks) > 1 else
                       (f"{notebooks[0].name} does not declare it", f"{notebooks[0].name} declares"))
        lines = []
        for name in unknown:
            close = difflib.get_close_matches(name, sorted(declared), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            lines.append(f"unknown parameter {name!r} ({names[name]}): {nobody}{hint}")
        raise SystemExit("\n".join(lines) + f"\nparameters {who}: {', '.join(sorted(declared))}")


def read_mapping(path: Path) -> dict[str, Any]:
    try:
        values = load_yaml(path.read_text()) or {}  # `lr: 5e-7` is a number, as typed
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f" line {where.line + 1}" if where is not None else ""
        raise SystemExit(f"{path}{line} is not valid YAML ({getattr(error, 'problem', None) or error}): write one "
                         f"`name: value` per line") from None
    if not isinstance(values, dict):
        raise SystemExit(f"{path} must hold a mapping of parameter names to values, not a {type(values).__name__}")
    return values


def load_params(path: str | Path, notebooks: list[Path] | None = None) -> dict[str, dict[str, Any]]:
    """Each chapter's parameters (chapter number -> name -> value) from a parameter-set folder or one flat file,
    every name checked against the chapters it reaches (see the module docstring)."""
    path = Path(path)
    notebooks = chapter_notebooks() if notebooks is None else notebooks
    if path.is_file():
        values = read_mapping(path)
        check_parameter_names({name: str(path) for name in values}, notebooks)
        return {chapter(nb): {k: v for k, v in values.items() if k in declared_parameters(nb)} for nb in notebooks}
    if not path.is_dir():
        folder = path.with_suffix("")
        hint = f"; parameter sets are folders of per-chapter files: did you mean {folder}?" if folder.is_dir() else ""
        raise SystemExit(f"--params {path} does not exist{hint}")
    by_chapter = {chapter(nb): nb for nb in notebooks}
    params = {}
    for file in sorted(path.glob("*.yaml")):
        if file.stem not in by_chapter:
            raise SystemExit(f"{file}: no chapter {file.stem}; a parameter set holds one NN.yaml per chapter "
                             f"notebook NN_*.ipynb, NN one of {', '.join(by_chapter)}")
        values = read_mapping(file)
        check_parameter_names({name: str(file) for name in values}, [by_chapter[file.stem]])
        params[file.stem] = values
    if not params:
        raise SystemExit(f"--params {path}: a folder without any NN.yaml chapter file")
    return params


def export_figures(executed: Path, folder: Path) -> list[Path]:
    """Every PNG a notebook displayed, written as files (people would rather look than read)."""
    folder.mkdir(parents=True, exist_ok=True)
    cells = json.loads(executed.read_text())["cells"]
    written = []
    for index, cell in enumerate(cells):
        for number, output in enumerate(cell.get("outputs", [])):
            png = output.get("data", {}).get("image/png")
            if png:
                path = folder / f"{executed.stem}_cell{index:02d}_{number}.png"
                path.write_bytes(base64.b64decode(png if isinstance(png, str) else "".join(png)))
                written.append(path)
    return written


def shared_paths(declared: dict[str, Any], out_dir: Path) -> dict[str, str]:
    """The run folder (and chapter 04's training folder inside it) for every notebook that declares them."""
    paths = {"run_dir": str(out_dir), "output_dir": str(out_dir / "train")}
    return {name: value for name, value in paths.items() if name in declared}


def cell_timeout(cell: dict[str, Any], *, ordinary: float, long: float) -> float:
    """A cell's time limit: `long` for cells tagged `long` (training, large evaluations), else `ordinary`."""
    return long if "long" in cell.get("metadata", {}).get("tags", []) else ordinary


def safe_to_run_again(notebook: Path) -> bool:
    """A chapter without `long` cells (no training, no large evaluation) may run again from the start."""
    cells = json.loads(notebook.read_text())["cells"]
    return not any("long" in cell.get("metadata", {}).get("tags", []) for cell in cells)


def run(params: dict[str, dict[str, Any]], *, out_dir: Path, only: list[str] | None = None,
        folder: Path = NOTEBOOKS_DIR, ordinary_timeout: float = CELL_TIMEOUT,
        long_timeout: float = LONG_CELL_TIMEOUT) -> list[dict[str, Any]]:
    """Execute the chapters, each with its own parameters (chapter number -> name -> value, as load_params returns);
    returns one record per notebook (name, seconds, output path, figures). A cell past its time limit stops the run
    with the notebook and cell named, like a failing one, unless the chapter is safe to run again: then it runs
    once more in a fresh kernel."""
    import papermill
    from nbclient.exceptions import CellTimeoutError
    from papermill.exceptions import PapermillExecutionError

    out_dir.mkdir(parents=True, exist_ok=True)
    notebooks = chapter_notebooks(folder, only=only)
    records = []
    for number, notebook in enumerate(notebooks, 1):
        declared = declared_parameters(notebook)
        passed = {**params.get(chapter(notebook), {}), **shared_paths(declared, out_dir)}
        print(f"[{number}/{len(notebooks)}] {notebook.name}  ({', '.join(f'{k}={v}' for k, v in passed.items())})",
              flush=True)
        executed = out_dir / notebook.name
        start = time.perf_counter()
        tries = 2 if safe_to_run_again(notebook) else 1
        try:
            for attempt in range(1, tries + 1):
                try:
                    papermill.execute_notebook(str(notebook), str(executed), parameters=passed,
                                               cwd=str(notebook.parent), progress_bar=True,
                                               kernel_manager_class=PolledKernelManager,
                                               timeout_func=partial(cell_timeout, ordinary=ordinary_timeout,
                                                                    long=long_timeout))
                    break
                except CellTimeoutError:
                    if attempt == tries:
                        raise
                    print(f"\n{notebook.name}: a cell ran past its time limit ({ordinary_timeout:.0f} s) and its "
                          f"kernel was stopped; the chapter trains nothing, so it runs again from the start in a fresh "
                          f"kernel (try {attempt + 1} of {tries})", file=sys.stderr, flush=True)
        except PapermillExecutionError as error:
            print(f"\nFAILED: {notebook.name}, cell {error.exec_count} raised {error.ename}: {error.evalue}\n"
                  f"The partially executed notebook is kept at {executed}", file=sys.stderr)
            raise SystemExit(1) from None
        except CellTimeoutError as error:
            preview = str(error).split("Here is a preview of the cell contents:")[-1].strip()[:300]
            print(f"\nFAILED: {notebook.name}: a cell ran past its time limit ({ordinary_timeout:.0f} s, or "
                  f"{long_timeout:.0f} s for cells tagged `long`) and was stopped: a hung kernel or widget, or a "
                  f"machine far slower than expected. The cell began:\n{preview}\nRun the chapter again with "
                  f"`--only {chapter(notebook)}`, or raise --cell-timeout / --long-cell-timeout. The partially executed "
                  f"notebook is kept at {executed}", file=sys.stderr)
            raise SystemExit(1) from None
        seconds = time.perf_counter() - start
        figures = export_figures(executed, out_dir / "figures")
        records.append({"notebook": notebook.name, "seconds": round(seconds, 1), "output": str(executed),
                        "figures": len(figures)})
        print(f"      done in {seconds:.0f} s -> {executed} ({len(figures)} figures)", flush=True)
    return records


def training_outcome(out_dir: Path) -> tuple[list[str], Path | None]:
    """Summary lines and a reward-curve PNG from chapter 04's metrics and chapter 06's comparison, when present."""
    from grpo_helpers.dashboard import load_run, plot_metrics
    from grpo_helpers.run_folder import read_json_lines

    lines: list[str] = []
    history, evals = load_run(out_dir / "train")
    curve = None
    if history:
        window = max(1, min(10, len(history) // 3))
        first = sum(m["reward"] for m in history[:window]) / window
        last = sum(m["reward"] for m in history[-window:]) / window
        seconds = sum(m.get("time/step", 0.0) for m in history)
        lines += [f"Training (chapter 04): {len(history)} steps in {seconds / 60:.1f} min; mean reward of the first "
                  f"{window} steps {first:.3f} -> last {window} steps {last:.3f}; groups with zero reward variance "
                  f"{history[0]['frac_reward_zero_std']:.0%} at step 1."]
        if evals:
            lines.append("Held-out accuracy during training: " + ", ".join(
                f"step {e['step']}: {e['eval/accuracy']:.3f} (format {e['eval/format_rate']:.3f})" for e in evals) + ".")
        fig = plot_metrics(history, evals, title=f"{out_dir.name}: chapter 04 training")
        curve = out_dir / "reward_curve.png"
        fig.savefig(curve, dpi=110)
    rows = read_json_lines(out_dir / "train" / "cold_start" / "metrics.jsonl")
    if rows:
        lines.append(f"Cold start (chapter 04): {len(rows)} SFT steps in "
                     f"{sum(r['time/step'] for r in rows) / 60:.1f} min, loss {rows[0]['loss']:.3f} -> "
                     f"{rows[-1]['loss']:.3f}.")
    tiers = out_dir / "eval" / "tiers.json"
    if tiers.is_file():
        data = json.loads(tiers.read_text())
        models = [name for name in data if name != "paired"]
        names = sorted({key.split("/")[1] for m in models for key in data[m] if key.endswith("/accuracy_low")})
        lines += ["", "Held-out greedy accuracy per tier (chapter 06, Wilson 95 %):", "",
                  "| model | " + " | ".join(names) + " | uses the numbers | same answer, other numbers |",
                  "| --- |" + " ---: |" * (len(names) + 2)]
        for m in models:
            cells = [f"{data[m][f'eval/{t}/accuracy']:.3f} [{data[m][f'eval/{t}/accuracy_low']:.3f}, "
                     f"{data[m][f'eval/{t}/accuracy_high']:.3f}]" for t in names]
            lines.append(f"| {m} | " + " | ".join(cells) +
                         f" | {data[m]['eval/uses_numbers']:.2f} | {data[m]['eval/identical_answers']:.2f} |")
        for tier, test in data.get("paired", {}).items():
            lines.append(f"\n{tier}: GRPO alone solves {test['only_after']}, the cold start alone "
                         f"{test['only_before']} (exact sign test p = {test['p_value']:.2g}).")
    comparison = out_dir / "eval" / "comparison.json"
    if comparison.is_file():
        data = json.loads(comparison.read_text())
        base, tuned = data["base"], data["tuned"]
        lines += ["", f"Base vs fine-tuned (chapter 06, {data['tasks']} held-out tasks x {data['samples_per_task']} "
                      "samples):", "", "| metric | base | fine-tuned |", "| --- | ---: | ---: |"]
        lines += [f"| {key} | {base[key]:.3f} | {tuned[key]:.3f} |" for key in base if key != "tasks"]
    own = out_dir / "eval" / "own_task.json"
    if own.is_file():
        data = json.loads(own.read_text())
        lines += ["", f"Your own task (chapter 08, {data['task']}): pure GRPO from the base model, {data['steps']} steps "
                      f"in {data['train_minutes']:.1f} min; held-out greedy accuracy on {data['held_out']} questions "
                      f"{data['base']:.3f} [{data['base_ci'][0]:.3f}, {data['base_ci'][1]:.3f}] -> {data['after']:.3f} "
                      f"[{data['after_ci'][0]:.3f}, {data['after_ci'][1]:.3f}]; right only after "
                      f"{data['paired']['only_after']}, only before {data['paired']['only_before']} (exact sign test "
                      f"p = {data['paired']['p_value']:.2g})."]
    return lines, curve


def write_summary(records: list[dict[str, Any]], out_dir: Path, params_file: str) -> Path:
    """summary.md in the run folder: time per chapter, what training achieved, and the reward curve."""
    total = sum(r["seconds"] for r in records)
    lines = [f"# Run {out_dir.name}", "", f"Parameters: `{params_file}`. Total time: {total / 60:.1f} min.", "",
             "| notebook | time (s) | figures | executed notebook |", "| --- | ---: | ---: | --- |"]
    lines += [f"| {r['notebook']} | {r['seconds']:.0f} | {r['figures']} | `{Path(r['output']).name}` |" for r in records]
    outcome, curve = training_outcome(out_dir)
    if outcome:
        lines += ["", "## Outcome", "", *outcome]
    if curve is not None:
        lines += ["", f"![reward curve]({curve.name})"]
    path = out_dir / "summary.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params/cpu",
                        help="a parameter set (a folder of per-chapter NN.yaml files), or one flat YAML file")
    parser.add_argument("--out", default=None, help="run folder (default runs/<timestamp>)")
    parser.add_argument("--only", nargs="*", help="notebook name prefixes to run, e.g. 01 02")
    parser.add_argument("--cell-timeout", type=float, default=CELL_TIMEOUT,
                        help="seconds an ordinary cell may run before the run stops with it named")
    parser.add_argument("--long-cell-timeout", type=float, default=LONG_CELL_TIMEOUT,
                        help="seconds a cell tagged `long` (training, large evaluations) may run")
    parser.add_argument("-p", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="override one parameter (the value is read as YAML; 5e-7 is a number)")
    args = parser.parse_args(argv)
    notebooks = chapter_notebooks()
    params = load_params(args.params, notebooks)
    overrides = {name: command_line_value(value, option=f"-p {name}") for name, value in args.p}
    check_parameter_names({name: "-p" for name in overrides}, notebooks)
    for notebook in notebooks:  # an override reaches every chapter that declares the name
        declared = declared_parameters(notebook)
        params[chapter(notebook)] = {**params.get(chapter(notebook), {}),
                                     **{k: v for k, v in overrides.items() if k in declared}}
    out_dir = Path(args.out or Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")).resolve()
    start = time.perf_counter()
    records = run(params, out_dir=out_dir, only=args.only, ordinary_timeout=args.cell_timeout,
                  long_timeout=args.long_cell_timeout)
    summary = write_summary(records, out_dir, args.params)
    print("\n" + summary.read_text())
    print(f"\nAll {len(records)} notebooks ran in {(time.perf_counter() - start) / 60:.1f} min.\n"
          f"  executed notebooks: {out_dir}\n  figures:            {out_dir / 'figures'}\n  summary:            {summary}")


if __name__ == "__main__":
    main()
