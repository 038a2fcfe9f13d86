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
