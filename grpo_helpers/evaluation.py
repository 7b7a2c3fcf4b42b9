"""Evaluation that training and the objectives matrix share: sample held-out tasks, judge them, and report rates
with their uncertainty.

A few dozen held-out tasks give noisy rates, so every rate comes with a Wilson 95% interval, and pass@k uses the
unbiased estimator of Chen et al. (2021) over n >= k samples per task instead of "any of k samples correct".
Two models compared on the same tasks get an exact paired sign test. Models are sampled with per-batch seeds
(common random numbers), so a difference between two of them comes from the weights, not from luckier draws.
Chapter 06's tools around it (loading an adapter, asking one task, side-by-side plots, "aha" moments) are in
inference.py.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from fractions import Fraction
from numbers import Integral
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from grpo_helpers.aha import aha_metrics
from grpo_helpers.checks import require_int
from grpo_helpers.monitor import hack_signals
from grpo_helpers.rollout import generate_groups
from grpo_helpers.task import Task

# what an evaluation record adds to its row: everything else in a record is the row's own columns
RECORD_FIELDS = ("index", "completions", "correct", "formatted", "lengths", "truncated", "num_correct")


# --------------------------------------------------------------------------------------------------------------
# Statistics


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of P(at least one of k samples is correct) from n samples of which c are correct:
    1 - C(n-c, k) / C(n, k), the chance that k samples drawn without replacement from the n miss every correct one."""
    for name, value, low in (("n", n, 1), ("c", c, 0), ("k", k, 1)):
        if not isinstance(value, Integral) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name}={value!r} is not allowed: an integer >= {low}")
    if c > n or k > n:
        raise ValueError(f"c={c}, k={k} are not allowed with n={n}: need c <= n and k <= n")
    return float(1 - Fraction(math.comb(n - c, k), math.comb(n, k)))


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial rate; unlike p +- z*sqrt(p(1-p)/n) it stays inside [0, 1] and is not
    zero-width at 0/n or n/n, which matters for the small accuracies of a small model."""
    if not isinstance(n, Integral) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n={n!r} is not allowed: an integer >= 1")
    if not isinstance(successes, Integral) or isinstance(successes, bool) or not 0 <= successes <= n:
        raise ValueError(f"successes={successes!r} is not allowed: an integer in 0..n={n}")
    if not z > 0:
        raise ValueError(f"z={z!r} is not allowed: a number > 0 (1.96 for 95%)")
    p = successes / n
    denominator = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, center - half), min(1.0, center + half)


# --------------------------------------------------------------------------------------------------------------
# Sampling and scoring held-out tasks


def check_sampling(temperature: Any, greedy: bool) -> None:
    """Refused before any sampling: a temperature that is not > 0 fails deep inside the softmax otherwise."""
    ok = isinstance(temperature, (int, float)) and not isinstance(temperature, bool) and temperature > 0
    if not greedy and not ok:
        raise ValueError(f"temperature={temperature!r} is not allowed: a number > 0 (or greedy=True)")


def sampling_generator(model: torch.nn.Module, seed: int) -> torch.Generator:
    """A sampling generator on the model's device (random draws need the generator where the probs are)."""
    device = next(model.parameters()).device
    return torch.Generator(device=device).manual_seed(seed % 2**63)


@dataclass
class EvalResult:
    """Rates on a task set. accuracy and format_rate describe the FIRST sample of each task (one Bernoulli per
    task, so the Wilson interval applies and the numbers mean the same for any k); pass_at uses all k samples."""

    k: int
    accuracy: float
    accuracy_ci: tuple[float, float]
    format_rate: float | None  # None when the task has no format reward
    format_ci: tuple[float, float] | None
    mean_length: float  # tokens per completion, all samples
    pass_at: dict[int, float]  # j -> unbiased pass@j from the k samples, j = 1..k
    pass_at_k_ci: tuple[float, float]  # Wilson interval of pass@k (= share of tasks with a correct sample)
    records: list[dict[str, Any]]  # per row: its columns, then completions, correct, formatted, lengths, ...
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def num_tasks(self) -> int:
        return len(self.records)

    @property
    def solved(self) -> list[bool]:
        """Per task: is the first sample correct (what accuracy counts)."""
        return [r["correct"][0] for r in self.records]

    def summary(self) -> dict[str, float]:
        out = {"tasks": self.num_tasks, "accuracy": self.accuracy}
        if self.format_rate is not None:
            out["format_rate"] = self.format_rate
        out["mean_length"] = self.mean_length
        out.update({f"pass@{j}": v for j, v in self.pass_at.items()})
        return out


def row_of(record: dict[str, Any]) -> dict[str, Any]:
    """The row an evaluation record was made from (its own columns, without what the evaluation added)."""
    return {key: value for key, value in record.items() if key not in RECORD_FIELDS}


def score_samples(rows: list[dict], completions: list[list[str]], *, task: Task, lengths: list[list[int]],
                  truncated: list[list[bool]] | None = None) -> EvalResult:
    """Score k completions per row (the same k for every row) with the task's judge and aggregate."""
    rows = task.rows(rows, what="rows")
    k = len(completions[0]) if completions else 0
    if len(completions) != len(rows) or k < 1 or any(len(c) != k for c in completions):
        raise ValueError(f"completions must hold the same number (>= 1) of samples for each of the {len(rows)} "
                         f"rows, got {[len(c) for c in completions]}")
    if len(lengths) != len(rows) or any(len(x) != k for x in lengths):
        raise ValueError("lengths must have the same shape as completions (rows x k)")
    truncated = truncated if truncated is not None else [[False] * k for _ in rows]
    judged = task.judge([text for texts in completions for text in texts], rows, repeat=k)
    records = []
    for i, row in enumerate(rows):
        part = slice(i * k, (i + 1) * k)
        correct = judged["correct"][part]
        records.append({**row, "tier": row.get("tier"), "index": i, "completions": list(completions[i]),
                        "correct": correct, "formatted": judged["formatted"][part] if "formatted" in judged else None,
                        "lengths": [int(x) for x in lengths[i]], "truncated": [bool(x) for x in truncated[i]],
                        "num_correct": sum(correct)})
    n = len(records)
    first_correct = sum(r["correct"][0] for r in records)
    first_formatted = sum(r["formatted"][0] for r in records) if "formatted" in judged else None
    any_correct = sum(r["num_correct"] > 0 for r in records)
    return EvalResult(
        k=k, accuracy=first_correct / n, accuracy_ci=wilson_interval(first_correct, n),
        format_rate=None if first_formatted is None else first_formatted / n,
        format_ci=None if first_formatted is None else wilson_interval(first_formatted, n),
        mean_length=sum(sum(r["lengths"]) for r in records) / (n * k),
        pass_at={j: sum(pass_at_k(k, r["num_correct"], j) for r in records) / n for j in range(1, k + 1)},
        pass_at_k_ci=wilson_interval(any_correct, n), records=records)


def evaluate(model: torch.nn.Module, tokenizer, tasks: list[dict], *, task: Task, k: int = 1, max_new_tokens: int = 256,
             temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, greedy: bool = False, batch_size: int = 8,
             seed: int = 0, desc: str = "evaluate") -> EvalResult:
    """k samples per task (greedy only with k == 1: greedy samples are identical), scored and aggregated.

    `batch_size` tasks (batch_size * k completions) are generated together; batch b is sampled with its own
    generator seeded from (seed, b), so the same tasks, seed and batch_size give the same samples, and two models
    evaluated with the same seed share their random numbers."""
    tasks = task.rows(tasks, what="tasks")
    for name, value in (("k", k), ("max_new_tokens", max_new_tokens), ("batch_size", batch_size)):
        require_int(name, value)
    if greedy and k > 1:
        raise ValueError(f"greedy=True with k={k} is not allowed: greedy samples of a task are identical, so "
                         f"pass@k would equal accuracy; use k=1 for greedy, or greedy=False to sample k")
    check_sampling(temperature, greedy)
    start = time.perf_counter()
    completions, lengths, truncated = [], [], []
    for first in tqdm(range(0, len(tasks), batch_size), desc=desc, unit="batch"):
        chunk = tasks[first:first + batch_size]
        rollout = generate_groups(model, tokenizer, task.render_prompts(tokenizer, chunk), group_size=k,
                                  max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                  top_k=top_k, greedy=greedy, generator=sampling_generator(model, seed * 1_000_003 + first))
        for i in range(len(chunk)):  # rows i*k .. i*k + k - 1 are the samples of task i (prompt-major)
            completions.append(rollout.texts[i * k:(i + 1) * k])
            lengths.append(rollout.lengths[i * k:(i + 1) * k].tolist())
            truncated.append(rollout.truncated[i * k:(i + 1) * k].tolist())
    result = score_samples(tasks, completions, task=task, lengths=lengths, truncated=truncated)
    result.settings = {"k": k, "greedy": greedy, "temperature": temperature, "top_p": top_p, "top_k": top_k,
                       "max_new_tokens": max_new_tokens,
                       "batch_size": batch_size, "seed": seed, "seconds": time.perf_counter() - start}
    return result


def evaluate_tiers(model: torch.nn.Module, tokenizer, tasks: list[dict], *, per_tier: int,
                   **settings: Any) -> dict[str, EvalResult]:
    """`evaluate` on the first `per_tier` tasks of each tier (in the tasks' order), scored tier by tier; tasks
    without a tier form one set named "all". Per-tier results keep an easy tier's gains from hiding a hard tier's
    losses. The tiers are generated together (batches span tiers): a decode step's cost is mostly fixed, so one
    batch of 64 costs less than two of 32."""
    require_int("per_tier", per_tier)
    by_tier: dict[str, list[dict]] = {}
    for row in tasks:
        by_tier.setdefault(row.get("tier") or "all", []).append(row)
    chosen = [row for rows in by_tier.values() for row in rows[:per_tier]]
    result = evaluate(model, tokenizer, chosen, **settings)
    parts = split_by_tier(result, task=settings["task"])
    for part in parts.values():
        part.settings = result.settings
    return parts


def tier_metrics(results: dict[str, EvalResult], *, task: Task) -> dict[str, Any]:
    """Flat metrics of `evaluate_tiers`: pooled `eval/accuracy`, format rate, length, the hack monitor's shares and
    the aha metrics (`eval/aha/rate`, ...; first samples), then per tier `eval/<tier>/accuracy` with its Wilson 95 %
    interval and task count, and `eval/<tier>/aha/rate`, ..."""
    records = [r for result in results.values() for r in result.records]
    solved = sum(r["correct"][0] for r in records)
    first = [r["completions"][0] for r in records]
    signals = hack_signals(first, [row_of(r) for r in records], task=task)
    out: dict[str, Any] = {"eval/accuracy": solved / len(records)}
    if records[0]["formatted"] is not None:
        out["eval/format_rate"] = sum(r["formatted"][0] for r in records) / len(records)
    out["eval/mean_length"] = sum(res.mean_length * res.num_tasks for res in results.values()) / len(records)
    out["eval/num_tasks"] = len(records)
    if "hack/uses_numbers" in signals:
        out["eval/uses_numbers"] = signals["hack/uses_numbers"]
    out["eval/identical_answers"] = signals["hack/identical_answers"]
    out.update({f"eval/{name}": value for name, value in _aha(records, task=task).items()})
    if list(results) != ["all"]:
        for tier, result in results.items():
            out.update({f"eval/{tier}/accuracy": result.accuracy, f"eval/{tier}/accuracy_low": result.accuracy_ci[0],
                        f"eval/{tier}/accuracy_high": result.accuracy_ci[1], f"eval/{tier}/num_tasks": result.num_tasks})
            out.update({f"eval/{tier}/{name}": value for name, value in _aha(result.records, task=task).items()})
    return out


def _aha(records: list[dict], *, task: Task) -> dict[str, float]:
    """The aha metrics of first samples (grpo_helpers/aha.py), with the judgements already made."""
    return aha_metrics([r["completions"][0] for r in records], [row_of(r) for r in records], task=task,
                       correct=[r["correct"][0] for r in records])


def split_by_tier(result: EvalResult, *, task: Task) -> dict[str, EvalResult]:
    """The same samples, scored tier by tier (records without a tier form "all"): per-tier pass@k and intervals
    from one mixed evaluation."""
    return split_by(result, key=lambda record: record.get("tier") or "all", task=task)


def split_by(result: EvalResult, *, key: Callable[[dict], Any], task: Task) -> dict[Any, EvalResult]:
    """The same samples, scored per group of records (`key(record)`, e.g. the number of numbers), in the order
    the groups first appear."""
    groups: dict[Any, list[dict]] = {}
    for record in result.records:
        groups.setdefault(key(record), []).append(record)
    return {name: score_samples([row_of(r) for r in records], [r["completions"] for r in records], task=task,
                                lengths=[r["lengths"] for r in records],
                                truncated=[r["truncated"] for r in records])
            for name, records in groups.items()}


def check_comparable(base: EvalResult, tuned: EvalResult) -> None:
    """Two results compare task by task only when they hold the same tasks in the same order, with the same k."""
    same = [row_of(r) for r in base.records] == [row_of(r) for r in tuned.records]
    if not same:
        raise ValueError(f"the two results are on different tasks ({base.num_tasks} vs {tuned.num_tasks}, or a "
                         f"different order): evaluate both models on the same task list")
    if base.k != tuned.k:
        raise ValueError(f"the two results use k={base.k} and k={tuned.k} samples per task: evaluate both with the same k")


def paired_sign_test(before: EvalResult, after: EvalResult) -> dict[str, Any]:
    """Exact two-sided sign test (McNemar's, exact) on the same tasks: of the tasks exactly one model solves (first
    sample), is the split further from 50/50 than chance allows? Tighter than comparing two Wilson intervals,
    because tasks both (or neither) solve carry no information about the difference."""
    check_comparable(before, after)
    return sign_test(before.solved, after.solved)


def sign_test(before: list[bool], after: list[bool]) -> dict[str, Any]:
    """The exact two-sided sign test on paired yes/no outcomes (task i before and after): `paired_sign_test` on
    solved tasks, chapter 06 on "is an aha"."""
    if len(before) != len(after):
        raise ValueError(f"paired outcomes need the same tasks: {len(before)} before, {len(after)} after")
    only_after = sum(a and not b for a, b in zip(after, before))
    only_before = sum(b and not a for a, b in zip(after, before))
    n, k = only_after + only_before, min(only_after, only_before)
    p_value = 1.0 if n == 0 else min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)
    return {"only_after": only_after, "only_before": only_before, "p_value": p_value}


__all__ = ["RECORD_FIELDS", "EvalResult", "pass_at_k", "wilson_interval", "paired_sign_test", "sign_test", "row_of",
           "score_samples", "evaluate", "evaluate_tiers", "tier_metrics", "split_by_tier", "split_by"]
