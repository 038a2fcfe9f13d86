"""Ctrl-C while `tunelab train` saves its result: the first lets the save finish, then the run exits 130 (what follows
training is skipped); a second cuts the save short, and no part of the result is left to pass for the whole."""

import json
import os
import signal

import pytest

from tunelab.cli import main
from tunelab.training import finish, result


def test_ctrl_c_while_saving_the_result_exits_130_once_it_is_saved(tiny_overrides, monkeypatch, capsys, cli_flags):
    """The save finished and the run exited 0, as if nothing had been interrupted."""
    real = finish.save_final

    def interrupted_save(*args, **kwargs):
        signal.raise_signal(signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(finish, "save_final", interrupted_save)
    overrides = tiny_overrides | {"train.max_steps": 2, "train.save_every": 1}
    assert main(["train", *cli_flags(overrides)]) == 130
    run = tiny_overrides["output_dir"]
    assert f"the result is saved in {run}" in capsys.readouterr().err
    assert json.loads(open(os.path.join(run, "run.json")).read())["finished"] is True
    assert os.path.isfile(os.path.join(run, "adapter_model.safetensors"))


@pytest.mark.parametrize("where", ["writing", "moving"])
def test_a_second_ctrl_c_cuts_the_save_short_and_leaves_no_part_of_the_result(
    tiny_overrides, monkeypatch, capsys, cli_flags, where
):
    """A second Ctrl-C while the result was written left its staging folder, or some of its files moved into the run
    directory (the adapter's weights without the rest), and said only "interrupted"."""
    real_record, real_replace = result.record_base_revision, os.replace

    def second_ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    def interrupted_record(staging, revision):
        real_record(staging, revision)
        signal.raise_signal(signal.SIGINT)  # the first: the save goes on
        if where == "writing":
            second_ctrl_c()
        moves = {"n": 0}

        def replace(src, dst):
            moves["n"] += 1
            if moves["n"] == 2:
                second_ctrl_c()
            real_replace(src, dst)

        monkeypatch.setattr(result.os, "replace", replace)

    monkeypatch.setattr(result, "record_base_revision", interrupted_record)
    overrides = tiny_overrides | {"train.max_steps": 2, "train.save_every": 1}
    assert main(["train", *cli_flags(overrides)]) == 130
    monkeypatch.setattr(result.os, "replace", real_replace)
    err = capsys.readouterr().err
    assert "while saving the result, which was cut short (nothing of it was kept)" in err
    assert "--resume" in err
    run = tiny_overrides["output_dir"]
    left = sorted(os.listdir(run))
    assert not {"adapter_model.safetensors", "adapter_config.json", ".tmp-final"} & set(left), left
    assert not any(name.startswith("tokenizer") for name in left), left
    assert json.loads(open(os.path.join(run, "run.json")).read())["finished"] is False


def test_a_save_cut_short_without_a_checkpoint_does_not_offer_resume(tiny_overrides, monkeypatch, capsys, cli_flags):
    """With train.save_every 0 (the default) no checkpoint exists: the CLI said "checkpoint None. Continue with: ...
    --resume", which then found nothing to resume from."""
    real_record = result.record_base_revision

    def interrupted_record(staging, revision):
        real_record(staging, revision)
        signal.raise_signal(signal.SIGINT)
        raise KeyboardInterrupt

    monkeypatch.setattr(result, "record_base_revision", interrupted_record)
    assert main(["train", *cli_flags(tiny_overrides | {"train.max_steps": 2})]) == 130
    err = capsys.readouterr().err
    assert "checkpoint None" not in err and "Continue with" not in err
    assert "no checkpoint was written (train.save_every): train it again" in err
