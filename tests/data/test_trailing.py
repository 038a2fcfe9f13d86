"""The last tokens of a huge text read from a tail alone, and its first and last tokens from a head and a tail
(data/leading.py `trailing`, `ends`): the same ids as the whole text's, over many texts (unicode, whitespace runs,
cuts inside words, special-token text) and three word regexes; a multi-megabyte text is read in a fraction of it."""

import random

import pytest

from tunelab.data.encode import encode
from tunelab.data.leading import ends, trailing

from .counting import Counting
from .test_leading import _random_texts, _texts, tokenizers  # noqa: F401 (a fixture)

SPECIAL = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def _all_texts() -> list[str]:
    """`_texts`, some of them ending inside a long word or a whitespace run, and chats rendered with markers."""
    texts = _texts()
    rng = random.Random(3)
    return (
        texts
        + [t + "x" * rng.randrange(1, 400) for t in texts[:10]]
        + [t + " \n \t" * rng.randrange(1, 40) for t in texts[10:20]]
        + [(SPECIAL + t[:500] + "<|im_end|>\n") * 6 for t in texts[:8]]
        + _random_texts(10, 8000, seed=7)
    )


@pytest.mark.parametrize("name", ["smollm2", "llama3", "qwen2"])
def test_the_tails_tokens_are_the_whole_texts_last_tokens(name, tokenizers):  # noqa: F811
    tokenizer, checked = tokenizers[name], 0
    for i, text in enumerate(_all_texts()):
        plain = i % 2 == 0
        [(ids, _)] = encode(tokenizer, [text], [[]], plain)
        for count in (1, 7, 40, 150):
            found = trailing(tokenizer, text, count, plain)
            if found is not None:
                tail, cut = found
                assert len(tail) >= count and 2 * cut >= len(text) and text[cut] == " "
                assert tail == ids[len(ids) - len(tail) :], (name, i, count)
                checked += 1
            both = ends(tokenizer, text, count, count, plain)
            if both is not None:
                head, tail, end, start = both
                [(inner, _)] = encode(tokenizer, [text[end:start]], [[]], plain)
                assert head + inner + tail == ids, (name, i, count)
                checked += 1
    assert checked > 400


def test_no_tail_without_a_break_far_enough_back(smollm2_tokenizer):
    """A text ending in one giant word, or with no break in its second half, is tokenized whole (None)."""
    assert trailing(smollm2_tokenizer, "x" * 100_000, 64) is None
    assert trailing(smollm2_tokenizer, "a b " + "é" * 100_000, 64) is None
    assert ends(smollm2_tokenizer, "é" * 100_000 + " a b", 64, 64) is None
    assert ends(smollm2_tokenizer, "a b " * 10, 64, 64) is None  # too short to have a middle


def test_a_huge_texts_ends_are_read_without_tokenizing_it(smollm2_tokenizer):
    """A 6 MB text's first and last 64 tokens come from a few thousand characters of it."""
    text = "Grüße, 世界! The ferry to Skerry leaves at 9:40; bikes ride free. " * 100_000
    counting = Counting(smollm2_tokenizer)
    head, tail, end, start = ends(counting, text, 65, 64, plain=True)
    assert len(text) > 6_000_000 and max(counting.sizes) < 10_000 and start - end > len(text) - 10_000
    [(ids, _)] = encode(smollm2_tokenizer, [text[:20_000]], [[]], True)
    assert head == ids[: len(head)] and len(head) >= 65 and len(tail) >= 64
    [(ids, _)] = encode(smollm2_tokenizer, [text[text.index(" The", len(text) - 20_000) :]], [[]], True)
    assert tail == ids[len(ids) - len(tail) :]
