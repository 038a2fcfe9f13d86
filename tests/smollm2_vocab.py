"""The tiny model with SmolLM2's own tokenizer, for a test module that reads that tokenizer beside the model (its chat
template, the characters it drops, its token counts, ids it feeds the model): importing these two fixtures (named tiny_tokenizer and tiny_model_dir) into the
module puts them in place of conftest's tiny_tokenizer and tiny_model_dir, for that module's tests and the fixtures
they ask for.

    from ..smollm2_vocab import smollm2_tiny_model_dir, smollm2_tiny_tokenizer  # noqa: F401 (SmolLM2's vocabulary)
"""

import pytest


@pytest.fixture(scope="session", name="tiny_tokenizer")
def smollm2_tiny_tokenizer(smollm2_tokenizer):
    return smollm2_tokenizer


@pytest.fixture(scope="session", name="tiny_model_dir")
def smollm2_tiny_model_dir(smollm2_model_dir):
    return smollm2_model_dir
