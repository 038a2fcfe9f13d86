"""How option values written in a config or as flags are read (config/values.py)."""

import pytest

from tunelab.config import load_config
from tunelab.config.load import FlagValues
from tunelab.errors import ConfigError


def test_a_percentage_for_a_share_is_told_the_fraction_to_write(tmp_path):
    """`eval_fraction: 10%`, as a spreadsheet or another tool's docs write a share, was refused as "must be float,
    got '10%' (str)", leaving the user to guess the form; the error now names the fraction (0.1) to write."""
    path = tmp_path / "c.yaml"
    path.write_text("model: {name: x}\ndata: {train: [qa.jsonl], eval_fraction: 10%}\n")
    with pytest.raises(ConfigError, match=r"c\.yaml:2: option 'data\.eval_fraction' is '10%', a percentage; write it "
                       r"as a fraction: 0\.1 for 10%\."):  # fmt: skip
        load_config(path)
    with pytest.raises(ConfigError, match=r"--train\.warmup_ratio: .* write it as a fraction: 0\.035 for 3\.5%\."):
        load_config(None, FlagValues({"model.name": "x", "data.train": ["qa.jsonl"], "train.warmup_ratio": "3.5%"}))
    with pytest.raises(ConfigError, match=r"must be float or 'auto', got 'fast'"):  # other text: as before
        load_config(None, {"model.name": "x", "data.train": ["qa.jsonl"], "train.lr": "fast"})
