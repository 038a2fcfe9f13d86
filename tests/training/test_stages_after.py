"""What later commands read of a finished staged run: the export's self-check refuses a run whose last stage's
config.yaml is gone (it names the file) rather than check the template on the probes without a word."""

import pytest

from tunelab.api import train
from tunelab.errors import RunDirError
from tunelab.export.check import _conversations, check_questions


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
