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

Resume does not factorise again: another LAPACK, cuSOLVER or torch may give other factors of the same W (a pair of
singular vectors with their signs flipped, the last bits rounded otherwise), and the saved adapter carries B0, A0 as
they are, so the run keeps them (`training/initial_factors.py`) and `init_from_weight_` takes them back (`factors`)
instead of the SVD (QR). The residual is rebuilt from them by `principal_part`: s B0 A0 summed one rank at a time
by elementwise products and sums, each rounded as IEEE 754 says on every device and build, where a GEMM's blocking
and fused multiply-adds differ between BLAS builds and GPUs; so the same A0, B0 give the same W_res bit for bit.

Over an NF4 base (method.quantize_base nf4: QPiSSA, in the PiSSA paper's section 4.4), the factors are taken from
the 16-bit W before anything is quantized (PEFT's pissa_init refuses a quantized weight, and its example quantizes
a residual model saved in full precision), and it is the residual that is quantized: the base becomes Q(W_res)
(`quant.linear.NF4Linear`), so the layer starts at deq(Q(W_res)) + s B0 A0 (what `adapters_disabled` gives), off W
by the quantization error of W_res alone, which is smaller than that of W (plain QLoRA's start, deq(Q(W))) because
the principal part, with the largest values, is no longer in what is quantized. The saved adapter is the same
rank-2r conversion over the original 16-bit W (PEFT's path_initial_model_for_weight_conversion, as its example
converts PiSSA trained over a 4-bit residual): the trained layer is deq(Q(W_res)) + s B A, and what a user loads
later, W + s (B A - B0 A0) = W_res + s B A, differs from it by that smaller quantization error only; so a QPiSSA
run is opened, merged and exported over W (`run_info.RunInfo.nf4_again`), not over an NF4 base again.

Refused (config/validate.py's `check_weight_init`): a continued adapter or a staged run (their weights replace the
start, or the next stage's base is not the residual), a federation (its averaged adapters assume the default start),
FSDP2 (its shards of A and B would not meet the whole A0, B0 kept beside them), alpha 0 (an adapter scaled to
nothing).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from tunelab.errors import ConfigError
from tunelab.peft.dora import DoRALinear
from tunelab.peft.lora_linear import LoRALinear
from tunelab.quant.linear import NF4Linear
from tunelab.quant.nf4_ops import DequantWorkspace, quantize_nf4

FROM_WEIGHT = ("pissa", "olora")  # method.init's choices besides default (A Kaiming-uniform, B zero: `LoRALinear`)


def principal_part(b0: torch.Tensor, a0: torch.Tensor, scale: float) -> torch.Tensor:
    """s B0 A0 (out, in) in fp32 from B0 (out, r), A0 (r, in), the same bits on every device and library build: the
    outer products of the r rank-one terms added in order, then scaled (module docstring)."""
    part = torch.zeros(b0.shape[0], a0.shape[1], dtype=torch.float32, device=a0.device)
    for k in range(a0.shape[0]):
        part += b0[:, k, None] * a0[None, k]  # (out, 1) * (1, in): each element one rounded product, one rounded sum
    return part * scale


def _factors(w: torch.Tensor, r: int, scale: float, how: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(A0 (r, in), B0 (out, r)) of an fp32 weight w (out, in) (module docstring)."""
    if how == "pissa":
        u, sigma, vh = torch.linalg.svd(w, full_matrices=False)  # (out, k), (k,), (k, in)
        root = (sigma[:r] / scale).sqrt()  # (r,)
        return root[:, None] * vh[:r], u[:, :r] * root
    q, upper = torch.linalg.qr(w)  # (out, k), (k, in)
    return upper[:r].contiguous(), q[:, :r].contiguous()


@torch.no_grad()
def init_from_weight_(
    layer: LoRALinear,
    how: str,
    name: str = "",
    *,
    nf4: bool = False,
    device: torch.device | str | None = None,
    workspace: DequantWorkspace | None = None,
    factors: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> None:
    """Start `layer` (over a 16-bit nn.Linear) from part of its weight, by `how` ("pissa" or "olora"), in place
    (module docstring). `name`: the layer's path, for the errors. `nf4` (QPiSSA): the residual base is quantized to an
    NF4Linear on `device` (the weight is moved there first, so the factorisation runs there too) that dequantizes into
    `workspace`, as `quant.linear.quantize_model_` puts the layers it quantizes; A and B move there too. `factors`:
    the (A0 (r, in), B0 (out, r)) a run kept, taken instead of factorising (the caller checks their shapes)."""
    if how not in FROM_WEIGHT:
        raise ValueError(f"init {how!r}: expected one of {', '.join(FROM_WEIGHT)}")
    base = layer.base_layer
    if type(base) is not nn.Linear:
        raise ConfigError(
            f"option 'method.init' is {how}, which factorises the 16-bit weight of each adapted layer before any "
            f"quantization; {name or 'a layer'} is {type(base).__name__} already."
        )
    if layer.scale == 0:
        raise ConfigError(f"option 'method.init' is {how}, which needs a LoRA scale above 0; method.alpha must be > 0.")
    r, smallest = layer.r, min(layer.in_features, layer.out_features)
    if r > smallest:
        raise ConfigError(
            f"option 'method.r' is {r}, but method.init {how} takes r directions of each adapted weight, and "
            f"{name or 'a layer'} ({layer.out_features} x {layer.in_features}) has only {smallest}; lower method.r."
        )
    w = base.weight.detach().to(device if nf4 and device is not None else base.weight.device).float()  # (out, in)
    if factors is None:
        a0, b0 = _factors(w, r, layer.scale, how)
    else:
        a0, b0 = (f.to(device=w.device, dtype=torch.float32) for f in factors)
    layer.lora_A.weight.copy_(a0)
    layer.lora_B.weight.copy_(b0)
    layer.initial_A, layer.initial_B = a0.clone(), b0.clone()
    residual = (w - principal_part(b0, a0, layer.scale)).to(base.weight.dtype)  # W_res, rounded once to the base's
    if nf4:  # Q(W_res); the 16-bit W goes with the nn.Linear it leaves
        bias = None if base.bias is None else base.bias.detach().to(residual.device)
        layer.base_layer = NF4Linear(quantize_nf4(residual), bias, workspace)
        layer.lora_A.to(residual.device)
        layer.lora_B.to(residual.device)
    else:
        base.weight.copy_(residual)
    if isinstance(layer, DoRALinear):
        # ||base + s B0 A0|| per row (the base dequantized where it is NF4): g = 1 at the start
        layer.lora_magnitude_vector.copy_(layer.weight_norm())


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
