"""`tunelab compare` on a label file: a row's `label` is its expected answer, as it is for `tunelab eval`."""

import json

import pytest

from tunelab.errors import DataError
from tunelab.eval.compare import Row, score
from tunelab.eval.metrics import correct
from tunelab.eval.questions import read_questions


def test_label_is_the_expected_answer_and_expected_wins(tmp_path):
    path = tmp_path / "labels.jsonl"
    rows = [
        {"question": "freeze my account", "label": "banking"},
        {"question": "tell me a joke", "label": "small_talk", "expected": "small talk"},
        {"question": "hello?"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    questions = read_questions(path)
    assert [q.expected for q in questions] == ["banking", "small talk", None]
    result = score(
        [
            Row(q.text, q.expected, q.kind, base="no idea", tuned=q.expected or "hi", base_ok=False, tuned_ok=True)
            for q in questions[:2]
        ]
    )
    assert [(q.kind, q.is_label) for q in questions] == [("label", True), ("all", False), ("all", False)]
    assert result["label"] == {"n": 1, "base": 0.0, "tuned": 1.0} and result["all"] == {
        "n": 1,
        "base": 0.0,
        "tuned": 1.0,
    }


def test_an_empty_label_is_named_in_the_error(tmp_path):
    path = tmp_path / "labels.jsonl"
    path.write_text(json.dumps({"question": "freeze my account", "label": " "}) + "\n")
    with pytest.raises(DataError, match=r"labels\.jsonl:1: field 'label'"):
        read_questions(path)


def test_a_label_answer_is_judged_by_the_label_it_gives_not_by_substring():
    labels = ["home", "work", "oos"]
    assert correct("home", "home", labels)
    assert correct("Label: home.", "home", labels)
    assert not correct("homework", "home", labels)  # contains "home" but names no label
    assert not correct("work, not home", "home", labels)  # the earliest label named is "work"
    assert correct("Our office is in Leeds.", "Leeds")  # no labels: a text question
