"""FP8 products of a frozen NF4 base (`quant.fp8`, train.fp8): the scaling arithmetic, the autograd nodes over it (a
plain NF4 layer and a LoRA layer, run on the CPU through the torch reference of every step), and on a GPU the Triton
kernels against that reference bit for bit and torch._scaled_mm against the fp32 product of the same FP8 operands.
"""

import zlib

import pytest
import torch
from torch import nn

from tunelab.errors import ConfigError
from tunelab.peft.lora_linear import LoRALinear
from tunelab.quant import fp8
from tunelab.quant.linear import NF4Linear, use_fp8_
from tunelab.quant.nf4 import dequantize_nf4
from tunelab.quant.nf4_ops import quantize_nf4

CUDA = torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)
needs_fp8_gpu = pytest.mark.skipif(not CUDA, reason="needs a GPU with FP8 tensor cores (compute capability 8.9+)")


def randn(*shape, std=1.0, device="cpu", dtype=torch.float32):
    g = torch.Generator().manual_seed(zlib.crc32(repr(shape).encode()))
    return (torch.randn(*shape, generator=g) * std).to(device, dtype)


def nf4_layer(n_out=64, n_in=128, device="cpu"):
    linear = nn.Linear(n_in, n_out, bias=False)
    with torch.no_grad():
        linear.weight.copy_(randn(n_out, n_in, std=0.02))
    return NF4Linear.from_linear(linear, device=device)


def test_row_quantization_scales_each_row_to_the_format_and_back():
    x = randn(6, 96, std=3.0)
    x[1, 5] = 900.0  # an outlier only scales its own row
    x[4] = 0.0  # a zero row gets a finite scale and zero codes
    q, scale = fp8.quantize_rows_reference(x)
    assert q.dtype == fp8.E4M3 and scale.shape == (6, 1)
    assert torch.equal(q.float().abs().amax(dim=1)[[0, 1, 2, 3, 5]], torch.full((5,), 448.0))
    assert torch.equal(q[4].float(), torch.zeros(96)) and torch.isfinite(scale).all()
    back = q.float() * scale
    rows = [0, 2, 3, 5]  # e4m3: 3 mantissa bits, a relative step of at most 1/16 on normal values
    assert ((back[rows] - x[rows]).norm() / x[rows].norm()).item() < 0.04
    assert back[1, 5].item() == 900.0


def test_the_weight_scale_comes_from_the_largest_block_absmax():
    layer = nf4_layer()
    w = dequantize_nf4(layer.nf4(), torch.float32)
    factor = fp8.weight_scale(layer.nf4())
    assert torch.allclose(factor, 448.0 / w.abs().max(), rtol=1e-6)
    q = fp8.weight_fp8_reference(layer.nf4(), factor)
    assert q.float().abs().max().item() == 448.0
    back = q.float() / factor
    assert ((back - w).norm() / w.norm()).item() < 0.04


def test_scaled_mm_reference_is_the_product_of_the_scaled_operands():
    a, b = randn(5, 32), randn(7, 32, std=0.1)
    qa, sa = fp8.quantize_rows_reference(a)
    qb, sb = fp8.quantize_rows_reference(b)
    out = fp8.scaled_mm_reference(qa, sa, qb, sb.T, torch.float32)
    assert torch.allclose(out, (qa.float() * sa) @ (qb.float() * sb).T)
    assert ((out - a @ b.T).norm() / (a @ b.T).norm()).item() < 0.08


@pytest.mark.parametrize("bias", [False, True])
def test_an_fp8_nf4_layer_computes_the_fp8_products_forward_and_backward(bias):
    layer = nf4_layer()
    if bias:
        layer.bias = nn.Parameter(randn(64, std=0.1), requires_grad=False)
    x = randn(2, 3, 128, std=2.0).requires_grad_(True)
    exact = layer(x)
    assert use_fp8_(layer) == 1
    y = layer(x)
    q = layer.nf4()
    factor = fp8.weight_scale(q)
    wq = fp8.weight_fp8_reference(q, factor)
    xq, xs = fp8.quantize_rows_reference(x.detach().reshape(6, 128))
    expected = fp8.scaled_mm_reference(xq, xs, wq, (1 / factor).expand(1, 64), torch.float32)
    if bias:
        expected = expected + layer.bias
    assert torch.equal(y.detach().reshape(6, 64), expected)
    assert 0 < ((y - exact).norm() / exact.norm()).item() < 0.08
    g = randn(2, 3, 64)
    (dx,) = torch.autograd.grad(y, x, g)
    gq, gs = fp8.quantize_rows_reference(g.reshape(6, 64))
    expected_dx = fp8.scaled_mm_reference(gq, gs, wq.T.contiguous(), (1 / factor).expand(1, 128), torch.float32)
    assert torch.equal(dx.reshape(6, 128), expected_dx)
    assert use_fp8_(layer, on=False) == 1 and layer.fp8 is None
    assert torch.equal(layer(x), exact)


def test_lora_over_an_fp8_base_leaves_the_adapter_products_exact():
    """A loss linear in the output gives the same output gradient with and without FP8, so dA and dB, which the
    adapter computes in full precision from that gradient and x, are the same; only the base's parts differ."""
    torch.manual_seed(0)
    lora = LoRALinear(nf4_layer(), r=4, alpha=8)
    with torch.no_grad():
        lora.lora_B.weight.normal_(0, 0.1)
    x = randn(10, 128, std=2.0)
    c = randn(10, 64)

    def grads():
        xx = x.clone().requires_grad_(True)
        y = lora(xx)
        (y * c).sum().backward()
        out = y.detach(), xx.grad, lora.lora_A.weight.grad.clone(), lora.lora_B.weight.grad.clone()
        lora.zero_grad(set_to_none=True)
        return out

    y16, dx16, da16, db16 = grads()
    use_fp8_(lora)
    y8, dx8, da8, db8 = grads()
    assert torch.allclose(da8, da16, rtol=1e-5, atol=1e-6) and torch.allclose(db8, db16, rtol=1e-5, atol=1e-6)
    assert 0 < ((y8 - y16).norm() / y16.norm()).item() < 0.08
    assert 0 < ((dx8 - dx16).norm() / dx16.norm()).item() < 0.08
    # the recomputation node (output=False) records backward without a product
    xx = x.clone().requires_grad_(True)
    lora.grad_only(xx)


def test_use_fp8_refuses_a_width_not_divisible_by_16_before_changing_any_layer():
    model = nn.Sequential(nf4_layer(64, 128), nf4_layer(40, 64))
    with pytest.raises(ConfigError, match=r"layer 1 is 40 x 64; .*divisible by 16.*train.fp8: false"):
        use_fp8_(model)
    assert all(m.fp8 is None for m in model)


def test_fp8_is_unsupported_off_cuda():
    assert "CUDA GPU" in fp8.unsupported_reason(torch.device("cpu"))


@needs_fp8_gpu
@pytest.mark.parametrize("shape", [(5, 96), (3, 5000), (8192, 4096), (17, 11008)])
def test_the_row_kernel_equals_the_reference_bit_for_bit(shape):
    x = randn(*shape, std=3.0, device="cuda", dtype=torch.bfloat16)
    x[0, 3] = 900.0
    x[-1] = 0.0
    q, s = fp8.quantize_rows(x)
    qr, sr = fp8.quantize_rows_reference(x)
    assert torch.equal(q.view(torch.uint8), qr.view(torch.uint8)) and torch.equal(s, sr)


@needs_fp8_gpu
@pytest.mark.parametrize("shape", [(64, 128), (1376, 4096)])
def test_the_nf4_to_fp8_kernel_equals_the_reference_bit_for_bit(shape):
    q = quantize_nf4(randn(*shape, std=0.02, device="cuda"))
    factor = fp8.weight_scale(q)
    assert torch.equal(
        fp8.weight_fp8(q, factor).view(torch.uint8), fp8.weight_fp8_reference(q, factor).view(torch.uint8)
    )


@needs_fp8_gpu
@pytest.mark.parametrize("shape", [(64, 128), (1376, 4096), (100, 48)])
def test_the_transposing_kernel_equals_the_reference_bit_for_bit(shape):
    from tunelab.quant.fp8_triton import dequantize_transposed

    q = quantize_nf4(randn(*shape, std=0.02, device="cuda"))
    factor = fp8.weight_scale(q)
    want = fp8.weight_fp8_reference(q, factor).T.contiguous()
    assert torch.equal(dequantize_transposed(q, factor).view(torch.uint8), want.view(torch.uint8))
    wide = torch.zeros(shape[1], shape[0] + 32, dtype=fp8.E4M3, device="cuda")  # into columns of a wider matrix
    dequantize_transposed(q, factor, out=wide[:, 16 : 16 + shape[0]])
    assert torch.equal(wide[:, 16 : 16 + shape[0]].view(torch.uint8), want.view(torch.uint8))
    assert not wide[:, :16].view(torch.uint8).any() and not wide[:, 16 + shape[0] :].view(torch.uint8).any()


@needs_fp8_gpu
@pytest.mark.parametrize("m", [8192, 1000, 7])
def test_scaled_mm_on_the_gpu_is_the_product_of_its_fp8_operands(m):
    a, b = randn(m, 4096, device="cuda", dtype=torch.bfloat16), randn(1024, 4096, std=0.02, device="cuda")
    qa, sa = fp8.quantize_rows(a)
    qb, sb = fp8.quantize_rows_reference(b)
    out = fp8.scaled_mm(qa, sa, qb, sb.T.contiguous(), torch.bfloat16)
    ref = fp8.scaled_mm_reference(qa, sa, qb, sb.T, torch.float32)
    assert out.dtype == torch.bfloat16 and ((out.float() - ref).norm() / ref.norm()).item() < 0.01


def test_one_input_read_by_several_layers_is_quantized_once(monkeypatch):
    calls = []
    real = fp8.quantize_rows
    monkeypatch.setattr(fp8, "quantize_rows", lambda x: calls.append(x.shape) or real(x))
    q, k = nf4_layer(64, 128), nf4_layer(32, 128)
    use_fp8_(q)
    use_fp8_(k)
    x = randn(4, 128)
    q(x), k(x)
    assert len(calls) == 1
    x.mul_(2.0)  # written in place: its version moves, so it is quantized again
    assert torch.equal(k(x), k(x.clone()))
    assert len(calls) == 3


@pytest.mark.parametrize(
    "options, refused",
    [
        ({}, "method.quantize_base is none; it runs the products of a base quantized to NF4"),
        ({"method.quantize_base": "nf4", "method.name": "dora"}, "DoRA rescales the base's rows"),
        ({"method.quantize_base": "nf4", "train.sharding": "fsdp2"}, "use train.sharding ddp"),
        ({"method.quantize_base": "nf4", "train.cuda_graphs": True}, "which train.cuda_graphs true does not capture"),
    ],
)
def test_train_fp8_where_it_cannot_apply_is_refused_with_the_reason(options, refused):
    from tunelab.config import load_config

    values = {"model.name": "x", "data.train": ["qa.jsonl"], "train.fp8": True} | options
    with pytest.raises(ConfigError, match=r"option 'train.fp8' is true, but .*" + refused.replace(".", r"\.")):
        load_config(None, values)
    load_config(None, values | {"train.fp8": False})  # the same config without it is fine


def test_train_fp8_off_a_gpu_with_fp8_tensor_cores_exits_2_naming_the_device(tiny_overrides, capsys):
    from tunelab.cli import main
    from tunelab.config import load_config

    load_config(None, tiny_overrides | {"method.quantize_base": "nf4", "train.fp8": True})  # the options agree
    flags = [f"--{k}={v}" for k, v in tiny_overrides.items() if k != "data.train"]
    code = main(["train", f"--data.train={tiny_overrides['data.train'][0]}", *flags, "--method.quantize_base=nf4",
                 "--train.fp8=true", "--model.device=cpu"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert (
        "option 'train.fp8' is true, but FP8 products need a CUDA GPU with FP8 tensor cores (this run is on cpu)" in err
    )
