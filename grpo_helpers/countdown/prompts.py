"""The Countdown prompt: the seed's system message, the user's task, and the assistant's opening `<think>`."""

from __future__ import annotations

from grpo_helpers.task import render_prompt as render_any_prompt

SYSTEM_PROMPT = ("You are a helpful assistant. You first think about the reasoning process in your mind and then "
                 "provide the user with the answer.")
ASSISTANT_PREFIX = "Let me solve this step by step.\n<think>"
EXAMPLE_ANSWER = "(1 + 2) / 3"  # the prompt's own example: copying it into every answer is the classic hack


def user_message(nums: list[int], target: int) -> str:
    return (f"Using the numbers {list(nums)}, create an equation that equals {target}. You can use basic arithmetic "
            f"operations (+, -, *, /) and each number can only be used once. Show your work in <think> </think> "
            f"tags. And return the final equation in <answer> </answer> tags, for example "
            f"<answer>{EXAMPLE_ANSWER}</answer>.")


def build_messages(task: dict) -> list[dict]:
    """System, user, and a started assistant turn: the model continues right after "<think>"."""
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": user_message(task["nums"], task["target"])},
        {"role": "assistant", "content": ASSISTANT_PREFIX},
    ]


def render_prompt(tokenizer, task: dict) -> str:
    """The prompt text in the model's chat template, ending with the unfinished assistant turn."""
    return render_any_prompt(tokenizer, build_messages(task))


def render_prompts(tokenizer, tasks: list[dict]) -> list[str]:
    return [render_prompt(tokenizer, task) for task in tasks]


__all__ = ["SYSTEM_PROMPT", "ASSISTANT_PREFIX", "EXAMPLE_ANSWER", "user_message", "build_messages", "render_prompt", "render_prompts"]
