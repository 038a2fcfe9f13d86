"""What `load_inputs` refuses before any data is read or model built: options the model cannot serve."""

import pytest

from tunelab.cli import main
from tunelab.errors import ConfigError


def test_a_max_length_above_the_models_context_is_refused_naming_both(tiny_overrides, tiny_model_dir, capsys):
    """The tiny model's config says 1024 positions; data.max_length 2048 was accepted without a word, and its text
    blocks and packed rows would train positions the model never saw. The limit itself is allowed."""
    from tunelab.training.recipe import train

    with pytest.raises(
        ConfigError, match=r"option 'data.max_length' is 2048, above the context window .*: 1024 tokens"
    ):
        train(None, tiny_overrides | {"data.max_length": 2048})
    code = main(["check", "--data-only", "--model.name", str(tiny_model_dir), "--data.max_length", "1025",
                 "--data.train", tiny_overrides["data.train"][0]])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "Set data.max_length to 1024 or less" in err and "Traceback" not in err
    assert train(None, tiny_overrides | {"data.max_length": 1024, "train.max_steps": 1}).run_dir.is_dir()
