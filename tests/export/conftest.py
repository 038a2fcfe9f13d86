"""Fixtures of the export tests: a small real byte-level BPE tokenizer (GGUF readers load it fast)."""

import json

import pytest
from transformers import AutoTokenizer

SMALL_VOCAB = 2048


@pytest.fixture(scope="session")
def small_tokenizer(smollm2_tokenizer, tmp_path_factory):
    """SmolLM2's tokenizer cut to its first 2048 tokens and the merges among them: still a real byte-level BPE
    with the same special tokens and chat template, but GGUF readers (transformers parses every token string in
    Python) load it in a tenth of the time."""
    path = tmp_path_factory.mktemp("small-tokenizer")
    smollm2_tokenizer.save_pretrained(path)
    spec = json.loads((path / "tokenizer.json").read_text())
    vocab = {t: i for t, i in spec["model"]["vocab"].items() if i < SMALL_VOCAB}
    spec["model"]["vocab"] = vocab
    spec["model"]["merges"] = [
        m for m in spec["model"]["merges"] if m[0] in vocab and m[1] in vocab and m[0] + m[1] in vocab
    ]
    (path / "tokenizer.json").write_text(json.dumps(spec))
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert len(tokenizer) == SMALL_VOCAB
    return tokenizer
