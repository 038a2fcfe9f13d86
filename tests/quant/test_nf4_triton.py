"""NF4 Triton kernels: dequantization equals the PyTorch reference bit for bit; quantization follows bitsandbytes' CUDA
rules (4-bit stage against the reference, the 8-bit binary search against a line-by-line Python transcription of
bitsandbytes' `dQuantize`); with bitsandbytes importable on CUDA, bytes and dequantized values identical to its own.

Without a GPU, `TRITON_INTERPRET=1` runs the kernels on the CPU in Triton's interpreter, with a correctly rounded
reciprocal (no PTX there) and without bf16 outputs (the interpreter truncates fp32 -> bf16; the GPU rounds to nearest).
"""

import zlib

import numpy as np
import pytest
import torch

from tunelab.quant.codes import dynamic_code
from tunelab.quant.nf4 import (
    NF4Weight,
    block_absmax,
    dequantize_nf4,
    nf4_code,
    nf4_cuda_thresholds,
    nf4_midpoints,
    quantize_nf4_reference,
)
from tunelab.quant.nf4_ops import quantize_nf4

pytest.importorskip("triton")
from tunelab.quant.nf4_triton import (  # noqa: E402
    dequantize_nf4_triton,
    quantize_absmax_triton,
    quantize_blocks_triton,
    quantize_nf4_triton,
)

CUDA = torch.cuda.is_available()
pytestmark = pytest.mark.triton

try:
    import bitsandbytes.functional as bnb_functional
except Exception:
    bnb_functional = None
needs_bnb_cuda = pytest.mark.skipif(not (CUDA and bnb_functional is not None), reason="needs CUDA and bitsandbytes")

# Aligned; a trailing partial block (3300 = 51 * 64 + 36); an odd count (917); 600 blocks (3 of absmaxes); one block;
# 3-D; and on the GPU a slice of Llama's MLP (1376 x 4096: 88 blocks of 256 absmaxes).
SHAPES = [(64, 256), (33, 100), (7, 131), (300, 128), (1, 64), (3, 5, 96)] + ([(1376, 4096)] if CUDA else [])
OUT_DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if CUDA else [])


def weight(shape, dtype=torch.float32, std=0.02):
    g = torch.Generator().manual_seed(zlib.crc32(repr((shape, dtype)).encode()))
    return (torch.randn(*shape, generator=g) * std).to(dtype)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    same_layout = a.shape == b.shape and a.dtype == b.dtype
    return same_layout and torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))


@pytest.mark.parametrize("out_dtype", OUT_DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_dequantize_kernel_is_bit_identical_to_the_reference(shape, out_dtype, triton_device):
    q = quantize_nf4_reference(weight(shape, torch.bfloat16))
    expected = dequantize_nf4(q, out_dtype)
    assert same_bits(dequantize_nf4_triton(q.to(triton_device), dtype=out_dtype).cpu(), expected)
    assert same_bits(
        dequantize_nf4_triton(q.to(triton_device), dtype=out_dtype, block=256).cpu(), expected
    )  # more programs
    # the lane-per-weight kernel, which the word kernel replaces where the count is a multiple of 8
    assert same_bits(dequantize_nf4_triton(q.to(triton_device), dtype=out_dtype, words=False).cpu(), expected)


def test_dequantize_writes_into_out_and_checks_its_size(triton_device):
    q = quantize_nf4_reference(weight((33, 100))).to(triton_device)
    out = torch.full((33, 100), float("nan"), device=triton_device)
    assert dequantize_nf4_triton(q, out=out) is out
    assert torch.equal(out.cpu(), dequantize_nf4(q.to("cpu"), torch.float32))
    with pytest.raises(ValueError, match="3300 elements"):
        dequantize_nf4_triton(q, out=torch.empty(33, 101, device=triton_device))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", SHAPES)
def test_4bit_stage_matches_the_reference(shape, dtype, triton_device):
    w = weight(shape, dtype)
    ref = quantize_nf4_reference(w)
    packed, absmax = quantize_blocks_triton(w.to(triton_device), approx_reciprocal=False, thresholds=nf4_midpoints())
    assert torch.equal(absmax.cpu(), block_absmax_true(w))
    # The reference (bitsandbytes on the CPU) divides in a trailing partial block where the kernel multiplies by the
    # reciprocal: compare the full blocks exactly.
    full_bytes = (w.numel() // 64) * 32
    assert torch.equal(packed.cpu()[:full_bytes], ref.packed[:full_bytes])
    assert packed.numel() == ref.packed.numel()


def test_cuda_thresholds_decide_ties_as_bitsandbytes_cuda_does(triton_device):
    # absmax 1, so x = w exactly. On the CPU's fp32 midpoints 0.50166345 and -0.84809637 bitsandbytes' CUDA
    # thresholds lie one ulp below (codes 13 and 1, not 12 and 0); on its threshold 0.12025525, one ulp above the
    # midpoint, x is not above it (code 8, not 9); the midpoint 0.03979015 it kept (code 7 both ways).
    mid = nf4_midpoints()
    w = torch.zeros(64)
    w[0], w[1:5] = 1.0, torch.stack([mid[12], mid[0], nf4_cuda_thresholds()[8], mid[7]])
    cuda, _ = quantize_blocks_triton(w.to(triton_device), approx_reciprocal=False)
    cpu, _ = quantize_blocks_triton(w.to(triton_device), approx_reciprocal=False, thresholds=mid)
    unpack = lambda p: torch.stack((p >> 4, p & 15), 1).view(-1)[:5].tolist()  # noqa: E731
    assert unpack(cuda.cpu()) == [15, 13, 1, 8, 7]
    assert unpack(cpu.cpu()) == [15, 12, 0, 9, 7] == unpack(quantize_nf4_reference(w).packed)


def block_absmax_true(w):
    flat = torch.nn.functional.pad(w.float().reshape(-1), (0, -w.numel() % 64))
    return flat.view(-1, 64).abs().amax(1)


def cuda_dquantize(code: np.ndarray, x: np.float32) -> int:
    """bitsandbytes' `dQuantize<0>` (csrc/kernels.cu), line by line, in fp32."""
    pivot, upper_pivot, lower_pivot = 127, 255, 0
    lower, upper = np.float32(-1.0), np.float32(1.0)
    val = code[pivot]
    for step in (64, 32, 16, 8, 4, 2, 1):
        if x > val:
            lower_pivot, lower, pivot = pivot, val, pivot + step
        else:
            upper_pivot, upper, pivot = pivot, val, pivot - step
        val = code[pivot]
    if upper_pivot == 255:
        upper = code[upper_pivot]
    if lower_pivot == 0:
        lower = code[lower_pivot]
    if x > val:
        return upper_pivot if x > (upper + val) * np.float32(0.5) else pivot
    return lower_pivot if x < (lower + val) * np.float32(0.5) else pivot


def test_8bit_stage_follows_the_bitsandbytes_cuda_search(triton_device):
    code = dynamic_code()
    g = torch.Generator().manual_seed(0)
    # Block 0: +-1 fixes absmax2 = 1, so x = v exactly: every code value, every midpoint (ties), random points.
    exact = torch.cat([code, 0.5 * (code[:-1] + code[1:]), torch.rand(256, generator=g) * 2 - 1])
    # Then blocks of ordinary absmax - offset values, the last one partial.
    ordinary = torch.randn(900, generator=g) * 0.01
    blocks = [torch.cat([torch.tensor([1.0, -1.0]), exact[i : i + 254]]) for i in range(0, exact.numel(), 254)]
    centered = torch.cat(blocks + [ordinary])
    q, absmax2 = quantize_absmax_triton(centered.to(triton_device), code.to(triton_device), approx_reciprocal=False)
    padded = torch.nn.functional.pad(centered, (0, -centered.numel() % 256)).view(-1, 256)
    assert torch.equal(absmax2.cpu(), padded.abs().amax(1))
    x = (padded * (1.0 / padded.abs().amax(1))[:, None]).reshape(-1)[: centered.numel()].numpy()
    expected = [cuda_dquantize(code.numpy(), xi) for xi in x]
    assert q.cpu().tolist() == expected


def test_zero_block_takes_code_zero_as_on_cuda(triton_device):
    w = weight((4, 64))
    w[1] = 0.0
    q = quantize_nf4_triton(w.to(triton_device), approx_reciprocal=False)
    assert torch.all(q.packed[32:64] == 0)  # 0 * (1 / 0) = NaN: every comparison false
    # Code 0 is -1.0 and the block's absmax comes back from 8 bits as about 0, not 0: like bitsandbytes on CUDA, the
    # block dequantizes to -(its stored absmax) (the CPU stores code 7, exactly 0).
    deq = dequantize_nf4_triton(q, dtype=torch.float32).cpu()
    stored = block_absmax(q.to("cpu"))[1]
    assert torch.all(deq[1] == -stored) and stored.abs() < 0.01 * w.abs().max()


@pytest.mark.parametrize("shape", SHAPES)
def test_quantize_round_trip(shape, triton_device):
    w = weight(shape, std=1.0)
    q = quantize_nf4_triton(w.to(triton_device), approx_reciprocal=False if triton_device == "cpu" else None)
    assert q.device.type == triton_device and q.shape == w.shape
    err = (dequantize_nf4_triton(q, dtype=torch.float32).cpu() - w).abs().max()
    assert err <= 0.16 * w.abs().max()  # the widest half gap of the NF4 table is 0.152


def from_bitsandbytes(packed: torch.Tensor, state) -> NF4Weight:
    return NF4Weight(packed.view(-1), state.absmax, state.state2.absmax, state.offset, state.shape, state.dtype,
                     nf4_code(packed.device), state.state2.code)  # fmt: skip


@needs_bnb_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("shape", [(64, 256), (33, 100), (300, 128), (1376, 4096), (4096, 11008)])
def test_bit_identical_to_bitsandbytes_on_cuda(shape, dtype):
    w = weight(shape, dtype).cuda()
    w[0, :64] = 0.0  # a zero block
    theirs, state = bnb_functional.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
    ours = quantize_nf4(w)
    assert (ours.packed != theirs.view(-1)).sum().item() == 0
    assert (ours.absmax_q != state.absmax).sum().item() == 0
    assert torch.equal(ours.absmax2, state.state2.absmax) and torch.equal(ours.offset, state.offset)
    assert torch.equal(ours.code8, state.state2.code)
    from_theirs = from_bitsandbytes(theirs, state)
    for out_dtype in (torch.bfloat16, torch.float16, torch.float32):
        state.dtype = out_dtype
        expected = bnb_functional.dequantize_4bit(theirs, state)
        assert same_bits(dequantize_nf4_triton(from_theirs, dtype=out_dtype), expected)
        assert same_bits(dequantize_nf4(from_theirs, out_dtype), expected)  # the reference, with torch on CUDA


def test_dequantize_writes_into_the_rows_of_a_wider_matrix(triton_device):
    """Grouped LoRA projections dequantize each weight into its rows of one (O, in + R) matrix (`peft.group`)."""
    q = quantize_nf4_reference(weight((33, 100))).to(triton_device)
    wide = torch.full((40, 107), float("nan"), device=triton_device)
    rows = wide[5:38, :100]  # row stride 107
    assert dequantize_nf4_triton(q, out=rows) is rows
    assert torch.equal(rows.cpu(), dequantize_nf4(q.to("cpu"), torch.float32))
    assert wide[:5].isnan().all() and wide[38:].isnan().all() and wide[:, 100:].isnan().all()  # nothing else written
    with pytest.raises(ValueError, match="unit column stride"):
        dequantize_nf4_triton(q, out=torch.empty(100, 33, device=triton_device).T)


@pytest.mark.parametrize("words", [True, False])
def test_both_kernels_write_the_rows_of_a_wider_matrix_with_rows_of_eight(words, triton_device):
    """A row width divisible by 8 (every Llama matrix) takes the word kernel: a word's 8 weights in one row."""
    q = quantize_nf4_reference(weight((24, 136))).to(triton_device)  # 3264 weights: 408 words, 51 blocks
    wide = torch.full((30, 152), float("nan"), device=triton_device)
    rows = wide[3:27, :136]  # row stride 152
    dequantize_nf4_triton(q, out=rows, words=words)
    assert torch.equal(rows.cpu(), dequantize_nf4(q.to("cpu"), torch.float32))
    assert wide[:3].isnan().all() and wide[27:].isnan().all() and wide[:, 136:].isnan().all()


class _Refused:
    """Stands in for the word kernel where it must not run: launching it fails the test."""

    def __getitem__(self, grid):
        raise AssertionError("the word kernel was launched on rows it cannot store to aligned")


@pytest.mark.parametrize("row_stride", [76, 72])
def test_rows_not_eight_apart_take_the_lane_kernel(row_stride, triton_device, monkeypatch):
    """A stacked q/k/v matrix whose ranks sum to 12 has rows 64 + 12 = 76 wide: the word kernel's 16-byte stores
    would start off alignment on every other row (a misaligned-address fault on the GPU), so the lane-per-weight
    kernel writes them; rows 72 apart keep the word kernel. Either way the values are the reference's."""
    import tunelab.quant.nf4_triton as nf4_triton

    if row_stride % 8:
        monkeypatch.setattr(nf4_triton, "_dequantize_words_kernel", _Refused())
    # bf16 where it faults; Triton's interpreter rounds fp32 to bf16 otherwise than torch, so fp32 there.
    dtype = torch.bfloat16 if triton_device == "cuda" else torch.float32
    q = quantize_nf4_reference(weight((48, 64))).to(triton_device)
    wide = torch.full((50, row_stride), float("nan"), device=triton_device, dtype=dtype)
    rows = wide[1:49, :64]
    dequantize_nf4_triton(q, out=rows)
    assert torch.equal(rows.cpu(), dequantize_nf4(q.to("cpu"), dtype))
    assert wide[0].isnan().all() and wide[49].isnan().all() and wide[:, 64:].isnan().all()
