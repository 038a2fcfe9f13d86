"""A classify or reward run that did not finish, opened by predict and eval from its newest checkpoint."""

import json

import pytest
import torch

import tunelab.training.recipe as recipe
from tunelab.cli import main
from tunelab.errors import RunDirError
from tunelab.infer.predict import head_outputs, open_head_run, text_input

from .head_setup import head_overrides, write_labels, write_pairs


@pytest.mark.parametrize("task", ["classify", "reward"])
def test_an_unfinished_head_run_is_scored_from_its_newest_checkpoint(task, tiny_model_dir, tmp_path, capsys):
    """predict and eval refused a classify or reward run that did not finish, though its checkpoint holds a usable
    head: they score the newest checkpoint now, saying so, as the model training held there."""
    data = write_labels(tmp_path) if task == "classify" else write_pairs(tmp_path)
    over = head_overrides(
        tiny_model_dir, tmp_path, task, data, **{"train.save_every": 1, "train.keep_checkpoints_after_finish": True}
    )
    run_dir = recipe.train(None, over).run_dir
    texts = ["great number 1", "awful number 2"]
    opened, inputs = _opened(run_dir, texts)
    finished, _ = head_outputs(opened.model, opened, inputs)
    assert main(["eval", str(run_dir), "--data", data]) == 0
    assert {k: json.loads((run_dir / "eval.json").read_text())[k] for k in ("step", "checkpoint")} == {
        "step": 3,
        "checkpoint": "",
    }
    info = json.loads((run_dir / "run.json").read_text())  # stopped after its last checkpoint, as a kill leaves it
    (run_dir / "run.json").write_text(
        json.dumps(info | {"finished": False, "end": {"reason": "interrupted", "step": 3}})
    )
    capsys.readouterr()
    run, inputs = _opened(run_dir, texts)
    assert "did not finish (3 steps asked); scoring its newest checkpoint, step 3" in capsys.readouterr().err
    torch.testing.assert_close(head_outputs(run.model, run, inputs)[0], finished, rtol=1e-4, atol=1e-5)
    with pytest.raises(RunDirError, match="the run did not finish"):  # a reward model training another run
        _opened(run_dir, texts, from_checkpoint=False)
    assert main(["eval", str(run_dir), "--data", data, "--overwrite"]) == 0
    assert "scoring its newest checkpoint, step 3" in capsys.readouterr().err
    # eval.json and the report say which weights were scored: the checkpoint, at its step
    saved = json.loads((run_dir / "eval.json").read_text())
    assert saved["step"] == 3 and saved["checkpoint"] == str(run_dir / "checkpoints" / "step-0000003")
    assert main(["report", str(run_dir)]) == 0
    assert (
        f"by the checkpoint of step 3 ({run_dir / 'checkpoints' / 'step-0000003'}; the run had not"
        in (run_dir / "report.html").read_text()
    )
    for folder in (run_dir / "checkpoints").iterdir():
        (folder / "state.json").write_text("")  # no intact checkpoint: refused as before
    assert main(["predict", str(run_dir), *texts]) == 2
    assert "the run did not finish (interrupted after step 3)" in capsys.readouterr().err


def _opened(run_dir, texts, from_checkpoint=True):
    run = open_head_run(run_dir, device="cpu", from_checkpoint=from_checkpoint)
    return run, [text_input(run, t) for t in texts]
