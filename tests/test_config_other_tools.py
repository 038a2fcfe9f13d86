"""Config: options written as another tool (axolotl, LLaMA-Factory, transformers, PEFT) writes them say what ours are."""

import re

import pytest

from tunelab.config import load_config, unknown_option
from tunelab.config.overrides import FlagValues
from tunelab.errors import ConfigError

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
        ("pissa_init: true\n", "Did you mean method.init?"),
        ("init_lora_weights: pissa\n", "Did you mean method.init?"),
        ("loraplus_lr_ratio: 16\n", "unknown option 'loraplus_lr_ratio'. Did you mean train.loraplus_lr_ratio?"),
        ("loraplus_ratio: 16\n", "Did you mean train.loraplus_lr_ratio?"),
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
        ("early_stopping_patience: 3\n", "Did you mean train.early_stopping_patience?"),  # axolotl, LLaMA-Factory
        ("early_stopping_threshold: 0.01\n", "Did you mean train.early_stopping_min_delta?"),
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
        ("stage: sft\n", {}, "Did you mean task (sft, classify, reward, dpo or grpo;"),
        ("stage: kto\n", {}, "LLaMA-Factory's kto is task dpo with dpo.loss kto)?"),
        ("kto_chosen_weight: 1.3\n", {}, "unknown option 'kto_chosen_weight'. Did you mean dpo.desirable_weight?"),
        ("kto_rejected_weight: 1\n", {}, "unknown option 'kto_rejected_weight'. Did you mean dpo.undesirable_weight?"),
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
