"""examples/concise_dpo: make_pairs.py rebuilds the shipped pairs.jsonl and heldout.jsonl byte for byte, every pair
prefers a one-sentence answer within the word limit to a longer answer to the same prompt, and no held-out question
is in a pair."""

import json
import runpy
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "concise_dpo"
LIMIT = 25


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_make_pairs_reproduces_the_shipped_files(tmp_path):
    module = runpy.run_path(str(EXAMPLE / "make_pairs.py"))  # not as __main__: nothing is written yet
    try:
        module["_source"]()
    except SystemExit:
        pytest.skip("shared/data/llamafactory_alpaca_en_demo is not on this machine")
    module["write"](tmp_path)
    for name in ("pairs.jsonl", "heldout.jsonl"):
        assert (tmp_path / name).read_bytes() == (EXAMPLE / name).read_bytes(), name


def test_pairs_prefer_the_short_answer_and_heldout_is_held_out():
    pairs, heldout = _rows(EXAMPLE / "pairs.jsonl"), _rows(EXAMPLE / "heldout.jsonl")
    assert len(pairs) >= 80 and len(heldout) >= 25
    for p in pairs:
        assert len(p["chosen"].split()) <= LIMIT < len(p["rejected"].split())
        assert p["rejected"].startswith(p["chosen"])  # the same answer, stopped after one sentence or not
    prompts = {p["prompt"].strip().lower() for p in pairs}
    assert len(prompts) == len(pairs)
    for q in heldout:
        assert q["question"].strip().lower() not in prompts
        assert len(q["reference"].split()) <= LIMIT
