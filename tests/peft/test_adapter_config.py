"""adapter_config.json fields that loading reads are checked and named, never a KeyError or TypeError."""

import json
import re
import shutil

import pytest

from tunelab.errors import RunDirError
from tunelab.peft.save import read_adapter_config


@pytest.mark.parametrize(
    "change, says",
    [
        ({"r": None}, "field 'r' must be a whole number >= 1; it is missing"),
        ({"r": "8"}, "field 'r' must be a whole number >= 1; it is '8'"),
        ({"r": 0}, "field 'r' must be a whole number >= 1; it is 0"),
        ({"lora_alpha": None}, "field 'lora_alpha' must be a number; it is missing"),
        ({"lora_alpha": True}, "field 'lora_alpha' must be a number; it is True"),
        ({"target_modules": None}, "field 'target_modules' must be a non-empty list of module names; it is missing"),
        ({"target_modules": []}, "field 'target_modules' must be a non-empty list of module names; it is []"),
        (
            {"target_modules": ".*(q|v)_proj"},
            "field 'target_modules' must be a list of module names (this adapter gives",
        ),
        ({"lora_dropout": 1.5}, "field 'lora_dropout' must be a number from 0 up to 1; it is 1.5"),
        # PEFT's per-layer alpha was dropped: every layer loaded at the one lora_alpha, scaled wrong without a word
        ({"alpha_pattern": {"q_proj": 32}}, "field 'alpha_pattern' must be empty: tunelab gives every layer the"),
        ({"rank_pattern": {"v_proj": 8}}, "field 'rank_pattern' must be empty: tunelab gives every layer the"),
    ],
)
def test_a_field_loading_cannot_use_is_named(tiny_run_dir, tmp_path, change, says):
    """A missing r was a KeyError, a string r a TypeError, and a regular expression's characters became targets."""
    folder = tmp_path / "adapter"
    shutil.copytree(tiny_run_dir, folder)
    path = folder / "adapter_config.json"
    config = json.loads(path.read_text())
    config |= change
    path.write_text(json.dumps({k: v for k, v in config.items() if v is not None}))
    with pytest.raises(RunDirError, match=rf"adapter_config\.json: {re.escape(says)}"):
        read_adapter_config(folder)


def test_a_whole_config_is_read(tiny_run_dir):
    assert read_adapter_config(tiny_run_dir)["r"] == 4
