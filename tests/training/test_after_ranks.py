"""What follows training under the Python API's `train(..., nproc=2)`: rank 0 compares eval.questions (and pushes
train.push_to), and the launcher, this process, does neither again (api_train.py `after_training`)."""

import json

import pytest
import yaml

import tunelab
import tunelab.api_train as api_train
from tunelab.config import RunConfig
from tunelab.training.recipe import TrainResult

from .test_distributed import _rank_env, _write_config


@pytest.mark.parametrize(
    "launched, interrupted, does",
    [(False, False, (True, True)), (True, False, (False, False)), (False, True, (False, False))],
)
def test_the_launcher_of_ranks_neither_compares_nor_pushes(tmp_path, launched, interrupted, does):
    config = RunConfig()
    config.eval.questions, config.train.push_to = str(tmp_path / "q.jsonl"), "alice/box-bot"
    result = TrainResult(tmp_path, 2, 1.0, None, interrupted=interrupted)
    assert api_train.after_training(config, result, launched) == does


@pytest.mark.slow
def test_two_ranks_compare_once(tiny_model_dir, tmp_path, monkeypatch):
    """The launcher compared again after rank 0 had: twice the minutes of answers, compare.json written twice."""
    config = _write_config(tmp_path, tiny_model_dir, "lora")
    questions = tmp_path / "questions.jsonl"
    questions.write_text(
        json.dumps({"question": "What is the code of box 3?", "answer": "Box 3 has code 1111."}) + "\n"
    )
    values = yaml.safe_load(config.read_text())
    values["train"] |= {"max_steps": 2, "save_every": 0}
    values["eval"] = {"questions": str(questions), "max_new_tokens": 4}
    config.write_text(yaml.safe_dump(values))
    for name, value in _rank_env().items():
        monkeypatch.setenv(name, value)
    here = []
    monkeypatch.setattr(api_train, "compare_after_training", lambda *args: here.append(args))
    result = tunelab.train(config, {"output_dir": str(tmp_path / "run")}, nproc=2)
    assert here == [] and (result.run_dir / "compare.json").is_file()  # rank 0's, in its own process
