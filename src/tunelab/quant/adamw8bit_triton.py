"""The 8-bit AdamW step (`quant.adamw8bit`) in Triton: dequantize both moments, update them and the
parameter in fp32, requantize, one program per block of 256 elements. `adamw8bit_update_multi` steps any number of
parameters of one dtype in ONE launch (a 7B QLoRA model has ~450 adapter tensors: one launch each cost 124 ms of CPU
time per step, more than the GPU spends on the whole update).

Per element it reads the parameter and the gradient (4 + 4 bytes for fp32) and two code bytes, and writes the
parameter and two code bytes; per block two fp32 absmaxes each way. The moments never exist in fp32 outside
registers. The nearest code is found by a branchless binary search over the sorted 256-entry table (8 probes: the
count of codes below x), then the nearer of that code and the one below it, ties to the lower: the rule of
`nearest_code`. The tables are 1 KiB each and the probes come through L1.

The multi-tensor kernel runs one program per block of the concatenation of all parameters' blocks; a per-block map
gives its tensor, whose addresses come from int64 tables of data pointers (cast to typed pointers in the kernel,
`tl.load(...).to(tl.pointer_type(dtype))`: LLVM's inttoptr); the per-block body is `_step_block`.

The kernel runs with fp fusion off, a correctly rounded division and square root, so every operation rounds as the
PyTorch reference's does on the CPU; `adamw8bit_update_reference` is the ground truth and the fallback.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from tunelab.quant.adamw8bit import BLOCK


@triton.jit
def _nearest(x, code_ptr):
    """Index (int32) of the code nearest to each x: hi = count of codes < x (8 halvings), then hi or hi - 1."""
    hi = tl.zeros(x.shape, tl.int32)
    for i in tl.static_range(8):
        half = 128 >> i
        hi = tl.where(tl.load(code_ptr + hi + (half - 1)) < x, hi + half, hi)
    lo = tl.maximum(hi - 1, 0)
    return tl.where(tl.load(code_ptr + hi) - x < x - tl.load(code_ptr + lo), hi, lo)


@triton.jit
def _requantize(x, q_ptr, absmax_ptr, code_ptr, block, offs, live):
    """Store x's block absmax and the nearest code of each x / absmax (a zero block: the code of 0)."""
    absmax = tl.max(tl.abs(x), axis=0)
    tl.store(absmax_ptr + block, absmax)
    scaled = tl.math.div_rn(x, tl.zeros_like(x) + tl.where(absmax > 0, absmax, 1.0))
    tl.store(q_ptr + offs, _nearest(scaled, code_ptr).to(tl.uint8), mask=live)


@triton.jit
def _step_block(
    p_ptr, g_ptr, m_q_ptr, m_absmax_ptr, v_q_ptr, v_absmax_ptr, c_ptr, signed_ptr, unsigned_ptr, block, n,
    beta1, one_minus_beta1, beta2, one_minus_beta2, decay, step_size, bc2_sqrt, eps, BLOCK: tl.constexpr,
    COMPENSATED: tl.constexpr,
):  # fmt: skip
    """Block `block` (int64) of one parameter of n elements: the whole update, in place; COMPENSATED: the parameter
    moves through p + c, its Kahan compensation c (c_ptr, the parameter's dtype)."""
    offs = block * BLOCK + tl.arange(0, BLOCK)  # (BLOCK,)
    live = offs < n
    g = tl.load(g_ptr + offs, mask=live, other=0.0).to(tl.float32)
    p = tl.load(p_ptr + offs, mask=live, other=0.0).to(tl.float32)
    if COMPENSATED:
        p = p + tl.load(c_ptr + offs, mask=live, other=0.0).to(tl.float32)
    m_q = tl.load(m_q_ptr + offs, mask=live, other=0).to(tl.int32)
    v_q = tl.load(v_q_ptr + offs, mask=live, other=0).to(tl.int32)
    m = tl.load(signed_ptr + m_q) * tl.load(m_absmax_ptr + block)
    v = tl.load(unsigned_ptr + v_q) * tl.load(v_absmax_ptr + block)
    m = beta1 * m + one_minus_beta1 * g
    v = beta2 * v + one_minus_beta2 * (g * g)
    p = p * decay
    denom = tl.math.div_rn(tl.sqrt_rn(v), tl.zeros_like(v) + bc2_sqrt) + eps
    p = p - step_size * tl.math.div_rn(m, denom)
    rounded = p.to(p_ptr.dtype.element_ty)  # bf16: rounds to nearest even
    tl.store(p_ptr + offs, rounded, mask=live)
    if COMPENSATED:  # p - round(p) is exact in fp32; rounded once more into c
        tl.store(c_ptr + offs, (p - rounded.to(tl.float32)).to(c_ptr.dtype.element_ty), mask=live)
    # Lanes past n hold the decoded code of their padding: zero them so that they change no absmax.
    _requantize(tl.where(live, m, 0.0), m_q_ptr, m_absmax_ptr, signed_ptr, block, offs, live)
    _requantize(tl.where(live, v, 0.0), v_q_ptr, v_absmax_ptr, unsigned_ptr, block, offs, live)


@triton.jit
def _adamw8bit_multi_kernel(
    table_ptr, grad_ptrs, block_tensor_ptr, n_tensors, signed_ptr, unsigned_ptr,
    beta1, one_minus_beta1, beta2, one_minus_beta2, decay, step_size, bc2_sqrt, eps,
    PARAM: tl.constexpr, GRAD: tl.constexpr, BLOCK: tl.constexpr, COMPENSATED: tl.constexpr,
):  # fmt: skip
    """Program i: global block i, of tensor t = block_tensor[i]; table (8, n_tensors) int64 in TABLE_ROWS order."""
    pid = tl.program_id(0)
    t = tl.load(block_tensor_ptr + pid).to(tl.int64)
    row = table_ptr + t  # column t of the table
    p_ptr = tl.load(row).to(tl.pointer_type(PARAM))
    m_q_ptr = tl.load(row + n_tensors).to(tl.pointer_type(tl.uint8))
    m_absmax_ptr = tl.load(row + 2 * n_tensors).to(tl.pointer_type(tl.float32))
    v_q_ptr = tl.load(row + 3 * n_tensors).to(tl.pointer_type(tl.uint8))
    v_absmax_ptr = tl.load(row + 4 * n_tensors).to(tl.pointer_type(tl.float32))
    n = tl.load(row + 5 * n_tensors)
    block = pid.to(tl.int64) - tl.load(row + 6 * n_tensors)  # the block's index within its tensor
    c_ptr = tl.load(row + 7 * n_tensors).to(tl.pointer_type(PARAM))
    g_ptr = tl.load(grad_ptrs + t).to(tl.pointer_type(GRAD))
    _step_block(
        p_ptr, g_ptr, m_q_ptr, m_absmax_ptr, v_q_ptr, v_absmax_ptr, c_ptr, signed_ptr, unsigned_ptr, block, n,
        beta1, one_minus_beta1, beta2, one_minus_beta2, decay, step_size, bc2_sqrt, eps, BLOCK, COMPENSATED,
    )  # fmt: skip


TABLE_ROWS = (
    "param", "exp_avg_q", "exp_avg_absmax", "exp_avg_sq_q", "exp_avg_sq_absmax", "numel", "first_block", "compensation",
)  # fmt: skip
"""Rows of `adamw8bit_update_multi`'s table (`tunelab.quant.adamw8bit.pointer_table` builds it in this order)."""
_TL_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16}


def adamw8bit_update_multi(
    table: torch.Tensor,
    grad_ptrs: torch.Tensor,
    block_tensor: torch.Tensor,
    signed_code: torch.Tensor,
    unsigned_code: torch.Tensor,
    scalars: dict[str, float],
    param_dtype: torch.dtype,
    grad_dtype: torch.dtype,
    num_warps: int = 4,
    compensated: bool = False,
) -> None:
    """`tunelab.quant.adamw8bit.adamw8bit_update_reference` of T parameters in one launch, all on the device of
    the tables, with the same scalars.

    table: (8, T) int64 on the device, rows TABLE_ROWS: data pointers of each parameter (param_dtype, contiguous)
    and of its four state tensors, its element count, the index of its first block in the concatenation of all
    blocks and the data pointer of its compensation (read and written only when `compensated`); grad_ptrs: (T,)
    int64, data pointers of the contiguous gradients (grad_dtype); block_tensor: (total blocks,) int32, the tensor
    of each block (`tunelab.quant.adamw8bit.block_maps`). The caller keeps the tensors that the pointers address
    alive, and unchanged in size, until the kernel has run.
    """
    n_tensors = grad_ptrs.numel()
    if table.dtype != torch.int64 or grad_ptrs.dtype != torch.int64 or block_tensor.dtype != torch.int32:
        raise ValueError("adamw8bit_update_multi: table and grad_ptrs must be int64, block_tensor int32")
    if table.shape != (len(TABLE_ROWS), n_tensors) or not table.is_contiguous():
        raise ValueError(
            f"adamw8bit_update_multi: table must be contiguous ({len(TABLE_ROWS)}, {n_tensors}); "
            f"got {tuple(table.shape)}"
        )
    if param_dtype not in _TL_DTYPES or grad_dtype not in _TL_DTYPES:
        raise ValueError(
            f"adamw8bit_update_multi: parameters and gradients must be fp32 or bf16; got {param_dtype}, {grad_dtype}"
        )
    if block_tensor.numel() == 0:
        return
    _adamw8bit_multi_kernel[(block_tensor.numel(),)](
        table, grad_ptrs, block_tensor, n_tensors, signed_code, unsigned_code,
        scalars["beta1"], scalars["one_minus_beta1"], scalars["beta2"], scalars["one_minus_beta2"], scalars["decay"],
        scalars["step_size"], scalars["bc2_sqrt"], scalars["eps"],
        PARAM=_TL_DTYPES[param_dtype], GRAD=_TL_DTYPES[grad_dtype], BLOCK=BLOCK, COMPENSATED=compensated,
        num_warps=num_warps,
        enable_fp_fusion=False,
    )  # fmt: skip
