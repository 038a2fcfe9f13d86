"""AdamW's moments in 8 bits: block-wise dynamic quantization (Dettmers et al. 2021, "8-bit Optimizers via Block-wise
Quantization") and the update of one parameter, in plain PyTorch: the CPU path and the ground truth of the Triton
kernel (`quant.adamw8bit_triton`). The optimizer that keeps the state and picks the path is
`tunelab.training.adamw8bit.AdamW8bit`.

State of an 8-bit parameter of n elements, its flattened values cut into blocks of BLOCK = 256:
  - exp_avg_q (n,) uint8, exp_avg_absmax (ceil(n / 256),) fp32: m = code_s[q] * absmax of its block, where code_s is
    bitsandbytes' signed dynamic code (`quant.codes.dynamic_code`);
  - exp_avg_sq_q, exp_avg_sq_absmax: v the same way with code_u, the unsigned dynamic code
    (`quant.codes.unsigned_dynamic_code`).
That is 2 + 8 / 256 = 2.03125 bytes per parameter instead of AdamW's 8.

One step of an 8-bit parameter, per block, all in fp32 (each operation rounded on its own, no fused multiply-add):
    m = code_s[m_q] * m_absmax,    v = code_u[v_q] * v_absmax                       (dequantize)
    m = beta1 m + (1 - beta1) g,   v = beta2 v + (1 - beta2) g^2
    p = p (1 - lr wd);   p = p - (lr / bc1) * (m / (sqrt(v) / sqrt(bc2) + eps))      bc_i = 1 - beta_i^step
    m_absmax = max |m|, m_q = nearest code to m / m_absmax; the same for v           (requantize)
The parameter moves with the fresh fp32 m and v; only what is carried to the next step is rounded to 8 bits (as in
bitsandbytes). A bf16 parameter has a bf16 `compensation` c (Kahan summation, `training.compensated`): the step
starts from p + c instead of p, and after p is rounded to bf16 keeps c = round(p_fp32 - p), so that updates under
half a bf16 ulp are not lost. Nearest means no other code is closer; an exact tie between two codes goes to the
lower one.
`adamw8bit_update_reference` does this vectorised over the whole parameter. The kernel steps many parameters in one
launch from int64 tables of data pointers (`pointer_table`) and a block -> tensor map (`block_maps`), built here so
that the CPU can build and test them without Triton.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

import torch
import torch.nn.functional as F

BLOCK = 256
"""Moment elements per block (one fp32 absmax each)."""
QUANTIZED_KEYS = ("exp_avg_q", "exp_avg_absmax", "exp_avg_sq_q", "exp_avg_sq_absmax")
"""The 8-bit state tensors of a parameter, in the order of the kernel's table rows."""
COMPENSATION = "compensation"
"""The state key of a bf16 parameter's Kahan compensation (its dtype; `training.compensated` uses the same key)."""


def nearest_code(x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """Index (int64, x's shape) of the code value nearest to each x in [code[0], code[-1]]; a tie goes to the lower.

    hi = the first code >= x (the count of codes below x, as the kernel's binary search finds it); lo = hi - 1.
    """
    hi = torch.searchsorted(code, x.contiguous()).clamp_(max=code.numel() - 1)
    lo = (hi - 1).clamp_(min=0)
    return torch.where(code[hi] - x < x - code[lo], hi, lo)


def _blocks(flat: torch.Tensor) -> torch.Tensor:
    """(n,) -> (ceil(n / BLOCK), BLOCK), the last block padded with zeros (which change no absmax)."""
    return F.pad(flat, (0, -flat.numel() % BLOCK)).view(-1, BLOCK)


def quantize_blockwise(x: torch.Tensor, code: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (any shape, fp32) -> codes (n,) uint8 of flattened x and absmax (ceil(n / 256),) fp32 of each block.

    Each x / absmax of its block gets its nearest code; a block of zeros gets the code of 0.
    """
    flat = x.reshape(-1).float()
    blocks = _blocks(flat)  # (n_blocks, 256)
    absmax = blocks.abs().amax(dim=1)
    scaled = blocks / torch.where(absmax > 0, absmax, torch.ones_like(absmax))[:, None]
    q = nearest_code(scaled, code).to(torch.uint8).view(-1)[: flat.numel()]
    return q, absmax


def dequantize_blockwise(q: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """Codes (n,) uint8 and absmax (n_blocks,) fp32 -> (n,) fp32: code[q] * absmax of q's block."""
    values = _blocks(code[q.long()])  # (n_blocks, 256)
    return (values * absmax[:, None]).view(-1)[: q.numel()]


def _f32(x: float) -> float:
    """x rounded to the nearest fp32 (the precision the kernel receives its scalars in), as a Python float."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


def update_scalars(
    lr: float, beta1: float, beta2: float, eps: float, weight_decay: float, step: int
) -> dict[str, float]:
    """The fp32 scalars of one step (computed in fp64, rounded once), shared by the reference and the kernel."""
    return {
        "beta1": _f32(beta1), "one_minus_beta1": _f32(1 - beta1),
        "beta2": _f32(beta2), "one_minus_beta2": _f32(1 - beta2),
        "decay": _f32(1 - lr * weight_decay), "step_size": _f32(lr / (1 - beta1**step)),
        "bc2_sqrt": _f32(math.sqrt(1 - beta2**step)), "eps": _f32(eps),
    }  # fmt: skip


def adamw8bit_update_reference(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg_q: torch.Tensor,
    exp_avg_absmax: torch.Tensor,
    exp_avg_sq_q: torch.Tensor,
    exp_avg_sq_absmax: torch.Tensor,
    signed_code: torch.Tensor,
    unsigned_code: torch.Tensor,
    scalars: dict[str, float],
    compensation: torch.Tensor | None = None,
) -> None:
    """One AdamW step of `param` (fp32 or bf16) from `grad`, moments in 8 bits; updates all tensors in place.

    exp_avg_q / exp_avg_sq_q: (n,) uint8; the absmaxes (ceil(n / 256),) fp32; codes (256,) fp32 sorted;
    `scalars` from `update_scalars`; `compensation`: param's shape and dtype, or None (see the module docstring).
    """
    s = scalars
    g = grad.reshape(-1).float()  # (n,)
    m = dequantize_blockwise(exp_avg_q, exp_avg_absmax, signed_code)
    v = dequantize_blockwise(exp_avg_sq_q, exp_avg_sq_absmax, unsigned_code)
    m = s["beta1"] * m + s["one_minus_beta1"] * g
    v = s["beta2"] * v + s["one_minus_beta2"] * (g * g)
    p = param.reshape(-1).float()
    if compensation is not None:
        p = p + compensation.reshape(-1).float()
    p = p * s["decay"]
    # The correctly rounded fp32 square root, as the kernel's: torch's vectorised fp32 sqrt on the CPU is off by one
    # unit in the last place for ~20% of inputs; through fp64 it is exact (53 >= 2 * 24 + 2 bits: no double rounding).
    root = v.double().sqrt().float()
    p = p - s["step_size"] * (m / (root / s["bc2_sqrt"] + s["eps"]))
    param.copy_(p.view_as(param))  # one rounding to bf16 (nearest even) where the parameter is bf16
    if compensation is not None:  # p - round(p) is exact in fp32; rounded once more into c
        compensation.copy_((p - param.reshape(-1).float()).view_as(compensation))
    moments = ((exp_avg_q, exp_avg_absmax, m, signed_code), (exp_avg_sq_q, exp_avg_sq_absmax, v, unsigned_code))
    for q, absmax, fresh, code in moments:  # requantized with the new block absmaxes
        new_q, new_absmax = quantize_blockwise(fresh, code)
        q.copy_(new_q)
        absmax.copy_(new_absmax)


def block_maps(numels: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Blocks of T tensors of `numels` elements laid end to end: (the tensor of each block, (sum ceil(n / 256),)
    int32; the global index of each tensor's first block, (T,) int64). Global block i is local block
    i - first_block[index[i]] of tensor index[i]."""
    counts = torch.tensor([-(-n // BLOCK) for n in numels], dtype=torch.int64)  # (T,)
    first_block = torch.cumsum(counts, 0) - counts
    index = torch.repeat_interleave(torch.arange(len(numels), dtype=torch.int32), counts)
    return index, first_block


def pointer_table(params: Sequence[torch.Tensor], states: Sequence[dict[str, torch.Tensor]]) -> torch.Tensor:
    """(8, T) int64 on the CPU, `quant.adamw8bit_triton.TABLE_ROWS`: the data pointers of each parameter and of
    its QUANTIZED_KEYS state tensors, its element count, the global index of its first block (`block_maps`), and
    the data pointer of its compensation (the parameter's own where it has none: the kernel then never reads it)."""
    numels = [p.numel() for p in params]
    rows = [[p.data_ptr() for p in params]] + [[s[key].data_ptr() for s in states] for key in QUANTIZED_KEYS]
    compensations = [s.get(COMPENSATION, p).data_ptr() for p, s in zip(params, states, strict=True)]
    return torch.tensor(rows + [numels, block_maps(numels)[1].tolist(), compensations], dtype=torch.int64)
