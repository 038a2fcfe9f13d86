"""README: its YAML examples load through the config loader, and the defaults it states are the code's."""

import re
from pathlib import Path

import pytest
import yaml

from tunelab.config import load_config, to_dict

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
BLOCKS = [(README[: m.start()].count("\n") + 1, m.group(1)) for m in re.finditer(r"```yaml\n(.*?)```", README, re.S)]


@pytest.mark.parametrize("line, block", BLOCKS, ids=[f"line{line}" for line, _ in BLOCKS])
def test_every_yaml_block_of_the_readme_loads(tmp_path, line, block):
    path = tmp_path / "config.yaml"
    path.write_text(block)
    load_config(path)


def test_the_defaults_the_readme_lists_are_the_codes():
    [block] = [block for line, block in BLOCKS if README.splitlines()[line - 3].endswith("with their defaults:")]
    defaults = to_dict(load_config(None).config)
    stated = yaml.safe_load(block)
    assert stated
    for section, options in stated.items():
        for name, value in options.items():
            assert defaults[section][name] == value, f"{section}.{name}"
