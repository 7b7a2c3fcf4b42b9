"""The trainer's extension point (minGPT style): subclass `Callback` and override what you need.

The live dashboard (dashboard.py) and the GRPO doctor (doctor.py) are callbacks; so is anything a reader writes to
stop a run early, log elsewhere or draw their own plot. Every trainer starts with two (default_callbacks.py): the
hack monitor's warning and the doctor's verdict on the whole run; `trainer.callbacks` is a plain list, so either can
be removed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from grpo_helpers.trainer import GRPOTrainer


class Callback:
    """Called by `GRPOTrainer.train()` after each step, each evaluation and each checkpoint, and once when training
    ends (not after an exception: a crashed run has no verdict to give). To end a run early, set
    `trainer.should_stop = True`: training stops after that step's checkpoint. Under several processes decide from
    the metrics (gathered over every process), so that every rank stops at the same step."""

    def on_step_end(self, trainer: "GRPOTrainer", metrics: dict[str, Any]) -> None: ...

    def on_eval(self, trainer: "GRPOTrainer", metrics: dict[str, Any]) -> None: ...

    def on_checkpoint(self, trainer: "GRPOTrainer", path: Path) -> None: ...

    def on_train_end(self, trainer: "GRPOTrainer") -> None: ...
