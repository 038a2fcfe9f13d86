"""A run interrupted after a checkpoint and resumed ends exactly where the uninterrupted run ends."""

import json

import pytest
import torch
from safetensors.torch import load_file

import tunelab.training.recipe as recipe
from tunelab.errors import RunDirError


class Crash(Exception):
    pass


def _losses(run_dir):
    return [
        json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in line
    ]


@pytest.mark.parametrize("method", ["lora", "layers"])
def test_resume_equals_uninterrupted(tiny_overrides, tmp_path, monkeypatch, method):
    common = tiny_overrides | {
        "train.max_steps": 6,
        "train.save_every": 2,
        "method.name": method,
        "method.top_layers": 1,
    }
    straight = recipe.train(None, common | {"output_dir": str(tmp_path / "straight")})

    real_step = recipe.train_step
    calls = {"n": 0}

    def crashing_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # dies during step 4, after the checkpoint of step 2
            raise Crash()
        return real_step(*args, **kwargs)

    monkeypatch.setattr(recipe, "train_step", crashing_step)
    resumed_dir = tmp_path / "resumed"
    with pytest.raises(Crash):
        recipe.train(None, common | {"output_dir": str(resumed_dir)})
    monkeypatch.setattr(recipe, "train_step", real_step)
    resumed = recipe.train(None, common | {"output_dir": str(resumed_dir)}, resume=True)

    assert resumed.steps == straight.steps == 6
    weights = "adapter_model.safetensors" if method == "lora" else "model.safetensors"
    a, b = load_file(straight.run_dir / weights), load_file(resumed.run_dir / weights)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert _losses(straight.run_dir) == _losses(resumed.run_dir)


def test_resume_without_checkpoint_is_an_error(tiny_overrides):
    with pytest.raises(RunDirError, match="nothing to resume"):
        recipe.train(None, tiny_overrides, resume=True)


def test_existing_run_dir_is_not_overwritten(tiny_overrides, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "keep.txt").write_text("precious")
    with pytest.raises(RunDirError, match="--overwrite"):
        recipe.train(None, tiny_overrides | {"train.max_steps": 1})
    assert (run / "keep.txt").read_text() == "precious"
