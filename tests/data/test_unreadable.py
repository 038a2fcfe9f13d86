"""Characters the tokenizer drops (SmolLM2 has no token for the bytes 04, 06, 13, 14, 16, 1D, F1, F2 and no unknown
token): the rows holding them are counted and the first named in the data report; their tokens stay as they were."""

import json

from tunelab.config import DataConfig
from tunelab.data import render
from tunelab.data.loader import build_datasets
from tunelab.data.size_bound import Unreadable, unreadable


def chats_file(tmp_path):
    """Four chats; line 2 holds U+0004 twice, line 4 U+0013 and U+50000 (lead byte F1)."""
    texts = ["Hi", "Hi\x04 there\x04", "Hello", "A\x13b \U00050000"]
    rows = [{"messages": [{"role": "user", "content": t}, {"role": "assistant", "content": "Hello."}]} for t in texts]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_the_embedded_tokenizer_drops_these_bytes_and_they_are_found(smollm2_tokenizer):
    found = unreadable(smollm2_tokenizer)
    assert found.missing == bytes([0x04, 0x06, 0x13, 0x14, 0x16, 0x1D, 0xF1, 0xF2])
    assert smollm2_tokenizer("\x04", add_special_tokens=False)["input_ids"] == []
    assert found.chars_in("a\x04b\x1d\x1d \U00040000\U000bffff\U000c0000 é 世界 🙂") == [
        "\x04",
        "\x1d",
        "\x1d",
        "\U00040000",
        "\U000bffff",
    ]
    assert found.chars_in("Grüße, 世界! 🙂 \x05\x07\t\n") == []


def test_a_missing_continuation_byte_is_found_by_the_bytes():
    found = Unreadable(bytes([0x80]), None)  # "À" is C3 80
    assert found.chars_in("aÀbé") == ["À"] and found.chars_in("abé") == []


def test_rows_with_dropped_characters_are_counted_and_named_tokens_unchanged(tmp_path, smollm2_tokenizer, monkeypatch):
    path = chats_file(tmp_path)
    cfg = DataConfig(train=[str(path)], max_length=64, eval_fraction=0.0)
    data = build_datasets(cfg, smollm2_tokenizer, seed=0)
    unread = data.report.unread
    assert unread.rows == 2 and unread.first == f"{path}:2"
    assert unread.chars == {"U+0004": 2, "U+0013": 1, "U+50000": 1}
    line = (
        f"  2 rows hold characters the tokenizer drops, having no token for them (U+0004 x2, U+0013 x1, U+50000 x1): "
        f"first at {path}:2; they are trained on without them"
    )
    assert line in data.report.summary().splitlines()
    assert data.report.to_dict()["unread"]["rows"] == 2
    monkeypatch.setattr(render, "unreadable", lambda tokenizer: None)
    before = build_datasets(cfg, smollm2_tokenizer, seed=0)
    assert [r.input_ids for r in data.train] == [r.input_ids for r in before.train]
    assert [r.labels for r in data.train] == [r.labels for r in before.train]
    assert before.report.unread.rows == 0


def test_a_text_of_dropped_characters_only_is_named(tmp_path, smollm2_tokenizer):
    path = tmp_path / "notes.txt"
    path.write_text("\x04" * 5)
    cfg = DataConfig(train=[str(path)], max_length=64, eval_fraction=0.0)
    report = build_datasets(cfg, smollm2_tokenizer, seed=0).report
    assert report.unread.rows == 1 and report.unread.chars == {"U+0004": 5}
    assert f"1 row holds characters the tokenizer drops, having no token for them (U+0004 x5): first at {path}:1" in (
        report.summary()
    )


def test_a_tokenizer_with_a_token_for_every_byte_reports_nothing(tmp_path, base_tokenizer):
    tokenizer = base_tokenizer()
    assert unreadable(tokenizer) is None
    report = build_datasets(
        DataConfig(train=[str(chats_file(tmp_path))], max_length=1024, eval_fraction=0.0), tokenizer, seed=0
    ).report
    assert report.unread.rows == 0 and "tokenizer drops" not in report.summary()


def test_eval_rows_holding_them_are_said_to_be_evaluated_not_trained_on(tmp_path, smollm2_tokenizer):
    """The line said 'they are trained on without them' of rows of data.eval too, which are only evaluated."""
    held = chats_file(tmp_path)
    train = tmp_path / "plain.jsonl"
    train.write_text(held.read_text().replace("\\u0004", "").replace("\\u0013", "").replace("\\ud900\\udc00", ""))
    cfg = DataConfig(train=[str(train)], eval=str(held), max_length=64)
    unread = build_datasets(cfg, smollm2_tokenizer, seed=0).report.unread
    assert (unread.rows, unread.held) == (2, 2)
    assert unread.line().endswith(f"first at {held}:2; they are evaluated without them")
    both = build_datasets(DataConfig(train=[str(held)], eval=str(held), max_length=64), smollm2_tokenizer, 0)
    assert (both.report.unread.rows, both.report.unread.held) == (4, 2)
    assert both.report.unread.line().endswith(
        f"first at {held}:2; they are trained on without them (the 2 eval rows among them are evaluated without them)"
    )
    assert both.report.unread.line() in both.report.summary().splitlines()


def test_the_federation_servers_eval_rows_holding_them_are_said_to_be_evaluated(tmp_path, smollm2_tokenizer):
    """The server reads its eval set (data.eval) as training rows, and said they were trained on without them."""
    from tunelab.config import load_config
    from tunelab.federated.local import server_eval_datasets

    held = chats_file(tmp_path)
    cfg = load_config(None, {"data.train": [str(held)], "data.eval": str(held), "data.max_length": 64}).config
    report = server_eval_datasets(cfg, smollm2_tokenizer).report
    assert (report.unread.rows, report.unread.held) == (2, 2)
    assert report.to_dict()["unread"]["held"] == 2
    assert report.unread.line().endswith(f"first at {held}:2; they are evaluated without them")
