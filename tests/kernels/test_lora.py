"""LoRA linear: the reference against a float64 ground truth (CPU), the fused autograd node against the reference
(CPU always, CUDA when present): output and the gradients of x, A, B (and of W and b when they ask for one),
with and without dropout, over a 16-bit weight and over an NF4 weight dequantized on demand (QLoRA). Dropout masks
agree because both draw them with `reference.dropout_keep_mask`.
"""

import zlib
from functools import partial

import pytest
import torch

from tunelab.kernels import reference
from tunelab.kernels.lora import lora_linear
from tunelab.quant.nf4 import dequantize_nf4, quantize_nf4_reference
from tunelab.quant.nf4_ops import DequantWorkspace, dequantize, quantize_nf4

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

# (leading dims of x, in, out, rank): one token, odd widths, ranks 1 to 16.
SHAPES = [((1,), 577, 31, 8), ((7,), 1000, 129, 1), ((2, 13), 97, 1031, 16), ((3, 5), 64, 48, 4)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
SCALE = 2.0  # lora_alpha / r

# Relative error ||a - b|| / ||b||. Against float64 truth: the reference rounds the base output, the rank-r
# intermediate, the update and the sum to the dtype, a few ulps of bf16 (3.9e-3) / fp16 (4.9e-4); the bounds are
# about four ulps. fp32 differs by summation order over up to 1000 terms.
TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 3e-3}
# Fused vs reference: the fused node adds the update with one addmm (one rounding instead of two) and computes
# dx as one sum of two GEMMs: one or two ulps apart.
FUSED_TOL = {torch.float32: 1e-5, torch.bfloat16: 1.5e-2, torch.float16: 2e-3}


def make_inputs(shape, dtype, device="cpu", frozen=True):
    lead, n_in, n_out, rank = shape
    g = torch.Generator().manual_seed(zlib.crc32(repr((shape, dtype)).encode()))
    x = torch.randn(*lead, n_in, generator=g).to(device, dtype)
    weight = (torch.randn(n_out, n_in, generator=g) / n_in**0.5).to(device, dtype).requires_grad_(not frozen)
    bias = torch.randn(n_out, generator=g).to(device, dtype).requires_grad_(not frozen)
    # Adapters in fp32 over a base in `dtype`, as mixed-precision LoRA training keeps them.
    lora_a = (torch.randn(rank, n_in, generator=g) / n_in**0.5).to(device).requires_grad_()
    lora_b = torch.randn(n_out, rank, generator=g).to(device).requires_grad_()
    dy = torch.randn(*lead, n_out, generator=g).to(device, dtype)
    return [x.requires_grad_(), weight, bias, lora_a, lora_b], dy


def run(fn, inputs, dy, dropout_p=0.0, seed=0):
    leaves = [t.detach().clone().requires_grad_(t.requires_grad) for t in inputs]
    torch.manual_seed(seed)  # the same dropout mask on both sides
    y = fn(*leaves, SCALE, dropout_p, dropout_p > 0)
    y.backward(dy)
    return [y] + [t.grad for t in leaves]


def ground_truth(x, weight, bias, lora_a, lora_b, scale, dropout_p, training):
    x64 = x.double()
    dropped = x64
    if training and dropout_p > 0:
        dropped = x64 * reference.dropout_keep_mask(x, dropout_p) / (1 - dropout_p)
    return x64 @ weight.double().T + bias.double() + scale * (dropped @ lora_a.double().T) @ lora_b.double().T


def check(got, want, tol, frozen, rel_error):
    assert got[0].dtype == want[0].dtype
    for i, (g, w) in enumerate(zip(got, want)):
        if frozen and i in (2, 3):  # W and b
            assert g is None
        else:
            assert g.dtype == w.dtype and rel_error(g, w) < tol, i


@pytest.mark.parametrize("dropout_p", [0.0, 0.25])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_reference_matches_float64_ground_truth(shape, dtype, dropout_p, rel_error):
    inputs, dy = make_inputs(shape, dtype)
    got = run(reference.lora_linear, inputs, dy, dropout_p)
    want = run(ground_truth, inputs, dy, dropout_p)
    # The truth's output and grads are float64; compare values, dtype checks belong to the fused test.
    for i, (g, w) in enumerate(zip(got, want)):
        assert (g is None) == (w is None)
        if g is not None:
            assert rel_error(g, w) < TOL[dtype], i


@pytest.mark.parametrize("frozen", [True, False])
@pytest.mark.parametrize("dropout_p", [0.0, 0.25])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
def test_fused_matches_reference_on_cpu(shape, dtype, dropout_p, frozen, rel_error):
    inputs, dy = make_inputs(shape, dtype, frozen=frozen)
    check(run(lora_linear, inputs, dy, dropout_p), run(reference.lora_linear, inputs, dy, dropout_p), FUSED_TOL[dtype],
          frozen, rel_error)  # fmt: skip


@pytest.mark.gpu
@pytest.mark.parametrize("frozen", [True, False])
@pytest.mark.parametrize("dropout_p", [0.0, 0.25])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES + [((2, 13), 97, 4099, 16), ((4, 512), 4096, 4096, 16)])
def test_fused_matches_reference_on_cuda(shape, dtype, dropout_p, frozen, rel_error):
    inputs, dy = make_inputs(shape, dtype, "cuda", frozen=frozen)
    check(run(lora_linear, inputs, dy, dropout_p), run(reference.lora_linear, inputs, dy, dropout_p), FUSED_TOL[dtype],
          frozen, rel_error)  # fmt: skip


def test_dropout_is_off_outside_training_and_keeps_one_minus_p():
    inputs, dy = make_inputs(((64,), 97, 31, 4), torch.float32)
    x, weight, bias, lora_a, lora_b = inputs
    eval_out = lora_linear(x, weight, bias, lora_a, lora_b, SCALE, 0.5, False)
    plain = lora_linear(x, weight, bias, lora_a, lora_b, SCALE, 0.0, False)
    assert torch.equal(eval_out, plain)
    torch.manual_seed(3)
    kept = reference.dropout_keep_mask(torch.empty(200, 500), 0.25).float().mean().item()
    assert abs(kept - 0.75) < 0.01  # 100k draws: standard error 0.0014
    train_out = lora_linear(x, weight, bias, lora_a, lora_b, SCALE, 0.5, True)
    assert not torch.allclose(train_out, plain)


# Over an NF4 base (QLoRA), against autograd through the same dequantized weight: FUSED_TOL's reasons. On CPU and CUDA.
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("train_bias", [False, True])
@pytest.mark.parametrize("dropout_p", [0.0, 0.25])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [((7,), 1000, 129, 1), ((2, 13), 97, 1031, 16), ((3, 5), 64, 48, 4)])
def test_nf4_lora_linear_matches_autograd_reference(shape, dtype, dropout_p, train_bias, device, rel_error):
    lead, n_in, n_out, rank = shape
    g = torch.Generator().manual_seed(zlib.crc32(repr((shape, dtype)).encode()))
    q = quantize_nf4((torch.randn(n_out, n_in, generator=g) / n_in**0.5).to(device, dtype))
    x = torch.randn(*lead, n_in, generator=g).to(device, dtype)
    bias = torch.randn(n_out, generator=g).to(device, dtype)
    lora_a = (torch.randn(rank, n_in, generator=g) / n_in**0.5).to(device)
    lora_b = torch.randn(n_out, rank, generator=g).to(device)
    dy = torch.randn(*lead, n_out, generator=g).to(device, dtype)
    w = dequantize_nf4(q.to("cpu"), dtype).to(device)

    def fused(x, bias, a, b):  # W given as a function: dequantized in forward and again in backward, never saved
        weight = partial(dequantize, q, workspace=DequantWorkspace())
        return lora_linear(x, weight, bias, a, b, SCALE, dropout_p, dropout_p > 0)

    def ref(x, bias, a, b):
        return reference.lora_linear(x, w, bias, a, b, SCALE, dropout_p, dropout_p > 0)

    results = []
    for fn in (fused, ref):
        leaves = [x.clone().requires_grad_(), bias.clone().requires_grad_(train_bias), lora_a.clone().requires_grad_(),
                  lora_b.clone().requires_grad_()]  # fmt: skip
        torch.manual_seed(0)  # the same dropout mask on both sides
        y = fn(*leaves)
        y.backward(dy)
        results.append([y] + [t.grad for t in leaves])
    for i, (got, want) in enumerate(zip(*results)):
        if i == 2 and not train_bias:
            assert got is None and want is None
            continue
        assert got.dtype == want.dtype and rel_error(got, want) < FUSED_TOL[dtype], i


@pytest.mark.parametrize("nf4", [False, True])
def test_residual_is_added_inside_the_gemm_with_its_gradient(nf4):
    """lora_linear(..., residual=r) == r + the same call without it, values and gradients (the residual's own gradient
    is dy), over a 16-bit and an NF4 weight; the decoder adds its residual stream this way."""

    torch.manual_seed(0)
    w = torch.randn(24, 16) * 0.2
    q = quantize_nf4_reference(w)
    weight = dequantize_nf4(q, torch.float32)
    results = []
    for with_residual in (False, True):
        x = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
        r = torch.randn(2, 5, 24, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
        a = (torch.randn(4, 16, generator=torch.Generator().manual_seed(3)) * 0.1).requires_grad_(True)
        b = (torch.randn(24, 4, generator=torch.Generator().manual_seed(4)) * 0.1).requires_grad_(True)
        extra = r if with_residual else None
        if nf4:
            y = lora_linear(x, partial(dequantize, q, workspace=None), None, a, b, 2.0, residual=extra)
        else:
            y = lora_linear(x, weight, None, a, b, 2.0, residual=extra)
        if not with_residual:
            y = r + y
        y.backward(torch.randn(2, 5, 24, generator=torch.Generator().manual_seed(5)))
        results.append((y.detach(), x.grad, r.grad, a.grad, b.grad))
    for got, want in zip(results[1], results[0]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_dropout_backward_frees_the_dropped_input_before_dx(monkeypatch):
    """With LoRA dropout, backward's dropped input x keep / (1 - p), (N, in), stayed alive until it returned, beside
    dx's (N, in) buffers; it is now freed once dA is computed. The gradients are bit for bit those of the same ops."""
    import weakref

    import tunelab.kernels.lora as lora_mod

    torch.manual_seed(0)
    n, width, out, r, p, dtype = 13, 97, 31, 4, 0.25, torch.bfloat16
    x2, g = torch.randn(n, width, dtype=dtype), torch.randn(n, out, dtype=dtype)
    a, b, w = (torch.randn(*shape, dtype=dtype) for shape in ((r, width), (out, r), (out, width)))
    keep = reference.dropout_keep_mask(x2, p)
    xa = (x2 * keep / (1.0 - p)) @ a.T
    leaf_a, leaf_b = torch.zeros(r, width), torch.zeros(out, r)  # fp32 adapters, gradients returned
    dropped, alive = [], []
    grad = lora_mod._grad

    def spy(leaf, m1, m2, alpha, grad_dtype):
        if leaf is leaf_a:
            dropped.append(weakref.ref(m2))
        return grad(leaf, m1, m2, alpha, grad_dtype)

    def weight_fn(g):  # the base's part of dx, called after dA
        alive.append(dropped[0]() is not None)
        return g @ w

    monkeypatch.setattr(lora_mod, "_grad", spy)
    dx, da, db = lora_mod._lora_backward(g, x2, xa, a, b, weight_fn, SCALE, keep, p, True, True, True, leaf_a, leaf_b)
    assert alive == [False]
    gxa = (g @ b).mul_(SCALE)
    assert torch.equal(da, torch.mm(gxa.T, x2 * keep / (1.0 - p)).float())
    assert torch.equal(db, torch.mm(g.T, xa).mul_(SCALE).float())
    assert torch.equal(dx, (g @ w).add_((gxa @ a) * keep, alpha=1.0 / (1.0 - p)))
