"""Several processes, one run: the ranks torchrun starts, how a step's micro-batches are dealt out, and how the model
is wrapped (DDP or FSDP2) so that the ranks' gradients add up to one process's.

A run is distributed when torchrun (or `tunelab train --nproc N`, training/launch.py) sets WORLD_SIZE > 1; `session`
then joins the process group (gloo on the CPU, nccl on CUDA, one GPU per rank) and leaves it at the end. Without
it, `Ranks()` is the one process and every function here is the identity, so the single-process path is unchanged.

The global batch does not depend on the rank count: an optimizer step takes `train.grad_accum` micro-batches of
the epoch, as one process would, and rank r runs micro-batches r, r + N, r + 2N, ... of them (`shard`). Every rank
runs the same number of forwards (DDP and FSDP2 need it): where grad_accum is not a multiple of N, the ranks that
would run one fewer take a blank micro-batch, a copy whose loss is multiplied by 0 (`weight`). The step divides
each rank's summed loss by the loss tokens of ALL ranks (`Ranks.sum`) and the wrappers SUM the gradients (not
average), so the update is the one of a single process with the same micro-batches:

    grad = sum over ranks r, micro-batches b of r: d loss_sum(b) / d w  /  sum over all b of loss_tokens(b)

up to the order of the floating-point additions. The same config therefore trains the same run on 1 or N ranks,
and a run may resume on another rank count. One exception by design: dpo's loss kto estimates its reference point z0
over the micro-batches the ranks run side by side (`tasks/kto.py`, as TRL gathers it over processes), so N ranks train
what one process trains with micro-batches N times larger. The non-finite guard's decision is taken on the summed loss and the
global gradient norm and agreed with `Ranks.all`, so all ranks skip the same steps.
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import json
import math
import os
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from tunelab.config import RunConfig
from tunelab.config.flags import CLI, Spelling
from tunelab.errors import ConfigError, counted
from tunelab.quant.linear import SHARDABLE, NF4Linear, shardable_nf4_
from tunelab.training.build import decoder_layers

BLANK = "blank"  # key of a micro-batch that only keeps a rank in step with the others (its loss counts 0 times)


@dataclass(frozen=True)
class Ranks:
    """This process's place in the run: rank of world, and its local rank (its GPU on this host)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0 alone prints, logs and writes the run directory."""
        return self.rank == 0

    def _device(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if dist.get_backend() == "nccl" else torch.device("cpu")

    def _tensor(self, values: list[float]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float64, device=self._device())  # exact for token counts below 2**53

    def sum(self, value: float) -> float:
        """The sum of `value` over all ranks."""
        if self.world == 1:
            return value
        t = self._tensor([value])
        dist.all_reduce(t)
        return float(t.item())

    def all(self, flag: bool) -> bool:
        """True when `flag` is True on every rank."""
        if self.world == 1:
            return flag
        t = self._tensor([1.0 if flag else 0.0])
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return bool(t.item())

    def each(self, value: float) -> list[float]:
        """`value` of every rank, in rank order."""
        if self.world == 1:
            return [value]
        t = self._tensor([value])
        out = [torch.empty_like(t) for _ in range(self.world)]
        dist.all_gather(out, t)
        return [float(x.item()) for x in out]

    def any(self, flag: bool) -> bool:
        return not self.all(not flag)

    def gather(self, value: Any) -> list[Any]:
        """`value` of every rank, in rank order: any JSON value (NaN included), sent as UTF-8 JSON bytes through
        all_gather, so nothing is pickled."""
        if self.world == 1:
            return [value]
        data = torch.frombuffer(bytearray(json.dumps(value).encode()), dtype=torch.uint8).to(self._device())
        sizes = [int(n) for n in self.each(float(data.numel()))]
        padded = torch.zeros(max(sizes), dtype=torch.uint8, device=data.device)
        padded[: data.numel()] = data
        out = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(out, padded)
        return [json.loads(o[:n].cpu().numpy().tobytes()) for o, n in zip(out, sizes)]

    def mine(self, count: int, rank: int | None = None) -> range:
        """This rank's (or `rank`'s) items of `count` dealt out in turn: r, r + N, r + 2N, ..."""
        return range(self.rank if rank is None else rank, count, self.world)

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def shard(self, group: list[dict]) -> list[dict]:
        """This rank's micro-batches of a step's `group`: every world-th from its rank on, padded with blanks to the
        count every rank runs, ceil(len(group) / world)."""
        if not group:
            return []
        mine = [group[i] for i in self.mine(len(group))]
        count = math.ceil(len(group) / self.world)
        return mine + [{**group[0], BLANK: True}] * (count - len(mine))


ONE_PROCESS = Ranks()  # frozen: the run without a process group


def weight(batch: dict) -> float:
    """1 for a real micro-batch, 0 for a blank one (its forward and backward run; its loss and tokens count 0)."""
    return 0.0 if batch.get(BLANK) else 1.0


def from_environment() -> Ranks:
    """The ranks torchrun describes in the environment (RANK, WORLD_SIZE, LOCAL_RANK), or the one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return ONE_PROCESS
    return Ranks(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def backend(device: str) -> str:
    """nccl where the run trains on CUDA, gloo on the CPU."""
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    return "nccl" if cuda else "gloo"


@contextlib.contextmanager
def session(cfg: RunConfig) -> Iterator[Ranks]:
    """Join the process group for the run (unless the caller already did) and leave it afterwards; on CUDA, rank r
    trains on GPU local_rank. Ranks other than 0 print nothing: their stdout goes to os.devnull for the run."""
    ranks = from_environment()
    if ranks.world == 1:
        yield ranks
        return
    kind = backend(cfg.model.device)
    if kind == "nccl":
        if ranks.local_rank >= (count := torch.cuda.device_count()):
            # tunelab train --nproc and train(nproc=...) refuse too many ranks before starting them (check_launch),
            # so only a launcher of the user's own starts them here: torchrun, or one like it
            fix = f"torchrun --nproc-per-node {count} or fewer" if count else "here none: set model.device cpu"
            raise ConfigError(
                f"rank {ranks.rank} is local rank {ranks.local_rank}, but this host has "
                f"{counted(count, 'CUDA device')}; start at most one process per GPU ({fix})."
            )
        torch.cuda.set_device(ranks.local_rank)
    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group(kind)
    finished = False
    try:
        with contextlib.ExitStack() as stack:
            if not ranks.main:
                stack.enter_context(contextlib.redirect_stdout(stack.enter_context(open(os.devnull, "w"))))
            yield ranks
        finished = True
    except BaseException as error:
        if owned:  # the failed run's frames hold its model, which must go before the group does (`leave`)
            release_frames(error)
        raise
    finally:
        if owned:
            leave(finished)


def release_frames(error: BaseException) -> None:
    """Clear the local variables of the finished frames `error` (and the errors it was raised from or during) passed
    through: a failed run's traceback holds its frames, and they its model, optimizer and wrapper, so the garbage
    collector cannot free them before `leave` destroys the group, and they held their memory until then and were
    freed after it, the abort `leave` exists to avoid. The traceback still prints (files, lines and code); only the
    values are gone. Frames still running (the caller's) are left as they are."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        traceback.clear_frames(error.__traceback__)
        error = error.__cause__ or error.__context__


def leave(finished: bool) -> None:
    """Destroy the process group with nothing of the run left holding it. FSDP2's units and DDP's reducer sit in
    reference cycles (hooks that refer back to their module), so the run's return leaves them to the garbage
    collector, holding the group and its gloo/nccl work: freed only after the group was destroyed, some of them at
    interpreter exit, where a communication thread that lets go of a tensor can no longer take the GIL and the
    process aborts ("terminate called without an active exception") after a finished run. They are collected
    first; a finished run then waits for every rank (a failed one does not: the others may be in a collective it
    never joins) before the group goes."""
    gc.collect()
    if finished:
        dist.barrier()
    dist.destroy_process_group()


WHOLE_MODEL_TASKS = {  # the tasks that train under ddp only, and why
    "grpo": "its sampler steps the model outside the forward that FSDP2 gathers the weights in",
    "classify": "a head run's result (the head, its labels) is saved from the whole model, not gathered from shards",
    "reward": "a head run's result (the head, its labels) is saved from the whole model, not gathered from shards",
}


def pick_sharding(cfg: RunConfig, spelling: Spelling = CLI) -> str:
    """ddp or fsdp2 for this config (train.sharding auto: fsdp2 for full fine-tuning, ddp otherwise); ConfigError
    for a combination not supported yet. `spelling`: how it names nproc (the CLI's --nproc, or train's argument)."""
    if cfg.stages:
        drop, own = ("--nproc", "--nproc") if spelling.flags else ("the argument nproc", "nproc=N")
        raise ConfigError(
            f"option 'stages' is set; a staged run trains in one process for now. Drop {drop}, or train each "
            f"stage's config on its own with {own}."
        )
    whole = WHOLE_MODEL_TASKS.get(cfg.task)  # why the task needs the whole model on every rank
    sharding = cfg.train.sharding
    if sharding == "auto":
        sharding = "fsdp2" if cfg.method.name == "full" and whole is None else "ddp"
    if sharding == "fsdp2" and whole is not None:
        raise ConfigError(
            f"option 'train.sharding' is fsdp2, which task {cfg.task} does not support: {whole}. Use "
            "train.sharding ddp (or auto): every rank holds the whole model."
        )
    if sharding == "fsdp2":
        m = cfg.method
        if m.is_adapter and (m.quantize_base != "nf4" or m.dora):
            what = "DoRA" if m.dora else "LoRA over a 16-bit base (method.quantize_base none)"
            raise ConfigError(
                f"option 'train.sharding' is fsdp2, which is not supported for {what} yet. fsdp2 trains method.name "
                "full or layers, and QLoRA (method.name lora with method.quantize_base nf4: the NF4 base sharded "
                "too); use train.sharding ddp (or auto) for this one."
            )
        if m.quantize_base == "nf4" and not fsdp2_holds_integer_parameters():
            raise ConfigError(
                f"option 'train.sharding' is fsdp2 with QLoRA, which needs torch 2.13 or newer (this is "
                f"{torch.__version__}: its FSDP2 makes every sharded parameter require gradients, which the NF4 "
                "base's integer tensors cannot). Upgrade torch, or use train.sharding ddp (or auto)."
            )
        if cfg.train.checkpointing is True or cfg.train.offload_activations is True:  # auto: off under fsdp2
            raise ConfigError(
                "option 'train.checkpointing' (or train.offload_activations) is true, which train.sharding fsdp2 does "
                "not support yet (the recomputation runs outside FSDP2's gathers); set it to false, or use ddp."
            )
        if cfg.train.optimizer == "adamw_8bit":
            raise ConfigError(
                f"option 'train.optimizer' is {cfg.train.optimizer}, which does not take FSDP2's sharded tensors; "
                "with train.sharding fsdp2 use adamw (or adamw_torch)."
            )
    return sharding


def fsdp2_holds_integer_parameters() -> bool:
    """Whether this torch's FSDP2 can shard frozen integer parameters (the NF4 codes). Torch 2.11's creates each
    sharded parameter with requires_grad=True, which fails for uint8; 2.13's keeps the parameter's own flag."""
    major, minor = (int(x) for x in torch.__version__.split(".")[:2])
    return (major, minor) >= (2, 13)


def is_parallel(model: nn.Module) -> bool:
    """Is `model` wrapped for several ranks (its forward must be the entry point, never a submodule's)?"""
    return isinstance(model, (DistributedDataParallel, FSDPModule))


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DDP; FSDP2 shards in place, so its model is itself."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def _sum_hook(_state, bucket):  # unannotated: DDP checks the annotations' objects, which postponed ones are not
    """DDP's all-reduce of a gradient bucket (dist.GradBucket) without its division by the world size: the step
    already divided by all ranks' loss tokens."""
    work = dist.all_reduce(bucket.buffer(), async_op=True)
    return work.get_future().then(lambda fut: fut.value()[0])


def parallelize(model: nn.Module, sharding: str | None, ranks: Ranks) -> nn.Module:
    """The module the loop trains: `model` itself on one rank; DDP around it (the whole model on every rank,
    gradients summed in buckets during backward); or, for fsdp2, the model sharded in place (`shard`)."""
    if ranks.world == 1:
        return model
    if sharding == "fsdp2":
        return shard(model)
    cuda = next(model.parameters()).is_cuda
    # Buffers are never trained and are the same on every rank (QLoRA's NF4 weights are buffers): no broadcast of
    # them before each forward. Newer torch names the option forward_sync_buffers and deprecates the older name.
    newer = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
    quiet_buffers = {"forward_sync_buffers" if newer else "broadcast_buffers": False}
    ddp = DistributedDataParallel(model, device_ids=[ranks.local_rank] if cuda else None, **quiet_buffers)
    ddp.register_comm_hook(None, _sum_hook)
    return ddp


def shard(model: nn.Module) -> nn.Module:
    """FSDP2 in place (the process group must exist): one unit per decoder layer plus the root (embeddings, final
    norm, head: tied weights stay in one unit), every parameter cut on dim 0 across the ranks, trainable or not.
    A unit's parameters are gathered whole before its forward, freed after it (reshard_after_forward, the default
    for the layers; the root keeps them until backward) and gathered again for its backward; gradients are
    reduce-scattered as sums. A QLoRA base's NF4 codes and absmaxes are first made frozen Parameters
    (`quant.linear.shardable_nf4_`), so each rank holds 1/N of them between its layers' uses; its LoRA adapters are
    sharded as the other trainable parameters are, and only they have gradients and optimizer state."""
    shardable_nf4_(model)
    # The mesh on the model's own device: left to itself, FSDP2 meshes on the machine's accelerator, so gloo ranks
    # training on the CPU of a host with a GPU would each claim a CUDA device.
    device = next(model.parameters()).device
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    for unit in model.modules():  # each unit reduces its own gradients: every one sums, as DDP's hook does
        if isinstance(unit, FSDPModule):
            unit.set_gradient_divide_factor(1.0)
            unit.set_force_sum_reduction_for_comms(True)  # a plain SUM collective (gloo has no scaled sum)
    return model


def nf4_bytes_held(model: nn.Module) -> tuple[int, int]:
    """(held here, in all): bytes of the NF4 codes and absmaxes (`quant.linear.SHARDABLE`) this rank holds between
    layers, and their whole size. Under FSDP2 the first is about the second / N; otherwise they are equal."""
    held = whole = 0
    for layer in model.modules():
        if isinstance(layer, NF4Linear):
            for name in SHARDABLE:
                tensor = getattr(layer, name)
                held += local(tensor).numel() * tensor.element_size()
                whole += tensor.numel() * tensor.element_size()
    return held, whole


@contextlib.contextmanager
def gradient_sync(model: nn.Module, sync: bool) -> Iterator[None]:
    """Accumulate this backward's gradients locally (sync False) or exchange them across ranks (sync True: the
    step's last micro-batch)."""
    if isinstance(model, DistributedDataParallel) and not sync:
        with model.no_sync():
            yield
        return
    if isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(sync)
    yield


def replicated(value: torch.Tensor) -> torch.Tensor:
    """A plain tensor of a DTensor result (FSDP2's gradient norm), the same on every rank."""
    return value.full_tensor() if isinstance(value, DTensor) else value


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's part of a sharded tensor (the tensor itself when it is not sharded)."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor
