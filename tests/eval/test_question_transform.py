"""A data.transform written for training rows, meeting a question file's rows: a clear error, never a traceback."""

import json

from tunelab.cli import main

SHAPE = "def shape(row):\n    return {'question': row['question'], 'answer': row['answer'].upper()}\n"


def test_a_transform_that_raises_on_a_question_row_names_it_the_row_and_the_exception(
    tiny_overrides, cli_flags, tmp_path, capsys
):
    """The run's data.transform takes the rows of eval.questions and of the files eval and compare read; one written
    for training rows (it reads row['answer']) raised on a question-only row. train (before it trains), eval and
    compare stop with exit code 2, naming the transform, the file and line and the exception, and saying why a
    question row reached the function."""
    (tmp_path / "shaping.py").write_text(SHAPE)
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"question": "What is the code of box 3?", "expected": "1111"}) + "\n")
    over = tiny_overrides | {"data.transform": f"{tmp_path / 'shaping.py'}:shape", "train.max_steps": 1}
    expected = (
        f"{questions}:1: data.transform {tmp_path / 'shaping.py'}:shape raised KeyError: 'answer' on this row. "
        "Fix the function, or the row. The rows of a question file"
    )
    assert main(["train", *cli_flags(over | {"eval.questions": str(questions)})]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err and not (tmp_path / "run" / "config.yaml").exists()
    assert main(["train", *cli_flags(over)]) == 0
    capsys.readouterr()
    for command in (["eval", "--data"], ["compare", "--questions"]):
        assert main([command[0], str(tmp_path / "run"), command[1], str(questions), "--no-save"]) == 2
        err = capsys.readouterr().err
        assert expected in err and "Traceback" not in err
