"""Watching a run: one matplotlib figure (reward, hack monitor, accuracy per tier, entropy and KL, length, signal),
updated in place in a notebook, with the GRPO doctor's verdict under it.

In a Jupyter kernel (JupyterLab or papermill) the figure is shown once with a display id and redrawn with
`handle.update(...)`, so a long run keeps one live picture instead of hundreds. Outside a kernel the same callback
prints one line per step. `plot_metrics` also works on a finished run loaded with `load_run`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from grpo_helpers.callbacks import Callback
from grpo_helpers.doctor import Doctor, report
from grpo_helpers.monitor import hack_warning
from grpo_helpers.run_folder import read_json_lines


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
    return read_json_lines(Path(output_dir) / "metrics.jsonl"), read_json_lines(Path(output_dir) / "eval.jsonl")


def _smooth(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def plot_metrics(history: list[dict[str, Any]], eval_history: list[dict[str, Any]] | None = None, *,
                 smooth: int = 5, title: str = "GRPO run"):
    """2x3 panels: reward (total and per function), the hack monitor and the aha metrics, held-out accuracy per tier
    (Wilson 95 %), entropy and KL (when measured), completion length (and clipped share), and the share of groups
    with no signal."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(15, 7), constrained_layout=True)
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
    for key, label in (("hack/accuracy", "correct (training tasks)"), ("hack/uses_numbers", "uses the task's numbers"),
                       ("hack/identical_answers", "same answer as another question"),
                       ("hack/copies_example", "copies the prompt's example"),
                       ("aha/rate", "aha: corrects a false claim, ends correct"),
                       ("aha/false_claims", "leaves a false claim standing")):
        if history and key in history[0]:
            ax.plot(steps, _smooth([m[key] for m in history], smooth), ls="--" if key.startswith("aha/") else "-",
                    label=label)
    if history and "hack/accuracy" in history[0]:
        ax.legend(fontsize=7)
    ax.set(title="hack monitor and self-checks (claims recomputed)", xlabel="step", ylim=(-0.02, 1.02))

    ax = axes[0, 2]
    if eval_history:
        eval_steps = [m["step"] for m in eval_history]
        tiers = sorted({k.split("/")[1] for m in eval_history for k in m if k.endswith("/accuracy_low")})
        for tier in tiers:
            rows = [m for m in eval_history if f"eval/{tier}/accuracy" in m]
            acc = [m[f"eval/{tier}/accuracy"] for m in rows]
            err = [[a - m[f"eval/{tier}/accuracy_low"] for a, m in zip(acc, rows)],
                   [m[f"eval/{tier}/accuracy_high"] - a for a, m in zip(acc, rows)]]
            ax.errorbar([m["step"] for m in rows], acc, yerr=err, marker="o", capsize=3, label=f"accuracy {tier}")
        if not tiers:
            ax.plot(eval_steps, [m["eval/accuracy"] for m in eval_history], "o-", label="accuracy")
        with_format = [m for m in eval_history if "eval/format_rate" in m]  # a task without a format reward: none
        if with_format:
            ax.plot([m["step"] for m in with_format], [m["eval/format_rate"] for m in with_format], "s--",
                    color="tab:gray", label="format rate")
        ax.legend(fontsize=7)
    ax.set(title="held-out evaluation (greedy, Wilson 95 %)", xlabel="step", ylim=(-0.02, 1.02))

    ax = axes[1, 0]  # the policy's entropy (collapse ends exploration) and, when measured, its KL to the reference
    with_entropy = [m for m in history if "entropy" in m]
    if with_entropy:
        ax.plot([m["step"] for m in with_entropy], [m["entropy"] for m in with_entropy], color="tab:purple")
        ax.set_ylabel("entropy (nats per token)", color="tab:purple")
    measured = [m for m in history if "kl" in m]
    if measured:
        twin = ax.twinx()
        twin.plot([m["step"] for m in measured], [m["kl"] for m in measured], color="tab:red")
        twin.set_ylabel("KL to reference (k3)", color="tab:red")
    elif history:
        ax.text(0.98, 0.95, "KL not measured: beta = 0", ha="right", va="top", transform=ax.transAxes,
                color="tab:gray", fontsize=8)
    ax.set(title="policy entropy and KL to reference", xlabel="step")

    ax = axes[1, 1]
    ax.plot(steps, [m["completions/mean_length"] for m in history], color="tab:green", label="mean length")
    ax.set(title="completion length (tokens)", xlabel="step")
    twin = ax.twinx()
    twin.plot(steps, [m["completions/clipped_ratio"] for m in history], color="tab:gray", ls="--", label="clipped")
    twin.set_ylim(0, 1.05)
    twin.set_ylabel("share clipped", color="tab:gray")

    ax = axes[1, 2]
    if history and "dynamic/zero_std_before" in history[-1]:
        ax.plot(steps, _smooth([m.get("dynamic/zero_std_before", float("nan")) for m in history], smooth),
                label="sampled (before dynamic sampling)")
    ax.plot(steps, _smooth([m["frac_reward_zero_std"] for m in history], smooth), label="trained on")
    ax.legend(fontsize=7)
    ax.set(title="groups with no learning signal (all rewards equal)", xlabel="step", ylim=(-0.02, 1.02))

    warning = hack_warning(history)
    fig.suptitle(title if warning is None else f"{title}\n{warning[:160]}...", color="black" if warning is None
                 else "tab:red", fontsize=10 if warning else 12)
    return fig


def summary_line(metrics: dict[str, Any]) -> str:
    kl = f"{metrics['kl']:.4f}" if "kl" in metrics else "n/a"
    return (f"step {metrics['step']:4d} | reward {metrics['reward']:.3f} | kl {kl} | "
            f"len {metrics['completions/mean_length']:.0f} | zero-std groups {metrics['frac_reward_zero_std']:.2f} | "
            f"{metrics['time/step']:.1f} s/step")


class LiveDashboard(Callback):
    """Redraws one figure every `every` steps (and after each evaluation), with the GRPO doctor's current verdict
    under it (`doctor=False`: no doctor); outside a kernel it prints a line per step and each new finding.

    `save_to` is written at each checkpoint, after each evaluation and at the last step, not at every redraw: saving
    a PNG costs about as much as drawing it, and the live view already shows every step."""

    def __init__(self, *, every: int = 1, smooth: int = 5, save_to: str | Path | None = None, doctor: bool = True):
        self.every, self.smooth, self.save_to = every, smooth, save_to
        self.live = in_notebook()
        self.doctor = Doctor(announce=not self.live) if doctor else None
        self.handle = self.doctor_handle = None

    def _draw(self, trainer, *, save: bool) -> None:
        save = save and self.save_to is not None
        if not (self.live or save):
            return
        import matplotlib.pyplot as plt

        fig = plot_metrics(trainer.history, trainer.eval_history, smooth=self.smooth)
        if save:
            Path(self.save_to).parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(self.save_to, dpi=110)
        if self.live:
            from IPython.display import display

            if self.handle is None:
                self.handle = display(fig, display_id=True)
            else:
                self.handle.update(fig)
            if self.doctor is not None:
                self._show_doctor()
        plt.close(fig)  # the display keeps the rendered image; no duplicate figure at the end of the cell

    def _show_doctor(self) -> None:
        from IPython.display import Pretty, display

        verdict = Pretty(report(self.doctor.findings))
        if self.doctor_handle is None:
            self.doctor_handle = display(verdict, display_id=True)
        else:
            self.doctor_handle.update(verdict)

    def on_step_end(self, trainer, metrics: dict[str, Any]) -> None:
        if not self.live:
            print(summary_line(metrics), flush=True)
        if self.doctor is not None:
            self.doctor.on_step_end(trainer, metrics)
        last = metrics["step"] == trainer.config.train.max_steps
        if metrics["step"] % self.every == 0 or last:
            self._draw(trainer, save=last)

    def on_eval(self, trainer, metrics: dict[str, Any]) -> None:
        if not self.live:
            print(f"eval @ step {metrics['step']}: accuracy {metrics['eval/accuracy']:.3f}, "
                  f"format {metrics['eval/format_rate']:.3f}, length {metrics['eval/mean_length']:.0f}", flush=True)
        if trainer.history:
            self._draw(trainer, save=True)

    def on_checkpoint(self, trainer, path: Path) -> None:
        if trainer.history:
            self._draw(trainer, save=True)  # an interrupted run keeps a figure as recent as its last checkpoint
