"""Tests for grpo_helpers.data: solver against an independent brute force, generation, files, prompts, sampler."""

from __future__ import annotations

import ast
import csv
import json
import random
from collections import Counter
from fractions import Fraction

import pytest

from grpo_helpers.countdown import game
from grpo_helpers.countdown.data import load_countdown, load_jsonl, save_jsonl, train_test_split, validate_rows
from grpo_helpers.countdown.game import count_solutions, generate_countdown, solvable_in_whole_steps, solve
from grpo_helpers.countdown.prompts import (ASSISTANT_PREFIX, SYSTEM_PROMPT, build_messages, render_prompts,
                                            user_message)
from grpo_helpers.countdown.stats import dataset_stats, plot_dataset_stats
from grpo_helpers.samplers import PromptSampler
from grpo_helpers.task import tokenize_prompts

# ---------------------------------------------------------------------------------------------------------------
# Independent reference implementations (no code shared with the module under test)


def exact_eval(expr: str) -> tuple[Fraction, list[int]]:
    """Value of an arithmetic expression with Fractions, and the numbers it uses; only + - * / and ints."""
    def walk(node):
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return Fraction(node.value), [node.value]
        if isinstance(node, ast.BinOp):
            (lv, ln), (rv, rn) = walk(node.left), walk(node.right)
            ops = {ast.Add: lambda: lv + rv, ast.Sub: lambda: lv - rv, ast.Mult: lambda: lv * rv,
                   ast.Div: lambda: lv / rv}
            return ops[type(node.op)](), ln + rn
        raise AssertionError(f"unexpected syntax in {expr!r}: {ast.dump(node)}")
    return walk(ast.parse(expr, mode="eval").body)


def brute_force_trees(nums: list[int]) -> dict[str, Fraction]:
    """Every expression tree over nums, keyed by a canonical string (children of + and * sorted), by repeatedly
    combining any ordered pair of the remaining subexpressions (a state reached twice is expanded once)."""
    found: dict[str, Fraction] = {}
    seen: set[tuple[str, ...]] = set()

    def grow(items: list[tuple[str, Fraction]]) -> None:
        state = tuple(sorted(s for s, _ in items))
        if state in seen:
            return
        seen.add(state)
        if len(items) == 1:
            found[items[0][0]] = items[0][1]
            return
        for i in range(len(items)):
            for j in range(len(items)):
                if i == j:
                    continue
                (sa, va), (sb, vb) = items[i], items[j]
                rest = [items[k] for k in range(len(items)) if k not in (i, j)]
                lo, hi = sorted((sa, sb))
                grow(rest + [(f"({lo}+{hi})", va + vb)])
                grow(rest + [(f"({lo}*{hi})", va * vb)])
                grow(rest + [(f"({sa}-{sb})", va - vb)])
                if vb != 0:
                    grow(rest + [(f"({sa}/{sb})", va / vb)])

    grow([(str(n), Fraction(n)) for n in nums])
    return found


def brute_count(nums: list[int], target: int) -> int:
    return sum(value == target for value in brute_force_trees(nums).values())


def assert_valid_solution(expr: str, nums: list[int], target: int) -> None:
    value, used = exact_eval(expr)
    assert value == target, (expr, value, target)
    assert Counter(used) == Counter(nums), (expr, used, nums)


def random_cases(count: int, size: int, seed: int) -> list[tuple[list[int], int]]:
    """Small numbers (many duplicates, zero intermediates); half the targets reachable, half random."""
    rng = random.Random(seed)
    cases = []
    for k in range(count):
        nums = [rng.randint(1, 7) for _ in range(size)]
        if k % 2 == 0:
            reachable = sorted({int(v) for v in brute_force_trees(nums).values() if v.denominator == 1 and v > 0})
            target = rng.choice(reachable)
        else:
            target = rng.randint(1, 60)
        cases.append((nums, target))
    return cases


# ---------------------------------------------------------------------------------------------------------------
# Solver and counter


@pytest.mark.parametrize("size,count", [(1, 6), (2, 20), (3, 30), (4, 16)])
def test_solve_and_count_match_brute_force(size, count):
    for nums, target in random_cases(count, size, seed=size):
        expected = brute_count(nums, target)
        assert count_solutions(nums, target) == expected, (nums, target)
        expr = solve(nums, target)
        assert (expr is None) == (expected == 0), (nums, target, expr)
        if expr is not None:
            assert_valid_solution(expr, nums, target)


@pytest.mark.parametrize("nums", [[1, 2, 1, 2], [2, 3, 3, 2], [1, 1, 1, 1], [2, 2, 2, 2], [1, 2, 2, 1, 3]])
def test_count_with_two_equal_halves(nums):
    # splits into two equal sub-multisets with several trees each: the unordered-pair bookkeeping must agree
    trees = brute_force_trees(nums)
    targets = sorted({int(v) for v in trees.values() if v.denominator == 1 and v > 0})
    for target in targets[:: max(1, len(targets) // 15)]:
        assert count_solutions(nums, target) == sum(v == target for v in trees.values()), (nums, target)


def test_count_distinguishes_commutative_and_equal_numbers():
    assert count_solutions([2, 2], 4) == 2  # 2+2 and 2*2; swapping equal numbers is not a new tree
    assert count_solutions([3, 5], 8) == 1  # 3+5 == 5+3
    assert count_solutions([3, 5], 2) == 1  # 5-3 only
    assert count_solutions([1, 1], 1) == 2  # 1*1 and 1/1
    assert count_solutions([7], 7) == 1 and count_solutions([7], 8) == 0


def test_fractional_intermediates_are_allowed():
    # 4 / (1 - 5/6) = 24 needs the non-integer 5/6 and 1/6 on the way
    nums, target = [1, 4, 5, 6], 24
    assert any(v == 24 and "/" in s for s, v in brute_force_trees(nums).items())
    expr = solve(nums, target)
    assert expr is not None
    assert_valid_solution(expr, nums, target)
    only_fraction_route = [3, 3, 8, 8]  # 8 / (3 - 8/3) = 24 is the only way
    assert brute_count(only_fraction_route, 24) == count_solutions(only_fraction_route, 24) >= 1
    assert_valid_solution(solve(only_fraction_route, 24), only_fraction_route, 24)


def test_seed_impossible_task_has_no_solution():
    nums, target = [33, 19, 27, 5], 39
    assert brute_count(nums, target) == 0
    assert solve(nums, target) is None
    assert count_solutions(nums, target) == 0


def test_solver_rejects_bad_input():
    with pytest.raises(ValueError, match="nums"):
        solve([], 3)
    with pytest.raises(ValueError, match="nums"):
        solve([1, 0, 2], 3)
    with pytest.raises(ValueError, match="target"):
        count_solutions([1, 2], 1.5)
    with pytest.raises(ValueError, match="target"):
        solve([1, 2], 0)


# ---------------------------------------------------------------------------------------------------------------
# Generation


def test_generated_tasks_are_solved_by_their_reference_solution():
    rows = generate_countdown(500, sizes=(2, 3, 4), max_number=50, max_target=300, seed=3)
    assert len(rows) == 500
    for row in rows:
        assert 1 <= row["target"] <= 300 and all(1 <= x <= 50 for x in row["nums"])
        assert_valid_solution(row["solution"], row["nums"], row["target"])
    assert {len(r["nums"]) for r in rows} == {2, 3, 4}


def test_generation_is_deterministic_for_a_seed():
    assert generate_countdown(200, seed=7) == generate_countdown(200, seed=7)
    assert generate_countdown(200, seed=7) != generate_countdown(200, seed=8)
    assert generate_countdown(50, seed=7) == generate_countdown(200, seed=7)[:50]


def test_generated_schema_matches_hub_set():
    import datasets

    rows = generate_countdown(20, seed=1)
    for row in rows:
        assert set(row) == {"nums", "target", "solution"}
        assert type(row["target"]) is int and all(type(x) is int for x in row["nums"])
        assert isinstance(row["solution"], str)
    features = datasets.Dataset.from_list(rows).features  # hub: nums = list of int64, target = int64
    assert features["target"].dtype == "int64"
    assert features["nums"].feature.dtype == "int64"


@pytest.mark.parametrize("kwargs,field", [
    (dict(n=0), "n="), (dict(n=5, sizes=[1]), "sizes="), (dict(n=5, sizes=[]), "sizes="),
    (dict(n=5, max_number=0), "max_number="), (dict(n=5, max_target=0), "max_target="),
])
def test_generation_rejects_bad_arguments(kwargs, field):
    n = kwargs.pop("n")
    with pytest.raises(ValueError, match=field):
        generate_countdown(n, **kwargs)


def test_generation_gives_up_on_nearly_impossible_settings(monkeypatch):
    monkeypatch.setattr(game, "MAX_ATTEMPTS", 1)  # value 1 from six numbers up to 99: rare on a first draw
    with pytest.raises(ValueError, match="max_target=1"):
        generate_countdown(50, sizes=[6], max_target=1, seed=0)


# ---------------------------------------------------------------------------------------------------------------
# Validation, files, splitting


GOOD = {"nums": [1, 2, 3], "target": 6}


@pytest.mark.parametrize("bad,field", [
    ({"target": 6}, "nums"), ({"nums": [1, 2]}, "target"), ({"nums": [], "target": 6}, "nums"),
    ({"nums": [1, 0], "target": 6}, "nums"), ({"nums": [1, True], "target": 6}, "nums"),
    ({"nums": "1,2", "target": 6}, "nums"), ({"nums": [1, 2.5], "target": 6}, "nums"),
    ({"nums": [1, 2], "target": 3.5}, "target"), ({"nums": [1, 2], "target": "3"}, "target"),
    ({"nums": [1, 2], "target": 0}, "target"), ({"nums": [1, 2], "target": True}, "target"),
    ({"nums": [1, 2], "target": 3, "solution": 3}, "solution"),
])
def test_validate_rows_names_index_field_and_value(bad, field):
    with pytest.raises(ValueError) as err:
        validate_rows([GOOD, GOOD, bad])
    message = str(err.value)
    assert "row 2" in message and repr(field) in message
    if field in bad:
        assert repr(bad[field]) in message


def test_validate_rows_keeps_every_good_row():
    rows = [{"nums": (4, 5), "target": 9, "extra": 1}, GOOD]
    assert validate_rows(rows) == [{"nums": [4, 5], "target": 9, "solution": None},
                                   {"nums": [1, 2, 3], "target": 6, "solution": None}]
    with pytest.raises(ValueError, match="row 0"):
        validate_rows(["not a dict"])


def test_jsonl_round_trip_and_atomic_write(tmp_path):
    rows = generate_countdown(30, seed=2)
    path = tmp_path / "sub" / "tasks.jsonl"
    save_jsonl(rows, path)
    save_jsonl(rows[:10], path)  # overwrite in place
    assert load_jsonl(path) == rows[:10]
    assert [p.name for p in path.parent.iterdir()] == ["tasks.jsonl"]  # no temp file left behind
    assert load_countdown(str(path)) == rows[:10]
    assert load_countdown(str(path), num_tasks=4) == rows[:4]


def test_load_jsonl_reports_bad_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"nums": [1], "target": 1}\n{oops\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2"):
        load_jsonl(path)


def test_json_csv_parquet_round_trips(tmp_path):
    import datasets

    rows = generate_countdown(25, seed=4)
    json_path = tmp_path / "tasks.json"
    json_path.write_text(json.dumps(rows))
    assert load_countdown(str(json_path)) == rows

    parquet_path = tmp_path / "tasks.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(parquet_path))
    assert load_countdown(str(parquet_path)) == rows

    csv_path = tmp_path / "tasks.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["nums", "target", "solution"])
        writer.writeheader()
        writer.writerows({**r, "nums": json.dumps(r["nums"])} for r in rows)  # nums as text "[1, 2, 3]"
    assert load_countdown(str(csv_path)) == rows


def test_csv_with_bad_nums_text_names_the_row(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text('nums,target\n"[1, 2]",3\n"__import__(\'os\')",3\n')
    with pytest.raises(ValueError, match="row 1: field 'nums'"):
        load_countdown(str(path))


def test_load_countdown_sources_and_errors(tmp_path, monkeypatch):
    assert load_countdown("generated", num_tasks=40, seed=5) == generate_countdown(40, seed=5)
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_countdown(str(missing))
    bad = tmp_path / "bad.jsonl"
    save_jsonl([GOOD, {"nums": [1, -2], "target": 3}], bad)
    with pytest.raises(ValueError, match="row 1: field 'nums'"):
        load_countdown(str(bad))

    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach the Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(RuntimeError, match="(?s)some/hub-id.*network.*'generated'") as err:
        load_countdown("some/hub-id")
    assert isinstance(err.value.__cause__, ConnectionError)


def test_train_test_split_is_deterministic_and_disjoint():
    rows = [{"nums": [i + 1], "target": i + 1} for i in range(100)]
    train, test = train_test_split(rows, test_size=20, seed=3)
    assert len(train) == 80 and len(test) == 20
    ids = [r["target"] for r in train + test]
    assert sorted(ids) == list(range(1, 101))
    assert (train, test) == train_test_split(rows, test_size=20, seed=3)
    assert test != train_test_split(rows, test_size=20, seed=4)[1]
    for bad in (0, 100, 2.5):
        with pytest.raises(ValueError, match="test_size"):
            train_test_split(rows, test_size=bad)


# ---------------------------------------------------------------------------------------------------------------
# Sampler


ROWS = [{"nums": [i + 1], "target": i + 1} for i in range(23)]


def take(sampler, k):
    return [[r["target"] for r in next(sampler)] for _ in range(k)]


def test_sampler_is_deterministic_and_reshuffles_each_epoch():
    a, b = PromptSampler(ROWS, batch_size=4, seed=1), PromptSampler(ROWS, batch_size=4, seed=1)
    assert a.steps_per_epoch == 5
    batches = take(a, 15)
    assert batches == take(b, 15)
    assert all(len(batch) == 4 for batch in batches)
    epochs = [sum(batches[e * 5:(e + 1) * 5], []) for e in range(3)]
    assert all(len(set(epoch)) == 20 for epoch in epochs)  # no repeats within an epoch
    assert epochs[0] != epochs[1] != epochs[2]
    assert take(PromptSampler(ROWS, batch_size=4, seed=2), 5) != batches[:5]


def test_sampler_shards_are_disjoint_across_ranks():
    samplers = [PromptSampler(ROWS, batch_size=2, seed=9, rank=r, world_size=3) for r in range(3)]
    assert samplers[0].steps_per_epoch == 3
    seen = []
    for _ in range(3):
        step = [set(t for t in take(s, 1)[0]) for s in samplers]
        assert all(not (step[i] & step[j]) for i in range(3) for j in range(i + 1, 3))
        seen += [t for batch in step for t in batch]
    assert len(seen) == len(set(seen)) == 18  # one epoch across all ranks: every row at most once


def test_sampler_resume_continues_with_the_same_batches():
    full = PromptSampler(ROWS, batch_size=3, seed=4, rank=1, world_size=2)
    take(full, 5)  # crosses the end of the first epoch (3 steps per epoch)
    state = json.loads(json.dumps(full.state_dict()))  # survives a checkpoint file
    expected = take(full, 7)
    resumed = PromptSampler(ROWS, batch_size=3, seed=4, rank=1, world_size=2)
    resumed.load_state_dict(state)
    assert take(resumed, 7) == expected
    with pytest.raises(ValueError, match="batch_size"):
        PromptSampler(ROWS, batch_size=2, seed=4, rank=1, world_size=2).load_state_dict(state)


@pytest.mark.parametrize("kwargs,field", [
    (dict(batch_size=0, seed=1), "batch_size"), (dict(batch_size=2, seed=1, rank=2, world_size=2), "rank"),
    (dict(batch_size=2, seed=1, world_size=0), "world_size"), (dict(batch_size=12, seed=1, world_size=2), "rows"),
    (dict(batch_size=2, seed="x"), "seed"),
])
def test_sampler_rejects_bad_arguments(kwargs, field):
    with pytest.raises(ValueError, match=field):
        PromptSampler(ROWS, **kwargs)


# ---------------------------------------------------------------------------------------------------------------
# Prompts and statistics


def test_user_message_and_messages():
    task = {"nums": [44, 19, 35], "target": 98}
    message = user_message(task["nums"], task["target"])
    assert message.startswith("Using the numbers [44, 19, 35], create an equation that equals 98.")
    assert "<answer>(1 + 2) / 3</answer>" in message
    roles = [m["role"] for m in build_messages(task)]
    assert roles == ["system", "user", "assistant"]
    assert build_messages(task)[-1]["content"] == ASSISTANT_PREFIX


@pytest.mark.slow
def test_render_and_tokenize_with_bundled_tokenizer():
    from grpo_helpers.models import load_tokenizer

    tokenizer = load_tokenizer()
    tasks = [{"nums": [44, 19, 35, 77], "target": 987}, {"nums": [1, 2], "target": 3}]
    prompts = render_prompts(tokenizer, tasks)
    for prompt, task in zip(prompts, tasks):
        assert prompt.endswith(ASSISTANT_PREFIX)
        assert str(task["nums"]) in prompt and f"equals {task['target']}" in prompt and SYSTEM_PROMPT in prompt
    batch = tokenize_prompts(tokenizer, prompts)
    ids, mask = batch["input_ids"], batch["attention_mask"]  # (2, T)
    assert ids.shape == mask.shape and ids.shape[0] == 2
    assert mask[:, -1].all()  # left padding: every prompt ends at the last column
    shorter = int(mask.sum(1).argmin())
    assert mask[shorter, 0] == 0
    start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    first = [row[m.bool()][:2].tolist() for row, m in zip(ids, mask)]
    assert all(f[0] == start and f[1] != start for f in first)  # template's special token, not doubled
    assert tokenizer.decode(ids[shorter][mask[shorter].bool()]) == prompts[shorter]
    stats = dataset_stats(generate_countdown(30, seed=1), tokenizer)
    assert len(stats["prompt_tokens"]) == 30 and min(stats["prompt_tokens"]) > 50


def test_dataset_stats_and_plot():
    import matplotlib
    matplotlib.use("Agg")
    rows = generate_countdown(60, seed=6)
    rows.append({"nums": [33, 19, 27, 5], "target": 39, "solution": None})
    stats = dataset_stats(rows, sample_size=200)
    assert stats["num_tasks"] == 61 and stats["sample_size"] == 61
    assert stats["targets"] == [r["target"] for r in rows]
    assert sum(stats["sizes"].values()) == 61
    assert stats["difficulty"][:60] == [count_solutions(r["nums"], r["target"]) for r in rows[:60]]
    assert min(stats["difficulty"][:60]) >= 1 and stats["difficulty"][60] == 0  # generated = solvable
    assert stats["solvable_fraction"] == pytest.approx(60 / 61)
    sampled = dataset_stats(rows, sample_size=10, seed=1)
    assert sampled["sample_size"] == 10 == len(sampled["difficulty"])
    fig = plot_dataset_stats(stats)
    assert len(fig.axes) == 4


def test_whole_steps_refuse_what_only_fractions_reach():
    assert solve([3, 3, 8, 8], 24) is not None  # 8 / (3 - 8 / 3), its only solution
    assert not solvable_in_whole_steps([3, 3, 8, 8], 24)
    assert solvable_in_whole_steps([2, 3], 1) and solvable_in_whole_steps([4, 6, 10], 4)  # 3 - 2; (10 + 6) / 4
    for nums, target in [([2, 5, 9], 8), ([4, 7, 10], 3), ([6, 6, 1], 37), ([1, 2], 7)]:  # whole steps reach a subset
        assert solvable_in_whole_steps(nums, target) <= (solve(nums, target) is not None)
