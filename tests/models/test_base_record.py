"""A run records a local base by its absolute path and a fingerprint of its weights: later commands open it from any
folder, and refuse a base rewritten since (an adapter over other weights answers otherwise, and a merge folds it into
them without a word)."""

import json
import shutil

import pytest
from safetensors.torch import load_file, save_file

from tunelab.errors import ModelError
from tunelab.infer.run import open_run
from tunelab.models.load import fingerprint, resolve_source
from tunelab.training.recipe import train


def test_a_relative_base_is_recorded_whole_and_a_changed_one_refused(tiny_model_dir, tmp_path, monkeypatch):
    work = tmp_path / "work"
    shutil.copytree(tiny_model_dir, work / "models" / "tiny")
    (work / "qa.jsonl").write_text(
        "".join(json.dumps({"question": f"Code {i}?", "answer": f"Box {i}."}) + "\n" for i in range(8))
    )
    monkeypatch.chdir(work)
    overrides = {
        "model.name": "models/tiny",
        "data.train": ["qa.jsonl"],
        "data.max_length": 64,
        "method.r": 4,
        "train.micro_batch": 4,
        "train.max_steps": 1,
        "output_dir": "run",
    }
    run_dir = train(None, overrides).run_dir.resolve()
    info = json.loads((run_dir / "run.json").read_text())
    assert info["base_model"] == str((work / "models" / "tiny").resolve())
    assert info["base_fingerprint"] == fingerprint(resolve_source("models/tiny")) != ""

    monkeypatch.chdir(tmp_path)  # another folder: "models/tiny" names nothing here
    open_run(run_dir, device="cpu")

    weights = work / "models" / "tiny" / "model.safetensors"
    tensors = load_file(weights)
    save_file({k: v * 1.5 if v.dim() == 2 else v for k, v in tensors.items()}, weights, metadata={"format": "pt"})
    assert weights.stat().st_size == (tiny_model_dir / "model.safetensors").stat().st_size  # same names and sizes
    with pytest.raises(ModelError, match="not those the run trained over"):
        open_run(run_dir, device="cpu")


def test_a_base_moved_away_is_named_as_the_runs_base(tiny_run_dir, tmp_path, capsys):
    """A run whose local base was moved or deleted was told "not a Hugging Face model directory, a .gguf file, or a hub
    id", as if the user had named a wrong model."""
    from tunelab.cli import main

    run = tmp_path / "run"
    shutil.copytree(tiny_run_dir, run)
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps(info | {"base_model": str(tmp_path / "moved-away")}))
    with pytest.raises(ModelError, match="the base model the run trained over is not there any more"):
        open_run(run, device="cpu")
    assert main(["merge", str(run), "--out", str(tmp_path / "merged")]) == 2
    assert "is not there any more (moved or deleted)" in capsys.readouterr().err
