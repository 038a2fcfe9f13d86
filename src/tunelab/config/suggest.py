"""An unknown option or section name and what the user may have meant: by what other tools call our options (ALIASES), by the
right key in the wrong section, then by spelling. YAML keys and command-line flags get the same suggestions."""

from __future__ import annotations

import difflib
import re
from typing import Any

from tunelab.config.run import iter_options, section_names
from tunelab.errors import ConfigError

# Names other tools (transformers' TrainingArguments and TRL, axolotl, LLaMA-Factory, Unsloth, torchtune, PEFT) use for our options: a typo suggestion
# by meaning, where spelling alone would point elsewhere (learning_rate is closer to warmup_ratio than to lr).
ALIASES = {
    "learning_rate": "train.lr",
    "num_train_epochs": "train.epochs",
    "num_epochs": "train.epochs",
    "batch_size": "train.micro_batch",
    "per_device_train_batch_size": "train.micro_batch",
    "micro_batch_size": "train.micro_batch",
    "train_batch_size": "train.micro_batch",
    "gradient_accumulation_steps": "train.grad_accum",
    "gradient_accumulation": "train.grad_accum",
    "warmup_steps": "train.warmup_ratio",
    "warmup": "train.warmup_ratio",
    "lr_scheduler_type": "train.scheduler",
    "lr_scheduler": "train.scheduler",
    "optim": "train.optimizer",
    "grad_clip": "train.max_grad_norm",
    "clip_grad_norm": "train.max_grad_norm",
    "gradient_clipping": "train.max_grad_norm",
    "eval_steps": "train.eval_every",
    "eval_strategy": "train.eval_every",
    "evaluation_strategy": "train.eval_every",
    "save_strategy": "train.save_every",
    "random_state": "train.seed",
    "data_seed": "data.split_seed",
    "save_steps": "train.save_every",
    "save_total_limit": "train.keep_checkpoints",
    "logging_steps": "train.log_every",
    "gradient_checkpointing": "train.checkpointing",
    "activation_checkpointing": "train.checkpointing",
    "lora_r": "method.r",
    "rank": "method.r",
    "lora_rank": "method.r",
    "lora_alpha": "method.alpha",
    "lora_dropout": "method.dropout",
    "lora_target_modules": "method.target_modules",
    "lora_target": "method.target_modules",
    "lora_target_linear": "method.target_modules",
    "use_rslora": "method.rslora",
    "pissa_init": "method.init",  # LLaMA-Factory
    "init_lora_weights": "method.init",  # PEFT's LoraConfig
    "finetuning_type": "method.name",
    "lora_model_dir": "model.adapter",
    "adapter_name_or_path": "model.adapter",
    "load_in_8bit": "method.quantize_base",
    "stage": "task",
    "load_in_4bit": "method.quantize_base",
    "qlora": "method.quantize_base",
    "model_name_or_path": "model.name",
    "base_model": "model.name",
    "model_name": "model.name",
    "model_id": "model.name",
    "torch_dtype": "model.dtype",
    "model_type": "model.name",  # axolotl's AutoModelForCausalLM: spelling alone answered model.dtype
    "tokenizer_type": "model.name",
    "tokenizer_name": "model.name",
    "tokenizer_name_or_path": "model.name",
    "flash_attention": "model.impl",
    "attn_implementation": "model.impl",
    "use_liger_kernel": "model.impl",
    "completion_only_loss": "data.train_on_prompt",
    "assistant_only_loss": "data.train_on_prompt",
    "loss_type": "dpo.loss",
    "kto_chosen_weight": "dpo.desirable_weight",  # LLaMA-Factory's names of TRL's KTOConfig weights
    "kto_rejected_weight": "dpo.undesirable_weight",
    "load_best_model_at_end": "train.keep_best",
    "early_stopping_threshold": "train.early_stopping_min_delta",  # transformers' EarlyStoppingCallback
    "min_delta": "train.early_stopping_min_delta",  # Keras, Lightning
    "resume_from_checkpoint": "train.save_every",
    "fsdp": "train.sharding",
    "deepspeed": "train.sharding",
    "bf16": "model.dtype",
    "fp16": "model.dtype",
    "dataset": "data.train",
    "datasets": "data.train",
    "train_file": "data.train",
    "data_path": "data.train",
    "dataset_path": "data.train",
    "eval_file": "data.eval",
    "eval_dataset": "data.eval",
    "dataset_text_field": "data.fields",
    "validation_file": "data.eval",
    "val_set_size": "data.eval_fraction",
    "validation_split": "data.eval_fraction",
    "test_size": "data.eval_fraction",
    "max_seq_length": "data.max_length",
    "max_seq_len": "data.max_length",
    "sequence_len": "data.max_length",
    "seq_len": "data.max_length",
    "cutoff_len": "data.max_length",
    "model_max_length": "data.max_length",
    "chat_template": "data.template",
    "prompt_template": "data.template",
    "system_message": "data.system_prompt",
    "sample_packing": "data.packing",
    "train_on_inputs": "data.train_on_prompt",
    "separator": "data.delimiter",
    "sep": "data.delimiter",
    "out_dir": "output_dir",
    "output_path": "output_dir",
    "overwrite_output_dir": "overwrite",
    "adapter": "method.name",  # axolotl's `adapter: lora | qlora`; ours, model.adapter, is an adapter to start from
    "quantization": "method.quantize_base",
    "quantization_config": "method.quantize_base",
    "bnb_config": "method.quantize_base",
    "hub_model_id": "train.push_to",  # TrainingArguments and TRL: push_to_hub + hub_model_id
    "push_to_hub": "train.push_to",
    "hub_repo": "train.push_to",
    "hub_private_repo": "train.push_private",
}

# What to write for an alias whose value is not ours in the same form (a flag for a choice, a count for a share).
ALIAS_NOTES = {
    "bf16": "write model.dtype: bf16",
    "fp16": "write model.dtype: fp16",
    "torch_dtype": "its values are auto, fp32, bf16, fp16",
    "load_in_4bit": "write method.quantize_base: nf4",
    "qlora": "write method.quantize_base: nf4",
    "load_in_8bit": "tunelab quantizes the base to 4-bit NF4 only: method.quantize_base: nf4",
    "warmup_steps": "a share of the steps, not a count: 0.05 warms up over the first 5%",
    "warmup": "a share of the steps, not a count: 0.05 warms up over the first 5%",
    "lora_target_linear": "write method.target_modules: [all-linear]",
    "lora_target": "a list: [q_proj, v_proj], or [all-linear]",
    "finetuning_type": "lora, dora, full or layers",
    "stage": "sft, classify, reward, dpo or grpo; LLaMA-Factory's kto is task dpo with dpo.loss kto",
    "model_type": "the model's class is read from its config.json",
    "tokenizer_type": "the tokenizer is the model's",
    "tokenizer_name": "the tokenizer is the model's",
    "tokenizer_name_or_path": "the tokenizer is the model's",
    "flash_attention": "auto: for the Llama family tunelab's own decoder, with flash attention and fused kernels",
    "attn_implementation": "auto: for the Llama family tunelab's own decoder, with flash attention and fused kernels",
    "use_liger_kernel": "auto: for the Llama family tunelab's own decoder, with flash attention and fused kernels",
    "completion_only_loss": "false, the default, puts the loss on the answers only",
    "assistant_only_loss": "false, the default, puts the loss on the assistant's turns only",
    "resume_from_checkpoint": "checkpoints every N steps; continue one with tunelab train --resume",
    "fsdp": "auto, ddp or fsdp2, under torchrun",
    "deepspeed": "auto, ddp or fsdp2, under torchrun",
    "datasets": "a list of files, or of entries like {path: qa.jsonl, format: alpaca}",
    "val_set_size": "a share of the rows, 0.1 for 10%; an eval file is data.eval",
    "push_to_hub": "write the repository, OWNER/NAME, that hub_model_id names: setting it pushes",
}

# Whole groups of settings in other tools (PEFT's LoraConfig, axolotl, torchtune, TrainingArguments) and the section
# that holds ours: spelling alone points at an option that merely looks alike (lora -> method.rslora) or at nothing
# (peft). A key that is also an option by meaning (`optimizer: adamw`) gets that option unless it holds a mapping.
_LORA = (
    "method",
    "LoRA options live under method: (method.name: lora, method.r, method.alpha, method.dropout, "
    "method.target_modules)",
)
_TRAIN = (
    "train",
    "Training options live under train: (train.lr, train.epochs, train.micro_batch, train.optimizer, ...)",
)
_DATA = (
    "data",
    "Data options live under data: (data.train: [file.jsonl], data.format, data.fields, data.max_length, ...)",
)
FOREIGN_SECTIONS = {
    "lora": _LORA,
    "peft": _LORA,
    "lora_config": _LORA,
    "peft_config": _LORA,
    "adapter_config": _LORA,
    "training": _TRAIN,
    "trainer": _TRAIN,
    "training_args": _TRAIN,
    "training_arguments": _TRAIN,
    "hyperparameters": _TRAIN,
    "optimizer": (
        "train",
        "Optimizer options live under train: (train.optimizer: adamw, train.lr, train.weight_decay, ...)",
    ),
    "lr_scheduler": ("train", "Scheduler options live under train: (train.scheduler: cosine, train.warmup_ratio)"),
    "dataset": _DATA,
    "datasets": _DATA,
    "tokenizer": (
        "data",
        "The tokenizer is the model's: model.name names both (data.template picks the prompt template, "
        "data.max_length the longest example)",
    ),
}


def suggest(name: str) -> list[str]:
    """Up to three options the user may have meant by `name`: by known alias, then by the last part of the name
    (the right key in the wrong section), then by spelling of the last part, then by spelling of the whole name."""
    options = [n for n, _, _ in iter_options()]
    last = _key(name)
    if found := _meant(last):  # the meaning is known: spelling neighbours would only distract
        return [o for o in dict.fromkeys(found) if o != name][:3]
    lasts = sorted({o.rpartition(".")[2] for o in options})
    for close in difflib.get_close_matches(last, lasts, n=3, cutoff=0.7):
        found += [o for o in options if o.rpartition(".")[2] == close]
    found += difflib.get_close_matches(name, options, n=3)
    return [o for o in dict.fromkeys(found) if o != name][:3]


def _key(name: str) -> str:
    """The last part of a dotted name, as ALIASES and FOREIGN_SECTIONS spell it."""
    return name.rpartition(".")[2].lower().replace("-", "_")


def _meant(key: str) -> list[str]:
    """The options a key (its last part) means: its alias, then the options of that name in any section."""
    found = [ALIASES[key]] if key in ALIASES else []
    return found + [o for o, _, _ in iter_options() if o.rpartition(".")[2] == key and o not in found]


def _foreign_section(name: str, value: Any) -> str | None:
    """Where the options of another tool's group of settings `name` live, and for a mapping what each of its keys
    is called here (r -> method.r); None when `name` is no such group, or is an option by meaning and holds no
    mapping."""
    key = _key(name)
    if key not in FOREIGN_SECTIONS or (_meant(key) and not isinstance(value, dict)):
        return None
    section, text = FOREIGN_SECTIONS[key]
    pairs = []
    for sub in value if isinstance(value, dict) else ():
        if meant := _meant(_key(str(sub))):  # by meaning only: a spelling neighbour is the guess this replaces
            pairs.append(f"{sub} -> {next((o for o in meant if o.startswith(f'{section}.')), meant[0])}")
    return text + (f"; here: {', '.join(pairs)}" if pairs else "")


# Where a Python caller finds the options (the CLI's user is sent to `tunelab COMMAND --help`)
PYTHON_LIST = " tunelab.config.iter_options() lists them (name, field, type)."


def list_tail(command: str, python: bool) -> str:
    """The sentence that ends an unknown option's error: where the list of options is."""
    return PYTHON_LIST if python else f" Run 'tunelab {command} --help' for the list."


def unknown_option(
    name: str, where: str, flag: bool = False, value: Any = None, command: str = "train", python: bool = False
) -> ConfigError:
    """The error for option `name`, unknown, with what may have been meant; `value` is the value it was given;
    `command`: the tunelab command whose --help lists what it takes; `python`: given among the API's overrides,
    pointed to the Python list of options instead."""
    tail = list_tail(command, python)
    if name in section_names():  # {'train': {'lr': 1e-4}} among overrides, or --train
        keys = list(value) if isinstance(value, dict) and value else [_first_key(name)]
        dotted = ", ".join(f"--{name}.{k}" if flag else f"'{name}.{k}'" for k in keys)
        like = "" if isinstance(value, dict) and value else "like "
        return ConfigError(
            f"{where}: '{name}' is a section, not an option; name its options with dots ({like}{dotted})."
        )
    if foreign := _foreign_section(name, value):
        what = "section" if isinstance(value, dict) else "option"
        return ConfigError(f"{where}: unknown {what} '{name}'. {foreign}.{tail}")
    close = [f"--{o}" if flag else o for o in suggest(name)]
    note = ALIAS_NOTES.get(_key(name), "")
    if flag:  # write model.dtype: bf16 -> write --model.dtype bf16
        note = re.sub(r"write ([\w.]+): (.+)", r"write --\1 \2", note)
    note = f" ({note})" if note else ""
    hint = f" Did you mean {', '.join(close)}{note}?" if close else ""
    if flag and not close:  # --set train.lr=1e-4, -o ...: another tool's way of overriding
        hint = " Options are given as --section.key VALUE (--train.lr 1e-4), one flag each."
    return ConfigError(f"{where}: unknown option '{name}'.{hint}{tail}")


def _first_key(section: str) -> str:
    return next(n for n, _, _ in iter_options() if n.startswith(f"{section}.")).partition(".")[2]


def unknown_section(name: str, where: str, value: Any = None) -> ConfigError | None:
    """The error for a top-level key holding a mapping (`value`) that is another tool's group of settings (`lora:`)
    or spelt like a section (`dat:`), or None."""
    if foreign := _foreign_section(name, value if isinstance(value, dict) else {}):
        return ConfigError(f"{where}: unknown section '{name}'. {foreign}.")
    close = difflib.get_close_matches(name.lower(), section_names(), n=1, cutoff=0.7)
    if not close:
        return None
    return ConfigError(
        f"{where}: unknown section '{name}'. Did you mean '{close[0]}'? The sections are {', '.join(section_names())}."
    )
