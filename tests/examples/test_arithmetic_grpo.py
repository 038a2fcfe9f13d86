"""examples/arithmetic_grpo: prepare.py remakes the shipped prompts exactly, the held-out problems never occur in
train, every expected result is right, and the config's rewards score answers as its README says."""

import json
import re
import runpy
import shutil
from pathlib import Path

import pytest

from tunelab.config import load_config
from tunelab.tasks import rewards as R

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "arithmetic_grpo"


def _rows(folder: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (folder / name).read_text().splitlines()]


def test_prepare_remakes_the_shipped_prompts_and_holds_out_unseen_problems(tmp_path):
    shutil.copy(EXAMPLE / "prepare.py", tmp_path / "prepare.py")
    runpy.run_path(str(tmp_path / "prepare.py"), run_name="__main__")
    for name in ("train.jsonl", "heldout.jsonl"):
        assert (tmp_path / name).read_text() == (EXAMPLE / name).read_text(), name
    train, held = _rows(EXAMPLE, "train.jsonl"), _rows(EXAMPLE, "heldout.jsonl")
    assert (len(train), len(held)) == (400, 50)
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in held}
    for row in train + held:
        a, op, b = re.match(r"What is (\d+) ([-+]) (\d+)\?", row["prompt"]).groups()
        assert int(row["expected"]) == (int(a) + int(b) if op == "+" else int(a) - int(b)) >= 0


def test_the_config_rewards_score_form_result_and_nearness():
    cfg = load_config(EXAMPLE / "config.yaml").config
    rewards = [R.build(spec) for spec in R.specs(cfg.grpo.rewards)]
    row = {"expected": "125"}
    answers = ["40 + 85 = 125", "40 + 85 = 150.", "To add 40 and 85, we get 125", "40 + 85 = 165\n\nThis is"]
    values, failures = R.score(rewards, [R.Sample("p", a, row, 8, "w") for a in answers])
    assert not failures and [r.name for r in rewards] == ["format", "correct", "closeness"]
    want = [[1.0, 1.0, 1.0], [1.0, 0.0, 0.5], [0.0, 0.0, 0.0], [0.0, 0.0, 0.2]]  # 165 is 40 away: 1 - 40/50
    assert values.tolist() == [pytest.approx(w) for w in want]
