"""Chapter 08's task, "the largest of five numbers": rows, prompt and judge, checked without a model."""

from __future__ import annotations

import pytest

from grpo_helpers.largest import (EXAMPLE_NUMBERS, answer_number, generate_largest, largest_prompt, largest_reward,
                                  largest_task)


def test_rows_are_deterministic_distinct_and_carry_their_answer():
    rows = generate_largest(300, seed=3)
    assert rows == generate_largest(300, seed=3) and rows != generate_largest(300, seed=4)
    for row in rows:
        assert len(set(row["numbers"])) == 5 and all(10 <= x <= 99 for x in row["numbers"])
        assert row["answer"] == max(row["numbers"]) and row["prompt"] == largest_prompt(row["numbers"])
        assert sorted(row["numbers"]) != sorted(EXAMPLE_NUMBERS)
    assert len({row["answer"] for row in rows}) > 20  # the answer is not always the same number


def test_the_prompt_shows_one_worked_example_then_asks():
    messages = largest_prompt([12, 40, 33, 97, 18])
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert "<answer>86</answer>" in messages[1]["content"] and "12, 40, 33, 97, 18" in messages[2]["content"]


@pytest.mark.parametrize("completion,score", [
    ("The largest number is 97.\n<answer>97</answer>", 1.0),
    ("<answer> 97 </answer>", 1.0),
    ("<answer>23</answer> no: <answer>97</answer>", 1.0),  # the last block counts
    ("<answer>97</answer> no: <answer>23</answer>", 0.0),
    ("The largest number is 97.", 0.0),  # no tags: no answer
    ("<answer>97.0</answer>", 0.0),
    ("<answer>max([12, 97])</answer>", 0.0),  # text is never evaluated
    ("<answer>٩٧</answer>", 0.0),  # unicode digits are not ASCII digits
    ("<answer>" + "9" * 40 + "</answer>", 0.0),
])
def test_the_judge_reads_only_a_plain_number_in_the_last_block(completion, score):
    assert largest_reward([completion], answer=[97]) == [score]


def test_the_task_judges_with_its_reward_and_aligns_the_answer_column():
    task = largest_task()
    rows = generate_largest(2, seed=0)
    right = [f"<answer>{row['answer']}</answer>" for row in rows]
    assert task.correct_reward == "largest_reward" and task.format_reward is None
    assert task.correct([right[0], right[0], right[1], right[1]], rows, repeat=2) == [True, True, True, True]
    assert task.correct([right[1], right[1], right[0], right[0]], rows, repeat=2) == [
        rows[0]["answer"] == rows[1]["answer"]] * 4
    assert answer_number("<answer>042</answer>") == 42 and answer_number("nothing") is None
