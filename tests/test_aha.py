"""Tests for the aha metric: Countdown's claim checker recomputes "a op b = c", the aha metrics count completions
that correct a false claim and end correct, and chapter 06's finder shows them. Words alone never count."""

from __future__ import annotations

import time

import pytest

from grpo_helpers.aha import aha_flags, aha_metrics
from grpo_helpers.countdown.claims import check_claims
from grpo_helpers.countdown.task import countdown_task
from grpo_helpers.evaluation import score_samples, sign_test, tier_metrics
from grpo_helpers.inference import find_aha, highlight
from grpo_helpers.task import Claims, Task

CD = countdown_task()
END = "\n</think>\n<answer>{}</answer>"


def test_false_claims_are_found_by_recomputing_and_corrected_by_a_later_true_one():
    text = "13 * 10 = 16. Check: 13 * 10 = 130, not 16.\n130 - 4 = 126. Found it."
    assert check_claims(text) == Claims(corrected=[("13 * 10 = 16", "13 * 10 = 130")], uncorrected=[])
    # the model's typical failure: false arithmetic, then a claimed success; nothing corrects it
    assert check_claims("15 * 12 = 17. Found it.") == Claims(corrected=[], uncorrected=["15 * 12 = 17"])
    assert check_claims("9 + 4 = 13, then 2 13.\n36 / 2 = 18.") == Claims(corrected=[], uncorrected=[])


@pytest.mark.parametrize("text,corrected,uncorrected", [
    ("2 + 3 = 6 ... 3 + 2 = 5", [("2 + 3 = 6", "3 + 2 = 5")], []),  # + and * in either order
    ("4 * 5 = 21, 5 * 4 = 20", [("4 * 5 = 21", "5 * 4 = 20")], []),
    ("9 - 4 = 6, 4 - 9 = 5", [], ["9 - 4 = 6", "4 - 9 = 5"]),  # - keeps its order: 4 - 9 is another operation
    ("8 / 2 = 3, 8/2=4", [("8 / 2 = 3", "8/2=4")], []),  # spacing varies
    ("6 × 7 = 43. No: 6 × 7 = 42", [("6 × 7 = 43", "6 × 7 = 42")], []),  # the multiplication sign
    ("6 ÷ 0 = 1, 6 ÷ 0 = 2", [], ["6 ÷ 0 = 1", "6 ÷ 0 = 2"]),  # no claim about a division by zero is true
    ("5 + 5 = 10, 5 + 5 = 11", [], ["5 + 5 = 11"]),  # right first, wrong later: a regression, not a correction
    ("7 * 3 = 20, 7 * 3 = 22, 7 * 3 = 21", [("7 * 3 = 20", "7 * 3 = 21"), ("7 * 3 = 22", "7 * 3 = 21")], []),
    ("1.5 + 2 = 3.5 and 10 + 5 = 15.", [], []),  # decimals are not claims about whole numbers; "15." ends a sentence
    ("27 + 3 = 30.5", [], []),
    ("a12 + 3 = 16", [], ["12 + 3 = 16"]),
])
def test_claims(text, corrected, uncorrected):
    assert check_claims(text) == Claims(corrected=corrected, uncorrected=uncorrected)


def test_the_checker_is_linear_on_hostile_text():
    hostile = "1" * 200_000 + " + " + "2 = " * 50_000 + "= " * 50_000
    start = time.perf_counter()
    check_claims(hostile)
    assert time.perf_counter() - start < 2.0  # ~0.05 s: a backtracking pattern would take minutes


def test_aha_metrics_count_corrections_that_end_correct_never_words():
    rows = [{"nums": [13, 10, 4], "target": 126}] * 5
    completions = [
        " 13 * 10 = 16. Check: 13 * 10 = 130, not 16.\n130 - 4 = 126. Found it." + END.format("13 * 10 - 4"),  # aha
        " 13 * 10 = 16. Check: 13 * 10 = 130, not 16." + END.format("13 + 10 + 4"),  # corrects, ends wrong
        " 13 * 10 = 16. Found it." + END.format("13 * 10 - 4"),  # correct answer, false claim left standing
        " Wait, let me check. Aha! Checked, verified." + END.format("13 * 10 - 4"),  # phrases only: no aha
        " 13 * 10 = 130, 130 - 4 = 126." + END.format("13 * 10 - 4"),  # clean
    ]
    metrics = aha_metrics(completions, rows, task=CD)
    assert metrics == {"aha/self_corrected": 2 / 5, "aha/rate": 1 / 5, "aha/false_claims": 1 / 5}
    assert aha_metrics(completions, rows, task=CD, correct=[False] * 5)["aha/rate"] == 0.0  # judgements reused
    no_checker = Task(reward_funcs=[lambda completions, **_: [1.0] * len(completions)])
    assert aha_metrics(completions, rows, task=no_checker) == {}  # a task without claims logs no aha/*


def test_evaluation_reports_the_aha_metrics_pooled_and_per_tier():
    rows = [{"nums": [13, 10, 4], "target": 126, "tier": "3x20"}, {"nums": [2, 4], "target": 8, "tier": "2x10"}]
    aha = " 13 * 10 = 16. Check: 13 * 10 = 130, not 16." + END.format("13 * 10 - 4")
    plain = " 2 + 4 = 6, not 8." + END.format("2 * 4")
    results = {"3x20": score_samples(rows[:1], [[aha]], task=CD, lengths=[[20]]),
               "2x10": score_samples(rows[1:], [[plain]], task=CD, lengths=[[9]])}
    metrics = tier_metrics(results, task=CD)
    assert metrics["eval/aha/rate"] == 0.5 and metrics["eval/aha/self_corrected"] == 0.5
    assert metrics["eval/3x20/aha/rate"] == 1.0 and metrics["eval/2x10/aha/rate"] == 0.0
    assert metrics["eval/aha/false_claims"] == 0.0
    # per task, paired across two models (chapter 06's test of "more ahas after GRPO")
    before = score_samples(rows, [[plain.replace("2 + 4", "13 + 1")], [plain]], task=CD, lengths=[[9], [9]])
    after = score_samples(rows, [[aha], [plain]], task=CD, lengths=[[20], [9]])
    assert aha_flags(before.records, task=CD) == [False, False] and aha_flags(after.records, task=CD) == [True, False]
    assert sign_test(aha_flags(before.records, task=CD), aha_flags(after.records, task=CD)) == {
        "only_after": 1, "only_before": 0, "p_value": 1.0}
    with pytest.raises(ValueError, match="same tasks"):
        sign_test([True], [True, False])


def test_find_aha_keeps_correct_self_corrections_best_first_and_highlights_them():
    records = [
        {"nums": [2, 4], "target": 8, "completions": [
            " 2 + 4 = 8. Check: 2 + 4 = 6, not 8.\n2 * 4 = 9. Check: 2 * 4 = 8." + END.format("2 * 4"),  # 2, correct
            " 2 - 4 = 3. Check: 4 - 2 = 2." + END.format("2 - 4"),  # not the same operation, and wrong
            " Wait, actually, let me recheck: mistake!" + END.format("2 * 4"),  # correct, phrases only
            " 2 + 4 = 7, no: 2 + 4 = 6. Then 2 * 4 = 8." + END.format("2 * 4"),  # 1 correction, correct
        ]},
        {"nums": [1, 9], "target": 10, "completion": " 1 + 9 = 11? 1 + 9 = 10" + END.format("1 + 9")},
    ]
    found = find_aha(records, task=CD)
    assert [(a["record"], len(a["corrections"])) for a in found] == [(0, 2), (1, 1), (0, 1)]
    assert found[0]["corrections"] == [("2 + 4 = 8", "2 + 4 = 6"), ("2 * 4 = 9", "2 * 4 = 8")]
    assert found[1]["length"] < found[2]["length"]  # ties: shorter first
    shown = highlight(found[2])
    assert '<span style="background:#f8d7da">2 + 4 = 7</span>' in shown  # the false claim in red
    assert '<span style="background:#d4edda">2 + 4 = 6</span>' in shown  # its correction in green
    assert "&lt;/think&gt;" in shown and "<answer>" not in shown  # the completion's own tags are escaped
    with pytest.raises(ValueError, match="check_claims"):
        find_aha(records, task=Task(reward_funcs=[lambda completions, **_: [1.0] * len(completions)]))
