"""Config: YAML + flags resolve with their origins; bad options are named with their allowed values."""

import re
from pathlib import Path

import pytest

from tunelab.config import RunConfig, describe, dump_yaml, load_config, unknown_option
from tunelab.config.load import FlagValues, stage_config
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


def test_an_option_serves_a_stage_of_its_task():
    stages = [{"train": {"lr": 1e-3}}, {"task": "dpo", "data": {"train": ["p.jsonl"]}}]
    resolved = load_config(None, {"dpo.beta": 0.5, "stages": stages})  # dpo.beta is for stage 2
    sft, dpo = (stage_config(resolved, k, f"runs/s{k}").config for k in (0, 1))
    assert (sft.task, sft.dpo.beta, dpo.task, dpo.dpo.beta) == ("sft", 0.1, "dpo", 0.5)  # stage 1 saves its own
    flagged = load_config(None, {"dpo.beta": "0.5", "stages": stages})  # a flag, as the CLI gives it
    assert stage_config(flagged, 0, "runs/s0").config.dpo.beta == 0.1
    assert stage_config(flagged, 1, "runs/s1").config.dpo.beta == 0.5


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
        ("dat: {train: [qa.jsonl]}\n", "c.yaml: unknown section 'dat'. Did you mean 'data'? The sections are model,"),
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


LORA = "LoRA options live under method: (method.name: lora, method.r, method.alpha, method.dropout"


@pytest.mark.parametrize(
    "content, message",
    [
        ("lora: {r: 8, lora_alpha: 16}\n", f"unknown section 'lora'. {LORA}"),  # was: did you mean method.rslora
        ("lora: {r: 8, lora_alpha: 16}\n", "here: r -> method.r, lora_alpha -> method.alpha."),
        ("lora: true\n", f"unknown option 'lora'. {LORA}"),
        ("peft: {r: 8, target_modules: [q_proj]}\n", "here: r -> method.r, target_modules -> method.target_modules"),
        ("lora_config: {r: 8}\n", LORA),
        (
            "training: {learning_rate: 1.0e-4, num_epochs: 3}\n",
            "unknown section 'training'. Training options live under",
        ),
        ("training: {learning_rate: 1.0e-4, num_epochs: 3}\n", "here: learning_rate -> train.lr, num_epochs -> train."),
        ("trainer: {max_steps: 10}\n", "Training options live under train: (train.lr,"),
        ("dataset: qa.jsonl\n", "unknown option 'dataset'. Did you mean data.train?"),
        ("dataset: {path: qa.jsonl}\n", "unknown section 'dataset'. Data options live under data: (data.train:"),
        (
            "datasets: [{path: qa.jsonl, type: alpaca}]\n",  # axolotl's list
            "unknown option 'datasets'. Did you mean data.train (a list of files, or of entries like {path: qa.jsonl, "
            "format: alpaca})?",
        ),
        ("optimizer: adamw\n", "unknown option 'optimizer'. Did you mean train.optimizer?"),
        ("optimizer: {_component_: torch.optim.AdamW, lr: 2.0e-5}\n", "Optimizer options live under train:"),
        ("lr_scheduler: cosine\n", "Did you mean train.scheduler?"),
        ("lr: 1.0e-4\n", "unknown option 'lr'. Did you mean train.lr?"),
        ("learning_rate: 1.0e-4\n", "unknown option 'learning_rate'. Did you mean train.lr?"),
        ("epochs: 3\n", "unknown option 'epochs'. Did you mean train.epochs?"),
        ("num_epochs: 3\n", "Did you mean train.epochs?"),
        ("batch_size: 4\n", "unknown option 'batch_size'. Did you mean train.micro_batch?"),
        ("adapter: qlora\n", "Did you mean method.name, model.adapter?"),  # axolotl's adapter is our method
        ("quantization: {bits: 4}\n", "Did you mean method.quantize_base?"),
        ("tokenizer: {max_seq_len: 2048}\n", "The tokenizer is the model's: model.name names both"),
        ("tokenizer: {max_seq_len: 2048}\n", "here: max_seq_len -> data.max_length"),
        # were answered by spelling alone, with an unrelated option or nothing
        ("evaluation_strategy: steps\n", "Did you mean train.eval_every?"),  # was: eval.questions
        ("eval_strategy: steps\n", "Did you mean train.eval_every?"),
        ("save_strategy: steps\n", "Did you mean train.save_every?"),  # was: federated.strategy
        ("use_rslora: true\n", "Did you mean method.rslora?"),  # was: method.use_dora first
        (
            "lora_target: all\n",
            "Did you mean method.target_modules (a list: [q_proj, v_proj], or [all-linear])?",
        ),  # LLaMA-Factory
        (
            "lora_target_linear: true\n",
            "Did you mean method.target_modules (write method.target_modules: [all-linear])?",
        ),  # axolotl
        ("finetuning_type: lora\n", "Did you mean method.name (lora, dora, full or layers)?"),
        ("stage: sft\n", "Did you mean task ("),  # LLaMA-Factory's sft | dpo | rm
        ("lora_model_dir: out\n", "Did you mean model.adapter?"),
        ("load_in_8bit: true\n", "Did you mean method.quantize_base (tunelab quantizes the base to 4-bit NF4 only"),
        ("eval_dataset: e.jsonl\n", "Did you mean data.eval?"),
        ("dataset_text_field: text\n", "Did you mean data.fields?"),  # was: data.fields, data.split_seed
        ("random_state: 3407\n", "Did you mean train.seed?"),  # Unsloth
        ("model_type: AutoModelForCausalLM\n", "Did you mean model.name (the model's class is read from"),  # was dtype
        ("tokenizer_type: AutoTokenizer\n", "Did you mean model.name (the tokenizer is the model's)?"),
        ("flash_attention: true\n", "Did you mean model.impl (auto: for the Llama family tunelab's own decoder"),
        ("completion_only_loss: true\n", "Did you mean data.train_on_prompt (false, the default, puts the loss"),
        ("loss_type: ipo\n", "Did you mean dpo.loss?"),
        ("load_best_model_at_end: true\n", "Did you mean train.keep_best?"),
        ("resume_from_checkpoint: true\n", "continue one with tunelab train --resume)?"),  # was: keep_checkpoints
        ("deepspeed: ds.json\n", "Did you mean train.sharding (auto, ddp or fsdp2, under torchrun)?"),
    ],
)
def test_another_tools_top_level_key_points_to_where_ours_lives(tmp_path, content, message):
    """Spelling alone answered `lora:` with method.rslora and `peft:` with nothing: a key from PEFT, axolotl,
    torchtune or TrainingArguments is answered by its meaning, the section holding ours for a group of settings."""
    path = tmp_path / "c.yaml"
    path.write_text("data: {train: [qa.jsonl]}\n" + content)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(path)


def test_another_tools_group_as_an_override_points_to_where_ours_lives():
    with pytest.raises(ConfigError, match=re.escape(f"--peft: unknown section 'peft'. {LORA}")):
        load_config(None, FlagValues({"peft": {"r": 8}}))


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


def test_method_name_qlora_is_told_how_qlora_is_asked_for():
    """method.name: qlora was refused with the allowed values only, none of which says QLoRA, which the README
    advertises: it is a LoRA over an NF4 base, asked for with method.quantize_base."""
    with pytest.raises(
        ConfigError,
        match=r"allowed values: lora, dora, full, layers\. QLoRA is method\.name: lora with method\.quantize_base: nf4\.$",
    ):
        load_config(None, {"method.name": "qlora"})
    with pytest.raises(ConfigError, match=r"allowed values: lora, dora, full, layers\.$"):
        load_config(None, {"method.name": "lorra"})


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
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value).startswith(str(path)) and f"give it as --data.train {path} " in str(error.value)
    assert "not a config file" in str(error.value) or "if it is data" in str(error.value)
    assert load_config(None, {"data.train": [str(path)]}).config.data.train  # the way it names


@pytest.mark.parametrize(
    "value, message",
    [
        (
            '"q_proj,v_proj"',
            "entry 'q_proj,v_proj' is not one layer name; write a list of names, like [q_proj, v_proj]",
        ),
        ('"q_proj v_proj"', "like [q_proj, v_proj]"),
        ('".*(q_proj|v_proj)"', "like [q_proj, v_proj], or [all-linear]"),  # PEFT's regular-expression string
        ("all", "entry 'all' means all-linear here; write all-linear"),  # LLaMA-Factory's lora_target: all
        ("[all_linear]", "entry 'all_linear' means all-linear here"),
    ],
)
def test_target_modules_as_other_tools_write_them_are_refused_with_the_file_and_line(tmp_path, value, message):
    """A comma list in one text was one layer named 'q_proj,v_proj': refused only once the model had loaded, with
    neither the file nor the line."""
    path = tmp_path / "c.yaml"
    path.write_text(f"data: {{train: [qa.jsonl]}}\nmethod:\n  target_modules: {value}\n")
    with pytest.raises(
        ConfigError, match=re.escape(f"{path}:3: option 'method.target_modules': ") + ".*" + re.escape(message)
    ):
        load_config(path)


def test_target_modules_of_single_names_load():
    config = load_config(None, {"method.target_modules": "[q_proj, v_proj]"}).config
    assert config.method.target_modules == ["q_proj", "v_proj"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"model.dtype": "bfloat16"}, "allowed values: auto, fp32, bf16, fp16. Did you mean bf16?"),  # torch's name
        ({"model.dtype": "torch.float16"}, "Did you mean fp16?"),
        ({"model.dtype": "BF16"}, "Did you mean bf16?"),
        ({"method.name": "LoRA"}, "Did you mean lora?"),
        ({"train.scheduler": "Cosine"}, "Did you mean cosine?"),
        ({"train.optimizer": "paged_adamw_8bit"}, "Did you mean adamw_8bit?"),
        ({"train.report_to": "none"}, "No tracker is report_to: [] (the default)."),  # transformers' report_to
        ({"train.lr": "Auto"}, "must be float or 'auto', got 'Auto' (str). Did you mean auto?"),
        ({"method.name": "qlora"}, "QLoRA is method.name: lora with method.quantize_base: nf4."),
    ],
)
def test_a_value_spelt_as_another_tool_or_case_spells_it_says_what_was_meant(overrides, message):
    """'bfloat16', 'BF16' or report_to 'none' were refused with the allowed values only."""
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, overrides)


@pytest.mark.parametrize(
    "content, overrides, message",
    [
        ("bf16: true\n", {}, "unknown option 'bf16'. Did you mean model.dtype (write model.dtype: bf16)?"),
        ("load_in_4bit: true\n", {}, "Did you mean method.quantize_base (write method.quantize_base: nf4)?"),
        ("train: {warmup_steps: 10}\n", {}, "Did you mean train.warmup_ratio (a share of the steps, not a count:"),
        ("stage: sft\n", {}, "Did you mean task (sft, classify, reward, dpo or grpo)?"),
    ],
)
def test_another_tools_flag_or_count_says_what_to_write(tmp_path, content, overrides, message):
    """bf16: true was answered with model.dtype, and warmup_steps: 10 with train.warmup_ratio, which then refused
    10 as above 1.0: the value's form differs, so the hint says what to write."""
    path = tmp_path / "c.yaml"
    path.write_text("data: {train: [qa.jsonl]}\n" + content)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(path, overrides)


def test_another_tools_flag_as_a_flag_says_what_to_type():
    error = unknown_option("bf16", "--bf16", flag=True)
    assert "--bf16: unknown option 'bf16'. Did you mean --model.dtype (write --model.dtype bf16)?" in str(error)


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


@pytest.mark.parametrize(
    "data, message",
    [
        ("{train: [{path: qa.jsonl, type: alpaca}]}", "has the unknown key 'type'. Did you mean format?"),  # axolotl
        ("{train: [{file_name: qa.jsonl}]}", "has the unknown key 'file_name'. Did you mean path?"),  # was: name
        ("{train: [qa.jsonl], format: chat_template}", "allowed values: auto, prompt_completion, question_answer"),
        ("{train: [qa.jsonl], format: chat_template}", "Did you mean messages?"),
        ("{train: [{path: qa.jsonl, format: completion}]}", "entry 1: format is 'completion'; allowed values:"),
        ("{train: [{path: qa.jsonl, format: completion}]}", "Did you mean text?"),
    ],
)
def test_a_dataset_entry_as_axolotl_or_llama_factory_writes_it_says_ours(tmp_path, data, message):
    path = tmp_path / "c.yaml"
    path.write_text(f"model: {{name: x}}\ndata: {data}\n")
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(path)


def test_max_steps_minus_one_as_transformers_writes_it_says_null_unsets_it():
    """transformers' max_steps: -1 means no limit; it was refused as below 1 without saying how to have none."""
    with pytest.raises(ConfigError, match=re.escape("'train.max_steps' is -1; it must be >= 1 (or null, its default,")):
        load_config(None, {"train.max_steps": "-1"})


def test_an_override_flag_of_another_tool_says_how_options_are_given():
    """--set train.lr=1e-4 was answered with the --help list only."""
    error = unknown_option("set", "--set", flag=True)
    assert "--set: unknown option 'set'. Options are given as --section.key VALUE (--train.lr 1e-4)" in str(error)


def test_a_template_named_as_llama_factory_names_it_says_auto_uses_the_models_own():
    """data.template: llama3 was refused with the allowed values only, none of which is llama3."""
    with pytest.raises(ConfigError, match=re.escape("Did you mean chatml?")):
        load_config(None, {"data.template": "ChatML"})
    with pytest.raises(ConfigError, match=re.escape("A model's own chat template (its tokenizer's) is used with auto")):
        load_config(None, {"data.template": "llama3"})


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
