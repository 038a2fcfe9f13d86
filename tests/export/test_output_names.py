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
