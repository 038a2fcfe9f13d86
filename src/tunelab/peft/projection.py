"""peft's implementation of a decoder's last-projection slot (`models.slots.Projection`: o_proj, down_proj).

Over a LoRA layer it runs the fused node (`kernels.lora`), which adds the residual stream inside the base GEMM (its
C operand: no pass over the output) and, for checkpointing's recomputation (output=False), skips the base GEMM and
keeps only what backward needs. Over a bare NF4 layer (an adapter left off that projection) output=False skips the
dequantization and the GEMM. Anything else runs as the default slot runs it.
"""

from __future__ import annotations

import torch
from torch import nn

from tunelab.models.slots import Projection, Scratch
from tunelab.peft.lora_linear import LoRALinear
from tunelab.quant import fp8
from tunelab.quant.linear import NF4Linear


class FusedProjection(Projection):
    def __call__(self, x: torch.Tensor, residual: torch.Tensor | None = None, output: bool = True) -> torch.Tensor:
        proj = self.children[self.name]
        if isinstance(proj, LoRALinear):
            return proj(x, output=output, residual=residual)
        if type(proj) is NF4Linear:
            if not output:
                return proj.grad_only(x)
            y = proj(x)
            return y if residual is None else residual + y
        return super().__call__(x, residual, output)

    def scratch(self, x: torch.Tensor) -> list[tuple[Scratch, int]]:
        return workspace_need(self.children[self.name])


def workspace_need(projection: nn.Module) -> list[tuple[Scratch, int]]:
    """The buffer that a projection (an NF4Linear, or a LoRA layer over one) dequantizes its weight into, and the size
    of its weight: the NF4 workspace, or where its products run in FP8 (`use_fp8_`) the FP8 one (`quant.fp8.SCRATCH`)."""
    base = getattr(projection, "base_layer", projection)
    if isinstance(base, NF4Linear) and base.fp8 is not None:
        return [(fp8.SCRATCH, base.fp8.scratch_need())]
    if isinstance(base, NF4Linear) and base.workspace is not None:
        return [(base.workspace, base.out_features * base.in_features)]
    return []
