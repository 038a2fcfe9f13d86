"""`--overwrite` replaces a run directory whole, so it refuses one holding a file or folder tunelab did not write
there (a user's notes, their data): nothing of theirs goes with the run. What tunelab writes there is not foreign."""

import json
import shutil

import pytest

import tunelab.training.recipe as recipe
from tunelab.cli import main
from tunelab.config.flags import PYTHON
from tunelab.errors import RunDirError
from tunelab.training.outdir import REPLACED_FILE, OutputPlan, finish_replacement, plan_output_dir
from tunelab.training.run_files import RUN_ENTRIES, foreign_entries


@pytest.fixture
def previous_run(tiny_run_dir, tmp_path):
    """A copy of a finished run, where a new run will be asked to go."""
    return shutil.copytree(tiny_run_dir, tmp_path / "run")


def _replace(run_dir, **options):
    return plan_output_dir(run_dir, overwrite=True, resume=False, protected={}, **options)


def test_overwrite_refuses_a_run_holding_a_file_of_the_users_and_keeps_it(previous_run, tiny_overrides, cli_flags, capsys):  # fmt: skip
    (previous_run / "notes.txt").write_text("mine")
    (previous_run / "my data").mkdir()
    (previous_run / "my data" / "rows.jsonl").write_text("{}\n")
    flags = cli_flags(tiny_overrides | {"output_dir": str(previous_run), "train.max_steps": 1})
    assert main(["train", *flags, "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "2 files or folders (my data/, notes.txt) that tunelab did not write there" in err
    assert "Move them out of" in err and "choose another output_dir" in err and "--overwrite-non-run" in err
    assert "Traceback" not in err
    assert (previous_run / "notes.txt").read_text() == "mine" and (previous_run / "my data" / "rows.jsonl").is_file()
    assert not previous_run.with_name("run.previous").exists()
    with pytest.raises(RunDirError) as caught:  # a Python caller is told of its own arguments
        recipe.train(None, tiny_overrides | {"output_dir": str(previous_run), "overwrite": True})
    assert "overrides['overwrite'] = True replaces the run directory" in str(caught.value)
    assert "overwrite_non_run=True if they may be deleted" in str(caught.value) and "--" not in str(caught.value)


def test_many_foreign_files_are_counted_and_five_named(previous_run):
    for i in range(7):
        (previous_run / f"note-{i}.txt").write_text("mine")
    (previous_run / "checkpoints").mkdir(exist_ok=True)
    (previous_run / "checkpoints" / "keep.bin").write_text("mine")
    with pytest.raises(RunDirError) as caught:
        _replace(previous_run, spelling=PYTHON)
    assert "holds 8 files or folders (checkpoints/keep.bin, note-0.txt, note-1.txt, note-2.txt, note-3.txt, and 3 more)" in str(caught.value)  # fmt: skip


def test_without_a_file_of_the_users_the_run_is_replaced_as_before(previous_run, tiny_overrides):
    old = json.loads((previous_run / "run.json").read_text())
    result = recipe.train(None, tiny_overrides | {"output_dir": str(previous_run), "overwrite": True})
    assert result.run_dir == previous_run and (previous_run / "adapter_model.safetensors").is_file()
    assert json.loads((previous_run / "run.json").read_text()) != old
    assert not previous_run.with_name("run.previous").exists()


def test_overwrite_non_run_lets_them_go(previous_run):
    (previous_run / "notes.txt").write_text("mine")
    assert _replace(previous_run, overwrite_non_run=True).anything


def test_what_compare_eval_and_report_write_into_a_run_is_not_foreign(previous_run, tmp_path, capsys):
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"question": "Code of box 1?", "expected": "1037"}) + "\n")
    assert foreign_entries(previous_run) == []
    ask = ["--device", "cpu", "--max-new-tokens", "2"]
    assert main(["compare", str(previous_run), "--questions", str(questions), *ask]) == 0
    assert main(["eval", str(previous_run), "--data", str(questions), *ask]) == 0
    assert main(["report", str(previous_run)]) == 0
    capsys.readouterr()
    assert {"compare.json", "eval.json", "report.html"} <= {p.name for p in previous_run.iterdir()}
    assert foreign_entries(previous_run) == []
    assert _replace(previous_run).replace


def test_every_writers_name_is_known(tmp_path):
    """The names the writers keep next to their code, against RUN_ENTRIES (a writer's new file would otherwise make
    --overwrite refuse the runs it is in)."""
    from tunelab.eval.compare import COMPARE_FILE
    from tunelab.eval.evaluate import EVAL_FILE
    from tunelab.eval.report import REPORT_FILE
    from tunelab.federated import history
    from tunelab.models.tokenizer_files import TOKENIZER_ENTRIES
    from tunelab.run_info import RUN_FILE
    from tunelab.rundir import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, CONFIG_FILE
    from tunelab.training import metrics, tracking
    from tunelab.training.best import BEST_FILE
    from tunelab.training.checkpoint import STEP_PREFIX
    from tunelab.training.outdir import LOCK_FILE
    from tunelab.training.publish import STAGE_ONLY
    from tunelab.training.result import RESULT_FILES
    from tunelab.training.stage_plan import MERGED

    top = [RUN_FILE, CONFIG_FILE, ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, COMPARE_FILE, EVAL_FILE, REPORT_FILE]
    top += [metrics.METRICS_FILE, metrics.PLOT_FILE, tracking.TRACKER_RUNS, history.STATE_FILE, history.PLOT_FILE]
    top += [LOCK_FILE, *RESULT_FILES, *TOKENIZER_ENTRIES, *STAGE_ONLY, ".tmp-final", ".tmp-metrics.jsonl"]
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    for name in top:
        if not (run / name).exists():
            (run / name).write_text("")
    (run / "checkpoints" / f"{STEP_PREFIX}0000003").mkdir()
    (run / "checkpoints" / BEST_FILE).write_text("")
    (run / "stage-1").mkdir()
    (run / "stage-1" / MERGED).mkdir()
    (run / "stage-1" / "run.json").write_text("{}")
    assert foreign_entries(run) == []
    (run / MERGED).mkdir()  # a stage's merged model is in its stage folder, not at the top
    assert foreign_entries(run) == ["merged/"]


def test_a_file_put_into_the_old_run_while_the_new_one_trained_keeps_it(previous_run):
    previous = previous_run.with_name("run.previous")
    shutil.copytree(previous_run, previous)
    (previous / REPLACED_FILE).write_text("{}")
    (previous / "notes.txt").write_text("mine")
    message = finish_replacement(OutputPlan(previous_run, replace=True, resume=False))
    assert message.startswith(f"kept {previous}: it holds 1 file or folder (notes.txt)")
    assert (previous / "notes.txt").read_text() == "mine"
    (previous / "notes.txt").unlink()
    assert "replaced the previous run" in finish_replacement(OutputPlan(previous_run, replace=True, resume=False))
    assert not previous.exists()


def test_run_entries_name_no_file_a_user_is_likely_to_keep():
    """A pattern too wide would delete a user's file with the run."""
    from fnmatch import fnmatchcase

    for name in ("notes.txt", "README.md", "data.jsonl", "train.csv", "model.gguf", "my_config.json", "config.yml"):
        assert not any(fnmatchcase(name, pattern) for pattern in RUN_ENTRIES), name


def test_check_fails_the_output_dir_item_and_keeps_the_file(previous_run, tiny_overrides, tmp_path):
    import tunelab

    (previous_run / "notes.txt").write_text("mine")
    overrides = tiny_overrides | {"output_dir": str(previous_run), "overwrite": True}
    result = tunelab.check(None, overrides, model=False, html=tmp_path / "c.html")
    item = next(i for i in result.items if i.name == "output_dir")
    assert not result.passed and item.status == "fail" and "1 file or folder (notes.txt)" in item.summary
    assert tunelab.check(None, overrides, model=False, html=tmp_path / "c.html", overwrite_non_run=True).passed
    assert (previous_run / "notes.txt").read_text() == "mine"


def test_a_finished_run_deletes_its_checkpoints_but_not_a_file_of_the_users_beside_them(tmp_path, capsys):
    from tunelab.training.result import tidy_up

    run = tmp_path / "run"
    (run / "checkpoints" / "step-0000003").mkdir(parents=True)
    (run / "checkpoints" / "step-0000003" / "state.json").write_text("{}")
    (run / "checkpoints" / "best.safetensors").write_text("")
    (run / "checkpoints" / "mine.txt").write_text("mine")
    tidy_up(run, OutputPlan(run, replace=False, resume=False), keep_checkpoints=False)
    out = capsys.readouterr().out
    assert "deleted the step checkpoint" in out
    assert f"kept {run / 'checkpoints'}: it holds 1 file or folder (mine.txt) that tunelab did not write" in out
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["mine.txt"]
    (run / "checkpoints" / "mine.txt").unlink()
    tidy_up(run, OutputPlan(run, replace=False, resume=False), keep_checkpoints=False)
    assert not (run / "checkpoints").exists()


def test_a_stage_s_recorded_file_published_at_the_top_is_the_run_s_own(tmp_path):
    """A staged run's top holds the last stage's result linked or copied there (training/publish.py): a file the
    stage's save recorded (a remote-code tokenizer's .py, whose name is the model's) is the run's own there too, as
    long as it is that file; a copy changed since, or one no stage recorded, is not."""
    from tunelab.training.run_files import file_record

    run = tmp_path / "run"
    stage = run / "stage-1"
    stage.mkdir(parents=True)
    (stage / "tokenization_box.py").write_text("class Box: ...\n")
    (stage / "run.json").write_text(json.dumps({"result_files": {"tokenization_box.py": file_record(stage / "tokenization_box.py")}}))  # fmt: skip
    (run / "run.json").write_text("{}")
    shutil.copy2(stage / "tokenization_box.py", run / "tokenization_box.py")
    (run / "box_vocab.py").write_text("WORDS = ()\n")
    assert foreign_entries(run) == ["box_vocab.py"]
    (run / "tokenization_box.py").write_text("class Mine: ...\n")
    assert foreign_entries(run) == ["box_vocab.py", "tokenization_box.py"]
