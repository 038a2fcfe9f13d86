"""Where merge_run (and export's --gguf) may write: bad run directories and occupied outputs are refused without
writing; --overwrite replaces an earlier merge alone; the run, its base, its data, another run, the working folder, a
device, a path under a file and a read-only place are never outputs; a disk without room is refused before the
merge."""

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

from tunelab.errors import RunDirError
from tunelab.export.merge import merge_run

from ..smollm2_vocab import smollm2_tiny_model_dir, smollm2_tiny_tokenizer  # noqa: F401 (SmolLM2's vocabulary)
from .merge_setup import write_run


def test_bad_run_dirs_and_occupied_outputs_are_refused(lora_run, tmp_path):
    run, _ = lora_run
    with pytest.raises(RunDirError, match="no such run directory"):
        merge_run(tmp_path / "nope", tmp_path / "out")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RunDirError, match="not a tunelab run directory"):
        merge_run(empty, tmp_path / "out")

    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")
    with pytest.raises(RunDirError, match="not a merged model tunelab wrote"):  # not "pass --overwrite": it would not
        merge_run(run, occupied)
    assert [p.name for p in occupied.iterdir()] == ["keep.txt"]
    with pytest.raises(RunDirError, match="would replace the run directory"):
        merge_run(run, run.parent, overwrite=True)

    with pytest.raises(RunDirError, match="not a merged model tunelab wrote"):  # --overwrite: earlier merges only
        merge_run(run, occupied, overwrite=True)
    assert [p.name for p in occupied.iterdir()] == ["keep.txt"]
    with pytest.raises(RunDirError, match="is a file"):
        merge_run(run, occupied / "keep.txt", overwrite=True)
    merged = tmp_path / "merged"
    merge_run(run, merged)
    (merged / "model.safetensors").write_bytes(b"stale")
    merge_run(run, merged, overwrite=True)  # an earlier merge is replaced
    assert (merged / "model.safetensors").stat().st_size > 5
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".old-", ".tmp-"))]

    (run / "adapter_model.safetensors").unlink()
    with pytest.raises(RunDirError, match="adapter_model.safetensors missing"):
        merge_run(run, tmp_path / "out2")
    assert not (tmp_path / "out2").exists()


def test_overwrite_never_deletes_what_the_merge_did_not_write(lora_run, tmp_path):
    """`merge --overwrite` replaced an earlier merge's folder whole, with whatever had been put into it since: the
    GGUF llama.cpp's convert_hf_to_gguf.py writes into the model's folder, the user's notes. It now replaces an
    earlier merge only when every entry in it is one the merge wrote (tunelab_merge.json lists them; a merge from
    before that list, the names merges write), and otherwise names what would be lost, writing nothing."""
    from tunelab.rundir import MERGE_FILE

    run, _ = lora_run
    merged = merge_run(run, tmp_path / "merged")
    listed = json.loads((merged / MERGE_FILE).read_text())["files"]
    assert sorted(p.name for p in merged.iterdir()) == listed and MERGE_FILE in listed
    (merged / "Merged-F16.gguf").write_bytes(b"GGUF converted by llama.cpp")
    (merged / "notes").mkdir()
    with pytest.raises(RunDirError, match=r"merged: an earlier merge, but it also holds .*\(Merged-F16.gguf, notes\)"):
        merge_run(run, merged, overwrite=True)
    assert (merged / "Merged-F16.gguf").read_bytes() == b"GGUF converted by llama.cpp" and (merged / "notes").is_dir()

    (merged / "notes").rmdir()
    recorded = json.loads((merged / MERGE_FILE).read_text())
    del recorded["files"]  # a merge written before the list: its names are those merges write
    (merged / MERGE_FILE).write_text(json.dumps(recorded))
    with pytest.raises(RunDirError, match=r"it also holds what the merge did not write \(Merged-F16.gguf\)"):
        merge_run(run, merged, overwrite=True)
    (merged / "Merged-F16.gguf").unlink()
    merge_run(run, merged, overwrite=True)
    assert sorted(p.name for p in merged.iterdir()) == json.loads((merged / MERGE_FILE).read_text())["files"]


def test_an_output_no_overwrite_replaces_is_not_offered_overwrite(lora_run, tiny_run, tmp_path):
    """`merge --out` at a file, or at a folder that is not an earlier merge, said 'exists and is not empty. Pass
    --overwrite to replace it'; with --overwrite it then refused the same path for being a file or not a merge. So did
    `export --gguf` at a folder. Each now says at once why no --overwrite would write there."""
    from tunelab.export.gguf import export_gguf

    run, _ = lora_run
    (tmp_path / "notes.txt").write_text("mine")
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"\xff")
    for out, overwrite in [(tmp_path / "notes.txt", False), (folder, False), (tmp_path / "notes.txt", True)]:
        with pytest.raises(RunDirError) as refused:
            merge_run(run, out, overwrite=overwrite)
        assert "--overwrite to replace" not in str(refused.value)
        assert "is a file" in str(refused.value) or "not a merged model tunelab wrote" in str(refused.value)
    (tmp_path / "box.gguf").mkdir()
    (tmp_path / "box.gguf" / "x").write_text("x")
    with pytest.raises(RunDirError, match="is a directory; the export writes a file there") as refused:
        export_gguf(tiny_run, tmp_path / "box.gguf", check=False)
    assert "--overwrite to replace" not in str(refused.value)
    assert (tmp_path / "notes.txt").read_text() == "mine" and [p.name for p in folder.iterdir()] == ["a.jpg"]


def test_the_folder_the_command_runs_in_is_never_the_output(lora_run, tmp_path, monkeypatch, capsys):
    """`tunelab merge RUN --out .` in an empty folder ended in a ValueError traceback ('.' has no name to build the
    scratch folder beside); in an earlier merge with --overwrite it would pull the folder from under the shell."""
    from tunelab.cli import main

    run, _ = lora_run
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    for out in (".", "..", str(here)):
        assert main(["merge", str(run), "--out", out, "--overwrite"]) == 2
        err = capsys.readouterr().err
        assert "is the folder this command runs in" in err and "Traceback" not in err
    assert list(here.iterdir()) == []
    assert main(["merge", str(run), "--out", "merged"]) == 0 and (here / "merged" / "tunelab_merge.json").is_file()


def test_the_runs_own_base_is_never_an_output(lora_run, smollm2_tokenizer, tmp_path):
    """A run trained over an earlier merge: merging (or exporting) it over that merge with --overwrite replaced the
    base its adapter needs; every later command then opened the adapter over the wrong weights."""
    run, _ = lora_run
    first = merge_run(run, tmp_path / "merged-1")
    model = AutoModelForCausalLM.from_pretrained(first, dtype=torch.float32)
    second = write_run(tmp_path / "run-2", model, smollm2_tokenizer, first, "full")
    before = (first / "model.safetensors").read_bytes()
    with pytest.raises(RunDirError, match="the base model .*, which the run needs as it was"):
        merge_run(second, first, overwrite=True)
    assert (first / "model.safetensors").read_bytes() == before


def test_outputs_inside_the_run_or_the_base_folder_are_refused_naming_the_option(lora_run, tiny_model_dir, capsys):
    """`merge --out RUN/merged` or `export --gguf RUN/model.gguf` wrote into the run, among the files its commands
    read; an output inside the base model's folder put files among the weights the run needs as they
    were. Both are refused before anything is merged or written, naming the option."""
    from tunelab.cli import main

    run, _ = lora_run
    before = sorted(p.name for p in run.iterdir()), sorted(p.name for p in tiny_model_dir.iterdir())
    cases = [
        (["merge", str(run), "--out", str(run / "merged")], f"--out {run / 'merged'}: is inside the run directory"),
        (
            ["export", str(run), "--gguf", str(run / "m.gguf"), "--no-check"],
            f"--gguf {run / 'm.gguf'}: is inside the run",
        ),
        (["merge", str(run), "--out", str(tiny_model_dir / "merged")], "the folder of the base model"),
        (["export", str(run), "--gguf", str(tiny_model_dir / "m.gguf"), "--no-check"], "the folder of the base model"),
    ]
    for args, says in cases:
        assert main([*args, "--overwrite"]) == 2
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err
    assert (sorted(p.name for p in run.iterdir()), sorted(p.name for p in tiny_model_dir.iterdir())) == before


def test_outputs_inside_another_run_directory_are_refused_naming_the_option(lora_run, tmp_path, capsys):
    """`merge --out RUN_B/merged` was written into another run, and RUN_B's `train --overwrite` later deleted it."""
    from tunelab.cli import main
    from tunelab.run_info import RunInfo
    from tunelab.rundir import write_info

    run, _ = lora_run
    other = tmp_path / "other"
    other.mkdir()
    write_info(other, RunInfo(base_model="m", method="lora", finished=True))
    cases = [
        (["merge", str(run), "--out", str(other / "merged")], f"--out {other / 'merged'}: is inside the run directory"),
        (["merge", str(run), "--out", str(other / "a" / "b")], f"--out {other / 'a' / 'b'}: is inside the run"),
        (["export", str(run), "--gguf", str(other / "m.gguf"), "--no-check"], f"--gguf {other / 'm.gguf'}: is inside"),
    ]
    for args, says in cases:
        assert main(args) == 2
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err
    assert sorted(p.name for p in other.iterdir()) == ["run.json"]


def test_outputs_in_or_over_the_runs_data_are_refused_as_eval_and_predict_refuse(lora_run, tmp_path, capsys):
    """`merge --out train/merged`, train/ being the run's data.train folder, or `export --gguf eval.gguf` over its
    data.eval file or a folder holding it (--overwrite) wrote a model among the data the next training reads, or replaced the data; eval
    and predict refused the same paths."""
    from tunelab.cli import main

    run, _ = lora_run
    train, holder = tmp_path / "train", tmp_path / "data"
    train.mkdir()
    (train / "a.jsonl").write_text('{"prompt": "hi", "completion": "hello"}\n')
    (holder / "sub").mkdir(parents=True)
    evalf = holder / "sub" / "eval.jsonl"
    evalf.write_text('{"prompt": "hi", "completion": "hello"}\n')
    config = {"model": {"name": "x"}, "data": {"train": [str(train)], "eval": str(evalf)}}
    (run / "config.yaml").write_text(json.dumps(config))
    cases = [
        (["merge", str(run), "--out", str(train / "merged")], f"--out {train / 'merged'}: is where data.train"),
        (["export", str(run), "--gguf", str(train / "m.gguf"), "--no-check"], f"--gguf {train / 'm.gguf'}: is where"),
        (["merge", str(run), "--out", str(evalf)], f"--out {evalf}: is where data.eval of the run's config"),
        (["merge", str(run), "--out", str(holder)], f"--out {holder}: the output would replace {evalf}, data.eval"),
    ]
    for args, says in cases:
        assert main([*args, "--overwrite"]) == 2
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err, err
    assert sorted(p.name for p in train.iterdir()) == ["a.jsonl"]
    assert evalf.read_text() == '{"prompt": "hi", "completion": "hello"}\n'
    assert sorted(p.name for p in holder.iterdir()) == ["sub"]


def test_the_embedded_base_file_is_never_an_export_output(tmp_path):
    """A run over the embedded model names it by its alias, which no path check matched: `export --gguf` at the
    alias's .gguf file with --overwrite replaced the model every run over it needs."""
    from tunelab.errors import ModelError
    from tunelab.export.merge import check_output
    from tunelab.models.load import resolve_source

    try:
        source = resolve_source("smollm2-135m-instruct")
    except ModelError as exc:
        pytest.skip(f"the embedded model is not installed here: {exc}")
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(
        json.dumps({"base_model": "smollm2-135m-instruct", "method": "lora", "finished": True})
    )
    target = tmp_path / "link"
    target.symlink_to(source.path)  # the package's folder by another name
    with pytest.raises(RunDirError, match="--gguf .*the base model smollm2-135m-instruct, which the run needs"):
        check_output(target / source.gguf_file, run, True, "--gguf")
    check_output(tmp_path / "beside.gguf", run, True, "--gguf")  # elsewhere: no objection


def test_a_device_or_pipe_is_never_an_output(lora_run, tmp_path):
    """`merge RUN --out /dev/null` needed no --overwrite (neither a file nor a folder with files) and, run as root,
    moved the device aside and put the merged folder in its place."""
    import os

    from tunelab.export.merge import check_output

    run, _ = lora_run
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    for option, target in (("--out", pipe), ("--gguf", pipe)):
        with pytest.raises(RunDirError, match=f"{option} {pipe}: is not a regular file or folder"):
            check_output(target, run, True, option)
    with pytest.raises(RunDirError, match="is not a regular file or folder"):
        merge_run(run, pipe)
    assert pipe.exists() and not pipe.is_file()


def test_an_output_under_a_file_is_refused_by_name(lora_run, tmp_path, capsys):
    """`merge RUN --out notes.txt/m` and `export RUN --gguf notes.txt/m.gguf` said "cannot be written (File exists)",
    naming neither the file in the way nor what to do."""
    from tunelab.cli import main

    run, _ = lora_run
    (tmp_path / "notes.txt").write_text("mine")
    for option, out in (("--out", tmp_path / "notes.txt" / "m"), ("--gguf", tmp_path / "notes.txt" / "sub" / "m.gguf")):
        command = "merge" if option == "--out" else "export"
        assert main([command, str(run), option, str(out), *(["--no-check"] if command == "export" else [])]) == 2
        err = capsys.readouterr().err
        assert f"{option} {out}: {tmp_path / 'notes.txt'} is a file, not a folder" in err, err
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_read_only_output_place_is_refused_before_merging(lora_run, tmp_path, monkeypatch):
    """merge and export into a read-only folder merged (and converted) the whole model first, minutes for a large
    one, and failed only when writing; the place is now tried first, as the write will use it."""
    import errno
    import os
    from pathlib import Path

    import tunelab.export.gguf as gguf
    import tunelab.export.merge as merge
    from tunelab.errors import WriteFailed

    run, _ = lora_run
    locked = tmp_path / "locked"
    locked.mkdir()
    real_open, calls = Path.open, []

    def read_only(self, mode="r", *args, **kwargs):
        if locked in (self, *self.parents) and set(mode) & set("wax"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real_open(self, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "open", read_only)
    monkeypatch.setattr(merge, "merged_model", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(gguf, "merged_model", lambda *a, **k: calls.append(a))
    for out in (locked / "merged", locked / "new" / "merged"):
        with pytest.raises(WriteFailed, match=f"{out}: cannot be written \\(Read-only file system\\)"):
            merge_run(run, out)
    with pytest.raises(WriteFailed, match="m.gguf: cannot be written"):
        gguf.export_gguf(run, locked / "m.gguf", check=False)
    assert calls == [] and list(locked.iterdir()) == []


def test_a_merge_onto_a_full_disk_is_refused_without_a_traceback(lora_run, tmp_path, monkeypatch):
    """A merge onto a disk without room ended in a traceback (safetensors' 'No space left on device' is no OSError)
    and exit 1. It now measures the merged folder and refuses first (exit 2); a disk that fills anyway is said as a
    write that failed, naming the folder."""
    from transformers import PreTrainedModel

    import tunelab.atomic
    from tunelab.errors import WriteFailed

    run, _ = lora_run
    real = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(tunelab.atomic.shutil, "disk_usage", lambda _: real._replace(free=1000))
    with pytest.raises(WriteFailed, match="the merged model needs about .* MB on its disk, which has 0.0 MB free"):
        merge_run(run, tmp_path / "merged")
    monkeypatch.undo()

    def full(self, *args, **kwargs):
        from safetensors import SafetensorError

        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", full)
    with pytest.raises(WriteFailed, match="merged: cannot be written .*No space left on device"):
        merge_run(run, tmp_path / "merged")
    assert [p.name for p in tmp_path.iterdir() if "merged" in p.name] == []

    monkeypatch.undo()
    from tunelab.export.merge import saved_bytes, shapes_only

    for dtype in (torch.float32, torch.bfloat16):  # measured from the shapes alone, before the merge
        out = tmp_path / f"merged-{dtype}"
        merge_run(run, out, dtype=dtype)
        on_disk = sum(p.stat().st_size for p in out.iterdir())
        shapes = shapes_only(run)  # the tokenizer's files are estimated at 256 bytes a token: no less than they take
        assert on_disk <= saved_bytes(shapes, dtype) <= on_disk + 256 * shapes.config.vocab_size + 2**20


def test_a_merge_without_room_is_refused_before_the_merge(lora_run, tmp_path, monkeypatch):
    """The room was measured on the merged model, so a disk without it was said only after the minutes the merge
    of a large model takes (loading the base, folding every adapter in). It is now measured from the model's config
    before anything is loaded: the merge never starts, and nothing is written."""
    import tunelab.atomic
    import tunelab.export.merge
    from tunelab.errors import WriteFailed

    def no_merge(*args, **kwargs):
        raise AssertionError("the merge ran before the room was checked")

    run, _ = lora_run
    real = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(tunelab.atomic.shutil, "disk_usage", lambda _: real._replace(free=1000))
    monkeypatch.setattr(tunelab.export.merge, "merged_model", no_merge)
    with pytest.raises(WriteFailed, match=r"merged: the merged model needs about \d.* on its disk, which has 0.0 MB"):
        merge_run(run, tmp_path / "merged")
    assert list(tmp_path.iterdir()) == [tmp_path / "run"]


def test_a_model_transformers_cannot_build_from_its_config_is_measured_after_the_merge(lora_run, tmp_path, monkeypatch):
    """The room is measured from the model built on the meta device; a model transformers cannot build from its
    config alone (a class its auto-mapping lacks) must still merge, measured once merged, and a full disk still be
    refused then."""
    import transformers

    import tunelab.atomic
    from tunelab.errors import WriteFailed

    def cannot(*args, **kwargs):
        raise ValueError("Unrecognized configuration class for this kind of AutoModel")

    run, _ = lora_run
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_config", cannot)
    merge_run(run, tmp_path / "merged")
    assert (tmp_path / "merged" / "config.json").exists()
    real = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(tunelab.atomic.shutil, "disk_usage", lambda _: real._replace(free=1000))
    with pytest.raises(WriteFailed, match=r"merged-2: the merged model needs about \d"):
        merge_run(run, tmp_path / "merged-2")
    assert not (tmp_path / "merged-2").exists()
