"""tunelab.predict's refusals of its own arguments name them as the caller gave them: out= and overwrite=True to
Python, --out and --overwrite to the command line."""

import pytest

import tunelab
from tunelab.cli import main
from tunelab.errors import ConfigError


def test_a_python_caller_is_told_out_and_overwrite_as_it_wrote_them(tmp_path, capsys):
    """predict(run, texts, overwrite=True) without out was told to "drop --overwrite, or give --out", and
    out="p.txt" was "option '--out' is p.txt": flags a Python caller never typed. Refused before the run is read."""
    run = tmp_path / "run"  # never read: the arguments are refused first
    for arguments, said in (
        (
            {"overwrite": True},
            "overwrite=True replaces an existing out= file, and no out= is given; drop overwrite=True",
        ),
        ({"out": str(tmp_path / "p.txt")}, f"argument 'out' is {tmp_path / 'p.txt'}; predictions are written as"),
    ):
        with pytest.raises(ConfigError) as caught:
            tunelab.predict(run, texts=["hi"], **arguments)
        assert said in str(caught.value) and "--" not in str(caught.value), str(caught.value)
    for flags, said in (
        (["--overwrite"], "--overwrite replaces an existing --out file, and no --out is given; drop --overwrite"),
        (["--out", str(tmp_path / "p.txt")], f"option '--out' is {tmp_path / 'p.txt'}; predictions are written as"),
    ):
        assert main(["predict", str(run), "hi", *flags]) == 2
        err = capsys.readouterr().err
        assert said in err and "out=" not in err, err
