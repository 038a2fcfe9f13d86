"""tunelab.federate(config, app_dir=...)'s refusals of the app folder name app_dir and overrides['overwrite'] as a
Python caller gives them; `tunelab federate --app-dir` still names its flags."""

import pytest

pytest.importorskip("flwr", reason="the federated extra (flwr) is not installed")

import tunelab  # noqa: E402
from tunelab.cli import main  # noqa: E402
from tunelab.errors import RunDirError  # noqa: E402


def test_the_app_folder_is_refused_by_the_callers_names(tmp_path, tiny_model_dir, federate_config, capsys):
    """A Python caller was told to "Pass --overwrite to replace it, or choose another --app-dir", and of
    "--app-dir RUN/app: is inside the run directory": flags it never typed."""
    config = federate_config(tmp_path, tiny_model_dir)
    app = tmp_path / "app"
    assert tunelab.federate(config, app_dir=app) == app
    inside = tmp_path / "run" / "app"  # the run directory output_dir names
    for given, python, flags in (
        (app, "exists. Pass overrides['overwrite'] = True to replace it, or choose another app_dir.", "exists. Pass --overwrite to replace it, or choose another --app-dir."),
        (inside, f"argument 'app_dir' ({inside}): is inside the run directory", f"--app-dir {inside}: is inside the run directory"),
    ):  # fmt: skip
        with pytest.raises(RunDirError) as caught:
            tunelab.federate(config, app_dir=given)
        assert python in str(caught.value) and "--" not in str(caught.value), str(caught.value)
        assert main(["federate", str(config), "--app-dir", str(given)]) == 2
        err = capsys.readouterr().err
        assert flags in err and "app_dir" not in err, err


def test_an_app_folder_that_cannot_be_made_is_refused_by_its_flag(tmp_path, tiny_model_dir, federate_config, capsys):
    """--app-dir naming a file (or a path under one) ended in FileExistsError's traceback from mkdir, exit code 1."""
    config = federate_config(tmp_path, tiny_model_dir)
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me\n")
    for given in (a_file, a_file / "app"):
        assert main(["federate", str(config), "--app-dir", str(given)]) == 2
        err = capsys.readouterr().err
        assert f"--app-dir {given}" in err and "Traceback" not in err, err
    assert a_file.read_text() == "keep me\n"
