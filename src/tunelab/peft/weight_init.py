"""Adapters that start from the weight they adapt (`method.init`): part of each weight W (out, in) moves into the
adapter, the frozen base keeps the rest, so the model starts as the base model but training moves chosen directions
of W instead of a random A and a zero B.

- PiSSA (Meng et al. 2024, "Principal Singular Values and Singular Vectors Adaptation", arXiv:2404.02948): with
  W = U S V^T and s the LoRA scale (alpha / r, or alpha / sqrt(r) with rsLoRA),
  B0 = U_r sqrt(S_r / s) (out, r), A0 = sqrt(S_r / s) V_r^T (r, in), so s B0 A0 is W's best rank-r approximation.
- OLoRA (Büyükakyüz 2024, arXiv:2406.01775): with W = Q R (Q (out, k) orthonormal columns, R (k, in) upper
  triangular, k = min(out, in)), B0 = Q_r, A0 = R_r, as PEFT sets them (s not divided out).

Either way the base becomes W_res = W - s B0 A0 (computed in fp32, rounded once to the base's dtype), so
W_res + s B0 A0 = W. DoRA's magnitude starts at the norm of W_res + s B0 A0, as PEFT computes it after the same
initialisation.

Saving (`peft.save`) gives an adapter over the original W, as PEFT's conversion does: after training, the layer is
W_res + s B A = W + s (B A - B0 A0) = W + s [B, B0] [A; -A0], a plain LoRA of rank 2r with the same scale, so
lora_alpha doubles (alpha / r), or grows by sqrt(2) (alpha / sqrt(r)). A DoRA magnitude carries over as it is, since
the adapted weight it normalises is the same matrix. A0 and B0 stay in the layer (`initial_A`, `initial_B`, not
saved in its state) for that conversion and for `adapters_disabled`, which must give the base model, W.

Resume recomputes A0, B0 from the base: the SVD (QR) of the same weights on the same device gives the same factors,
so a resumed run continues over the same residual bit for bit. (A sign flipped between two factorisations would
not matter either: W_res and the saved adapter depend on the product B0 A0 only.)

Refused (config/validate.py's `check_weight_init`): an NF4 base (quantized before the adapters attach), a continued
adapter or a staged run (their weights replace the start, or the next stage's base is not the residual), a
federation (its averaged adapters assume the default start), alpha 0 (an adapter scaled to nothing).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from tunelab.errors import ConfigError
from tunelab.peft.dora import DoRALinear
from tunelab.peft.lora_linear import LoRALinear

FROM_WEIGHT = ("pissa", "olora")  # method.init's choices besides default (A Kaiming-uniform, B zero: `LoRALinear`)


def _factors(w: torch.Tensor, r: int, scale: float, how: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(A0 (r, in), B0 (out, r)) of an fp32 weight w (out, in) (module docstring)."""
    if how == "pissa":
        u, sigma, vh = torch.linalg.svd(w, full_matrices=False)  # (out, k), (k,), (k, in)
        root = (sigma[:r] / scale).sqrt()  # (r,)
        return root[:, None] * vh[:r], u[:, :r] * root
    q, upper = torch.linalg.qr(w)  # (out, k), (k, in)
    return upper[:r].contiguous(), q[:, :r].contiguous()


@torch.no_grad()
def init_from_weight_(layer: LoRALinear, how: str, name: str = "") -> None:
    """Start `layer` (over a 16-bit nn.Linear) from part of its weight, by `how` ("pissa" or "olora"), in place
    (module docstring). `name`: the layer's path, for the errors."""
    if how not in FROM_WEIGHT:
        raise ValueError(f"init {how!r}: expected one of {', '.join(FROM_WEIGHT)}")
    base = layer.base_layer
    if type(base) is not nn.Linear:
        raise ConfigError(
            f"option 'method.init' is {how}, which needs a 16-bit nn.Linear base; {name or 'a layer'} is "
            f"{type(base).__name__} (method.quantize_base must be none)."
        )
    if layer.scale == 0:
        raise ConfigError(f"option 'method.init' is {how}, which needs a LoRA scale above 0; method.alpha must be > 0.")
    r, smallest = layer.r, min(layer.in_features, layer.out_features)
    if r > smallest:
        raise ConfigError(
            f"option 'method.r' is {r}, but method.init {how} takes r directions of each adapted weight, and "
            f"{name or 'a layer'} ({layer.out_features} x {layer.in_features}) has only {smallest}; lower method.r."
        )
    w = base.weight.float()  # (out, in)
    a0, b0 = _factors(w, r, layer.scale, how)
    layer.lora_A.weight.copy_(a0)
    layer.lora_B.weight.copy_(b0)
    layer.initial_A, layer.initial_B = a0.clone(), b0.clone()
    base.weight.copy_(w - layer.scale * (b0 @ a0))  # W_res, rounded once to the base's dtype
    if isinstance(layer, DoRALinear):
        layer.lora_magnitude_vector.copy_(layer.weight_norm())  # ||W_res + s B0 A0|| per row: g = 1 at the start


def starts_from_weight(layer: LoRALinear) -> bool:
    """Whether `layer` was started by `init_from_weight_` (its base holds a residual)."""
    return layer.initial_A is not None


def as_plain_lora(layer: LoRALinear) -> tuple[torch.Tensor, torch.Tensor]:
    """(A', B') of rank 2r over the original base: A' = [A; -A0] (2r, in), B' = [B, B0] (out, 2r) (module docstring)."""
    a, b = layer.lora_A.weight.detach(), layer.lora_B.weight.detach()
    return torch.cat([a, -layer.initial_A.to(a)]), torch.cat([b, layer.initial_B.to(b)], dim=1)


def plain_rank_alpha(r: int, alpha: float, rslora: bool) -> tuple[int, float]:
    """The r and lora_alpha of the rank-2r adapter whose scale equals the rank-r one's: alpha / r -> 2 alpha / 2r;
    alpha / sqrt(r) -> sqrt(2) alpha / sqrt(2r)."""
    return 2 * r, alpha * (math.sqrt(2) if rslora else 2)
