"""What later commands read of a finished staged run: the export's self-check refuses a run whose last stage's
config.yaml is gone (it names the file) rather than check the template on the probes without a word; a grpo stage's
column of the forgetting matrix is its reward, marked as one."""

import json

import pytest

from tunelab.api import train
from tunelab.errors import RunDirError
from tunelab.eval.report_inputs import Input
from tunelab.eval.report_run import stages_section
from tunelab.export.check import _conversations, check_questions
from tunelab.training.stages import forgetting, format_forgetting


@pytest.fixture
def staged(tiny_overrides, tmp_path):
    base = {k: v for k, v in tiny_overrides.items() if not k.startswith("data.train")}
    return base | {
        "data.train": [],
        "train.log_every": 1,
        "output_dir": str(tmp_path / "run"),
        "stages": [
            {"name": "first", "data": {"train": tiny_overrides["data.train"]}, "train": {"max_steps": 2}},
            {"name": "second", "data": {"train": tiny_overrides["data.train"]}, "train": {"max_steps": 2}},
        ],
    }


@pytest.fixture
def staged_run(staged):
    return train(None, staged).run_dir


def test_the_self_check_refuses_a_staged_run_whose_last_stage_config_is_gone(staged_run):
    """The self-check read the run's training conversations from the last stage's config.yaml; without it, it checked
    the template on the probe conversations and asked the probe questions, with a verdict as if the run's own data had
    been checked. It is refused now, naming the file, as a single run without its config.yaml is."""
    assert _conversations(staged_run, None, 2)[1] == "training data"
    (staged_run / "stage-2" / "config.yaml").unlink()
    for check in (lambda: _conversations(staged_run, None, 2), lambda: check_questions(staged_run, 2)):
        with pytest.raises(RunDirError, match=r"stage-2/config.yaml: the run's config.yaml is missing; .*--no-check"):
            check()


def _stage(run, k, task, eval_loss, earlier=None):
    here = run / f"stage-{k}"
    here.mkdir(parents=True)
    info = {"base_model": "tiny", "method": "lora", "task": task, "finished": True, "eval_loss": eval_loss}
    (here / "run.json").write_text(json.dumps(info | {"extra": {"eval_losses": earlier or {}}}))


def test_a_grpo_stages_forgetting_column_is_its_reward_and_says_so(tmp_path):
    """A grpo stage's eval_loss is its negated mean eval reward (so that keep_best keeps the best-scoring weights):
    the forgetting matrix showed -0.75 as the "eval loss" of a model whose greedy answers scored 0.75. A grpo stage's
    column now holds the reward, marked as one, in run.json, the printed table and the report."""
    run = tmp_path / "run"
    _stage(run, 1, "sft", 2.5)
    _stage(run, 2, "grpo", -0.75)
    _stage(run, 3, "grpo", -0.5, {"eval_loss/stage-2": -0.25})
    matrix, measures = forgetting(run, 3)
    assert matrix == [[2.5], [None, 0.75], [None, 0.25, 0.5]]
    assert measures == ["eval loss", "eval reward", "eval reward"]
    table = format_forgetting(["sft", "rl", "more"], matrix, measures)
    assert "on rl (reward)" in table and "on sft (reward)" not in table and "higher is better" in table
    assert "0.7500" in table and "-0.7500" not in table
    data = {"extra": {"stages": [], "forgetting": {"stages": ["sft", "rl", "more"], "matrix": matrix}}}
    data["extra"]["forgetting"]["measures"] = measures
    page = stages_section(Input("run.json", data))
    assert "on rl (reward)" in page and "on sft (reward)" not in page and "mean reward of greedy answers" in page
