"""`tunelab compare` on a label file: a row's `label` is its expected answer, as it is for `tunelab eval`."""

import json

import pytest

from tunelab.errors import DataError
from tunelab.infer.compare import Question, Row, answers_correctly, read_questions, score


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
    assert result["all"] == {"n": 2, "base": 0.0, "tuned": 1.0}


def test_an_empty_label_is_named_in_the_error(tmp_path):
    path = tmp_path / "labels.jsonl"
    path.write_text(json.dumps({"question": "freeze my account", "label": " "}) + "\n")
    with pytest.raises(DataError, match=r"line 1: field 'label'"):
        read_questions(path)


def test_a_label_answer_is_judged_by_the_label_it_gives_not_by_substring():
    labels = ["home", "work", "oos"]
    home = Question("turn on the lights", "home", is_label=True)
    assert answers_correctly(home, "home", labels)
    assert answers_correctly(home, "Label: home.", labels)
    assert not answers_correctly(home, "homework", labels)  # contains "home" but names no label
    assert not answers_correctly(home, "work, not home", labels)  # the earliest label named is "work"
    fact = Question("where is the office?", "Leeds")
    assert answers_correctly(fact, "Our office is in Leeds.", labels)
