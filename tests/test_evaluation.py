"""grpo_helpers.evaluation: pass@k, Wilson intervals and the sign test against hand computation, and evaluate's
batches, seeds and scores."""

from __future__ import annotations

import itertools

import pytest

from grpo_helpers import evaluation
from grpo_helpers.evaluation import EvalResult, evaluate, paired_sign_test, pass_at_k, wilson_interval
from scored_samples import CD, GOOD, TASKS, WRONG_NUMBERS, fake_generate, handcrafted
from tiny import tiny_llama, tiny_lora


# ------------------------------------------------------------------ statistics


def test_pass_at_k_matches_brute_force_enumeration():
    for n in range(1, 7):
        for c in range(n + 1):
            samples = [True] * c + [False] * (n - c)
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(samples, k))
                expected = sum(any(s) for s in subsets) / len(subsets)
                assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12), (n, c, k)


@pytest.mark.parametrize("n, c, k", [(0, 0, 1), (3, 4, 1), (3, 1, 4), (3, 1, 0), (3, -1, 1), (3.0, 1, 1)])
def test_pass_at_k_rejects_bad_counts(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


@pytest.mark.parametrize("successes, n, low, high", [
    # by hand: center = (p + z^2/2n) / (1 + z^2/n), half = z / (1 + z^2/n) * sqrt(p(1-p)/n + z^2/4n^2)
    (0, 10, 0.0, 0.27754), (5, 10, 0.23659, 0.76341), (8, 10, 0.49016, 0.94332), (10, 10, 0.72246, 1.0),
    (1, 1, 0.20654, 1.0),
])
def test_wilson_interval_hand_computed(successes, n, low, high):
    assert wilson_interval(successes, n) == pytest.approx((low, high), abs=1e-5)


def test_wilson_interval_rejects_bad_counts():
    for successes, n in ((0, 0), (3, 2), (-1, 5)):
        with pytest.raises(ValueError):
            wilson_interval(successes, n)


def solved(pattern: str) -> EvalResult:
    """A result on len(pattern) tasks whose first samples are correct where pattern has a 1."""
    records = [{"task": i, "correct": [flag == "1"]} for i, flag in enumerate(pattern)]
    return EvalResult(k=1, accuracy=0.0, accuracy_ci=(0.0, 1.0), format_rate=None, format_ci=None, mean_length=0.0,
                      pass_at={}, pass_at_k_ci=(0.0, 1.0), records=records)


@pytest.mark.parametrize("before, after, only_after, only_before, p_value", [
    ("000001", "111111", 5, 0, 2 / 2 ** 5),  # 5 of 5 discordant tasks one way: 2 * P(X = 0), X ~ Bin(5, 1/2)
    ("110000", "011110", 3, 1, 2 * (1 + 4) / 2 ** 4),  # 2 * P(X <= 1), X ~ Bin(4, 1/2)
    ("1010", "1010", 0, 0, 1.0),  # no task tells the models apart
])
def test_paired_sign_test_hand_computed(before, after, only_after, only_before, p_value):
    out = paired_sign_test(solved(before), solved(after))
    assert out == {"only_after": only_after, "only_before": only_before, "p_value": pytest.approx(p_value)}


def test_paired_sign_test_needs_the_same_tasks():
    with pytest.raises(ValueError, match="same task"):
        paired_sign_test(solved("10"), solved("101"))


# ------------------------------------------------------------------ evaluation


def test_scores_of_handcrafted_completions():
    result = handcrafted()
    assert [r["correct"] for r in result.records] == [[True, False], [True, True], [False, False]]
    assert [r["formatted"] for r in result.records] == [[True, True], [False, True], [True, True]]
    assert result.accuracy == pytest.approx(2 / 3)  # first samples: correct, correct, wrong
    assert result.format_rate == pytest.approx(2 / 3)  # first samples: formatted, not, formatted
    assert result.mean_length == pytest.approx(35)
    assert result.pass_at[1] == pytest.approx((1 / 2 + 1 + 0) / 3)
    assert result.pass_at[2] == pytest.approx(2 / 3)
    assert result.accuracy_ci == wilson_interval(2, 3) and result.pass_at_k_ci == wilson_interval(2, 3)
    assert result.summary()["pass@2"] == result.pass_at[2]


def test_split_by_scores_each_group_as_its_own_evaluation():
    result = handcrafted()
    parts = evaluation.split_by(result, key=lambda record: record["index"] % 2, task=CD)  # tasks 0, 2 | task 1
    assert list(parts) == [0, 1] and [p.num_tasks for p in parts.values()] == [2, 1]
    assert parts[0].accuracy == 0.5 and parts[0].accuracy_ci == wilson_interval(1, 2) and parts[1].accuracy == 1.0
    assert parts[0].pass_at[2] == 0.5 and parts[1].format_rate == 0.0  # k samples and the format kept per group
    assert list(evaluation.split_by_tier(result, task=CD)) == [result.records[0]["tier"] or "all"]


def test_evaluate_batches_keep_tasks_and_samples_in_order(tokenizer, monkeypatch):
    def texts_for(prompt, g):  # sample 0 correct for every task, the others wrong
        task = next(i for i, t in enumerate(TASKS) if f"numbers {t['nums']}" in prompt)
        return [GOOD[task]] + [WRONG_NUMBERS] * (g - 1)

    generate, calls = fake_generate(texts_for)
    monkeypatch.setattr(evaluation, "generate_groups", generate)
    result = evaluate(tiny_llama(tokenizer), tokenizer, TASKS, k=3, batch_size=2, seed=5, task=CD)
    assert [c["prompts"] for c in calls] == [2, 1] and all(c["group_size"] == 3 for c in calls)
    assert calls[0]["seed"] != calls[1]["seed"], "each batch needs its own random numbers"
    assert [r["correct"] for r in result.records] == [[True, False, False]] * 3
    assert result.accuracy == 1.0 and result.pass_at[1] == pytest.approx(1 / 3) and result.pass_at[3] == 1.0
    assert result.settings["k"] == 3 and result.settings["seed"] == 5


def test_evaluate_is_deterministic_for_a_seed(tokenizer):
    model = tiny_lora(tokenizer)
    run = lambda seed: evaluate(model, tokenizer, TASKS, k=2, max_new_tokens=6, batch_size=2, seed=seed, task=CD).records
    first = run(3)
    assert first == run(3)
    assert first != run(4)


def test_evaluate_rejects_bad_settings(tokenizer):
    for kwargs, match in (({"k": 2, "greedy": True}, "greedy"), ({"k": 0}, "k=0"), ({"batch_size": 0}, "batch_size"),
                          ({"temperature": 0.0}, "temperature")):
        with pytest.raises(ValueError, match=match):
            evaluate(None, tokenizer, TASKS, **kwargs, task=CD)
    with pytest.raises(ValueError, match="empty"):
        evaluate(None, tokenizer, [], task=CD)
