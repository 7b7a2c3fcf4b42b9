"""grpo_helpers: GRPO for verifiable tasks (Countdown, chapter 08's, your own), one module per concern (see the
README's layout)."""

from grpo_helpers.errors import show_usage_errors_briefly

show_usage_errors_briefly()  # in a notebook, a bad parameter reads as one line (grpo_helpers/errors.py)
