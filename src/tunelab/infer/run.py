"""Open a finished run directory for inference: the tuned model, its tokenizer and template, and the base model.

A QLoRA adapter (run.json: `quantize_base: nf4`) learned to correct the 4-bit base it was trained over, not the 16-bit
weights that base was quantized from. So by default the base is quantized again exactly as training did it (same
weights, same dtype, same NF4 code) before the adapter is attached, and compare, chat, generate and eval see the model
that was trained. `base_precision="16bit"` puts the adapter on the unquantized weights instead, to measure what the
quantization costs or to answer faster on a CPU; merge always starts from the trained model and dequantizes.
A QPiSSA run (nf4 with method.init pissa or olora) is the exception: its saved adapter is a plain LoRA over the
original 16-bit weights (peft/weight_init.py), so it is opened over those (`RunInfo.nf4_again`).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tunelab.config.flags import PYTHON, Spelling
from tunelab.data.formats import trained_system
from tunelab.data.templates import Template, run_template
from tunelab.errors import ConfigError, RunDirError
from tunelab.models.load import ModelSource, load_hf_model, load_tokenizer, pick_device, resolve_source
from tunelab.peft.lora import adapters_disabled
from tunelab.peft.save import load_adapter
from tunelab.run_info import RunInfo
from tunelab.rundir import open_info, saved_config, start_info
from tunelab.training.build import check_trained_base, run_dtype, trained_base

BASE_PRECISIONS = ("trained", "16bit")
DTYPES = ("auto", "fp32", "bf16", "fp16")  # as model.dtype


@dataclass
class LoadedRun:
    run_dir: Path
    info: RunInfo
    model: nn.Module
    tokenizer: object
    template: Template
    device: torch.device
    dtype: torch.dtype
    base_precision: str = "trained"
    """trained: the base as the adapter was trained over (NF4 for QLoRA); 16bit: the unquantized base weights."""
    start: RunInfo | None = None
    """The run whose base "base" is (`rundir.start_info`): stage 1 of a staged run, else this run (None)."""

    @property
    def base_info(self) -> RunInfo:
        return self.start or self.info

    @property
    def _adapter_over_start(self) -> bool:
        """The model before tuning is this run's model with its adapter switched off."""
        return self.info.is_adapter and self.base_info.base_model == self.info.base_model

    @property
    def system_prompt(self) -> str | None:
        """The run's data.system_prompt as training added it (a blank one is none)."""
        return trained_system(self.info.system_prompt)

    def source_system_prompts(self) -> list[tuple[str, str | None]]:
        """The mixture's sources trained with a system prompt other than `system_prompt` (their own), each as (its
        name, that prompt; None for none); empty for a run whose sources all took data.system_prompt, or whose
        config.yaml cannot be read (it alone records them)."""
        try:
            train = saved_config(self.run_dir, "the sources' system prompts").data.train
        except RunDirError:
            return []
        own = [
            (s.name or s.path or s.hub, trained_system(s.system_prompt))
            for s in train
            if not isinstance(s, str) and s.system_prompt is not None  # None: the source took data.system_prompt
        ]
        return [(name, system) for name, system in own if system != self.system_prompt and name is not None]

    def system_prompt_notice(self, choose: str) -> str | None:
        """A line for the start of chat and serve when the run's sources trained with different system prompts: the
        one answers use (data.system_prompt) and the others, and `choose` says how to give another."""
        others = self.source_system_prompts()
        if not others:
            return None
        used = repr(self.system_prompt) if self.system_prompt else "none"
        listed = "; ".join(f"{name}: {system!r}" if system else f"{name}: none" for name, system in others)
        return (
            f"(the run's sources trained with different system prompts ({listed}); answers use data.system_prompt, "
            f"{used}, unless {choose}.)"
        )

    @property
    def quantized_base(self) -> bool:
        """The adapter sits on an NF4 base, as it did in training."""
        return self.info.nf4_again and self.base_precision == "trained"

    def check_base(self) -> None:
        """ModelError now when `base_model` could not load the base (gone, or its weights changed): an adapter run
        could not have been opened without it, a full or layers run could."""
        if not self._adapter_over_start:
            check_trained_base(self.base_info)

    @contextmanager
    def base_model(self):
        """The model before tuning: the adapter switched off (over the same base the tuned model uses), or the base
        weights loaded beside the tuned ones as training loaded them (the untrained rows it repaired repaired again:
        a full or layers run is compared with the model it started from, not with the rows it never saw). A staged
        run's base is stage 1's: the model the run started from, not the previous stage's merged model or weights."""
        if self._adapter_over_start:
            with adapters_disabled(self.model):
                yield self.model
        else:
            start = self.base_info
            quantize = start.nf4_again and self.base_precision == "trained"
            base = trained_base(start, self.dtype, self.device, quantize).to(self.device)
            base.eval()
            try:
                yield base
            finally:
                del base


def check_base_precision(base_precision: str) -> None:
    if base_precision not in BASE_PRECISIONS:
        raise ConfigError(
            f"argument 'base_precision' is {base_precision!r}; allowed values: {', '.join(BASE_PRECISIONS)}."
        )


def open_run(
    run_dir: str | Path,
    device: str = "auto",
    dtype: str = "auto",
    base_precision: str = "trained",
    *,
    spelling: Spelling = PYTHON,
) -> LoadedRun:
    """The run's tuned model in eval mode, ready to generate. `dtype` auto: for a QLoRA base the dtype it was trained
    in (it is quantized from that dtype, as in training), else bf16 on CUDA (fp16 on a GPU without native bf16) and
    fp32 on the CPU. `base_precision`:
    trained (default) or 16bit, see the module docstring. `spelling`: how the refusal of an unfinished run names
    train's resume (the CLI's commands name it as a flag)."""
    check_base_precision(base_precision)
    if dtype not in DTYPES:  # pick_dtype's table lookup would raise a bare KeyError
        raise ConfigError(f"argument 'dtype' is {dtype!r}; allowed values: {', '.join(DTYPES)}.")
    run_dir = Path(run_dir)
    info = open_info(run_dir, spelling=spelling)
    dev = pick_device(device, "argument 'device'")  # the CLI checked its --device first
    quantize = info.nf4_again and base_precision == "trained"
    dt = run_dtype(info, dtype, dev, quantize)
    tokenizer = load_tokenizer(ModelSource(str(run_dir), str(run_dir)), info.trust_remote_code)  # saved by train
    if info.is_adapter:
        model = trained_base(info, dt, dev, quantize)
        load_adapter(model, run_dir)
        model.to(dev)
    else:
        model = load_hf_model(resolve_source(str(run_dir)), dt, dev, info.trust_remote_code)
    model.eval()
    template = run_template(info.template, tokenizer, run_dir)
    start = start_info(run_dir, info)
    return LoadedRun(
        run_dir, info, model, tokenizer, template, dev, dt, base_precision, None if start is info else start
    )


def opened(
    run: str | Path | LoadedRun, device: str = "auto", base_precision: str = "trained", spelling: Spelling = PYTHON
) -> LoadedRun:
    """`run` opened with `open_run`, or `run` itself when it is one already; then a `device` or `base_precision`
    other than the default must be the one it was opened with (ConfigError: they were dropped without a word)."""
    if not isinstance(run, LoadedRun):
        return open_run(run, device=device, base_precision=base_precision, spelling=spelling)
    check_base_precision(base_precision)
    if base_precision != "trained" and base_precision != run.base_precision:
        raise ConfigError(
            f"argument 'base_precision' is {base_precision}, but the run given was opened with {run.base_precision}; "
            f"open it with open_run(run_dir, base_precision={base_precision!r}), or drop the argument."
        )
    check_opened_on(device, run.device, "open_run")
    return run


def check_opened_on(device: str, opened_on: torch.device, opener: str) -> None:
    """ConfigError for a `device` other than the one a run given loaded was opened on (by `opener`, open_run or
    open_head_run): the argument would be dropped without a word."""
    wanted = pick_device(device, "argument 'device'") if device != "auto" else opened_on
    if wanted.type != opened_on.type or wanted.index not in (None, opened_on.index or 0):
        raise ConfigError(
            f"argument 'device' is {device}, but the run given was opened on {opened_on}; open it with "
            f"{opener}(run_dir, device={device!r}), or drop the argument."
        )
