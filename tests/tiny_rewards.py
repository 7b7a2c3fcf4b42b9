"""Imported by launched test runs (`train_grpo.py --import tests/tiny_rewards.py`): registers the `length` reward."""

from grpo_helpers.countdown.rewards import REWARD_FUNCTIONS
from tiny import length_reward

REWARD_FUNCTIONS["length"] = length_reward
