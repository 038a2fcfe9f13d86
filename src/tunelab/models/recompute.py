"""Activation checkpointing per decoder layer: keep the layer's input, recompute in backward only what backward needs.

Forward runs the layer without recording anything and keeps its input, on the GPU or parked in pinned host memory
(`offload.HostActivations`). Backward re-runs the layer under the RNG state of its forward (dropout draws the same
mask) through the layer's `backward_through(x, grad_out, *args)`, which recomputes and backpropagates in one go and
so can skip what backward never reads: a pre-norm block's output is h + mlp(norm(h)), and neither it nor the MLP's
down projection is needed, which saves that projection's GEMM (a fifth of a Llama layer's matmul FLOPs, a fifteenth
of the step's), and the token-wise MLP can be backpropagated in chunks. A layer without `backward_through` is
recomputed whole and backpropagated from its output.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from tunelab.models.offload import HostActivations


@contextmanager
def _rng_of(state: tuple[torch.Tensor, torch.Tensor | None], device: torch.device):
    """Run the block under the CPU (and CUDA) RNG state captured by `_rng_state`, restoring the current one after."""
    cuda = [device] if state[1] is not None else []
    with torch.random.fork_rng(devices=cuda):
        torch.set_rng_state(state[0])
        if state[1] is not None:
            torch.cuda.set_rng_state(state[1], device)
        yield


def _rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


class _RecomputedLayer(torch.autograd.Function):
    @staticmethod
    def forward(ctx, layer: nn.Module, store: HostActivations | None, index: int, x_needs_grad: bool, x, *args):
        ctx.layer, ctx.store, ctx.index, ctx.args, ctx.x_needs_grad = layer, store, index, args, x_needs_grad
        ctx.rng = _rng_state(x.device)
        # With a store, a layer that can (`backward_mlp`, no random draws) also parks its midpoint h = x + attn(...),
        # so that backward needs neither o_proj's GEMM nor the residual add to rebuild it.
        ctx.mid = store is not None and store.with_mid and hasattr(layer, "backward_mlp") and not layer.draws_random()
        with torch.no_grad():
            if ctx.mid:
                out = layer(x, *args, keep_mid=lambda h: store.park((index, "h"), h))
            else:
                out = layer(x, *args)
        if store is None:
            ctx.save_for_backward(x)
        else:
            store.park((index, "x"), x)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        store, index = ctx.store, ctx.index
        if ctx.mid:
            return _RecomputedLayer._backward_from_mid(ctx, grad_out)
        if store is None:
            (x,) = ctx.saved_tensors
        else:
            x = store.take((index, "x"))
            store.fetch((index - 1, "x"))  # the next layer back starts coming home while this one is recomputed
        x = x.detach().requires_grad_(ctx.x_needs_grad)
        with _rng_of(ctx.rng, x.device), torch.enable_grad():
            backward_through = getattr(ctx.layer, "backward_through", None)
            if backward_through is not None:
                backward_through(x, grad_out, *ctx.args)
            else:
                torch.autograd.backward(ctx.layer(x, *ctx.args), grad_out)
        return (None, None, None, None, x.grad if ctx.x_needs_grad else None) + (None,) * len(ctx.args)

    @staticmethod
    def _backward_from_mid(ctx, grad_out: torch.Tensor):
        """The MLP from the parked h first (meanwhile x comes home), then attention from x. The two parts use the two
        landing buffers: h's is refilled with the next layer back's h as soon as this MLP's work is queued."""
        store, index, layer = ctx.store, ctx.index, ctx.layer
        h = store.take((index, "h"))
        store.fetch((index, "x"))
        with torch.enable_grad():  # no random draws (checked in forward): no RNG to replay
            grad_h = layer.backward_mlp(h, grad_out)
            del h
            store.fetch((index - 1, "h"))
            x = store.take((index, "x")).detach().requires_grad_(ctx.x_needs_grad)
            layer.backward_attention(x, grad_h, *ctx.args)
        return (None, None, None, None, x.grad if ctx.x_needs_grad else None) + (None,) * len(ctx.args)


def recomputed_layer(
    layer: nn.Module, store: HostActivations | None, index: int, x: torch.Tensor, *args
) -> torch.Tensor:
    """layer(x, *args), checkpointed: x kept (in `store` when given, else on its device) and the layer recomputed in
    backward. `args` must not need gradients; index orders the layers for the store's prefetch (index - 1 comes next)."""
    trains = any(p.requires_grad for p in layer.parameters())
    if not x.requires_grad and not trains:
        return layer(x, *args)  # nothing to backpropagate into: a frozen layer below every trained one
    # The node joins the graph only through an input that requires grad; the layer's parameters are not inputs.
    # The first layer's input comes from a frozen embedding: it is made to require grad here, and backward then
    # recomputes it without asking for its gradient.
    x_needs_grad = x.requires_grad
    if not x_needs_grad:
        x = x.detach().requires_grad_(True)
    return _RecomputedLayer.apply(layer, store, index, x_needs_grad, x, *args)
