"""The result a finished run saves into its run directory (training/result.py)."""

import pytest

from tunelab.training import recipe


@pytest.mark.parametrize("method", ["lora", "layers"])
def test_the_saved_weights_are_readable_as_any_new_file_is(tiny_overrides, tmp_path, method):
    """safetensors writes 0600 files: a run's adapter_model.safetensors (model.safetensors for full and layers) was
    unreadable to the other users of a shared run directory and to a server running as another user, while its
    config files beside it were not."""
    extra = {"method.name": "layers", "method.top_layers": 1} if method == "layers" else {}
    run = recipe.train(None, tiny_overrides | {"train.max_steps": 1} | extra).run_dir
    probe = tmp_path / "probe"
    probe.touch()
    weights = run / ("adapter_model.safetensors" if method == "lora" else "model.safetensors")
    assert weights.is_file()
    modes = {path.name: path.stat().st_mode & 0o777 for path in run.iterdir() if path.is_file()}
    assert set(modes.values()) == {probe.stat().st_mode & 0o777}, modes


def test_a_kept_checkpoint_is_readable_as_any_new_file_is(tiny_overrides, tmp_path):
    """A checkpoint's safetensors files were 0600, the state file beside them 0644: a checkpoint kept after the run
    (train.keep_checkpoints_after_finish) could not be read by the colleague it was kept for."""
    over = {"train.max_steps": 2, "train.save_every": 1, "train.keep_checkpoints_after_finish": True}
    over |= {"data.eval_fraction": 0.2, "train.eval_every": 1}  # the best weights so far are kept beside them
    run = recipe.train(None, tiny_overrides | over).run_dir
    probe = tmp_path / "probe"
    probe.touch()
    files = [path for path in (run / "checkpoints").rglob("*") if path.is_file()]
    assert any(path.suffix == ".safetensors" for path in files) and any(p.name == "best.safetensors" for p in files)
    assert {path.stat().st_mode & 0o777 for path in files} == {probe.stat().st_mode & 0o777}, files


def test_a_report_made_while_the_run_trained_goes_when_it_finishes(tiny_overrides, monkeypatch, capsys):
    """`tunelab report` while a run trained wrote report.html of the unfinished run ("finished: no"); it stayed there
    after training, and `tunelab report` of the finished run refused to replace it without --overwrite."""
    from pathlib import Path

    from tunelab.eval.report import build_report
    from tunelab.training import loop

    real, calls = loop.train_step, []

    def report_meanwhile(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the run's first step is logged: a report of it, as a user watching would make
            build_report(tiny_overrides["output_dir"])
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", report_meanwhile)
    run = recipe.train(None, tiny_overrides | {"train.max_steps": 3}).run_dir
    assert "removed report.html: written while the run trained, it described it unfinished" in capsys.readouterr().out
    page = build_report(run).read_text()  # no --overwrite needed
    assert "<th>finished</th><td>yes</td>" in page and Path(run, "report.html").is_file()


@pytest.mark.parametrize("save_every", [0, 1])
def test_a_full_disk_at_the_save_of_the_result_says_what_is_left(tiny_overrides, monkeypatch, capsys, save_every):
    """A full disk while saving the result said "The last checkpoint is kept; continue with --resume" also to a run
    with train.save_every: 0, which had written none: --resume then found nothing to resume."""
    import errno

    import tunelab.training.result as result
    from tunelab.errors import RunDirError

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(result, "ordinary_permissions", full)  # after the files are written
    overrides = tiny_overrides | {"train.max_steps": 2, "train.save_every": save_every}
    with pytest.raises(RunDirError) as stopped:
        recipe.train(None, overrides)
    message = str(stopped.value)
    assert "the result could not be saved: no space left on the device" in message
    if save_every:
        assert "checkpoint of step 2" in message and "the same train(...) call and resume=True." in message
        assert "--resume" not in message  # a Python caller is told its argument alone
        monkeypatch.undo()
        assert recipe.train(None, overrides, resume=True).steps == 2
    else:
        assert "--resume" not in message and "No checkpoint was written (train.save_every: 0)" in message
