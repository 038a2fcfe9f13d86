"""LoRA: a frozen linear layer plus a trainable low-rank update, y = x W^T + b + (alpha / r) * dropout(x) A^T B^T.

`LoRALinear` is a leaf module we construct around an existing `nn.Linear` (or NF4 linear); `attach_lora` swaps it in
by name on any model, ours or transformers', so the same code serves the fast and the generic path. Parameter names
(`<path>.lora_A.weight`, `<path>.lora_B.weight`) follow PEFT's so adapters round-trip through its file format.

The projection itself is computed in one of two places: `kernels.reference.lora_linear` (plain autograd: a 16-bit
base on the CPU) or the fused node `kernels.lora.lora_linear` (on CUDA, and for an NF4 base everywhere). Folding an
adapter into its base is `merged_linear`, used by `merge_lora` and by the export.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from tunelab.errors import ConfigError
from tunelab.kernels import reference
from tunelab.kernels.lora import lora_linear as fused_lora_linear
from tunelab.peft.group import GroupWeights
from tunelab.quant.linear import NF4Linear


class LoRALinear(nn.Module):
    takes_residual = True  # forward(x, residual=...) adds it inside the GEMM (see forward)

    def __init__(
        self, base: nn.Module, r: int, alpha: float, dropout: float = 0.0, group_weights: GroupWeights | None = None
    ):
        super().__init__()
        self.base_layer = base
        self.in_features, self.out_features = base.in_features, base.out_features
        self.r, self.alpha = r, alpha
        self.scale = alpha / r
        device = base.weight_packed.device if isinstance(base, NF4Linear) else base.weight.device
        self.lora_A = nn.Linear(self.in_features, r, bias=False, device=device, dtype=torch.float32)
        self.lora_B = nn.Linear(r, self.out_features, bias=False, device=device, dtype=torch.float32)
        # Declares the dropout on the adapter's input (and so, to the model, that training draws random numbers);
        # the LoRA ops apply it with their own keep-mask, drawn alike on every path.
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.enabled = True
        # Where grouped projections (`peft.group`) build their stacked weight: shared by all layers of a model.
        self.group_weights = group_weights or GroupWeights()
        # PEFT's default init: A Kaiming-uniform, B zero, so training starts from the base model exactly.
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        for p in self.base_layer.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor, output: bool = True, residual: torch.Tensor | None = None) -> torch.Tensor:
        """output=False: see `grad_only`. residual (..., out): returned added to the result; the fused node adds it
        inside the base GEMM (no separate pass over the output)."""
        base = self.base_layer
        if not self.enabled:
            y = base(x)
            return y if residual is None else residual + y
        a, b = self.lora_A.weight, self.lora_B.weight
        p = self.dropout.p if isinstance(self.dropout, nn.Dropout) else 0.0
        if type(base) is NF4Linear:  # QLoRA, CPU and CUDA: W dequantized in forward and again in backward, never saved
            weight = base.frozen_weight()
            return fused_lora_linear(x, weight, base.bias, a, b, self.scale, p, self.training, output, residual)
        if x.is_cuda and type(base) is nn.Linear:  # one node that saves only x and the (N, r) product
            return fused_lora_linear(x, base.weight, base.bias, a, b, self.scale, p, self.training, output, residual)
        y = reference.lora_linear(x, base.weight, base.bias, a, b, self.scale, p, self.training)
        return y if residual is None else residual + y

    def grad_only(self, x: torch.Tensor) -> torch.Tensor:
        """forward's autograd node, with the result left uncomputed where the fused node allows (its values are then
        undefined): checkpointing's recomputation of a layer's last projection, whose output backward never reads."""
        return self.forward(x, output=False)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, r={self.r}, alpha={self.alpha}"


def linear_names(model: nn.Module, targets: list[str]) -> list[str]:
    """Qualified names of the linear layers that `targets` selects; "all-linear" means every decoder linear but the head."""
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    linears = [
        name
        for name, m in model.named_modules()
        if isinstance(m, (nn.Linear, NF4Linear)) and m is not output and not isinstance(m, LoRALinear)
    ]
    linears = [n for n in linears if ".lora_" not in n and not n.endswith("lm_head")]
    if "all-linear" in targets:
        chosen = linears
    else:
        chosen = [n for n in linears if n.rsplit(".", 1)[-1] in targets]
        found = {n.rsplit(".", 1)[-1] for n in chosen}
        missing = [t for t in targets if t not in found]
        if missing:
            available = sorted({n.rsplit(".", 1)[-1] for n in linears})
            raise ConfigError(
                f"option 'method.target_modules': {', '.join(missing)} matched no linear layer of this model; "
                f"available: {', '.join(available)}, or all-linear."
            )
    if not chosen:
        raise ConfigError("option 'method.target_modules' selected no linear layer of this model.")
    return chosen


def attach_lora(model: nn.Module, targets: list[str], r: int, alpha: float, dropout: float = 0.0) -> list[str]:
    """Freeze the model and replace each selected nn.Linear by a LoRALinear around it. Returns the replaced names."""
    for p in model.parameters():
        p.requires_grad_(False)
    names = linear_names(model, targets)
    group_weights = GroupWeights()  # one stacked-weight buffer for the whole model
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(getattr(parent, child), r, alpha, dropout, group_weights))
    return names


def lora_modules(model: nn.Module) -> Iterator[tuple[str, LoRALinear]]:
    for name, m in model.named_modules():
        if isinstance(m, LoRALinear):
            yield name, m


@contextmanager
def adapters_disabled(model: nn.Module):
    """Run the base model: every LoRA update is skipped inside the block."""
    layers = [m for _, m in lora_modules(model)]
    for m in layers:
        m.enabled = False
    try:
        yield model
    finally:
        for m in layers:
            m.enabled = True


def _float_weight(base: nn.Module) -> torch.Tensor:
    """A frozen base layer's (out, in) weight in fp32: an NF4 one dequantized, exactly as training saw it."""
    if isinstance(base, NF4Linear):
        return base.dequantized(torch.float32)
    return base.weight.detach().float()


@torch.no_grad()
def merged_linear(layer: LoRALinear, dtype: torch.dtype | None = None) -> nn.Linear:
    """A frozen nn.Linear holding W + scale * B A, summed in fp32 and rounded once to `dtype` (default: the base
    weight's dtype; for an NF4 base, the dtype it was quantized from), with the base's bias in that dtype."""
    base = layer.base_layer
    w = _float_weight(base) + layer.scale * (layer.lora_B.weight.float() @ layer.lora_A.weight.float())  # (out, in)
    base_dtype = base.weight_dtype if isinstance(base, NF4Linear) else base.weight.dtype
    out_dtype = dtype or (base_dtype if base_dtype.is_floating_point else torch.float32)
    merged = nn.utils.skip_init(
        nn.Linear, layer.in_features, layer.out_features, bias=base.bias is not None, device=w.device, dtype=out_dtype
    )
    merged.weight.copy_(w)
    if base.bias is not None:
        merged.bias.copy_(base.bias)
    return merged.requires_grad_(False)


def merge_lora(model: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
    """Replace every LoRALinear by its `merged_linear` (in `dtype`, default each base's). In place; returns the model."""
    for name, m in list(lora_modules(model)):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, merged_linear(m, dtype))
    return model
