"""Projection slots: where the decoder calls its linear layers, and the one place where adapters or a quantized base
may change how they run.

A decoder module keeps its projections as ordinary children under Hugging Face's names (`q_proj`, ..., `down_proj`),
so checkpoints, LoRA target names and PEFT adapter keys are what they would be without slots. It calls them only
through its slots, plain attributes that are not modules (no parameters, nothing in the state dict), listed in the
class attribute `projection_slots`:

- `ProjectionGroup` (`qkv` of attention, `gate_up` of a gated MLP): the projections that read one input. By default
  each is called on x in turn.
- `Projection` (`o` and `down`): the last projection of a half-block, whose result joins the residual stream and whose
  output checkpointing's recomputation never reads. By default residual + proj(x), and with output=False F.linear's
  autograd node without its GEMM for a plain nn.Linear (`linear_grad_only`).

A slot looks its projections up in its owner's table of children at each call, so a projection swapped in by name
(a quantized layer, an adapter) is the one it calls. `tunelab.peft` replaces the default slots with its own
implementations (grouped adapters, fused last projections); docs/architecture.md ("The fast path") says what each
piece promises. The decoder's side of the contract:

- `spare_columns(x)`, asked before the norm that feeds a group: the group wants that many columns of room after each
  row of its input. The norm writes its output as the first columns of a wider buffer
  (`ops.rms_norm(..., spare_columns=room)`) and the decoder hands `room` to the group with that output: its promise
  that nothing else reads or writes those columns.
- `scratch(x)`: the (buffer, elements) pairs a slot will fill for an input like x; `reserve_scratch` grows each
  buffer once, to its largest user, before a step's activations are allocated.
- `PassClock`: the model ticks it at the top of every forward. Weights change only between passes, so a slot that
  keeps a copy of weights which the optimizer updates in place (moving no version counter) rebuilds it in a new
  pass and reuses it within one (forward, backward and recomputation).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Protocol

import torch
from torch import nn


class PassClock:
    """Counts a model's forward passes (`now`); the model calls `tick` at the top of each one."""

    def __init__(self) -> None:
        self.now = 0

    def tick(self) -> None:
        self.now += 1


class Scratch(Protocol):
    """A buffer that a slot fills with weights (a dequantized or stacked matrix), grown on demand."""

    def reserve(self, numel: int, dtype: torch.dtype, device: torch.device) -> None: ...


class _GradOnlyLinear(torch.autograd.Function):
    """F.linear's autograd node without its result: saves x and W, returns an uninitialised (..., out) tensor."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return x.new_empty(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        g = dy.reshape(-1, dy.shape[-1])  # (N, out)
        dx = (dy @ weight.to(dy.dtype)) if need_x else None  # (..., in)
        dw = (g.T @ x.reshape(-1, x.shape[-1]).to(g.dtype)).to(weight.dtype) if need_w else None  # (out, in)
        db = g.sum(0) if need_b and ctx.has_bias else None
        return dx, dw, db


def linear_grad_only(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear(x, weight, bias) for backward only: the gradients are F.linear's, the returned values undefined."""
    return _GradOnlyLinear.apply(x, weight, bias)


class ProjectionGroup:
    """Slot for the projections `names` of one module that all read the same input; by default run one by one."""

    def __init__(self, children: Mapping[str, nn.Module], names: tuple[str, ...], clock: PassClock):
        self.children = children  # the owner's own table of children (nn.Module._modules), read at each call
        self.names = names
        self.clock = clock

    def projections(self) -> tuple[nn.Module, ...]:
        return tuple(self.children[name] for name in self.names)

    def spare_columns(self, x: torch.Tensor) -> int:
        """Columns of room the group wants after each row of its input, for an input like x (the norm's input)."""
        return 0

    def __call__(self, x: torch.Tensor, room: int = 0) -> tuple[torch.Tensor, ...]:
        """Each projection of x, (..., out_i). room: the spare columns after x's rows (see the module docstring)."""
        children = self.children
        return tuple(children[name](x) for name in self.names)

    def scratch(self, x: torch.Tensor) -> list[tuple[Scratch, int]]:
        """(buffer, elements) that a call on an input like x will fill."""
        return []

    def as_default(self) -> ProjectionGroup:
        """This slot with the default implementation."""
        return ProjectionGroup(self.children, self.names, self.clock)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(self.names)})"


class Projection:
    """Slot for a half-block's last projection `name`: its result is added to the residual stream."""

    def __init__(self, children: Mapping[str, nn.Module], name: str, clock: PassClock):
        self.children = children
        self.name = name
        self.clock = clock

    def __call__(self, x: torch.Tensor, residual: torch.Tensor | None = None, output: bool = True) -> torch.Tensor:
        """residual + proj(x) (proj(x) without a residual). output=False: proj(x)'s autograd node for backward, its
        GEMM skipped where the layer allows (values undefined, residual ignored)."""
        proj = self.children[self.name]
        if not output:
            if type(proj) is nn.Linear:
                return linear_grad_only(x, proj.weight, proj.bias)
            return proj(x)
        y = proj(x)
        return y if residual is None else residual + y

    def scratch(self, x: torch.Tensor) -> list[tuple[Scratch, int]]:
        """(buffer, elements) that a call on an input like x will fill."""
        return []

    def as_default(self) -> Projection:
        """This slot with the default implementation."""
        return Projection(self.children, self.name, self.clock)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"


def projection_slots(model: nn.Module) -> Iterator[tuple[nn.Module, str]]:
    """(module, attribute) of every slot in `model`: the attributes its modules' classes list in `projection_slots`."""
    for module in model.modules():
        for name in getattr(type(module), "projection_slots", ()):
            yield module, name


def reserve_scratch(slots: Iterable[ProjectionGroup | Projection], x: torch.Tensor) -> None:
    """Grow every buffer that `slots` fill for an input like x to its largest user, in x's dtype and on its device.

    Called before a step allocates anything else: buffers grown mid-step, first for the attention and then for the
    MLP, leave the smaller blocks as holes in the allocator's segments (0.1 GiB of peak reserved memory at 7B,
    micro-batch 1)."""
    largest: dict[int, tuple[Scratch, int]] = {}  # id(buffer) -> (buffer, elements)
    for slot in slots:
        for buffer, numel in slot.scratch(x):
            if numel > largest.get(id(buffer), (buffer, 0))[1]:
                largest[id(buffer)] = (buffer, numel)
    for buffer, numel in largest.values():
        buffer.reserve(numel, x.dtype, x.device)
