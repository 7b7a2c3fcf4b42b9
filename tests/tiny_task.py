"""A task of a user's own for `train_grpo.py --task tests/tiny_task.py`: echo the colour a card names."""

COLOURS = ["red", "green", "blue", "amber", "violet", "teal", "ochre", "coral"]
ROWS = [{"prompt": f"Card {i}: say {c}.", "colour": c, "card": i} for i, c in enumerate(COLOURS * 4)]


def says_colour(completions, colour, **kwargs):
    """1.0 when the completion names the row's colour (the first function: the judge)."""
    return [float(c in text) for text, c in zip(completions, colour)]


def brevity(completions, **kwargs):
    return [1.0 / (1 + len(text)) for text in completions]


task = [says_colour, brevity]
train_dataset, eval_dataset = ROWS[:24], ROWS[24:]
