"""A staged run publishes its last stage's result at the run directory's top: it replaces its own files there (a
publish cut short and resumed), never one of the user's of a result file's name, which it names (exit 2): before any
stage trains where it is there already, and before the publish where it came while the stages trained."""

import json
import os

import pytest

from tunelab.api import train
from tunelab.cli import main
from tunelab.errors import RunDirError
from tunelab.training.run_files import RESULT_ENTRIES, written


@pytest.fixture
def staged(tiny_overrides, tmp_path):
    base = {k: v for k, v in tiny_overrides.items() if not k.startswith("data.train")}
    return base | {
        "data.train": [],
        "train.save_every": 1,
        "output_dir": str(tmp_path / "run"),
        "stages": [
            {"name": "first", "data": {"train": tiny_overrides["data.train"]}, "train": {"max_steps": 2}},
            {"name": "second", "data": {"train": tiny_overrides["data.train"]}, "train": {"max_steps": 2}},
        ],
    }


def test_resume_refuses_a_users_file_named_as_the_result_before_any_stage_trains(staged, tmp_path, crash_at, cli_flags, capsys):  # fmt: skip
    """A user's own adapter_model.safetensors put at the top of a stopped staged run was replaced by the last stage's
    when --resume finished it, without a word."""
    with crash_at(3):  # stage 2's first step
        train(None, staged)
    run = tmp_path / "run"
    (run / "adapter_model.safetensors").write_bytes(b"my own adapter")
    (run / "notes.txt").write_text("mine")  # no result has that name: the publish leaves it alone
    steps = json.loads((run / "stage-2" / "run.json").read_text())["steps"]
    assert main(["train", *cli_flags(staged), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "1 file or folder (adapter_model.safetensors) that tunelab did not write there" in err
    assert "nothing was trained" in err and "Traceback" not in err
    assert (run / "adapter_model.safetensors").read_bytes() == b"my own adapter"
    assert json.loads((run / "stage-2" / "run.json").read_text())["steps"] == steps
    (run / "adapter_model.safetensors").unlink()
    result = train(None, staged, resume=True)
    assert result.steps == 4 and (run / "notes.txt").read_text() == "mine"
    assert (run / "adapter_model.safetensors").read_bytes() == (
        run / "stage-2" / "adapter_model.safetensors"
    ).read_bytes()


def test_a_users_file_put_there_while_the_stages_train_stops_the_publish_and_resume_publishes(staged, tmp_path, monkeypatch):  # fmt: skip
    """The check before training cannot see a file put there later: the publish refuses it, the result waits in the
    last stage's folder, and --resume publishes it once the file is moved, training nothing again."""
    from tunelab.training import stages

    real = stages._stages

    def user_copies_a_tokenizer_in(run_dir, *args, **kwargs):
        result = real(run_dir, *args, **kwargs)
        (run_dir / "tokenizer.json").write_text('{"mine": true}')
        return result

    monkeypatch.setattr(stages, "_stages", user_copies_a_tokenizer_in)
    with pytest.raises(RunDirError) as caught:
        train(None, staged)
    run = tmp_path / "run"
    message = str(caught.value)
    assert (
        "(tokenizer.json) that tunelab did not write there" in message
        and "put there while the stages trained" in message
    )
    assert f"saved in {run / 'stage-2'}" in message and "resume=True publishes it" in message
    assert (run / "tokenizer.json").read_text() == '{"mine": true}' and not (run / "adapter_model.safetensors").exists()
    assert json.loads((run / "run.json").read_text())["finished"] is False
    monkeypatch.setattr(stages, "_stages", real)
    os.rename(run / "tokenizer.json", tmp_path / "my-tokenizer.json")
    result = train(None, staged, resume=True)
    assert result.steps == 4 and json.loads((run / "run.json").read_text())["finished"] is True
    assert (run / "tokenizer.json").read_bytes() == (run / "stage-2" / "tokenizer.json").read_bytes()


def test_a_publish_cut_short_is_finished_by_resume_over_its_own_copies(staged, tmp_path, crash_at, monkeypatch):
    """Files a publish copied (no hard links on the file system) before it stopped are the run's own: --resume
    replaces them, refusing nothing."""
    from tunelab.training import publish, stages

    def no_links(src, dst):
        raise OSError("no hard links here")

    monkeypatch.setattr(publish.os, "link", no_links)
    with crash_at(1, stages, "_metrics"):  # after the publish, before the run's run.json
        train(None, staged)
    run = tmp_path / "run"
    assert (run / "adapter_model.safetensors").is_file() and not os.path.samefile(
        run / "adapter_model.safetensors", run / "stage-2" / "adapter_model.safetensors"
    )
    result = train(None, staged, resume=True)
    assert result.steps == 4 and json.loads((run / "run.json").read_text())["finished"] is True
    names = publish.published_names(run / "stage-2")  # what the check before training looks for covers them all
    assert "adapter_model.safetensors" in names and all(written(name, RESULT_ENTRIES) for name in names)
