"""DoRA (Liu et al. 2024, "Weight-Decomposed Low-Rank Adaptation"): LoRA whose adapted weight is renormalised per
output row and scaled by a learned magnitude,

    W' = m * (W + s B A) / ||W + s B A||_row,   y = x W'^T + b = g * (x W^T + s (x A^T) B^T) + b,   g = m / n,

with n = ||W + s B A|| over each row (out,), treated as a constant in backward (the paper's section 4.3, as PEFT
does), and m (out,) initialised to ||W||_row so that a fresh layer is the base layer exactly (B = 0). Parameters are
PEFT's: `lora_A`, `lora_B` and `lora_magnitude_vector` (saved under that key, `use_dora: true`).

Two computations of y, like LoRA's (`peft.lora_linear`):
- over a 16-bit base on the CPU (`reference`), PEFT's own order of operations, y = base(x) + ((g - 1) (x W^T) +
  g (drop(x) A^T) B^T s), so that logits equal PEFT's bit for bit;
- elsewhere (CUDA, an NF4 base), y = g * L(x) + b with L the fused LoRA node without bias (`kernels.lora`), which
  saves only x and (N, r) for its own backward (NF4 dequantized again, never saved); the product by g saves L(x)
  (N, out), what m's gradient sum_N dy * L(x) / n needs.
Dropout touches only the adapter's input in both (PEFT applies it to the base term's input as well in training).

On our decoder, DoRA layers run one by one: a projection group (`peft.group.LoRAGroup`) forms only of plain LoRA
layers, since folding g into the stacked matrix would need L(x) for m's gradient, which the grouped node does not
keep. `FusedProjection` calls a DoRA layer through `forward` (the residual added after). The norm n costs one pass
over W per forward (in row blocks, no (out, in) temporary larger than a block).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from tunelab.kernels.lora import lora_linear as fused_lora_linear
from tunelab.kernels.reference import dropout_keep_mask
from tunelab.peft.lora_linear import LoRALinear, float_weight
from tunelab.quant.linear import NF4Linear

_ROWS = 2048  # rows of W per block of the norm: bounds its fp32 temporary at 2048 x in


class DoRALinear(LoRALinear):
    """LoRALinear with a magnitude per output row (module docstring)."""

    def __init__(self, base: nn.Module, r: int, alpha: float, dropout: float = 0.0, rslora: bool = False):
        super().__init__(base, r, alpha, dropout, rslora)
        self.lora_magnitude_vector = nn.Parameter(self.weight_norm())  # = ||W||_row while B = 0
        self.holds_norm = False  # inside `norms_held`: n computed once and kept
        self._held: tuple[tuple, torch.Tensor] | None = None  # (what n was computed from, n)

    @torch.no_grad()
    def weight_norm(self, weight: torch.Tensor | None = None) -> torch.Tensor:
        """n = ||W + s B A|| per output row, (out,) fp32, no gradient: W + s (B A) in fp32, then the 2-norm of each
        row, as PEFT computes it in fp32. `weight`: W in any float dtype (default: the base's, an NF4 one
        dequantized)."""
        base = self.base_layer
        w = weight if weight is not None else (base.dequantized() if isinstance(base, NF4Linear) else base.weight)
        a, b = self.lora_A.weight.float(), self.lora_B.weight.float()
        blocks = []
        for start in range(0, self.out_features, _ROWS):
            rows = w[start : start + _ROWS].float()
            blocks.append(torch.linalg.norm(rows + self.scale * (b[start : start + _ROWS] @ a), dim=1))
        return torch.cat(blocks)

    def current_norm(self) -> torch.Tensor:
        """n for this forward: computed now, or inside `norms_held` the one kept since the block's first forward
        (computed again should W, A or B have been replaced or written in place since)."""
        if not self.holds_norm:
            return self.weight_norm()
        base = self.base_layer
        frozen = base.weight_packed if isinstance(base, NF4Linear) else base.weight
        key = tuple((t.data_ptr(), t._version) for t in (frozen, self.lora_A.weight, self.lora_B.weight))
        if self._held is None or self._held[0] != key:
            self._held = (key, self.weight_norm())
        return self._held[1]

    def forward(self, x: torch.Tensor, output: bool = True, residual: torch.Tensor | None = None) -> torch.Tensor:
        """output: ignored (the result is always computed); residual (..., out): added to the result."""
        base = self.base_layer
        if not self.enabled:  # the base model: no magnitude (`peft.weight_init`'s part added back by LoRA's)
            return super().forward(x, output, residual)
        p = self.dropout.p if isinstance(self.dropout, nn.Dropout) else 0.0
        y = self.fused(x, p) if x.is_cuda or type(base) is NF4Linear else self.reference(x, p)
        return y if residual is None else residual + y

    def fused(self, x: torch.Tensor, p: float) -> torch.Tensor:
        """g * L(x) + b through the fused LoRA node (module docstring)."""
        base = self.base_layer
        weight = base.frozen_weight() if type(base) is NF4Linear else base.weight
        g = (self.lora_magnitude_vector / self.current_norm()).to(x.dtype)  # (out,): the gradient reaches m, not n
        y = g * fused_lora_linear(x, weight, None, self.lora_A.weight, self.lora_B.weight, self.scale, p, self.training)
        return y if base.bias is None else y + base.bias

    def reference(self, x: torch.Tensor, p: float) -> torch.Tensor:
        """PEFT's order of operations (module docstring), in plain autograd over a 16-bit base."""
        base, a, b = self.base_layer, self.lora_A.weight, self.lora_B.weight
        g = (self.lora_magnitude_vector / self.current_norm()).view(1, -1).to(x.dtype)
        y = F.linear(x, base.weight, base.bias)
        plain = y if base.bias is None else y - base.bias
        dropped = x
        if self.training and p > 0:
            dropped = x * dropout_keep_mask(x, p) / (1.0 - p)
        update = F.linear(F.linear(dropped, a.to(x.dtype)), b.to(x.dtype))  # (..., r) then (..., out)
        return y + ((g - 1) * plain + g * update * self.scale)

    def merged_weight(self) -> torch.Tensor:
        """W' = m * (W + s B A) / n, (out, in) fp32."""
        w = float_weight(self.base_layer)
        adapted = w + self.scale * (self.lora_B.weight.float() @ self.lora_A.weight.float())
        return (self.lora_magnitude_vector.detach().float() / self.weight_norm(w))[:, None] * adapted

    def extra_repr(self) -> str:
        return super().extra_repr() + ", dora"


@contextmanager
def norms_held(model: nn.Module) -> Iterator[nn.Module]:
    """Every DoRA layer of `model` computes its norm n once in the block and keeps it (module docstring): for sampling
    without gradients, where no weight changes between forwards. Kept norms are dropped when the block ends, so the
    next one (after an optimizer step) computes them afresh."""
    layers = [m for m in model.modules() if isinstance(m, DoRALinear)]
    for m in layers:
        m.holds_norm = True
    try:
        yield model
    finally:
        for m in layers:
            m.holds_norm, m._held = False, None
