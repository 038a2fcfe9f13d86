"""`model.adapter` continues a run's adapter only over the weights that run trained over."""

import shutil

import pytest
from safetensors.torch import load_file, save_file

from tunelab.errors import ConfigError
from tunelab.models.load import resolve_source
from tunelab.training.prepare import check_adapter_base


def test_an_adapter_over_other_weights_of_the_same_shapes_is_refused(tiny_model_dir, tiny_run_dir, tmp_path):
    """Before, a run's adapter went on training over another model of the same shapes without a word."""
    same, other = tmp_path / "same", tmp_path / "other"
    shutil.copytree(tiny_model_dir, same)
    shutil.copytree(tiny_model_dir, other)
    check_adapter_base(str(tiny_run_dir), resolve_source(str(same)))  # a copy of the base: the same weights
    weights = load_file(other / "model.safetensors")
    weights = {name: t + 0.01 if t.is_floating_point() else t for name, t in weights.items()}
    save_file(weights, other / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ConfigError, match=rf"option 'model.adapter': the adapter in {tiny_run_dir} was trained over"):
        check_adapter_base(str(tiny_run_dir), resolve_source(str(other)))


def test_the_run_refuses_it_before_reading_the_data(tiny_model_dir, tiny_run_dir, tmp_path, tiny_overrides):
    from tunelab.training.recipe import train

    other = tmp_path / "other"
    shutil.copytree(tiny_model_dir, other)
    weights = load_file(other / "model.safetensors")
    save_file({n: t * 1.5 for n, t in weights.items()}, other / "model.safetensors", metadata={"format": "pt"})
    overrides = tiny_overrides | {"model.name": str(other), "model.adapter": str(tiny_run_dir), "method.dropout": 0.0}
    with pytest.raises(ConfigError, match="holds other weights"):
        train(None, overrides | {"data.train": [str(tmp_path / "no-such.jsonl")]})
