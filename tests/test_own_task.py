"""A task the package has never heard of, given in TRL's conventions: it trains, logs, checkpoints, resumes and
evaluates, and every reward function sees each row's columns aligned with the completion it scores."""

from __future__ import annotations

import json

import pytest

from grpo_helpers.config import load_config
from grpo_helpers.evaluation import evaluate
from grpo_helpers.sft import ColdStart
from grpo_helpers.task import Task, render_prompt
from grpo_helpers.trainer import GRPOTrainer
from tiny import tiny_lora

# "Echo the colour": a prompt names a colour and carries a secret number; nothing in the package knows either.
COLOURS = ["red", "green", "blue", "amber", "violet", "teal", "ochre", "coral"]
ROWS = [{"prompt": [{"role": "user", "content": f"Card {i}: say the colour {c}."}], "colour": c, "card": i,
         "tier": "easy" if i % 2 else "hard"} for i, c in enumerate(COLOURS * 3)]
SEEN: list[tuple] = []  # what the reward functions were handed, to check the alignment afterwards


def says_colour(completions, colour, card, prompts, **kwargs):
    """1.0 when the completion names the row's colour (the judge)."""
    SEEN.append((list(completions), list(colour), list(card), list(prompts)))
    return [float(c in text) for text, c in zip(completions, colour)]


def brevity(completions, **kwargs):
    """A second, shaped reward: shorter is better (gives groups a spread with a random model)."""
    return [1.0 / (1 + len(text)) for text in completions]


def own_config(tmp_path, **overrides):
    values = dict(max_steps=3, num_prompts=2, group_size=3, max_new_tokens=6, beta=0.0, lr=1e-2, save_every=1,
                  eval_every=3, eval_tasks=4, temperature=1.0, dynamic_sampling=0, output_dir=str(tmp_path / "run"))
    return load_config("cpu", **{**values, **overrides})


def own_task() -> Task:
    return Task(reward_funcs=[says_colour, brevity], reward_weights={"says_colour": 1.0, "brevity": 0.5})


def comparable(rows):
    return [{k: v for k, v in row.items() if not k.startswith(("time/", "tokens_per_sec", "gen_tokens_per_sec"))}
            for row in rows]


def test_columns_reach_the_rewards_aligned_with_their_completions(tokenizer, tmp_path):
    SEEN.clear()
    trainer = GRPOTrainer(own_config(tmp_path, max_steps=2, eval_every=0), train_dataset=ROWS[:16],
                          eval_dataset=ROWS[16:], reward_funcs=own_task(), model=tiny_lora(tokenizer),
                          tokenizer=tokenizer)
    trainer.train()
    assert SEEN, "the reward function was never called"
    for completions, colours, cards, prompts in SEEN:
        assert len(completions) == len(colours) == len(cards) == len(prompts) == 2 * 3
        for i in range(0, len(cards), 3):  # a row's values repeat across its group of G = 3
            assert len(set(cards[i:i + 3])) == 1 and len(set(colours[i:i + 3])) == 1
        for colour, card, prompt in zip(colours, cards, prompts):  # and belong to the same row as the prompt
            assert prompt == ROWS[card]["prompt"] and colour == ROWS[card]["colour"]
    logged = [json.loads(line) for line in (tmp_path / "run" / "completions.jsonl").read_text().splitlines()]
    assert {row["colour"] for row in logged} <= set(COLOURS) and all("prompt" not in row for row in logged)
    metrics = trainer.history[-1]
    assert {"rewards/says_colour/mean", "rewards/brevity/mean", "hack/accuracy",
            "hack/identical_answers"} <= set(metrics)
    assert "hack/uses_numbers" not in metrics  # Countdown's own signal stays Countdown's
    assert not any(key.startswith("aha/") for key in metrics)  # no claim checker, no aha metrics
    assert {"train/accuracy/easy", "train/accuracy/hard"} & set(metrics)  # the tier column drives per-tier accuracy
    saved = load_config(str(tmp_path / "run" / "config.yaml"))
    assert saved.rewards.reward_weights == {"says_colour": 1.0, "brevity": 0.5}  # what was trained, not the preset's


def test_own_task_resumes_exactly_and_evaluates(tokenizer, tmp_path):
    def trainer(folder, **overrides):
        return GRPOTrainer(own_config(folder, **overrides), train_dataset=ROWS[:16], eval_dataset=ROWS[16:],
                           reward_funcs=own_task(), model=tiny_lora(tokenizer), tokenizer=tokenizer)

    whole = trainer(tmp_path / "a").train()
    trainer(tmp_path / "b", max_steps=2).train()
    resumed = trainer(tmp_path / "b", resume=True)
    assert resumed.step == 2
    assert comparable(resumed.train()) == comparable(whole)
    evals = [json.loads(line) for line in (tmp_path / "b" / "run" / "eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [0, 3] and {"eval/easy/accuracy", "eval/hard/accuracy"} <= set(evals[-1])
    assert "eval/format_rate" not in evals[-1]  # the task has no format reward: none is invented

    result = evaluate(resumed.unwrapped_model, tokenizer, ROWS[16:], task=own_task(), max_new_tokens=6, greedy=True)
    assert result.num_tasks == 8 and result.format_rate is None
    assert [r["card"] for r in result.records] == list(range(16, 24))
    assert result.solved == [r["colour"] in r["completions"][0] for r in result.records]


def test_datasets_dataset_and_string_prompts_work(tokenizer, tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [{"prompt": f"Say {row['colour']}:", "colour": row["colour"], "card": row["card"]} for row in ROWS]
    train = datasets.Dataset.from_list(rows[:16])
    assert render_prompt(tokenizer, rows[0]["prompt"]) == "Say red:"  # a string prompt is used as it is
    trainer = GRPOTrainer(own_config(tmp_path, max_steps=1, eval_every=0, curriculum="success"), train_dataset=train,
                          reward_funcs=[says_colour], model=tiny_lora(tokenizer), tokenizer=tokenizer)
    assert trainer.task.correct_reward == "says_colour" and trainer.train()[-1]["step"] == 1


def test_cold_start_learns_prompt_completion_rows(tokenizer, tmp_path):
    rows = [{**row, "completion": f" {row['colour']}"} for row in ROWS]
    config = own_config(tmp_path, sft_steps=2, sft_batch_size=4, sft_traces=16)
    cold = ColdStart(config, train_dataset=rows, task=own_task(), model=tiny_lora(tokenizer), tokenizer=tokenizer)
    assert all(t["completion"] == f" {t['colour']}" for t in cold.traces)
    assert (cold.train() / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("bad,match", [
    ([{"text": "no prompt column"}], r"train_dataset row 0: 'prompt'=None is not allowed: a string or a list of chat"),
    ([], "train_dataset must be a non-empty list of dicts"),
    (["just a string"], "train_dataset row 0: expected a dict"),
])
def test_bad_rows_are_named_before_any_model_loads(tmp_path, bad, match):
    with pytest.raises(ValueError, match=match):
        GRPOTrainer(own_config(tmp_path), train_dataset=bad, eval_dataset=ROWS, reward_funcs=[says_colour],
                    model=object(), tokenizer=None)


def test_a_task_needs_its_rows_and_a_judge_it_has(tmp_path):
    with pytest.raises(ValueError, match="train_dataset is missing"):
        GRPOTrainer(own_config(tmp_path), reward_funcs=[says_colour], model=object(), tokenizer=None)
    with pytest.raises(ValueError, match="eval_dataset is missing while eval_every=3"):
        GRPOTrainer(own_config(tmp_path), train_dataset=ROWS, reward_funcs=[says_colour], model=object(),
                    tokenizer=None)
    with pytest.raises(ValueError, match="correct_reward='exact' is not allowed: one of the task's reward functions"):
        Task(reward_funcs=[says_colour], correct_reward="exact")


def test_a_column_named_like_a_scoring_argument_still_reaches_the_reward():
    """Columns travel as their own mapping: a dataset's `step` (or `weights`) column cannot collide with the
    arguments of the scoring code."""
    seen = {}

    def judge(completions, step, weights, **kwargs):
        seen.update(step=step, weights=weights)
        return [1.0] * len(completions)

    scores = Task(reward_funcs=[judge]).score(["a", "b"], [{"prompt": "p", "step": 7, "weights": "w"}], repeat=2,
                                              step=3)
    assert scores.total == [1.0, 1.0] and seen == {"step": [7, 7], "weights": ["w", "w"]}
