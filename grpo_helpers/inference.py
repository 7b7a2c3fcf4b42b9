"""Chapter 06's tools: load the trained adapter, ask it one task, compare it with the base model side by side, and
find its "aha" moments, for any task.

The measuring itself (evaluate, EvalResult, Wilson intervals, pass@k, the paired sign test) is in evaluation.py,
which training shares; this module builds on it.
"""

from __future__ import annotations

import copy
import html
import json
import re
from pathlib import Path
from typing import Any

import torch

from grpo_helpers.aha import checked_claims
from grpo_helpers.checks import require_int
from grpo_helpers.errors import MissingFileError
from grpo_helpers.evaluation import EvalResult, check_comparable, check_sampling, row_of, sampling_generator
from grpo_helpers.models import load_model_and_tokenizer, load_tokenizer
from grpo_helpers.rollout import generate_groups
from grpo_helpers.task import Task, extract_answer

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
EXPECTED_ADAPTER = ("a folder with adapter_config.json and adapter_model.safetensors, as written by "
                    "GRPOTrainer.save_adapter (chapter 04 writes it to {run_dir}/adapter)")

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


def ask(model: torch.nn.Module, tokenizer, row: dict, *, task: Task, max_new_tokens: int = 256,
        greedy: bool = True, temperature: float = 1.0, seed: int = 0) -> dict[str, Any]:
    """One row's prompt to the model, the completion scored by every reward function of the task: what a reader
    looks at when asking "what does the model write, and would the verifier accept it?"."""
    (row,) = task.rows([row], what="row")
    require_int("max_new_tokens", max_new_tokens)
    check_sampling(temperature, greedy)
    rollout = generate_groups(model, tokenizer, task.render_prompts(tokenizer, [row]), group_size=1,
                              max_new_tokens=max_new_tokens, temperature=temperature, greedy=greedy,
                              generator=sampling_generator(model, seed))
    text = rollout.texts[0]
    scores = task.score([text], [row], weights={name: 1.0 for name in task.reward_funcs},
                        completion_lengths=rollout.lengths.tolist(), max_completion_length=max_new_tokens)
    return {**row, "completion": text, "answer": extract_answer(text),
            "rewards": {name: values[0] for name, values in scores.per_function.items()},
            "correct": scores.per_function[task.correct_reward][0] == 1.0, "tokens": int(rollout.lengths[0]),
            "truncated": bool(rollout.truncated[0])}


# --------------------------------------------------------------------------------------------------------------
# Comparison


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


def compare(base_result: EvalResult, tuned_result: EvalResult) -> dict[str, Any]:
    """Side-by-side numbers and the tasks one model solves (first sample correct) and the other does not."""
    check_comparable(base_result, tuned_result)
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

    check_comparable(base_result, tuned_result)
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
# "Aha" moments: false claims corrected on the way to a correct answer (the claims recomputed, grpo_helpers/aha.py)


def find_aha(records: list[dict], *, task: Task) -> list[dict[str, Any]]:
    """Every aha in evaluation records (`completions` lists) or training log rows (one `completion` each): the
    completion, its corrections as (false claim, correction) pairs, most corrections first, then shortest."""
    found = []
    for index, record in enumerate(records):
        texts = record["completions"] if "completions" in record else [record["completion"]]
        row = {key: value for key, value in row_of(record).items() if key != "completion"}
        claims = checked_claims(task, texts)  # first: a task without a checker is told so before any judging
        correct = task.correct(list(texts), [row], repeat=len(texts))
        for text, ok, claim in zip(texts, correct, claims):
            if ok and claim.corrected:
                found.append({"record": index, **row, "completion": text, "corrections": claim.corrected,
                              "length": len(text)})
    return sorted(found, key=lambda aha: (-len(aha["corrections"]), aha["length"]))


def highlight(aha: dict[str, Any]) -> str:
    """The completion as HTML with each corrected false claim marked red and its correction green (chapter 06)."""
    text = html.escape(aha["completion"])
    marks = {wrong: "#f8d7da" for wrong, _ in aha["corrections"]} | {right: "#d4edda" for _, right in aha["corrections"]}
    for claim, colour in marks.items():  # a claim is digits, operators and spaces: unchanged by escaping
        text = re.sub(rf"(?<!\d){re.escape(claim)}(?!\d)", f'<span style="background:{colour}">{claim}</span>', text)
    return f"<pre>{text}</pre>"


__all__ = ["load_policy", "merge_and_save", "ask", "plot_tiers", "compare", "plot_comparison",
           "find_aha", "highlight"]
