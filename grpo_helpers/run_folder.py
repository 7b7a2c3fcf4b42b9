"""One live run per folder, and no run silently mixed into another's files.

A training folder holds one run's logs (metrics, completions, evaluations) and checkpoints. Two trainers writing
to it at once, or a fresh run appending to an old run's logs, would leave files that describe no run at all (and a
later resume would continue the wrong one). So a run takes a lock file naming its process, which a crashed run
cannot leave stuck (a lock whose process is gone is taken over), and a fresh run into a folder that already holds a
run is refused unless the user says to resume it or to overwrite it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import time
import warnings
from pathlib import Path
from typing import Any

from grpo_helpers.checkpoint import list_checkpoints
from grpo_helpers.errors import UsageError

LOCK_FILE = ".run.lock"
LOG_FILES = ("metrics.jsonl", "completions.jsonl", "eval.jsonl")
_HELD: set[Path] = set()  # lock files held by this process (a second trainer in one notebook is refused too)


class RunFolderError(UsageError, RuntimeError):
    """The folder is in use by a live run, or holds a run that this one would overwrite or mix with."""


class LogFileError(UsageError, ValueError):
    """A line of a run's JSON-lines log, other than a torn last one, is not a logged row: resume cannot tell what
    the run did there."""


def json_line(row: dict[str, Any]) -> str:
    """One strict-JSON line: a non-finite number (which JSON cannot hold) is written as null."""
    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value

    return json.dumps(clean(row), allow_nan=False)


def append_json_lines(path: Path, rows: list[dict[str, Any]]) -> None:
    """Append rows and fsync: a line logged is a line kept, whatever kills the process next."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        for row in rows:
            f.write(json_line(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _parse_json_lines(path: Path) -> tuple[list[dict[str, Any]], int | None]:
    """The rows of a JSON-lines file, and the number of its last line when that line is torn (None when whole).

    A process killed mid-write leaves its last line cut short: that line is not a row (it is redone on resume),
    while a damaged line before it means the file was changed by hand or by a fault, and raises naming the line."""
    lines = path.read_bytes().splitlines()
    last = max((number for number, line in enumerate(lines, start=1) if line.strip()), default=0)
    rows: list[dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line.decode("utf-8"))
        except ValueError as error:  # JSONDecodeError and UnicodeDecodeError alike
            if number == last:
                return rows, number
            problem = (f"{error.msg} at column {error.colno}" if isinstance(error, json.JSONDecodeError)
                       else "not UTF-8 text")
            shown = line[:80].decode("utf-8", errors="replace")
            raise LogFileError(f"{path} line {number} of {last} is damaged ({problem}): {shown!r}. Only a last line "
                               f"cut short by a crash is repaired on resume: fix or delete line {number}, or start "
                               f"the run again with overwrite=True") from None
        rows.append(row)
    return rows, None


def read_json_lines(path: Path) -> list[dict[str, Any]]:
    """Every row of a JSON-lines log; [] when there is none. A torn last line (a crash mid-write, or a write in
    progress when a live run is read) is left out; a damaged line elsewhere raises LogFileError naming it."""
    return _parse_json_lines(path)[0] if path.is_file() else []


def keep_lines_up_to(path: Path, step: int) -> None:
    """After a resume, drop the rows a crashed run logged past its last checkpoint (they are redone) and a last
    line torn by the crash, saying so (one line naming the file); atomic."""
    if not path.is_file():
        return
    rows, torn = _parse_json_lines(path)
    kept = [row for row in rows if row["step"] <= step]
    if torn is not None:
        warnings.warn(f"{path}: cut line {torn}, torn by a crash mid-write, and {len(rows) - len(kept)} row(s) "
                      f"logged past step {step}, the checkpoint resumed from (they are redone)", stacklevel=2)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json_line(row) + "\n" for row in kept))
    os.replace(tmp, path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def _holder(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # half-written or unreadable: treated as stale
    return record if isinstance(record, dict) and isinstance(record.get("pid"), int) else None


class RunLock:
    """The lock file of a live run: `release()` (or leaving the `with` block) removes it."""

    def __init__(self, folder: str | Path):
        self.path = Path(folder) / LOCK_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        host = socket.gethostname()
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                self._check_stale(host)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump({"pid": os.getpid(), "host": host, "started": time.strftime("%Y-%m-%d %H:%M:%S")}, f)
            _HELD.add(self.path.resolve())
            return
        raise RunFolderError(f"could not take the lock {self.path}: another run keeps taking it")

    def _check_stale(self, host: str) -> None:
        """Raise if the lock's run is alive (or cannot be checked); else remove the stale lock."""
        holder = _holder(self.path)
        if holder is not None:
            same_process = holder["pid"] == os.getpid() and holder.get("host") == host
            if holder.get("host") != host:
                raise RunFolderError(f"{self.path.parent} is locked by a run on host {holder.get('host')!r} (pid "
                                     f"{holder['pid']}, since {holder.get('started')}), which cannot be checked from "
                                     f"here: if that run is gone, delete {self.path}")
            if (same_process and self.path.resolve() in _HELD) or (not same_process and _alive(holder["pid"])):
                raise RunFolderError(f"{self.path.parent} is in use by another run (pid {holder['pid']} on {host}, "
                                     f"since {holder.get('started')}): wait for it to finish, or choose another "
                                     f"output_dir")
        self.path.unlink(missing_ok=True)  # its process is gone: a crashed run does not block the folder

    def release(self) -> None:
        if self.path.resolve() in _HELD:
            _HELD.discard(self.path.resolve())
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def existing_run(folder: str | Path) -> str | None:
    """What an earlier run left in the folder (logged steps, checkpoints), in words; None when nothing."""
    folder = Path(folder)
    found = []
    metrics = folder / LOG_FILES[0]
    if metrics.is_file():
        # bytes: a line torn mid-character is counted, not a UnicodeDecodeError
        steps = sum(1 for line in metrics.read_bytes().splitlines() if line.strip())
        if steps:
            found.append(f"{steps} logged steps in {metrics.name}")
    checkpoints = list_checkpoints(folder)
    if checkpoints:
        found.append(f"checkpoints up to {checkpoints[-1].name}")
    return ", ".join(found) or None


def prepare_fresh_run(folder: str | Path, *, overwrite: bool) -> None:
    """Refuse a fresh run into a folder holding another run, unless overwrite: then that run's logs and
    checkpoints are deleted (other files, such as a cold start's folder, stay)."""
    folder = Path(folder)
    found = existing_run(folder)
    if found is None:
        return
    if not overwrite:
        raise RunFolderError(f"{folder} already holds a run ({found}). Set resume=True to continue it, "
                             f"overwrite=True to replace it, or choose another output_dir")
    for name in LOG_FILES:
        (folder / name).unlink(missing_ok=True)
    shutil.rmtree(folder / "checkpoints", ignore_errors=True)


def claim_run_folder(folder: str | Path, *, fresh: bool, overwrite: bool, is_main: bool,
                     world_size: int) -> RunLock | None:
    """The main process locks the folder (one live run per folder) and, for a fresh run, refuses a folder that
    holds another run unless overwrite; every rank raises the same error, so none waits on the others. The lock
    (main process) or None."""
    lock, error = None, None
    if is_main:
        try:
            lock = RunLock(folder)
            if fresh:
                prepare_fresh_run(folder, overwrite=overwrite)
        except RunFolderError as caught:
            error = str(caught)
            if lock is not None:
                lock.release()
    if world_size > 1:
        from accelerate.utils import broadcast_object_list

        error = broadcast_object_list([error])[0]
    if error:
        raise RunFolderError(error)
    return lock
