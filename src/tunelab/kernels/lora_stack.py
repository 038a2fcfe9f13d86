"""The adapter part of a LoRA group's stacked matrix, written by one Triton kernel.

`peft.group.GroupWeights` builds W_all (O + R, in + R) = [[W_1 | s_1 B_1 | 0 ...], ..., [W_k | ... | s_k B_k],
[A_1; ...; A_k | 0]] (`kernels.lora.lora_group`). The frozen W_i are written by the dequantization (or a copy);
everything else, the right columns [O rows x R] with each s_i B_i on its diagonal block and zeros elsewhere, and the
bottom rows [R x (in + R)] with the A_i and zeros, takes 2k + 1 torch kernels (a zero fill, a scaled copy of each B_i,
a copy of each A_i). A 7B pass builds q/k/v's and gate/up's matrices in forward and again in backward for each of
32 layers: about 640 small kernels a micro-batch, here 128.

Each element is computed as torch computes it: s_i * B_i in fp32, then one rounding to W_all's dtype; A_i rounded
once. The result equals the torch writes bit for bit.
"""

import torch
import triton
import triton.language as tl

MAX_MEMBERS = 3  # q/k/v; gate/up is 2


@triton.jit
def _member_block(b_ptr, scale, rows, cols, row0, n_rows, col0, rank):
    """s * B at (rows, cols) where they fall into this member's block (rows row0.., cols col0..), else 0."""
    inside = ((rows >= row0) & (rows < row0 + n_rows))[:, None] & ((cols >= col0) & (cols < col0 + rank))[None, :]
    offsets = (rows - row0).to(tl.int64)[:, None] * rank + (cols - col0)[None, :]
    return tl.load(b_ptr + offsets, mask=inside, other=0.0).to(tl.float32) * scale


@triton.jit
def _member_rows(a_ptr, rows, cols, row0, rank, width):
    """A at (rows, cols) where the rows fall into this member's ranks (row0..) and cols < width, else 0."""
    inside = ((rows >= row0) & (rows < row0 + rank))[:, None] & (cols < width)[None, :]
    offsets = (rows - row0).to(tl.int64)[:, None] * width + cols[None, :]
    return tl.load(a_ptr + offsets, mask=inside, other=0.0)


@triton.jit
def _stack_kernel(
    w_ptr, ld, width, total_out, total_rank, right_programs, bottom_col_tiles,
    b0, a0, s0, o0, r0, b1, a1, s1, o1, r1, b2, a2, s2, o2, r2,
    K: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_W: tl.constexpr,
):  # fmt: skip
    """Programs [0, right_programs): BLOCK_O rows of the right columns. The rest: (BLOCK_A, BLOCK_W) tiles of the
    bottom rows."""
    pid = tl.program_id(0)
    if pid < right_programs:
        rows = pid * BLOCK_O + tl.arange(0, BLOCK_O)
        cols = tl.arange(0, BLOCK_R)
        block = _member_block(b0, s0, rows, cols, 0, o0, 0, r0)
        if K > 1:
            block += _member_block(b1, s1, rows, cols, o0, o1, r0, r1)
        if K > 2:
            block += _member_block(b2, s2, rows, cols, o0 + o1, o2, r0 + r1, r2)
        right_mask = (rows < total_out)[:, None] & (cols < total_rank)[None, :]
        right_at = w_ptr + rows.to(tl.int64)[:, None] * ld + width + cols[None, :]
        tl.store(right_at, block.to(w_ptr.dtype.element_ty), mask=right_mask)
    else:
        tile = pid - right_programs
        a_rows = (tile // bottom_col_tiles) * BLOCK_A + tl.arange(0, BLOCK_A)
        a_cols = (tile % bottom_col_tiles) * BLOCK_W + tl.arange(0, BLOCK_W)
        a_block = _member_rows(a0, a_rows, a_cols, 0, r0, width).to(tl.float32)
        if K > 1:
            a_block += _member_rows(a1, a_rows, a_cols, r0, r1, width).to(tl.float32)
        if K > 2:
            a_block += _member_rows(a2, a_rows, a_cols, r0 + r1, r2, width).to(tl.float32)
        bottom_mask = (a_rows < total_rank)[:, None] & (a_cols < width + total_rank)[None, :]
        bottom_at = w_ptr + (total_out + a_rows).to(tl.int64)[:, None] * ld + a_cols[None, :]
        tl.store(bottom_at, a_block.to(w_ptr.dtype.element_ty), mask=bottom_mask)


def stack_adapters(w_all: torch.Tensor, width: int, members: list[tuple[torch.Tensor, torch.Tensor, float]]) -> None:
    """Write every part of w_all (O + R, width + R) but its first `width` columns of the first O rows: each member's
    s * B (out_i, r_i) into its block of the right columns, each A (r_i, width) into its bottom rows, zeros around.
    members: (B, A, s) in the group's order, at most MAX_MEMBERS; w_all's columns must have unit stride."""
    if not 1 <= len(members) <= MAX_MEMBERS:
        raise ValueError(f"stack_adapters: {len(members)} members; 1 to {MAX_MEMBERS} supported")
    if w_all.stride(1) != 1:
        raise ValueError("stack_adapters: w_all's columns must be contiguous")
    total_out = sum(b.shape[0] for b, _, _ in members)
    total_rank = sum(b.shape[1] for b, _, _ in members)
    if w_all.shape != (total_out + total_rank, width + total_rank):
        raise ValueError(f"stack_adapters: w_all is {tuple(w_all.shape)}, the members need "
                         f"{(total_out + total_rank, width + total_rank)}")  # fmt: skip
    args = []
    for b, a, s in members + [members[0]] * (MAX_MEMBERS - len(members)):  # unused slots: never read (K)
        args += [b.contiguous(), a.contiguous(), float(s), b.shape[0], b.shape[1]]
    block_r = triton.next_power_of_2(total_rank)
    block_o = max(1, 4096 // block_r)
    block_a, block_w = 16, 256
    right_programs = triton.cdiv(total_out, block_o)
    col_tiles = triton.cdiv(width + total_rank, block_w)
    grid = (right_programs + triton.cdiv(total_rank, block_a) * col_tiles,)
    _stack_kernel[grid](
        w_all, w_all.stride(0), width, total_out, total_rank, right_programs, col_tiles, *args,
        K=len(members), BLOCK_O=block_o, BLOCK_R=block_r, BLOCK_A=block_a, BLOCK_W=block_w, num_warps=4,
    )  # fmt: skip
