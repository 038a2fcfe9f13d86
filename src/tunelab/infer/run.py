"""Open a finished run directory for inference: the tuned model, its tokenizer and template, and the base model."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tunelab.data.templates import Template, resolve_template
from tunelab.models.load import ModelSource, load_hf_model, load_tokenizer, pick_device, pick_dtype, resolve_source
from tunelab.models.untrained import repair_rows
from tunelab.peft.lora import adapters_disabled
from tunelab.peft.save import load_adapter
from tunelab.rundir import RunInfo, open_info


@dataclass
class LoadedRun:
    run_dir: Path
    info: RunInfo
    model: nn.Module
    tokenizer: object
    template: Template
    device: torch.device
    dtype: torch.dtype

    @property
    def system_prompt(self) -> str | None:
        return self.info.system_prompt

    @contextmanager
    def base_model(self):
        """The model before tuning: the adapter switched off, or the base weights loaded beside the tuned ones."""
        if self.info.is_adapter:
            with adapters_disabled(self.model):
                yield self.model
        else:
            base = load_hf_model(
                resolve_source(self.info.base_model), self.dtype, self.device, self.info.trust_remote_code
            )
            try:
                yield base
            finally:
                del base


def open_run(run_dir: str | Path, device: str = "auto", dtype: str = "auto") -> LoadedRun:
    run_dir = Path(run_dir)
    info = open_info(run_dir)
    dev = pick_device(device)
    dt = pick_dtype(dtype, dev)
    tokenizer = load_tokenizer(ModelSource(str(run_dir), str(run_dir)), info.trust_remote_code)  # saved by train
    if info.is_adapter:
        model = load_hf_model(resolve_source(info.base_model), dt, dev, info.trust_remote_code)
        repair_rows(model, info.fixed_untrained_tokens)  # the base rows training repaired (models/untrained.py)
        load_adapter(model, run_dir)
        model.to(dev)
    else:
        model = load_hf_model(resolve_source(str(run_dir)), dt, dev, info.trust_remote_code)
    model.eval()
    template = resolve_template(info.template, tokenizer)
    return LoadedRun(run_dir, info, model, tokenizer, template, dev, dt)
