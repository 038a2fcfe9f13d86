"""The LoRA layer: a frozen linear layer plus a trainable low-rank update, y = x W^T + b + (alpha/r) dropout(x) A^T B^T.

`LoRALinear` is a leaf module constructed around an existing `nn.Linear` or `NF4Linear` (`peft.lora.attach_lora` swaps
it in by name on any model, ours or transformers'). Parameter names (`<path>.lora_A.weight`, `<path>.lora_B.weight`)
follow PEFT's so adapters round-trip through its file format.

The projection itself is computed in one of two places: `kernels.reference.lora_linear` (plain autograd: a 16-bit
base on the CPU) or the fused node `kernels.lora.lora_linear` (on CUDA, and for an NF4 base everywhere); several
projections of one input, in `kernels.lora.lora_group` (`peft.group`). Folding an adapter into its base is
`merged_linear`, the one merge: `peft.lora.merge_lora` and the export use it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from tunelab.kernels import reference
from tunelab.kernels.lora import lora_linear as fused_lora_linear
from tunelab.quant.linear import NF4Linear


class LoRALinear(nn.Module):
    """y = base(x) + (alpha / r) * dropout(x) A^T B^T, over a frozen `base` (nn.Linear or NF4Linear); A, B in fp32."""

    def __init__(self, base: nn.Module, r: int, alpha: float, dropout: float = 0.0, rslora: bool = False):
        super().__init__()
        self.base_layer = base
        self.in_features, self.out_features = base.in_features, base.out_features
        self.r, self.alpha, self.rslora = r, alpha, rslora
        self.scale = alpha / math.sqrt(r) if rslora else alpha / r  # rsLoRA (Kalajdzievski 2023): alpha / sqrt(r)
        device = base.weight_packed.device if isinstance(base, NF4Linear) else base.weight.device
        self.lora_A = nn.Linear(self.in_features, r, bias=False, device=device, dtype=torch.float32)
        self.lora_B = nn.Linear(r, self.out_features, bias=False, device=device, dtype=torch.float32)
        # Declares the dropout on the adapter's input (and so, to the model, that training draws random numbers);
        # the LoRA ops apply it with their own keep-mask, drawn alike on every path.
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.enabled = True
        # The start A0 (r, in), B0 (out, r) of method.init pissa or olora (`peft.weight_init`; None otherwise): the
        # base then holds W - scale * B0 A0, so the adapter switched off adds scale * B0 A0 back: the base model.
        self.register_buffer("initial_A", None, persistent=False)
        self.register_buffer("initial_B", None, persistent=False)
        # PEFT's default init: A Kaiming-uniform, B zero, so training starts from the base model exactly.
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        for p in self.base_layer.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor, output: bool = True, residual: torch.Tensor | None = None) -> torch.Tensor:
        """output=False: see `grad_only`. residual (..., out): returned added to the result; the fused node adds it
        inside the base GEMM (no separate pass over the output)."""
        base = self.base_layer
        a, b = self.lora_A.weight, self.lora_B.weight
        p = self.dropout.p if isinstance(self.dropout, nn.Dropout) else 0.0
        if not self.enabled:
            if self.initial_A is None:
                y = base(x)
                return y if residual is None else residual + y
            a, b, p = self.initial_A, self.initial_B, 0.0  # the residual base plus the part it gave up
        if type(base) is NF4Linear:  # QLoRA, CPU and CUDA: W dequantized in forward and again in backward, never saved
            weight = base.fp8 or base.frozen_weight()  # FP8 products (`quant.fp8`) when `use_fp8_` set them
            return fused_lora_linear(x, weight, base.bias, a, b, self.scale, p, self.training, output, residual)
        if x.is_cuda and type(base) is nn.Linear:  # one node that saves only x and the (N, r) product
            return fused_lora_linear(x, base.weight, base.bias, a, b, self.scale, p, self.training, output, residual)
        y = reference.lora_linear(x, base.weight, base.bias, a, b, self.scale, p, self.training)
        return y if residual is None else residual + y

    def grad_only(self, x: torch.Tensor) -> torch.Tensor:
        """forward's autograd node, with the result left uncomputed where the fused node allows (its values are then
        undefined): checkpointing's recomputation of a layer's last projection, whose output backward never reads."""
        return self.forward(x, output=False)

    def merged_weight(self) -> torch.Tensor:
        """The adapted weight W + scale * B A, (out, in) fp32 (what `merged_linear` rounds once)."""
        return float_weight(self.base_layer) + self.scale * (self.lora_B.weight.float() @ self.lora_A.weight.float())

    def extra_repr(self) -> str:
        rs = ", rslora" if self.rslora else ""
        return f"in={self.in_features}, out={self.out_features}, r={self.r}, alpha={self.alpha}{rs}"


def float_weight(base: nn.Module) -> torch.Tensor:
    """A frozen base layer's (out, in) weight in fp32: an NF4 one dequantized, exactly as training saw it."""
    if isinstance(base, NF4Linear):
        return base.dequantized(torch.float32)
    return base.weight.detach().float()


@torch.no_grad()
def merged_linear(layer: LoRALinear, dtype: torch.dtype | None = None) -> nn.Linear:
    """A frozen nn.Linear holding the layer's adapted weight (`merged_weight`: W + scale * B A for LoRA), summed in fp32 and rounded once to `dtype` (default: the base
    weight's dtype; for an NF4 base, the dtype it was quantized from), with the base's bias in that dtype."""
    base = layer.base_layer
    w = layer.merged_weight()  # (out, in)
    base_dtype = base.weight_dtype if isinstance(base, NF4Linear) else base.weight.dtype
    out_dtype = dtype or (base_dtype if base_dtype.is_floating_point else torch.float32)
    merged = nn.utils.skip_init(
        nn.Linear, layer.in_features, layer.out_features, bias=base.bias is not None, device=w.device, dtype=out_dtype
    )
    merged.weight.copy_(w)
    if base.bias is not None:
        merged.bias.copy_(base.bias)
    return merged.requires_grad_(False)
