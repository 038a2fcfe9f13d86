"""A resume's refusals name resume and overwrite as their caller gave them: `tunelab train`'s flags (--resume,
--overwrite), or a Python caller's `train(..., resume=True)` and `overrides['overwrite']`."""

import re

import pytest

import tunelab
from tunelab.config.overrides import FlagValues
from tunelab.errors import ConfigError, RunDirError


def _said(error) -> str:
    message = str(error.value)
    assert not re.search(r"--(resume|overwrite)\b", message), message  # no flag a Python caller cannot give
    return message


def test_a_python_caller_is_told_resume_true_not_the_flag(tiny_overrides):
    """tunelab.train(..., resume=True) was told to "Drop --resume", to "give --overwrite": flags it never typed and
    cannot pass. Each refusal on the way to resuming now names resume=True and overrides['overwrite'] = True."""
    with pytest.raises(RunDirError) as caught:
        tunelab.train(None, tiny_overrides, resume=True)
    assert "nothing to resume: the folder does not exist. Drop resume=True to start a new run" in _said(caught)
    tunelab.train(None, tiny_overrides | {"train.max_steps": 1})  # finished, its checkpoints deleted
    with pytest.raises(RunDirError) as caught:
        tunelab.train(None, tiny_overrides | {"train.max_steps": 1}, resume=True)
    message = _said(caught)
    assert "drop resume=True and give overrides['overwrite'] = True (resume=True alone continues" in message


def test_a_changed_or_finished_run_names_the_python_arguments(tiny_overrides):
    kept = tiny_overrides | {"train.max_steps": 2, "train.save_every": 1, "train.keep_checkpoints_after_finish": True}
    tunelab.train(None, kept)
    with pytest.raises(ConfigError) as caught:
        tunelab.train(None, kept | {"method.r": 8}, resume=True)
    message = _said(caught)
    assert "resume=True continues the run with the config it started with" in message
    assert "(another output_dir, or overrides['overwrite'] = True)" in message
    with pytest.raises(ConfigError) as caught:
        tunelab.train(None, kept, resume=True)
    message = _said(caught)
    assert "so resume=True has nothing to continue" in message and "tunelab.compare() or tunelab.evaluate()" in message
    # the command line's flags, as tunelab train hands its options over, are still named as typed
    with pytest.raises(ConfigError, match="so --resume has nothing to continue.*give --overwrite"):
        tunelab.train(None, FlagValues(kept), resume=True)
