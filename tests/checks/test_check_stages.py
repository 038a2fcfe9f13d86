"""`tunelab check` of a staged run: which tokenizer reads a later stage's rows; how a stage's data error is said."""

import shlex

import pytest

import tunelab
from tunelab.cli import main
from tunelab.errors import DataError


def test_a_stage_after_full_weights_says_it_was_read_with_stage_1s_tokenizer(tiny_overrides, capsys):
    """Stage 2 of a staged run trains over stage 1's result, which check cannot read before it is trained: its rows
    were read with stage 1's tokenizer without a word. check now says so, for such a stage alone."""
    overrides = {k: v for k, v in tiny_overrides.items() if not k.startswith("method.")}
    data = {"train": tiny_overrides["data.train"]}
    full = [{"data": data, "method": {"name": "full"}}, {"data": data, "method": {"name": "lora", "r": 4}}]
    tunelab.check(None, overrides | {"stages": full}, model=False, show=True)
    out = capsys.readouterr().out
    assert (
        f"(read with stage 1's tokenizer, {tiny_overrides['model.name']}: stage 1's result is not trained yet)" in out
    )
    adapter = [{"data": data}, {"data": data}]  # continue: adapter: stage 2 reads with the base's own tokenizer
    tunelab.check(None, overrides | {"stages": adapter, "method.r": 4}, model=False, show=True)
    out = capsys.readouterr().out
    assert "stage 2: " in out and "read with stage 1's tokenizer" not in out


def test_a_later_stages_data_error_names_the_stage_and_eval_as_the_caller_runs_it(
    tiny_overrides, tmp_path, capsys, cli_flags
):
    """A questions file as stage 2's data.train was refused naming no stage, advising "eval's data file" (stage 1's
    error named eval's command, tunelab train both): check says what train says."""
    questions = tmp_path / "heldout.jsonl"
    questions.write_text('{"question": "Since when?", "expected": "1997"}\n')
    run = tmp_path / "my run"
    stages = [{"name": "qa", "data": {"train": tiny_overrides["data.train"]}}, {"data": {"train": [str(questions)]}}]
    over = tiny_overrides | {"stages": stages, "output_dir": str(run)}
    assert main(["check", "--data-only", *cli_flags(over)]) == 2
    err = capsys.readouterr().err
    assert f"stage 2 of 2 (stage-2): {questions}:1: cannot tell the data format" in err
    assert f"score them with 'tunelab eval {shlex.quote(str(run))} --data FILE'" in err and "eval's data" not in err
    with pytest.raises(DataError) as python:
        tunelab.check(None, over, model=False, show=False)
    assert str(python.value).startswith(f"stage 2 of 2 (stage-2): {questions}:1: cannot tell the data format")
    assert f"score them with tunelab.evaluate({str(run)!r}, data=FILE)" in str(python.value)
    assert not run.exists()
