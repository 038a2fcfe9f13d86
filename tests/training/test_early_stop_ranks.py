"""train.early_stopping_patience on two gloo ranks: every rank stops after the same step, and the Python API's
result launched with nproc says the run stopped early, as one process's does."""

import pytest
import yaml

import tunelab

from .test_distributed import _rank_env, _write_config


@pytest.mark.slow
def test_two_ranks_stop_early_together(tiny_model_dir, tmp_path, monkeypatch):
    """min_delta 100: only the first evaluation is a best, so patience 1 stops the run after step 2 of 6; a rank that
    went on alone would wait for the others in its next step's gradient sum until the launcher's timeout."""
    config = _write_config(tmp_path, tiny_model_dir, "lora")
    values = yaml.safe_load(config.read_text())
    values["data"]["eval_fraction"] = 0.25
    values["train"] |= {"max_steps": 6, "eval_every": 1, "save_every": 0, "keep_checkpoints_after_finish": False}
    values["train"] |= {"early_stopping_patience": 1, "early_stopping_min_delta": 100.0}
    config.write_text(yaml.safe_dump(values))
    for name, value in _rank_env().items():
        monkeypatch.setenv(name, value)
    result = tunelab.train(config, {"output_dir": str(tmp_path / "run")}, nproc=2)
    assert result.steps == 2 and result.early_stop is not None
    assert (result.early_stop["step"], result.early_stop["planned_steps"], result.early_stop["waited"]) == (2, 6, [2])
    assert (result.run_dir / "adapter_model.safetensors").is_file()
