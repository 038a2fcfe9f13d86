"""The memory planner: the fastest micro-batch, checkpointing and offload that fit a GPU memory budget.

Candidates: every micro-batch that divides the global batch (micro_batch x grad_accum, kept), every number of
checkpointed layers k = 0..L (the lowest k are recomputed: `LlamaModel.checkpoint_layers`), offload of their inputs
on or off. Each gets its peak from `training.memory.estimate` and a predicted speed from `training.speed.step_time`;
the planner takes the fastest that fits (on a tie, the fewer recomputed layers, then the smaller peak). Options the
user set stay as they are.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

import torch

from tunelab.config import AUTO, RunConfig, TrainConfig, parse_size
from tunelab.errors import ConfigError
from tunelab.models.llama_config import LlamaConfig
from tunelab.training.auto import AutoPlan, Choice
from tunelab.training.build import BuiltModel, checkpoint_mode
from tunelab.training.memory import GIB, Estimate, estimate, gib, saving_layers
from tunelab.training.memory_fp8 import fp8_on
from tunelab.training.memory_setup import Setup
from tunelab.training.plan_setup import config_setup, rows_per_step
from tunelab.training.speed import FP8_GEMM_SPEEDUP, FP8_SOURCE, fixed_time, sample_time, step_time
from tunelab.training.workspaces import cublas_workspace_bytes

DEFAULT_BUDGET_FRACTION = 0.92  # of the GPU's total memory: the CUDA context and libraries' own memory live outside


class BudgetError(ConfigError):
    """No configuration fits the memory budget."""


@dataclass(frozen=True)
class Candidate:
    micro_batch: int
    grad_accum: int
    checkpointed: int  # the lowest this many layers are recomputed
    offload: bool
    rollout: bool = False  # grpo: grad_accum counts the micro-batches a step's answers go in (train.grad_accum is 1)

    def describe(self, layers: int) -> str:
        if not self.checkpointed:
            ckpt = "no checkpointing"
        elif self.checkpointed >= layers:
            ckpt = "checkpointing all layers"
        else:
            ckpt = f"checkpointing {self.checkpointed}/{layers} layers"
        batches = f"({self.grad_accum} a step)" if self.rollout else f"x grad_accum {self.grad_accum}"
        return f"micro_batch {self.micro_batch} {batches}, {ckpt}" + (", offload" if self.offload else "")


@dataclass
class Scored:
    candidate: Candidate
    estimate: Estimate
    step_s: float  # predicted seconds per optimizer step (grpo: its sampling included)
    tokens_per_s: float  # trained tokens per second of the whole step
    sample_s: float = 0.0  # grpo: the predicted seconds of the sampling before the step (`speed.sample_time`)
    fixed_s: float = 0.0  # grpo: of the forwards for the answers' reference and old log-probs (`speed.fixed_time`)

    @property
    def peak(self) -> int:
        return self.estimate.peak


@dataclass
class Fixed:
    """What the user set (None: the planner chooses)."""

    micro_batch: int | None = None
    most_micro_batch: int | None = None  # an auto micro_batch: cut where memory binds, never raised
    checkpointing: bool | None = None
    checkpoint_layers: int | None = None
    offload: bool | None = None


@dataclass
class MemoryPlan:
    budget: int
    layers: int
    chosen: Scored | None
    candidates: list[Scored]  # one per (micro_batch, offload): the fewest checkpointed layers that fit, or all
    smallest: Scored  # the candidate of least memory
    reason: str
    calibration: float = 1.0
    notes: list[str] = field(default_factory=list)
    setup: Setup | None = None  # what was planned (method, optimizer): the refusal's advice follows it

    def table(self) -> str:
        """The candidates with their predicted peak and speed, the chosen one marked."""
        rows = [f"{'':2}{'configuration':<66}{'peak':>11}{'tokens/s':>10}  fits {gib(self.budget)}"]
        for s in self.candidates:
            mark = "->" if self.chosen is not None and s.candidate == self.chosen.candidate else ""
            fits = "yes" if s.peak <= self.budget else "no"
            rows.append(
                f"{mark:<2}{s.candidate.describe(self.layers):<66}{gib(s.peak):>11}{s.tokens_per_s:>10,.0f}  {fits}"
            )
        shown = self.chosen or self.smallest
        if shown.sample_s:
            forwards = (
                f" and the forwards for the answers' fixed log-probs {shown.fixed_s:.2f} s" if shown.fixed_s else ""
            )
            rows.append(
                f"  tokens/s of the whole step: grpo's sampling takes {shown.sample_s:.2f} s{forwards} of its "
                f"{shown.step_s:.2f} s (answers decoded one token at a time, each token reading the weights and the "
                "KV cache)"
            )
        return "\n".join(rows)

    def breakdown(self, which: Scored | None = None) -> str:
        s = which or self.chosen or self.smallest
        lines = [f"peak of {s.candidate.describe(self.layers)} (at its {s.estimate.peak_phase}):"]
        parts = [(name, size) for name, size in s.estimate.components().items() if size]
        named = [*(name for name, _ in parts), *s.estimate.build]
        width = max([48, *(len(name) + 2 for name in named)])  # a long name does not push its size out of line
        # one unit for the column: MiB where the whole is under a tenth of a GiB (a small model's parts read 0.000 GiB)
        unit, name_of = (GIB, "GiB") if s.peak >= GIB / 10 else (2**20, "MiB")
        for name, size in sorted(parts, key=lambda kv: -kv[1]):
            lines.append(f"  {name:<{width}}{size / unit:>8.3f} {name_of}")
        lines.append(f"  {'total':<{width}}{s.estimate.step_peak / unit:>8.3f} {name_of}")
        if s.estimate.build:  # QPiSSA's factorisation, once before the first step (`memory.build_bytes`)
            which = "the peak" if s.estimate.build_wins else "below the step's"
            lines.append(f"while the model is built (each adapted weight factorised in fp32; {which}):")
            for name, size in sorted(s.estimate.build.items(), key=lambda kv: -kv[1]):
                lines.append(f"  {name:<{width}}{size / unit:>8.3f} {name_of}")
            lines.append(f"  {'total':<{width}}{s.estimate.build_peak / unit:>8.3f} {name_of}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# The planner


def candidates(
    layers: int, global_batch: int, fixed: Fixed, cuda: bool, rollout: bool = False, frozen: int = 0
) -> list[Candidate]:
    """Every configuration the fixed options allow that differs from the others (`rollout`: grpo's, whose step's
    answers are split into micro-batches, not accumulated from grad_accum batches of prompts). `frozen`: the lowest
    layers that save nothing for backward (method layers), whose checkpointing or offload would change nothing."""
    if fixed.micro_batch is not None:
        batches = [fixed.micro_batch]
    else:
        most = min(global_batch, fixed.most_micro_batch or global_batch)
        batches = [b for b in range(1, most + 1) if global_batch % b == 0]
    if fixed.checkpointing is False:
        counts = [0]
    elif fixed.checkpoint_layers is not None:
        counts = [min(fixed.checkpoint_layers, layers)]
    elif fixed.checkpointing is True:
        counts = [layers]
    else:
        counts = [0, *range(frozen + 1, layers + 1)]
    offloads = [fixed.offload] if fixed.offload is not None else ([False, True] if cuda else [False])
    out = []
    for b in batches:
        ga = -(-global_batch // b) if rollout else max(1, global_batch // b)  # grpo: the last micro-batch short
        for k in counts:
            for off in offloads:
                if off and k <= frozen and fixed.offload is None:
                    continue  # offload moves recomputed layers' inputs: nothing to move
                out.append(Candidate(b, ga, k, off, rollout))
    return out


def plan(
    c: LlamaConfig,
    setup: Setup,
    budget: int,
    global_batch: int,
    fixed: Fixed | None = None,
    cuda: bool = True,
    calibration: float = 1.0,
    ranks: int = 1,
    gpu_name: str | None = None,
) -> MemoryPlan:
    """The fastest candidate whose predicted peak fits `budget` bytes (each rank's GPU). `setup` gives the method,
    rank, optimizer, sequence length and FSDP2 shards (its micro_batch, checkpointed and offload are replaced per
    candidate); `global_batch` rows per optimizer step are kept, their micro-batches shared by `ranks` processes;
    `gpu_name`: the GPU's, for the speed model's fp32 rate (`fp32_fraction`). BudgetError when nothing fits, naming
    the minimum and its largest part."""
    fixed = fixed or Fixed()
    # CUDA graphs and cuBLAS workspaces exist on CUDA only
    setup = dataclasses.replace(setup, graphs=setup.graphs and cuda, blas_workspace=setup.blas_workspace if cuda else 0)
    scored = []
    frozen = c.num_layers - saving_layers(c, setup)
    for cand in candidates(c.num_layers, global_batch, fixed, cuda, setup.sampled > 0, frozen):
        s = dataclasses.replace(
            setup, micro_batch=cand.micro_batch, checkpointed=cand.checkpointed, offload=cand.offload
        )
        est = estimate(c, s, calibration)
        t = step_time(c, s, -(-cand.grad_accum // ranks), gpu_name)  # a step's micro-batches are shared by the ranks
        sampling = sample_time(c, s, gpu_name)  # grpo: each rank samples its share of the answers first
        forwards = fixed_time(c, s, gpu_name)  # and puts them through the model for the fixed log-probs
        t += sampling + forwards
        scored.append(Scored(cand, est, t, s.tokens * cand.grad_accum / t, sampling, forwards))
    smallest = min(scored, key=lambda x: (x.peak, x.step_s))
    fitting = [x for x in scored if x.peak <= budget]
    chosen = min(fitting, key=_preference) if fitting else None
    shown = _shown(scored, budget)
    notes = [fp8_note(setup.sampled > 0)] if fp8_on(setup) else []
    if chosen is None:
        reason = _too_small(budget, smallest, c.num_layers)
        return MemoryPlan(budget, c.num_layers, None, shown, smallest, reason, calibration, notes, setup)
    reason = _why(chosen, scored, budget, c.num_layers)
    return MemoryPlan(budget, c.num_layers, chosen, shown, smallest, reason, calibration, notes, setup)


def fp8_note(sampled: bool = False) -> str:
    """What the speeds of a train.fp8 plan rest on (`speed.FP8_GEMM_SPEEDUP`); `sampled`: grpo's, whose sampling is
    timed as in bf16 (`speed.sample_time`)."""
    sampler = (
        " grpo's sampling runs FP8 products too but is timed as in bf16: decoding in FP8 was never measured."
        if sampled
        else ""
    )
    return (
        f"train.fp8: the tokens/s take the base GEMMs {FP8_GEMM_SPEEDUP:.2f}x faster than in bf16, estimated from "
        f"{FP8_SOURCE}; the peaks count FP8's own buffers (weight scales, quantized rows, backward operands) in place "
        f"of the bf16 dequantization buffers.{sampler}"
    )


def _preference(s: Scored) -> tuple:
    """The planner's order among fitting candidates: the fastest; on a tie the fewer recomputed layers, then the
    smaller peak. The table uses it too, so that the row it marks is the one chosen."""
    return (s.step_s, s.candidate.checkpointed, s.peak)


def _shown(scored: list[Scored], budget: int) -> list[Scored]:
    """One row per (micro_batch, offload): the one the planner prefers among those that fit, else the smallest;
    fitting rows first, in the planner's order."""
    groups: dict[tuple[int, bool], list[Scored]] = {}
    for s in scored:
        groups.setdefault((s.candidate.micro_batch, s.candidate.offload), []).append(s)
    rows = []
    for members in groups.values():
        fitting = [s for s in members if s.peak <= budget]
        rows.append(min(fitting, key=_preference) if fitting else min(members, key=lambda s: s.peak))
    return sorted(rows, key=lambda s: (s.peak > budget, *_preference(s)))


def _why(chosen: Scored, scored: list[Scored], budget: int, layers: int) -> str:
    faster = [s for s in scored if s.step_s < chosen.step_s]
    why = f"the fastest of {len(scored)} candidates that fits {gib(budget)}: predicted peak {gib(chosen.peak)}"
    if faster:
        nearest = min(faster, key=lambda s: s.peak)
        why += (
            f"; faster ones need more ({nearest.candidate.describe(layers)} would need {gib(nearest.peak)}, "
            f"{nearest.estimate.dominant()[0]} the largest part)"
        )
    return why


def _too_small(budget: int, smallest: Scored, layers: int) -> str:
    part, size = smallest.estimate.dominant()
    return (
        f"no configuration fits {gib(budget)}: the smallest needs {gib(smallest.peak)} "
        f"({smallest.candidate.describe(layers)}); its largest part is {part} ({gib(size)})."
    )


def require_fit(result: MemoryPlan, where: str) -> Scored:
    """The chosen candidate, or BudgetError saying the minimum, its dominating part and what to change."""
    if result.chosen is not None:
        return result.chosen
    raise BudgetError(f"{where}: {result.reason} Give more memory, or lower what dominates it ({_ways(result.setup)}).")


def _ways(s: Setup | None) -> str:
    """What lowers each kind of part, among the options the planned run has not already taken."""
    s = s or Setup()
    ways = ["data.max_length for activations"]
    if s.method == "lora" and not s.quantized:
        ways.append("method.quantize_base nf4 for the weights")
    elif s.method == "full":
        ways.append("method.name lora (or layers) for the trained weights, their gradients and optimizer state")
    elif s.method == "layers":
        ways.append("fewer method.top_layers for the trained weights, their gradients and optimizer state")
    if s.initial_copy and s.quantized and s.method == "lora":  # QPiSSA: `memory.build_bytes`
        ways.append("method.init default for the build's fp32 factorisation")
    if s.optimizer == "adamw" and s.shards <= 1:
        ways.append("train.optimizer adamw_8bit for the optimizer state")
    if s.optimizer == "adamw" and s.method != "lora":  # fsdp2 takes it, and it drops the bf16 compensation
        ways.append("train.optimizer adamw_torch for the optimizer state, its updates rounded to bf16")
    return ", ".join(ways)


# ----------------------------------------------------------------------------------------------------------------
# The config's auto values


def device_budget(train: TrainConfig, device: torch.device | None, budget_name: str = "--gpu-memory") -> int | None:
    """train.gpu_memory, else DEFAULT_BUDGET_FRACTION of the CUDA device's memory; None off CUDA without one.
    ConfigError for a budget above the CUDA device's memory: a plan for memory the device lacks runs out of it.
    `budget_name`: plan's way of giving it, named beside the option (--gpu-memory; gpu_memory= in Python)."""
    cuda = device is not None and device.type == "cuda"
    if train.gpu_memory is not None:
        try:
            budget = parse_size(train.gpu_memory)
        except ValueError as exc:
            raise ConfigError(f"option 'train.gpu_memory' ({budget_name}): {exc}.") from None
        if cuda:
            props = torch.cuda.get_device_properties(device)
            if budget > props.total_memory:
                raise ConfigError(
                    f"option 'train.gpu_memory' ({budget_name}) is {train.gpu_memory}, more than the "
                    f"{gib(props.total_memory)} of this GPU ({props.name}); give at most that, or leave it unset for "
                    f"{DEFAULT_BUDGET_FRACTION:.2f} of it. To plan for a larger GPU from this machine, hide this one "
                    "(CUDA_VISIBLE_DEVICES= tunelab plan ...)."
                )
        return budget
    if cuda:
        return int(torch.cuda.get_device_properties(device).total_memory * DEFAULT_BUDGET_FRACTION)
    return None


def free_memory_note(budget: int, device: torch.device | None) -> str | None:
    """A note when the budget is more than this process can have of the CUDA device now: other processes hold part
    of it (the budget is not refused: they may end before the run needs it)."""
    if device is None or device.type != "cuda":
        return None
    free, total = torch.cuda.mem_get_info(device)
    available = free + torch.cuda.memory_reserved(device)  # what this process holds is its own to use
    if budget <= available:
        return None
    return (
        f"note: the budget {gib(budget)} is more than the {gib(available)} of GPU memory this process can have now: "
        f"other processes hold {gib(total - available)} of its {gib(total)}, and a run started now may run out of it."
    )


def plan_for_config(
    cfg: RunConfig,
    train: TrainConfig,
    shape: LlamaConfig,
    seq: int,
    budget: int,
    micro_batch_auto: bool,
    cuda: bool = True,
    ranks: int = 1,
    sharding: str | None = None,
    dtype: torch.dtype = torch.bfloat16,
    gpu: torch.device | None = None,
    prompt: int = 0,
    rows: int = 0,
) -> MemoryPlan:
    """The planner over the options of `train` (auto values of the data already chosen) that are left to it, for
    `ranks` processes (`sharding`: ddp or fsdp2 among several, None for one), the model in `dtype`, on the CUDA
    device `gpu` (None: another machine's; its name sets the fp32 rate, its compute capability the cuBLAS
    workspace); `prompt`: grpo's longest prompt; `rows`: the epoch's rows (`config_setup`)."""
    refuse_layer_count(train, shape.num_layers)
    fixed = Fixed(
        micro_batch=None if micro_batch_auto else train.micro_batch,
        most_micro_batch=train.micro_batch if micro_batch_auto else None,
        checkpointing=None if train.checkpointing == AUTO else bool(train.checkpointing),
        checkpoint_layers=train.checkpoint_layers,
        offload=None if train.offload_activations == AUTO else bool(train.offload_activations),
    )
    setup = dataclasses.replace(
        config_setup(cfg, seq, ranks if sharding == "fsdp2" else 1, ranks, dtype, prompt, rows),
        ddp=ranks > 1 and sharding == "ddp",
        blas_workspace=cublas_workspace_bytes(
            torch.cuda.get_device_capability(gpu) if gpu is not None else None,
            os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        ),
    )
    name = torch.cuda.get_device_name(gpu) if gpu is not None else None
    return plan(shape, setup, budget, rows_per_step(cfg, train), fixed, cuda=cuda, ranks=ranks, gpu_name=name)


def refuse_layer_count(train: TrainConfig, layers: int | None) -> None:
    """ConfigError when train.checkpoint_layers names more layers than the model has (it was quietly cut down)."""
    if train.checkpoint_layers is not None and layers is not None and train.checkpoint_layers > layers:
        raise ConfigError(
            f"option 'train.checkpoint_layers' is {train.checkpoint_layers}, but the model has {layers} layers."
        )


def longest_row(cfg: RunConfig, rows: list) -> int:
    """The longest row a step trains on: a grpo row is its prompt and up to grpo.max_new_tokens answer tokens (the
    rollout cuts an answer at data.max_length); a dpo pair's rows are its chosen and its rejected side, each padded
    to the longer."""
    if cfg.task == "dpo":
        return max((max(len(row.chosen_ids), len(row.rejected_ids)) for row in rows), default=1)
    longest = max((len(row.input_ids) for row in rows), default=1)
    if cfg.task == "grpo":
        longest = min(longest + cfg.grpo.max_new_tokens, cfg.data.max_length)
    return longest


def longest_prompt(cfg: RunConfig, rows: list) -> int:
    """grpo: the longest prompt, which with grpo.max_new_tokens sizes the sampler's KV cache; 0 for other tasks."""
    return max((len(row.input_ids) for row in rows), default=1) if cfg.task == "grpo" else 0


def plans_memory(configured: TrainConfig, auto: AutoPlan) -> bool:
    """True when train's memory planner has a value to choose: train.checkpointing or offload_activations is auto, or
    the micro_batch the config leaves auto is not one a resumed run keeps. Only then does train weigh its budget
    against the GPU's free memory and note what other processes hold of it (`tunelab check` warns likewise)."""
    t = auto.train
    mb_auto = configured.micro_batch == AUTO and "train.micro_batch" not in auto.kept
    return t.checkpointing == AUTO or t.offload_activations == AUTO or mb_auto


def plan_memory(
    auto: AutoPlan,
    cfg: RunConfig,
    built: BuiltModel,
    seq: int,
    ranks: int = 1,
    sharding: str | None = None,
    prompt: int = 0,
    rows: int = 0,
) -> tuple[AutoPlan, MemoryPlan | None]:
    """Choose train.checkpointing, checkpoint_layers and offload_activations where they are auto (and a smaller
    micro_batch, keeping micro_batch x grad_accum, where micro_batch is auto and memory binds), apply them to the
    model, and return the plan with those choices. Explicit values win. `seq`: the longest training row; `ranks`
    and `sharding` (fsdp2: each rank holds 1/ranks of the model) as the run trains; `prompt`: `longest_prompt`;
    `rows`: the rows of the first epoch (a micro-batch has at most as many)."""
    t = auto.train
    refuse_layer_count(t, getattr(built.hf_config, "num_hidden_layers", None))
    if built.impl != "fast" and t.checkpoint_layers:  # transformers' checkpointing recomputes every layer
        raise ConfigError(
            f"option 'train.checkpoint_layers' is {t.checkpoint_layers}, but model '{cfg.model.name}' trains on the "
            "generic path, which recomputes every layer or none; drop checkpoint_layers (or use a Llama-family "
            "model on the fast path)."
        )
    mb_auto = cfg.train.micro_batch == AUTO and "train.micro_batch" not in auto.kept
    undecided = plans_memory(cfg.train, auto)
    chosen: dict[str, Choice] = {}
    result = None
    budget = device_budget(t, built.device) if built.impl == "fast" else None
    if not undecided:
        pass
    elif built.impl != "fast" or budget is None:
        where = "the generic path has no memory model" if built.impl != "fast" else "no GPU memory budget on the CPU"
        ckpt = built.impl != "fast" and built.device.type == "cuda"
        if t.checkpointing == AUTO:
            chosen["train.checkpointing"] = Choice(ckpt, f"{where}: " + ("on, the safe choice" if ckpt else "off"))
        if t.offload_activations == AUTO:
            chosen["train.offload_activations"] = Choice(False, f"{where}: off")
    else:
        shape = LlamaConfig.from_hf(built.hf_config)
        cuda = built.device.type == "cuda"
        gpu = built.device if cuda else None
        result = plan_for_config(
            cfg, t, shape, seq, budget, mb_auto, cuda, ranks, sharding, built.dtype, gpu, prompt, rows
        )
        best = require_fit(result, "option 'train.gpu_memory'").candidate
        result.notes += [n for n in [free_memory_note(budget, built.device)] if n]
        why = f"planner: {result.reason}"
        if t.checkpointing == AUTO:
            chosen["train.checkpointing"] = Choice(best.checkpointed > 0, why)
        if t.offload_activations == AUTO:
            chosen["train.offload_activations"] = Choice(best.offload, why)
        if mb_auto and best.micro_batch != t.micro_batch:
            keeps = (
                f"the step's answers in {best.grad_accum} micro-batches"
                if best.rollout
                else f"grad_accum {best.grad_accum} keeps the batch"
            )
            chosen["train.micro_batch"] = Choice(best.micro_batch, f"memory: {t.micro_batch} does not fit; {keeps}")
        if t.checkpoint_layers is None and 0 < best.checkpointed < shape.num_layers:
            chosen["train.checkpoint_layers"] = Choice(best.checkpointed, why)
        accumulates = "train.micro_batch" in chosen and not best.rollout  # grpo's grad_accum stays 1
        t = dataclasses.replace(t, grad_accum=best.grad_accum if accumulates else t.grad_accum)
    t = dataclasses.replace(t, **{name.split(".")[1]: c.value for name, c in chosen.items()})
    if built.impl == "fast":
        built.model.gradient_checkpointing = checkpoint_mode(t)
        built.model.checkpoint_layers = t.checkpoint_layers
    elif t.checkpointing is True:
        built.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    plan_out = AutoPlan(t, auto.chosen | chosen, auto.total_steps, auto.kept)
    return plan_out, result


@dataclass
class Calibration:
    """What one measured step says about the model: measured peak = static + activation_scale x dynamic."""

    activation_scale: float = 1.0
    measured_peak: int | None = None
    predicted_peak: int | None = None
    notes: list[str] = field(default_factory=list)


def calibrate(predicted: Estimate, measured_peak: int) -> Calibration:
    """The activation scale that makes `predicted` meet a measured peak (reserved bytes of the same configuration).
    Static parts are exact sizes of tensors; what the allocator adds lands on the dynamic ones. Kept within
    [0.5, 3]: a measurement outside says the model missed something, and the note says so."""
    dynamic = predicted.dynamic_bytes
    raw = (measured_peak - predicted.static_bytes) / dynamic if dynamic else 1.0
    scale = min(max(raw, 0.5), 3.0)
    notes = [] if scale == raw else [f"measured/predicted activation ratio {raw:.2f} clamped to {scale:.2f}"]
    return Calibration(scale, measured_peak, predicted.step_peak, notes)


def measured_note(result: MemoryPlan | None, measured: int) -> str | None:
    """After the first step on CUDA: the measured peak against the prediction, and the calibration it gives."""
    if result is None or result.chosen is None:
        return None
    cal = calibrate(result.chosen.estimate, measured)
    predicted = result.chosen.estimate.step_peak  # the step's: a QPiSSA build's peak is over before it
    return (
        f"memory: first step peaked at {gib(measured)} reserved, predicted {gib(predicted)} "
        f"(ratio {predicted / measured:.2f}; activation scale {cal.activation_scale:.2f} for `tunelab plan`)"
        + (f"; over the budget of {gib(result.budget)}" if measured > result.budget else "")
    )
