"""The token-count bound from a text's size (data/size_bound.py), and a chat far over max_length dropped without being
tokenized, with the report it had when it was tokenized first."""

import json
import re

import pytest

from tunelab.config import DataConfig
from tunelab.data import render
from tunelab.data.checks import render_parity
from tunelab.data.formats import Example
from tunelab.data.loader import build_datasets
from tunelab.data.size_bound import SizeBound, size_bound, surely_longer
from tunelab.data.templates import resolve_template

from .counting import Counting
from .test_render import oasst_conversations

DROPPED = "longer than max_length (64 tokens; data.overlong=drop)"


def test_no_token_of_the_embedded_tokenizer_stands_for_more_bytes_than_the_bound(smollm2_tokenizer):
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    found = size_bound(smollm2_tokenizer)
    bound = found.most
    assert bound == 81  # a newline and 80 spaces
    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    added = {t.content for t in smollm2_tokenizer.added_tokens_decoder.values()}
    ids = list(range(len(smollm2_tokenizer)))
    for token, text in zip(
        smollm2_tokenizer.convert_ids_to_tokens(ids),
        smollm2_tokenizer.batch_decode([[i] for i in ids], skip_special_tokens=False),
    ):
        # a vocabulary token is a string of byte characters, one per byte it stands for; an added token, its content
        size = len(token.encode()) if token in added else len(bytes(byte_of[c] for c in token))
        assert size <= bound, token
        assert len(text) <= size  # decoded: a character is one byte or more, a partial one a single U+FFFD
    # what a token covers in real text, by the tokenizer's own offsets: never more bytes than the bound
    texts = [json.dumps(m, ensure_ascii=False) for m in oasst_conversations(30)]
    texts += ["Grüße, 世界! 🙂 " * 50, "\n" + " " * 300 + "=" * 200 + "#" * 200, "1234567890" * 100]
    # bytes with no token of their own are dropped: control characters (a text of them has no token at all) and the
    # lead bytes F1 and F2 (planes 4 to 11)
    texts += ["\x04" * 10_000, "a\x13b\x1d" * 2000, "\U00050000" * 3000, "\U00090000x" * 3000]
    for text in texts:
        enc = smollm2_tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        assert all(len(text[a:b].encode()) <= bound for a, b in enc["offset_mapping"])
        assert len(enc["input_ids"]) >= found.least_tokens(text)
        assert not surely_longer(text, len(enc["input_ids"]), found)
    assert found.least_tokens("\x04" * 10_000) == 0


def test_tokenizers_that_may_drop_or_fuse_characters_have_no_bound(base_tokenizer):
    """A normalizer, a whitespace-stripping added token or a WordPiece model (one [UNK] for a whole long word) can
    give a text fewer tokens than its size allows: no bound, so every row is tokenized."""
    from tokenizers import AddedToken, Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    assert size_bound(base_tokenizer()) is not None  # byte-level BPE: the bound holds
    normalized = base_tokenizer()
    normalized.backend_tokenizer.normalizer = normalizers.NFC()
    stripping = base_tokenizer()
    stripping.add_tokens([AddedToken("<sep>", rstrip=True)])
    wordpiece = Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    wordpiece.pre_tokenizer = pre_tokenizers.Whitespace()
    for tokenizer in (normalized, stripping, PreTrainedTokenizerFast(tokenizer_object=wordpiece)):
        assert size_bound(tokenizer) is None
        assert not surely_longer("a" * 10**6, 8, size_bound(tokenizer))


def huge_chat_file(tmp_path, size: int):
    """Five chats: short, `size` characters of prose, short, a few hundred tokens, short."""
    short = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}
    prose = "The ferry to Skerry leaves at 9:40, 12:15 and 17:05; bikes ride free. "
    huge = {"messages": [{"role": "user", "content": (prose * (size // len(prose) + 1))[:size]}, short["messages"][1]]}
    long = {"messages": [{"role": "user", "content": prose * 8}, short["messages"][1]]}
    path = tmp_path / "chats.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in (short, huge, short, long, short)))
    return path


def test_a_chat_of_2_mb_is_dropped_untokenized(tmp_path, smollm2_tokenizer):
    """A 2 MB row was tokenized (a minute for 6 MB) before max_length dropped it; now its size alone drops it, and
    the report counts and names it. The row of a few hundred tokens, over max_length but not by size alone, is
    tokenized and dropped as before."""
    path = huge_chat_file(tmp_path, 2_000_000)
    cfg = DataConfig(train=[str(path)], max_length=64, overlong="drop", eval_fraction=0.0)
    counting = Counting(smollm2_tokenizer)
    report = build_datasets(cfg, counting, seed=0).report
    assert max(counting.sizes) < 10_000  # the 2 MB chat never reached the tokenizer; the long one did
    skip = report.skips[DROPPED]
    assert skip.count == 2 and skip.locations == [f"{path}:2", f"{path}:4"]
    assert report.files[str(path)].read == 5 and report.files[str(path)].used == 3
    assert report.lengths.count == 5 and report.lengths.at_least == 1
    assert 2_000_000 / 81 < report.lengths.max < 2_001_000 / 81  # the rendered chat's bytes over 81, rounded up
    assert "1 example over it by size alone, not tokenized whole: counted at the fewest tokens it can have" in (
        report.summary()
    )


def test_the_report_is_the_one_of_the_tokenized_row_but_for_its_length(tmp_path, smollm2_tokenizer, monkeypatch):
    """The same data, every row tokenized (no bound): the same report, counts, names and summary of losses; only
    the untokenized row's length is its least."""
    path = huge_chat_file(tmp_path, 200_000)
    cfg = DataConfig(train=[str(path)], max_length=64, overlong="drop", eval_fraction=0.0)
    report = build_datasets(cfg, smollm2_tokenizer, seed=0).report
    assert report.lengths.at_least == 1
    monkeypatch.setattr(render, "size_bound", lambda tokenizer: None)
    before = build_datasets(cfg, smollm2_tokenizer, seed=0).report
    assert before.lengths.max > report.lengths.max and before.lengths.at_least == 0
    now, then = report.to_dict(), before.to_dict()
    assert {k: v for k, v in now.items() if k != "lengths"} == {k: v for k, v in then.items() if k != "lengths"}
    assert report.losses() == before.losses()
    assert [now["lengths"][k] for k in ("count", "min", "median")] == [
        then["lengths"][k] for k in ("count", "min", "median")
    ]


def test_the_check_compares_prompts_without_tokenizing_a_chat_training_drops_by_size(smollm2_tokenizer):
    """`tunelab check`'s prompt comparison tokenized a huge chat several times (once per answer) although training
    drops it; with data.overlong=drop it compares the next chats instead."""
    short = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    huge = [{"role": "user", "content": "Skerry ferry times. " * 5_000}, {"role": "assistant", "content": "9:40."}]
    examples = [Example(m, None, "d.jsonl", i + 1) for i, m in enumerate([short, huge, short])]
    template = resolve_template("chatml", smollm2_tokenizer)
    counting = Counting(smollm2_tokenizer)
    item = render_parity(examples, counting, template, drop_over=64)
    assert max(counting.sizes) < 1000
    assert item.status == "pass" and item.summary.startswith("2 answers in 2 examples")
    item = render_parity(examples, counting, template)  # truncate keeps it: it is compared
    assert max(counting.sizes) > 10**5 and item.summary.startswith("3 answers in 3 examples")


@pytest.mark.parametrize("limit", [1, 64, 8192])
def test_surely_longer_is_the_byte_bound(limit):
    bound = SizeBound(80, re.compile("[\x04]+"))
    text = "é" * (limit * 40)  # 2 bytes each: exactly limit * 80 bytes, not over
    assert not surely_longer(text, limit, bound) and surely_longer(text + "a", limit, bound)
    assert not surely_longer(text + "\x04" * 100, limit, bound)  # a byte the tokenizer drops counts for nothing
    assert not surely_longer(text + "a", limit, None)
