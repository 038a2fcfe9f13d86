"""Config: stages are lists of mappings whose errors name their own file line and stage."""

import re

import pytest

from tunelab.config import load_config
from tunelab.config.load import stage_config
from tunelab.config.overrides import FlagValues
from tunelab.errors import ConfigError


def test_an_option_serves_a_stage_of_its_task():
    stages = [{"train": {"lr": 1e-3}}, {"task": "dpo", "data": {"train": ["p.jsonl"]}}]
    resolved = load_config(None, {"dpo.beta": 0.5, "stages": stages})  # dpo.beta is for stage 2
    sft, dpo = (stage_config(resolved, k, f"runs/s{k}").config for k in (0, 1))
    assert (sft.task, sft.dpo.beta, dpo.task, dpo.dpo.beta) == ("sft", 0.1, "dpo", 0.5)  # stage 1 saves its own
    flagged = load_config(None, {"dpo.beta": "0.5", "stages": stages})  # a flag, as the CLI gives it
    assert stage_config(flagged, 0, "runs/s0").config.dpo.beta == 0.1
    assert stage_config(flagged, 1, "runs/s1").config.dpo.beta == 0.5


@pytest.mark.parametrize(
    "stages, message",
    [
        ("5", "option 'stages' must be a list of mappings, got 5"),  # was: "must be a mapping like {key: value}"
        (
            [{"train": {"lr": 1e-4}}, 5],
            "--stages: stage 2: a stage must be a mapping of options (data:, method:, train:, ...), got 5",
        ),
    ],
)
def test_stages_that_are_not_a_list_of_mappings_say_so(stages, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, FlagValues({"stages": stages}))


@pytest.mark.parametrize(
    "content, message",
    [
        (
            "model: {name: m}\nstages:\n  - train: {epochs: 1}\n  - name: polish\n    train:\n      epochs: 1\n"
            "      lr: fast\n",
            r"c\.yaml:7: stage 2: option 'train\.lr' must be",
        ),
        ("stages:\n  - {train: {lr: 1.0e-4}}\n  - train.lr: fast\n", r"c\.yaml:3: stage 2: option 'train\.lr' must be"),
        ("stages:\n  - {}\n  -\n    continue: fold\n", r"c\.yaml:4: stage 2: 'continue' is 'fold'; allowed values"),
    ],
)
def test_an_error_inside_a_stage_names_its_own_line(tmp_path, content, message):
    """An error in a stage named the line of the `stages:` key (c.yaml:1: stage 2: ...), leaving the user to search
    the stages; it names the line of the stage's own option (or of the stage) now."""
    path = tmp_path / "c.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


@pytest.mark.parametrize(
    "content, message",
    [
        ("stages:\n  - {train: {lr: 1.0e-4}}\n  - 3\n", r"c\.yaml:3: stage 2: a stage must be a mapping of options"),
        ("stages: [{name: a}, 3]\n", r"c\.yaml:1: stage 2: a stage must be a mapping of options .* got 3"),
        (
            "stages:\n  - name: a\n  - name: b\n    data: {max_length: 64}\n    train: 5\n",
            r"c\.yaml:5: stage 2: section 'train' must be a mapping of options, got 5",
        ),
    ],
)
def test_a_stage_or_a_section_of_the_wrong_shape_names_its_line_and_stage(tmp_path, content, message):
    """A stage that is no mapping was named as 'option stages, entry 2' at the line of `stages:`, and a section that is
    no mapping by the stage's first line, not its own."""
    path = tmp_path / "c.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


@pytest.mark.parametrize(
    "content, message",
    [
        (
            "stages:\n  - name: polish\n  - {train: {lr: 1.0e-4}}\n  - name: polish\n",
            r"c\.yaml:4: stage 3: the stage's name is 'polish', which stage 1 has too",
        ),
        ("stages:\n  - {}\n  - name: stage-1\n", r"c\.yaml:3: stage 2: the stage's name is 'stage-1', which stage 1"),
    ],
)
def test_two_stages_of_one_name_are_refused(tmp_path, content, message):
    """Two stages of one name gave a forgetting matrix with two rows 'after polish' and two columns 'on polish', and
    nothing said which stage each was."""
    path = tmp_path / "c.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


@pytest.mark.parametrize(
    "content, message",
    [
        ("stages:\n  - {}\n  - name:\n", r"c\.yaml:3: stage 2: 'name' is None; a stage's name is a text"),
        ("stages:\n  - name: [a, b]\n", r"c\.yaml:2: stage 1: 'name' is \['a', 'b'\]; a stage's name is a text"),
        ("stages:\n  - name: ' '\n", r"c\.yaml:2: stage 1: 'name' is ' '; a stage's name is a text"),
    ],
)
def test_a_stage_name_that_is_no_text_is_refused(tmp_path, content, message):
    """`name:` left empty named the stage 'None' in the forgetting matrix and run.json, and a list its Python form."""
    path = tmp_path / "c.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_config(path)
    path.write_text("stages:\n  - name: 2024\n")
    assert load_config(path).config.stages == [{"name": "2024"}]


def test_a_stage_that_contradicts_the_run_names_its_file_and_line(tmp_path):
    """A stage's options that the run's own contradict (dpo.beta in an sft stage) were named by 'stage 2' alone,
    without the file or the line, unlike every other error in a stage."""
    from tunelab.config import stage_config

    path = tmp_path / "c.yaml"
    path.write_text("model: {name: m}\nstages:\n  - name: a\n  - name: b\n    dpo:\n      beta: 0.5\n")
    with pytest.raises(ConfigError, match=r"c\.yaml:4: stage 2: option 'dpo\.beta' is for task dpo"):
        stage_config(load_config(path), 1, str(tmp_path / "run"))
    flagged = load_config(None, FlagValues({"stages": [{"name": "a"}, {"dpo": {"beta": 0.5}}]}))
    with pytest.raises(ConfigError, match=r"^--stages: stage 2: option 'dpo\.beta'"):
        stage_config(flagged, 1, str(tmp_path / "run"))


def _staged_file(tmp_path, stage: dict):
    """A config file of two stages, each `stage`, that a flag can win over (stages given as a flag are more
    specific than any other flag)."""
    import yaml

    config = tmp_path / "staged.yaml"
    config.write_text(
        yaml.safe_dump({"model": {"name": "m"}, "stages": [stage | {"data": {"train": ["a.jsonl"]}}] * 2})
    )
    return config


def test_the_rules_across_options_read_each_stage_as_a_flag_makes_it(tmp_path):
    """A flag wins over a file's stages while training, but method.init, early stopping and the task options were
    checked against the stages as written: a flag that turned an option off in every stage was refused for what
    the stages said, and one that left a top-level option unread by every stage was let through."""
    pissa = _staged_file(tmp_path, {"method": {"init": "pissa"}})
    with pytest.raises(ConfigError, match="option 'method.init' is pissa, but a staged run"):
        load_config(pissa)
    resolved = load_config(pissa, FlagValues({"method.init": "default"}))
    assert {stage_config(resolved, k, "s").config.method.init for k in (0, 1)} == {"default"}
    patience = _staged_file(tmp_path, {"train": {"early_stopping_patience": 3}})
    with pytest.raises(ConfigError, match="'train.early_stopping_patience' is not supported in a staged run"):
        load_config(patience)
    assert load_config(patience, FlagValues({"train.early_stopping_patience": "0"})).config.stages
    dpo = _staged_file(tmp_path, {"task": "dpo"})
    assert load_config(dpo, FlagValues({"dpo.beta": "0.5"})).config.dpo.beta == 0.5  # the stages' dpo reads it
    with pytest.raises(ConfigError, match=r"option 'dpo.beta' is for task dpo; the stages' tasks are sft"):
        load_config(dpo, FlagValues({"dpo.beta": "0.5", "task": "sft"}))


def test_a_flag_over_the_stages_methods_notes_the_stages_options_it_leaves_unread(tmp_path):
    """--method.name full over stages of lora r 8: every stage trains full, which reads no r; the note said nothing,
    reading the stages' lora as written, and the printed config showed method.alpha as read."""
    from tunelab.config import describe

    config = _staged_file(tmp_path, {"method": {"name": "lora", "r": 8}})
    shown = describe(load_config(config, FlagValues({"method.name": "full"})))
    assert "note: stage 1: method.r (8) is not used by method full" in shown
    assert "note: stage 2: method.r (8) is not used by method full" in shown
    assert "method.alpha" not in shown.split("... and")[0]  # left out: at its default and unread by full
