"""tunelab.merge and tunelab.export_gguf name their output and overwrite as the caller gave them: argument 'out' and
overwrite=True to Python, --out / --gguf and --overwrite to the command line."""

import pytest

import tunelab
from tunelab.cli import main
from tunelab.config.flags import PYTHON
from tunelab.errors import RunDirError
from tunelab.export.merge import check_output


def test_a_python_caller_is_told_its_argument_out(tiny_run_dir, capsys):
    """tunelab.merge(run, RUN/merged) was refused as "--out RUN/merged: is inside the run directory", and
    export_gguf(run, RUN/m.gguf) as "--gguf ...": flags a Python caller never typed."""
    for call, out in (
        (lambda out: tunelab.merge(tiny_run_dir, out), tiny_run_dir / "merged"),
        (lambda out: tunelab.export_gguf(tiny_run_dir, out, check=False), tiny_run_dir / "m.gguf"),
    ):
        with pytest.raises(RunDirError) as caught:
            call(out)
        assert str(caught.value).startswith(f"argument 'out' ({out}): is inside the run directory"), str(caught.value)
    for command, flag in (("merge", "--out"), ("export", "--gguf")):
        out = tiny_run_dir / ("merged" if command == "merge" else "m.gguf")
        assert main([command, str(tiny_run_dir), flag, str(out), *(["--no-check"] if command == "export" else [])]) == 2
        assert f"{flag} {out}: is inside the run directory" in capsys.readouterr().err


def test_an_existing_output_asks_for_overwrite_as_the_caller_gives_it(tiny_run_dir, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "model.safetensors").write_text("an earlier merge's")
    with pytest.raises(
        RunDirError, match=r"^argument 'out' \(.*taken\): exists and is not empty\. Pass overwrite=True "
    ):
        check_output(out, tiny_run_dir, False, spelling=PYTHON)
    with pytest.raises(RunDirError, match=r"^--out .*taken: exists and is not empty\. Pass --overwrite to replace it"):
        check_output(out, tiny_run_dir, False)


@pytest.mark.parametrize("python", [True, False])
def test_outputs_in_a_run_or_on_its_data_name_overwrite_as_the_caller_gives_it(tiny_run_dir, tmp_path, python):
    """An output inside a run was refused to a Python caller as what "'tunelab train --overwrite'" replaces, and one
    on the run's data as what "{forced} never replaces" (the placeholder itself): each caller gets its own words."""
    from tunelab.config.flags import CLI
    from tunelab.run_info import RunInfo
    from tunelab.rundir import write_info

    other = tmp_path / "other"
    other.mkdir()
    write_info(other, RunInfo(base_model="m", method="lora", finished=True))
    retrain = "tunelab.train() with overrides['overwrite'] = True" if python else "'tunelab train --overwrite'"
    spelling = PYTHON if python else CLI
    for out, says in (
        (tiny_run_dir / "merged", f"where a file tunelab did not write stops {retrain} (refused, naming it)"),
        (other / "merged", f"where a file tunelab did not write stops {retrain} of that run (refused, naming it)"),
        (tiny_run_dir.parent / "qa.jsonl", f"{'overwrite=True' if python else '--overwrite'} never replaces data"),
    ):
        with pytest.raises(RunDirError) as caught:
            check_output(out, tiny_run_dir, True, spelling=spelling)
        assert says in str(caught.value), str(caught.value)
        assert ("--overwrite" in str(caught.value)) is not python


@pytest.mark.parametrize("python", [True, False])
def test_an_output_no_merge_or_export_wrote_names_overwrite_as_the_caller_gives_it(
    tiny_run_dir, tmp_path, capsys, python
):
    """tunelab.merge and tunelab.export_gguf over a folder or file of the user's own said "--overwrite replaces only"
    and "choose another --gguf name" to a Python caller too."""
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    (tmp_path / "mine.gguf").write_text("mine")
    if python:
        with pytest.raises(RunDirError) as merged:
            tunelab.merge(tiny_run_dir, tmp_path / "mine", overwrite=True)
        with pytest.raises(RunDirError) as exported:
            tunelab.export_gguf(tiny_run_dir, tmp_path / "mine.gguf", overwrite=True, check=False)
        said = [str(merged.value), str(exported.value)]
    else:
        assert main(["merge", str(tiny_run_dir), "--out", str(tmp_path / "mine"), "--overwrite"]) == 2
        merge_err = capsys.readouterr().err
        export = ["export", str(tiny_run_dir), "--gguf", str(tmp_path / "mine.gguf"), "--overwrite", "--no-check"]
        assert main(export) == 2
        said = [merge_err, capsys.readouterr().err]
    forced = "overwrite=True" if python else "--overwrite"
    assert f"(no tunelab_merge.json); {forced} replaces only an earlier merge" in said[0], said[0]
    assert f"not written by tunelab export; {forced} replaces only the files" in said[1], said[1]
    assert f"choose another {'out' if python else '--gguf name'}." in said[1]
    assert all(("--" in s) is not python for s in said)
    assert (tmp_path / "mine.gguf").read_text() == "mine" and (tmp_path / "mine" / "notes.txt").exists()


@pytest.mark.parametrize("python", [True, False])
def test_a_required_self_check_without_llama_cpp_names_the_way_past_it(
    tiny_run_dir, tmp_path, capsys, monkeypatch, python
):
    """export_gguf(..., check=True) without llama.cpp told a Python caller "(--no-check skips it)"."""
    import sys

    from tunelab.config.flags import CLI
    from tunelab.errors import ModelError

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # the binding does not import
    with pytest.raises(ModelError) as caught:
        tunelab.export_gguf(tiny_run_dir, tmp_path / "m.gguf", check=True, spelling=PYTHON if python else CLI)
    assert f"the export's self-check ({'check=False' if python else '--no-check'} skips it) needs" in str(caught.value)
    assert not (tmp_path / "m.gguf").exists()
