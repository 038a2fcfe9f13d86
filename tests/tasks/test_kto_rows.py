"""What loss kto reads as a row, beside what dpo's pairs read: plain prompt and completion texts on a tokenizer without
a chat template are rendered as dpo renders a prompt with chosen and rejected texts; a prompt given as messages or
conversations is read under any case and through data.fields as dpo reads it; a whole text and a preference pair are
refused with the reason."""

import json

import pytest

from tunelab.config import load_config
from tunelab.errors import DataError
from tunelab.tasks.kto_data import build_feedback
from tunelab.tasks.preference_data import build_preferences


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _build(path, loss="kto", tokenizer=None, **extra):
    options = {"task": "dpo", "dpo.loss": loss, "model.name": "unused", "data.train": [path], "data.eval_fraction": 0}
    cfg = load_config(None, options | extra).config
    return (build_feedback if loss == "kto" else build_preferences)(cfg, tokenizer, 0)


@pytest.fixture(scope="module")
def plain(base_tokenizer):
    return base_tokenizer()  # a base model's: no chat template


def test_plain_text_rows_render_as_dpos_on_a_tokenizer_without_a_chat_template(plain, tmp_path):
    assert not plain.chat_template
    kto_rows = [{"prompt": f"Question {i}?", "completion": f"Answer {i}.", "label": i % 2 == 0} for i in range(4)]
    dpo_rows = [{"prompt": f"Question {i}?", "chosen": f"Answer {i}.", "rejected": "No."} for i in range(4)]
    kto = _build(_write(tmp_path / "kto.jsonl", kto_rows), tokenizer=plain)
    dpo = _build(_write(tmp_path / "dpo.jsonl", dpo_rows), "sigmoid", tokenizer=plain)
    assert kto.template.name == dpo.template.name == "chatml"
    for k, d in zip(kto.train, dpo.train):
        assert (k.chosen_ids, k.chosen_labels) == (d.chosen_ids, d.chosen_labels)


@pytest.mark.parametrize("column, fields", [("Messages", {}), ("conversations", {}), ("chat", {"messages": "chat"})])
def test_a_prompt_of_messages_is_read_as_dpo_reads_it(plain, tmp_path, column, fields):
    """A `Messages` column (any case), `conversations`, or a column data.fields maps to messages: the prompt's chat,
    as dpo reads it (before, data.fields refused `messages` for kto, and `Messages` was not found)."""

    def rows(key, prompt):
        return [{key: prompt(i), "completion": f"Answer {i}.", "label": i % 2 == 0} for i in range(4)]

    messages = rows(column, lambda i: [{"role": "user", "content": f"Question {i}?"}])
    extra = {"data.fields": fields} if fields else {}
    data = _build(_write(tmp_path / "rows.jsonl", messages), tokenizer=plain, **extra)
    want = _build(_write(tmp_path / "want.jsonl", rows("prompt", lambda i: f"Question {i}?")), tokenizer=plain)
    assert [r.chosen_ids for r in data.train] == [r.chosen_ids for r in want.train]
    assert not any("does not read" in note for note in data.report.notes)  # not noted as a column left unread


def test_a_whole_text_and_a_preference_pair_are_refused_with_the_reason(plain, tmp_path):
    text = _write(tmp_path / "text.jsonl", [{"text": "Q? A.", "label": True}] * 2)
    with pytest.raises(
        DataError, match=r"text\.jsonl:1: no prompt.*apart from its completion \(a whole text has none\)"
    ):
        _build(text, tokenizer=plain)
    pairs = _write(tmp_path / "pairs.jsonl", [{"prompt": "Q?", "Chosen": "A.", "rejected": "No."}] * 2)
    with pytest.raises(DataError, match=r"pairs\.jsonl:1: field 'completion' is missing.*preference pair.*dpo\.loss"):
        _build(pairs, tokenizer=plain)
    whole = _write(tmp_path / "whole.jsonl", [{"chosen": "Q? A.", "rejected": "Q? No."}] * 2)
    with pytest.raises(DataError, match=r"whole\.jsonl:1: no prompt.*preference pair.*labelled true"):
        _build(whole, tokenizer=plain)
