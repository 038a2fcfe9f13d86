"""The Python API loads and saves models without transformers' progress bars, as the CLI does, and leaves
transformers' setting as it found it."""

import torch
from transformers.utils import logging as hf_logging

from tunelab.models.load import load_hf_model, resolve_source
from tunelab.training.build import BuiltModel, save_full_weights


def test_loading_and_saving_print_no_progress_bars(tiny_model_dir, tmp_path, capfd):
    was = hf_logging.is_progress_bar_enabled()  # a CLI test in this process may have turned them off
    hf_logging.enable_progress_bar()  # as in a fresh Python session
    try:
        _load_and_save(tiny_model_dir, tmp_path, capfd)
    finally:
        (hf_logging.enable_progress_bar if was else hf_logging.disable_progress_bar)()


def _load_and_save(tiny_model_dir, tmp_path, capfd):
    capfd.readouterr()
    model = load_hf_model(resolve_source(str(tiny_model_dir)), torch.float32, torch.device("cpu"))
    model.save_pretrained(tmp_path / "theirs")  # transformers' own call, outside tunelab: its bar is kept
    theirs = capfd.readouterr().err
    assert "Loading weights" not in theirs and "Writing model shards" in theirs
    assert hf_logging.is_progress_bar_enabled()
    built = BuiltModel(model, "generic", model.config, torch.device("cpu"), torch.float32, 0, 0)
    save_full_weights(built, tmp_path / "ours")
    assert "Writing model shards" not in capfd.readouterr().err and (tmp_path / "ours" / "config.json").is_file()
