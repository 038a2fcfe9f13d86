"""Config: YAML + flags resolve with their origins; bad options are named with their allowed values."""

import re
from pathlib import Path

import pytest

from tunelab.config import RunConfig, describe, dump_yaml, load_config
from tunelab.config.load import stage_config
from tunelab.config.overrides import FlagValues
from tunelab.errors import ConfigError, article, counted

EXAMPLES = sorted(Path(__file__).resolve().parents[1].glob("examples/*/config*.yaml"))


def test_yaml_then_flags_with_origins(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  train: [qa.jsonl]\ntrain:\n  lr: 1.0e-4\n  epochs: 2\n")
    resolved = load_config(path, FlagValues({"train.lr": "3e-4", "data.packing": "true"}))
    cfg = resolved.config
    assert cfg.train.lr == 3e-4 and cfg.train.epochs == 2.0 and cfg.data.packing is True
    assert cfg.data.train == [str(tmp_path / "qa.jsonl")]  # relative to the YAML file
    assert resolved.origins["train.lr"] == "--train.lr"
    assert resolved.origins["train.epochs"] == str(path)
    assert resolved.origins["train.seed"] == "default"
    assert "train.lr" in describe(resolved) and "(--train.lr)" in describe(resolved)


def test_a_data_source_is_printed_as_its_keys_that_were_set(tmp_path):
    """A data.train mapping was printed as the dataclass holding every key, `DataSource(path=..., hub=None,
    split='train', ...)`: a Python repr of 15 keys, one saying split 'train' for a file, which reads no split."""
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  train:\n    - {path: qa.jsonl, take: 40}\n    - more.jsonl\n")
    line = next(x for x in describe(load_config(path)).splitlines() if x.startswith("  data.train "))
    assert f"[{{'path': '{tmp_path / 'qa.jsonl'}', 'take': 40}}, '{tmp_path / 'more.jsonl'}']" in line, line
    assert "DataSource" not in line and "split" not in line


def test_saved_yaml_round_trips(tmp_path):
    cfg = load_config(None, {"method.r": 8, "data.fields": {"prompt": "q"}}).config
    path = tmp_path / "saved.yaml"
    path.write_text(dump_yaml(cfg))
    again = load_config(path).config
    assert again == cfg


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"train.lrr": "1"}, "unknown option 'train.lrr'. Did you mean train.lr"),
        ({"train.scheduler": "step"}, "allowed values: constant, linear, cosine"),
        ({"train.micro_batch": "0"}, "'train.micro_batch' is 0; it must be >= 1"),
        ({"train.epochs": "0"}, "'train.epochs' is 0; it must be >= 0.01"),  # as typed, not the float 0.0
        ({"train.epochs": 0}, "'train.epochs' is 0; it must be >= 0.01"),  # as YAML read it
        ({"data.eval_fraction": "0.9"}, "must be <= 0.5"),
        ({"train.lr": "fast"}, "'train.lr' must be float"),
        ({"train.lr": "nan"}, "'train.lr' is 'nan'; it must be a finite number"),
        ({"data.train": ["a.jsonl", ""]}, "option 'data.train', entry 2, is an empty path"),
        ({"data.train": [{"path": " "}]}, "option 'data.train', entry 1, is an empty path"),
        ({"data.eval": ""}, "option 'data.eval' is an empty path"),  # one path, not a list: no entry 1
        ({"train.epochs": "inf"}, "'train.epochs' is 'inf'; it must be a finite number"),
        ({"train.max_grad_norm": float("nan")}, "'train.max_grad_norm' is nan; it must be a finite number"),
        (
            {"data.train": [{"path": "a.jsonl", "weight": float("inf")}]},
            "'data.train', entry 1, key 'weight' is inf; it must be",
        ),
        ({"method.name": "qlora2"}, "allowed values: lora, dora, full, layers"),
        ({"data.eval": "e.jsonl", "data.eval_fraction": "0.1"}, "both set"),
        # said only that it was for lora: what to do instead is named too
        (
            {"method.name": "full", "method.use_dora": "true"},
            "method.name is full, which trains the model's own weights and has no adapter to decompose; remove "
            "method.use_dora, or use method.name dora",
        ),
        ({"method.name": "layers", "method.use_dora": "true"}, "method.name is layers, which trains the model's own"),
        ({"method.name": "dora", "method.use_dora": "true"}, "method.name is dora, which is DoRA already; remove"),
    ],
)
def test_bad_options_are_named(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, overrides)


KINDS = "allowed values: contains, equals, regex, length, function, model."


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            {"task": "grpo", "grpo.rewards": [{"kind": 3}]},
            f"'grpo.rewards', entry 1, key 'kind' is 3 (a number, not text); {KINDS}",
        ),
        ({"task": "grpo", "grpo.rewards": [{"kind": [1, 2]}]}, f"is [1, 2] (a list, not text); {KINDS}"),
        ({"task": "grpo", "grpo.rewards": [{"kind": None}]}, f"'grpo.rewards', entry 1, key 'kind' is None; {KINDS}"),
        ({"method.name": 3}, "'method.name' is 3 (a number, not text); allowed values: lora, dora, full, layers."),
        # a bare reward entry of another type was read as the kind '3', or named no entry nor kinds
        (
            {"task": "grpo", "grpo.rewards": ["contains", 3]},
            "'grpo.rewards', entry 2, is 3 (a number); it must be text",
        ),
        ({"task": "grpo", "grpo.rewards": [True]}, "entry 1, is True (a bool); it must be text or a mapping {kind,"),
        ({"task": "grpo", "grpo.rewards": [["contains"]]}, "(a bare kind is one of contains, equals, regex, length,"),
        (
            {"task": "grpo", "grpo.rewards": [{"kind": "contains", "wieght": 2}]},
            "entry 1, has the unknown key 'wieght'",
        ),
        (
            {"data.train": ["a.jsonl", 2024.1]},
            "'data.train', entry 2, is 2024.1 (a number); it must be text or a mapping",
        ),
        ({"train.report_to": ["tensorboard", 1]}, "'train.report_to' is 1 (a number, not text); allowed values:"),
        ({"data.fields": {"label": " "}}, "option 'data.fields' maps 'label' to an empty column name"),
        ({"data.fields": {"": "category"}}, "option 'data.fields' has an empty field name"),
    ],
)
def test_a_choice_that_is_not_text_and_an_empty_column_name_are_refused(overrides, message):
    """A number for an option of fixed choices was taken as its Python text ('3'), a list was refused without the
    choices; a blank column name in data.fields led to errors naming '' (or nothing)."""
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, overrides)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"dpo.beta": 0.5}, "option 'dpo.beta' is for task dpo; option 'task' is sft"),
        (
            {"task": "dpo", "grpo.num_generations": 8},
            "option 'grpo.num_generations' is for task grpo; option 'task' is dpo",
        ),
        ({"task": "reward", "classify.class_weights": "balanced"}, "'classify.class_weights' is for task classify;"),
        ({"task": "reward", "classify.label_weights": {"a": 2}}, "'classify.label_weights' is for task classify;"),
        ({"task": "grpo", "dpo.loss": "ipo"}, "option 'dpo.loss' is for task dpo; option 'task' is grpo"),
        ({"task": "sft", "classify.head_lr": 0.01}, "'classify.head_lr' is for tasks classify and reward;"),
        (
            {"dpo.beta": 0.5, "stages": [{"train": {"lr": 1e-3}}, {"task": "classify"}]},
            "option 'dpo.beta' is for task dpo; the stages' tasks are classify, sft",
        ),
    ],
)
def test_an_option_no_task_of_the_run_reads_is_refused_not_ignored(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, overrides)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            {"dpo.loss": "ipo", "dpo.label_smoothing": 0.1},
            "'dpo.label_smoothing' is read by dpo.loss sigmoid and simpo",
        ),
        ({"dpo.simpo_gamma": 1.0}, "'dpo.simpo_gamma' is read by dpo.loss simpo; dpo.loss is sigmoid"),
        (
            {"stages": [{"train": {"lr": 1e-3}}, {"task": "dpo", "dpo": {"loss": "ipo", "label_smoothing": 0.1}}]},
            "stage 2: option 'dpo.label_smoothing' is read by dpo.loss sigmoid and simpo; dpo.loss is ipo",
        ),
    ],
)
def test_a_dpo_option_its_loss_does_not_read_is_refused_not_ignored(overrides, message):
    """label_smoothing with ipo, or simpo_gamma with sigmoid, trained the same loss as without them, without a word."""
    overrides = {"task": "dpo"} | overrides if "stages" not in overrides else overrides
    with pytest.raises(ConfigError, match=re.escape(message)):
        resolved = load_config(None, overrides)
        for k in range(len(resolved.config.stages)):
            stage_config(resolved, k, f"runs/s{k}")
    assert load_config(None, {"task": "dpo", "dpo.loss": "simpo", "dpo.label_smoothing": 0.1, "dpo.simpo_gamma": 1.0})


def test_a_saved_config_with_an_option_its_task_does_not_read_still_opens(tmp_path):
    """A run saved before such options were refused (or by hand) must still open for eval, export and resume."""
    path = tmp_path / "config.yaml"
    path.write_text("task: sft\ndpo:\n  beta: 0.5\n")
    with pytest.raises(ConfigError, match="'dpo.beta' is for task dpo"):
        load_config(path)
    assert load_config(path, saved=True).config.dpo.beta == 0.5
    assert load_config(None, {"task": "dpo", "dpo.beta": 0.5}).config.dpo.beta == 0.5


def test_bad_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  lr: [1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml, line \d+: not valid YAML"):
        load_config(path)
    path.write_text("train:\n  lrr: 1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:2: unknown option 'train\.lrr'"):
        load_config(path)


def test_an_unknown_python_override_points_to_pythons_list_of_options(tmp_path):
    """An unknown key among the API's overrides ended "Run 'tunelab train --help' for the list", a command the caller
    never ran; the options' Python list is named instead. A file and a stage of the overrides are named as before."""
    from tunelab.config import iter_options

    with pytest.raises(ConfigError) as error:
        load_config(None, {"train.lrr": 1e-4, "train.epoch": 1})
    text = str(error.value)
    assert text.startswith("overrides['train.lrr']: unknown option 'train.lrr'. Did you mean train.lr")
    assert text.endswith("tunelab.config.iter_options() lists them (name, field, type).") and "--help" not in text
    assert text.count("iter_options") == 1  # said once, at the end of the last
    assert "train.lr" in [name for name, _, _ in iter_options()]  # what it says lists them does
    with pytest.raises(ConfigError, match=r"overrides\['stages'\]: stage 1: unknown option 'train\.lrr'.*iter_opt"):
        load_config(None, {"stages": [{"train.lrr": 1}]})
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  lrr: 1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:2: unknown option 'train\.lrr'.*Run 'tunelab train --help'"):
        load_config(path)


def test_paths_are_kept_absolute(tmp_path, monkeypatch):
    """A YAML file's relative paths are its folder's, a flag's the working directory's; both are stored absolute, so
    the run's saved config.yaml names the same files from any working directory (export's check, --resume)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "c.yaml").write_text("data:\n  train: [qa.jsonl, {path: more.jsonl}]\n")
    cfg = load_config("cfg/c.yaml", {"eval.questions": "q.jsonl"}).config
    assert cfg.data.train[0] == str(tmp_path / "cfg" / "qa.jsonl")
    assert cfg.data.train[1].path == str(tmp_path / "cfg" / "more.jsonl")
    assert cfg.eval.questions == str(tmp_path / "q.jsonl")


def test_a_key_given_twice_is_refused_with_its_line(tmp_path):
    """YAML keeps the last of two equal keys: the first section's options would vanish without a word."""
    path = tmp_path / "twice.yaml"
    path.write_text("data:\n  max_length: 64\ntrain:\n  lr: 1.0e-4\ndata:\n  train: [a.jsonl]\n")
    with pytest.raises(ConfigError, match=r"twice\.yaml, line 5: key 'data' is given twice .*first on line 1"):
        load_config(path)
    path.write_text("train: {lr: 1.0e-4, max_steps: 1, lr: 1.0e-2}\n")
    with pytest.raises(ConfigError, match="key 'lr' is given twice"):
        load_config(path)
    path.write_text("train: {lr: 1.0e-4}\ntrain.lr: 1.0e-2\n")
    with pytest.raises(ConfigError, match="option 'train.lr' is given twice"):
        load_config(path)


def test_an_option_given_dotted_and_in_its_section_is_named_by_both_lines(tmp_path):
    """The README says a repeated key is refused with its line; an option given once as train.lr and once under
    train: named the file alone, leaving the user to search a long config for both."""
    path = tmp_path / "twice.yaml"
    path.write_text("data:\n  train: [a.jsonl]\ntrain.lr: 1.0e-2\ntrain:\n  epochs: 1\n  lr: 1.0e-4\n")
    with pytest.raises(ConfigError, match=r"twice\.yaml:3: option 'train\.lr' is given twice \(lines 3 and 6\)"):
        load_config(path)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.parent.name for p in EXAMPLES])
def test_every_example_config_loads(path):
    cfg = load_config(path).config
    assert isinstance(cfg, RunConfig)
    for file in cfg.data.train:
        made = path.parent / "prepare.py"  # examples whose data prepare.py writes from ../shared/data (not committed)
        if made.exists() and not Path(file).exists():
            assert Path(file).name in (path.parent / ".gitignore").read_text().split(), file
            assert Path(file).name in made.read_text(), f"{made} does not write {file}"
        else:
            assert Path(file).exists(), file
    if cfg.eval.questions:
        assert Path(cfg.eval.questions).exists()


def test_a_mapping_where_a_list_of_sources_goes_names_the_types_without_module_paths():
    with pytest.raises(ConfigError, match=r"'data.train' must be a list of str \| DataSource, got \{'path': 'a'\}"):
        load_config(None, {"data.train": {"path": "a"}})


@pytest.mark.parametrize(
    "content, message",
    [
        (b"data: {train: [qa.jsonl]}\nx: caf\xe9\n", r"c\.yaml, line 2: not UTF-8 text \(byte 0xe9\)"),
        (b"? [a, b]\n: 1\n", r"c\.yaml, line 1: a key must be a name, not a list"),
        (b"data:\n  train: [qa.jsonl]\n  {a: 1}: 2\n", r"c\.yaml, line 3: a key must be a name, not a mapping"),
    ],
)
def test_a_file_yaml_cannot_give_options_from_is_named_with_its_line(tmp_path, content, message):
    """A Latin-1 file stopped with a UnicodeDecodeError, a list or mapping as a key with a TypeError (tracebacks)."""
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_load_config_says_what_it_takes():
    with pytest.raises(ConfigError, match="load_config takes a YAML file's path"):
        load_config({"data": {"train": ["qa.jsonl"]}})
    with pytest.raises(ConfigError, match="overrides must be a mapping of dotted option names"):
        load_config(None, ["train.lr=1"])
    with pytest.raises(ConfigError, match="an option's name is text, like 'train.lr'; got 1"):
        load_config(None, {1: 2})


def test_a_path_or_a_tuple_is_taken_where_the_api_takes_paths_or_a_list(tmp_path):
    """{'data.eval': Path(...)} was refused as "must be str, got PosixPath", a tuple of files as not a list."""
    cfg = load_config(
        None,
        {
            "data.eval": tmp_path / "e.jsonl",
            "data.train": ("a.jsonl", tmp_path / "b.jsonl", {"path": tmp_path / "c.jsonl"}),
            "output_dir": tmp_path / "run",
        },
    ).config
    assert cfg.data.eval == str(tmp_path / "e.jsonl") and cfg.output_dir == str(tmp_path / "run")
    assert cfg.data.train[:2] == [str(Path.cwd() / "a.jsonl"), str(tmp_path / "b.jsonl")]
    assert cfg.data.train[2].path == str(tmp_path / "c.jsonl")


@pytest.mark.parametrize(
    "content, message",
    [
        (
            "output_dir: r\ndat: {train: [qa.jsonl]}\n",  # the key's line, as an unknown option's
            "c.yaml:2: unknown section 'dat'. Did you mean 'data'? The sections are model,",
        ),
        ("output_dir: r\ntrainer:\n  lr: 1.0e-4\n", "c.yaml:2: unknown section 'trainer'. Training options live under"),
        (
            "stages:\n  - {train: {lr: 1.0e-4}}\n  - {contine: merge}\n",
            "c.yaml:3: stage 2: unknown key 'contine'. Did you mean 'continue'?",
        ),
        ("fields: {prompt: q}\n", "unknown option 'fields'. Did you mean data.fields?"),  # a key, not a section
    ],
)
def test_a_misspelt_section_or_stage_key_is_named_with_what_was_meant(tmp_path, content, message):
    path = tmp_path / "c.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(path)


@pytest.mark.parametrize(
    "overrides, message",
    [
        # suggested data.train, an option in another section
        ({"train": {"lr": 1e-4}}, "'train' is a section, not an option; name its options with dots ('train.lr')"),
        ({"train": 5}, "'train' is a section, not an option; name its options with dots (like 'train.epochs')"),
    ],
)
def test_a_section_given_as_an_override_says_to_name_its_options_with_dots(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, overrides)


def test_a_tracker_named_twice_is_refused():
    # it would get every record twice (two TensorBoard writers into one directory)
    message = "option 'train.report_to' names 'tensorboard' more than once ([tensorboard, tensorboard])"
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, {"train.report_to": ["tensorboard", "tensorboard"]})


def test_a_text_option_holding_a_lone_surrogate_is_refused_naming_file_and_option(tmp_path):
    """YAML's and JSON's unpaired "\\ud800", or a flag's byte that is not UTF-8, made a text no tokenizer takes: the
    run crashed later with a TypeError. An optional text (str | None) says so too, not "must be str"."""
    path = tmp_path / "c.yaml"
    path.write_text('model:\n  name: m\ndata:\n  train: [a.jsonl]\n  system_prompt: "hi \\ud800"\n')
    with pytest.raises(
        ConfigError, match=rf"^{re.escape(str(path))}:5: option 'data.system_prompt': character 4 is U\+D800"
    ):
        load_config(path)
    with pytest.raises(ConfigError, match=r"^--data.fields: option 'data.fields': character 11 is U\+DCFF.*byte 0xff"):
        load_config(None, FlagValues({"data.fields": "{prompt: q\udcff}"}))
    assert load_config(None, {"data.system_prompt": "héllo 😀"}).config.data.system_prompt == "héllo 😀"


def test_an_empty_output_dir_is_refused_not_read_as_the_current_folder():
    with pytest.raises(ConfigError, match=r"--output_dir: option 'output_dir' is empty .*it would name the current"):
        load_config(None, FlagValues({"output_dir": " "}))


@pytest.mark.parametrize(
    ("name", "value", "variable"),
    [("output_dir", " ", "OUT"), ("model.name", "", "MODEL"), ("data.eval", "", "DATA")],
)
def test_an_empty_value_names_its_flag_on_the_cli_and_no_flag_in_python(name, value, variable):
    """An empty value given in Python was asked about as `--output_dir "$OUT"`, a flag the caller never typed."""
    with pytest.raises(ConfigError) as error:
        load_config(None, {name: value})
    text = str(error.value)
    assert text.startswith(f"overrides[{name!r}]: ") and f'os.environ.get("{variable}", "")' in text
    assert f"--{name}" not in text
    with pytest.raises(ConfigError, match=re.escape(f'(an unset variable in --{name} "${variable}"?)')):
        load_config(None, FlagValues({name: value}))


@pytest.mark.parametrize("name", ["model.name"])
def test_an_empty_model_is_refused_not_read_as_the_current_folder(name, tmp_path):
    with pytest.raises(ConfigError, match=rf"--{name}: option '{name}' is empty .*it would load the current folder"):
        load_config(None, FlagValues({name: " "}))
    (tmp_path / "run.yaml").write_text("model: {name: ''}\n")
    with pytest.raises(ConfigError, match=r"run\.yaml:1: option 'model\.name' is empty"):
        load_config(tmp_path / "run.yaml")


@pytest.mark.parametrize(
    "overrides, says",
    [
        ({"train.seed": 2**70}, r"option 'train.seed' is 1180591620717411303424; it must be <= 9223372036854775807"),
        ({"train.seed": -1}, r"option 'train.seed' is -1; it must be >= 0"),
        ({"eval.refusal": " "}, r"option 'eval.refusal' is empty"),
        ({"train.gpu_memory": "24"}, r"option 'train.gpu_memory': '24' has no unit; write it like 24GiB"),
    ],
)
def test_values_that_passed_the_config_but_failed_or_misled_later_are_refused(overrides, says):
    """A seed beyond 64 bits passed `check` and crashed torch.manual_seed; an empty refusal sentence dropped the
    refusal rates; --gpu-memory 24 planned for 24 bytes."""
    with pytest.raises(ConfigError, match=says):
        load_config(None, overrides)


def test_layers_to_recompute_with_checkpointing_off_are_refused():
    """train.checkpoint_layers 4 with train.checkpointing false trained and planned with no layer recomputed, the
    count dropped without a word; 0 layers says the same as checkpointing off and is kept."""
    with pytest.raises(ConfigError, match=r"'train.checkpoint_layers' is 4, .* 'train.checkpointing' is false"):
        load_config(None, {"train.checkpointing": False, "train.checkpoint_layers": 4})
    assert (
        load_config(None, {"train.checkpointing": False, "train.checkpoint_layers": 0}).config.train.checkpointing
        is False
    )
    assert load_config(None, {"train.checkpoint_layers": 4}).config.train.checkpoint_layers == 4  # auto: the planner


@pytest.mark.parametrize(
    "content, message",
    [
        ("model: {name: m}\ntrain:\n  epochs: 1\n  lr: fast\n", r"c\.yaml:4: option 'train\.lr' must be"),
        ("data:\n  max_length: -3\n", r"c\.yaml:2: option 'data\.max_length' is -3; it must be >="),
        ("train.lr: fast\n", r"c\.yaml:1: option 'train\.lr' must be"),
        ("train:\n\n  lrr: 1\n", r"c\.yaml:3: unknown option 'train\.lrr'"),
    ],
)
def test_a_bad_value_in_a_yaml_file_names_the_line_of_its_key(tmp_path, content, message):
    path = tmp_path / "c.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_config(path)
    with pytest.raises(ConfigError, match=r"^--train\.lr: option 'train\.lr' must be"):  # a flag: by its option
        load_config(None, FlagValues({"train.lr": "fast"}))


@pytest.mark.parametrize(
    "word, said",
    [("sft", "an sft"), ("dpo", "a dpo"), ("grpo", "a grpo"), ("classify", "a classify"), ("int", "an int")]
    + [("str", "a str"), ("assistant", "an assistant"), ("user", "a user"), ("NoneType", "a NoneType")],
)
def test_a_message_puts_the_article_its_word_is_said_with(word, said):
    """Messages said 'a sft run' (predict on a text run, an sft run as a grpo reward model) and 'got a int'."""
    assert article(word) == said


def test_a_rule_across_options_names_the_file_and_line_or_the_flag_that_broke_it(tmp_path):
    """A value refused by a rule that reads several options (a tracker listed twice, an option of another task) named
    the option only: a user of a long config, or of a command line with many flags, had to find where it was set."""
    path = tmp_path / "run.yaml"
    path.write_text("data:\n  train: [qa.jsonl]\ntrain:\n  epochs: 1\n  report_to: [tensorboard, tensorboard]\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}:5: option 'train.report_to' names 'tensorboard'"):
        load_config(path)
    path.write_text("data:\n  train: [qa.jsonl]\ndpo:\n  beta: 0.3\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}:4: option 'dpo.beta' is for task dpo"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"^--train\.grad_accum: option 'train\.grad_accum' must be 1 with task grpo"):
        load_config(path, FlagValues({"task": "grpo", "dpo.beta": "0.1", "train.grad_accum": "2"}))


def test_counted_is_singular_at_one():
    """Messages said "1 rows per optimizer step", "1 file(s)", "1 examples"."""
    assert [counted(n, "row") for n in (0, 1, 2)] == ["0 rows", "1 row", "2 rows"]
    assert counted(1, "entry", "entries") == "1 entry" and counted(3, "entry", "entries") == "3 entries"


@pytest.mark.parametrize("name", ["qa.jsonl", "qa.csv", "docs", "rows.json", "guide.md"])
def test_data_given_where_the_config_goes_is_named_as_data(tmp_path, name):
    """`tunelab train qa.jsonl` said 'line 2: not valid YAML', a one-line file 'unknown option question', a CSV 'the
    config must be a mapping' and a folder 'config file not found': none said that a data file was given where the
    config goes, nor how to train on it."""
    path = tmp_path / name
    if name == "docs":
        path.mkdir()
    elif name.endswith(".json"):
        path.write_text('[{"question": "Q?", "answer": "A."}]')
    elif name.endswith(".md"):  # Markdown is valid YAML: one string, not a mapping
        path.write_text("Install with pip.\n")
    else:
        path.write_text(
            '{"question": "Q?", "answer": "A."}\n' if name.endswith(".jsonl") else "question,answer\nQ?,A.\n"
        )
    with pytest.raises(ConfigError) as error:  # a Python caller: the override's key alone
        load_config(path)
    assert str(error.value).startswith(str(path))
    assert f"give it as overrides {{'data.train': ['{path}']}}." in str(error.value)
    assert "--data.train" not in str(error.value)
    assert "not a config file" in str(error.value) or "if it is data" in str(error.value)
    with pytest.raises(ConfigError) as error:  # the CLI: the flag alone
        load_config(path, FlagValues())
    assert f"give it as --data.train {path}." in str(error.value) and "overrides" not in str(error.value)
    assert load_config(None, {"data.train": [str(path)]}).config.data.train  # the way it names


@pytest.mark.parametrize(
    "content, message",
    [
        (
            "model: smollm2-135m-instruct\n",
            ":1: section 'model' must be a mapping of options like model: {name: smollm2-135m-instruct}, got",
        ),
        (
            "model: {name: x}\ndata: [qa.jsonl, b.jsonl]\n",
            ":2: section 'data' must be a mapping of options like data: {train: [qa.jsonl, b.jsonl]}",
        ),
        ("model: {name: x}\ntrain: 5\n", ":2: section 'train' must be a mapping of options, got 5."),
    ],
)
def test_a_section_given_a_bare_value_names_its_line_and_the_option_meant(tmp_path, content, message):
    """model: NAME was refused naming the file only, without its line or how to write it."""
    path = tmp_path / "c.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=re.escape(f"{path}{message}")):
        load_config(path)


def test_every_unknown_option_of_a_file_is_named_at_once(tmp_path):
    """A config written for another tool has several foreign names; each was named by a run of its own."""
    path = tmp_path / "c.yaml"
    path.write_text("data: {train: [qa.jsonl]}\nlearning_rate: 2e-4\ntrain: {lr: 1e-4}\nlora_r: 16\nbf16: true\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value).splitlines() == [
        f"{path}:2: unknown option 'learning_rate'. Did you mean train.lr?",
        f"{path}:4: unknown option 'lora_r'. Did you mean method.r?",
        f"{path}:5: unknown option 'bf16'. Did you mean model.dtype (write model.dtype: bf16)? Run 'tunelab train "
        "--help' for the list.",
    ]


def test_a_folder_given_as_the_config_is_called_a_folder(tmp_path):
    """A run directory given as the config was 'config file not found', though it was there."""
    (tmp_path / "config.yaml").write_text("model: {name: x}\n")
    with pytest.raises(
        ConfigError, match=re.escape(f"{tmp_path}: is a folder, not a config file; give the YAML file (a")
    ):
        load_config(tmp_path)


def test_an_override_is_named_as_it_was_given_in_python_or_on_the_command_line():
    """The Python API's overrides were shown and refused as flags (`(--output_dir)`, "--train.lr: ...") that the
    user never typed: in Python they are named by their key, on the command line (FlagValues) by their flag."""
    resolved = load_config(None, {"output_dir": "runs/a"})
    assert resolved.origins["output_dir"] == "overrides['output_dir']"
    assert "(overrides['output_dir'])" in describe(resolved)
    with pytest.raises(ConfigError, match=r"^overrides\['train\.lr'\]: option 'train\.lr' must be"):
        load_config(None, {"train.lr": "fast"})
    assert load_config(None, FlagValues({"output_dir": "runs/a"})).origins["output_dir"] == "--output_dir"
    with pytest.raises(ConfigError, match=r"^--train\.lr: option 'train\.lr' must be"):
        load_config(None, FlagValues({"train.lr": "fast"}))


def test_grpo_beta_help_names_the_reference_of_every_method():
    """`--grpo.beta`'s help said the KL term is to the base with the adapter off; full, layers and a continued adapter
    take the weights the run starts from (tasks/grpo.py), as the line at start says."""
    from tunelab.config import iter_options

    help_text = next(f.metadata["help"] for name, f, _ in iter_options() if name == "grpo.beta")
    assert "the adapter off" in help_text and "the starting weights" in help_text, help_text
