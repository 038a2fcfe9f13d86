"""The tiny model with SmolLM2's own tokenizer, for a test module that reads that tokenizer beside the model (its chat
template, the characters it drops, its token counts, ids it feeds the model): importing these fixtures (named tiny_tokenizer,
tiny_model_dir and tiny_run_dir) into the module puts them in place of conftest's, for that module's tests and the
fixtures they ask for. A session
fixture of conftest's that is made from tiny_model_dir is made once for the session, whichever module asks first: each
such one the modules read has its own SmolLM2 version here (tiny_run_dir).

    from ..smollm2_vocab import smollm2_tiny_model_dir, smollm2_tiny_run_dir, smollm2_tiny_tokenizer  # noqa: F401
"""

import pytest


@pytest.fixture(scope="session", name="tiny_tokenizer")
def smollm2_tiny_tokenizer(smollm2_tokenizer):
    return smollm2_tokenizer


@pytest.fixture(scope="session", name="tiny_model_dir")
def smollm2_tiny_model_dir(smollm2_model_dir):
    return smollm2_model_dir


@pytest.fixture(scope="session", name="tiny_run_dir")
def smollm2_tiny_run_dir(tmp_path_factory, smollm2_model_dir):
    from .conftest import tiny_run

    return tiny_run(tmp_path_factory.mktemp("tiny-run-smollm2"), smollm2_model_dir)
