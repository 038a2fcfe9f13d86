"""Fixtures of the inference tests: `seeded`, torch's generator seeded before a test whose answers are sampled."""

import pytest
import torch


@pytest.fixture
def seeded():
    """torch.manual_seed(0): sampled answers (infer_setup.CHAT) the same whatever ran before."""
    torch.manual_seed(0)
