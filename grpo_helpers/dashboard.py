"""Watching a run: one matplotlib figure (reward, KL, length, accuracy), updated in place in a notebook.

In a Jupyter kernel (JupyterLab or papermill) the figure is shown once with a display id and redrawn with
`handle.update(...)`, so a long run keeps one live picture instead of hundreds. Outside a kernel the same callback
prints one line per step. `plot_metrics` also works on a finished run loaded with `load_run`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from grpo_helpers.trainer import Callback


def in_notebook() -> bool:
    """True inside a Jupyter kernel (where rich display works), False in a plain Python process."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and hasattr(shell, "kernel")


def load_run(output_dir: str | Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(step metrics, evaluations) of a run folder written by the trainer."""
    def read(name: str) -> list[dict[str, Any]]:
        path = Path(output_dir) / name
        return [json.loads(line) for line in path.read_text().splitlines() if line] if path.is_file() else []

    return read("metrics.jsonl"), read("eval.jsonl")


def _smooth(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def plot_metrics(history: list[dict[str, Any]], eval_history: list[dict[str, Any]] | None = None, *,
                 smooth: int = 5, title: str = "GRPO run"):
    """2x2 panels: reward (total and per function), KL, completion length (and clipped share), eval accuracy."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 6.5), constrained_layout=True)
    steps = [m["step"] for m in history]
    ax = axes[0, 0]
    if history:
        rewards = [m["reward"] for m in history]
        ax.plot(steps, rewards, color="tab:blue", alpha=0.3)
        ax.plot(steps, _smooth(rewards, smooth), color="tab:blue", label="total")
        for key in [k for k in history[0] if k.startswith("rewards/")]:
            ax.plot(steps, _smooth([m[key] for m in history], smooth), lw=1, label=key.split("/")[1])
        ax.legend(fontsize=7, ncol=2)
    ax.set(title="reward (mean over completions)", xlabel="step")
    ax = axes[0, 1]
    ax.plot(steps, [m.get("kl", 0.0) for m in history], color="tab:red")
    ax.set(title="KL to reference (k3)", xlabel="step")
    ax = axes[1, 0]
    ax.plot(steps, [m["completions/mean_length"] for m in history], color="tab:green", label="mean length")
    ax.set(title="completion length (tokens)", xlabel="step")
    twin = ax.twinx()
    twin.plot(steps, [m["completions/clipped_ratio"] for m in history], color="tab:gray", ls="--", label="clipped")
    twin.set_ylim(0, 1.05)
    twin.set_ylabel("share clipped", color="tab:gray")
    ax = axes[1, 1]
    if eval_history:
        eval_steps = [m["step"] for m in eval_history]
        ax.plot(eval_steps, [m["eval/accuracy"] for m in eval_history], "o-", label="accuracy")
        ax.plot(eval_steps, [m["eval/format_rate"] for m in eval_history], "s--", label="format rate")
        ax.legend(fontsize=8)
    ax.set(title="held-out evaluation", xlabel="step", ylim=(-0.02, 1.02))
    fig.suptitle(title)
    return fig


def summary_line(metrics: dict[str, Any]) -> str:
    return (f"step {metrics['step']:4d} | reward {metrics['reward']:.3f} | kl {metrics.get('kl', 0.0):.4f} | "
            f"len {metrics['completions/mean_length']:.0f} | zero-std groups {metrics['frac_reward_zero_std']:.2f} | "
            f"{metrics['time/step']:.1f} s/step")


class LiveDashboard(Callback):
    """Redraws one figure every `every` steps (and after each evaluation); prints lines outside a kernel."""

    def __init__(self, *, every: int = 1, smooth: int = 5, save_to: str | Path | None = None):
        self.every, self.smooth, self.save_to = every, smooth, save_to
        self.live = in_notebook()
        self.handle = None

    def _draw(self, trainer) -> None:
        if not (self.live or self.save_to):
            return
        import matplotlib.pyplot as plt

        fig = plot_metrics(trainer.history, trainer.eval_history, smooth=self.smooth)
        if self.save_to:
            Path(self.save_to).parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(self.save_to, dpi=110)
        if self.live:
            from IPython.display import display

            if self.handle is None:
                self.handle = display(fig, display_id=True)
            else:
                self.handle.update(fig)
        plt.close(fig)  # the display keeps the rendered image; no duplicate figure at the end of the cell

    def on_step_end(self, trainer, metrics: dict[str, Any]) -> None:
        if not self.live:
            print(summary_line(metrics), flush=True)
        if metrics["step"] % self.every == 0 or metrics["step"] == trainer.config.train.max_steps:
            self._draw(trainer)

    def on_eval(self, trainer, metrics: dict[str, Any]) -> None:
        if not self.live:
            print(f"eval @ step {metrics['step']}: accuracy {metrics['eval/accuracy']:.3f}, "
                  f"format {metrics['eval/format_rate']:.3f}, length {metrics['eval/mean_length']:.0f}", flush=True)
        if trainer.history:
            self._draw(trainer)
