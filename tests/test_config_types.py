"""Config: a value is read as the type its option takes: text kept as typed, whole numbers, YAML's booleans."""

import re

import pytest

from tunelab.config import RunConfig, load_config
from tunelab.errors import ConfigError


@pytest.mark.parametrize(
    "name, text, value",
    [
        ("output_dir", "0010", "0010"),  # YAML 1.1 reads an octal 8: the run would be written into 8/
        ("output_dir", "1_000", "1_000"),
        ("output_dir", "2024-05-01", "2024-05-01"),  # a date
        ("data.system_prompt", "3.10", "3.10"),
        ("data.system_prompt", "yes", "yes"),  # True
        ("eval.refusal", "No", "No"),  # False
        ("data.system_prompt", "Q: {text} A:", "Q: {text} A:"),  # a mapping
        ("data.system_prompt", "null", "null"),  # a str is its text; the API unsets by None, a flag by null
        ("eval.refusal", "~", "~"),
        ("data.train", "0010", ["0010"]),
        ("data.train", "[0010, b.jsonl]", ["0010", "b.jsonl"]),
        ("method.target_modules", "[q_proj, 'on']", ["q_proj", "on"]),
        ("data.fields", "{prompt: yes, completion: 0010}", {"prompt": "yes", "completion": "0010"}),
        ("train.lr", "1e-4", 1e-4),  # other options read their text as YAML, as before
        ("data.packing", "true", True),
        ("train.max_steps", "0010", 8),
        ("train.micro_batch", "auto", "auto"),
    ],
)
def test_a_text_option_keeps_its_text_as_typed(name, text, value):
    """A flag's text (or a str in the Python API's overrides) of a text option was read as YAML: --output_dir 0010
    trained into 8/, --data.system_prompt 3.10 became 3.1, --eval.refusal No was refused as a bool."""
    cfg = load_config(None, {name: text}, base_dir="/d").config
    section, _, key = name.rpartition(".")
    got = getattr(getattr(cfg, section) if section else cfg, key)
    if name == "data.train":
        value = [f"/d/{v}" for v in value]
    assert got == value and type(got) is type(value)


def test_a_python_str_null_is_text_and_none_unsets_an_optional_text_option(tmp_path):
    """The API's str 'null' for an optional text was read as YAML's null and unset the option: a refusal marker or
    system prompt 'null' was lost, as was one in a RunConfig (resolve passes its values as overrides)."""
    from tunelab.training.recipe import resolve

    path = tmp_path / "c.yaml"
    path.write_text("data:\n  train: [qa.jsonl]\n  system_prompt: Be brief.\n")
    cfg = load_config(path, {"data.system_prompt": "null", "eval.refusal": "NULL"}).config
    assert (cfg.data.system_prompt, cfg.eval.refusal) == ("null", "NULL")
    assert load_config(path, {"data.system_prompt": None}).config.data.system_prompt is None
    config = RunConfig()
    config.data.train, config.data.system_prompt = [str(tmp_path / "qa.jsonl")], "null"
    assert resolve(config).config.data.system_prompt == "null"


def test_text_options_of_a_staged_run_and_a_list_of_sources_read_as_before():
    stages = load_config(None, {"stages": "[{train: {lr: 1e-3}}, {data: {system_prompt: Be brief.}}]"}).config.stages
    assert stages == [{"train.lr": 1e-3}, {"data.system_prompt": "Be brief."}]
    train = load_config(None, {"data.train": "[a.jsonl, {path: b.jsonl, weight: 2}]"}, base_dir="/d").config.data.train
    assert train[0] == "/d/a.jsonl" and (train[1].path, train[1].weight) == ("/d/b.jsonl", 2.0)


@pytest.mark.parametrize(
    "content, message",
    [
        ("train: {save_every: no}", "'train.save_every' must be int, got False (bool: YAML reads yes, no, on, off,"),
        ("train: {eval_every: off}", "true and false as booleans; give a number)"),
        ("data: {train: [qa.jsonl], system_prompt: yes}", "'data.system_prompt' must be str, got True (bool: YAML"),
        ("data: {train: [qa.jsonl], system_prompt: yes}", "quote it for the text)"),
    ],
)
def test_a_yaml_boolean_given_for_a_number_or_text_says_yaml_made_it_one(tmp_path, content, message):
    """`save_every: no` was refused as "got False (bool)", a value the user never wrote."""
    path = tmp_path / "c.yaml"
    path.write_text(f"model: {{name: x}}\n{content}\n")
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(path)


@pytest.mark.parametrize("written", ["1e3", "1000.0", "1.0e3", '"1e3"', '"1000.0"', "10e2"])
def test_a_whole_number_written_as_a_float_is_read_for_an_integer_option(written, tmp_path):
    """`max_length: 1e3` (which YAML reads as the text '1e3': an exponent without a dot) and `2048.0` were refused as
    "must be int"; a whole number is read however it is written, in the file, in a source's key and as a flag."""
    path = tmp_path / "c.yaml"
    path.write_text(
        f"model: {{name: x}}\ndata: {{train: [{{path: qa.jsonl, take: {written}}}], max_length: {written}}}\n"
    )
    config = load_config(path, {"train.max_steps": written.strip('"')}).config
    assert config.data.max_length == config.data.train[0].take == config.train.max_steps == 1000
    assert type(config.data.max_length) is int and type(config.train.max_steps) is int


@pytest.mark.parametrize("written, shown", [("1.5", "1.5"), ('"0.5"', "'0.5'"), ("2.5e-1", "0.25")])
def test_a_fraction_for_an_integer_option_is_refused_naming_option_and_value(written, shown, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        f"model: {{name: x}}\ndata: {{train: [qa.jsonl], max_length: {written}}}\ntrain: {{micro_batch: 2}}\n"
    )
    with pytest.raises(
        ConfigError, match=re.escape(f"c.yaml:2: option 'data.max_length' is {shown}; it must be a whole number")
    ):
        load_config(path)
    path.write_text(f"model: {{name: x}}\ndata: {{train: [qa.jsonl]}}\ntrain: {{micro_batch: {written}}}\n")
    with pytest.raises(ConfigError, match=re.escape(f"option 'train.micro_batch' is {shown}; it must be a whole")):
        load_config(path)  # an int | auto option: said as the fraction it is, not "must be int or 'auto'"
    with pytest.raises(ConfigError, match=re.escape("option 'data.train', entry 1, key 'take' is 2.5; it must be a")):
        load_config(None, {"model.name": "x", "data.train": [{"path": "qa.jsonl", "take": 2.5}]})
    with pytest.raises(ConfigError, match=r"option 'train.max_steps' is '1e9999', too large a number"):
        load_config(None, {"model.name": "x", "data.train": ["qa.jsonl"], "train.max_steps": "1e9999"})


def test_a_quoted_whole_number_is_read_for_an_integer_option_as_a_quoted_number_is_for_a_float(tmp_path):
    """`max_length: "512"` was refused ("must be int") while `lr: "2e-4"` and `epochs: "3"` were read as numbers; an
    integer option now reads a quoted whole number too, and still refuses a quoted fraction."""
    path = tmp_path / "c.yaml"
    path.write_text(
        'model: {name: x}\ndata: {train: [{path: qa.jsonl, take: "5"}], max_length: "512"}\n'
        'train: {max_steps: " 10 ", micro_batch: "+4", lr: "2e-4", epochs: "3"}\n'
    )
    config = load_config(path).config
    assert config.data.max_length == 512 and config.data.train[0].take == 5
    assert config.train.max_steps == 10 and config.train.micro_batch == 4
    assert type(config.data.max_length) is int and config.train.lr == 2e-4 and config.train.epochs == 3.0
    path.write_text('model: {name: x}\ndata: {train: [qa.jsonl], max_length: "ten"}\n')
    with pytest.raises(ConfigError, match=re.escape("option 'data.max_length' must be int")):
        load_config(path)
    path.write_text('model: {name: x}\ndata: {train: [qa.jsonl], max_length: "0"}\n')
    with pytest.raises(ConfigError, match="data.max_length"):  # the range is checked as for an unquoted one
        load_config(path)
