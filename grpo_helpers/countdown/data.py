"""Countdown rows: validation, loading (generated, a file, or a hub set), a deterministic train/test split, and
JSON-lines files written atomically. The game itself (rules, generator, solver) is in `game.py`."""

from __future__ import annotations

import ast
import csv
import json
import os
import random
import tempfile
from numbers import Integral
from pathlib import Path
from typing import Any

from grpo_helpers.checks import require_int
from grpo_helpers.countdown.game import generate_countdown, generate_tiers, require_task, task_key
from grpo_helpers.errors import MissingFileError

FILE_TYPES = (".jsonl", ".json", ".parquet", ".csv")
HUB_EXAMPLE = "Jiayi-Pan/Countdown-Tasks-3to4"


def validate_rows(rows: Any) -> list[dict]:
    """Check every row and return clean copies `{"nums": [int, ...], "target": int, "solution": str | None}`.
    A bad row raises ValueError naming its index, the field and the value; no row is ever silently dropped."""
    if not isinstance(rows, (list, tuple)):
        raise ValueError(f"rows must be a list of dicts, got {type(rows).__name__}")
    clean = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"row {i}: expected a dict with 'nums' and 'target', got {type(row).__name__}: {row!r}")
        for name in ("nums", "target"):
            if name not in row:
                raise ValueError(f"row {i}: missing field {name!r} (row has {sorted(row)})")
        nums, target = require_task(row["nums"], row["target"], row=i)
        solution = row.get("solution")
        if solution is not None and not isinstance(solution, str):
            raise ValueError(f"row {i}: field 'solution'={solution!r} is not allowed: a string or None")
        clean_row = {"nums": nums, "target": target, "solution": solution}
        for name, kind in (("tier", str), ("num_solutions", Integral)):  # difficulty, when the row carries it
            if row.get(name) is not None:
                if not isinstance(row[name], kind) or isinstance(row[name], bool):
                    raise ValueError(f"row {i}: field {name!r}={row[name]!r} is not allowed: a {kind.__name__} or None")
                clean_row[name] = row[name]
        clean.append(clean_row)
    return clean


def _parse_nums_text(rows: list[dict]) -> list[dict]:
    """CSV stores a list column as text like "[1, 2, 3]": parse it as a literal (never eval)."""
    out = []
    for i, row in enumerate(rows):
        nums = row.get("nums")
        if isinstance(nums, str):
            try:
                nums = ast.literal_eval(nums.strip())
            except (ValueError, SyntaxError) as err:
                raise ValueError(f"row {i}: field 'nums'={row['nums']!r} is not a list literal like [1, 2, 3]") from err
        out.append({**row, "nums": nums})
    return out


def load_countdown(source: str = "generated", *, num_tasks: int | None = None,
                   sizes: tuple[int, ...] | list[int] = (3, 4), max_number: int = 99, seed: int = 42,
                   tiers: list[str] | tuple[str, ...] = ()) -> list[dict]:
    """Validated task rows from `"generated"` (num_tasks or 20,000 made locally, by `tiers` when given, else by
    sizes/max_number), a .jsonl/.json/.parquet/.csv file, or a hub dataset id (needs network). `num_tasks` keeps
    the first N rows of a file or hub set."""
    if num_tasks is not None:
        require_int("num_tasks", num_tasks, 1)
    if not isinstance(source, str) or not source.strip():
        raise ValueError(f"source={source!r} is not allowed: 'generated', a .jsonl/.json/.parquet/.csv path or a hub id")
    if source == "generated" and tiers:
        return generate_tiers(num_tasks or 20_000, tiers=list(tiers), seed=seed)
    if source == "generated":
        return generate_countdown(num_tasks or 20_000, sizes=sizes, max_number=max_number, seed=seed)

    path = Path(source).expanduser()
    suffix = path.suffix.lower()
    if path.is_dir():
        raise ValueError(f"dataset {source!r} is a folder: give one {'/'.join(FILE_TYPES)} file inside it, "
                         f"'generated', or a hub id such as {HUB_EXAMPLE!r}")
    if suffix in FILE_TYPES or _looks_like_path(source) or "/" not in source:
        if not path.is_file():  # a bare name ("mydata") is a file that is not there, never a hub id to retry for
            raise MissingFileError(f"dataset file {str(path)!r} does not exist (resolved: {path.resolve()}); a hub "
                                   f"dataset is named owner/name, e.g. {HUB_EXAMPLE!r}")
        if suffix not in FILE_TYPES:
            raise ValueError(f"dataset file {str(path)!r} has the type {suffix or '(none)'!r}: use "
                             f"{'/'.join(FILE_TYPES)}")
        rows = _read_rows(path)
        if not rows:
            raise ValueError(f"dataset file {str(path)!r} holds no rows")
    else:
        import datasets  # heavy import, only when the hub is read

        try:
            table = datasets.load_dataset(source, split="train")
        except Exception as err:  # offline, unknown id, gated: the library's own error is kept as the cause
            raise RuntimeError(
                f"could not load dataset {source!r} from the Hugging Face hub ({type(err).__name__}: {err}). "
                f"Without network access use dataset='generated' (solvable tasks made locally) or a local "
                f".jsonl/.json/.parquet/.csv file; with network a hub id looks like {HUB_EXAMPLE!r}."
            ) from err
        rows = table.to_list()
    return validate_rows(rows[:num_tasks] if num_tasks is not None else rows)


def _looks_like_path(source: str) -> bool:
    """A local file name rather than a hub id ("owner/name"): it exists, starts like a path, or has a file type
    without an owner ("data.txt")."""
    return (Path(source).expanduser().exists() or source.startswith((".", "/", "~"))
            or ("/" not in source and Path(source).suffix != ""))


def _read_rows(path: Path) -> list[dict]:
    """Rows of a local file with each value's own type (a table reader would turn a whole column into floats
    for one float, hiding the row). CSV holds only text: `nums` is parsed as a list literal and whole-number
    text in `target`/`num_solutions` is read as an integer."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return load_jsonl(path)
    if suffix == ".json":
        text = path.read_text()
        try:
            rows = json.loads(text) if text.strip() else []
        except json.JSONDecodeError:
            return load_jsonl(path)  # JSON lines under a .json name
        if not isinstance(rows, list):
            raise ValueError(f"{path} must hold a list of task objects (or one object per line)")
        return rows
    if suffix == ".csv":
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        for row in rows:
            for name in ("target", "num_solutions"):
                if isinstance(row.get(name), str) and row[name].strip().isdigit():
                    row[name] = int(row[name])
            if row.get("solution") == "":
                row["solution"] = None
        return _parse_nums_text(rows)
    import datasets  # parquet: typed columns

    return datasets.load_dataset("parquet", data_files=str(path), split="train").to_list()


def train_test_split(rows: list[dict], *, test_size: int, seed: int = 42) -> tuple[list[dict], list[dict]]:
    """Deterministic shuffle-then-cut: (train, test); the same rows and seed always give the same split.

    Rows with a `tier` are split tier by tier (test_size shared evenly), so every tier has its own held-out set.
    Test tasks are distinct games, and training rows that are the same game as a test row (`task_key`) are
    dropped, so no test task is ever trained on: len(rows) - len(train) - len(test) says how many."""
    require_int("test_size", test_size, 1)
    if test_size >= len(rows):
        raise ValueError(f"test_size={test_size} is not allowed: it must be smaller than the {len(rows)} rows "
                         f"(the rest is the training split)")
    by_tier: dict[Any, list[dict]] = {}
    for row in rows:
        by_tier.setdefault(row.get("tier"), []).append(row)
    train, test = [], []
    held_out: set[tuple] = set()  # distinct games only, across tiers too: a repeated test task would count twice
    for index, tier_rows in enumerate(by_tier.values()):
        share = test_size // len(by_tier) + (index < test_size % len(by_tier))
        order = list(range(len(tier_rows)))
        random.Random(seed).shuffle(order)
        picked = 0
        for cut, i in enumerate(order):
            if picked == share:
                break
            if task_key(tier_rows[i]) not in held_out:
                held_out.add(task_key(tier_rows[i]))
                test.append(tier_rows[i])
                picked += 1
        else:
            cut = len(order)
        train += [tier_rows[i] for i in order[cut:]]
    return [row for row in train if task_key(row) not in held_out], test


def load_split(data_config, *, seed: int) -> tuple[list[dict], list[dict]]:  # data_config: config.DataConfig
    """(train, test) exactly as a run with this data config and seed makes them when not given a split."""
    rows = load_countdown(data_config.dataset, num_tasks=data_config.num_tasks, sizes=tuple(data_config.task_sizes),
                          max_number=data_config.max_number, seed=seed, tiers=data_config.tiers)
    return train_test_split(rows, test_size=data_config.test_size, seed=seed)


def held_out_tier(n: int, *, tier: str, train: list[dict], seed: int = 99) -> list[dict]:
    """`n` tasks of a tier no run trained on (e.g. "seed", the hub set's shape), none equal to a training task: a
    held-out set for a tier the split does not hold."""
    require_int("n", n, 1)
    seen = {task_key(row) for row in train}
    rows = [row for row in generate_tiers(2 * n, tiers=[tier], seed=seed) if task_key(row) not in seen][:n]
    if len(rows) < n:  # the tier is mostly inside the training tasks: fewer tasks would judge silently less
        raise ValueError(f"only {len(rows)} of {2 * n} {tier!r} tasks are not training tasks: choose a harder tier")
    return rows


def save_jsonl(rows: list[dict], path: str | Path) -> None:
    """One JSON object per line, written to a temp file then renamed, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_jsonl(path: str | Path) -> list[dict]:
    """Rows written by save_jsonl (blank lines skipped); a bad line raises ValueError with its line number."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"jsonl file {str(path)!r} does not exist")
    rows = []
    with path.open() as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{number}: not valid JSON ({err.msg}): {line[:80]!r}") from err
    return rows


__all__ = ["validate_rows", "load_countdown", "train_test_split", "load_split", "held_out_tier", "save_jsonl", "load_jsonl", "FILE_TYPES", "HUB_EXAMPLE"]
