"""Reward speed on ordinary and hostile completions: prints one JSON object.

Targets: every reward call on one completion of up to 20,000 characters < 5 ms (worst case over hostile inputs
built to trigger regex backtracking, deep parsing or huge arithmetic), and scoring a batch of 1,000 completions
with the shaped weights < 1 s.

    python bench/bench_rewards.py
"""

from __future__ import annotations

import json
import random
import time

from grpo_helpers.countdown.rewards import REWARD_FUNCTIONS, SHAPED_WEIGHTS, score_completions

LENGTH = 20_000
NUMS, TARGET = [3, 5, 7, 11], 37


def fill(unit: str, head: str = "", tail: str = "") -> str:
    """head + unit repeated + tail, exactly LENGTH characters."""
    body = LENGTH - len(head) - len(tail)
    return head + (unit * (body // len(unit) + 1))[:body] + tail


HOSTILE = {
    "many_answer_open": fill("<answer>", " r</think>\n", "3*5+7+11</answer>"),
    "many_answer_blocks": fill("<answer>1</answer>", " r</think>\n"),
    "many_think_close": fill("</think>"),
    "many_think_open": fill("<think>", "", "</think>\n<answer>1</answer>"),
    "nested_parens": fill("(", " r</think>\n<answer>", "1)</answer>"),
    "long_digits": fill("9", " r</think>\n<answer>", "</answer>"),
    "long_sum": fill("1+", " r</think>\n<answer>", "1</answer>"),
    "power_tower": fill("9**", " r</think>\n<answer>", "9</answer>"),
    "angle_brackets": fill("<"),
    "long_reasoning": fill("a", " ", "</think>\n<answer>(3 + 5) * 7 - 11 - 8</answer>"),
    "unclosed_answer": fill("x", " r</think>\n<answer>"),
    "whitespace_tail": fill(" \n", " r</think>\n<answer>3*5+11+7-1</answer>"),
    # answers just inside the verifier's bounds, so they are parsed and evaluated, not rejected on length
    "big_fractions": fill("a ", " ", "</think>\n<answer>" + "/".join(["999999999989"] * 4) + "*"
                          + "*".join(["999999999989"] * 3) + "</answer>"),
    "deep_bounded_parens": fill("a ", " ", "</think>\n<answer>" + "(" * 32 + "3*5" + ")" * 32 + "+7+11</answer>"),
    "long_bounded_sum": fill("a ", " ", "</think>\n<answer>" + "(1+1)*" * 10 + "7</answer>"),
}
ORDINARY = [
    " 3*5 = 15, 15+11 = 26, 26+7 = 33.</think>\n<answer>3 * 5 + 11 + 7</answer>",
    " Let me try (3 + 5) * 7 = 56 ... I am not sure.",
    " Maybe 37 = 11 * 3 + 7 - 5 + 2</think>\n<answer>11 * 3 + 7 - 5</answer>",
    " </think>\n<answer>(11 - 7) * 5 + 3 * 5</answer>",
]


def worst_call_ms(completion: str, repeats: int = 5) -> dict[str, float]:
    """Best-of-`repeats` time of each reward function on one completion (noise on a shared CPU only adds)."""
    out = {}
    for name, fn in REWARD_FUNCTIONS.items():
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn([completion], nums=[NUMS], target=[TARGET])
            times.append(time.perf_counter() - start)
        out[name] = min(times) * 1e3
    return out


def main() -> None:
    per_input = {label: worst_call_ms(text) for label, text in {**HOSTILE, "ordinary": ORDINARY[0]}.items()}
    worst_label, worst = max(((label, max(ms.values())) for label, ms in per_input.items()), key=lambda x: x[1])

    rng = random.Random(0)
    batch = [rng.choice(ORDINARY) if rng.random() < 0.9 else rng.choice(list(HOSTILE.values())) for _ in range(1000)]
    timings = []
    for _ in range(3):
        start = time.perf_counter()
        score_completions(batch, nums=[NUMS] * len(batch), target=[TARGET] * len(batch), weights=SHAPED_WEIGHTS)
        timings.append(time.perf_counter() - start)
    batch_s = min(timings)

    print(json.dumps({
        "completion_chars": LENGTH,
        "worst_call_ms": round(worst, 3),
        "worst_call_input": worst_label,
        "per_input_worst_ms": {label: round(max(ms.values()), 3) for label, ms in per_input.items()},
        "call_target_ms": 5.0,
        "batch_1000_shaped_s": round(batch_s, 4),
        "batch_hostile_share": round(sum(c in HOSTILE.values() for c in batch) / len(batch), 3),
        "batch_target_s": 1.0,
        "pass": worst < 5.0 and batch_s < 1.0,
    }))


if __name__ == "__main__":
    main()
