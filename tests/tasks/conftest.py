"""Fixtures of the task tests: a module of reward functions for grpo."""

import pytest

REWARD_MODULE = '''
def letters(prompt, answer, row):
    """A reward with spread on random answers: the share of distinct characters."""
    return len(set(answer)) / (1 + len(answer))

def broken(prompt, answer, row):
    raise ValueError("no score for " + row["expected"])

def text(prompt, answer, row):
    return "high"

def first_fails(prompt, answer, row):
    if row["expected"] == "1":
        raise ValueError("no score for 1")
    return 1.0

def as_tensor(prompt, answer, row):
    import torch
    return torch.tensor(len(answer) / 10)

def as_array(prompt, answer, row):
    import numpy
    return numpy.array(0.25)

def as_vector(prompt, answer, row):
    import torch
    return torch.tensor([0.5])

def leaves(prompt, answer, row):
    import sys
    sys.exit(1)

def huge(prompt, answer, row):
    return 1e308

def enormous(prompt, answer, row):
    return 10**400

def two(prompt, answer):
    return 1.0

async def later(prompt, answer, row):
    return 1.0

def flexible(prompt, answer, *rest, **more):
    return 1.0
'''


@pytest.fixture
def reward_module(tmp_path, monkeypatch):
    (tmp_path / "grpo_test_rewards.py").write_text(REWARD_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "grpo_test_rewards"


COLUMN_REWARDS = """
def own_spelling(prompt, answer, row):
    return float(row["Expected"] in answer)

def by_parameter(prompt, answer, row, Answer, bonus=0.0):
    return float(str(Answer) in answer) + bonus

def lower_parameter(prompt, answer, row, answer_key):
    return float(answer_key in answer)

def every_column(prompt, answer, row, **columns):
    return float(set(columns) == {"Prompt", "Expected", "Answer", "ANSWER_KEY", "thought"})
"""


@pytest.fixture
def column_rewards(tmp_path, monkeypatch):
    """Reward functions that read the row's columns under the file's own names (`grpo_column_rewards`)."""
    (tmp_path / "grpo_column_rewards.py").write_text(COLUMN_REWARDS)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "grpo_column_rewards"
