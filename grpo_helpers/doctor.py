"""A GRPO doctor: reads a run's metrics and says in plain words what is wrong, with the evidence and what to try.

Each rule looks at the step metrics the trainer logs (metrics.jsonl; TRL's names where they exist) and fires only on
a pattern that means trouble, never on one step's noise: most look at a window of recent steps. Rules that need a
metric the run did not log (KL when beta = 0) stay silent. A history shorter than the window gets the note "too
short to judge", not a clean bill: silence there means nothing. `diagnose` works on a live history (the `Doctor`
callback runs it after every step, the live dashboard shows its verdict, and the `DoctorReport` callback every
trainer starts with prints it when `train()` ends) and `diagnose_run` on a finished run folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Any

from tqdm.auto import tqdm

from grpo_helpers.callbacks import Callback
from grpo_helpers.errors import MissingFileError
from grpo_helpers.monitor import hack_warning
from grpo_helpers.run_folder import read_json_lines

WINDOW = 5  # recent steps a rule averages over
TOO_SHORT = "too_short"  # the note on a history shorter than WINDOW
GRAD_GROWTH, GRAD_FLOOR, GRAD_CEILING = 10.0, 10.0, 1000.0  # the exploding-gradients rule's bounds (see the rule)
DECLINE_ABSOLUTE, DECLINE_RELATIVE = 0.15, 1 / 3  # how far training accuracy must fall from its best (see the rule)
HELD_OUT_DECLINE = 0.05  # the least fall of held-out accuracy from its best that is named, beside the noise bound


@dataclass(frozen=True)
class Finding:
    """One diagnosis: which rule, how serious, what it means, the numbers that show it, and what to try."""

    rule: str
    severity: str  # "problem" (the run is not learning as it should) or "note" (expected, but often misread)
    message: str
    evidence: str
    advice: str

    def __str__(self) -> str:
        return f"[{self.severity}] {self.message}\n    evidence: {self.evidence}\n    try: {self.advice}"


def _mean(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [row[key] for row in rows if isinstance(row.get(key), (int, float))]
    return sum(values) / len(values) if values else None


def _recent_mean_above(history, key: str, window: int, threshold: float) -> float | None:
    """The mean of `key` over the last `window` steps when there are that many and it reaches `threshold`."""
    share = _mean(history[-window:], key)
    return share if len(history) >= window and share is not None and share >= threshold else None


def _first_and_last(rows: list[dict[str, Any]], window: int) -> tuple[list, list] | None:
    """The first and last k rows, for a rule that compares a run's end with its start: k = window, or half the run
    when it is shorter (a blow-up is over within a few steps), but at least 2 each (1 when window = 1): one step's
    noise decides nothing. None when the run is too short for that."""
    k = min(window, len(rows) // 2)
    return (rows[:k], rows[-k:]) if k >= min(2, window) else None


def _no_signal(history, window) -> Finding | None:
    share = _recent_mean_above(history, "frac_reward_zero_std", window, 0.9)
    if share is None:
        return None
    return Finding("no_signal", "problem", "Almost every group's rewards are all equal: the advantages are zero, so "
                   "GRPO has nothing to learn from.",
                   f"frac_reward_zero_std = {share:.2f} over the last {window} steps",
                   "partial-credit rewards (countdown.rewards.GROUNDED_WEIGHTS), a larger group_size, easier tasks (tiers, "
                   "curriculum='success'), dynamic_sampling > 0, or a cold start (sft_steps) if the base model never "
                   "succeeds")


def _truncated(history, window) -> Finding | None:
    share = _recent_mean_above(history, "completions/clipped_ratio", window, 0.5)
    if share is None:
        return None
    recent = history[-window:]
    return Finding("truncated", "problem", "Most completions hit max_new_tokens before finishing: their answers are "
                   "cut off and score as wrong, whatever the reasoning was.",
                   f"completions/clipped_ratio = {share:.2f} over the last {len(recent)} steps "
                   f"(mean length {_mean(recent, 'completions/mean_length') or 0:.0f} tokens)",
                   "raise max_new_tokens, add the overlong penalty reward, or mask truncated completions")


def _entropy_collapse(history, window) -> Finding | None:
    """Entropy below a quarter of its start and below 0.2: a collapse, not the slow decline of a run that
    learns. Judged from 4 steps on (halves of the run), since a blow-up (lr far too large) collapses it in a few."""
    ends = _first_and_last([row for row in history if isinstance(row.get("entropy"), (int, float))], window)
    if ends is None:
        return None
    first, last, k = _mean(ends[0], "entropy"), _mean(ends[1], "entropy"), len(ends[1])
    if not (first > 0 and last < 0.25 * first and last < 0.2):
        return None
    return Finding("entropy_collapse", "problem", "The policy's entropy collapsed: it samples nearly the same tokens "
                   "every time, so groups stop differing and exploration ends.",
                   f"entropy {first:.3f} (first {k} steps) -> {last:.3f} (last {k})",
                   "a higher temperature, a lower lr, clip_eps_high = 0.28 (DAPO's clip-higher), or beta > 0")


def _size(value: float) -> str:
    """122,542 rather than 1.23e+05; 0.412 rather than 0."""
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _exploding_gradients(history, window) -> Finding | None:
    """Gradient norms that grew many-fold, or that no healthy run has.

    grad_norm is logged before clipping. Clipping caps each update, so a norm that keeps growing means every update
    lands where the loss is steeper still: the lr is too large, the log-probs saturate and the text degenerates (an
    lr = 1.0 run went from about 1 to 122,542 in 6 steps while its entropy fell to 0). Fires when the median of the
    last k steps is GRAD_GROWTH (10) times the first k steps' and at least GRAD_FLOOR (10, ten times the recipes'
    max_grad_norm): a run whose groups first carry almost no signal starts near 0, and growing from there to
    ordinary sizes is no blow-up. Or when that median reaches GRAD_CEILING (1,000), whatever the start: a thousand
    times the clip threshold is not a healthy size. Medians, so one spiky step does not fire it."""
    ends = _first_and_last([row for row in history if isinstance(row.get("grad_norm"), (int, float))], window)
    if ends is None:
        return None
    first, last = (median(row["grad_norm"] for row in rows) for rows in ends)
    grew = last >= GRAD_GROWTH * first and last >= GRAD_FLOOR
    if not (grew or last >= GRAD_CEILING):
        return None
    k, peak = len(ends[1]), max(ends[1], key=lambda row: row["grad_norm"])
    return Finding("exploding_gradients", "problem", "The gradient norm exploded: the updates are too large for "
                   "this model, and the policy is being pushed into degenerate text.",
                   f"median grad_norm {_size(first)} (first {k} steps) -> {_size(last)} (last {k}), "
                   f"{_size(peak['grad_norm'])} at step {peak.get('step')}",
                   "a new run with a lower lr (10x lower is a fair first try) and clipping on (max_grad_norm = 1): "
                   "this run's weights are already damaged")


def _kl_or_clipping(history, window) -> Finding | None:
    recent = history[-window:]
    if len(recent) < window:
        return None
    kl, clipped = _mean(recent, "kl"), _mean(recent, "clip_ratio/region_mean")
    parts = []
    if kl is not None and kl > 1.0:
        parts.append(f"kl = {kl:.2f}")
    if clipped is not None and clipped > 0.2:
        parts.append(f"clip_ratio/region_mean = {clipped:.2f}")
    if not parts:
        return None
    return Finding("unstable_update", "problem", "The policy moves too far per step: it drifts from the reference "
                   "and/or most tokens sit outside the clip range.",
                   f"{', '.join(parts)} over the last {len(recent)} steps",
                   "a lower lr, fewer num_iterations, a larger beta, or max_grad_norm = 1")


def _reward_without_accuracy(history, window, completions) -> Finding | None:
    warning = hack_warning(history, window=window)
    if len(history) < 2 * window:
        return None
    first, last = history[:window], history[-window:]
    rise = (_mean(last, "reward") or 0.0) - (_mean(first, "reward") or 0.0)
    accuracy = [_mean(first, "hack/accuracy"), _mean(last, "hack/accuracy")]
    if warning is None and (rise < 0.1 or None in accuracy or accuracy[1] - accuracy[0] > 0.02):
        return None
    top = ""
    if completions:
        best = sorted(completions, key=lambda row: -row.get("reward", 0.0))[:3]
        top = "; top-scoring completions: " + " | ".join(repr(row["completion"][-80:]) for row in best)
    accuracy_text = "" if None in accuracy else f", training accuracy {accuracy[0]:.2f} -> {accuracy[1]:.2f}"
    return Finding("reward_hacking", "problem", "Reward rose while correctness did not: the policy found reward that "
                   "is not solving the task.",
                   f"mean reward {rise:+.2f} (first vs last {window} steps){accuracy_text}{top}",
                   "read the top-scoring completions; pay only for answers built from the task's numbers "
                   "(countdown.rewards.GROUNDED_WEIGHTS); judge by held-out accuracy, not reward")


def _held_out(evaluations) -> list[dict[str, Any]]:
    """The evaluations (rows of eval.jsonl) that logged a held-out accuracy, oldest first."""
    return [row for row in evaluations or [] if isinstance(row.get("eval/accuracy"), (int, float))]


def _accuracy_declined(history, window, evaluations) -> Finding | None:
    """Training accuracy (the judge on the training rows, `hack/accuracy`) that fell from its best: means over
    `window` steps, so one step's noise counts for little, and a fall of DECLINE_ABSOLUTE and a third of the best.
    A run that peaks and declines keeps its best policy only in a checkpoint from around the peak. But a window of
    a 2-prompt recipe holds 10 tasks, and a task is mostly solved or not: its accuracy says which tasks were drawn.
    The CPU run whose training accuracy went 0.42 (steps 20-24) -> 0.15 (36-40) rose on 64 held-out tasks all the
    while (0.16, 0.16, 0.30, 0.39, 0.39, 0.41 every 8 steps; bench/RESULTS.md). So when held-out evaluations after
    the peak did not fall, the finding is a note that says so, not a problem."""
    rows = [row for row in history if isinstance(row.get("hack/accuracy"), (int, float))]
    if len(rows) < 2 * window:
        return None
    means = [_mean(rows[i:i + window], "hack/accuracy") for i in range(len(rows) - window + 1)]
    best = max(range(len(means)), key=means.__getitem__)
    fall = means[best] - means[-1]
    if fall < max(DECLINE_ABSOLUTE, DECLINE_RELATIVE * means[best]):
        return None
    evidence = (f"training accuracy (mean of {window} steps) {means[best]:.2f} at steps {rows[best]['step']}-"
                f"{rows[best + window - 1]['step']} -> {means[-1]:.2f} over the last {window}")
    held = _held_out(evaluations)
    peak_step = rows[best + window - 1]["step"]
    before, after = [r for r in held if r["step"] <= peak_step], [r for r in held if r["step"] > peak_step]
    if before and after and after[-1]["eval/accuracy"] >= max(r["eval/accuracy"] for r in before):
        held_out = ", ".join(f"{r['eval/accuracy']:.2f} (step {r['step']})" for r in held)
        return Finding("training_accuracy_noise", "note", "Training accuracy fell from its best, but held-out "
                       "accuracy did not: a few prompts per step make the training figure say mostly which tasks "
                       "were drawn.", f"{evidence}; held-out accuracy {held_out}",
                       "judge the run by held-out accuracy; more prompts per step (num_prompts) steady the training "
                       "figure")
    return Finding("accuracy_declined", "problem", "Training accuracy fell from its best: the policy got worse at the "
                   "task after it had learned some of it.", evidence,
                   "evaluate held-out often enough to see the peak (eval_every) and keep a checkpoint from it "
                   "(save_every); then a lower lr, more prompts per step (num_prompts), or beta > 0; watch entropy")


def _held_out_declined(evaluations) -> Finding | None:
    """Held-out accuracy (eval.jsonl's `eval/accuracy`, the judge on tasks never trained on) whose latest value is
    below its best by more than two standard errors of a difference of two rates on that many tasks (and by at
    least HELD_OUT_DECLINE): on 64 tasks a fall from 0.35 to 0.20 is within that noise, to 0.15 it is not. The
    bound treats the two evaluations as independent samples, which for the same tasks over-states the noise: the
    rule names only falls that are clearly real."""
    rows = [row for row in _held_out(evaluations) if row.get("eval/num_tasks")]
    if len(rows) < 2:
        return None
    best, last = max(rows, key=lambda row: row["eval/accuracy"]), rows[-1]
    high, low = best["eval/accuracy"], last["eval/accuracy"]
    noise = 2 * (high * (1 - high) / best["eval/num_tasks"] + low * (1 - low) / last["eval/num_tasks"]) ** 0.5
    if high - low <= max(noise, HELD_OUT_DECLINE):
        return None
    return Finding("held_out_declined", "problem", "Held-out accuracy fell from its best: the policy got worse on "
                   "tasks it never trains on, after it had been better.",
                   f"held-out accuracy {high:.2f} at step {best['step']} -> {low:.2f} at step {last['step']} "
                   f"({last['eval/num_tasks']} tasks; two standard errors of the difference: {noise:.2f})",
                   f"use the checkpoint nearest step {best['step']} (save_every) or stop there (max_steps); then a "
                   f"lower lr, more prompts per step (num_prompts), or beta > 0")


def _loss_near_zero(history, window) -> Finding | None:
    recent = history[-window:]
    loss, grad = _mean(recent, "loss"), _mean(recent, "grad_norm")
    if len(recent) < window or loss is None or abs(loss) > 0.01 or not grad:
        return None
    return Finding("loss_near_zero", "note", "The loss is near 0, and that is expected: with one update per rollout "
                   "the ratio is 1 and each group's advantages sum to zero, so the loss value carries little "
                   "information. Its gradient is not zero, and that is what trains.",
                   f"mean loss {loss:+.4f}, mean grad_norm {grad:.3f} over the last {len(recent)} steps",
                   "watch reward, held-out accuracy and the hack monitor instead of the loss")


def _throughput(history, window) -> Finding | None:
    rows = [row for row in history if isinstance(row.get("tokens_per_sec"), (int, float))]
    if len(rows) < 2 * window + 1:
        return None
    first = _mean(rows[1:window + 1], "tokens_per_sec")  # step 1 warms caches up: left out
    last = _mean(rows[-window:], "tokens_per_sec")
    if not (first and last < 0.5 * first):
        return None
    return Finding("throughput_collapse", "problem", "Training got much slower per token than it was at the start.",
                   f"tokens_per_sec {first:.0f} (steps 2-{window + 1}) -> {last:.0f} (last {window})",
                   "look for other work on the machine, memory pressure or swap (peak RSS), and completions that "
                   "grew long (completions/mean_length)")


def _too_short(history, window) -> Finding | None:
    if len(history) >= window:
        return None
    return Finding(TOO_SHORT, "note", "Too short to judge: most rules average over several steps, so that one "
                   "step's noise decides nothing, and this run has fewer. Their silence does not mean that nothing "
                   "is wrong.",
                   f"{len(history)} step(s) logged; most rules need {window}",
                   f"train at least {window} steps, or read the first steps' reward, frac_reward_zero_std and "
                   f"completions/clipped_ratio yourself (metrics.jsonl)")


def diagnose(history: list[dict[str, Any]], *, completions: list[dict[str, Any]] | None = None,
             evaluations: list[dict[str, Any]] | None = None, window: int = WINDOW) -> list[Finding]:
    """Every rule's finding on a run's step metrics (oldest first); `completions` (rows of completions.jsonl) lets
    the hacking rule quote the top-scoring ones; `evaluations` (rows of eval.jsonl) lets it judge held-out accuracy."""
    if not isinstance(window, int) or window < 1:
        raise ValueError(f"window={window!r} is not allowed: an integer >= 1")
    found = [_no_signal(history, window), _truncated(history, window), _entropy_collapse(history, window),
             _exploding_gradients(history, window), _kl_or_clipping(history, window),
             _reward_without_accuracy(history, window, completions),
             _accuracy_declined(history, window, evaluations),
             _held_out_declined(evaluations), _loss_near_zero(history, window),
             _throughput(history, window), _too_short(history, window)]
    return [finding for finding in found if finding is not None]


def diagnose_run(folder: str | Path, *, window: int = WINDOW) -> list[Finding]:
    """`diagnose` on a finished (or running) training folder, its held-out evaluations included; the completions of
    its last step are quoted."""
    folder = Path(folder)
    history = read_json_lines(folder / "metrics.jsonl")
    if not history:
        raise MissingFileError(f"{folder / 'metrics.jsonl'} has no logged steps: is {str(folder)!r} a training folder?")
    last_step = history[-1]["step"]
    completions = [row for row in read_json_lines(folder / "completions.jsonl") if row["step"] == last_step]
    evaluations = read_json_lines(folder / "eval.jsonl") if (folder / "eval.jsonl").is_file() else []
    return diagnose(history, completions=completions, evaluations=evaluations, window=window)


class Doctor(Callback):
    """The doctor during training: diagnoses after every step and says each new finding once, when it first
    appears (a rule that stops firing and fires again is said again). `findings` holds the current verdict, which
    the live dashboard shows under its figure. "Too short to judge" is not said: every run is short at first."""

    def __init__(self, *, window: int = WINDOW, announce: bool = True):
        self.window, self.announce = window, announce
        self.findings: list[Finding] = []

    def on_step_end(self, trainer, metrics: dict[str, Any]) -> None:
        said = {finding.rule for finding in self.findings}
        self.findings = diagnose(trainer.history, completions=trainer.last_completions,
                                 evaluations=getattr(trainer, "eval_history", None), window=self.window)
        if self.announce and trainer.accelerator.is_main_process:
            for finding in self.findings:
                if finding.rule not in said and finding.rule != TOO_SHORT:
                    tqdm.write(f"GRPO doctor at step {metrics['step']}: {finding}")

    def on_eval(self, trainer, metrics: dict[str, Any]) -> None:
        """A held-out evaluation is news too (the held-out rule reads it)."""
        self.on_step_end(trainer, metrics)


class DoctorReport(Callback):
    """The doctor's verdict on the whole run when `train()` ends: set as `trainer.findings` (on every process) and
    printed by the main process. A default callback (default_callbacks.py), so every run ends with a diagnosis."""

    def on_train_end(self, trainer) -> None:
        trainer.findings = diagnose(trainer.history, completions=trainer.last_completions,
                                    evaluations=getattr(trainer, "eval_history", None))
        if trainer.accelerator.is_main_process and trainer.history:
            tqdm.write(report(trainer.findings))


def report(findings: list[Finding]) -> str:
    """The findings in words, problems first; a clean bill of health when there are none."""
    if not findings:
        return "GRPO doctor: nothing looks wrong in these metrics."
    ordered = sorted(findings, key=lambda f: f.severity != "problem")
    return "GRPO doctor:\n" + "\n".join(str(f) for f in ordered)
