"""compare and eval of a staged run read its questions with the data settings of its last stage, whose result the run
holds: the top config.yaml holds the stages, and its own data section is not what the result was trained with."""

import json

from tunelab.api import train
from tunelab.cli import main
from tunelab.eval.questions import answer_settings, run_data_config
from tunelab.rundir import read_info


def test_a_staged_run_is_asked_with_its_last_stages_data_settings(tiny_model_dir, tmp_path, capsys):
    first = tmp_path / "first.jsonl"
    first.write_text("".join(json.dumps({"question": f"Box {i}?", "answer": f"Code {i}."}) + "\n" for i in range(8)))
    second = tmp_path / "second.jsonl"
    second.write_text("".join(json.dumps({"ask": f"Box {i}?", "reply": f"Code {i}."}) + "\n" for i in range(8)))
    questions = tmp_path / "q.jsonl"  # in the columns of the last stage's data
    questions.write_text("".join(json.dumps({"ask": f"Box {i}?", "expected": f"Code {i}"}) + "\n" for i in range(2)))
    stage_two = {
        "train": [str(second)],
        "fields": {"question": "ask", "answer": "reply"},
        "system_prompt": "You answer box questions.",
        "max_length": 48,
    }
    overrides = {
        "model.name": str(tiny_model_dir),
        "data.train": [],
        "method.r": 4,
        "train.micro_batch": 4,
        "train.max_steps": 1,
        "eval.questions": str(questions),
        "eval.max_new_tokens": 2,
        "output_dir": str(tmp_path / "run"),
        "stages": [
            {"name": "one", "data": {"train": [str(first)], "max_length": 64}},
            {"name": "two", "data": stage_two, "eval": {"max_new_tokens": 3}},
        ],
    }
    run = train(None, overrides).run_dir  # the precheck and the comparison after training read q.jsonl's 'ask'
    assert len(json.loads((run / "compare.json").read_text())["rows"]) == 2
    data = run_data_config(run, read_info(run))
    assert data.system_prompt == "You answer box questions." and data.fields["question"] == "ask"
    assert data.max_length == 48 and answer_settings(None, run).max_new_tokens == 3
    assert main(["eval", str(run), "--data", str(questions), "--device", "cpu"]) == 0
    assert json.loads((run / "eval.json").read_text())["settings"]["max_new_tokens"] == 3
