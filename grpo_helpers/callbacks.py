"""The trainer's extension point (minGPT style): subclass `Callback` and override what you need.

The live dashboard (dashboard.py) and the GRPO doctor (doctor.py) are callbacks; so is anything a reader writes to
stop a run early, log elsewhere or draw their own plot.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from grpo_helpers.trainer import GRPOTrainer


class Callback:
    """Called by `GRPOTrainer.train()` after each step, each evaluation and each checkpoint."""

    def on_step_end(self, trainer: "GRPOTrainer", metrics: dict[str, Any]) -> None: ...

    def on_eval(self, trainer: "GRPOTrainer", metrics: dict[str, Any]) -> None: ...

    def on_checkpoint(self, trainer: "GRPOTrainer", path: Path) -> None: ...
