"""Tests for difficulty tiers: generate_tiers, the tier-stratified split, TierSampler, make_sampler, and config."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from grpo_helpers.countdown import data, game
from grpo_helpers.config import ConfigError, DataConfig, RolloutConfig, load_config
from grpo_helpers.countdown.game import SEED_TIER, count_solutions, generate_tiers, parse_tier, task_key
from grpo_helpers.samplers import PromptSampler, TierSampler, make_sampler
from grpo_helpers.countdown.rewards import evaluate_expression, expression_numbers

SAMPLER_TIERS = ["2x10", "2x20", "3x20"]


@pytest.fixture(scope="module")
def tiered_rows() -> list[dict]:
    return generate_tiers(600, tiers=SAMPLER_TIERS, seed=0)  # 200 rows per tier


def ids(batch: list[dict]) -> list[int]:
    return [id(row) for row in batch]


# ---------------------------------------------------------------------------------------------------------------
# generate_tiers


def test_generate_tiers_rows_carry_tier_and_difficulty():
    tiers = ["2x10", "3x20", "3x99", "4x99"]
    rows = generate_tiers(62, tiers=tiers, seed=3)
    assert len(rows) == 62
    assert Counter(r["tier"] for r in rows) == {"2x10": 16, "3x20": 16, "3x99": 15, "4x99": 15}
    assert [r["tier"] for r in rows] == sorted((r["tier"] for r in rows), key=tiers.index)  # tier after tier
    for row in rows:
        shape = parse_tier(row["tier"])
        assert len(row["nums"]) in shape.sizes and all(1 <= x <= shape.max_number for x in row["nums"]), row
        assert row["num_solutions"] == count_solutions(row["nums"], row["target"]) >= 1, row
        assert evaluate_expression(row["solution"]) == row["target"]
        assert sorted(expression_numbers(row["solution"])) == sorted(row["nums"])
    assert data.validate_rows(rows) == rows  # the difficulty fields survive validation
    assert generate_tiers(62, tiers=tiers, seed=3) == rows
    assert generate_tiers(62, tiers=tiers, seed=4) != rows


def test_generate_tiers_reaches_the_largest_numbers():
    rows = generate_tiers(400, tiers=["2x5", "3x99"], seed=1)
    largest = {t: max(max(r["nums"]) for r in rows if r["tier"] == t) for t in ("2x5", "3x99")}
    assert largest == {"2x5": 5, "3x99": 99}


def test_the_seed_tier_has_the_hub_sets_shape():
    """Countdown-Tasks-3to4, made here: 3 or 4 numbers from 1 to 99, a target up to 100, every task solvable."""
    rows = generate_tiers(200, tiers=["seed"], seed=2)
    sizes = Counter(len(r["nums"]) for r in rows)
    assert set(sizes) == {3, 4} and min(sizes.values()) >= 70, sizes  # both sizes, roughly balanced
    assert all(1 <= x <= 99 for r in rows for x in r["nums"]) and max(x for r in rows for x in r["nums"]) >= 95
    assert all(1 <= r["target"] <= 100 for r in rows) and max(r["target"] for r in rows) >= 90
    for row in rows[:40]:
        assert row["tier"] == "seed" and row["num_solutions"] == count_solutions(row["nums"], row["target"]) >= 1
        assert evaluate_expression(row["solution"]) == row["target"]
    assert parse_tier("seed") == SEED_TIER and SEED_TIER.sizes == (3, 4)
    assert load_config("cpu", tiers=["3x10", "seed"]).data.tiers == ["3x10", "seed"]


def test_held_out_tier_never_repeats_a_training_task():
    train = generate_tiers(400, tiers=["3x10", "seed"], seed=0)
    rows = data.held_out_tier(100, tier="seed", train=train)
    assert len(rows) == 100 and {r["tier"] for r in rows} == {"seed"}
    assert not {task_key(r) for r in rows} & {task_key(r) for r in train}
    assert data.held_out_tier(100, tier="seed", train=train) == rows  # deterministic
    with pytest.raises(ValueError, match="'2x2' tasks are not training tasks"):  # a tier with a handful of games
        data.held_out_tier(10, tier="2x2", train=generate_tiers(200, tiers=["2x2"], seed=0))


@pytest.mark.parametrize("tiers", [["2-20"], ["1x20"], ["7x20"], ["x20"], ["3x"], ["Seed"]])
def test_generate_tiers_rejects_bad_names(tiers):
    with pytest.raises(ValueError, match="'seed'"):
        generate_tiers(10, tiers=tiers)


# ---------------------------------------------------------------------------------------------------------------
# train_test_split


def test_split_gives_every_tier_its_share_and_never_trains_on_a_test_task(tiered_rows):
    train, test = data.train_test_split(tiered_rows, test_size=31, seed=0)
    assert Counter(r["tier"] for r in test) == {"2x10": 11, "2x20": 10, "3x20": 10}
    for tier in SAMPLER_TIERS:
        keys = [task_key(r) for r in test if r["tier"] == tier]
        assert len(set(keys)) == len(keys), f"{tier}: a game held out twice"
    held_out = {task_key(r) for r in test}
    assert not held_out & {task_key(r) for r in train}
    # nothing else is lost: every row that is not a twin of a test task trains, exactly once
    assert sorted(ids(train)) == sorted(id(r) for r in tiered_rows if task_key(r) not in held_out)
    assert all(any(r is t for t in tiered_rows) for r in test)
    assert data.train_test_split(tiered_rows, test_size=31, seed=0) == (train, test)
    assert data.train_test_split(tiered_rows, test_size=31, seed=1)[1] != test


def test_split_test_tasks_are_distinct_games_across_tiers(tiered_rows):
    """Tiers 2x10 and 2x20 share many games; the docstring promises distinct test games, so a game held out in
    two tiers would count twice in the test set."""
    _, test = data.train_test_split(tiered_rows, test_size=100, seed=0)
    counts = Counter(task_key(r) for r in test)
    assert len(counts) == len(test), f"games held out twice: {[k for k, c in counts.items() if c > 1]}"


def test_split_of_many_duplicates_keeps_test_games_out_of_train():
    rows = game.generate_countdown(300, sizes=(2,), max_number=5, seed=0)  # ~50 distinct games, many repeats
    assert len({task_key(r) for r in rows}) < 100
    train, test = data.train_test_split(rows, test_size=10, seed=0)
    assert len(test) == 10 and len({task_key(r) for r in test}) == 10
    held_out = {task_key(r) for r in test}
    assert not held_out & {task_key(r) for r in train}
    twins = sum(task_key(r) in held_out for r in rows)
    assert len(train) == len(rows) - twins > 0
    assert all("tier" not in r for r in train + test)


# ---------------------------------------------------------------------------------------------------------------
# TierSampler


def test_tier_sampler_is_deterministic(tiered_rows):
    a = TierSampler(tiered_rows, batch_size=6, seed=1)
    b = TierSampler(tiered_rows, batch_size=6, seed=1)
    c = TierSampler(tiered_rows, batch_size=6, seed=2)
    first = [ids(next(a)) for _ in range(15)]
    assert first == [ids(next(b)) for _ in range(15)]
    assert first != [ids(next(c)) for _ in range(15)]
    assert all(len(batch) == 6 for batch in first)
    assert {r["tier"] for r in tiered_rows if id(r) in {i for batch in first for i in batch}} == set(SAMPLER_TIERS)


def test_each_tier_hands_out_all_its_rows_before_repeating_one():
    rows = generate_tiers(30, tiers=["2x10", "2x20", "3x20"], seed=5)  # 10 rows per tier
    sampler = TierSampler(rows, batch_size=3, seed=0)
    seen: dict[str, list[int]] = {t: [] for t in sampler.tiers}
    for _ in range(60):
        for row in next(sampler):
            seen[row["tier"]].append(id(row))
    for tier, order in seen.items():
        assert len(order) >= 20, tier
        for start in range(0, len(order) - 9, 10):  # each epoch of the tier's order is a permutation of its rows
            assert len(set(order[start:start + 10])) == 10, tier


@pytest.mark.parametrize("curriculum", ["uniform", "linear", "success"])
def test_tier_sampler_resume_continues_identically(tiered_rows, curriculum):
    def feedback(step: int) -> dict[str, float]:
        return {"2x10": 0.9, "2x20": 0.3 + 0.02 * step, "3x20": 0.0}

    run = TierSampler(tiered_rows, batch_size=4, seed=7, curriculum=curriculum, max_steps=12)
    for step in range(7):
        next(run)
        run.update(feedback(step))
    state = json.loads(json.dumps(run.state_dict()))  # what a checkpoint stores
    resumed = TierSampler(tiered_rows, batch_size=4, seed=7, curriculum=curriculum, max_steps=12)
    resumed.load_state_dict(state)
    assert resumed.weights() == run.weights()
    for step in range(7, 20):
        assert ids(next(resumed)) == ids(next(run)), f"step {step}"
        run.update(feedback(step))
        resumed.update(feedback(step))


def test_tier_sampler_state_must_match_the_layout(tiered_rows):
    state = TierSampler(tiered_rows, batch_size=4, seed=7, curriculum="linear").state_dict()
    for other in (dict(curriculum="uniform"), dict(seed=8), dict(batch_size=5)):
        kwargs = dict(batch_size=4, seed=7, curriculum="linear") | other
        with pytest.raises(ValueError):
            TierSampler(tiered_rows, **kwargs).load_state_dict(state)


@pytest.mark.parametrize("curriculum", ["uniform", "linear", "success"])
def test_ranks_take_disjoint_slices_of_the_same_step(tiered_rows, curriculum):
    """What TierSampler promises: every rank draws the same step (batch_size x world_size slots) and keeps its own
    slice, so rank 0 + rank 1 is exactly the single-process step of twice the batch."""
    ranks = [TierSampler(tiered_rows, batch_size=5, seed=3, rank=r, world_size=2, curriculum=curriculum,
                         max_steps=10) for r in range(2)]
    single = TierSampler(tiered_rows, batch_size=10, seed=3, curriculum=curriculum, max_steps=10)
    for step in range(15):  # 150 draws: no tier (200 rows) starts a second epoch, so no row may come twice
        batches = [next(s) for s in ranks]
        assert [len(b) for b in batches] == [5, 5]
        assert not set(ids(batches[0])) & set(ids(batches[1])), f"step {step}: ranks share a prompt"
        assert ids(batches[0]) + ids(batches[1]) == ids(next(single)), f"step {step}"
        accuracy = {"2x10": 1.0, "2x20": 0.5, "3x20": 0.1}
        for s in ranks + [single]:
            s.update(accuracy)


def test_linear_curriculum_moves_from_the_first_tier_to_the_last(tiered_rows):
    sampler = TierSampler(tiered_rows, batch_size=20, seed=0, curriculum="linear", max_steps=10)
    assert sampler.tiers == SAMPLER_TIERS  # the order given
    history, drawn = [], []
    for _ in range(14):
        history.append(sampler.weights())
        drawn.append(Counter(r["tier"] for r in next(sampler)))
    assert history[0] == [1.0, sampler.MIN_WEIGHT, sampler.MIN_WEIGHT]
    assert history[5] == pytest.approx([sampler.MIN_WEIGHT, 1.0, sampler.MIN_WEIGHT])
    assert history[10] == history[13] == pytest.approx([sampler.MIN_WEIGHT, sampler.MIN_WEIGHT, 1.0])
    favourite = [w.index(max(w)) for w in history]
    assert favourite == sorted(favourite) and favourite[0] == 0 and favourite[-1] == 2
    assert all(min(w) >= sampler.MIN_WEIGHT for w in history)
    assert drawn[0].most_common(1)[0][0] == "2x10"
    assert drawn[-1].most_common(1)[0][0] == "3x20"


def test_success_curriculum_favours_tiers_solved_about_half_the_time(tiered_rows):
    sampler = TierSampler(tiered_rows, batch_size=30, seed=0, curriculum="success")
    assert sampler.weights() == [1.0, 1.0, 1.0]  # nothing known yet: every tier at s = 0.5
    for _ in range(40):
        sampler.update({"2x10": 1.0, "2x20": 0.5, "3x20": 0.0, "9x9": 0.5})  # an unknown tier is ignored
    weights = sampler.weights()
    assert weights[1] == pytest.approx(1.0)
    assert weights[0] < 0.2 and weights[2] < 0.2 and min(weights) >= sampler.MIN_WEIGHT
    assert "9x9" not in sampler.success
    drawn = Counter(r["tier"] for _ in range(5) for r in next(sampler))
    assert drawn.most_common(1)[0][0] == "2x20"
    assert drawn["2x20"] > drawn["2x10"] + drawn["3x20"]


def test_uniform_curriculum_draws_every_tier_alike(tiered_rows):
    sampler = TierSampler(tiered_rows, batch_size=30, seed=0)
    assert sampler.weights() == [1.0, 1.0, 1.0]
    sampler.update({"2x10": 1.0})
    assert sampler.weights() == [1.0, 1.0, 1.0]
    drawn = Counter(r["tier"] for _ in range(10) for r in next(sampler))
    assert all(70 <= drawn[t] <= 130 for t in SAMPLER_TIERS), drawn


def test_tier_sampler_rejects_bad_arguments(tiered_rows):
    with pytest.raises(ValueError):
        TierSampler(tiered_rows, batch_size=4, seed=0, curriculum="bogus")
    with pytest.raises(ValueError):
        TierSampler(tiered_rows, batch_size=4, seed=0, max_steps=0)
    with pytest.raises(ValueError):
        TierSampler(game.generate_countdown(20, seed=0), batch_size=4, seed=0)  # rows without tiers
    with pytest.raises(ValueError):
        TierSampler(tiered_rows[:10], batch_size=8, seed=0, world_size=2)  # too few rows for one step
    with pytest.raises(ValueError):
        TierSampler(tiered_rows, batch_size=4, seed=0, rank=2, world_size=2)


def test_make_sampler_picks_by_the_rows(tiered_rows):
    plain = game.generate_countdown(20, seed=0)
    assert type(make_sampler(plain, batch_size=4, seed=0)) is PromptSampler
    mixed = tiered_rows[:10] + plain
    assert type(make_sampler(mixed, batch_size=4, seed=0)) is PromptSampler
    tiered = make_sampler(tiered_rows, batch_size=4, seed=0, rank=1, world_size=2, curriculum="linear", max_steps=9)
    assert type(tiered) is TierSampler
    assert (tiered.curriculum, tiered.max_steps, tiered.rank, tiered.world_size) == ("linear", 9, 1, 2)
    assert ids(make_sampler(plain, batch_size=4, seed=0).__next__()) == ids(PromptSampler(plain, batch_size=4,
                                                                                           seed=0).__next__())


# ---------------------------------------------------------------------------------------------------------------
# config


@pytest.mark.parametrize("kwargs", [
    dict(tiers=["2-20"]), dict(tiers=["2x20", "2x20"]), dict(tiers=["7x20"]), dict(tiers=["2x1"]),
    dict(tiers="2x20"), dict(curriculum="bogus"),
])
def test_data_config_rejects_bad_tiers_and_curricula(kwargs):
    with pytest.raises(ConfigError) as err:
        DataConfig(**kwargs)
    assert next(iter(kwargs)) in str(err.value)
    with pytest.raises(ConfigError):
        load_config("cpu", **kwargs)


@pytest.mark.parametrize("value", [-1, 1.5, True, "2"])
def test_rollout_config_rejects_bad_dynamic_sampling(value):
    with pytest.raises(ConfigError, match="dynamic_sampling"):
        RolloutConfig(dynamic_sampling=value)


def test_config_accepts_tiers_and_curricula():
    cfg = load_config("cpu", tiers=["2x20", "3x20", "4x99"], curriculum="linear", dynamic_sampling=4)
    assert cfg.data.tiers == ["2x20", "3x20", "4x99"] and cfg.data.curriculum == "linear"
    assert cfg.rollout.dynamic_sampling == 4
    assert [(t.sizes, t.max_number) for t in map(parse_tier, cfg.data.tiers)] == [((2,), 20), ((3,), 20), ((4,), 99)]
    assert DataConfig().tiers == [] and DataConfig().curriculum == "uniform"
