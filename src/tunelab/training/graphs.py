"""A micro-batch's forward and backward as one CUDA graph: at small micro-batches the GPU waits for the host.

A 7B QLoRA step at micro-batch 1 x 2048 issues ~4,900 kernel launches and ~32,000 aten operators; the host needs
190-240 ms for them while the GPU needs 115-155 ms (BENCHMARKS.md). Captured once per batch shape, the same work is
one `replay()`: the host copies the batch into the graph's input tensors and launches the graph.

How it stays the step it replaces:
- The graph computes loss_sum and backpropagates loss_sum * scale, scale being a 0-dim input tensor filled with
  1 / (the step's units) before each replay: the division of `training/step.py` with the number kept out of the
  graph (a Python number would be frozen into it).
- Gradients accumulate into fixed tensors. Capture happens with every trainable parameter's `.grad` set to a
  persistent zero tensor (`grad_buffers`), so the captured backward adds into them in place; the step zeroes them in
  place (`zero_grad(set_to_none=False)`), never replaces them. A capture that happens mid-step (a new batch shape)
  stashes the gradients accumulated so far and puts them back after.
- Before capture, WARMUP eager passes on a side stream let lazily sized buffers (the slots' scratch, cuBLAS
  workspaces) reach their size outside the graph's memory pool, as PyTorch's capture rules require.
- What a graph cannot hold is refused before training (`unsupported_reason`): host syncs inside the step (activation
  offload's copies to pinned memory and their events), random numbers (dropout), packed rows (their document count
  changes the attention call's arguments), several ranks.
- Padded batches change width from one micro-batch to the next; each width would be a graph of its own. `pad_to`
  widens a batch with padding (labels -100: no loss, and causal attention keeps earlier positions unchanged) to the
  next multiple of `bucket_width(max_length)`, so a run captures at most MAX_GRAPHS graphs. They share one memory
  pool: each graph's intermediates are dead once it has run, and its outputs are read before the next replay.

The same kernels run in the same order with the same inputs, so the losses equal eager ones bit for bit (a CUDA test).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from tunelab.config import AUTO, RunConfig
from tunelab.errors import ConfigError
from tunelab.models.streams import warmup_stream

WARMUP = 2  # eager passes before a capture (PyTorch's whole-network capture example uses a few)
MAX_GRAPHS = 8  # batch shapes captured at most (later shapes run eagerly); the graphs share one memory pool

Batch = dict[str, Any]


def unsupported_reason(cfg: RunConfig, impl: str, device: torch.device, task: str, world: int) -> str | None:
    """Why this run cannot replay its micro-batches from CUDA graphs, or None when it can."""
    t = cfg.train
    if device.type != "cuda":
        return "they need a CUDA device"
    if impl != "fast":
        return "they need the fast path (model.impl)"
    if task != "sft":
        return f"task {task} is not captured yet (sft only)"
    if world > 1:
        return "several processes synchronise inside backward"
    if cfg.data.packing:
        return "packed rows change the attention call per batch (data.packing)"
    if cfg.method.dropout > 0:
        return "LoRA dropout draws random numbers (method.dropout)"
    if t.neftune_alpha > 0:
        return "NEFTune draws random numbers (train.neftune_alpha)"
    if t.fp8:
        return "FP8 products allocate their operands at each use (train.fp8)"
    if t.checkpointing is True and t.offload_activations is True:
        return "activation offload waits on host copies (train.offload_activations)"
    return None


def use_graphs(cfg: RunConfig, impl: str, device: torch.device, task: str, world: int) -> tuple[bool, str]:
    """(on, why) for option train.cuda_graphs, after the planner has settled checkpointing and offload. An explicit
    true that cannot apply is a ConfigError naming the reason."""
    wanted = cfg.train.cuda_graphs
    if wanted is False:
        return False, "off (train.cuda_graphs: false)"
    reason = unsupported_reason(cfg, impl, device, task, world)
    if reason is None:
        return True, "on: each micro-batch's forward and backward is replayed from a CUDA graph"
    if wanted == AUTO:
        return False, f"off: {reason}"
    raise ConfigError(f"option 'train.cuda_graphs' is true, but {reason}. Set it to auto or false.")


def bucket_width(max_length: int) -> int:
    """Widths are padded up to multiples of this: at most MAX_GRAPHS of them up to max_length, and multiples of 64."""
    return 64 * math.ceil(max_length / MAX_GRAPHS / 64)


def pad_to(batch: Batch, multiple: int, pad_id: int) -> Batch:
    """The sft batch widened with right padding to the next multiple of `multiple` tokens: input_ids pad_id,
    labels -100, attention_mask 0, position_ids 0. The loss and every real position's output are unchanged."""
    width = batch["input_ids"].shape[1]
    extra = -width % multiple
    if not extra:
        return batch
    fill = {"input_ids": pad_id, "labels": -100, "attention_mask": 0, "position_ids": 0}
    out = dict(batch)
    for name, value in fill.items():
        if name in batch:
            tensor = batch[name]
            out[name] = torch.cat([tensor, tensor.new_full((tensor.shape[0], extra), value)], dim=1)
    return out


def _detached(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, dict):
        return {k: _detached(v) for k, v in value.items()}
    return value


def _shape_key(batch: Batch) -> tuple:
    return tuple((k, tuple(v.shape), v.dtype) for k, v in sorted(batch.items()) if isinstance(v, torch.Tensor))


class CapturedLoss:
    """`loss_fn(model, batch) -> (loss_sum, metric_sums)` and its backward, replayed from a CUDA graph per batch shape.

    `__call__(model, batch, scale)` returns what loss_fn returned (tensors owned by the graph: read them before the
    next call) after backpropagating loss_sum * scale into the parameters' gradients."""

    def __init__(self, loss_fn: Callable[[torch.nn.Module, Batch], tuple[torch.Tensor, dict]], params: list):
        self.loss_fn = loss_fn
        self.params = [p for p in params if p.requires_grad]
        self.grad_buffers = [torch.zeros_like(p) for p in self.params]
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, Batch, torch.Tensor, Any]] = {}
        self.pool = None  # the first graph's memory pool, shared by the others

    def attach_grads(self) -> None:
        """Point every `.grad` at its persistent buffer: after an optimizer's zero_grad(set_to_none=True) the buffers
        are zeroed; a gradient computed elsewhere meanwhile is copied in."""
        stale = []
        for p, g in zip(self.params, self.grad_buffers):
            if p.grad is g:
                continue
            if p.grad is None:
                stale.append(g)
            else:
                g.copy_(p.grad)
            p.grad = g
        if stale:
            torch._foreach_zero_(stale)

    def zero_grads(self) -> None:
        torch._foreach_zero_(self.grad_buffers)

    def __call__(self, model: torch.nn.Module, batch: Batch, scale: float):
        self.attach_grads()
        key = _shape_key(batch)
        if key not in self.graphs:
            if len(self.graphs) >= MAX_GRAPHS:  # e.g. a short last batch in every width: that one runs eagerly
                loss_sum, metric_sums = self.loss_fn(model, batch)
                (loss_sum * scale).backward()
                return loss_sum.detach(), _detached(metric_sums)
            self.graphs[key] = self._capture(model, batch)
        graph, inputs, scale_t, outputs = self.graphs[key]
        for name, value in batch.items():
            if isinstance(value, torch.Tensor):
                inputs[name].copy_(value, non_blocking=True)
        scale_t.fill_(scale)
        graph.replay()
        return outputs

    def _eager_pass(self, model: torch.nn.Module, inputs: Batch, scale_t: torch.Tensor) -> None:
        """One warm-up pass. Nothing of it outlives the call: a loss kept alive would keep its autograd graph, whose
        AccumulateGrad nodes (created on this side stream) the capture would then reuse, and the captured backward
        would wait on the side stream's uncaptured work (an error where an adapter's gradient skips them,
        `kernels.lora.accumulate_into_grads`; a needless wait elsewhere)."""
        loss_sum, _ = self.loss_fn(model, inputs)
        (loss_sum * scale_t).backward()

    def _capture(self, model: torch.nn.Module, batch: Batch):
        inputs = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        scale_t = torch.zeros((), dtype=torch.float32, device=self.params[0].device)
        stash = [g.clone() for g in self.grad_buffers]  # what earlier micro-batches of this step accumulated
        side = warmup_stream(self.params[0].device)  # one for every capture: see models/streams.py
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP):
                self._eager_pass(model, inputs, scale_t)
        torch.cuda.current_stream().wait_stream(side)
        self.zero_grads()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            loss_sum, metric_sums = self.loss_fn(model, inputs)
            (loss_sum * scale_t).backward()
        self.pool = self.pool or graph.pool()
        for g, s in zip(self.grad_buffers, stash):
            g.copy_(s)
        # detached: the outputs must not keep the captured autograd graph (and its AccumulateGrad nodes) alive
        return graph, inputs, scale_t, (loss_sum.detach(), _detached(metric_sums))
