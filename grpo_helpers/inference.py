"""Evaluation: load the trained adapter, ask it for answers, and measure it against the base model, for any task.

A few dozen held-out tasks give noisy rates, so every rate comes with a Wilson 95% interval, and pass@k uses the
unbiased estimator of Chen et al. (2021) over n >= k samples per task instead of "any of k samples correct".
Base and fine-tuned models are sampled with the same per-batch seeds (common random numbers), so a difference
between them comes from the weights, not from luckier draws.
"""

from __future__ import annotations

import copy
import json
import math
import re
import time
from dataclasses import dataclass, field
from fractions import Fraction
from numbers import Integral
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from grpo_helpers.checks import require_int
from grpo_helpers.errors import MissingFileError
from grpo_helpers.models import load_model_and_tokenizer, load_tokenizer
from grpo_helpers.monitor import hack_signals
from grpo_helpers.rollout import generate_groups
from grpo_helpers.task import Task, extract_answer

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
EXPECTED_ADAPTER = ("a folder with adapter_config.json and adapter_model.safetensors, as written by "
                    "GRPOTrainer.save_adapter (chapter 04 writes it to {run_dir}/adapter)")
# what an evaluation record adds to its row: everything else in a record is the row's own columns
RECORD_FIELDS = ("index", "completions", "correct", "formatted", "lengths", "truncated", "num_correct")
AHA_PATTERNS = ("wait", "let's try another", "let me try", "aha", "actually", "recheck", "mistake")

# --------------------------------------------------------------------------------------------------------------
# Loading


def _check_adapter_dir(adapter: str | Path) -> Path:
    """The adapter folder, or an error that says what was expected and what the folder looks like instead."""
    path = Path(adapter).expanduser()
    if not path.exists():
        raise MissingFileError(f"adapter {str(path)!r} does not exist: expected {EXPECTED_ADAPTER}")
    if not path.is_dir():
        raise ValueError(f"adapter {str(path)!r} is a file: expected {EXPECTED_ADAPTER}")
    missing = [name for name in ADAPTER_FILES if not (path / name).is_file()]
    if missing:
        hint = ""
        if (path / "model" / ADAPTER_FILES[0]).is_file():
            hint = f". It looks like a training checkpoint: its adapter is {str(path / 'model')!r}"
        elif (path / "config.json").is_file():
            hint = ". It looks like a full model folder: pass it as base_model with adapter=None"
        raise MissingFileError(f"adapter folder {str(path)!r} has no {' and no '.join(missing)}: "
                                f"expected {EXPECTED_ADAPTER}{hint}")
    return path


def _describe_base(base: torch.nn.Module, name: str | None) -> str:
    if name:
        return repr(name)
    config = getattr(base, "config", None)
    shape = f"(hidden_size={getattr(config, 'hidden_size', '?')}, layers={getattr(config, 'num_hidden_layers', '?')})"
    return f"a {type(base).__name__}{shape}"


def _attach_adapter(base: torch.nn.Module, path: Path, base_name: str | None) -> torch.nn.Module:
    """PeftModel.from_pretrained, plus the check peft only warns about: every adapter weight found its module."""
    from peft import PeftModel
    from peft.utils import get_peft_model_state_dict
    from safetensors import safe_open

    try:
        trained_on = json.loads((path / ADAPTER_FILES[0]).read_text()).get("base_model_name_or_path")
    except json.JSONDecodeError as err:
        raise ValueError(f"{path / ADAPTER_FILES[0]} is not valid JSON ({err.msg}): expected {EXPECTED_ADAPTER}") from err
    mismatch = (f"adapter {str(path)!r} does not fit the base model {_describe_base(base, base_name)}"
                + (f" (the adapter was trained on {trained_on!r})" if trained_on else ""))
    weights = path / ADAPTER_FILES[1]
    try:
        with safe_open(str(weights), framework="pt") as f:
            saved = set(f.keys())
    except Exception as err:  # safetensors checks the header against the file size: a cut-off copy fails here
        raise ValueError(f"adapter weights {str(weights)!r} cannot be read ({str(err).strip()[:120]}): the file is "
                         f"truncated or not a safetensors file; save the adapter again or pass a whole adapter "
                         f"folder") from err
    try:
        model = PeftModel.from_pretrained(base, path)
    except (RuntimeError, ValueError, KeyError) as err:  # size mismatch, no matching target modules, ...
        raise ValueError(f"{mismatch}: {str(err).strip().splitlines()[0]}") from err
    expected = set(get_peft_model_state_dict(model).keys())
    if saved != expected:
        raise ValueError(f"{mismatch}: {len(expected - saved)} adapter weights of this base are missing from the "
                         f"file and {len(saved - expected)} in the file have no module here "
                         f"(e.g. {sorted(expected ^ saved)[0]})")
    return model


def load_policy(base_model: str | Path | torch.nn.Module, adapter: str | Path | None = None, *,
                tokenizer=None, device: torch.device | str | None = None, dtype: str = "auto",
                merge: bool = False):
    """(model, tokenizer) ready to sample: the base model plus the LoRA adapter trained in chapter 04.

    `base_model` is a model name or folder (loaded with `load_model_and_tokenizer`) or an already-built model
    (reuse weights in memory, or a tiny test model). The tokenizer is `tokenizer`, else the one saved in the
    adapter folder (what training used), else base_model's. `merge=True` folds the adapter into the weights:
    the same outputs, no peft wrapper, no extra matmuls per layer."""
    path = None if adapter is None else _check_adapter_dir(adapter)
    if isinstance(base_model, (str, Path)):
        base_name = str(base_model)
        base, base_tokenizer = load_model_and_tokenizer(base_name, dtype=dtype, device=device)
    elif isinstance(base_model, torch.nn.Module):
        base_name, base_tokenizer = None, None
        base = base_model if device is None else base_model.to(device)
    else:
        raise TypeError(f"base_model is a {type(base_model).__name__}: expected a model name, a folder path or a "
                        f"torch model")
    if tokenizer is None:
        if path is not None and (path / "tokenizer_config.json").is_file():
            tokenizer = load_tokenizer(str(path))
        elif base_tokenizer is not None:
            tokenizer = base_tokenizer
        else:
            raise ValueError("base_model is a model object and there is no tokenizer in the adapter folder: "
                             "pass tokenizer=")
    model = base if path is None else _attach_adapter(base, path, base_name)
    if merge and path is not None:
        model = model.merge_and_unload()
    return model.eval(), tokenizer


def merge_and_save(model: torch.nn.Module, tokenizer, path: str | Path) -> Path:
    """A standalone folder (merged weights W + scale * B @ A, and the tokenizer) that plain transformers loads
    without peft. The merge runs on a copy, so `model` keeps its adapter (it costs one model copy of memory)."""
    if not hasattr(model, "merge_and_unload"):
        raise TypeError(f"{type(model).__name__} has no adapter to merge: expected the peft model that "
                        f"load_policy(base_model, adapter) returns")
    path = Path(path)
    merged = copy.deepcopy(model).merge_and_unload()
    merged.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


# --------------------------------------------------------------------------------------------------------------
# One task


def _check_sampling(temperature: Any, greedy: bool) -> None:
    ok = isinstance(temperature, (int, float)) and not isinstance(temperature, bool) and temperature > 0
    if not greedy and not ok:
        raise ValueError(f"temperature={temperature!r} is not allowed: a number > 0 (or greedy=True)")


def _generator(model: torch.nn.Module, seed: int) -> torch.Generator:
    """A sampling generator on the model's device (random draws need the generator where the probs are)."""
    device = next(model.parameters()).device
    return torch.Generator(device=device).manual_seed(seed % 2**63)


def ask(model: torch.nn.Module, tokenizer, row: dict, *, task: Task, max_new_tokens: int = 256,
        greedy: bool = True, temperature: float = 1.0, seed: int = 0) -> dict[str, Any]:
    """One row's prompt to the model, the completion scored by every reward function of the task: what a reader
    looks at when asking "what does the model write, and would the verifier accept it?"."""
    (row,) = task.rows([row], what="row")
    require_int("max_new_tokens", max_new_tokens)
    _check_sampling(temperature, greedy)
    rollout = generate_groups(model, tokenizer, task.render_prompts(tokenizer, [row]), group_size=1,
                              max_new_tokens=max_new_tokens, temperature=temperature, greedy=greedy,
                              generator=_generator(model, seed))
    text = rollout.texts[0]
    scores = task.score([text], [row], weights={name: 1.0 for name in task.reward_funcs},
                        completion_lengths=rollout.lengths.tolist(), max_completion_length=max_new_tokens)
    return {**row, "completion": text, "answer": extract_answer(text),
            "rewards": {name: values[0] for name, values in scores.per_function.items()},
            "correct": scores.per_function[task.correct_reward][0] == 1.0, "tokens": int(rollout.lengths[0]),
            "truncated": bool(rollout.truncated[0])}


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
# Evaluation


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
    _check_sampling(temperature, greedy)
    start = time.perf_counter()
    completions, lengths, truncated = [], [], []
    for first in tqdm(range(0, len(tasks), batch_size), desc=desc, unit="batch"):
        chunk = tasks[first:first + batch_size]
        rollout = generate_groups(model, tokenizer, task.render_prompts(tokenizer, chunk), group_size=k,
                                  max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                  top_k=top_k, greedy=greedy, generator=_generator(model, seed * 1_000_003 + first))
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
    """`evaluate` on the first `per_tier` tasks of each tier (in the tasks' order), tier by tier; tasks without a
    tier form one set named "all". Per-tier results keep an easy tier's gains from hiding a hard tier's losses."""
    require_int("per_tier", per_tier)
    by_tier: dict[str, list[dict]] = {}
    for row in tasks:
        by_tier.setdefault(row.get("tier") or "all", []).append(row)
    desc = settings.pop("desc", "evaluate")
    return {tier: evaluate(model, tokenizer, rows[:per_tier], desc=f"{desc} [{tier}]", **settings)
            for tier, rows in by_tier.items()}


def tier_metrics(results: dict[str, EvalResult], *, task: Task) -> dict[str, Any]:
    """Flat metrics of `evaluate_tiers`: pooled `eval/accuracy`, format rate, length and the hack monitor's shares
    (first samples), then per tier `eval/<tier>/accuracy` with its Wilson 95 % interval and task count."""
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
    if list(results) != ["all"]:
        for tier, result in results.items():
            out.update({f"eval/{tier}/accuracy": result.accuracy, f"eval/{tier}/accuracy_low": result.accuracy_ci[0],
                        f"eval/{tier}/accuracy_high": result.accuracy_ci[1], f"eval/{tier}/num_tasks": result.num_tasks})
    return out


def split_by_tier(result: EvalResult, *, task: Task) -> dict[str, EvalResult]:
    """The same samples, scored tier by tier (records without a tier form "all"): per-tier pass@k and intervals
    from one mixed evaluation."""
    by_tier: dict[str, list[dict]] = {}
    for record in result.records:
        by_tier.setdefault(record.get("tier") or "all", []).append(record)
    return {tier: score_samples([row_of(r) for r in records], [r["completions"] for r in records], task=task,
                                lengths=[r["lengths"] for r in records],
                                truncated=[r["truncated"] for r in records])
            for tier, records in by_tier.items()}


def paired_sign_test(before: EvalResult, after: EvalResult) -> dict[str, Any]:
    """Exact two-sided sign test (McNemar's, exact) on the same tasks: of the tasks exactly one model solves (first
    sample), is the split further from 50/50 than chance allows? Tighter than comparing two Wilson intervals,
    because tasks both (or neither) solve carry no information about the difference."""
    _check_comparable(before, after)
    only_after = sum(a and not b for a, b in zip(after.solved, before.solved))
    only_before = sum(b and not a for a, b in zip(after.solved, before.solved))
    n, k = only_after + only_before, min(only_after, only_before)
    p_value = 1.0 if n == 0 else min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)
    return {"only_after": only_after, "only_before": only_before, "p_value": p_value}


def plot_tiers(results: dict[str, dict[str, EvalResult]], *, title: str = "held-out accuracy per tier"):
    """Grouped bars: accuracy of each model (outer key) on each tier (inner key), with Wilson 95 % intervals."""
    import matplotlib.pyplot as plt

    models = list(results)
    tiers = list(next(iter(results.values())))
    width = 0.8 / len(models)
    fig, ax = plt.subplots(figsize=(2.2 + 1.6 * len(tiers) * len(models) / 2, 3.8), constrained_layout=True)
    for m, name in enumerate(models):
        xs = [t + (m - (len(models) - 1) / 2) * width for t in range(len(tiers))]
        acc = [results[name][tier].accuracy for tier in tiers]
        err = [[a - results[name][tier].accuracy_ci[0] for a, tier in zip(acc, tiers)],
               [results[name][tier].accuracy_ci[1] - a for a, tier in zip(acc, tiers)]]
        ax.bar(xs, acc, width, yerr=err, capsize=4, label=name)
        for x, a in zip(xs, acc):
            ax.text(x, a + 0.01, f"{a:.0%}", ha="center", va="bottom", fontsize=8)
    n = {tier: next(iter(results.values()))[tier].num_tasks for tier in tiers}
    ax.set_xticks(range(len(tiers)), [f"{tier}\n({n[tier]} tasks)" for tier in tiers])
    ax.set(ylabel="greedy accuracy", ylim=(0, 1.05), title=title)
    ax.legend(fontsize=8)
    return fig


# --------------------------------------------------------------------------------------------------------------
# Comparison


def _check_comparable(base: EvalResult, tuned: EvalResult) -> None:
    same = [row_of(r) for r in base.records] == [row_of(r) for r in tuned.records]
    if not same:
        raise ValueError(f"the two results are on different tasks ({base.num_tasks} vs {tuned.num_tasks}, or a "
                         f"different order): evaluate both models on the same task list")
    if base.k != tuned.k:
        raise ValueError(f"the two results use k={base.k} and k={tuned.k} samples per task: evaluate both with the same k")


def compare(base_result: EvalResult, tuned_result: EvalResult) -> dict[str, Any]:
    """Side-by-side numbers and the tasks one model solves (first sample correct) and the other does not."""
    _check_comparable(base_result, tuned_result)
    base, tuned = base_result.summary(), tuned_result.summary()
    table = [{"metric": name, "base": base[name], "tuned": tuned[name], "change": tuned[name] - base[name]}
             for name in base if name != "tasks"]

    def rows(solved_by: EvalResult, missed_by: EvalResult) -> list[dict[str, Any]]:
        return [{"index": a["index"], **row_of(a), "base": base_result.records[a["index"]]["completions"][0],
                 "tuned": tuned_result.records[a["index"]]["completions"][0]}
                for a, b in zip(solved_by.records, missed_by.records) if a["correct"][0] and not b["correct"][0]]

    both = sum(a and b for a, b in zip(base_result.solved, tuned_result.solved))
    neither = sum(not a and not b for a, b in zip(base_result.solved, tuned_result.solved))
    return {"tasks": base_result.num_tasks, "table": table, "only_base": rows(base_result, tuned_result),
            "only_tuned": rows(tuned_result, base_result), "both": both, "neither": neither}


def plot_comparison(base_result: EvalResult, tuned_result: EvalResult, *,
                    labels: tuple[str, str] = ("base", "fine-tuned"), title: str | None = None):
    """Grouped bars of accuracy, format rate and pass@k with Wilson 95% error bars; returns the Figure."""
    import matplotlib.pyplot as plt

    _check_comparable(base_result, tuned_result)
    k = base_result.k
    with_format = base_result.format_rate is not None and tuned_result.format_rate is not None
    names = ["accuracy"] + (["format rate"] if with_format else []) + [f"pass@{k}"]
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.38
    for offset, result, label, color in ((-width / 2, base_result, labels[0], "tab:gray"),
                                         (width / 2, tuned_result, labels[1], "tab:blue")):
        values = [result.accuracy] + ([result.format_rate] if with_format else []) + [result.pass_at[k]]
        intervals = [result.accuracy_ci] + ([result.format_ci] if with_format else []) + [result.pass_at_k_ci]
        errors = [[v - lo for v, (lo, _) in zip(values, intervals)], [hi - v for v, (_, hi) in zip(values, intervals)]]
        xs = [i + offset for i in range(len(names))]
        ax.bar(xs, values, width, yerr=errors, capsize=4, label=label, color=color)
        for x, v in zip(xs, values):
            ax.text(x, v + 0.01, f"{v:.2f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("rate (Wilson 95% interval)")
    ax.set_title(title or f"{base_result.num_tasks} held-out tasks, {k} sample(s) each")
    ax.legend()
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------------------------
# "Aha" moments


def find_aha(records: list[dict], *, task: Task, patterns: Sequence[str] = AHA_PATTERNS) -> list[dict[str, Any]]:
    """Completions that correct themselves (a phrase from `patterns`, any case, as whole words) AND end with a
    correct answer, most corrections first, then shortest. Correctness is re-checked with the verifier, so the
    records can be EvalResult.records (`completions` lists) or training log rows (one `completion` each)."""
    if isinstance(patterns, str) or not patterns or not all(isinstance(p, str) and p.strip() for p in patterns):
        raise ValueError(f"patterns={patterns!r} is not allowed: a non-empty list of non-empty phrases")
    # escaped literals between word-boundary lookarounds: linear time on untrusted text
    regex = re.compile("|".join(rf"(?<!\w){re.escape(p.strip())}(?!\w)" for p in patterns), re.IGNORECASE)
    found = []
    for index, record in enumerate(records):
        texts = record["completions"] if "completions" in record else [record["completion"]]
        row = {key: value for key, value in row_of(record).items() if key != "completion"}
        correct = task.correct(list(texts), [row], repeat=len(texts))
        for text, ok in zip(texts, correct):
            hits = [m.group(0).lower() for m in regex.finditer(text)]
            if ok and hits:
                found.append({"record": index, **row, "completion": text,
                              "phrases": sorted(set(hits)), "corrections": len(hits), "length": len(text)})
    return sorted(found, key=lambda a: (-a["corrections"], a["length"]))


__all__ = [
    "AHA_PATTERNS", "RECORD_FIELDS", "EvalResult", "load_policy", "merge_and_save", "ask", "row_of",
    "pass_at_k", "wilson_interval", "score_samples", "evaluate", "compare", "plot_comparison", "find_aha",
    "evaluate_tiers", "tier_metrics", "split_by_tier", "paired_sign_test", "plot_tiers",
]
