"""The game of Countdown: its rules, exact arithmetic, a generator of solvable tasks (and difficulty tiers), and an
exact solver that finds and counts solutions.

Rules (the same ones the reward verifier checks):
- A task is a list of positive integers `nums` and a positive integer `target`.
- An answer is an expression that uses every number in `nums` exactly once, with the binary operations
  + - * / and parentheses; no unary minus, no concatenating digits, no other numbers.
- Arithmetic is exact on rationals (`fractions.Fraction`): intermediate results may be negative or non-integer,
  so `(1 / 3) * 3` equals 1. Division by zero makes the expression invalid.

Generated tasks are solvable by construction: the target is the value of a random expression over the numbers,
and that expression is kept as the row's `solution`. Rows are plain dicts `{"nums": list[int], "target": int,
"solution": str | None}`, the schema of the hub set Jiayi-Pan/Countdown-Tasks-3to4 plus `solution`.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction
from numbers import Integral
from typing import Any

from grpo_helpers.checks import require_int

Value = int | Fraction  # exact value of a (sub)expression; integral values are kept as int for speed

MAX_SOLVER_NUMBERS = 6  # the game has 3-6 numbers; the exhaustive solver grows super-exponentially past that
MAX_ATTEMPTS = 100_000  # random draws per generated task before the settings are declared (nearly) impossible

# --------------------------------------------------------------------------------------------------------------
# Exact arithmetic


def _div(a: Value, b: Value) -> Value:
    """a / b exactly; stays an int when the quotient is whole (int arithmetic is ~10x faster than Fraction)."""
    if type(a) is int and type(b) is int:
        return a // b if a % b == 0 else Fraction(a, b)
    q = Fraction(a) / b
    return q.numerator if q.denominator == 1 else q


def _apply(op: str, a: Value, b: Value) -> Value:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    return _div(a, b)  # caller guarantees b != 0


def _combinations(a: Value, b: Value) -> list[tuple[Value, str, bool]]:
    """Every value one operation makes from a and b: (value, op, swapped), where swapped means `b op a`."""
    out = [(a + b, "+", False), (a * b, "*", False), (a - b, "-", False), (b - a, "-", True)]
    if b != 0:
        out.append((_div(a, b), "/", False))
    if a != 0:
        out.append((_div(b, a), "/", True))
    return out


def require_task(nums: Any, target: Any, *, row: int | None = None) -> tuple[list[int], int]:
    """Clean (nums, target) of one Countdown task: a non-empty list of positive integers and a positive integer.
    `row` names the row of a dataset in the message."""
    where = "" if row is None else f"row {row}: field "
    if not isinstance(nums, (list, tuple)) or not nums or not all(
            isinstance(x, Integral) and not isinstance(x, bool) and x > 0 for x in nums):
        shown = repr(nums) if len(repr(nums)) <= 80 else repr(nums)[:77] + "..."
        raise ValueError(f"{where}{'nums' if row is None else repr('nums')}={shown} is not allowed: a non-empty list "
                         f"of positive integers, e.g. [3, 5, 7]")
    if not isinstance(target, Integral) or isinstance(target, bool) or target <= 0:
        raise ValueError(f"{where}{'target' if row is None else repr('target')}={target!r} is not allowed: a "
                         f"positive integer")
    return [int(x) for x in nums], int(target)


# --------------------------------------------------------------------------------------------------------------
# Generation


def _check_sizes(sizes: Any) -> tuple[int, ...]:
    ok = isinstance(sizes, (list, tuple)) and len(sizes) > 0
    ok = ok and all(isinstance(s, int) and not isinstance(s, bool) and 2 <= s <= 6 for s in sizes)
    if not ok:
        raise ValueError(f"sizes={sizes!r} is not allowed: a non-empty list of integers between 2 and 6")
    return tuple(sizes)


Tree = int | tuple  # a number, or (op, left, right)


def _random_tree(rand, leaves: list[int]) -> tuple[Value, Tree] | None:
    """A random binary tree over `leaves` (in this order) with random ops, and its exact value; None on a
    division by zero. `rand` is a Random.random: ~5x cheaper than randint, and this loop runs ~5 times per task."""
    if len(leaves) == 1:
        return leaves[0], leaves[0]
    cut = 1 + int(rand() * (len(leaves) - 1))
    left, right = _random_tree(rand, leaves[:cut]), _random_tree(rand, leaves[cut:])
    if left is None or right is None:
        return None
    op = "+-*/"[int(rand() * 4)]
    if op == "/" and right[0] == 0:
        return None
    return _apply(op, left[0], right[0]), (op, left[1], right[1])


def _format(tree: Tree, top: bool = True) -> str:
    """Infix text; every operation but the outermost is parenthesised."""
    if isinstance(tree, int):
        return str(tree)
    op, left, right = tree
    text = f"{_format(left, False)} {op} {_format(right, False)}"
    return text if top else f"({text})"


def generate_countdown(n: int, *, sizes: tuple[int, ...] | list[int] = (3, 4), max_number: int = 99,
                       max_target: int = 1000, seed: int = 42) -> list[dict]:
    """`n` solvable tasks, deterministic for `seed`. Per task: a size from `sizes`, then numbers from
    1..max_number (repeats allowed) and a random expression over them, drawn again until its value is an integer
    in 1..max_target; that value is the target. The prompt lists the numbers shuffled, not in the solution's order."""
    require_int("n", n, 1)
    sizes = _check_sizes(sizes)
    require_int("max_number", max_number, 1)
    require_int("max_target", max_target, 1)
    rng = random.Random(seed)
    rand = rng.random
    rows: list[dict] = []
    for _ in range(n):
        size = sizes[int(rand() * len(sizes))]  # drawn once per task, so sizes stay balanced despite rejections
        for _attempt in range(MAX_ATTEMPTS):
            leaves = [1 + int(rand() * max_number) for _ in range(size)]
            built = _random_tree(rand, leaves)
            if built is not None and built[0].denominator == 1 and 1 <= built[0] <= max_target:
                break
        else:
            raise ValueError(f"no valid task of size {size} in {MAX_ATTEMPTS} random draws with max_number={max_number}, "
                             f"max_target={max_target}: raise max_target or use fewer/smaller numbers")
        rng.shuffle(leaves)
        rows.append({"nums": leaves, "target": int(built[0]), "solution": _format(built[1])})
    return rows


# --------------------------------------------------------------------------------------------------------------
# Solver: dynamic programming over sub-multisets of the numbers


def _sub_multisets(nums: tuple[int, ...]) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Every ordered split of a sorted multiset into two non-empty sorted sub-multisets (A, B), each once."""
    counts = sorted(Counter(nums).items())
    splits = [((), ())]
    for value, k in counts:
        splits = [(a + (value,) * i, b + (value,) * (k - i)) for a, b in splits for i in range(k + 1)]
    return [(a, b) for a, b in splits if a and b]


def _reachable(nums: tuple[int, ...], memo: dict, *, whole: bool = False) -> dict[Value, str]:
    """value -> one expression (fully parenthesised) for every value the sorted multiset `nums` can make; with
    `whole`, only through whole non-negative values at every step."""
    if (whole, nums) in memo:
        return memo[whole, nums]
    if len(nums) == 1:
        out = {nums[0]: str(nums[0])}
    else:
        out = {}
        for a, b in _sub_multisets(nums):
            if a > b:  # (B, A) is also a split; _combinations already tries both orders
                continue
            for va, ea in _reachable(a, memo, whole=whole).items():
                for vb, eb in _reachable(b, memo, whole=whole).items():
                    for value, op, swapped in _combinations(va, vb):
                        if whole and not (type(value) is int and value >= 0):  # _div keeps whole quotients ints
                            continue
                        if value not in out:
                            out[value] = f"({eb} {op} {ea})" if swapped else f"({ea} {op} {eb})"
    memo[whole, nums] = out
    return out


def _partners(target: int, va: Value) -> list[tuple[Value, str, bool]]:
    """Every (vb, op, b_first) with `va op vb == target` (or `vb op va` when b_first); target is non-zero."""
    out = [(target - va, "+", False), (va - target, "-", False), (target + va, "-", True)]
    if va != 0:  # 0 * b is never a non-zero target; b / 0 is not allowed; a / b = target != 0 needs a != 0
        out += [(_div(target, va), "*", False), (_div(va, target), "/", False), (target * va, "/", True)]
    return out


def _check_task(nums: Any, target: Any) -> tuple[tuple[int, ...], int]:
    """A task the exhaustive search can finish: sorted numbers (at most MAX_SOLVER_NUMBERS) and the target."""
    nums, target = require_task(nums, target)
    if len(nums) > MAX_SOLVER_NUMBERS:  # the search grows super-exponentially: refuse instead of never returning
        raise ValueError(f"{len(nums)} numbers is too many to solve: the game has at most {MAX_SOLVER_NUMBERS}")
    return tuple(sorted(nums)), target


def solve(nums: list[int] | tuple[int, ...], target: int) -> str | None:
    """One expression that uses every number once and equals target exactly, or None when there is none.

    Exhaustive: every value each proper sub-multiset can make is tabulated once (exact ints/Fractions), then the
    last operation is found by lookup (for each split A|B and each value a of the smaller table, is the b that
    would give the target in the other table?) instead of combining all pairs."""
    key, target = _check_task(nums, target)
    if len(key) == 1:
        return str(key[0]) if key[0] == target else None
    memo: dict = {}
    for a, b in _sub_multisets(key):
        if a > b:  # each unordered split once; _partners tries both operand orders
            continue
        small, big = sorted((_reachable(a, memo), _reachable(b, memo)), key=len)
        for va, ea in small.items():
            for vb, op, b_first in _partners(target, va):
                if vb in big:
                    eb = big[vb]
                    return f"{eb} {op} {ea}" if b_first else f"{ea} {op} {eb}"
    return None


def solvable_in_whole_steps(nums: list[int] | tuple[int, ...], target: int, *, memo: dict | None = None) -> bool:
    """Whether the numbers make target with every intermediate value a whole number >= 0: the arithmetic of the
    cold-start traces (countdown/traces.py), which never write a fraction or a negative number. The same tables as
    `solve`, filtered; `memo` shares them between calls (a trace's search asks about many overlapping sets)."""
    return target in _reachable(tuple(sorted(nums)), {} if memo is None else memo, whole=True)


def _tree_counts(nums: tuple[int, ...], memo: dict) -> dict[Value, int]:
    """value -> number of distinct expression trees over the sorted multiset `nums` (children of + and * are
    unordered, so a+b and b+a are one tree; equal numbers are interchangeable)."""
    if nums in memo:
        return memo[nums]
    if len(nums) == 1:
        out: dict[Value, int] = {nums[0]: 1}
    else:
        out = {}
        for a, b in _sub_multisets(nums):
            ta, tb = _tree_counts(a, memo), _tree_counts(b, memo)
            for va, ca in ta.items():
                for vb, cb in tb.items():
                    # ordered ops: every ordered split (A, B) gives its own trees `ta - tb`, `ta / tb`
                    out[va - vb] = out.get(va - vb, 0) + ca * cb
                    if vb != 0:
                        q = _div(va, vb)
                        out[q] = out.get(q, 0) + ca * cb
                    # unordered ops: count each unordered pair of subtrees once
                    if a < b or (a == b and va < vb):
                        pairs = ca * cb
                    elif a == b and va == vb:
                        pairs = ca * (ca + 1) // 2
                    else:
                        continue
                    out[va + vb] = out.get(va + vb, 0) + pairs
                    out[va * vb] = out.get(va * vb, 0) + pairs
    memo[nums] = out
    return out


def count_solutions(nums: list[int] | tuple[int, ...], target: int) -> int:
    """How many distinct expression trees (a+b and b+a counted once) equal target: a difficulty measure
    (0 = impossible, 1 = a single way, hundreds = easy).

    Same tables as `_tree_counts` for the proper sub-multisets, but the last operation is counted by lookup of
    the partner value (as in `solve`) instead of tabulating every value of the whole set."""
    key, target = _check_task(nums, target)
    if len(key) == 1:
        return int(key[0] == target)
    memo: dict = {}
    total = 0
    for a, b in _sub_multisets(key):
        ta, tb = _tree_counts(a, memo), _tree_counts(b, memo)
        # ordered ops on every ordered split: va - vb = t and va / vb = t; loop over the smaller table
        if len(ta) <= len(tb):  # partner vb = va - t, and vb = va / t (non-zero iff va is)
            total += sum(ca * (tb.get(va - target, 0) + (tb.get(_div(va, target), 0) if va else 0))
                         for va, ca in ta.items())
        else:  # partner va = vb + t, and va = t * vb (vb must be non-zero)
            total += sum(cb * (ta.get(vb + target, 0) + (ta.get(target * vb, 0) if vb else 0))
                         for vb, cb in tb.items())
        if a > b:  # unordered ops (+, *) once per unordered split
            continue
        small, big = (ta, tb) if len(ta) <= len(tb) else (tb, ta)
        pairs = sum(c * (big.get(target - v, 0) + (big.get(_div(target, v), 0) if v else 0)) for v, c in small.items())
        if a == b:  # one table: each pair of two different trees was counted from both sides, a tree with itself once
            pairs = (pairs + sum(c * ((v + v == target) + (v * v == target)) for v, c in small.items())) // 2
        total += pairs
    return total


# --------------------------------------------------------------------------------------------------------------
# Difficulty tiers, and what makes two tasks the same


@dataclass(frozen=True)
class Tier:
    """The shape of a tier's tasks: how many numbers, the largest number, the largest target."""

    sizes: tuple[int, ...]
    max_number: int
    max_target: int = 1000


# The seed's own task, Jiayi-Pan/Countdown-Tasks-3to4 (the hub set the GPU recipe trains on): 3 or 4 numbers from
# 1 to 99 and a target up to 100, generated here (no download) so the CPU demo can be judged on it.
SEED_TIER = Tier(sizes=(3, 4), max_number=99, max_target=100)


def parse_tier(name: str) -> Tier:
    """ "3x20" -> 3 numbers each <= 20 (N in 2..MAX_SOLVER_NUMBERS, M in 2..10,000); "seed" -> SEED_TIER."""
    if name == "seed":
        return SEED_TIER
    size, sep, largest = name.partition("x") if isinstance(name, str) else ("", "", "")
    if not (sep and size.isdigit() and largest.isdigit() and 2 <= int(size) <= MAX_SOLVER_NUMBERS
            and 2 <= int(largest) <= 10_000):
        raise ValueError(f"tier {name!r} is not allowed: 'NxM' with N numbers (2..{MAX_SOLVER_NUMBERS}) each <= M "
                         f"(2..10000), e.g. '3x20', or 'seed' (3-4 numbers <= 99, targets <= 100: the hub set's shape)")
    return Tier(sizes=(int(size),), max_number=int(largest))


def generate_tiers(n: int, *, tiers: list[str] | tuple[str, ...], seed: int = 42) -> list[dict]:
    """`n` solvable tasks split evenly over difficulty tiers ("NxM": N numbers, each <= M; "seed": the hub set's
    shape), tier after tier. Each row also carries its difficulty: `tier` and `num_solutions` (count_solutions: 1 = a
    single way)."""
    require_int("n", n, len(tiers) or 1)
    rows: list[dict] = []
    for index, name in enumerate(tiers):
        shape = parse_tier(name)
        count = n // len(tiers) + (index < n % len(tiers))
        for row in generate_countdown(count, sizes=shape.sizes, max_number=shape.max_number,
                                      max_target=shape.max_target, seed=seed + 7919 * index):
            rows.append({**row, "tier": name, "num_solutions": count_solutions(row["nums"], row["target"])})
    return rows


def task_key(row: dict) -> tuple[tuple[int, ...], int]:
    """What makes two tasks the same game: the numbers in any order and the target."""
    return tuple(sorted(row["nums"])), row["target"]


__all__ = ["require_task", "generate_countdown", "solve", "solvable_in_whole_steps", "count_solutions", "Tier", "SEED_TIER", "parse_tier", "generate_tiers", "task_key", "MAX_SOLVER_NUMBERS"]
