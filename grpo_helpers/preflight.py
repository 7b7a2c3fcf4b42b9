"""A pre-flight check: one throw-away training step, before `train()`, that shows a doomed run before it starts.

It samples one rollout window from the policy as it stands (the base model, or the cold start), scores it with the
run's own rewards, and times a backward over it, exactly as step 1 would, and then drops the gradients and puts
back every prompt and random number it used: `train()` afterwards runs as if it had not happened. What it reports:
the completion lengths (and the share cut at max_new_tokens), the share of groups whose rewards are all equal
(they carry no learning signal), the time a step takes on this machine, and the GRPO doctor's verdict on that
would-be first step.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

from grpo_helpers.batch import Batch
from grpo_helpers.checkpoint import rng_state, set_rng_state
from grpo_helpers.distributed import zero_stage
from grpo_helpers.doctor import Finding, diagnose
from grpo_helpers.errors import UsageError


@dataclass
class Preflight:
    """What one throw-away step says about a run: its metrics row (the trainer's names) and the sampled batches,
    to read."""

    metrics: dict[str, Any]
    batches: list[Batch] = field(repr=False)
    max_new_tokens: int
    seconds_per_step: float

    @property
    def lengths(self) -> list[int]:
        return [int(n) for b in self.batches for n in b.rollout.lengths]

    @property
    def zero_std_share(self) -> float:
        """As sampled, before dynamic sampling replaces such groups: what the rewards predict for training."""
        return self.metrics.get("dynamic/zero_std_before", self.metrics["frac_reward_zero_std"])

    @property
    def findings(self) -> list[Finding]:
        """The doctor's rules on this one step, with the share of groups as sampled."""
        return diagnose([{**self.metrics, "frac_reward_zero_std": self.zero_std_share}], window=1)

    def __str__(self) -> str:
        m, lengths = self.metrics, sorted(self.lengths)
        lines = [f"pre-flight: {len(lengths)} completions from the policy as it starts "
                 f"({len(self.batches[0].tasks) * len(self.batches)} prompts x {self.batches[0].rollout.group_size})",
                 f"  length: median {lengths[len(lengths) // 2]}, max {lengths[-1]} of max_new_tokens "
                 f"{self.max_new_tokens}; cut off: {m['completions/clipped_ratio']:.0%}",
                 f"  groups with all rewards equal (no learning signal): {self.zero_std_share:.0%}",
                 f"  mean reward {m['reward']:.3f}; correct on the training tasks: {m['hack/accuracy']:.0%}",
                 f"  about {self.seconds_per_step:.0f} s per step on this machine (the first step also warms caches "
                 f"up, so later ones are usually a little faster)"]
        problems = [f for f in self.findings if f.severity == "problem"]
        lines += [f"  WARNING {f}".replace("\n", "\n  ") for f in problems] or ["  the doctor sees no problem yet"]
        return "\n".join(lines)


@contextmanager
def thrown_away(trainer) -> Iterator[None]:
    """Work on `trainer` (a GRPOTrainer) that `train()` never notices: everything a step draws from (the sampler,
    the sampling generator, the global generators) is put back afterwards and the gradients are dropped."""
    state = (trainer.sampler.state_dict(), trainer.generator.get_state(), rng_state())
    try:
        yield
    finally:
        trainer.sampler.load_state_dict(state[0])
        trainer.generator.set_state(state[1])
        set_rng_state(state[2])
        trainer.optimizer.zero_grad(set_to_none=True)


def preflight(trainer) -> Preflight:
    """One throw-away step of `trainer` (a GRPOTrainer, before or between `train()` calls); see the module doc."""
    if zero_stage(trainer.accelerator) is not None:
        raise UsageError("preflight() does not run under DeepSpeed: its backward steps the optimizer, so the step "
                         "could not be thrown away; run the check in one process without DeepSpeed")
    cfg = trainer.config
    with thrown_away(trainer):
        metrics, batches = trainer.train_step(update=False)
    backward = metrics["time/train"] * cfg.loss.num_iterations  # a real step takes mu passes
    return Preflight(metrics=metrics, batches=batches,
                     max_new_tokens=cfg.rollout.max_new_tokens,
                     seconds_per_step=metrics["time/step"] - metrics["time/train"] + backward)
