"""Countdown tasks: the rules, generation, an exact solver, loading and splitting, prompts, and dataset statistics.

Game rules (the same ones the reward verifier checks):
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

import ast
import csv
import json
import os
import random
import statistics
import tempfile
from collections import Counter
from fractions import Fraction
from numbers import Integral
from pathlib import Path
from typing import Any

from grpo_helpers.checks import require_int
from grpo_helpers.errors import MissingFileError
from grpo_helpers.task import render_prompt as render_any_prompt

Value = int | Fraction  # exact value of a (sub)expression; integral values are kept as int for speed

FILE_TYPES = (".jsonl", ".json", ".parquet", ".csv")
HUB_EXAMPLE = "Jiayi-Pan/Countdown-Tasks-3to4"
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
# Rows: validation, loading, splitting, files


def validate_rows(rows: Any) -> list[dict]:
    """Check every row and return clean copies `{"nums": [int, ...], "target": int, "solution": str | None}`.
    A bad row raises ValueError naming its index, the field and the value; no row is ever silently dropped."""
    if not isinstance(rows, (list, tuple)):
        raise ValueError(f"rows must be a list of dicts, got {type(rows).__name__}")
    clean = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"row {i}: expected a dict with 'nums' and 'target', got {type(row).__name__}: {row!r}")
        for name in ("nums", "target"):
            if name not in row:
                raise ValueError(f"row {i}: missing field {name!r} (row has {sorted(row)})")
        nums, target = require_task(row["nums"], row["target"], row=i)
        solution = row.get("solution")
        if solution is not None and not isinstance(solution, str):
            raise ValueError(f"row {i}: field 'solution'={solution!r} is not allowed: a string or None")
        clean_row = {"nums": nums, "target": target, "solution": solution}
        for name, kind in (("tier", str), ("num_solutions", Integral)):  # difficulty, when the row carries it
            if row.get(name) is not None:
                if not isinstance(row[name], kind) or isinstance(row[name], bool):
                    raise ValueError(f"row {i}: field {name!r}={row[name]!r} is not allowed: a {kind.__name__} or None")
                clean_row[name] = row[name]
        clean.append(clean_row)
    return clean


def _parse_nums_text(rows: list[dict]) -> list[dict]:
    """CSV stores a list column as text like "[1, 2, 3]": parse it as a literal (never eval)."""
    out = []
    for i, row in enumerate(rows):
        nums = row.get("nums")
        if isinstance(nums, str):
            try:
                nums = ast.literal_eval(nums.strip())
            except (ValueError, SyntaxError) as err:
                raise ValueError(f"row {i}: field 'nums'={row['nums']!r} is not a list literal like [1, 2, 3]") from err
        out.append({**row, "nums": nums})
    return out


def parse_tier(name: str) -> tuple[int, int]:
    """ "3x20" -> (3, 20): how many numbers (2..MAX_SOLVER_NUMBERS) and the largest one (2..10,000)."""
    size, sep, largest = name.partition("x") if isinstance(name, str) else ("", "", "")
    if not (sep and size.isdigit() and largest.isdigit() and 2 <= int(size) <= MAX_SOLVER_NUMBERS
            and 2 <= int(largest) <= 10_000):
        raise ValueError(f"tier {name!r} is not allowed: 'NxM' with N numbers (2..{MAX_SOLVER_NUMBERS}) each <= M "
                         f"(2..10000), e.g. '3x20'")
    return int(size), int(largest)


def generate_tiers(n: int, *, tiers: list[str] | tuple[str, ...], seed: int = 42) -> list[dict]:
    """`n` solvable tasks split evenly over difficulty tiers ("NxM": N numbers, each <= M), tier after tier.
    Each row also carries its difficulty: `tier` and `num_solutions` (count_solutions: 1 = a single way)."""
    require_int("n", n, len(tiers) or 1)
    rows: list[dict] = []
    for index, name in enumerate(tiers):
        size, largest = parse_tier(name)
        count = n // len(tiers) + (index < n % len(tiers))
        for row in generate_countdown(count, sizes=(size,), max_number=largest, seed=seed + 7919 * index):
            rows.append({**row, "tier": name, "num_solutions": count_solutions(row["nums"], row["target"])})
    return rows


def load_countdown(source: str = "generated", *, num_tasks: int | None = None,
                   sizes: tuple[int, ...] | list[int] = (3, 4), max_number: int = 99, seed: int = 42,
                   tiers: list[str] | tuple[str, ...] = ()) -> list[dict]:
    """Validated task rows from `"generated"` (num_tasks or 20,000 made locally, by `tiers` when given, else by
    sizes/max_number), a .jsonl/.json/.parquet/.csv file, or a hub dataset id (needs network). `num_tasks` keeps
    the first N rows of a file or hub set."""
    if num_tasks is not None:
        require_int("num_tasks", num_tasks, 1)
    if not isinstance(source, str) or not source.strip():
        raise ValueError(f"source={source!r} is not allowed: 'generated', a .jsonl/.json/.parquet/.csv path or a hub id")
    if source == "generated" and tiers:
        return generate_tiers(num_tasks or 20_000, tiers=list(tiers), seed=seed)
    if source == "generated":
        return generate_countdown(num_tasks or 20_000, sizes=sizes, max_number=max_number, seed=seed)

    path = Path(source).expanduser()
    suffix = path.suffix.lower()
    if path.is_dir():
        raise ValueError(f"dataset {source!r} is a folder: give one {'/'.join(FILE_TYPES)} file inside it, "
                         f"'generated', or a hub id such as {HUB_EXAMPLE!r}")
    if suffix in FILE_TYPES or _looks_like_path(source) or "/" not in source:
        if not path.is_file():  # a bare name ("mydata") is a file that is not there, never a hub id to retry for
            raise MissingFileError(f"dataset file {str(path)!r} does not exist (resolved: {path.resolve()}); a hub "
                                   f"dataset is named owner/name, e.g. {HUB_EXAMPLE!r}")
        if suffix not in FILE_TYPES:
            raise ValueError(f"dataset file {str(path)!r} has the type {suffix or '(none)'!r}: use "
                             f"{'/'.join(FILE_TYPES)}")
        rows = _read_rows(path)
        if not rows:
            raise ValueError(f"dataset file {str(path)!r} holds no rows")
    else:
        import datasets  # heavy import, only when the hub is read

        try:
            table = datasets.load_dataset(source, split="train")
        except Exception as err:  # offline, unknown id, gated: the library's own error is kept as the cause
            raise RuntimeError(
                f"could not load dataset {source!r} from the Hugging Face hub ({type(err).__name__}: {err}). "
                f"Without network access use dataset='generated' (solvable tasks made locally) or a local "
                f".jsonl/.json/.parquet/.csv file; with network a hub id looks like {HUB_EXAMPLE!r}."
            ) from err
        rows = table.to_list()
    return validate_rows(rows[:num_tasks] if num_tasks is not None else rows)


def _looks_like_path(source: str) -> bool:
    """A local file name rather than a hub id ("owner/name"): it exists, starts like a path, or has a file type
    without an owner ("data.txt")."""
    return (Path(source).expanduser().exists() or source.startswith((".", "/", "~"))
            or ("/" not in source and Path(source).suffix != ""))


def _read_rows(path: Path) -> list[dict]:
    """Rows of a local file with each value's own type (a table reader would turn a whole column into floats
    for one float, hiding the row). CSV holds only text: `nums` is parsed as a list literal and whole-number
    text in `target`/`num_solutions` is read as an integer."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return load_jsonl(path)
    if suffix == ".json":
        text = path.read_text()
        try:
            rows = json.loads(text) if text.strip() else []
        except json.JSONDecodeError:
            return load_jsonl(path)  # JSON lines under a .json name
        if not isinstance(rows, list):
            raise ValueError(f"{path} must hold a list of task objects (or one object per line)")
        return rows
    if suffix == ".csv":
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        for row in rows:
            for name in ("target", "num_solutions"):
                if isinstance(row.get(name), str) and row[name].strip().isdigit():
                    row[name] = int(row[name])
            if row.get("solution") == "":
                row["solution"] = None
        return _parse_nums_text(rows)
    import datasets  # parquet: typed columns

    return datasets.load_dataset("parquet", data_files=str(path), split="train").to_list()


def task_key(row: dict) -> tuple[tuple[int, ...], int]:
    """What makes two tasks the same game: the numbers in any order and the target."""
    return tuple(sorted(row["nums"])), row["target"]


def train_test_split(rows: list[dict], *, test_size: int, seed: int = 42) -> tuple[list[dict], list[dict]]:
    """Deterministic shuffle-then-cut: (train, test); the same rows and seed always give the same split.

    Rows with a `tier` are split tier by tier (test_size shared evenly), so every tier has its own held-out set.
    Test tasks are distinct games, and training rows that are the same game as a test row (`task_key`) are
    dropped, so no test task is ever trained on: len(rows) - len(train) - len(test) says how many."""
    require_int("test_size", test_size, 1)
    if test_size >= len(rows):
        raise ValueError(f"test_size={test_size} is not allowed: it must be smaller than the {len(rows)} rows "
                         f"(the rest is the training split)")
    by_tier: dict[Any, list[dict]] = {}
    for row in rows:
        by_tier.setdefault(row.get("tier"), []).append(row)
    train, test = [], []
    held_out: set[tuple] = set()  # distinct games only, across tiers too: a repeated test task would count twice
    for index, tier_rows in enumerate(by_tier.values()):
        share = test_size // len(by_tier) + (index < test_size % len(by_tier))
        order = list(range(len(tier_rows)))
        random.Random(seed).shuffle(order)
        picked = 0
        for cut, i in enumerate(order):
            if picked == share:
                break
            if task_key(tier_rows[i]) not in held_out:
                held_out.add(task_key(tier_rows[i]))
                test.append(tier_rows[i])
                picked += 1
        else:
            cut = len(order)
        train += [tier_rows[i] for i in order[cut:]]
    return [row for row in train if task_key(row) not in held_out], test


def load_split(data_config, *, seed: int) -> tuple[list[dict], list[dict]]:  # data_config: config.DataConfig
    """(train, test) exactly as a run with this data config and seed makes them when not given a split."""
    rows = load_countdown(data_config.dataset, num_tasks=data_config.num_tasks, sizes=tuple(data_config.task_sizes),
                          max_number=data_config.max_number, seed=seed, tiers=data_config.tiers)
    return train_test_split(rows, test_size=data_config.test_size, seed=seed)


def save_jsonl(rows: list[dict], path: str | Path) -> None:
    """One JSON object per line, written to a temp file then renamed, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_jsonl(path: str | Path) -> list[dict]:
    """Rows written by save_jsonl (blank lines skipped); a bad line raises ValueError with its line number."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"jsonl file {str(path)!r} does not exist")
    rows = []
    with path.open() as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{number}: not valid JSON ({err.msg}): {line[:80]!r}") from err
    return rows


# --------------------------------------------------------------------------------------------------------------
# Prompts

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


# --------------------------------------------------------------------------------------------------------------
# Statistics


def dataset_stats(rows: list[dict], tokenizer=None, *, sample_size: int = 1000, seed: int = 0,
                  progress: bool = False) -> dict:
    """Numbers for the dataset plots: every target and task size; the difficulty (count_solutions) and prompt
    token length on a random sample of `sample_size` rows (the solver costs ~ms per 4-number task)."""
    require_int("sample_size", sample_size, 1)
    sample = rows if len(rows) <= sample_size else random.Random(seed).sample(rows, sample_size)
    if progress:
        from tqdm.auto import tqdm
        sample_iter = tqdm(sample, desc="count_solutions")
    else:
        sample_iter = sample
    difficulty = [count_solutions(r["nums"], r["target"]) for r in sample_iter]
    stats: dict[str, Any] = {
        "num_tasks": len(rows),
        "targets": [r["target"] for r in rows],
        "sizes": dict(sorted(Counter(len(r["nums"]) for r in rows).items())),
        "sample_size": len(sample),
        "difficulty": difficulty,
        "solvable_fraction": sum(d > 0 for d in difficulty) / len(difficulty),
        "median_solutions": statistics.median(difficulty),
        "prompt_tokens": None,
    }
    if tokenizer is not None:
        ids = tokenizer(render_prompts(tokenizer, sample), add_special_tokens=False)["input_ids"]
        stats["prompt_tokens"] = [len(x) for x in ids]
    return stats


def plot_dataset_stats(stats: dict):
    """2x2 figure: targets, difficulty (power-of-two buckets), task sizes, prompt token lengths."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    ax = axes[0, 0]
    ax.hist(stats["targets"], bins=50, color="tab:blue")
    ax.set(title=f"target ({stats['num_tasks']} tasks)", xlabel="target", ylabel="tasks")

    ax = axes[0, 1]
    # solutions per task in power-of-two buckets 0, 1, 2-3, 4-7, ...: the spread covers orders of magnitude
    buckets = Counter(0 if d == 0 else int(d).bit_length() for d in stats["difficulty"])
    top = max(buckets)
    labels = ["0"] + [str(2 ** (k - 1)) if k == 1 else f"{2 ** (k - 1)}-{2 ** k - 1}" for k in range(1, top + 1)]
    ax.bar(labels, [buckets.get(k, 0) for k in range(top + 1)], color="tab:orange")
    ax.tick_params(axis="x", labelrotation=45)
    ax.set(title=f"solutions per task (sample of {stats['sample_size']}; 0 = impossible)",
           xlabel="distinct expression trees", ylabel="tasks")

    ax = axes[1, 0]
    ax.bar([str(k) for k in stats["sizes"]], list(stats["sizes"].values()), color="tab:green")
    ax.set(title="numbers per task", xlabel="numbers", ylabel="tasks")

    ax = axes[1, 1]
    if stats.get("prompt_tokens"):
        ax.hist(stats["prompt_tokens"], bins=20, color="tab:purple")
        ax.set(title="prompt length", xlabel="tokens", ylabel="tasks")
    else:
        ax.text(0.5, 0.5, "no tokenizer given", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
    fig.tight_layout()
    return fig


__all__ = [
    "SYSTEM_PROMPT", "ASSISTANT_PREFIX", "generate_countdown", "solve", "solvable_in_whole_steps", "count_solutions", "validate_rows",
    "load_countdown", "train_test_split", "save_jsonl", "load_jsonl", "user_message", "build_messages",
    "render_prompt", "render_prompts", "dataset_stats", "plot_dataset_stats", "generate_tiers", "parse_tier",
    "task_key", "load_split", "require_task", "EXAMPLE_ANSWER",
]
