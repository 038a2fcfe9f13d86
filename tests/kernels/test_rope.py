"""RoPE: the reference against a float64 autograd ground truth (CPU), the Triton kernel against the reference (CUDA).

Without a GPU, `TRITON_INTERPRET=1` runs the Triton tests on the CPU in Triton's interpreter (slow; for kernel work).
"""

import zlib

import pytest
import torch

from tunelab.kernels import reference

# (B, T, H, Hk, D): T of 1, 7 and 129; grouped and single kv heads; head dims whose half is not a power of two.
SHAPES = [(1, 1, 1, 1, 64), (2, 7, 5, 1, 96), (1, 129, 8, 2, 128), (3, 7, 6, 3, 80), (2, 13, 4, 4, 6)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]

# Relative error ||a - b|| / ||b|| allowed per dtype. Each output element is two fp32 products and a sum rounded
# once to the dtype, on both sides, so they differ by rounding flips of one ulp (bf16 3.9e-3, fp16 4.9e-4) and
# fp32 products grouped differently (~1e-7); the bounds are about twice one ulp.
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}


def make_inputs(shape, dtype, device="cpu", cos_batch=None):
    B, T, H, Hk, D = shape
    g = torch.Generator().manual_seed(zlib.crc32(repr((shape, dtype)).encode()))
    q = torch.randn(B, T, H, D, generator=g).to(device, dtype)
    k = torch.randn(B, T, Hk, D, generator=g).to(device, dtype)
    # Real RoPE tables repeat their halves; random angles per dim check that the kernel pairs the right halves.
    angles = torch.randn(cos_batch or B, T, D, generator=g) * 10
    cos, sin = angles.cos().to(device, dtype), angles.sin().to(device, dtype)
    dq = torch.randn(q.shape, generator=g).to(device, dtype)
    dk = torch.randn(k.shape, generator=g).to(device, dtype)
    return q, k, cos, sin, dq, dk


def run(fn, q, k, cos, sin, dq, dk):
    q, k = q.detach().clone().requires_grad_(), k.detach().clone().requires_grad_()
    q_out, k_out = fn(q, k, cos, sin)
    torch.autograd.backward((q_out, k_out), (dq, dk))
    return q_out, k_out, q.grad, k.grad


def ground_truth(q, k, cos, sin):
    """y1 = x1 c1 - x2 s1, y2 = x2 c2 + x1 s2 in float64, written out rather than with rotate_half."""
    c, s = cos.double().unsqueeze(2), sin.double().unsqueeze(2)  # (B, T, 1, D)
    half = q.shape[-1] // 2

    def rotate(x):
        x1, x2 = x.double()[..., :half], x.double()[..., half:]
        return torch.cat((x1 * c[..., :half] - x2 * s[..., :half], x2 * c[..., half:] + x1 * s[..., half:]), -1)

    return rotate(q), rotate(k)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_reference_matches_float64_ground_truth(shape, dtype, rel_error):
    inputs = make_inputs(shape, dtype)
    got = run(reference.apply_rope, *inputs)
    want = run(ground_truth, *inputs)
    assert [t.dtype for t in got] == [dtype] * 4
    for g, w in zip(got, want):
        assert rel_error(g, w) < TOL[dtype]


@pytest.mark.triton
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES + [(2, 64, 32, 8, 128)])
def test_triton_matches_reference(shape, dtype, rel_error, triton_device):
    from tunelab.kernels.rope import apply_rope

    inputs = make_inputs(shape, dtype, triton_device)
    got = run(apply_rope, *inputs)
    want = run(reference.apply_rope, *inputs)
    for g, w in zip(got, want):
        assert g.dtype == dtype and rel_error(g, w) < TOL[dtype]


@pytest.mark.triton
def test_triton_broadcast_tables_strided_heads_and_inputs_left_untouched(rel_error, triton_device):
    from tunelab.kernels.rope import apply_rope

    dtype = torch.bfloat16
    q, k, cos, sin, dq, dk = make_inputs((3, 7, 4, 2, 64), dtype, triton_device, cos_batch=1)  # cos/sin (1, T, D)
    # q and k as views into one fused projection output (B, T, H + Hk, D): head stride != contiguous.
    qk = torch.cat((q, k), dim=2)
    q_view, k_view = qk[:, :, :4], qk[:, :, 4:]
    before = qk.clone()
    got = run(apply_rope, q_view, k_view, cos, sin, dq, dk)
    want = run(reference.apply_rope, q, k, cos, sin, dq, dk)
    assert torch.equal(qk, before)
    for g, w in zip(got, want):
        assert rel_error(g, w) < TOL[dtype]


@pytest.mark.triton
def test_triton_backward_survives_in_place_edit_of_inputs(rel_error, triton_device):
    from tunelab.kernels.rope import apply_rope

    q, k, cos, sin, dq, dk = make_inputs((2, 5, 4, 4, 64), torch.float32, triton_device)
    q_leaf, k_leaf = q.clone().requires_grad_(), k.clone().requires_grad_()
    q_in, k_in = q_leaf * 1, k_leaf * 1  # non-leaf tensors, as a model's projections are
    q_out, k_out = apply_rope(q_in, k_in, cos, sin)
    q_in.zero_()  # would break a backward that had saved q
    torch.autograd.backward((q_out, k_out), (dq, dk))
    want = run(reference.apply_rope, q, k, cos, sin, dq, dk)
    assert rel_error(q_leaf.grad, want[2]) < TOL[torch.float32]
    assert rel_error(k_leaf.grad, want[3]) < TOL[torch.float32]
