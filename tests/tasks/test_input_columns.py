"""Rows of classify, reward and dpo that give more than one input column: which one is read, and how a user picks."""

import json

import pytest

from tunelab.config import load_config
from tunelab.errors import DataError
from tunelab.tasks.classify import CLASSIFY
from tunelab.tasks.preference_data import build_preferences
from tunelab.tasks.reward import REWARD

BUILD = {"dpo": build_preferences, "reward": REWARD.build_data, "classify": CLASSIFY.build_data}


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _build(task, tokenizer, train, **over):
    cfg = load_config(None, {"task": task, "data.train": [train], "data.max_length": 128} | over).config
    return BUILD[task](cfg, tokenizer, 0)


def _rows(task: str, first: str, second: str) -> list[dict]:
    """Rows whose input is given twice, in columns `first` and `second`, with different texts."""
    rows = []
    for i in range(6):
        row = {first: f"Passage {i} about ferries.", second: f"Is ferry {i} late?"}
        if task == "classify":
            rows.append(row | {"label": "ab"[i % 2]})
        else:
            rows.append(row | {"chosen": f"Yes, {i} minutes.", "rejected": "No idea."})
    return rows


@pytest.mark.parametrize(
    ("task", "first", "second", "field"),
    [("classify", "text", "question", "prompt"), ("dpo", "prompt", "instruction", "instruction"),
     ("reward", "prompt", "question", "prompt")],
)  # fmt: skip
def test_a_second_input_column_is_noted_with_the_one_read_and_the_mapping_that_picks(
    task, first, second, field, smollm2_tokenizer, tmp_path
):
    """A classify row with `text` and `question` read the text and left the question out without a word (both are
    input fields, so no note of unread columns named it); dpo and reward prompts alike."""
    path = _write(tmp_path / "t.jsonl", _rows(task, first, second))
    notes = _build(task, smollm2_tokenizer, path).report.notes
    (note,) = [n for n in notes if "more than one input" in n]
    assert note.startswith(f"{path}: 6 rows give more than one input (e.g. {path}:1): task {task} reads one a row")
    assert f"here column '{first}', and leaves column '{second}' out" in note
    assert f"(e.g. {{{field}: {second}}}" in note and "join them with a data.transform (e.g. return " in note
    picked = _build(task, smollm2_tokenizer, path, **{"data.fields": {field: second}})
    assert not [n for n in picked.report.notes if "more than one input" in n]
    joined = _hinted(note.split("(e.g. return ")[1], tmp_path)  # the note's transform, run as data.transform
    data = _build(task, smollm2_tokenizer, path, **{"data.transform": joined})
    assert not [n for n in data.report.notes if "more than one input" in n or "no field reads" in n]
    first = data.train[0]
    shown = smollm2_tokenizer.decode(first.input_ids if task == "classify" else first.chosen_ids)
    assert "Passage 0 about ferries.\nIs ferry 0 late?" in shown


def _hinted(advice: str, tmp_path) -> str:
    """The data.transform of a hint's `return {...}` expression (the text from the brace on), as a file.py:function."""
    expression = advice[: advice.rindex("}") + 1]
    (tmp_path / "joined.py").write_text(f"def join(row):\n    return {expression}\n")
    return f"{tmp_path / 'joined.py'}:join"


@pytest.mark.parametrize(("task", "other", "field"), [("classify", "text", "prompt"), ("reward", "prompt", "question")])
def test_a_mapped_input_field_is_read_before_an_unmapped_one_the_row_also_has(
    task, other, field, smollm2_tokenizer, tmp_path
):
    """{prompt: q} over classify rows that also have a `text` column (or {question: q} over reward rows with a
    `prompt`) read that other column, since its field is tried first under its own name: the mapping was passed over
    without a word."""
    path = _write(tmp_path / "t.jsonl", _rows(task, other, "q"))
    data = _build(task, smollm2_tokenizer, path, **{"data.fields": {field: "q"}})
    first = data.train[0]
    ids = first.input_ids if task == "classify" else first.chosen_ids
    shown = smollm2_tokenizer.decode(ids)
    assert "<|im_start|>user\nIs ferry" in shown and "Passage" not in shown


def test_a_row_of_two_input_columns_and_no_input_field_is_told_the_transform_that_joins_them(
    smollm2_tokenizer, tmp_path
):
    """GLUE's pairs (`sentence1`, `sentence2`) were told to map {text: sentence1}, leaving the other half out; then to
    join the columns in the file, since a classify run took no data.transform. The transform the error tells reads
    both."""
    rows = [{"sentence1": f"A man plays {i}.", "sentence2": "Someone plays.", "label": i % 2} for i in range(4)]
    with pytest.raises(DataError, match=r"t\.jsonl:1: .*\{text: sentence1\}\. The row has 2 input columns "
                       r"\(sentence1, sentence2\) and one is read a row: .*join them with a data\.transform"
                       ) as told:  # fmt: skip
        _build("classify", smollm2_tokenizer, _write(tmp_path / "t.jsonl", rows))
    joined = _hinted(str(told.value).split("`return ")[1], tmp_path)
    data = _build("classify", smollm2_tokenizer, str(tmp_path / "t.jsonl"), **{"data.transform": joined})
    assert smollm2_tokenizer.decode(data.train[0].input_ids).startswith("A man plays 0.\nSomeone plays.")
    assert not [n for n in data.report.notes if "no field reads" in n]
    rows = [{"sentence": f"A man plays {i}.", "label": i % 2} for i in range(4)]
    with pytest.raises(DataError) as one:
        _build("classify", smollm2_tokenizer, _write(tmp_path / "t.jsonl", rows))
    assert "input columns" not in str(one.value)
