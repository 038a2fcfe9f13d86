import json

import pytest


@pytest.fixture
def qa_file(tmp_path):
    """24 question/answer pairs about made-up numbers: enough for a few optimizer steps."""
    path = tmp_path / "qa.jsonl"
    rows = [{"question": f"What is the code of box {i}?", "answer": f"Box {i} has code {1000 + 37 * i}."} for i in range(24)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def tiny_overrides(tiny_model_dir, qa_file, tmp_path):
    """A run of the tiny random model on qa_file: a few seconds on the CPU."""
    return {
        "model.name": str(tiny_model_dir),
        "data.train": [str(qa_file)],
        "data.system_prompt": "You answer box questions.",
        "data.max_length": 64,
        "method.r": 4,
        "method.dropout": 0.1,
        "train.micro_batch": 4,
        "train.grad_accum": 2,
        "train.lr": 1e-3,
        "output_dir": str(tmp_path / "run"),
    }
