"""DAPO's dynamic sampling: a group whose rewards are all equal has zero advantages and teaches nothing, so it is
swapped for the group of a fresh prompt, at most `budget` fresh prompts per step.

Under several processes every rank draws the same number of fresh batches (the largest any rank needs), so the
task sampler stays aligned across ranks and across a resume.
"""

from __future__ import annotations

from typing import Callable, Iterator

from grpo_helpers.scoring import RewardBreakdown
from grpo_helpers.rollout import Rollout, select_groups


def resample_flat_groups(tasks: list[dict], rollout: Rollout, scores: RewardBreakdown, *, budget: int,
                         sample: Callable[[list[dict]], tuple[Rollout, RewardBreakdown]], task_batches: Iterator,
                         total_over_processes: Callable[[int], float], pad_id: int):
    """(tasks, rollout, scores, stats) with flat groups replaced by fresh ones while the budget lasts; stats: the
    share of flat groups before and after, the fresh prompts drawn and the tokens of the groups swapped out (the
    extra cost)."""
    G = rollout.group_size
    pool = [(tasks, rollout, scores)]
    picks = [(0, i) for i in range(len(tasks))]  # slot -> (pool entry, prompt in it)

    def informative(entry: int, i: int) -> bool:
        values = pool[entry][2].total[i * G:(i + 1) * G]
        return max(values) - min(values) > 1e-9

    before = sum(not informative(*p) for p in picks) / len(picks)
    extra = 0
    while True:  # once a rank wants nothing (no flat group or no budget left) it never wants again
        flat = [slot for slot, p in enumerate(picks) if not informative(*p)]
        want = min(len(flat), budget - extra)
        if total_over_processes(want) == 0:
            break
        fresh = next(task_batches)[:want]  # every rank draws: the sampler stays aligned across ranks
        if fresh:
            pool.append((fresh, *sample(fresh)))
            for i, slot in enumerate(flat[:len(fresh)]):
                picks[slot] = (len(pool) - 1, i)
            extra += len(fresh)
    tasks = [pool[entry][0][i] for entry, i in picks]
    rollout = select_groups([entry[1] for entry in pool], picks, pad_id=pad_id)

    def kept(values_of) -> list[float]:  # the kept groups' values, slot by slot
        return [v for entry, i in picks for v in values_of(pool[entry][2])[i * G:(i + 1) * G]]

    total = kept(lambda breakdown: breakdown.total)
    per_function = {name: kept(lambda breakdown: breakdown.per_function[name]) for name in scores.per_function}
    after = sum(not informative(*p) for p in picks) / len(picks)
    sampled = sum(int(entry[1].lengths.sum()) for entry in pool)  # every token generated, kept or swapped out
    stats = {"dynamic/zero_std_before": before, "dynamic/zero_std_after": after, "dynamic/extra_prompts": extra,
             "dynamic/discarded_tokens": sampled - int(rollout.lengths.sum())}
    seconds = {name: sum(entry[2].seconds.get(name, 0.0) for entry in pool) for name in scores.seconds}
    return tasks, rollout, RewardBreakdown(total=total, per_function=per_function, seconds=seconds), stats
