"""The memory and speed models' `Setup` for a run config: what of the config the planner's estimates depend on
(`training.plan` plans over it), and the rows a step of the config trains on."""

from __future__ import annotations

import torch

from tunelab.config import RunConfig, TrainConfig
from tunelab.errors import counted
from tunelab.training.graphs import bucket_width, unsupported_reason
from tunelab.training.memory_setup import PROJECTIONS, Setup


def config_setup(
    cfg: RunConfig,
    seq: int,
    shards: int = 1,
    world: int = 1,
    dtype: torch.dtype = torch.bfloat16,
    prompt: int = 0,
    rows: int = 0,
) -> Setup:
    """The memory model's Setup for a run of `cfg` whose model trains in `dtype` (`BuiltModel.dtype`), over `world`
    processes (`shards` of them under fsdp2); `prompt`: grpo's longest prompt, whose answers the sampler caches;
    `rows`: the rows (dpo: pairs) of an epoch, which no micro-batch exceeds (0: not known; grpo's micro-batches are
    of sampled answers, not of them)."""
    m = cfg.method
    g = cfg.grpo
    sampled = -(-g.prompts_per_step * g.num_generations // world) if cfg.task == "grpo" else 0  # each rank's share
    targets = (
        PROJECTIONS if "all-linear" in m.target_modules else tuple(t for t in m.target_modules if t in PROJECTIONS)
    )
    return Setup(
        method="lora" if m.is_adapter else m.name,  # dora is an adapter too: its frozen base trains no weight
        quantized=m.quantize_base == "nf4",
        rank=m.r,
        targets=targets,
        top_layers=m.top_layers,
        optimizer=cfg.train.optimizer,
        seq=seq,
        rows=2 if cfg.task == "dpo" else 1,  # a pair is its chosen and its rejected row, in one forward
        graphs=graphs_possible(cfg, world),
        shards=shards,
        dtype={torch.float32: "fp32", torch.float16: "fp16"}.get(dtype, "bf16"),
        sampled=sampled,
        sample_len=prompt + g.max_new_tokens if sampled else 0,
        sample_prompt=prompt if sampled else 0,
        # grpo: a forward for the reference's log-probs (beta > 0), one for the old policy's (LoRA dropout draws)
        fixed_forwards=int(g.beta > 0) + int(m.is_adapter and m.dropout > 0) if sampled else 0,
        # grpo's reference where it is not the base with the adapter off: the trained tensors as they start, a copy
        reference_copy=bool(sampled) and g.beta > 0 and (not m.is_adapter or bool(cfg.model.adapter)),
        lm_head=cfg.task not in ("classify", "reward"),  # a head task's body has no LM head (`tasks.head`)
        # method.init pissa/olora: the starting factors A0, B0 each adapted layer keeps (`peft.weight_init`)
        initial_copy=m.is_adapter and m.init != "default",
        dora=m.dora,
        dropout=m.is_adapter and m.dropout > 0,
        fp8=cfg.train.fp8,  # the NF4 base's products in FP8 (`training.memory_fp8`; validated: QLoRA only)
        packed=cfg.data.packing,  # only sft packs (the other tasks refuse data.packing)
        epoch_rows=0 if sampled else rows,
        graph_bucket=bucket_width(cfg.data.max_length),  # a graphed batch's width is padded to a multiple of it
    )


def graphs_possible(cfg: RunConfig, world: int = 1) -> bool:
    """Whether a run of this config on the fast path of a CUDA device, in `world` processes, would replay from CUDA
    graphs where it does not offload: `training.graphs.unsupported_reason`, the rule the run itself follows."""
    if cfg.train.cuda_graphs is False:
        return False
    return unsupported_reason(cfg, "fast", torch.device("cuda"), cfg.task, world) is None


def rows_per_step(cfg: RunConfig, train: TrainConfig) -> int:
    """Rows an optimizer step trains on: micro_batch x grad_accum; grpo's prompts_per_step x num_generations answers,
    in micro-batches of micro_batch rows (its grad_accum is 1)."""
    if cfg.task == "grpo":
        return cfg.grpo.prompts_per_step * cfg.grpo.num_generations
    return train.micro_batch * train.grad_accum


def planned_rows(cfg: RunConfig, train: TrainConfig, held: int) -> tuple[int, str | None]:
    """The rows (dpo: pairs) a step trains on as the planner plans it, and why where that is fewer than the config
    sets: a step takes no more than the `held` rows of an epoch (a micro-batch ends with them, `make_batches`).
    grpo's steps are of sampled answers, as many whatever the data."""
    rows = rows_per_step(cfg, train)
    if cfg.task == "grpo" or not 0 < held < rows:
        return rows, None
    noun = "pair" if cfg.task == "dpo" else "row"
    return held, (
        f"all the data holds: an epoch has {counted(held, noun)}, fewer than train.micro_batch {train.micro_batch}"
        f" x train.grad_accum {train.grad_accum} = {rows}"
    )
