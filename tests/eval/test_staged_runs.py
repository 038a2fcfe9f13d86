"""compare and eval of a staged run read its questions with the data settings of its last stage, whose result the run
holds, and never write over a stage's data: the top config.yaml holds the stages, and its own data section is not
what the result was trained with."""

import json

import pytest

from tunelab.api import train
from tunelab.cli import main
from tunelab.eval.questions import answer_settings, run_data_config
from tunelab.rundir import read_info


@pytest.fixture(scope="module")
def staged_run(tiny_model_dir, tmp_path_factory):
    """A two-stage run whose second stage maps its columns, sets a system prompt and max_length; its
    eval.questions are in the second stage's columns. Returns (run directory, questions file, stage 2's data)."""
    folder = tmp_path_factory.mktemp("staged")
    first = folder / "first.jsonl"
    first.write_text("".join(json.dumps({"question": f"Box {i}?", "answer": f"Code {i}."}) + "\n" for i in range(8)))
    second = folder / "second.jsonl"
    second.write_text("".join(json.dumps({"ask": f"Box {i}?", "reply": f"Code {i}."}) + "\n" for i in range(8)))
    questions = folder / "q.jsonl"
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
        "eval.max_new_tokens": 3,  # eval options belong to the whole run, not to a stage
        "output_dir": str(folder / "run"),
        "stages": [
            {"name": "one", "data": {"train": [str(first)], "max_length": 64}},
            {"name": "two", "data": stage_two},
        ],
    }
    run = train(None, overrides).run_dir  # the precheck and the comparison after training read q.jsonl's 'ask'
    return run, questions, second


def test_a_staged_run_is_asked_with_its_last_stages_data_settings(staged_run):
    run, questions, _ = staged_run
    assert len(json.loads((run / "compare.json").read_text())["rows"]) == 2
    data = run_data_config(run, read_info(run))
    assert data.system_prompt == "You answer box questions." and data.fields["question"] == "ask"
    assert data.max_length == 48 and answer_settings(None, run).max_new_tokens == 3
    assert (
        main(["eval", str(run), "--data", str(questions), "--out", str(run.parent / "e.json"), "--device", "cpu"]) == 0
    )
    assert json.loads((run.parent / "e.json").read_text())["settings"]["max_new_tokens"] == 3


def test_an_output_over_a_stages_data_is_refused(staged_run, capsys):
    """The protection of the run's data files read the top config, whose data.train a staged run leaves empty: eval
    --out over stage 2's training file with --overwrite replaced it."""
    run, questions, second = staged_run
    before = second.read_text()
    assert main(["eval", str(run), "--data", str(questions), "--out", str(second), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert f"{second}: is a file of data.train of the run's config" in err and second.read_text() == before
