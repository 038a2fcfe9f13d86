"""`tunelab plan`'s report: the memory planner run on a config without loading its weights.

Reads the config's data (for auto micro_batch and the longest row) and its model's config (the shapes), plans for
`nproc` processes as `tunelab train --nproc` would run them, and says the plan with the model's shape, the rows of an
optimizer step and what each GPU holds. The planner itself is `training.plan`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from tunelab.config import AUTO, RunConfig
from tunelab.config.flags import CLI, Spelling
from tunelab.errors import ConfigError, counted
from tunelab.models.llama_config import LlamaConfig
from tunelab.training.build import training_dtype
from tunelab.training.distributed import pick_sharding
from tunelab.training.memory import gib
from tunelab.training.plan import (
    MemoryPlan,
    device_budget,
    free_memory_note,
    longest_prompt,
    longest_row,
    plan_for_config,
    require_fit,
)
from tunelab.training.plan_setup import planned_rows


@dataclass
class PlanReport:
    """What `tunelab plan` prints: the plan, the auto values of the data, and the model's shape."""

    memory: MemoryPlan
    shape: LlamaConfig
    seq: int
    global_batch: int
    note: str | None = None  # what the plan left out, as train runs the config
    processes: str = "processes: 1 (as tunelab train without --nproc; --nproc N plans N)"
    per_step: str | None = None  # global_batch in words (None: rows; dpo: pairs, two rows each)
    fewer: str | None = None  # why global_batch is fewer rows than the config's micro_batch x grad_accum

    def text(self) -> str:
        lines = [
            f"model: {counted(self.shape.num_layers, 'layer')}, hidden {self.shape.hidden_size}; longest row "
            f"{counted(self.seq, 'token')}; {self.per_step or counted(self.global_batch, 'row')} per optimizer step"
            + (f" ({self.fewer})" if self.fewer else ""),
            self.processes,
            self.memory.table(),
            "",
            self.memory.reason,
        ]
        if self.note:
            lines.append(self.note)
        lines += self.memory.notes
        if self.memory.chosen is not None:
            lines += ["", self.memory.breakdown()]
        return "\n".join(lines)


def plan_run(
    cfg: RunConfig,
    gpu_memory: str | None = None,
    nproc: int = 1,
    budget_name: str = "--gpu-memory",
    spelling: Spelling = CLI,
) -> PlanReport:
    """The planner for a config without loading weights: its data (for auto micro_batch and the longest row) and its
    model's config (the shapes). BudgetError when nothing fits; ConfigError off the fast path or without a budget.
    `nproc` processes (tunelab train --nproc) as train runs them: train.sharding picked as train picks it (auto:
    fsdp2 for method full), fsdp2 with each rank's 1/nproc share of the weights and training state and auto
    checkpointing and offload off, ddp with the whole model on every rank; the budget is each GPU's. `spelling`: how
    refusals name nproc and options (--nproc, or the argument)."""
    from tunelab.data.loader import epoch_rows
    from tunelab.models.load import load_hf_config
    from tunelab.training.auto import plan_from_data
    from tunelab.training.build import pick_impl
    from tunelab.training.prepare import load_inputs

    sharding = pick_sharding(cfg, spelling) if nproc > 1 else None  # ConfigError for what train --nproc refuses
    given = gpu_memory is not None  # an empty one is refused as no size, not read as none given
    train = dataclasses.replace(cfg.train, gpu_memory=gpu_memory if given else cfg.train.gpu_memory)
    on_cuda = cfg.model.device != "cpu"  # as train plans it: no GPU's budget, offload or CUDA graphs on the CPU
    gpu = torch.device("cuda") if on_cuda and torch.cuda.is_available() else None
    budget = device_budget(train, gpu, budget_name)
    if budget is None:
        where = "model.device is cpu, which has no GPU memory" if not on_cuda else "no GPU here to read the budget from"
        raise ConfigError(f"{where}: give {budget_name}{'' if budget_name.endswith('=') else ' '}SIZE (like 24GiB).")
    inputs = load_inputs(cfg, weights=False, spelling=spelling)  # a local folder's config.json and tokenizer will do
    hf_config = load_hf_config(inputs.source, cfg.model.trust_remote_code, spelling)
    if pick_impl(cfg.model.impl, hf_config) != "fast":
        raise ConfigError(f"model '{cfg.model.name}' trains on the generic path, which the planner has no model of.")
    shape = LlamaConfig.from_hf(hf_config)
    first = epoch_rows(inputs.data, cfg.train.seed, 0)  # a mixture's draw, packed where asked
    auto = plan_from_data(train, len(first), bool(inputs.data.eval), grpo=cfg.grpo if cfg.task == "grpo" else None)
    seq = longest_row(cfg, first)
    note = None
    if sharding == "fsdp2":  # as train under fsdp2: auto means off there
        off = {k: False for k in ("checkpointing", "offload_activations") if getattr(auto.train, k) == AUTO}
        auto.train = dataclasses.replace(auto.train, **off)
        note = "train.sharding fsdp2: no checkpointing or offload, which train turns off under fsdp2."
    mb_auto = cfg.train.micro_batch == AUTO
    dtype = planned_dtype(cfg, gpu)
    prompt = longest_prompt(cfg, first)
    result = plan_for_config(
        cfg, auto.train, shape, seq, budget, mb_auto, on_cuda, nproc, sharding, dtype, gpu, prompt, len(first)
    )
    require_fit(result, f"budget {gib(budget)}")
    result.notes += [n for n in [free_memory_note(budget, gpu)] if n]
    rows, why = planned_rows(cfg, auto.train, len(first))
    per_step = {
        "dpo": f"{counted(rows, 'pair')} (a chosen and a rejected row each)",
        "grpo": f"{counted(rows, 'sampled answer')} ({counted(cfg.grpo.prompts_per_step, 'prompt')} x "
        f"{cfg.grpo.num_generations})",
    }.get(cfg.task)
    return PlanReport(result, shape, seq, rows, note, processes_line(cfg, nproc, sharding), per_step, why)


def planned_dtype(cfg: RunConfig, gpu: torch.device | None) -> torch.dtype:
    """The dtype train would pick for `cfg` on `gpu` (`training_dtype`: auto is fp32 for full/layers on a GPU without
    native bf16); with no GPU here, planning for another machine, auto is bf16."""
    if gpu is None:
        return {"fp32": torch.float32, "fp16": torch.float16}.get(cfg.model.dtype, torch.bfloat16)
    return training_dtype(cfg.model.dtype, gpu, cfg.method)[0]


def processes_line(cfg: RunConfig, nproc: int, sharding: str | None) -> str:
    """How many processes the plan is for, and what each GPU holds."""
    if nproc == 1:
        return "processes: 1 (as tunelab train without --nproc; --nproc N plans N)"
    how = f"train.sharding {sharding}" + (" (auto)" if cfg.train.sharding == "auto" else "")
    if sharding == "fsdp2":
        held = (
            f"each GPU holds 1/{nproc} of the weights, gradients and optimizer state, and gathers the embedding, head "
            "and two layers at a time"
        )
    else:
        held = "each GPU holds the whole model, gradients and optimizer state, and DDP's copy of the gradients"
    return f"processes: {nproc}, {how}: {held}; the peaks are each GPU's, the micro-batches of a step shared by them"
