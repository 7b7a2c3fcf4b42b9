"""The notebook runner cannot hang: every cell has a time limit, longer for cells tagged `long`, and a cell past it
stops the run with the notebook and the cell named (nbclient once waited forever on a widget cell); a reply whose
wake-up asyncio missed is read within a second, not at the cell's limit."""

from __future__ import annotations

import asyncio
import json
import time
from queue import Empty
from pathlib import Path

import pytest

from grpo_helpers.run_notebooks import (NOTEBOOKS_DIR, PolledChannel, PolledKernelClient, PolledKernelManager,
                                        chapter_notebooks, run)


class MissedWakeUps:
    """A kernel socket whose first `missed` polls sleep out their whole timeout although a message is waiting (what
    a lost asyncio wake-up looks like to nbclient); later polls see it. Records each poll's timeout in ms."""

    def __init__(self, *, missed: int, message_waiting: bool = True):
        self.missed, self.message_waiting, self.polls = missed, message_waiting, []

    async def poll(self, timeout_ms: int | None) -> bool:
        self.polls.append(timeout_ms)
        if len(self.polls) <= self.missed or not self.message_waiting:
            await asyncio.sleep((timeout_ms or 0) / 1000)
            return False
        return True


def channel_on(socket: MissedWakeUps) -> PolledChannel:
    channel = PolledChannel.__new__(PolledChannel)  # no real ZMQ socket: only poll and _recv are used
    channel.socket = socket

    async def recv() -> dict:
        return {"msg_type": "execute_reply"}

    channel._recv = recv
    return channel


def test_a_missed_wake_up_costs_a_slice_not_the_cells_limit():
    socket = MissedWakeUps(missed=1)
    start = time.monotonic()
    message = asyncio.run(channel_on(socket).get_msg(timeout=900))  # a cell's limit: 15 min
    assert message == {"msg_type": "execute_reply"}
    assert socket.polls == [1000, 1000] and time.monotonic() - start < 5  # the plain channel: one 900 s poll


def test_with_no_message_the_wait_still_ends_at_its_deadline():
    socket = MissedWakeUps(missed=0, message_waiting=False)
    start = time.monotonic()
    with pytest.raises(Empty):
        asyncio.run(channel_on(socket).get_msg(timeout=2.5))
    assert socket.polls[:2] == [1000, 1000] and 400 < socket.polls[2] <= 500 and len(socket.polls) == 3
    assert 2.4 < time.monotonic() - start < 10


def test_the_runners_kernel_client_reads_replies_and_outputs_through_the_polled_channel():
    client = PolledKernelManager(kernel_name="python3").client()
    assert isinstance(client, PolledKernelClient)
    assert client.shell_channel_class is PolledChannel and client.iopub_channel_class is PolledChannel


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
