"""The real CLI on the embedded SmolLM2 model: a few LoRA steps on the company FAQ, then compare with scores."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FAQ = ROOT / "examples" / "company_faq"


@pytest.mark.slow
def test_company_faq_few_steps_through_the_cli(tmp_path):
    questions = tmp_path / "q.jsonl"
    lines = (FAQ / "heldout.jsonl").read_text().splitlines()
    kinds = [json.loads(line)["kind"] for line in lines]
    picked = [lines[kinds.index("fact")], lines[kinds.index("off_topic")]]
    questions.write_text("\n".join(picked) + "\n")
    run = tmp_path / "run"
    env = os.environ | {"HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tunelab.cli",
            "train",
            str(FAQ / "config.yaml"),
            "--output_dir",
            str(run),
            "--train.max_steps",
            "2",
            "--train.micro_batch",
            "4",
            "--eval.questions",
            str(questions),
            "--eval.max_new_tokens",
            "24",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
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
    assert "refused: base" in done.stdout
