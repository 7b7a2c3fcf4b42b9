"""Which rows a training step sees: an endless, resumable prompt sampler, and a curriculum over difficulty tiers.

Rows are any task's rows (dicts). A row's optional `tier` column names its difficulty; with a tier on every row the
curriculum draws tiers by measured success (`TierSampler`), else each epoch is a plain seeded permutation.
"""

from __future__ import annotations

import random
from typing import Iterator

from grpo_helpers.checks import require_int




class PromptSampler:
    """Endless batches of tasks for training, identical across runs and resumable.

    Each epoch is a fresh permutation of all rows seeded by (seed, epoch). A step takes the next
    batch_size * world_size rows of the permutation and rank r keeps its own slice, so ranks never share a
    prompt within a step and together see every row at most once per epoch. The last rows of an epoch that do
    not fill a whole step are skipped for that epoch (the next permutation is different)."""

    def __init__(self, rows: list[dict], *, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        require_int("batch_size", batch_size, 1)
        require_int("world_size", world_size, 1)
        if not isinstance(rank, int) or isinstance(rank, bool) or not 0 <= rank < world_size:
            raise ValueError(f"rank={rank!r} is not allowed: an integer in 0..{world_size - 1} (world_size={world_size})")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ValueError(f"seed={seed!r} is not allowed: an integer")
        if len(rows) < batch_size * world_size:
            raise ValueError(f"{len(rows)} rows cannot fill one step of batch_size={batch_size} x "
                             f"world_size={world_size}; use more rows or a smaller batch")
        self.rows, self.batch_size, self.seed, self.rank, self.world_size = rows, batch_size, seed, rank, world_size
        self.steps_per_epoch = len(rows) // (batch_size * world_size)
        self.epoch, self.index = 0, 0  # index = next step within the epoch
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        order = list(range(len(self.rows)))
        random.Random(f"{self.seed}:{epoch}").shuffle(order)  # str seeds hash deterministically (not PYTHONHASHSEED)
        return order

    def __iter__(self) -> Iterator[list[dict]]:
        return self

    def __next__(self) -> list[dict]:
        if self.index == self.steps_per_epoch:
            self.epoch, self.index = self.epoch + 1, 0
            self._order = self._permutation(self.epoch)
        start = (self.index * self.world_size + self.rank) * self.batch_size
        self.index += 1
        return [self.rows[i] for i in self._order[start:start + self.batch_size]]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed, "batch_size": self.batch_size,
                "world_size": self.world_size, "num_rows": len(self.rows)}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a saved position; the layout fields must match or the batches would differ."""
        for name in ("seed", "batch_size", "world_size", "num_rows"):
            mine = len(self.rows) if name == "num_rows" else getattr(self, name)
            if state.get(name) != mine:
                raise ValueError(f"sampler state has {name}={state.get(name)!r} but this sampler has {name}={mine}; "
                                 f"a resumed run needs the same rows, seed, batch_size and world_size")
        epoch, index = state["epoch"], state["index"]
        if not (isinstance(epoch, int) and epoch >= 0 and isinstance(index, int) and 0 <= index <= self.steps_per_epoch):
            raise ValueError(f"sampler state position epoch={epoch!r}, index={index!r} is not allowed: epoch >= 0 and "
                             f"index in 0..{self.steps_per_epoch}")
        self.epoch, self.index = epoch, index
        self._order = self._permutation(epoch)


class TierSampler:
    """Endless batches drawn tier by tier (a curriculum by difficulty), identical across runs and resumable.

    Each step, the tier of every prompt slot of the whole step (batch_size x world_size slots) is drawn from the
    curriculum's weights with a generator seeded by (seed, step), so every rank draws the same tiers; each tier
    then hands out its rows from its own endless shuffled order (a PromptSampler over that tier), and rank r keeps
    its own slice of the step. Weights by `curriculum`:
      uniform  every tier alike;
      linear   easiest first (tiers in the order given), moving toward the last by `max_steps`; no tier below
               MIN_WEIGHT, so no tier taught is forgotten;
      success  tiers solved about half the time (weight 4s(1-s) of each tier's running training accuracy s, fed by
               `update`), where a group's rewards differ most; MIN_WEIGHT keeps the others in view. The trainer
               feeds it the accuracy of the groups it trains on, i.e. after dynamic sampling swapped groups whose
               rewards were all equal, which pulls s toward 0.5 (a known bias, kept as measured).
    `linear` counts progress in draws (`step`), and dynamic sampling draws extra batches: with it, the schedule
    runs ahead of the optimizer steps.
    """

    MIN_WEIGHT = 0.1
    SUCCESS_MOMENTUM = 0.8  # running accuracy: s <- m * s + (1 - m) * this step's accuracy on the tier

    def __init__(self, rows: list[dict], *, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 curriculum: str = "uniform", max_steps: int = 1):
        if curriculum not in ("uniform", "linear", "success"):
            raise ValueError(f"curriculum={curriculum!r} is not allowed: choose 'uniform', 'linear' or 'success'")
        require_int("max_steps", max_steps, 1)
        self.tiers = list(dict.fromkeys(row.get("tier") for row in rows))
        if None in self.tiers:
            raise ValueError("every row needs a 'tier' for a curriculum (rows from generate_tiers carry one)")
        self.cursors = [PromptSampler([r for r in rows if r["tier"] == tier], batch_size=1, seed=seed + 7919 * i)
                        for i, tier in enumerate(self.tiers)]
        PromptSampler(rows, batch_size=batch_size, seed=seed, rank=rank, world_size=world_size)  # same checks
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.curriculum, self.max_steps = curriculum, max_steps
        self.step = 0
        self.success = {tier: 0.5 for tier in self.tiers}

    def weights(self) -> list[float]:
        n = len(self.tiers)
        if self.curriculum == "linear" and n > 1:
            progress = min(1.0, self.step / self.max_steps) * (n - 1)  # 0 = first tier's turn, n - 1 = last's
            return [max(self.MIN_WEIGHT, 1.0 - abs(i - progress)) for i in range(n)]
        if self.curriculum == "success":
            return [max(self.MIN_WEIGHT, 4 * s * (1 - s)) for s in self.success.values()]
        return [1.0] * n

    def __iter__(self) -> Iterator[list[dict]]:
        return self

    def __next__(self) -> list[dict]:
        slots = self.batch_size * self.world_size
        chosen = random.Random(f"{self.seed}:tiers:{self.step}").choices(range(len(self.tiers)), self.weights(), k=slots)
        step_rows = [next(self.cursors[i])[0] for i in chosen]
        self.step += 1
        return step_rows[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]

    def update(self, accuracy_by_tier: dict[str, float]) -> None:
        """This step's training accuracy per tier (the same on every rank: gathered first)."""
        m = self.SUCCESS_MOMENTUM
        for tier, accuracy in accuracy_by_tier.items():
            if tier in self.success:
                self.success[tier] = m * self.success[tier] + (1 - m) * accuracy

    def state_dict(self) -> dict:
        return {"step": self.step, "success": dict(self.success), "cursors": [c.state_dict() for c in self.cursors],
                "tiers": list(self.tiers), "curriculum": self.curriculum, "seed": self.seed,
                "batch_size": self.batch_size, "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        for name in ("tiers", "curriculum", "seed", "batch_size", "world_size"):
            if state.get(name) != getattr(self, name):
                raise ValueError(f"sampler state has {name}={state.get(name)!r} but this sampler has "
                                 f"{name}={getattr(self, name)!r}; a resumed run needs the same tiers and layout")
        for cursor, cursor_state in zip(self.cursors, state["cursors"]):
            cursor.load_state_dict(cursor_state)
        self.step, self.success = state["step"], dict(state["success"])


def make_sampler(rows: list[dict], *, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 curriculum: str = "uniform", max_steps: int = 1) -> PromptSampler | TierSampler:
    """A TierSampler when the rows carry tiers, else the plain PromptSampler."""
    if all(row.get("tier") is not None for row in rows):
        return TierSampler(rows, batch_size=batch_size, seed=seed, rank=rank, world_size=world_size,
                           curriculum=curriculum, max_steps=max_steps)
    return PromptSampler(rows, batch_size=batch_size, seed=seed, rank=rank, world_size=world_size)


__all__ = ["PromptSampler", "TierSampler", "make_sampler"]
