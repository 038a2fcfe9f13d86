"""How option values written in a config or as flags are read (config/values.py)."""

import pytest

from tunelab.config import load_config
from tunelab.config.overrides import FlagValues
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


def test_a_newline_in_the_prompt_format_flag_is_a_newline(tmp_path):
    """`--classify.prompt_format "Text: {text}\nLabel:"` kept a backslash and an n, where a YAML file's double-quoted
    value is a newline: the flag now reads \\n, \\t and \\\\ as YAML's "..." does; a YAML file's value and a Python
    override are what their writer meant, and a backslash before another letter stays."""
    base = {"task": "classify", "model.name": "x", "data.train": ["rows.jsonl"]}
    typed = r"Text:\t{text}\nLabel: C:\path\\n"
    flag = load_config(None, FlagValues(base | {"classify.prompt_format": typed})).config
    assert flag.classify.prompt_format == "Text:\t{text}\nLabel: C:\\path\\n"
    python = load_config(None, base | {"classify.prompt_format": typed}).config
    assert python.classify.prompt_format == typed
    config = tmp_path / "run.yaml"
    config.write_text("classify:\n  prompt_format: 'Text: {text}\\nLabel:'\n")
    from_file = load_config(config, FlagValues(base)).config
    assert from_file.classify.prompt_format == "Text: {text}\\nLabel:"


def test_a_newline_in_the_system_prompt_flag_is_a_newline(tmp_path):
    """`--data.system_prompt "You answer for Skerry Line.\nBe brief."` trained on a system message holding a
    backslash and an n, where the same text in a YAML file's "..." is two lines: the flag reads \\n, \\t and \\\\ as
    `--classify.prompt_format` does; a Python override, a YAML value and the flag's null stay as they were."""
    base = {"model.name": "x", "data.train": ["rows.jsonl"]}
    typed = r"You answer for Skerry Line.\nBe brief.\tC:\path\\n"
    flag = load_config(None, FlagValues(base | {"data.system_prompt": typed})).config
    assert flag.data.system_prompt == "You answer for Skerry Line.\nBe brief.\tC:\\path\\n"
    assert load_config(None, base | {"data.system_prompt": typed}).config.data.system_prompt == typed
    config = tmp_path / "run.yaml"
    config.write_text("data:\n  system_prompt: 'Be brief.\\nReally.'\n")
    assert load_config(config, FlagValues(base)).config.data.system_prompt == "Be brief.\\nReally."
    assert load_config(config, FlagValues(base | {"data.system_prompt": None})).config.data.system_prompt is None
