"""train.early_stopping_patience in the tasks with an eval loss other than sft: each stops on its own eval loss."""

import json

import pytest

from tunelab.training.recipe import train

from .head_setup import head_overrides, write_labels, write_pairs


@pytest.mark.parametrize("task", ["classify", "reward", "dpo"])
def test_each_task_with_an_eval_loss_stops_early(tiny_model_dir, tmp_path, task):
    """min_delta 100: no evaluation after the first is a new best, so patience 1 stops the run at its second
    evaluation (step 2 of 5), whatever the task's eval loss is."""
    data = write_labels(tmp_path) if task == "classify" else write_pairs(tmp_path)
    overrides = head_overrides(tiny_model_dir, tmp_path, task, data, **{"train.max_steps": 5, "train.eval_every": 1})
    overrides |= {"data.eval_fraction": 0.25, "train.early_stopping_patience": 1}
    overrides |= {"train.early_stopping_min_delta": 100.0}
    if task == "dpo":
        overrides |= {"train.micro_batch": 2}
    result = train(None, overrides)
    info = json.loads((result.run_dir / "run.json").read_text())
    assert result.steps == info["steps"] == 2 and info["total_steps"] == 5
    assert info["end"]["reason"] == "early_stopped" and info["extra"]["early_stop"]["waited"] == [2]
    assert info["extra"]["early_stop"]["best_step"] == 1 and isinstance(info["eval_loss"], float)
