"""An unknown option or section name and what the user may have meant: by what other tools call our options (ALIASES), by the
right key in the wrong section, then by spelling. YAML keys and command-line flags get the same suggestions."""

from __future__ import annotations

import difflib
from typing import Any

from tunelab.config.run import iter_options, section_names
from tunelab.errors import ConfigError

# Names other tools (transformers' TrainingArguments, axolotl, torchtune, PEFT) use for our options: a typo suggestion
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
    "load_in_4bit": "method.quantize_base",
    "qlora": "method.quantize_base",
    "model_name_or_path": "model.name",
    "base_model": "model.name",
    "model_name": "model.name",
    "model_id": "model.name",
    "torch_dtype": "model.dtype",
    "bf16": "model.dtype",
    "fp16": "model.dtype",
    "dataset": "data.train",
    "datasets": "data.train",
    "train_file": "data.train",
    "data_path": "data.train",
    "dataset_path": "data.train",
    "eval_file": "data.eval",
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
}


def suggest(name: str) -> list[str]:
    """Up to three options the user may have meant by `name`: by known alias, then by the last part of the name
    (the right key in the wrong section), then by spelling of the last part, then by spelling of the whole name."""
    options = [n for n, _, _ in iter_options()]
    last = name.rpartition(".")[2].lower().replace("-", "_")
    found = [ALIASES[last]] if last in ALIASES else []
    found += [o for o in options if o.rpartition(".")[2] == last]
    if found:  # the meaning is known: spelling neighbours would only distract
        return [o for o in dict.fromkeys(found) if o != name][:3]
    lasts = sorted({o.rpartition(".")[2] for o in options})
    for close in difflib.get_close_matches(last, lasts, n=3, cutoff=0.7):
        found += [o for o in options if o.rpartition(".")[2] == close]
    found += difflib.get_close_matches(name, options, n=3)
    return [o for o in dict.fromkeys(found) if o != name][:3]


def unknown_option(name: str, where: str, flag: bool = False, value: Any = None, command: str = "train") -> ConfigError:
    """The error for option `name`, unknown, with what may have been meant; `value` is the value it was given;
    `command`: the tunelab command whose --help lists what it takes."""
    if name in section_names():  # {'train': {'lr': 1e-4}} among overrides, or --train
        keys = list(value) if isinstance(value, dict) and value else [_first_key(name)]
        dotted = ", ".join(f"--{name}.{k}" if flag else f"'{name}.{k}'" for k in keys)
        like = "" if isinstance(value, dict) and value else "like "
        return ConfigError(
            f"{where}: '{name}' is a section, not an option; name its options with dots ({like}{dotted})."
        )
    close = [f"--{o}" if flag else o for o in suggest(name)]
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return ConfigError(f"{where}: unknown option '{name}'.{hint} Run 'tunelab {command} --help' for the list.")


def _first_key(section: str) -> str:
    return next(n for n, _, _ in iter_options() if n.startswith(f"{section}.")).partition(".")[2]


def unknown_section(name: str, where: str) -> ConfigError | None:
    """The error for a top-level key holding a mapping that is spelt like a section (`dat:`), or None."""
    close = difflib.get_close_matches(name.lower(), section_names(), n=1, cutoff=0.7)
    if not close:
        return None
    return ConfigError(
        f"{where}: unknown section '{name}'. Did you mean '{close[0]}'? The sections are {', '.join(section_names())}."
    )
