"""The run directory's description: written and read in one place, damaged or foreign folders refused by name."""

import json
import re

import pytest

from tunelab.errors import RunDirError
from tunelab.run_info import RUN_FILE, RunInfo
from tunelab.rundir import is_run_dir, open_info, read_info, write_info


def test_round_trip_keeps_every_field_and_unknown_keys(tmp_path):
    info = RunInfo(base_model="m", method="lora", quantize_base="nf4", trust_remote_code=True, total_steps=3)
    write_info(tmp_path, info)
    assert is_run_dir(tmp_path)
    assert read_info(tmp_path, require_finished=False) == info
    raw = json.loads((tmp_path / RUN_FILE).read_text()) | {"from_a_later_version": [1, 2]}
    (tmp_path / RUN_FILE).write_text(json.dumps(raw))
    again = read_info(tmp_path, require_finished=False)
    assert again.extra == {"from_a_later_version": [1, 2]} and again.quantize_base == "nf4"
    write_info(tmp_path, again)  # what a later version wrote survives this one's rewrite
    assert json.loads((tmp_path / RUN_FILE).read_text())["extra"] == {"from_a_later_version": [1, 2]}


@pytest.mark.parametrize(
    ("method", "quantize", "init", "again"),
    [("lora", "nf4", "default", True), ("dora", "nf4", "default", True), ("lora", "nf4", "pissa", False),
     ("lora", "nf4", "olora", False), ("lora", "none", "default", False), ("full", "nf4", "default", False)],
)  # fmt: skip
def test_only_a_qlora_run_started_as_usual_is_opened_over_nf4_again(method, quantize, init, again):
    """A QPiSSA run (nf4 with init pissa or olora) saved a plain LoRA over the original 16-bit weights."""
    info = RunInfo(base_model="m", method=method, quantize_base=quantize, init=init)
    assert info.nf4_again is again


def test_damaged_incomplete_and_foreign_folders_are_refused(tmp_path):
    with pytest.raises(RunDirError, match="no such run directory"):
        read_info(tmp_path / "missing")
    (tmp_path / "adapter_model.safetensors").write_bytes(b"")  # a file of a run given for the run
    with pytest.raises(
        RunDirError, match="is a file, not a run directory; give the folder that holds the run's run.json"
    ):
        read_info(tmp_path / "adapter_model.safetensors")
    (tmp_path / "adapter_model.safetensors").unlink()
    merged = tmp_path / "merged"  # what merge wrote, given for the run it came from
    merged.mkdir()
    (merged / "tunelab_merge.json").write_text("{}")
    with pytest.raises(RunDirError, match="a model 'tunelab merge' wrote .*, not a run directory; give that run"):
        read_info(merged)
    assert not is_run_dir(tmp_path)
    with pytest.raises(RunDirError, match="not a tunelab run directory"):
        read_info(tmp_path)
    (tmp_path / RUN_FILE).write_text('{"base_model": "m", "meth')
    with pytest.raises(RunDirError, match=r"run\.json: damaged"):
        read_info(tmp_path)
    (tmp_path / RUN_FILE).write_text('{"base_model": "m"}')
    with pytest.raises(RunDirError, match="method missing"):
        read_info(tmp_path)
    write_info(tmp_path, RunInfo(base_model="m", method="lora"))
    with pytest.raises(RunDirError, match="did not finish"):
        read_info(tmp_path)
    write_info(tmp_path, RunInfo(base_model="m", method="lora", finished=True))
    with pytest.raises(RunDirError, match="adapter is incomplete"):
        open_info(tmp_path)


def test_a_result_file_never_replaces_the_run_its_input_or_a_folder(tmp_path):
    from tunelab.config.flags import CLI
    from tunelab.places import check_output_file

    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text("{}")
    (run / "eval.json").write_text("{}")
    data = tmp_path / "q.jsonl"
    data.write_text("")
    cases = [
        (run, True, "is a folder"),
        (data, True, "is this command's input"),
        (run / "run.json", True, "is a file of the run itself; overwrite=True replaces only its eval.json. Write"),
        (run / "eval.json", False, "exists. Pass overwrite=True to replace it, or out= to write elsewhere."),
        (tmp_path / "nowhere" / "e.json", False, "no such directory"),
    ]
    for path, overwrite, says in cases:
        with pytest.raises(RunDirError, match=re.escape(says)):
            check_output_file(path, overwrite, run, "eval.json", (data,))
    with pytest.raises(RunDirError, match=re.escape("is a file of the run itself; --overwrite replaces only its eval")):
        check_output_file(run / "run.json", True, run, "eval.json", (data,), spelling=CLI)
    with pytest.raises(RunDirError, match=re.escape("exists. Pass --overwrite to replace it, or --out to write")):
        check_output_file(run / "eval.json", False, run, "eval.json", (data,), spelling=CLI)
    check_output_file(run / "eval.json", True, run, "eval.json", (data,))  # its own file, with --overwrite
    check_output_file(tmp_path / "nowhere" / "r.html", False, run, "report.html", mkdir=True)


def test_a_file_where_a_folder_of_the_output_would_be_is_said_before_the_work(tmp_path, capsys):
    """`report --out notes.txt/r.html` and `check --html notes.txt/c.html` did their work, then ended in a
    FileExistsError traceback making the folder."""
    from tunelab.checks.run import html_path
    from tunelab.cli import main
    from tunelab.places import check_output_file

    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text("{}")
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    with pytest.raises(RunDirError, match=re.escape(f"{notes} is a file, not a folder")):
        check_output_file(notes / "deeper" / "r.html", False, run, "report.html", mkdir=True)
    with pytest.raises(RunDirError, match=re.escape(f"--html {notes}/c.html: {notes} is a file, not a folder")):
        html_path(notes / "c.html")
    write_info(run, RunInfo(base_model="m", method="lora", finished=True))
    assert main(["report", str(run), "--out", str(notes / "r.html")]) == 2
    err = capsys.readouterr().err
    assert f"{notes} is a file, not a folder" in err and "Traceback" not in err
    assert notes.read_text() == "mine"


def test_a_result_file_never_goes_into_another_run_as_its_own(tmp_path):
    """`eval A --out B/eval.json` put A's scores where B's report reads its own: B's report showed A's numbers. The
    other run's folder takes other names, and a folder that is no run takes any."""
    from tunelab.places import check_output_file

    run, other = tmp_path / "a", tmp_path / "b"
    for folder in (run, other):
        folder.mkdir()
        write_info(folder, RunInfo(base_model="m", method="lora", finished=True))
    for own in ("eval.json", "report.html"):
        with pytest.raises(RunDirError, match=re.escape(f"is where the run {other} keeps its own {own}")):
            check_output_file(other / own, True, run, own)
    check_output_file(tmp_path / "eval.json", False, run, "eval.json")


def test_a_new_result_file_never_goes_into_a_run_directory_whose_overwrite_would_refuse_or_delete_it(tmp_path):
    """`predict A --out A/preds.csv` or `eval A --out B/a-eval.json` wrote there; `tunelab train --overwrite` of that
    run then deleted the file with the run, without a word. It now refuses such a file, naming it, and only
    --overwrite-non-run deletes it: the refusal says so, not that --overwrite would delete it."""
    from tunelab.places import check_output_file

    run, other = tmp_path / "a", tmp_path / "b"
    for folder in (run, other):
        folder.mkdir()
        write_info(folder, RunInfo(base_model="m", method="lora", finished=True))
    for path, own in (
        (run / "preds.csv", ""),
        (other / "a-eval.json", "eval.json"),
        (run / "x" / "r.html", "report.html"),
    ):
        with pytest.raises(RunDirError, match=re.escape(f"{path}: is inside the run directory")) as caught:
            check_output_file(path, False, run, own, mkdir=True)
        assert "stops that run's 'tunelab train --overwrite' (refused, naming it)" in str(caught.value)
        assert "'--overwrite-non-run' deletes it" in str(caught.value)
    check_output_file(run / "eval.json", False, run, "eval.json")  # the run's own result stays allowed
    check_output_file(tmp_path / "preds.csv", False, run, "")


def test_a_result_file_never_goes_into_the_data_folder_it_reads(tmp_path, capsys):
    """`predict --data inputs/ --out inputs/preds.jsonl` wrote into the folder it read, whose every file is data: the
    next predict read the predictions as input rows (and with --overwrite, a result could replace one of them)."""
    from tunelab.cli import main
    from tunelab.places import check_output_file

    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(
        json.dumps({"base_model": "x", "method": "lora", "finished": True, "task": "classify"})
    )
    inputs = tmp_path / "inputs"
    (inputs / "more").mkdir(parents=True)
    (inputs / "a.jsonl").write_text('{"text": "hi"}\n')
    for path in (inputs / "preds.jsonl", inputs / "a.jsonl", inputs / "more" / "p.jsonl"):
        with pytest.raises(RunDirError, match=re.escape(f"{path}: is inside {inputs}, this command's input folder")):
            check_output_file(path, True, run, "", (inputs,))
    check_output_file(tmp_path / "preds.jsonl", False, run, "", (inputs,))  # beside it: fine
    assert main(["predict", str(run), "--data", str(inputs), "--out", str(inputs / "p.jsonl")]) == 2
    assert "this command's input folder" in capsys.readouterr().err


def test_a_result_file_never_replaces_a_device_or_a_pipe(tmp_path):
    """`eval RUN --out /dev/null --overwrite` as root renamed the result onto /dev/null, replacing the device with a
    file of scores; a pipe or device is refused."""
    import os

    from tunelab.places import check_output_file

    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text("{}")
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    with pytest.raises(RunDirError, match=re.escape(f"{pipe}: is not a regular file (a device, pipe or socket)")):
        check_output_file(pipe, True, run, "eval.json")
    assert not pipe.is_file() and pipe.exists()


def test_a_result_file_never_replaces_a_client_file_or_a_function_file_of_the_run(tmp_path):
    """The files a result may never replace were those of data.train, data.eval and eval.questions: a federated run's
    client files and split file, and the .py file of data.transform, were replaced by `eval --out ... --overwrite`."""
    from tunelab.places import check_output_file

    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"base_model": "x", "method": "lora", "finished": True}))
    files = {name: tmp_path / name for name in ("a.jsonl", "b.jsonl", "shaping.py")}
    for path in files.values():
        path.write_text("")
    (run / "config.yaml").write_text(
        json.dumps(
            {
                "model": {"name": "x"},
                "data": {"train": [], "transform": f"{files['shaping.py']}:clean"},
                "federated": {"clients": [str(files["a.jsonl"]), str(files["b.jsonl"])]},
            }
        )
    )
    for name, option in (
        ("a.jsonl", "federated.clients"),
        ("b.jsonl", "federated.clients"),
        ("shaping.py", "data.transform"),
    ):
        with pytest.raises(RunDirError, match=re.escape(f"{files[name]}: is a file of {option} of the run's config")):
            check_output_file(files[name], True, run, "eval.json")


def test_a_result_file_never_replaces_a_file_of_another_run_a_stage_or_a_checkpoint(tmp_path):
    """Only the run's own top-level files were protected: `eval A --out B/adapter_model.safetensors --overwrite` (or
    `predict A --out B/metrics.jsonl`) replaced another run's files, and an output into A's stage or checkpoint
    folders replaced what --resume and the stage chain read."""
    from tunelab.places import check_output_file

    run, other = tmp_path / "a", tmp_path / "b"
    for folder in (run, other, run / "stage-1"):
        folder.mkdir()
        write_info(folder, RunInfo(base_model="m", method="lora", finished=True))
    (run / "checkpoints" / "step-2").mkdir(parents=True)
    victims = [other / "adapter_model.safetensors", other / "metrics.jsonl", run / "stage-1" / "metrics.jsonl"]
    victims.append(run / "checkpoints" / "step-2" / "state.json")
    for path in victims:
        path.write_text("{}")
    for path, holder in zip(victims, (other, other, run / "stage-1", run)):
        with pytest.raises(RunDirError, match=re.escape(f"{path}: is a file of the run directory {holder}")):
            check_output_file(path, True, run, "eval.json")
    (run / "eval.json").write_text("{}")
    check_output_file(run / "eval.json", True, run, "eval.json")  # its own result, with --overwrite


def test_a_run_from_before_run_json_recorded_qlora_is_read_as_qlora(tmp_path):
    """run.json records quantize_base and trust_remote_code since 2026-12-01; a QLoRA run written before was read
    with the default 'none' and opened over the 16-bit base instead of the NF4 base it trained on. Its config.yaml,
    which has always held both, fills them in."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"base_model": "m", "method": "lora", "finished": True}))
    (run / "config.yaml").write_text(
        "model: {name: m, trust_remote_code: true}\nmethod: {name: lora, quantize_base: nf4}\ndata: {train: []}\n"
    )
    info = read_info(run)
    assert info.quantize_base == "nf4" and info.trust_remote_code is True
    recorded = {
        "base_model": "m",
        "method": "lora",
        "finished": True,
        "quantize_base": "none",
        "trust_remote_code": False,
    }
    (run / "run.json").write_text(json.dumps(recorded))
    info = read_info(run)  # what run.json records wins
    assert info.quantize_base == "none" and info.trust_remote_code is False


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("finished", "false", "true or false"),
        ("steps", -3, "a whole number >= 0"),
        ("fixed_untrained_tokens", {"embed_tokens": [-1]}, "an object of lists of whole numbers >= 0"),
        ("data_files", ["a.jsonl"], "an object of strings"),
        ("base_model", 7, "a string"),
        ("final_loss", "0.5", "a number or null"),
        ("task", "foo", "one of sft, classify, reward, dpo, grpo"),  # was opened as an sft run
        ("impl", "turbo", "one of fast, generic"),
        ("quantize_base", "NF4", "one of none, nf4"),  # was opened over the 16-bit base, not the NF4 it trained over
        ("init", "weird", "one of default, pissa, olora"),
        ("base_source", "cloud", 'one of "", alias, hub, local'),
        ("dtype", "float12", "one of float32, bfloat16, float16 or null"),  # was opened by generate, eval, merge
    ],
)
def test_a_field_of_the_wrong_type_or_range_is_refused_by_name(tmp_path, field, value, expected):
    """A hand-edited run.json was read as it was: "finished": "false" counted as finished, "task": "foo" as sft."""
    write_info(tmp_path, RunInfo(base_model="m", method="lora", finished=True))
    raw = json.loads((tmp_path / RUN_FILE).read_text()) | {field: value}
    (tmp_path / RUN_FILE).write_text(json.dumps(raw))
    with pytest.raises(RunDirError, match=re.escape(f"{tmp_path / RUN_FILE}: field '{field}' is")) as refused:
        read_info(tmp_path)
    assert expected in str(refused.value)


def test_a_run_that_recorded_no_dtype_or_a_known_one_still_opens(tmp_path):
    """null: a run written before run.json recorded its dtype."""
    for dtype in (None, "float32", "bfloat16", "float16"):
        write_info(tmp_path, RunInfo(base_model="m", method="lora", finished=True, dtype=dtype))
        assert read_info(tmp_path).dtype == dtype


def test_every_saved_field_has_a_check():
    from tunelab.run_info import FIELD_CHECKS, saved_fields

    assert set(saved_fields().values()) <= FIELD_CHECKS.keys()
    assert "file" not in saved_fields()


def test_a_repaired_row_beyond_the_vocabulary_names_the_file(tiny_run_dir, tmp_path):
    """An edited row id past the base's rows was an IndexError from deep in the repair."""
    import shutil

    import torch

    from tunelab.training.build import trained_base

    run = shutil.copytree(tiny_run_dir, tmp_path / "run")
    raw = json.loads((run / RUN_FILE).read_text()) | {"fixed_untrained_tokens": {"embed_tokens": [10**6]}}
    (run / RUN_FILE).write_text(json.dumps(raw))
    with pytest.raises(RunDirError, match=r"run\.json: field 'fixed_untrained_tokens' lists row 1000000 of embed_"):
        trained_base(read_info(run), torch.float32, torch.device("cpu"), quantize=False)


def test_eval_and_report_never_write_over_the_embedded_base_file(tmp_path, monkeypatch, capsys):
    """A run over the embedded model names it by its alias, which eval's and report's output check compared as a path:
    `eval --out` or `report --out` at the alias's .gguf file with --overwrite replaced the model every run over it needs
    (merge and export refused it). The alias's package here is a stand-in, so that the old code replaced no real model."""
    import sys

    from tunelab.cli import main
    from tunelab.config.model import EMBEDDED

    package, filename, _ = EMBEDDED["smollm2-135m-instruct"]
    (tmp_path / "site" / package).mkdir(parents=True)
    (tmp_path / "site" / package / "__init__.py").write_text("")
    model = tmp_path / "site" / package / filename
    model.write_bytes(b"GGUF the model")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, package, raising=False)
    run = tmp_path / "run"
    run.mkdir()
    write_info(run, RunInfo(base_model="smollm2-135m-instruct", method="lora", finished=True))
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (run / name).write_text("{}")
    data = tmp_path / "q.jsonl"
    data.write_text('{"question": "Hi?", "expected": "Hello."}\n')
    link = tmp_path / "link"
    link.symlink_to(model.parent)  # the package's folder by another name
    for args in (["report", str(run)], ["eval", str(run), "--data", str(data)]):
        assert main([*args, "--out", str(link / filename), "--overwrite"]) == 2
        err = capsys.readouterr().err
        assert f"{link / filename}: is a file of the base model smollm2-135m-instruct" in err, err
        assert model.read_bytes() == b"GGUF the model"


def test_a_base_kept_as_typed_is_found_where_training_ran_or_refused_by_name(
    tiny_run_dir, tiny_model_dir, tmp_path, monkeypatch, capsys
):
    """Runs written before 2026-12-03 record a local base as typed ("models/tiny"), relative to the folder training
    ran in. From another folder it was taken for a hub id (an error about huggingface.co), or a folder of that name
    there was opened as the base without a word. It is found in the folder training ran in (the run directory less
    its relative output_dir) now, and where it is not there, the commands that load it name run.json and the field."""
    import shutil

    from tunelab.cli import main

    proj = tmp_path / "proj"
    shutil.copytree(tiny_model_dir, proj / "models" / "tiny")
    run = proj / "runs" / "a"
    shutil.copytree(tiny_run_dir, run)
    config = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(re.sub(r"(?m)^output_dir: .*$", "output_dir: runs/a", config))
    raw = json.loads((run / RUN_FILE).read_text())
    raw["base_model"] = "models/tiny"  # as typed in proj, before runs kept the absolute path and the fingerprint
    for key in ("base_fingerprint", "base_source", "base_revision", "config_digest"):  # what such runs did not record
        del raw[key]
    (run / RUN_FILE).write_text(json.dumps(raw))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert read_info(run).base_model == str(proj / "models" / "tiny")
    assert main(["merge", str(run), "--out", "merged"]) == 0, capsys.readouterr().err
    assert (elsewhere / "merged" / "model.safetensors").is_file()

    (proj / "models" / "tiny").rename(proj / "models" / "tiny-moved")
    shutil.copytree(tiny_model_dir, elsewhere / "models" / "tiny")  # another model of that name here
    assert read_info(run).base_model == "models/tiny"  # what needs no base still reads the run
    assert main(["merge", str(run), "--out", "merged-2"]) == 2
    err = capsys.readouterr().err
    assert f"{run / RUN_FILE}: field 'base_model' is \"models/tiny\", a path relative to {proj}" in err, err
    assert f"{proj / 'models' / 'tiny'} does not exist; {elsewhere / 'models' / 'tiny'} is here" in err
    assert not (elsewhere / "merged-2").exists()


def test_a_new_result_file_never_goes_into_a_data_folder_of_the_run(tmp_path, capsys):
    """Only an existing file of the run's data was refused: `predict RUN --data new.jsonl --out train/preds.jsonl`,
    with data.train the folder train/, added its rows (text and label) to what the next training of the run read,
    without a word."""
    from tunelab.cli import main
    from tunelab.places import check_output_file

    run, train = tmp_path / "run", tmp_path / "train"
    run.mkdir()
    train.mkdir()
    (train / "a.jsonl").write_text('{"text": "hi", "label": "x"}\n')
    write_info(run, RunInfo(base_model="x", method="lora", finished=True, task="classify"))
    (run / "config.yaml").write_text(json.dumps({"model": {"name": "x"}, "data": {"train": [str(train)]}}))
    inputs = tmp_path / "new.jsonl"
    inputs.write_text('{"text": "hello"}\n')
    says = "is where data.train of the run's config reads its data"
    for path, own in ((train / "preds.jsonl", ""), (train / "sub" / "eval.json", "eval.json")):
        with pytest.raises(RunDirError, match=re.escape(f"{path}: {says}")):
            check_output_file(path, False, run, own, mkdir=True)
    assert main(["predict", str(run), "--data", str(inputs), "--out", str(train / "preds.jsonl")]) == 2
    assert says in capsys.readouterr().err
    assert sorted(p.name for p in train.iterdir()) == ["a.jsonl"]
    check_output_file(tmp_path / "preds.jsonl", False, run, "")  # beside it: fine


def test_a_result_path_under_a_data_file_is_named_as_under_a_file(tmp_path):
    """`report RUN --out qa.jsonl/r.html`, qa.jsonl being the run's data file, was refused as the place where
    data.train reads its data, which sent the user looking for a data folder: the path is under a file."""
    from tunelab.places import check_output_file

    run, data = tmp_path / "run", tmp_path / "qa.jsonl"
    run.mkdir()
    data.write_text('{"prompt": "hi", "completion": "hello"}\n')
    write_info(run, RunInfo(base_model="x", method="lora", finished=True))
    (run / "config.yaml").write_text(json.dumps({"model": {"name": "x"}, "data": {"train": [str(data)]}}))
    out = data / "r.html"
    with pytest.raises(RunDirError, match=re.escape(f"{out}: {data} is a file, not a folder")):
        check_output_file(out, False, run, "report.html", mkdir=True)


def test_a_result_file_under_a_file_is_refused_by_name(tmp_path, capsys):
    """`report RUN --out notes.txt/r.html` ended in a NotADirectoryError traceback after the page was drawn, and
    `eval --out notes.txt/r.json` called the file no such directory."""
    from tunelab.cli import main

    run = tmp_path / "run"
    run.mkdir()
    write_info(run, RunInfo(base_model="x", method="lora", finished=True))
    (tmp_path / "notes.txt").write_text("mine")
    for out in (tmp_path / "notes.txt" / "r.html", tmp_path / "notes.txt" / "sub" / "r.html"):
        assert main(["report", str(run), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"{out}: {tmp_path / 'notes.txt'} is a file, not a folder" in err, err
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_no_output_replaces_the_base_a_staged_run_started_from(tmp_path):
    """A staged run whose later stages continue from merged models describes the last stage, over stage K-1's merged
    model: the base stage 1 trained over (which compare and eval open as the run's base) was not protected, and
    `export --gguf base.gguf --overwrite` or `eval --out base.gguf --overwrite` replaced it."""
    from tunelab.export.merge import check_output
    from tunelab.places import check_output_file

    base = tmp_path / "base.gguf"
    base.write_bytes(b"GGUF")
    run = tmp_path / "run"
    (run / "stage-1" / "merged").mkdir(parents=True)
    (run / "stage-2").mkdir()
    write_info(run / "stage-1", RunInfo(base_model=str(base), method="lora", finished=True))
    merged = str(run / "stage-1" / "merged")
    write_info(run / "stage-2", RunInfo(base_model=merged, method="lora", finished=True))
    stages = [{"dir": "stage-1"}, {"dir": "stage-2"}]
    write_info(run, RunInfo(base_model=merged, method="lora", finished=True, extra={"stages": stages}))
    says = f"the base model {base} of stage-1"
    with pytest.raises(RunDirError, match=re.escape(f"--gguf {base}: the output would replace {base}, {says}")):
        check_output(base, run, True, "--gguf")
    with pytest.raises(RunDirError, match=re.escape(f"{base}: is a file of {says}")):
        check_output_file(base, True, run, "eval.json")
    assert base.read_bytes() == b"GGUF"
    check_output(tmp_path / "m.gguf", run, True, "--gguf")  # beside it: fine


def test_an_old_adapter_run_without_its_config_is_not_opened_over_a_guessed_base(tiny_run_dir, tmp_path, capsys):
    """A run written before run.json recorded quantize_base takes it from config.yaml; with that file gone it was
    opened over the 16-bit base without a word, though a QLoRA adapter learned to correct the NF4 one. The commands
    that load the base now refuse, naming run.json and the missing file; those that do not (report) still read it."""
    import shutil

    from tunelab.cli import main

    run = tmp_path / "run"
    shutil.copytree(tiny_run_dir, run)
    raw = json.loads((run / RUN_FILE).read_text())
    del raw["quantize_base"], raw["trust_remote_code"]
    (run / RUN_FILE).write_text(json.dumps(raw))
    (run / "config.yaml").unlink()
    assert read_info(run).quantize_base == "none"  # readable, for what needs no base
    assert main(["merge", str(run), "--out", str(tmp_path / "merged")]) == 2
    err = capsys.readouterr().err
    assert f"{run / RUN_FILE}: records no 'quantize_base'" in err and "config.yaml is missing" in err, err
    assert not (tmp_path / "merged").exists()


def test_check_never_writes_its_page_into_a_folder_inside_a_run(tmp_path):
    """check --html refused a run directory but wrote run/checkpoints/c.html, a page inside the run."""
    from tunelab.checks.run import html_path

    run = tmp_path / "run"
    run.mkdir()
    write_info(run, RunInfo(base_model="m", method="lora", finished=True))
    for inside in (run / "c.html", run / "checkpoints" / "c.html"):
        with pytest.raises(RunDirError, match=re.escape(f"{run} is a run directory, which check never writes into")):
            html_path(inside)
    assert html_path(tmp_path / "pages" / "c.html") == tmp_path / "pages" / "c.html"


def test_an_unfinished_run_is_refused_saying_why_it_stopped(tmp_path):
    """`tunelab compare` of a stopped run said "resume it with --resume" whatever stopped it: a run the non-finite
    guard stopped would stop again, and a run still training has nothing to resume. run.json's end says which."""
    cases = [
        ({"reason": "interrupted", "step": 4, "signal": "SIGINT"}, r"\(interrupted after step 4\); resume it with"),
        (
            {"reason": "non_finite", "step": 4},
            r"guard stopped the run at step 4.*would stop again: train it again with a ",
        ),
        ({"reason": "error", "step": 3, "error": "OSError: disk"}, r"an error stopped it after step 3: OSError: disk"),
        ({}, r"\(it is still training, or stopped at step 2\); once it has stopped, resume it"),
    ]
    for end, message in cases:
        write_info(tmp_path, RunInfo(base_model="m", method="lora", steps=2, end=end))
        with pytest.raises(RunDirError, match=message):
            read_info(tmp_path)


def test_an_unfinished_run_names_resume_as_its_caller_gives_it(tmp_path, tiny_run_dir, capsys):
    """read_info told every caller "resume it with 'tunelab train CONFIG --resume'", and a run the guard stopped
    "(--overwrite, or another output_dir)": a Python caller now gets train's arguments, a CLI user the flags."""
    from tunelab.config.flags import CLI, PYTHON

    write_info(tmp_path, RunInfo(base_model="m", method="lora", steps=2, end={"reason": "interrupted", "step": 2}))
    with pytest.raises(RunDirError, match=r"resume it with tunelab\.train\(CONFIG, resume=True\) first") as python:
        read_info(tmp_path, spelling=PYTHON)
    with pytest.raises(RunDirError, match="resume it with 'tunelab train CONFIG --resume' first") as cli:
        read_info(tmp_path, spelling=CLI)
    assert "--resume" not in str(python.value) and "resume=True" not in str(cli.value)
    write_info(tmp_path, RunInfo(base_model="m", method="lora", steps=2, end={"reason": "non_finite", "step": 2}))
    with pytest.raises(RunDirError, match=r"in a new run \(overrides\['overwrite'\] = True, or another output_dir\)"):
        read_info(tmp_path, spelling=PYTHON)
    with pytest.raises(RunDirError, match=r"in a new run \(--overwrite, or another output_dir\)"):
        read_info(tmp_path, spelling=CLI)

    # end to end: the Python API and the CLI opening a stopped run
    import tunelab
    from tunelab.cli import main

    stopped = tmp_path / "stopped"
    stopped.mkdir()
    info = json.loads((tiny_run_dir / RUN_FILE).read_text()) | {"finished": False, "end": {"reason": "interrupted"}}
    (stopped / RUN_FILE).write_text(json.dumps(info))
    with pytest.raises(RunDirError) as python:
        tunelab.generate(stopped, "hi", device="cpu")
    assert "tunelab.train(CONFIG, resume=True)" in str(python.value) and "--resume" not in str(python.value)
    assert main(["generate", str(stopped), "--device", "cpu", "hi"]) == RunDirError.exit_code
    err = capsys.readouterr().err
    assert "'tunelab train CONFIG --resume'" in err and "resume=True" not in err
