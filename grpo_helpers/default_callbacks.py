"""The callbacks every GRPOTrainer starts with, kept here so the trainer knows only the `Callback` interface.

The hack monitor's warning (monitor.py) while the run goes on, and the GRPO doctor's verdict (doctor.py) when it
ends. They come before the callbacks a user passes, so a user's `on_train_end` can read `trainer.findings`.
"""

from __future__ import annotations

from grpo_helpers.callbacks import Callback
from grpo_helpers.doctor import DoctorReport
from grpo_helpers.monitor import HackWarning


def default_callbacks() -> list[Callback]:
    """Fresh instances (they keep per-run state, such as whether the warning was already said)."""
    return [HackWarning(), DoctorReport()]
