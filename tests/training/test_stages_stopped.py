"""A staged run stopped inside a later stage: the run's own run.json records what the stopped stage's does (its last
logged loss), so the report of the run directory shows it; resumed with an allowed change, the run's config.yaml
records it, as a single run's does."""

import json

import pytest

from tunelab.api import train
from tunelab.eval.report import build_report


@pytest.fixture
def staged(small_vocab_overrides, tmp_path):
    base = {k: v for k, v in small_vocab_overrides.items() if not k.startswith("data.train")}
    return base | {
        "data.train": [],
        "train.save_every": 1,
        "train.log_every": 1,
        "output_dir": str(tmp_path / "run"),
        "stages": [
            {"name": "first", "data": {"train": small_vocab_overrides["data.train"]}, "train": {"max_steps": 3}},
            {"name": "second", "data": {"train": small_vocab_overrides["data.train"]}, "train": {"max_steps": 3}},
        ],
    }


def test_a_staged_run_stopped_in_stage_two_records_its_last_logged_loss(staged, tmp_path, crash_at):
    """run.json of the run directory had final_loss null (and 0 steps) though stage-2/run.json had the last loss
    logged; the report of the run showed no train loss."""
    with crash_at(5):  # stage 2's second step
        train(None, staged)
    run = tmp_path / "run"
    stopped = json.loads((run / "stage-2" / "run.json").read_text())
    info = json.loads((run / "run.json").read_text())
    assert stopped["final_loss"] is not None and stopped["steps"] == 1
    assert info["finished"] is False and info["final_loss"] == stopped["final_loss"] and info["steps"] == 4
    page = build_report(run).read_text()
    assert "last logged train loss" in page and f"{info['final_loss']:.4f}" in page
    assert "no: stopped in stage 2 of 2 (second)" in page and "4 of 6</td>" in page  # every stage's length known


def test_a_resumed_staged_run_records_the_allowed_changes_in_its_config(staged, tmp_path, crash_at):
    """--resume of a staged run with other eval.questions (an allowed change) kept the old ones in the run's
    config.yaml: the export's self-check asked the questions the run no longer names, and the report showed them."""
    from tunelab.export.check import check_questions
    from tunelab.rundir import read_config

    old, new = tmp_path / "old.jsonl", tmp_path / "new.jsonl"
    old.write_text(json.dumps({"question": "What is the code of box 3?", "expected": "1111"}) + "\n")
    new.write_text(json.dumps({"question": "What is the code of box 4?", "expected": "2222"}) + "\n")
    staged = staged | {"eval.questions": str(old), "eval.max_new_tokens": 3}
    with crash_at(5):  # stage 2's second step
        train(None, staged)
    run = train(None, staged | {"eval.questions": str(new)}, resume=True).run_dir
    assert read_config(run).eval.questions == str(new)
    assert check_questions(run, 3) == (["What is the code of box 4?"], str(new))
    assert str(new) in build_report(run).read_text()


def test_the_report_of_a_stopped_staged_run_says_in_which_stage_it_stopped(staged, tmp_path, crash_at):
    """The report of a staged run stopped in stage 2 of 3 said "optimizer steps: 4 of 6" (the total of the two stages
    started, not of the run) and "the run stopped early" without saying where. It names the stage now, and says what
    the total counts."""
    staged["stages"].append({"name": "third", "data": staged["stages"][1]["data"], "train": {"max_steps": 3}})
    with crash_at(5):  # stage 2's second step
        train(None, staged)
    run = tmp_path / "run"
    info = json.loads((run / "run.json").read_text())
    assert info["extra"]["stopped"] == {"stage": 2, "stages": 3, "stage_finished": False}
    page = build_report(run).read_text()
    assert "no: stopped in stage 2 of 3 (second); --resume continues it" in page
    assert "4 of 6 (the total of the 2 stages started; later stages" in page
    info["extra"]["stopped"]["stage"], info["steps"], info["total_steps"] = 1, 2, 3
    (run / "run.json").write_text(json.dumps(info))
    assert "2 of 3 (the total of the 1 stage started; later stages" in build_report(run, overwrite=True).read_text()


def test_check_resume_of_a_staged_run_names_the_stage_it_resumes(staged, tmp_path, crash_at):
    """check --resume looked for a checkpoint in the run directory, where a staged run keeps none (each stage keeps
    its own), and failed "no intact checkpoint to resume from" for a run that train --resume continues."""
    import tunelab

    with crash_at(5):  # stage 2's second step, after its step-1 checkpoint
        train(None, staged)
    result = tunelab.check(None, staged, resume=True, model=False)
    item = next(i for i in result.items if i.name == "resume")
    assert item.status == "pass" and item.summary.startswith("stage 2 of 2 from ") and "stage-2" in item.summary
    train(None, staged, resume=True)
    result = tunelab.check(None, staged, resume=True, model=False)
    item = next(i for i in result.items if i.name == "resume")
    assert item.status == "fail" and "every one of the 2 stages has finished" in item.summary


def test_a_resuming_staged_run_keeps_the_progress_of_its_stages_in_run_json(staged, tmp_path, crash_at, monkeypatch):
    """While a staged run resumed, its run.json said 0 steps and 0 tokens until the resume stopped or finished; a
    process killed outright (SIGKILL, no handler runs) left it so, the earlier stages' progress gone. run.json keeps
    the steps, tokens and stopping point of the stages so far from the moment the resume starts."""
    import tunelab.training.stages as stages

    with crash_at(5):  # stage 2's second step
        train(None, staged)
    run = tmp_path / "run"
    before = json.loads((run / "run.json").read_text())
    assert before["steps"] == 4 and before["tokens"] > 0
    seen = {}

    def killed(plan, **kwargs):  # run.json as a SIGKILL during the stage's resume would leave it
        seen.update(json.loads((run / "run.json").read_text()))
        raise KeyboardInterrupt

    monkeypatch.setattr(stages, "train", killed)
    with pytest.raises(KeyboardInterrupt):
        train(None, staged, resume=True)
    for key in ("steps", "tokens", "total_steps", "final_loss"):
        assert seen[key] == before[key], key
    assert seen["finished"] is False and seen["extra"]["stopped"] == before["extra"]["stopped"]


def test_the_stopped_stage_keeps_its_progress_in_its_run_json_while_it_resumes(staged, tmp_path, crash_at, monkeypatch):
    """The stage a staged run stopped in rewrote its own stage-k/run.json with 0 steps and tokens when the resume
    started it again; killed outright then, that stage's progress was gone. It keeps its checkpoint's."""
    import tunelab.training.recipe as recipe

    with crash_at(6):  # stage 2's third step: its steps 1 and 2 trained and checkpointed
        train(None, staged)
    stage = tmp_path / "run" / "stage-2"
    before = json.loads((stage / "run.json").read_text())
    assert before["steps"] == 2 and before["tokens"] > 0
    seen = {}

    def killed(run_state):  # stage-2/run.json as a SIGKILL before the stage's next step would leave it
        seen.update(json.loads((stage / "run.json").read_text()))
        raise KeyboardInterrupt

    monkeypatch.setattr(recipe, "loop", killed)
    with pytest.raises(KeyboardInterrupt):
        train(None, staged, resume=True)
    for key in ("steps", "tokens", "total_steps", "final_loss"):
        assert seen[key] == before[key], key
    assert seen["finished"] is False


def test_a_staged_run_killed_after_a_checkpoint_records_that_checkpoint_in_both_run_json(staged, tmp_path, monkeypatch):
    """A staged run killed outright (SIGKILL) in stage 2 after its step-2 checkpoint left the run's run.json at 0 steps
    (as written when it started) and stage-2/run.json at 0 steps too, while --resume restarts from stage 1's 3 steps
    and stage 2's step 2. Both record that checkpoint now, after every checkpoint and every stage."""
    import tunelab.training.loop as loop
    from tunelab.training.checkpoint import latest_checkpoint

    run, real, calls, seen = tmp_path / "run", loop.train_step, {"n": 0}, {}

    def killed_in_step_6(*args, **kwargs):  # both run.json files as a SIGKILL in stage 2's third step leaves them
        calls["n"] += 1
        if calls["n"] == 6:
            seen["run"] = json.loads((run / "run.json").read_text())
            seen["stage"] = json.loads((run / "stage-2" / "run.json").read_text())
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", killed_in_step_6)
    with pytest.raises(KeyboardInterrupt):
        train(None, staged)
    first = json.loads((run / "stage-1" / "run.json").read_text())
    assert latest_checkpoint(run / "stage-2").name == "step-0000002"
    assert seen["stage"]["steps"] == 2 and seen["stage"]["tokens"] > 0 and seen["stage"]["final_loss"] is not None
    assert seen["run"]["steps"] == first["steps"] + 2 == 5
    assert seen["run"]["tokens"] == first["tokens"] + seen["stage"]["tokens"]
    assert seen["run"]["final_loss"] == seen["stage"]["final_loss"]
    assert seen["run"]["extra"]["stopped"] == {"stage": 2, "stages": 2, "stage_finished": False}


def test_a_staged_run_stopped_after_its_last_stage_was_saved_is_finished_by_resume(staged, tmp_path, crash_at):
    """Stopped after the last stage was saved, before the run's result was written (Ctrl-C while the forgetting matrix
    was read): --resume refused with "every one of the 2 stages has finished ... nothing to train", so the run could
    only be trained again with --overwrite, and the report told to --resume for a next stage there is not. --resume
    now writes the run's result, and the report says so."""
    import tunelab
    from tunelab.training import stages

    with crash_at(1, stages, "forgetting"):
        train(None, staged)
    run = tmp_path / "run"
    info = json.loads((run / "run.json").read_text())
    assert info["finished"] is False and info["extra"]["stopped"] == {"stage": 2, "stages": 2, "stage_finished": True}
    page = build_report(run).read_text()
    assert "no: stopped after its last stage 2 of 2 (second) was saved; --resume writes the run&#x27;s result" in page
    item = next(i for i in tunelab.check(None, staged, resume=True, model=False).items if i.name == "resume")
    assert item.status == "pass" and "writes the run's result" in item.summary
    result = train(None, staged, resume=True)
    info = json.loads((run / "run.json").read_text())
    assert info["finished"] is True and info["steps"] == 6 and result.steps == 6
    assert len(info["extra"]["forgetting"]["matrix"]) == 2 and "stopped" not in info["extra"]
    assert (run / "adapter_model.safetensors").is_file()


def test_ctrl_c_while_a_staged_run_writes_its_result_lets_it_finish(staged, tmp_path, monkeypatch, capsys):
    """Ctrl-C after the last stage was saved, while the run's result was written (forgetting matrix, run.json), stopped
    it half-written with a bare "interrupted". The result is written first now, as a stage's own save is; then the run
    ends interrupted (the CLI exits 130), its eval.questions not compared."""
    import os
    import signal

    from tunelab.training import stages

    real = stages.forgetting

    def interrupted(*args):
        os.kill(os.getpid(), signal.SIGINT)
        return real(*args)

    monkeypatch.setattr(stages, "forgetting", interrupted)
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"question": "What is the code of box 3?", "expected": "1111"}) + "\n")
    result = train(None, staged | {"eval.questions": str(questions)})
    assert result.interrupted and result.stop_signal == signal.SIGINT  # the CLI exits 128 + 2
    err = capsys.readouterr().err
    assert "interrupt: the result is saved in" in err and "\ninterrupted\n" not in err
    run = tmp_path / "run"
    info = json.loads((run / "run.json").read_text())
    assert info["finished"] is True and "forgetting" in info["extra"] and not (run / "compare.json").exists()


def test_check_resume_of_a_staged_run_says_the_state_of_the_stage_it_resumes(
    staged, tmp_path, qa_file, crash_at, capsys
):
    """The resume item of a staged run passed whatever the stopped stage's state: stopped by the non-finite guard,
    its checkpoints all damaged (train starts it again), and its data changed (train refuses) were not said; the data
    compared was stage 1's, which --resume skips."""
    import tunelab

    second = tmp_path / "second.jsonl"
    second.write_text(qa_file.read_text())
    staged["stages"][1]["data"]["train"] = [str(second)]
    with crash_at(5):  # stage 2's second step, after its step-1 checkpoint
        train(None, staged)
    stage = tmp_path / "run" / "stage-2"

    def items():
        return {i.name: i for i in tunelab.check(None, staged, resume=True, model=False, show=False).items}

    info = json.loads((stage / "run.json").read_text())
    (stage / "run.json").write_text(json.dumps(info | {"end": {"reason": "non_finite", "step": 1}}))
    item = items()["resume"]
    assert item.status == "warn" and "the non-finite guard stopped the run at step 1" in item.details[0]
    (stage / "run.json").write_text(json.dumps(info))
    second.write_text(second.read_text().replace("box 3?", "box three?"))
    changed = items()
    assert (
        changed["stage 2: resume data"].status == "fail"
        and f"{second} changed" in changed["stage 2: resume data"].summary
    )
    assert changed["resume"].status == "pass"
    (stage / "checkpoints" / "step-0000001" / "state.json").write_text("")
    damaged = items()
    assert damaged["resume"].status == "warn" and "none of its checkpoints is intact" in damaged["resume"].summary
    assert "stage 2: resume data" not in damaged  # it starts again: its data is not compared
    capsys.readouterr()
    train(None, staged, resume=True)
    assert f"{stage}: none of its checkpoints is intact (checkpoint " in capsys.readouterr().out


def test_check_resume_of_a_staged_run_under_home_compares_the_stages_data(
    staged, tmp_path, qa_file, crash_at, monkeypatch
):
    """output_dir given as ~/run: the stage --resume continues was looked for under the unexpanded path, and its
    changed data went unsaid."""
    import tunelab

    monkeypatch.setenv("HOME", str(tmp_path))
    second = tmp_path / "second.jsonl"
    second.write_text(qa_file.read_text())
    staged = staged | {"output_dir": "~/run"}
    staged["stages"][1]["data"]["train"] = [str(second)]
    with crash_at(5):  # stage 2's second step, after its step-1 checkpoint
        train(None, staged)
    second.write_text(second.read_text().replace("box 3?", "box three?"))
    items = {i.name: i for i in tunelab.check(None, staged, resume=True, model=False, show=False).items}
    assert items["stage 2: resume data"].status == "fail"
