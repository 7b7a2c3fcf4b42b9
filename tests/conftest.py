"""Shared fixtures: the bundled tokenizer, and a reward that a random tiny model earns unevenly."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/tiny.py is shared with subprocess runs


@pytest.fixture(scope="session")
def tokenizer():
    from grpo_helpers.models import load_tokenizer

    return load_tokenizer()


@pytest.fixture
def length_reward(monkeypatch):
    """Registers `length` as a reward function for the duration of a test."""
    from grpo_helpers.countdown import rewards
    from tiny import length_reward

    monkeypatch.setitem(rewards.REWARD_FUNCTIONS, "length", length_reward)
    return "length"
