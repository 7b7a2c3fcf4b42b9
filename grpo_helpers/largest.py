"""The second shipped task, "the largest number": which of five numbers is the largest? Learned by pure RL.

Countdown needs a cold start because the bundled 135M model never solves it. This task is its counterpart: the
base model already answers about one in four correctly (chapter 08 measures it), so GRPO has something to amplify
with no supervised step at all, R1-Zero style. Chapter 08 writes this module's pieces by hand, as a reader would for
a task of their own, and checks that they equal these.

A row: `{"prompt": [chat messages], "numbers": [5 distinct ints], "answer": their maximum}`. The prompt shows one
worked example (a question and the answer in `<answer>` tags), then asks; the judge reads only the last
`<answer>...</answer>` block, which must hold exactly the number (digits, no eval).
"""

from __future__ import annotations

import random

from grpo_helpers.checks import require_int
from grpo_helpers.task import Task, extract_answer

EXAMPLE_NUMBERS = [61, 58, 35, 86, 32]
INSTRUCTION = "Give the final number in <answer> </answer> tags."


def question(numbers: list[int]) -> str:
    return f"Which is the largest of these numbers: {', '.join(map(str, numbers))}? {INSTRUCTION}"


def largest_prompt(numbers: list[int]) -> list[dict]:
    """One worked example, then the question: the chat turns a row's `prompt` holds."""
    example = max(EXAMPLE_NUMBERS)
    return [{"role": "user", "content": question(EXAMPLE_NUMBERS)},
            {"role": "assistant", "content": f"The largest number is {example}.\n<answer>{example}</answer>"},
            {"role": "user", "content": question(numbers)}]


def generate_largest(n: int, *, count: int = 5, low: int = 10, high: int = 99, seed: int = 0) -> list[dict]:
    """`n` rows, deterministic for `seed`: `count` distinct numbers from low..high, shuffled, and their maximum."""
    require_int("n", n)
    require_int("count", count, 2)
    if not (isinstance(low, int) and isinstance(high, int) and high - low + 1 >= count):
        raise ValueError(f"low={low!r}, high={high!r} are not allowed: integers with at least count={count} "
                         f"numbers between them")
    rng = random.Random(seed)
    rows = []
    while len(rows) < n:
        numbers = rng.sample(range(low, high + 1), count)
        if sorted(numbers) == sorted(EXAMPLE_NUMBERS):  # the prompt's own example is never a question
            continue
        rows.append({"prompt": largest_prompt(numbers), "numbers": numbers, "answer": max(numbers)})
    return rows


def answer_number(completion: str) -> int | None:
    """The integer in the completion's last `<answer>` block, when the block holds nothing else."""
    answer = extract_answer(completion)
    if answer is None or not answer.isascii() or not answer.isdigit() or len(answer) > 9:
        return None
    return int(answer)


def largest_reward(completions: list[str], *, answer: list[int], **kwargs) -> list[float]:
    """1.0 when the last answer block holds exactly the largest number, else 0.0 (the task's judge)."""
    return [float(answer_number(c) == a) for c, a in zip(completions, answer)]


def largest_task() -> Task:
    return Task(reward_funcs=[largest_reward], name="largest")


__all__ = ["largest_prompt", "generate_largest", "answer_number", "largest_reward", "largest_task", "question"]
