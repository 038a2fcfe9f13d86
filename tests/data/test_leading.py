"""The first tokens of a huge text read from its head alone (data/leading.py): the same ids and answer marks as the
whole text's, over many texts and three word regexes; and data.overlong=truncate keeping a huge chat's first
max_length tokens without tokenizing it whole, with the rows and report of the whole-text path but for its length."""

import json
import random

import pytest

from tunelab.config import DataConfig
from tunelab.data import leading as leading_module
from tunelab.data.encode import encode
from tunelab.data.formats import Example
from tunelab.data.leading import LLAMA3, QWEN2, cuttable, leading
from tunelab.data.render import render_examples
from tunelab.data.report import DataReport
from tunelab.data.templates import resolve_template

from .counting import Counting
from .test_render import oasst_conversations

ALPHABET = list("abcXYZ019 '.,!?-_\n\t\r") + [
    "  ",
    "   \n",
    "é",
    "ß",
    "世界",
    "🙂",
    "\u00a0",
    "\u3000",
    "\x1c",
    "'s",
    "'ll",
]


def _random_texts(n: int, size: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(ALPHABET) for _ in range(size)) for _ in range(n)]


def _texts() -> list[str]:
    """Prose, chats as JSON, unicode, long words, whitespace runs, digits and contractions, each a few thousand
    characters, so that the head is a small part of it."""
    prose = [json.dumps(m, ensure_ascii=False) for m in oasst_conversations(12)]
    made = [
        "Grüße, 世界! 🙂 don't we'll " * 200,
        ("word " + "x" * 300 + " ") * 20,
        ("a" + " " * 40 + "\n\n\t b ") * 150,
        "1234567890 3.14159, 2,718 " * 200,
        "I'm sure they'll say it's John's; I'VE SEEN 'EM. " * 100,
        "Ελληνικά και русский текст, मिश्रित लिपि. " * 120,
        "end.\r\n\r\n  next line ,  ; x" * 200,
    ]
    return [t for t in prose if len(t) > 2000] + made + _random_texts(40, 3000)


def _variant(tokenizer, pattern: str):
    """The embedded tokenizer with a Split of `pattern` (Llama 3's or Qwen2's word regex) before a ByteLevel without
    its own regex, as those tokenizers are built."""
    from tokenizers import Regex, Tokenizer, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    return PreTrainedTokenizerFast(tokenizer_object=backend)


@pytest.fixture(scope="module")
def tokenizers(smollm2_tokenizer):
    return {
        "smollm2": smollm2_tokenizer,
        "llama3": _variant(smollm2_tokenizer, LLAMA3),
        "qwen2": _variant(smollm2_tokenizer, QWEN2),
    }


@pytest.mark.parametrize("name", ["smollm2", "llama3", "qwen2"])
def test_the_heads_tokens_are_the_whole_texts_first_tokens(name, tokenizers):
    tokenizer = tokenizers[name]
    assert cuttable(tokenizer)
    rng, checked = random.Random(1), 0
    for i, text in enumerate(_texts()):
        # answer spans: none, one from inside the text to its end, and several, some edges inside words
        cuts = sorted(rng.sample(range(len(text)), 6))
        for spans in ([], [(cuts[0], len(text))], [(cuts[0], cuts[1]), (cuts[2], cuts[3]), (cuts[4], len(text))]):
            plain = i % 2 == 0
            [(ids, inside)] = encode(tokenizer, [text], [spans], plain)
            for count in (1, 7, 40, 150):
                found = leading(tokenizer, text, count, spans, plain)
                if found is None:
                    continue
                head_ids, head_inside, cut = found
                assert len(head_ids) >= count and cut < len(text)
                assert head_ids == ids[: len(head_ids)], (name, i, count)
                assert head_inside == inside[: len(head_ids)], (name, i, count)
                checked += 1
    assert checked > 300


def test_no_head_without_a_break_or_for_an_unproven_tokenizer(smollm2_tokenizer, base_tokenizer):
    """One giant word has no break to cut at; a tokenizer whose word regex is not known, or with an added token
    holding a space (matched across a break), is not cut: their texts are tokenized whole, as before."""
    from tokenizers import AddedToken, Regex, Tokenizer, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    assert leading(smollm2_tokenizer, "x" * 100_000, 64) is None
    assert leading(smollm2_tokenizer, "a b " + "é" * 100_000, 64) is None  # no break far enough in
    assert cuttable(base_tokenizer())
    spaced = base_tokenizer()  # read once per tokenizer: a fresh one, its added token given before it is read
    spaced.add_tokens([AddedToken("new line", special=False)])
    backend = Tokenizer.from_str(smollm2_tokenizer.backend_tokenizer.to_str())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r"\w+ ?"), behavior="isolated"), pre_tokenizers.ByteLevel(use_regex=False)]
    )
    for tokenizer in (spaced, PreTrainedTokenizerFast(tokenizer_object=backend)):
        assert not cuttable(tokenizer) and leading(tokenizer, "some words " * 10_000, 8) is None


PROSE = "The ferry to Skerry leaves at 9:40; bikes ride free. "


def _chats() -> list[Example]:
    """Chats with a huge answer, a huge prompt, a huge middle answer of several turns, and short ones."""
    huge = PROSE * 40_000  # 2 MB
    chats = [
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": huge}],
        [{"role": "user", "content": huge}, {"role": "assistant", "content": "Yes."}],
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "When?"},
            {"role": "assistant", "content": " 9:40." + huge[:300_000]},
            {"role": "user", "content": "And then?"},
            {"role": "assistant", "content": "12:15."},
        ],
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}],
    ]
    return [Example(m, None, "d.jsonl", i + 1) for i, m in enumerate(chats)]


@pytest.mark.parametrize("train_on_prompt", [False, True])
def test_truncate_reads_a_huge_chat_from_its_head_with_the_rows_of_the_whole(
    train_on_prompt, smollm2_tokenizer, monkeypatch
):
    """data.overlong=truncate keeps a chat's first max_length tokens: a 2 MB chat is tokenized only to a head of a
    few thousand characters, and the rows (ids and labels), skips, truncations and notes are those of tokenizing it
    whole; its length is counted at the fewest tokens it can have, a lower bound the report says."""
    template = resolve_template("chatml", smollm2_tokenizer)
    cfg = DataConfig(max_length=64, overlong="truncate", train_on_prompt=train_on_prompt)
    counting, report = Counting(smollm2_tokenizer), DataReport()
    rows = render_examples(_chats(), counting, template, cfg, report)
    assert max(counting.sizes) < 10_000  # no chat was tokenized whole
    monkeypatch.setattr(leading_module, "cuttable", lambda tokenizer: False)  # every chat tokenized whole
    whole_counting, whole = Counting(smollm2_tokenizer), DataReport()
    expected = render_examples(_chats(), whole_counting, template, cfg, whole)
    assert max(whole_counting.sizes) > 2_000_000
    assert [(r.input_ids, r.labels, r.line) for r in rows] == [(r.input_ids, r.labels, r.line) for r in expected]
    now, then = report.to_dict(), whole.to_dict()
    assert {k: v for k, v in now.items() if k != "lengths"} == {k: v for k, v in then.items() if k != "lengths"}
    assert report.total_truncated == (3 if train_on_prompt else 2)  # a prompt filling max_length leaves no answer
    assert report.lengths.at_least == 3 and whole.lengths.at_least == 0
    assert report.lengths.count == whole.lengths.count and report.lengths.min == whole.lengths.min
    assert 2_000_000 / 81 < report.lengths.max <= whole.lengths.max
    assert "3 examples over it by size alone, not tokenized whole: counted at the fewest tokens they can have" in (
        report.summary()
    )
