"""--overwrite never destroys what is not a run, and never the old run before the new one can start."""

import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest

import tunelab.training.recipe as recipe
from tunelab.config.flags import PYTHON
from tunelab.errors import DataError, ModelError, RunDirError
from tunelab.run_info import RunInfo
from tunelab.rundir import write_info
from tunelab.training.outdir import LOCK_FILE, REPLACED_FILE, plan_output_dir


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def previous_run(tiny_run_dir, tmp_path):
    """A copy of a finished run, where a new run will be asked to go."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run_dir, run)
    return run


def test_overwrite_of_the_working_directory_is_refused(tiny_overrides, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    for output_dir in (".", str(tmp_path.parent)):
        with pytest.raises(RunDirError, match="working directory"):
            recipe.train(None, tiny_overrides | {"output_dir": output_dir, "overwrite": True})
    assert (tmp_path / "notes.txt").read_text() == "mine" and (tmp_path / "qa.jsonl").is_file()


def test_output_dir_holding_the_data_or_the_config_is_refused(tiny_overrides, qa_file, tmp_path):
    data_dir = qa_file.parent
    with pytest.raises(RunDirError, match=r"holds the data file .*qa\.jsonl"):
        recipe.train(None, tiny_overrides | {"output_dir": str(data_dir), "overwrite": True})
    config = tmp_path / "cfg" / "c.yaml"
    config.parent.mkdir()
    config.write_text(f"model:\n  name: {tiny_overrides['model.name']}\n")
    write_info(config.parent, RunInfo(base_model="m", method="lora"))  # even a run directory
    with pytest.raises(RunDirError, match=r"holds the config file .*c\.yaml"):
        recipe.train(config, {"data.train": [str(qa_file)], "output_dir": str(config.parent), "overwrite": True})
    with pytest.raises(RunDirError, match="inside the data folder"):
        recipe.train(None, tiny_overrides | {"data.train": [str(data_dir)], "output_dir": str(data_dir / "runs/x")})
    assert qa_file.is_file() and config.is_file()


def test_the_config_file_is_kept_out_of_output_dir_through_the_api_and_cli(tiny_overrides, previous_run, capsys):
    """A config saved inside the run it writes to: tunelab.train, `tunelab train` and train(nproc=2) refuse, exit 2,
    and the file stays (the API resolves the config before training: the path must travel with it)."""
    import tunelab
    from tunelab.cli import main

    config = previous_run / "my.yaml"
    options = {k: v for k, v in tiny_overrides.items() if k != "output_dir"} | {"output_dir": str(previous_run)}
    config.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in options.items()))
    before = _tree(previous_run)
    for nproc in (None, 2):
        with pytest.raises(RunDirError, match=r"holds the config file .*my\.yaml"):
            # model.device cpu: a GPU host with one device refuses two ranks on it before the output_dir check
            tunelab.train(config, {"overwrite": True, "model.device": "cpu"}, nproc=nproc, overwrite_non_run=True)
    assert main(["train", str(config), "--overwrite", "--overwrite-non-run"]) == 2
    assert "holds the config file" in capsys.readouterr().err
    assert _tree(previous_run) == before


def test_output_dir_holding_a_transform_a_reward_function_or_a_reward_model_is_refused(tiny_overrides, previous_run):
    """--overwrite deleted a grpo run's reward model run and reward function file, and a data.transform file."""
    shaping = previous_run / "shaping.py"
    shaping.write_text("def keep(row):\n    return row\n\ndef score(prompt, answer, row):\n    return 1.0\n")
    over = tiny_overrides | {"output_dir": str(previous_run), "overwrite": True}
    with pytest.raises(RunDirError, match=r"holds the function file .*shaping\.py"):
        recipe.train(None, over | {"data.transform": f"{shaping}:keep"})
    grpo = over | {"task": "grpo", "train.grad_accum": 1, "data.train": [str(previous_run.parent / "prompts.jsonl")]}
    (previous_run.parent / "prompts.jsonl").write_text('{"prompt": "Hi?", "expected": "1"}\n')
    with pytest.raises(RunDirError, match=r"holds the function file .*shaping\.py"):
        recipe.train(None, grpo | {"grpo.rewards": [{"kind": "function", "function": f"{shaping}:score"}]})
    with pytest.raises(RunDirError, match=r"holds the reward model run"):
        recipe.train(None, grpo | {"grpo.rewards": [{"kind": "model", "run": str(previous_run)}]})
    assert shaping.is_file() and (previous_run / "run.json").is_file()
    with pytest.raises(RunDirError, match=r"holds the adapter the run starts from"):  # moved aside, then deleted
        recipe.train(None, over | {"model.adapter": str(previous_run)})


def test_a_missing_questions_file_stops_the_run_before_training(tiny_overrides, tmp_path):
    import tunelab

    with pytest.raises(DataError, match=r"nothere\.jsonl: question file not found"):
        tunelab.train(None, tiny_overrides | {"eval.questions": str(tmp_path / "nothere.jsonl")})
    assert not Path(tiny_overrides["output_dir"]).exists()


def test_a_folder_tunelab_did_not_write_is_replaced_only_when_forced(tiny_overrides, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "keep.txt").write_text("precious")
    (run / "run.json").write_text('{"hello": 1}')  # a file of that name is not a run's description
    # a Python caller is told of its arguments alone, not of flags it has no way to give
    with pytest.raises(RunDirError) as caught:
        recipe.train(None, tiny_overrides | {"train.max_steps": 1})
    assert str(caught.value).endswith(  # not "pass overwrite": alone it would refuse this folder too
        "exists, is not empty and is not a run directory tunelab wrote (it has no run.json): it may hold files of "
        "yours. Choose another output_dir, or give overrides['overwrite'] = True and overwrite_non_run=True together "
        "if everything in it may be deleted."
    )
    with pytest.raises(RunDirError) as caught:
        recipe.train(None, tiny_overrides | {"train.max_steps": 1, "overwrite": True})
    assert "so overrides['overwrite'] = True will not replace it" in str(caught.value)
    assert str(caught.value).endswith("add overwrite_non_run=True if everything in it may be deleted.")
    assert "--" not in str(caught.value)
    with pytest.raises(RunDirError) as caught:
        recipe.train(None, tiny_overrides | {"train.max_steps": 1}, overwrite_non_run=True)
    assert "overwrite_non_run=True replaces nothing by itself: it only lets overrides['overwrite'] = True" in str(
        caught.value
    )
    assert (run / "keep.txt").read_text() == "precious"
    recipe.train(None, tiny_overrides | {"train.max_steps": 1, "overwrite": True}, overwrite_non_run=True)
    assert not (run / "keep.txt").exists() and (run / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "run.previous").exists()


def test_a_good_run_survives_a_new_config_with_bad_data_or_a_bad_model(tiny_overrides, previous_run, tmp_path):
    before = _tree(previous_run)
    with pytest.raises(DataError, match="missing.jsonl: file not found"):
        recipe.train(None, tiny_overrides | {"data.train": [str(tmp_path / "missing.jsonl")], "overwrite": True})
    config_only = tmp_path / "config-only"
    config_only.mkdir()
    shutil.copy(Path(tiny_overrides["model.name"]) / "config.json", config_only)
    with pytest.raises(ModelError):
        recipe.train(None, tiny_overrides | {"model.name": str(config_only), "overwrite": True})
    assert _tree(previous_run) == before and not (tmp_path / "run.previous").exists()


def test_overwrite_keeps_the_old_run_until_the_new_one_finishes(tiny_overrides, previous_run, tmp_path, crash_at):
    before = _tree(previous_run)
    with crash_at(2):
        recipe.train(None, tiny_overrides | {"train.max_steps": 3, "overwrite": True})
    previous = tmp_path / "run.previous"
    moved = _tree(previous)
    assert json.loads(moved.pop(REPLACED_FILE))["replaced_by"] == str(previous_run.resolve())  # tunelab's mark
    assert moved == before  # moved aside whole, not deleted
    assert json.loads((previous_run / "run.json").read_text())["finished"] is False  # the failed attempt

    recipe.train(None, tiny_overrides | {"train.max_steps": 2, "overwrite": True})
    assert not previous.exists()  # a replacement finished: the old run goes now
    assert json.loads((previous_run / "run.json").read_text())["steps"] == 2


def test_output_dir_that_is_a_file_or_cannot_be_created(tiny_overrides, tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(RunDirError, match="is a file, not a folder"):
        recipe.train(None, tiny_overrides | {"output_dir": str(blocker)})
    with pytest.raises(RunDirError, match="is a file, so no folder can be created there"):
        recipe.train(None, tiny_overrides | {"output_dir": str(blocker / "run")})


def test_a_folder_that_is_no_run_is_not_offered_to_overwrite_alone(tmp_path):
    """`tunelab train` into a folder of the user's files said 'Pass --overwrite to replace it', which then refused."""
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "thesis.txt").write_text("mine")
    with pytest.raises(RunDirError) as caught:
        plan_output_dir(folder, overwrite=False, resume=False, protected={})
    assert "Pass --overwrite to replace it" not in str(caught.value)
    assert str(caught.value).endswith(
        "is not a run directory tunelab wrote (it has no run.json): it may hold files of yours. Choose another "
        "output_dir, or give --overwrite and --overwrite-non-run together if everything in it may be deleted."
    )
    with pytest.raises(RunDirError, match=r"delete it yourself if everything in it may go \(tunelab federate "):
        plan_output_dir(folder, overwrite=False, resume=False, protected={}, command="federate")
    assert (folder / "thesis.txt").read_text() == "mine"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_unwritable_output_dir(tiny_overrides, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(RunDirError, match="is not writable"):
            plan_output_dir(locked / "run", overwrite=False, resume=False, protected={})
    finally:
        locked.chmod(0o700)


def test_check_never_writes_into_an_existing_run(tiny_overrides, previous_run, tmp_path):
    import tunelab

    before = _tree(previous_run)
    result = tunelab.check(None, tiny_overrides | {"overwrite": True}, model=False, html=tmp_path / "c.html")
    assert result.passed and (tmp_path / "c.html").is_file()
    assert _tree(previous_run) == before and not (tmp_path / "run.previous").exists()
    with pytest.raises(RunDirError, match="run directory, which check never writes into"):
        tunelab.check(None, tiny_overrides, model=False, html=previous_run / "check.html")


def test_overwrite_never_deletes_a_finished_run_or_a_previous_it_did_not_move(
    tiny_overrides, previous_run, tmp_path, crash_at
):
    """A replacement interrupted, then resumed to its end, left NAME.previous behind; the next --overwrite took NAME
    for the unfinished attempt and deleted the finished run at once. And a run of the user's named NAME.previous was
    deleted by an --overwrite of NAME."""
    over = tiny_overrides | {"train.max_steps": 3, "train.save_every": 1}
    with crash_at(2):
        recipe.train(None, over | {"overwrite": True})
    recipe.train(None, over, resume=True)  # the replacement finished on --resume: the run it replaced goes now
    previous = tmp_path / "run.previous"
    assert not previous.exists() and json.loads((previous_run / "run.json").read_text())["finished"]

    shutil.copytree(previous_run, previous)  # a run of the user's that happens to have the name
    finished = _tree(previous_run)
    with pytest.raises(RunDirError, match="tunelab did not move it there"):
        recipe.train(None, over | {"overwrite": True})
    assert _tree(previous_run) == finished and (previous / "run.json").is_file()

    (previous / REPLACED_FILE).write_text("{}")  # as if tunelab had moved it there, and NAME finished since
    with pytest.raises(RunDirError, match="holds an older run, which the finished run in"):
        recipe.train(None, over | {"overwrite": True})
    assert _tree(previous_run) == finished


def test_an_overwrite_through_a_symbolic_link_is_refused(tiny_overrides, previous_run, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(previous_run)
    with pytest.raises(RunDirError, match="is a symbolic link to"):
        recipe.train(None, tiny_overrides | {"output_dir": str(link), "overwrite": True})
    assert link.is_symlink() and (previous_run / "run.json").is_file()


def test_a_second_process_on_a_run_being_written_is_refused(tiny_overrides, previous_run, tmp_path, crash_at):
    """Two runs on one output_dir at once both exited 0, their metrics interleaved and one's weights beside the
    other's config. The lock is taken as another process would: a second open file of the same lock."""
    import fcntl

    held = os.open(previous_run / LOCK_FILE, os.O_RDWR | os.O_CREAT)
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        before = _tree(previous_run)
        with pytest.raises(RunDirError, match="another tunelab process is writing this run"):
            recipe.train(None, tiny_overrides | {"overwrite": True})
        assert _tree(previous_run) == before and not (tmp_path / "run.previous").exists()
    finally:
        os.close(held)
    recipe.train(None, tiny_overrides | {"train.max_steps": 1, "overwrite": True})  # free again
    with crash_at(1):  # and a run that failed lets go of it: the same process may go on
        recipe.train(None, tiny_overrides | {"train.max_steps": 2, "overwrite": True})
    other = os.open(previous_run / LOCK_FILE, os.O_RDWR)
    try:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises if the failed run still held it
    finally:
        os.close(other)


def test_a_lock_held_twice_in_one_process_is_kept_while_a_forked_child_shares_it(tmp_path):
    """The federation's CLI took the run's lock, then its server (same process) took it again while Ray forked
    processes: letting go and taking it anew failed with "another tunelab process" while a forked child that had
    not yet exec'd shared the held file. Here the child holds it for a second."""
    from tunelab.training.outdir import hold_lock, release_lock

    hold_lock(tmp_path)
    child = os.fork()
    if child == 0:  # shares the held file, as a forked child does until it execs
        time.sleep(1.0)
        os._exit(0)
    try:
        hold_lock(tmp_path)  # the same process again: kept, not refused
    finally:
        os.waitpid(child, 0)
        release_lock(tmp_path)


def test_a_run_inside_another_run_is_refused_and_never_deleted_with_it(previous_run, tmp_path):
    """output_dir runs/base/continued (beside the adapter it continues, say) was allowed; `--overwrite` of runs/base
    then moved it aside with the rest and deleted it once the new base run finished."""
    inner = previous_run / "continued"
    with pytest.raises(RunDirError, match=r"lies inside the run directory .*run\b"):
        plan_output_dir(inner, overwrite=False, resume=False, protected={})
    plan_output_dir(previous_run / "stage-2", overwrite=False, resume=False, protected={}, stage_of=previous_run)
    # a run put there before (by hand, or by an earlier version): --overwrite of the outer run refuses, naming it
    inner.mkdir()
    write_info(inner, RunInfo(base_model="m", method="lora"))
    before = _tree(previous_run)
    with pytest.raises(RunDirError, match=r"holds another run directory, .*continued"):
        plan_output_dir(previous_run, overwrite=True, resume=False, protected={})
    assert plan_output_dir(previous_run, overwrite=True, resume=False, protected={}, overwrite_non_run=True).replace
    assert _tree(previous_run) == before
    shutil.rmtree(inner)
    (previous_run / "stage-1").mkdir()
    write_info(previous_run / "stage-1", RunInfo(base_model="m", method="lora"))  # its own stages are its to replace
    assert plan_output_dir(previous_run, overwrite=True, resume=False, protected={}).replace


def test_a_stage_folder_is_written_only_by_its_staged_run(tiny_overrides, previous_run):
    """`train --overwrite` with output_dir runs/a/stage-1 (a stage of the staged run runs/a) was allowed, as the
    staged run's own stages are: it replaced the stage the later stages, --resume and report of runs/a read."""
    stage = previous_run / "stage-1"
    stage.mkdir()
    write_info(stage, RunInfo(base_model="m", method="lora", finished=True))
    before = _tree(previous_run)
    for output_dir in (stage, previous_run / "stage-3"):  # replaced, or a new stage put there by hand
        says = f"output_dir {output_dir} is the stage folder {output_dir.name} of the staged run {previous_run}, which"
        with pytest.raises(RunDirError, match=re.escape(says)) as refused:
            recipe.train(None, tiny_overrides | {"output_dir": str(output_dir), "overwrite": True})
        # a Python caller is told its own arguments, not the CLI's flags
        assert "with overrides['overwrite'] = True or resume=True)" in str(refused.value)
        assert "--" not in str(refused.value)
    assert _tree(previous_run) == before
    other = previous_run.parent / "other"  # another run's stage_of is not this run's
    with pytest.raises(RunDirError, match=r"is the stage folder stage-1 of the staged run.*--overwrite or --resume\)"):
        plan_output_dir(stage, overwrite=True, resume=False, protected={}, stage_of=other)
    plan = plan_output_dir(stage, overwrite=True, resume=False, protected={}, stage_of=previous_run)  # its own
    assert plan.replace


def test_a_second_overwrite_refused_by_the_lock_gives_no_way_back_that_deletes_the_first(
    tiny_overrides, previous_run, tmp_path, capsys
):
    """While one `train --overwrite` wrote NAME (the old run in NAME.previous), a second one was refused by the lock
    but printed "to get it back: rm -r NAME && mv NAME.previous NAME", which deleted the first process's run."""
    import fcntl

    previous_run.rename(tmp_path / "run.previous")
    (tmp_path / "run.previous" / REPLACED_FILE).write_text(json.dumps({"replaced_by": str(previous_run)}) + "\n")
    previous_run.mkdir()
    write_info(previous_run, RunInfo(base_model="m", method="lora"))  # the first process's run, under way
    held = os.open(previous_run / LOCK_FILE, os.O_RDWR | os.O_CREAT)
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        capsys.readouterr()
        with pytest.raises(RunDirError, match="another tunelab process is writing this run"):
            recipe.train(None, tiny_overrides | {"overwrite": True})
    finally:
        os.close(held)
    err = capsys.readouterr().err
    assert "rm -r" not in err and "to get it back" not in err
    assert (previous_run / "run.json").is_file() and (tmp_path / "run.previous" / "run.json").is_file()


def test_a_symbolic_link_to_nothing_is_refused_before_anything_is_loaded(tmp_path):
    """It was planned as a new folder, and refused only when the run started, after the model and data had loaded,
    as "cannot be created (File exists)"."""
    link = tmp_path / "out"
    link.symlink_to(tmp_path / "nowhere")
    with pytest.raises(RunDirError, match=r"symbolic link to .*nowhere, which does not exist"):
        plan_output_dir(link, overwrite=False, resume=False, protected={})
    assert not (tmp_path / "nowhere").exists()


def test_a_previous_run_resumed_where_it_was_moved_aside_is_not_deleted(previous_run, tmp_path, capsys):
    """After a mistaken --overwrite, the old run was resumed in NAME.previous (--output_dir NAME.previous --resume);
    when the new run in NAME finished, NAME.previous was deleted with the resumed run in it."""
    from tunelab.training.outdir import OutputPlan, finish_replacement

    aside = tmp_path / "run.previous"
    previous_run.rename(aside)
    (aside / REPLACED_FILE).write_text("{}\n")
    marked = (aside / REPLACED_FILE).stat().st_mtime
    os.utime(aside / "run.json", (marked + 5, marked + 5))  # the resume rewrote run.json after the move
    previous_run.mkdir()
    message = finish_replacement(OutputPlan(previous_run, replace=True, resume=False))
    assert (aside / "run.json").is_file() and "kept" in message and "resumed" in message
    assert f"resumed since (--output_dir {aside} --resume), so it is not deleted" in message
    # a Python caller resumed it with train's output_dir and resume=True: told so, not of flags it never typed
    message = finish_replacement(OutputPlan(previous_run, replace=True, resume=False), PYTHON)
    assert f"resumed since (output_dir {aside} and resume=True), so it is not deleted" in message
    assert "--" not in message and (aside / "run.json").is_file()
    os.utime(aside / "run.json", (marked - 5, marked - 5))  # untouched since the move: deleted, as before
    assert "replaced the previous run" in finish_replacement(OutputPlan(previous_run, replace=True, resume=False))
    assert not aside.exists()


def test_overwrite_non_run_without_overwrite_says_it_needs_overwrite(tmp_path):
    """`--overwrite-non-run` alone on a folder of files was answered "Pass --overwrite to replace it", as if the flag
    had not been given; given --overwrite, the next message asked for --overwrite-non-run."""
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep")
    with pytest.raises(RunDirError) as caught:
        plan_output_dir(folder, overwrite=False, resume=False, protected={}, overwrite_non_run=True)
    said = (
        "--overwrite-non-run replaces nothing by itself: it only lets --overwrite replace a folder that is not a run. "
        "Give --overwrite as well to replace it, or choose another output_dir."
    )
    assert said in str(caught.value)
    assert (folder / "notes.txt").read_text() == "keep"


def test_sigterm_after_the_old_run_moved_aside_says_how_to_get_it_back(tiny_overrides, previous_run, monkeypatch, capsys):  # fmt: skip
    """SIGTERM (kill, a scheduler) after --overwrite moved the old run to NAME.previous but before the loop started
    (its trackers opening, the step-0 evaluation) ended the process at once: nothing said where the old run waited.
    It now stops as a second SIGTERM does (Terminated, exit 143), with the note."""
    import signal

    from tunelab.errors import Terminated

    def killed(*args, **kwargs):
        assert callable(signal.getsignal(signal.SIGTERM)), "SIGTERM would end the process where it stands"
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(recipe, "open_trackers", killed)  # after the move, before the first step
    before = signal.getsignal(signal.SIGTERM)  # another test in this process may have left its own
    with pytest.raises(Terminated):
        recipe.train(None, tiny_overrides | {"train.max_steps": 1, "overwrite": True})
    err = capsys.readouterr().err
    assert f"to get it back: rm -r {previous_run} && mv {previous_run}.previous {previous_run}" in err
    assert (previous_run.parent / "run.previous" / "run.json").is_file()
    assert signal.getsignal(signal.SIGTERM) == before  # given back once the run stopped


def test_a_finished_run_without_checkpoints_is_not_told_to_resume(previous_run):
    """`tunelab train` into a finished run's folder said "--resume to continue it", and that --resume was then
    refused: nothing to continue from. Without a step checkpoint the advice is --overwrite or another folder;
    with one (train.keep_checkpoints_after_finish), --resume is still offered."""
    assert not list(previous_run.glob("checkpoints/step-*"))
    with pytest.raises(RunDirError) as err:
        plan_output_dir(previous_run, overwrite=False, resume=False, protected={})
    assert "a finished run is there" in str(err.value) and "--resume" in str(err.value)
    assert "--resume to continue it" not in str(err.value) and "resume=True" not in str(err.value)
    (previous_run / "checkpoints" / "step-0000002").mkdir(parents=True)
    with pytest.raises(RunDirError, match=r"--resume to continue it"):
        plan_output_dir(previous_run, overwrite=False, resume=False, protected={})
