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


def test_an_unfinished_pissa_head_run_is_scored_over_the_base_its_kept_factors_rebuild(
    tiny_model_dir, tmp_path, capsys, monkeypatch
):
    """Scoring a method.init pissa classify run from its checkpoint factorised the base again, which another LAPACK
    or torch may do otherwise, and the head would read a base it never trained over. It reads the factors the run
    kept, as --resume does: a factorisation would raise here, and the scores are the bits that the base factorised on
    this machine gives, and those of the finished run's saved adapter (a plain LoRA of rank 2r over the original
    base) up to its rounding. A missing or damaged file is refused (exit 2) with --resume's words; a run older than
    the file is factorised again, saying so."""
    from tunelab.peft import weight_init

    data = write_labels(tmp_path)
    more = {"train.save_every": 1, "train.keep_checkpoints_after_finish": True, "method.init": "pissa"}
    run_dir = recipe.train(None, head_overrides(tiny_model_dir, tmp_path, "classify", data, **more)).run_dir
    texts = ["great number 1", "awful number 2"]
    run, inputs = _opened(run_dir, texts, from_checkpoint=False)
    finished = head_outputs(run.model, run, inputs)[0]
    run_json = run_dir / "run.json"
    info = json.loads(run_json.read_text())
    run_json.write_text(json.dumps(info | {"finished": False, "end": {"reason": "interrupted", "step": 3}}))
    run, inputs = _opened(run_dir, texts)
    here = head_outputs(run.model, run, inputs)[0]  # from the base factorised on this machine
    # fp32 sums in another order (W + s B' A' of rank 2r against W_res + s B A): a few ulp of logits ~1
    torch.testing.assert_close(here, finished, rtol=1e-5, atol=1e-6)

    def factorised(*args):
        raise AssertionError("factorised again")

    with monkeypatch.context() as patched:
        patched.setattr(weight_init, "_factors", factorised)
        run, inputs = _opened(run_dir, texts)
        assert torch.equal(head_outputs(run.model, run, inputs)[0], here)

    kept = run_dir / "checkpoints" / "initial_factors.safetensors"
    good = kept.read_bytes()
    capsys.readouterr()
    for damage, says in [(lambda: kept.write_bytes(good[:-4] + bytes(4)), "damaged"), (kept.unlink, "missing.")]:
        damage()
        assert main(["predict", str(run_dir), *texts]) == 2
        err = capsys.readouterr().err
        assert f"{kept}: {says}" in err and "Put the file back, or train the run again" in err, err
    assert "scoring its checkpoint rebuilds the base" in err
    del info["extra"]["initial_factors_sha256"]  # a run written before the factors were kept
    run_json.write_text(json.dumps(info | {"finished": False, "end": {"reason": "interrupted", "step": 3}}))
    assert main(["predict", str(run_dir), *texts]) == 0
    out, err = capsys.readouterr()
    assert "note: scoring its checkpoint: the run kept no starting factors of its adapters" in err
    assert "starting factors" not in out  # the scores alone on stdout
