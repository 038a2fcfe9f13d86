"""Causal attention: the reference against a float64 ground truth with an explicit mask (CPU), the fast version
(torch's cuDNN/flash SDPA and varlen kernels) against the reference: outputs and dq, dk, dv, for plain, right-padded
and packed batches. The fast SDPA path also runs on the CPU, so part of its check runs there too.
"""

import zlib

import pytest
import torch

from tunelab.kernels import reference
from tunelab.kernels.attention import attention

# (B, T, H, Hk, D): T of 1, 7, 129; grouped-query (H/Hk = 2, 4) and plain heads; head dims 16 to 128.
SHAPES = [(2, 1, 2, 1, 16), (2, 7, 4, 2, 32), (1, 129, 4, 4, 64), (3, 37, 8, 2, 80)]
GPU_SHAPES = SHAPES + [(1, 257, 32, 8, 128), (2, 300, 8, 8, 128)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
MODES = ["plain", "padded", "packed"]

# Reference vs float64 truth, relative error: SDPA rounds q k^T, the probabilities and the output to the dtype at
# most once each on the CPU, so a few ulps (bf16 3.9e-3, fp16 4.9e-4); fp32 differs by summation order only.
TRUTH_TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 3e-3}
# Fast vs reference on CUDA: two different fused kernels (cuDNN or flash against flash, memory-efficient or math),
# each with fp32 accumulators but with P rounded to the dtype before P @ V in a different tiling: a few ulps.
# fp32 never reaches the flash/cuDNN kernels (they take 16-bit only); the memory-efficient kernel and the math
# path differ by summation order.
FAST_TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 3e-3}
# Relative errors divide by ||expected|| floored at an RMS of 0.05: with T == 1 the exact dq is zero (one key, softmax
# constant) and the kernels return rounding noise there.
RMS_FLOOR = 0.05


def make_case(shape, dtype, mode, device="cpu"):
    """q, k, v, dout, kwargs for `attention`, and the (B, T) mask of positions whose output counts."""
    B, T, H, Hk, D = shape
    if mode == "packed":
        B = 1
    g = torch.Generator().manual_seed(zlib.crc32(repr((shape, dtype, mode)).encode()))
    q, dout = (torch.randn(B, T, H, D, generator=g).to(device, dtype) for _ in range(2))
    k, v = (torch.randn(B, T, Hk, D, generator=g).to(device, dtype) for _ in range(2))
    counts = torch.ones(B, T, device=device)
    kwargs = {}
    if mode == "padded":  # right padding: row b keeps its first T - 3b tokens (at least one)
        lengths = [max(1, T - 3 * b) for b in range(B)]
        mask = torch.tensor([[1] * n + [0] * (T - n) for n in lengths], device=device)
        kwargs["attention_mask"] = mask
        counts = mask.float()
    if mode == "packed":  # documents of ragged lengths, an empty one, and trailing positions past the last boundary
        cuts = sorted({0, T // 3, T // 3, (2 * T) // 3, T - T // 5})
        kwargs["cu_seqlens"] = torch.tensor(cuts + [T - T // 5], dtype=torch.int32, device=device)
    return q, k, v, dout, kwargs, counts


def run(fn, q, k, v, dout, kwargs, counts):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = fn(q, k, v, **kwargs)
    weight = counts[:, :, None, None].to(out.dtype)  # padded positions carry no loss
    out.backward(dout * weight)
    return out * weight, q.grad, k.grad, v.grad


def ground_truth(q, k, v, cu_seqlens=None, attention_mask=None):
    """softmax(q k^T / sqrt(D) + mask) v in float64 with the mask built position by position."""
    B, T, H, D = q.shape
    groups = H // k.shape[2]
    q64, k64, v64 = (t.double().transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
    k64, v64 = k64.repeat_interleave(groups, 1), v64.repeat_interleave(groups, 1)
    causal = torch.ones(T, T).tril().bool()  # (T, T): query i sees key j <= i
    if cu_seqlens is not None:  # same document; positions past the last boundary form one more
        bounds = cu_seqlens.tolist()
        doc = torch.tensor([sum(c <= i for c in bounds[1:]) if i < bounds[-1] else -1 for i in range(T)])
        allowed = (causal & (doc[:, None] == doc[None, :]))[None].expand(B, T, T)
    elif attention_mask is not None:  # real keys only, and a padded query sees itself
        allowed = causal[None] & attention_mask.cpu().bool()[:, None, :] | torch.eye(T, dtype=torch.bool)[None]
    else:
        allowed = causal[None].expand(B, T, T)
    scores = q64 @ k64.transpose(-1, -2) / D**0.5
    scores = scores.masked_fill(~allowed[:, None].to(q.device), float("-inf"))
    return (scores.softmax(-1) @ v64).transpose(1, 2)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES[:3])
def test_reference_matches_float64_ground_truth(shape, dtype, mode, rel_error):
    case = make_case(shape, dtype, mode)
    got = run(reference.attention, *case)
    want = run(ground_truth, *case)
    for g, w in zip(got, want):
        assert g.dtype == dtype and rel_error(g, w, RMS_FLOOR) < TRUTH_TOL[dtype]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", SHAPES)
def test_fast_matches_reference_on_cpu(shape, mode, rel_error):
    case = make_case(shape, torch.float32, mode)
    for g, w in zip(run(attention, *case), run(reference.attention, *case)):
        assert rel_error(g, w, RMS_FLOOR) < TRUTH_TOL[torch.float32]


@pytest.mark.gpu
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", GPU_SHAPES)
def test_fast_matches_reference_on_cuda(shape, dtype, mode, rel_error):
    case = make_case(shape, dtype, mode, "cuda")
    got = run(attention, *case)
    want = run(reference.attention, *case)
    for g, w in zip(got, want):
        assert g.dtype == dtype and rel_error(g, w, RMS_FLOOR) < FAST_TOL[dtype]


@pytest.mark.gpu
def test_packed_takes_cu_seqlens_on_either_device(rel_error):
    q, k, v, dout, kwargs, counts = make_case((1, 129, 8, 2, 64), torch.bfloat16, "packed", "cuda")
    on_gpu = attention(q, k, v, **kwargs)
    on_cpu = attention(q, k, v, cu_seqlens=kwargs["cu_seqlens"].cpu())
    assert torch.equal(on_gpu, on_cpu)
    bounds, longest = reference.document_bounds(kwargs["cu_seqlens"], q.shape[1])  # as the model passes them
    assert torch.equal(attention(q, k, v, cu_seqlens=bounds, max_seqlen=longest), on_gpu)
    assert rel_error(on_gpu, reference.attention(q, k, v, **kwargs), RMS_FLOOR) < FAST_TOL[torch.bfloat16]


def test_packed_needs_a_batch_of_one():
    q = torch.randn(2, 5, 2, 8)
    with pytest.raises(ValueError, match="batch of one row"):
        attention(q, q, q, cu_seqlens=torch.tensor([0, 5], dtype=torch.int32))


def test_document_bounds_add_the_trailing_positions_as_a_document():
    """What the model reads once per packed forward and hands to every layer (max_seqlen) instead of each layer's
    attention reading the boundaries again."""
    cu_seqlens = torch.tensor([0, 3, 7], dtype=torch.int32)
    cu, longest = reference.document_bounds(cu_seqlens, 10)
    assert cu.tolist() == [0, 3, 7, 10] and longest == 4  # the trailing 3 positions form one more document
    assert cu.dtype == torch.int32 and cu.device == cu_seqlens.device
    cu_seqlens[2] = 8  # changed in place: read again
    assert reference.document_bounds(cu_seqlens, 10)[1] == 5
    assert reference.document_bounds(torch.tensor([0, 4, 10], dtype=torch.int32), 10)[0].tolist() == [0, 4, 10]
