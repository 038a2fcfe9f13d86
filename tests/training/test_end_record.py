"""run.json's `end`: why training stopped (every step trained, Ctrl-C or SIGTERM, the non-finite guard, an error) and
after which step, for a single run and for a staged run's own run.json; the report says it."""

import json
import signal
from pathlib import Path

import pytest

import tunelab.tasks.sft as sft_task
import tunelab.training.loop as loop
from tunelab.api import train
from tunelab.errors import Interrupted, TrainingStopped
from tunelab.eval.report import render_report


def _end(run_dir) -> dict:
    return json.loads((Path(run_dir) / "run.json").read_text())["end"]


def _signal_in_call(monkeypatch, n, signum):
    real, calls = loop.train_step, {"n": 0}

    def step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            signal.raise_signal(signum)  # during the step: it completes, then the run stops
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", step)
    return real


def test_run_json_says_why_training_stopped_and_the_report_shows_it(tiny_overrides, monkeypatch, crash_at):
    """run.json of a stopped run held its steps, but not whether Ctrl-C, the non-finite guard or a crash stopped it,
    nor that a finished one trained every step."""
    overrides = tiny_overrides | {"train.max_steps": 4, "train.save_every": 1}
    run_dir = Path(overrides["output_dir"])

    real = _signal_in_call(monkeypatch, 2, signal.SIGTERM)
    with pytest.raises(Interrupted):
        train(None, overrides)
    assert _end(run_dir) == {"reason": "interrupted", "step": 2, "signal": "SIGTERM"}
    assert "interrupted by SIGTERM (kill, a job scheduler) after step 2; --resume" in render_report(run_dir)
    monkeypatch.setattr(loop, "train_step", real)

    with crash_at(2):
        train(None, overrides, resume=True)  # from step 2: its second step is step 4
    assert _end(run_dir) == {"reason": "error", "step": 3, "error": "Crash: train_step: call 2"}
    assert "stopped by an error after step 3: Crash: train_step: call 2" in render_report(run_dir)

    assert train(None, overrides, resume=True).steps == 4
    assert _end(run_dir) == {"reason": "finished", "step": 4}
    assert "<th>how training ended</th><td>finished: every step trained (4)</td>" in render_report(run_dir)

    real_loss = sft_task.summed_loss
    monkeypatch.setattr(sft_task, "summed_loss", lambda model, batch: real_loss(model, batch) * float("nan"))
    with pytest.raises(TrainingStopped):
        train(None, overrides | {"overwrite": True, "train.max_bad_steps": 2})
    assert _end(run_dir) == {"reason": "non_finite", "step": 2}
    assert "stopped by the non-finite guard at step 2" in render_report(run_dir)


def test_a_run_json_without_an_end_is_said_unrecorded_if_unfinished(tiny_overrides):
    """A run still training, or killed outright, has no `end`: the report says so; a finished run written before
    `end` existed shows no such row."""
    run_dir = train(None, tiny_overrides | {"train.max_steps": 1}).run_dir
    info = json.loads((run_dir / "run.json").read_text())
    del info["end"]
    (run_dir / "run.json").write_text(json.dumps(info))
    assert "how training ended" not in render_report(run_dir)
    (run_dir / "run.json").write_text(json.dumps(info | {"finished": False}))
    assert "not recorded: still training, killed outright (SIGKILL, out of memory)" in render_report(run_dir)


def test_a_staged_runs_own_run_json_says_where_and_why_it_stopped(tiny_overrides, monkeypatch):
    """Ctrl-C in stage 2 (the run's step 3): the run's run.json says interrupted at the run's step; finished, it
    counts the steps of every stage."""
    base = {k: v for k, v in tiny_overrides.items() if not k.startswith("data.train")}
    staged = base | {
        "data.train": [],
        "stages": [
            {"name": "first", "data": {"train": tiny_overrides["data.train"]}, "train": {"max_steps": 2}},
            {"name": "second", "data": {"train": tiny_overrides["data.train"]}, "train": {"max_steps": 2}},
        ],
    }
    run_dir = Path(staged["output_dir"])
    real = _signal_in_call(monkeypatch, 3, signal.SIGINT)
    with pytest.raises(Interrupted):
        train(None, staged)
    assert _end(run_dir) == {"reason": "interrupted", "step": 3, "signal": "SIGINT"}
    assert _end(run_dir / "stage-2") == {"reason": "interrupted", "step": 1, "signal": "SIGINT"}
    monkeypatch.setattr(loop, "train_step", real)
    train(None, staged, resume=True)
    assert _end(run_dir) == {"reason": "finished", "step": 4}


def test_overwrite_says_why_the_run_it_replaces_stopped(tiny_overrides, capsys):
    """--overwrite of an unfinished run said "moving the unfinished run (stopped at step 2)": not whether Ctrl-C, the
    guard or an error had stopped it. It says so from run.json's end now."""
    overrides = tiny_overrides | {"train.max_steps": 2}
    run_dir = Path(overrides["output_dir"])
    train(None, overrides)
    info = json.loads((run_dir / "run.json").read_text())
    stopped = {"finished": False, "end": {"reason": "interrupted", "step": 2, "signal": "SIGINT"}}
    (run_dir / "run.json").write_text(json.dumps(info | stopped))
    capsys.readouterr()
    train(None, overrides | {"overwrite": True})
    assert f"replacing: moving the unfinished run (interrupted after step 2) in {run_dir}" in capsys.readouterr().out
