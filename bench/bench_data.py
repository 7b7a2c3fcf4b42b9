"""Speed of the data module and of loading the bundled model; prints one JSON object.

Targets: generate 10,000 tasks < 2 s, solve median < 5 ms on 4-number tasks, bundled model load < 5 s.
Run: .venv/bin/python bench/bench_data.py
"""

from __future__ import annotations

import json
import platform
import random
import statistics
import time

from grpo_helpers.countdown.game import count_solutions, generate_countdown, solve


def timed_ms(fn, *args) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn(*args)
    return (time.perf_counter() - start) * 1e3, out


def main() -> None:
    start = time.perf_counter()
    generate_countdown(10_000, seed=0)
    generate_s = time.perf_counter() - start

    # 100 generated (solvable) and 100 random-target 4-number tasks (mostly unsolvable: the solver must exhaust)
    rng = random.Random(0)
    tasks = [(r["nums"], r["target"]) for r in generate_countdown(100, sizes=(4,), seed=1)]
    tasks += [([rng.randint(1, 99) for _ in range(4)], rng.randint(1, 1000)) for _ in range(100)]
    solve_ms, count_ms, solved = [], [], 0
    for nums, target in tasks:
        ms, expr = timed_ms(solve, nums, target)
        solve_ms.append(ms)
        solved += expr is not None
        count_ms.append(timed_ms(count_solutions, nums, target)[0])

    from grpo_helpers.models import load_model_and_tokenizer

    load_model_and_tokenizer(device="cpu")  # warm: conversion cache, imports, file cache
    start = time.perf_counter()
    load_model_and_tokenizer(device="cpu")
    load_s = time.perf_counter() - start

    quantile = lambda xs, q: sorted(xs)[min(len(xs) - 1, int(q * len(xs)))]  # noqa: E731
    print(json.dumps({
        "generate_10k_s": round(generate_s, 3),
        "solve_tasks": len(tasks), "solve_solvable": solved,
        "solve_median_ms": round(statistics.median(solve_ms), 3), "solve_p95_ms": round(quantile(solve_ms, 0.95), 3),
        "solve_unsolvable_median_ms": round(statistics.median(
            [ms for ms, (nums, t) in zip(solve_ms, tasks) if solve(nums, t) is None]), 3),
        "count_solutions_median_ms": round(statistics.median(count_ms), 3),
        "count_solutions_p95_ms": round(quantile(count_ms, 0.95), 3),
        "model_load_s": round(load_s, 3),
        "targets": {"generate_10k_s": 2.0, "solve_median_ms": 5.0, "model_load_s": 5.0},
        "cpu": platform.processor() or platform.machine(),
    }))


if __name__ == "__main__":
    main()
