"""How a run trained under the Python API's `train(..., nproc=2)` ends: train.early_stopping_patience stops every
gloo rank after the same step, and the result says so, as one process's does; rank 0 then compares eval.questions
(and pushes train.push_to), and the launcher, this process, does neither again (api_train.py `after_training`).

Both are read from one run: starting the ranks (each imports torch and builds the model) is its cost."""

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


@pytest.fixture(scope="module")
def stopped_early_on_ranks(tiny_model_dir, tmp_path_factory):
    """A LoRA run on two gloo ranks through `train(..., nproc=2)` that stops early after step 2 of 6 (min_delta 100:
    only the first evaluation is a best, so patience 1 stops it), with eval.questions: (its result, the launcher's
    calls of compare_after_training)."""
    folder = tmp_path_factory.mktemp("ranks")
    config = _write_config(folder, tiny_model_dir, "lora")
    questions = folder / "questions.jsonl"
    questions.write_text(
        json.dumps({"question": "What is the code of box 3?", "answer": "Box 3 has code 1111."}) + "\n"
    )
    values = yaml.safe_load(config.read_text())
    values["data"]["eval_fraction"] = 0.25
    values["train"] |= {"max_steps": 6, "eval_every": 1, "save_every": 0, "keep_checkpoints_after_finish": False}
    values["train"] |= {"early_stopping_patience": 1, "early_stopping_min_delta": 100.0}
    values["eval"] = {"questions": str(questions), "max_new_tokens": 4}
    config.write_text(yaml.safe_dump(values))
    here = []
    with pytest.MonkeyPatch.context() as patch:
        for name, value in _rank_env().items():
            patch.setenv(name, value)
        patch.setattr(api_train, "compare_after_training", lambda *args: here.append(args))
        result = tunelab.train(config, {"output_dir": str(folder / "run")}, nproc=2)
    return result, here


@pytest.mark.slow
def test_two_ranks_stop_early_together(stopped_early_on_ranks):
    """A rank that went on alone would wait for the others in its next step's gradient sum until the launcher's
    timeout."""
    result, _ = stopped_early_on_ranks
    assert result.steps == 2 and result.early_stop is not None
    assert (result.early_stop["step"], result.early_stop["planned_steps"], result.early_stop["waited"]) == (2, 6, [2])
    assert (result.run_dir / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_two_ranks_compare_once(stopped_early_on_ranks):
    """The launcher compared again after rank 0 had: twice the minutes of answers, compare.json written twice."""
    result, here = stopped_early_on_ranks
    assert here == [] and (result.run_dir / "compare.json").is_file()  # rank 0's, in its own process
