"""A run's result is saved at the top of its run directory, over its own earlier result (a finished run trained on)
but never over a file of the user's named as a result file: `--resume` refuses one before anything trains, and the
save one put there while the run trained, both exit 2 naming it. run.json records the result's files as saved
(`result_files`); a run saved before they were recorded takes those there as its own."""

import json
import os
from pathlib import Path

import pytest

import tunelab
from tunelab.cli import main
from tunelab.errors import RunDirError
from tunelab.rundir import RUN_FILE
from tunelab.training import recipe


def _kept(overrides, steps):
    return overrides | {"train.max_steps": steps, "train.save_every": 1, "train.keep_checkpoints_after_finish": True}


def _steps(run) -> int:
    return json.loads((run / RUN_FILE).read_text())["steps"]


def test_resume_refuses_a_users_file_named_as_the_result_before_anything_trains(tiny_overrides, crash_at, cli_flags, capsys):  # fmt: skip
    """A single run's save moved its result over a user's own adapter_model.safetensors at the run's top, without a
    word, where a staged run's --resume refused it."""
    with crash_at(3):
        recipe.train(None, _kept(tiny_overrides, 3))
    run = Path(tiny_overrides["output_dir"])
    (run / "adapter_model.safetensors").write_bytes(b"my own adapter")
    (run / "notes.txt").write_text("mine")  # no result has that name: the save leaves it alone
    steps = _steps(run)
    checked = tunelab.check(None, _kept(tiny_overrides, 3), resume=True, model=False, show=False)  # check agrees
    item = next(item for item in checked.items if item.name == "resume")
    assert item.status == "fail" and "(adapter_model.safetensors) that tunelab did not write there" in item.summary
    assert main(["train", *cli_flags(_kept(tiny_overrides, 3)), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "1 file or folder (adapter_model.safetensors) that tunelab did not write there" in err
    assert "nothing was trained" in err and "Traceback" not in err
    assert (run / "adapter_model.safetensors").read_bytes() == b"my own adapter" and _steps(run) == steps
    os.rename(run / "adapter_model.safetensors", run / "my_adapter.safetensors")
    assert recipe.train(None, _kept(tiny_overrides, 3), resume=True).steps == 3
    assert (run / "notes.txt").read_text() == "mine" and (
        run / "my_adapter.safetensors"
    ).read_bytes() == b"my own adapter"


def test_a_finished_run_trains_on_over_its_own_result_but_not_over_a_file_put_in_its_place(tiny_overrides, cli_flags, capsys):  # fmt: skip
    run = recipe.train(None, _kept(tiny_overrides, 2)).run_dir
    recorded = json.loads((run / RUN_FILE).read_text())["result_files"]
    assert "adapter_model.safetensors" in recorded and "data_report.json" not in recorded
    assert recipe.train(None, _kept(tiny_overrides, 3), resume=True).steps == 3  # over its own result
    (run / "tokenizer.json").write_text('{"mine": true}')  # the user's, in place of the run's
    assert main(["train", *cli_flags(_kept(tiny_overrides, 4)), "--resume"]) == 2
    assert "(tokenizer.json) that tunelab did not write there" in capsys.readouterr().err
    assert (run / "tokenizer.json").read_text() == '{"mine": true}' and _steps(run) == 3


def test_a_users_file_put_there_while_the_run_trains_stops_the_save(tiny_overrides, monkeypatch):
    from tunelab.training import finish

    real = finish.save_final

    def user_copies_a_tokenizer_in(run_dir, *args, **kwargs):
        (run_dir / "tokenizer.json").write_text('{"mine": true}')
        return real(run_dir, *args, **kwargs)

    monkeypatch.setattr(finish, "save_final", user_copies_a_tokenizer_in)
    with pytest.raises(RunDirError) as caught:
        recipe.train(None, _kept(tiny_overrides, 2))
    run = Path(tiny_overrides["output_dir"])
    message = str(caught.value)
    assert (
        "(tokenizer.json) that tunelab did not write there" in message and "put there while the run trained" in message
    )
    assert "The checkpoint of step 2" in message and "resume=True" in message
    assert (run / "tokenizer.json").read_text() == '{"mine": true}' and not (run / "adapter_model.safetensors").exists()
    monkeypatch.setattr(finish, "save_final", real)
    os.rename(run / "tokenizer.json", run.parent / "my-tokenizer.json")
    assert recipe.train(None, _kept(tiny_overrides, 2), resume=True).steps == 2
    assert (run / "adapter_model.safetensors").is_file()


def test_a_run_saved_before_the_result_was_recorded_trains_on_over_it(tiny_overrides):
    run = recipe.train(None, _kept(tiny_overrides, 2)).run_dir
    raw = json.loads((run / RUN_FILE).read_text())
    del raw["result_files"]
    (run / RUN_FILE).write_text(json.dumps(raw))
    assert recipe.train(None, _kept(tiny_overrides, 3), resume=True).steps == 3
    assert "adapter_model.safetensors" in json.loads((run / RUN_FILE).read_text())["result_files"]


def test_only_a_recorded_file_unchanged_is_the_runs_own(tmp_path):
    from tunelab.training.publish import refuse_foreign_saved, saved_files

    (tmp_path / "adapter_model.safetensors").write_bytes(b"saved")
    (tmp_path / "data_report.json").write_text("{}")  # the run's own, written at its start: no save replaces it
    owned = saved_files(tmp_path, ["adapter_model.safetensors"])
    refuse_foreign_saved(tmp_path, owned)
    (tmp_path / "tokenizer.json").mkdir()  # a folder of a result's name: never the run's
    with pytest.raises(RunDirError, match=r"\(tokenizer.json/\) that tunelab did not write there"):
        refuse_foreign_saved(tmp_path, owned)
    (tmp_path / "tokenizer.json").rmdir()
    (tmp_path / "adapter_model.safetensors").write_bytes(b"mine!")  # same size, written again
    os.utime(tmp_path / "adapter_model.safetensors", ns=(1, 1))
    with pytest.raises(RunDirError, match=r"\(adapter_model.safetensors\)"):
        refuse_foreign_saved(tmp_path, owned)
