"""Open a finished run directory for inference: the tuned model, its tokenizer and template, and the base model."""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tunelab.data.templates import Template, resolve_template
from tunelab.errors import RunDirError
from tunelab.models.load import ModelSource, load_hf_model, load_tokenizer, pick_device, pick_dtype, resolve_source
from tunelab.peft.lora import adapters_disabled
from tunelab.peft.save import CONFIG_FILE, load_adapter

RUN_FILE = "run.json"


@dataclass
class LoadedRun:
    run_dir: Path
    info: dict
    model: nn.Module
    tokenizer: object
    template: Template
    device: torch.device
    dtype: torch.dtype

    @property
    def system_prompt(self) -> str | None:
        return self.info.get("system_prompt")

    @contextmanager
    def base_model(self):
        """The model before tuning: the adapter switched off, or the base weights loaded beside the tuned ones."""
        if self.info["method"] == "lora":
            with adapters_disabled(self.model):
                yield self.model
        else:
            base = load_hf_model(resolve_source(self.info["base_model"]), self.dtype, self.device)
            try:
                yield base
            finally:
                del base


def read_run_info(run_dir: str | Path) -> dict:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir}: no such run directory.")
    path = run_dir / RUN_FILE
    if not path.is_file():
        raise RunDirError(f"{run_dir}: not a tunelab run directory (no {RUN_FILE}).")
    info = json.loads(path.read_text())
    if not info.get("finished"):
        raise RunDirError(f"{run_dir}: the run did not finish; resume it with 'tunelab train CONFIG --resume' first.")
    return info


def open_run(run_dir: str | Path, device: str = "auto", dtype: str = "auto") -> LoadedRun:
    run_dir = Path(run_dir)
    info = read_run_info(run_dir)
    dev = pick_device(device)
    dt = pick_dtype(dtype, dev)
    if info["method"] == "lora" and not (run_dir / CONFIG_FILE).is_file():
        raise RunDirError(f"{run_dir}: the run was trained with LoRA but holds no adapter ({CONFIG_FILE} is missing).")
    if info["method"] != "lora" and not (run_dir / "config.json").is_file():
        raise RunDirError(f"{run_dir}: the run holds no weights (config.json is missing).")
    tokenizer = load_tokenizer(ModelSource(str(run_dir), str(run_dir)))  # saved beside the weights by train
    if info["method"] == "lora":
        model = load_hf_model(resolve_source(info["base_model"]), dt, dev)
        load_adapter(model, run_dir)
        model.to(dev)
    else:
        model = load_hf_model(resolve_source(str(run_dir)), dt, dev)
    model.eval()
    template = resolve_template(info.get("template", "auto"), tokenizer)
    return LoadedRun(run_dir, info, model, tokenizer, template, dev, dt)
