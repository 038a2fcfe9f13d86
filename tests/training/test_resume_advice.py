"""How a stopped training run says to continue: a Python caller is told train's argument (resume=True), a CLI user
the flag (--resume), each its own alone. Both used to get "--resume (in Python: train(..., resume=True))"."""

import errno
import signal

import pytest

import tunelab
import tunelab.training.loop as loop
import tunelab.training.result as result
from tunelab.cli import main
from tunelab.errors import Interrupted, RunDirError


def _ctrl_c_in_step(monkeypatch, n: int) -> None:
    real, calls = loop.train_step, {"n": 0}

    def step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            signal.raise_signal(signal.SIGINT)  # during the step: it completes, then the run stops
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", step)


def _full_disk_at_the_result(monkeypatch) -> None:
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(result, "ordinary_permissions", full)  # after the result's files are written


def test_an_interrupted_python_run_names_resume_as_trains_argument(tiny_overrides, monkeypatch):
    _ctrl_c_in_step(monkeypatch, 2)
    with pytest.raises(Interrupted) as caught:
        tunelab.train(None, tiny_overrides | {"train.max_steps": 4})
    message = str(caught.value)
    assert "interrupted after step 2 of 4" in message
    assert "Continue with the same train(...) call and resume=True." in message
    assert "--resume" not in message


def test_an_interrupted_cli_run_names_the_flag_alone(tiny_overrides, monkeypatch, capsys, cli_flags):
    _ctrl_c_in_step(monkeypatch, 2)
    assert main(["train", *cli_flags(tiny_overrides | {"train.max_steps": 4})]) == 130
    err = capsys.readouterr().err
    assert err.rstrip().endswith("--resume") and "resume=True" not in err


@pytest.mark.parametrize("python", [True, False])
def test_a_full_disk_at_the_result_names_each_callers_resume(tiny_overrides, monkeypatch, capsys, cli_flags, python):
    _full_disk_at_the_result(monkeypatch)
    overrides = tiny_overrides | {"train.max_steps": 2, "train.save_every": 1}
    if python:
        with pytest.raises(RunDirError) as caught:
            tunelab.train(None, overrides)
        message = str(caught.value)
    else:
        assert main(["train", *cli_flags(overrides)]) == RunDirError.exit_code
        message = capsys.readouterr().err
    assert "the result could not be saved: no space left on the device" in message
    ours, theirs = ("the same train(...) call and resume=True", "--resume") if python else ("--resume", "resume=True")
    assert f"continue from it with {'' if python else 'the same command and '}{ours}." in message
    assert theirs not in message
