"""QLoRA's frozen base layer: `NF4Linear` holds a weight in NF4 (`quant.nf4`) as buffers and never keeps a 16-bit
copy. Its forward dequantizes into a scratch buffer (`quant.nf4_ops.DequantWorkspace`, shared by all layers of a
model) and runs one cuBLAS GEMM; its autograd node dequantizes again in backward instead of saving the weight, and so
does the fused LoRA node (`kernels.lora`) over an NF4 base, given the weight as a function (`frozen_weight`).
`quantize_model_` and `materialize_quantized_` put such layers into any model, one layer at a time.

FSDP2 shards parameters, not buffers: `shardable_nf4_` re-registers the packed codes and both absmax levels of every
layer as frozen 1-D Parameters, which `fully_shard` cuts on dim 0 like any weight (uint8 and fp32 side by side: its
all-gather sends mixed dtypes as bytes). Inside the layer's forward and backward they are the gathered whole tensors,
so the dequantization (reference or Triton) reads the format unchanged. The offset (a 0-dim tensor, which FSDP2
refuses to shard) and the code tables (1 KiB) stay replicated buffers.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from tunelab.errors import ConfigError
from tunelab.quant.fp8 import FP8Base, fp8_linear, misaligned
from tunelab.quant.nf4 import NF4Weight, dequantize_nf4
from tunelab.quant.nf4_ops import DequantWorkspace, dequantize, quantize_nf4


class NF4LinearFunction(torch.autograd.Function):
    """y = x W^T + b with W dequantized from q; saves nothing but references to q (frozen): dx = dy W."""

    @staticmethod
    def forward(ctx, x, bias, q, workspace, output):
        ctx.q, ctx.workspace = q, workspace
        ctx.bias_dtype = None if bias is None else bias.dtype
        if not output:  # recomputation for backward only: the result is never read
            return x.new_empty(*x.shape[:-1], q.shape[0])
        weight = dequantize(q, x.dtype, workspace)  # (out, in)
        return F.linear(x, weight, None if bias is None else bias.to(x.dtype))

    @staticmethod
    def backward(ctx, dy):
        dx = dbias = None
        if ctx.needs_input_grad[0]:
            dx = dy @ dequantize(ctx.q, dy.dtype, ctx.workspace)  # (..., in)
        if ctx.needs_input_grad[1]:
            dbias = dy.reshape(-1, dy.shape[-1]).sum(0, dtype=torch.float32).to(ctx.bias_dtype)
        return dx, dbias, None, None, None


def nf4_linear(
    x: torch.Tensor,
    q: NF4Weight,
    bias: torch.Tensor | None = None,
    workspace: DequantWorkspace | None = None,
    output: bool = True,
) -> torch.Tensor:
    """x @ W^T (+ b) with W = dequantize(q) in x's dtype. x (..., in) -> (..., out). The weight takes no gradient.
    output=False records the node for backward without computing the result (its values are undefined)."""
    return NF4LinearFunction.apply(x, bias, q, workspace, output)


# --------------------------------------------------------------------------------------------------------------------
# The module, and putting it into a model

_STATE = ("weight_packed", "weight_absmax_q", "weight_absmax2", "weight_offset")
_TABLES = ("nf4_code", "absmax_code")
SHARDABLE = _STATE[:3]  # 1-D, the bulk of the state: (ceil(n / 2),) uint8, (n / 64,) uint8, (n / 16384,) fp32


class NF4Linear(nn.Module):
    """A frozen linear layer whose weight is stored in NF4 (`NF4Weight`), with an optional frozen bias.

    Buffers (in the state dict): weight_packed, weight_absmax_q, weight_absmax2, weight_offset; the two code tables
    travel with `.to()` but are not saved. `as_parameters_` makes the first three frozen Parameters (for FSDP2),
    under the same names. There is no `.weight`: `dequantized()` builds the 16-bit matrix on request.
    `.to(dtype)`, `.half()` and the like move the quantization state but never cast it (a bf16 absmax2 would lose the
    format); they do cast the bias.
    """

    def __init__(self, q: NF4Weight, bias: torch.Tensor | None = None, workspace: DequantWorkspace | None = None):
        super().__init__()
        if len(q.shape) != 2:
            raise ValueError(f"NF4Linear: expected a 2-D weight, got shape {tuple(q.shape)}")
        self.out_features, self.in_features = q.shape
        self.weight_dtype = q.dtype
        self.register_buffer("weight_packed", q.packed)
        self.register_buffer("weight_absmax_q", q.absmax_q)
        self.register_buffer("weight_absmax2", q.absmax2)
        self.register_buffer("weight_offset", q.offset)
        self.register_buffer("nf4_code", q.code4, persistent=False)
        self.register_buffer("absmax_code", q.code8, persistent=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)
        self.workspace = workspace
        self.fp8: FP8Base | None = None  # set by `use_fp8_`: the products then run in FP8 (`quant.fp8`)

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, device: torch.device | str | None = None, workspace: DequantWorkspace | None = None
    ) -> NF4Linear:
        """Quantize `linear`'s weight (moved to `device` first, if given); the bias is kept as it is."""
        weight = linear.weight.detach()
        q = quantize_nf4(weight if device is None else weight.to(device))
        bias = None if linear.bias is None else linear.bias.detach().to(q.device)
        return cls(q, bias, workspace)

    def nf4(self) -> NF4Weight:
        """The quantized weight, as views of this module's buffers."""
        return NF4Weight(
            self.weight_packed, self.weight_absmax_q, self.weight_absmax2, self.weight_offset,
            torch.Size((self.out_features, self.in_features)), self.weight_dtype, self.nf4_code, self.absmax_code,
        )  # fmt: skip

    @torch.no_grad()
    def dequantized(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """A new (out, in) tensor holding the weight in `dtype` (default: the dtype it was quantized from)."""
        dtype = dtype or self.weight_dtype
        if self.weight_packed.is_cuda:
            return dequantize(self.nf4(), dtype)  # a fresh tensor: no workspace
        return dequantize_nf4(self.nf4(), dtype)

    def frozen_weight(self) -> Callable[[torch.dtype], torch.Tensor]:
        """A function dtype -> the (out, in) weight in that dtype, dequantized on each call (into the workspace on
        CUDA: valid until the workspace's next use), for a node that must not keep the weight (`kernels.lora`)."""
        return partial(dequantize, self.nf4(), workspace=self.workspace)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fp8 is not None:
            return fp8_linear(x, self.fp8, self.bias)
        return nf4_linear(x, self.nf4(), self.bias, self.workspace)

    def grad_only(self, x: torch.Tensor) -> torch.Tensor:
        """forward's autograd node without its result (uninitialised): for a recomputation whose output is unread."""
        if self.fp8 is not None:
            return fp8_linear(x, self.fp8, self.bias, output=False)
        return nf4_linear(x, self.nf4(), self.bias, self.workspace, output=False)

    def as_parameters_(self, workspace: DequantWorkspace | None = None) -> None:
        """Hold the `SHARDABLE` state as Parameters without gradient (same names, same tensors), so that FSDP2
        shards it; dequantize into `workspace` from now on (one with reuse=False under FSDP2, see DequantWorkspace)."""
        for name in SHARDABLE:
            if name in self._buffers:
                self.register_parameter(name, nn.Parameter(self._buffers.pop(name), requires_grad=False))
        self.workspace = workspace

    def _apply(self, fn, recurse=True):
        # Learn where fn sends tensors from an empty probe, move the quantization state there uncast, and let
        # nn.Module apply fn to everything else (the bias) as usual.
        probe = fn(torch.empty(0, device=self.weight_packed.device))
        kept = [(self._parameters if name in self._parameters else self._buffers, name) for name in _STATE + _TABLES]
        kept = [(owner, name, owner[name]) for owner, name in kept]
        for owner, name, _ in kept:
            owner[name] = None
        try:
            super()._apply(fn, recurse)
        finally:
            for owner, name, tensor in kept:
                moved = tensor.to(probe.device)
                if isinstance(tensor, nn.Parameter) and moved is not tensor:
                    moved = nn.Parameter(moved, requires_grad=False)
                owner[name] = moved
        return self

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, nf4"


def quantizable_names(model: nn.Module, skip: Iterable[str] = ("lm_head",)) -> list[str]:
    """Qualified names of the nn.Linear modules `quantize_model_` replaces: all but the output embeddings, the
    adapters (`.lora_`) and those whose last name part is in `skip`."""
    skip = set(skip)
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return [
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and m is not output and ".lora_" not in f".{name}" and _last(name) not in skip
    ]


def use_fp8_(model: nn.Module, on: bool = True) -> int:
    """Run the products of every NF4 layer of `model` in FP8 (`quant.fp8`), or in the layers' dtype again (on=False).
    Returns the number of layers switched. Every layer's widths must be multiples of 16 (torch._scaled_mm's rule):
    a ConfigError names the first that is not, before any layer changes."""
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, NF4Linear)]
    for name, layer in layers if on else ():
        if misaligned((layer.out_features, layer.in_features)):
            raise ConfigError(
                f"train.fp8: layer {name} is {layer.out_features} x {layer.in_features}; FP8 products need both "
                "widths divisible by 16. Set train.fp8: false for this model."
            )
    for _, layer in layers:
        layer.fp8 = FP8Base(layer.nf4) if on else None
    return len(layers)


def shardable_nf4_(model: nn.Module) -> int:
    """Prepare `model`'s NF4 layers for FSDP2's `fully_shard` (`NF4Linear.as_parameters_`), all dequantizing into
    one new workspace that never reuses what it holds (see DequantWorkspace). Returns the number of layers."""
    layers = [m for m in model.modules() if isinstance(m, NF4Linear)]
    workspace = DequantWorkspace(reuse=False)
    for layer in layers:
        layer.as_parameters_(workspace)
    return len(layers)


def _last(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _swap(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def quantize_model_(
    model: nn.Module,
    skip: Iterable[str] = ("lm_head",),
    device: torch.device | str | None = None,
    workspace: DequantWorkspace | None = None,
    keep: Collection[str] = (),
) -> list[str]:
    """Replace every nn.Linear of `model` (but the output head, `skip`, and the layers whose qualified names are in
    `keep`) by an NF4Linear, in place, one at a time.

    Each 16-bit weight is dropped as soon as it is quantized, so no more than one extra 16-bit weight exists at any
    moment. With `device`, each weight is moved there to be quantized and its NF4Linear lives there: a model loaded
    in CPU memory then reaches the GPU in NF4, layer by layer (move the remaining modules with `.to(device)` after).
    All the new layers share one DequantWorkspace (a new one unless given). Returns the replaced names.
    """
    names = [n for n in quantizable_names(model, skip) if n not in keep]
    workspace = workspace or DequantWorkspace()
    for name in names:
        linear = model.get_submodule(name)
        if linear.weight.is_meta:
            raise ConfigError(
                f"quantize_model_: {name} is on the meta device (no weights); use materialize_quantized_ to build a "
                "randomly initialised quantized model."
            )
        _swap(model, name, NF4Linear.from_linear(linear, device, workspace))
        del linear  # the module held the last reference to its 16-bit weight
    return names


@torch.no_grad()
def materialize_quantized_(
    model: nn.Module,
    device: torch.device | str,
    init_std: float = 0.02,
    skip: Iterable[str] = ("lm_head",),
    generator: torch.Generator | None = None,
    workspace: DequantWorkspace | None = None,
) -> list[str]:
    """Turn a model built on the meta device into a random-init model on `device` with NF4 linear layers.

    Layer by layer: each meta nn.Linear gets a N(0, init_std) weight in its dtype on `device` (zero bias), which is
    quantized and dropped at once, so a 70B model never exists in 16 bits. The other modules (embeddings, norms, the
    head) are then allocated and initialised by the model's `init_weights(std=init_std)` when it has one (ours:
    N(0, std) matrices, unit norms), else nn.Linear / nn.Embedding get N(0, init_std) and the rest stays
    uninitialised. Returns the quantized names.
    """
    names = [n for n in quantizable_names(model, skip) if model.get_submodule(n).weight.is_meta]
    workspace = workspace or DequantWorkspace()
    for name in names:
        meta = model.get_submodule(name)
        weight = torch.empty(meta.weight.shape, dtype=meta.weight.dtype, device=device)
        weight.normal_(0.0, init_std, generator=generator)
        bias = None if meta.bias is None else torch.zeros(meta.bias.shape, dtype=meta.bias.dtype, device=device)
        q = quantize_nf4(weight)
        del weight
        _swap(model, name, NF4Linear(q, bias, workspace))
    for module in model.modules():
        own = list(module.parameters(recurse=False)) + list(module.buffers(recurse=False))
        if any(t.is_meta for t in own):
            module.to_empty(device=device, recurse=False)
    if hasattr(model, "init_weights"):
        model.init_weights(std=init_std)
    else:
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                module.weight.normal_(0.0, init_std, generator=generator)
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()
    return names
