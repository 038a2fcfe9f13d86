"""Checks the three small example sets made for the defaults (examples/lamp_support, backup_cli, ferry_chat): each
config names only the model and the data, the pipeline reads each file in its format, and every held-out question is
truly held out (not a training question) and answerable (its key is taught in a training answer, and is not
given away by the question or matched by the refusal)."""

import json
import re
from collections import Counter
from pathlib import Path

import pytest
import yaml

from tunelab.config import load_config
from tunelab.data.formats import to_examples
from tunelab.data.report import DataReport
from tunelab.data.sources import read_records

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SETS = {  # folder: (training file, detected format, refusal sentence or None, training rows)
    "lamp_support": ("train.csv", "prompt_completion", "Sorry, I can only help with Lumora lamps and orders.", 120),
    "backup_cli": ("train.json", "alpaca", None, 64),
    "ferry_chat": ("train.jsonl", "messages", "I can only help with Skerry Line sailings and tickets.", 65),
}


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def _examples(name: str):
    file, fmt, _, _ = SETS[name]
    report = DataReport(max_length=512)
    examples = to_examples(read_records([str(EXAMPLES / name / file)]), "auto", {}, None, report)
    return examples, report


def _heldout(name: str) -> list[dict]:
    lines = (EXAMPLES / name / "heldout.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def _last_question(row: dict) -> str:
    return row["messages"][-1]["content"] if "messages" in row else row["question"]


@pytest.mark.parametrize("name", SETS)
def test_config_names_only_the_model_and_the_data(name):
    raw = yaml.safe_load((EXAMPLES / name / "config.yaml").read_text())
    assert raw == {
        "output_dir": f"runs/{name}",
        "model": {"name": "smollm2-135m-instruct"},
        "data": {"train": [SETS[name][0]]},
    }
    resolved = load_config(EXAMPLES / name / "config.yaml")
    assert all(origin == "default" for option, origin in resolved.origins.items() if option.startswith("train."))
    assert (EXAMPLES / name / "README.md").is_file()


@pytest.mark.parametrize("name", SETS)
def test_the_pipeline_reads_every_row_in_its_format(name):
    examples, report = _examples(name)
    file, fmt, _, rows = SETS[name]
    assert report.formats == {str(EXAMPLES / name / file): fmt}
    assert len(examples) == rows and not report.skips


@pytest.mark.parametrize("name", SETS)
def test_heldout_is_held_out_and_answerable(name):
    examples, _ = _examples(name)
    refusal = SETS[name][2]
    # The user text as training renders it: an alpaca input follows its instruction after a blank line.
    asked = {_norm(m["content"]) for ex in examples for m in ex.messages if m["role"] == "user"}
    answers = [m["content"] for ex in examples for m in ex.messages if m["role"] == "assistant"]
    heldout = _heldout(name)
    kinds = Counter(r["kind"] for r in heldout)
    assert set(kinds) <= {"fact", "off_topic"} and kinds["fact"] >= 20
    assert (kinds["off_topic"] >= 10) == (refusal is not None)
    questions = Counter(_norm(_last_question(r)) for r in heldout)
    assert max(questions.values()) == 1, questions.most_common(2)
    for row in heldout:
        question = _last_question(row)
        assert _norm(question) not in asked, f"held-out question also in train: {question!r}"
        if "messages" in row:
            assert [m["role"] for m in row["messages"]][-1] == "user"
        key = row["expected"]
        if row["kind"] == "off_topic":
            assert key == refusal
            continue
        assert key.lower() not in question.lower(), f"key {key!r} is given away by {question!r}"
        if not any(key.lower() in a.lower() for a in answers):
            # A command applied to a new input (backup_cli): the command is taught, the argument is the row's input.
            command, argument = key.rsplit(" ", 1)
            assert question.endswith("\n\n" + argument), f"key {key!r} is neither taught nor the row's input"
            assert sum(f"`{command} " in a for a in answers) >= 4, f"{command!r} is taught fewer than 4 times"
        if refusal:
            assert key.lower() not in refusal.lower()


@pytest.mark.parametrize("name", ["lamp_support", "ferry_chat"])
def test_one_refusal_sentence_and_every_fact_checked(name):
    examples, _ = _examples(name)
    refusal = SETS[name][2]
    answers = {m["content"] for ex in examples for m in ex.messages if m["role"] == "assistant"}
    for answer in answers:  # anything that looks like a refusal is the one refusal
        if "only help" in answer.lower() or answer.lower().startswith("sorry"):
            assert answer == refusal
    keys = [r["expected"].lower() for r in _heldout(name) if r["kind"] == "fact"]
    unchecked = [a for a in answers - {refusal} if not any(k in a.lower() for k in keys)]
    assert not unchecked, f"facts with no held-out question: {unchecked}"
    assert refusal in (EXAMPLES / name / "README.md").read_text(encoding="utf-8")


def test_ferry_chat_readme_counts_what_the_file_holds():
    """The file table of examples/ferry_chat/README.md gives the numbers the file has: a reader weighing the set (how
    many refusals it teaches, how many ways a fact is asked) reads them there."""
    examples, _ = _examples("ferry_chat")
    refusal = SETS["ferry_chat"][2]
    answers = [m["content"] for ex in examples for m in ex.messages if m["role"] == "assistant"]
    asked = {
        (m["content"], a["content"])
        for ex in examples
        for m, a in zip(ex.messages, ex.messages[1:])
        if (m["role"], a["role"]) == ("user", "assistant")
    }
    phrasings = Counter(answer for question, answer in asked if answer != refusal)  # distinct questions a fact
    readme = (EXAMPLES / "ferry_chat" / "README.md").read_text(encoding="utf-8")
    row = next(line for line in readme.splitlines() if line.startswith("| `train.jsonl` |"))
    facts, ways, off_topic, conversations, turns = map(
        int,
        re.search(
            r"(\d+) facts asked (\d+) ways each[^|]*? and (\d+) off-topic questions.*\| (\d+) conversations, (\d+) user "
            r"turns",
            row,
        ).groups(),
    )
    assert (facts, ways) == (len(phrasings), min(phrasings.values())) == (len(phrasings), max(phrasings.values()))
    assert off_topic == answers.count(refusal)
    assert (conversations, turns) == (len(examples), len(answers))
