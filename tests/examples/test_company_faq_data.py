"""Checks the hand-written data of examples/company_faq: shape, sizes, one refusal sentence, and a held-out set
that is truly held out (no question shared with train) and answerable (every key string is taught in train)."""

import json
import re
from collections import Counter
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "company_faq"
REFUSAL = "I'm sorry, I can only answer questions about Tallowmere Robotics."


def _read_jsonl(name: str) -> list[dict]:
    rows = []
    for number, line in enumerate((EXAMPLE / name).read_text(encoding="utf-8").splitlines(), start=1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            pytest.fail(f"{name}:{number}: not JSON ({err})")
        assert isinstance(row, dict), f"{name}:{number}: a line must be a JSON object"
        rows.append(row)
    return rows


def _norm(text: str) -> str:
    """Lower-cased, punctuation dropped, whitespace collapsed: two questions equal under this are the same question."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


@pytest.fixture(scope="module")
def train() -> list[dict]:
    return _read_jsonl("train.jsonl")


@pytest.fixture(scope="module")
def heldout() -> list[dict]:
    return _read_jsonl("heldout.jsonl")


def _facts(train: list[dict]) -> list[dict]:
    return [r for r in train if r["answer"] != REFUSAL]


def test_fields_present_and_non_empty(train, heldout):
    for number, row in enumerate(train, start=1):
        assert set(row) == {"question", "answer"}, f"train.jsonl:{number}: fields {sorted(row)}"
        assert all(isinstance(v, str) and v.strip() for v in row.values()), f"train.jsonl:{number}: empty field"
    for number, row in enumerate(heldout, start=1):
        assert set(row) == {"question", "expected", "kind"}, f"heldout.jsonl:{number}: fields {sorted(row)}"
        assert all(isinstance(v, str) and v.strip() for v in row.values()), f"heldout.jsonl:{number}: empty field"
        assert row["kind"] in {"fact", "off_topic"}, f"heldout.jsonl:{number}: kind {row['kind']!r}"


def test_train_sizes(train):
    facts = _facts(train)
    per_answer = Counter(r["answer"] for r in facts)
    assert len(facts) >= 70
    assert len(per_answer) >= 18, "fewer than 18 distinct facts"
    # Every fact is asked 4-6 ways and always answered with one sentence, so each answer repeats 4-6 times.
    assert all(4 <= n <= 6 for n in per_answer.values()), per_answer
    assert len(train) - len(facts) >= 70, "fewer than 70 refusal lines"


def test_one_refusal_sentence(train, heldout):
    # A near-miss ("Sorry, I can only...") would teach a second refusal; anything that looks like one must be exact.
    for row in train:
        if "sorry" in row["answer"].lower() or "only answer" in row["answer"].lower():
            assert row["answer"] == REFUSAL, row
    assert {r["expected"] for r in heldout if r["kind"] == "off_topic"} == {REFUSAL}
    assert REFUSAL in (EXAMPLE / "README.md").read_text(encoding="utf-8")


def test_fact_answers_are_one_short_sentence(train):
    for answer in {r["answer"] for r in _facts(train)}:
        assert len(answer.split()) < 20, answer
        assert answer.rstrip('"').endswith(".") and answer.count(". ") == 0, answer


def test_no_repeated_or_leaked_questions(train, heldout):
    train_questions = Counter(_norm(r["question"]) for r in train)
    assert max(train_questions.values()) == 1, train_questions.most_common(3)
    heldout_questions = Counter(_norm(r["question"]) for r in heldout)
    assert max(heldout_questions.values()) == 1, heldout_questions.most_common(3)
    leaked = [r["question"] for r in heldout if _norm(r["question"]) in train_questions]
    assert not leaked, f"held-out questions also in train: {leaked}"


def test_heldout_keys_are_taught_and_not_given_away(train, heldout):
    fact_answers = [r["answer"].lower() for r in _facts(train)]
    facts_md = (EXAMPLE / "facts.md").read_text(encoding="utf-8")
    for row in (r for r in heldout if r["kind"] == "fact"):
        key = row["expected"].lower()
        assert any(key in a for a in fact_answers), f"key {row['expected']!r} is in no train answer"
        assert key not in REFUSAL.lower(), f"key {row['expected']!r} would be matched by the refusal"
        # A key inside the question could be scored right by a model that only echoes the question.
        assert key not in row["question"].lower(), row
        assert f"`{row['expected']}`" in facts_md, f"facts.md does not list key {row['expected']!r}"


def test_heldout_sizes_and_every_fact_checked(train, heldout):
    kinds = Counter(r["kind"] for r in heldout)
    assert kinds["fact"] >= 20 and kinds["off_topic"] >= 20, kinds
    keys = [r["expected"].lower() for r in heldout if r["kind"] == "fact"]
    unchecked = [a for a in {r["answer"] for r in _facts(train)} if not any(k in a.lower() for k in keys)]
    assert not unchecked, f"facts with no held-out question: {unchecked}"


def test_train_is_shuffled(train):
    # Facts and refusals interleave: no long run of one kind (a block of 20 refusals would bias late batches).
    kinds = [r["answer"] == REFUSAL for r in train]
    longest = run = 1
    for before, after in zip(kinds, kinds[1:]):
        run = run + 1 if before == after else 1
        longest = max(longest, run)
    assert longest < 10, f"{longest} lines of one kind in a row"
