"""The task contract: what the trainer, the cold start and evaluation need to know about a verifiable task.

It follows TRL's conventions, so rows and reward functions written for TRL's `GRPOTrainer` work unchanged:
- rows: a list of dicts or a `datasets.Dataset`; the `prompt` column holds a string (used as it is) or a list of
  chat messages (rendered with the model's chat template; a last assistant message is continued, so a prompt can
  start the answer); every other column reaches the reward functions by name;
- reward functions: `f(completions, **kwargs) -> list[float]`, one value per completion; each column arrives as a
  list aligned with the completions (a prompt's value repeated across its group), `prompts` too;
- correctness: one of the reward functions is the task's judge (`correct_reward`): a completion is correct when
  it scores exactly 1.0 there. Accuracy, held-out evaluation, the curriculum and the hack monitor all read it.
Optional: a `tier` column names a row's difficulty (the curriculum draws tiers by measured success); rows with a
`completion` column are prompt-completion pairs (TRL's format) for a supervised cold start; a task whose reasoning
makes checkable claims can give a `check_claims` that recomputes them (the `aha/*` metrics read it).

Example (a task none of the package's files knows):

    def exact(completions, answer, **kwargs):          # `answer` is a column of the rows
        return [float(extract_answer(c) == a) for c, a in zip(completions, answer)]

    task = Task(reward_funcs=[exact])                     # the first function is the judge unless correct_reward says
    rows = [{"prompt": [{"role": "user", "content": "Say <answer>hi</answer>."}], "answer": "hi"}] * 8
    trainer = GRPOTrainer(config, train_dataset=rows, eval_dataset=rows, reward_funcs=task)
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from grpo_helpers.scoring import RewardBreakdown, RewardFunction, score_with

Prompt = str | list[dict]
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"


def extract_answer(completion: str) -> str | None:
    """Content of the last `<answer>...</answer>` block (the last close tag and the nearest open tag before it)."""
    close = completion.rfind(ANSWER_CLOSE)
    if close < 0:
        return None
    open_ = completion.rfind(ANSWER_OPEN, 0, close)
    if open_ < 0:
        return None
    return completion[open_ + len(ANSWER_OPEN):close].strip()


@dataclass(frozen=True)
class Claims:
    """What a completion's checkable claims came to, recomputed by the task (never taken from its words): each
    false claim later replaced by the true one ("13 * 10 = 16" ... "13 * 10 = 130"), and the false ones left standing."""

    corrected: list[tuple[str, str]]  # (the false claim, the later true claim about the same thing), as written
    uncorrected: list[str]  # false claims nothing later in the completion corrects


@dataclass
class Task:
    """A verifiable task: its reward functions and judge, plus optional task-specific helpers."""

    reward_funcs: dict[str, RewardFunction] | Sequence[RewardFunction]
    """every reward function the task offers: by name, or a list (each named by its __name__)"""
    reward_weights: dict[str, float] | None = None
    """the functions GRPO trains on and their weights (None = every function, weight 1.0)"""
    correct_reward: str | None = None
    """the judge: a completion is correct when this function gives it exactly 1.0 (None = the first function)"""
    format_reward: str | None = None
    """a function whose 1.0 means "well formed", for the format rate of evaluations (None = not reported)"""
    prompt: Callable[[dict], Prompt] | None = None
    """builds a row's prompt when the row has no `prompt` column (Countdown keeps its rows small this way)"""
    traces: Callable[..., list[dict]] | None = None
    """`traces(rows, seed=...)` -> prompt-completion rows for a cold start (verified demonstrations); with
    `sft_recovery_share` > 0 the cold start also passes `recovery_share=`"""
    signals: Callable[[Sequence[str], Sequence[dict]], dict[str, float]] | None = None
    """task-specific hack-monitor shares, `signals(completions, rows)` -> {"hack/<name>": share}"""
    question_key: Callable[[dict], Any] | None = None
    """what makes two rows the same question for `hack/identical_answers` (None = the same prompt)"""
    example_answer: str | None = None
    """the prompt's own example answer, if it shows one: copying it everywhere is the classic hack"""
    check_claims: Callable[[str], Claims] | None = None
    """recomputes what a completion claims on its way (e.g. each "a op b = c"): self-corrections, the `aha/*` metrics"""
    check_rows: Callable[[list[dict]], list[dict]] | None = None
    """validates rows (and returns clean copies) before any work; None = every row needs a prompt"""
    name: str = "task"

    def __post_init__(self) -> None:
        if not isinstance(self.reward_funcs, dict):
            functions = list(self.reward_funcs) if isinstance(self.reward_funcs, (list, tuple)) else [self.reward_funcs]
            self.reward_funcs = {getattr(f, "__name__", f"reward_{i}"): f for i, f in enumerate(functions)}
        if not self.reward_funcs or not all(callable(f) for f in self.reward_funcs.values()):
            raise ValueError(f"reward_funcs={self.reward_funcs!r} is not allowed: one or more callables "
                             f"f(completions, **kwargs) -> list[float], as a list or a dict by name")
        names = list(self.reward_funcs)
        self.reward_weights = dict(self.reward_weights or {name: 1.0 for name in names})
        for name, weight in self.reward_weights.items():
            if name not in self.reward_funcs:
                raise ValueError(f"reward_weights names {name!r}, which is not one of the task's reward functions: "
                                 f"{', '.join(map(repr, names))}")
            if not isinstance(weight, (int, float)) or isinstance(weight, bool):
                raise ValueError(f"reward_weights[{name!r}]={weight!r} is not allowed: a number")
        self.correct_reward = self.correct_reward or names[0]
        for role in ("correct_reward", "format_reward"):
            value = getattr(self, role)
            if value is not None and value not in self.reward_funcs:
                raise ValueError(f"{role}={value!r} is not allowed: one of the task's reward functions, "
                                 f"{', '.join(map(repr, names))}")

    # ------------------------------------------------------------------ rows and prompts
    def rows(self, dataset: Any, *, what: str = "dataset") -> list[dict]:
        """Clean rows from a list of dicts or a `datasets.Dataset`; a bad row is an error naming it."""
        if hasattr(dataset, "to_list") and not isinstance(dataset, list):
            dataset = dataset.to_list()
        if not isinstance(dataset, (list, tuple)) or not dataset:
            raise ValueError(f"{what} must be a non-empty list of dicts or a datasets.Dataset, got "
                             f"{type(dataset).__name__}{'' if dataset else ' (empty)'}")
        for i, row in enumerate(dataset):
            if not isinstance(row, dict):
                raise ValueError(f"{what} row {i}: expected a dict, got {type(row).__name__}: {row!r}")
        if self.check_rows is not None:
            return self.check_rows(list(dataset))
        for i, row in enumerate(dataset):
            if not _is_prompt(row.get("prompt")):
                raise ValueError(f"{what} row {i}: 'prompt'={row.get('prompt')!r} is not allowed: a string or a list "
                                 f"of chat messages ({{'role': ..., 'content': ...}}); row has {sorted(row)}")
        return list(dataset)

    def prompt_of(self, row: dict) -> Prompt:
        return row["prompt"] if "prompt" in row or self.prompt is None else self.prompt(row)

    def render_prompts(self, tokenizer, rows: Sequence[dict]) -> list[str]:
        """Each row's prompt as the model reads it (the chat template applied to message lists)."""
        return [render_prompt(tokenizer, self.prompt_of(row)) for row in rows]

    # ------------------------------------------------------------------ rewards and judgement
    def score(self, completions: list[str], rows: Sequence[dict], *, repeat: int = 1,
              weights: dict[str, float] | None = None, step: int | None = None, time_limit: float | None = None,
              **extra: Any) -> RewardBreakdown:
        """The weighted reward functions on completions; completion i answers rows[i // repeat]."""
        return score_with(self.reward_funcs, completions, weights=self.reward_weights if weights is None else weights,
                          columns={**self.columns(rows, repeat=repeat), **extra}, step=step, time_limit=time_limit)

    def columns(self, rows: Sequence[dict], *, repeat: int = 1) -> dict[str, list]:
        """Every column but `prompt`, one entry per completion (each row's value `repeat` times), and `prompts`."""
        names = list(dict.fromkeys(name for row in rows for name in row if name != "prompt"))
        out = {name: [row.get(name) for row in rows for _ in range(repeat)] for name in names}
        out["prompts"] = [self.prompt_of(row) for row in rows for _ in range(repeat)]
        return out

    def judge(self, completions: list[str], rows: Sequence[dict], *, repeat: int = 1) -> dict[str, list[bool]]:
        """{"correct": [...]} and, when the task has a format reward, {"formatted": [...]}: exactly 1.0 means yes."""
        names = [self.correct_reward] + ([self.format_reward] if self.format_reward else [])
        scores = self.score(completions, rows, repeat=repeat, weights={name: 1.0 for name in names})
        out = {"correct": [v == 1.0 for v in scores.per_function[self.correct_reward]]}
        if self.format_reward:
            out["formatted"] = [v == 1.0 for v in scores.per_function[self.format_reward]]
        return out

    def correct(self, completions: list[str], rows: Sequence[dict], *, repeat: int = 1) -> list[bool]:
        """The judge alone (the hack monitor and per-tier accuracy call it every step: no format reward runs)."""
        scores = self.score(completions, rows, repeat=repeat, weights={self.correct_reward: 1.0})
        return [v == 1.0 for v in scores.per_function[self.correct_reward]]

    def key(self, row: dict) -> Any:
        """What makes two rows the same question (for `hack/identical_answers`)."""
        if self.question_key is not None:
            return self.question_key(row)
        return json.dumps(self.prompt_of(row), sort_keys=True, default=str)


def _is_prompt(prompt: Any) -> bool:
    if isinstance(prompt, str):
        return bool(prompt)
    return (isinstance(prompt, list) and len(prompt) > 0
            and all(isinstance(m, dict) and "role" in m and "content" in m for m in prompt))


def render_prompt(tokenizer, prompt: Prompt) -> str:
    """A string prompt as it is; chat messages through the chat template, continuing a last assistant message (the
    prompt then starts the answer) or else opening the assistant's turn."""
    if isinstance(prompt, str):
        return prompt
    if prompt[-1]["role"] == "assistant":
        return tokenizer.apply_chat_template(prompt, tokenize=False, continue_final_message=True)
    return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)


def tokenize_prompts(tokenizer, prompts: list[str]):
    """Left-padded batch (prompts end where generation starts); the template already holds special tokens."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left",
                     add_special_tokens=False)  # input_ids, attention_mask: (B, T)


def split_digest(train: Sequence[dict], test: Sequence[dict]) -> dict[str, Any]:
    """What a run trained and evaluated on, whatever its config says: row counts per tier and a SHA-256 of both row
    lists, in order, so two runs can be checked to have used the same split."""
    digest = hashlib.sha256()
    for name, rows in (("train", train), ("test", test)):
        for row in rows:
            digest.update(json.dumps([name, row], sort_keys=True, default=str).encode())
    return {"train_tasks": len(train), "test_tasks": len(test),
            "train_tiers": dict(Counter(r.get("tier") or "all" for r in train)),
            "test_tiers": dict(Counter(r.get("tier") or "all" for r in test)), "sha256": digest.hexdigest()}


__all__ = ["Prompt", "Claims", "Task", "ANSWER_OPEN", "ANSWER_CLOSE", "extract_answer", "render_prompt", "tokenize_prompts",
           "split_digest"]
