"""The real CLI on the embedded SmolLM2 model: a few LoRA steps on the company FAQ, then compare with scores.

The CLI's `main` runs in this process: the embedded model is what is tested here, not a Python start-up (the tiny
model's `python -m tunelab.cli train` in test_cli.py is that)."""

import json
from pathlib import Path

import pytest

from tunelab.cli import main

ROOT = Path(__file__).resolve().parents[1]
FAQ = ROOT / "examples" / "company_faq"


@pytest.mark.slow
def test_company_faq_few_steps_through_the_cli(tmp_path, capsys):
    questions = tmp_path / "q.jsonl"
    lines = (FAQ / "heldout.jsonl").read_text().splitlines()
    kinds = [json.loads(line)["kind"] for line in lines]
    picked = [lines[kinds.index("fact")], lines[kinds.index("off_topic")]]
    questions.write_text("\n".join(picked) + "\n")
    run = tmp_path / "run"
    code = main(
        [
            "train",
            str(FAQ / "config.yaml"),
            "--output_dir",
            str(run),
            "--train.max_steps",
            "2",
            "--train.micro_batch",
            "4",
            "--data.eval_fraction",  # 5% of the pairs for the eval loss (at step 0 and at the end), not 10%
            "0.05",
            "--eval.questions",
            str(questions),
            "--eval.max_new_tokens",
            "24",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    info = json.loads((run / "run.json").read_text())
    assert (
        info["finished"]
        and info["steps"] == 2
        and info["impl"] == "fast"
        and info["base_model"] == "smollm2-135m-instruct"
    )
    comparison = json.loads((run / "compare.json").read_text())
    assert [r["kind"] for r in comparison["rows"]] == ["fact", "off_topic"]
    assert all(r["base"] and r["tuned"] for r in comparison["rows"])  # the real model answers in words
    assert set(comparison["scores"]) == {"fact", "off_topic"}
    assert "refused: base" in out
