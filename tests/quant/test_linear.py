"""The frozen NF4 linear layer (QLoRA's base): its forward is F.linear of the dequantized weight, its state dict and
dtype moves keep the format, its input gradient uses the dequantized weight, the workspace is reused (or, for FSDP2,
not), its state can be held as frozen Parameters (which FSDP2 shards), and putting NF4 layers into a model (from 16-bit weights, or from the meta device) frees the 16-bit weights one at a time.
Runs on CUDA too when there is one (NF4 layers then dequantize with the Triton kernel).
"""

import gc
import math
import weakref
import zlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tunelab.errors import ConfigError
from tunelab.kernels import select
from tunelab.models.llama import LlamaConfig, LlamaForCausalLM
from tunelab.quant.linear import NF4Linear, materialize_quantized_, nf4_linear, quantize_model_
from tunelab.quant.nf4 import dequantize_nf4
from tunelab.quant.nf4_ops import DequantWorkspace, quantize_nf4

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def weight(shape, dtype=torch.float32, std=0.02, device="cpu"):
    g = torch.Generator().manual_seed(zlib.crc32(repr((shape, dtype)).encode()))
    return (torch.randn(*shape, generator=g) * std).to(device, dtype)


def make_linear(n_in, n_out, dtype, device, bias=True):
    torch.manual_seed(n_in * 31 + n_out)
    linear = nn.Linear(n_in, n_out, bias=bias).to(device, dtype)
    nn.init.normal_(linear.weight, std=n_in**-0.5)
    return linear


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_nf4_linear_forward_is_linear_of_the_dequantized_weight(dtype, device):
    linear = make_linear(97, 129, dtype, device)
    layer = NF4Linear.from_linear(linear)
    assert (layer.in_features, layer.out_features) == (97, 129) and not hasattr(layer, "weight")
    assert not any(p.requires_grad for p in layer.parameters())
    x = torch.randn(3, 5, 97, device=device).to(dtype)
    deq = layer.dequantized()
    assert deq.dtype == dtype and deq.shape == (129, 97)
    assert torch.equal(layer(x), F.linear(x, deq, linear.bias.detach()))
    assert torch.equal(deq.cpu(), dequantize_nf4(layer.nf4().to("cpu"), dtype))  # on CUDA: the Triton kernel
    # Close to the 16-bit layer: NF4 moves each weight by ~9% of the weight scale, outputs by about as much.
    ref = linear(x)
    assert ((layer(x) - ref).float().norm() / ref.float().norm()).item() < 0.15


def test_nf4_linear_state_dict_round_trip_and_dtype_moves_keep_the_format():
    linear = make_linear(64, 48, torch.float32, "cpu")
    layer = NF4Linear.from_linear(linear)
    keys = set(layer.state_dict())
    assert keys == {"weight_packed", "weight_absmax_q", "weight_absmax2", "weight_offset", "bias"}
    other = NF4Linear.from_linear(make_linear(64, 48, torch.float32, "cpu"))
    other.load_state_dict(layer.state_dict())
    assert torch.equal(other.dequantized(), layer.dequantized())
    before = layer.dequantized()
    layer.to(torch.bfloat16)
    assert layer.weight_absmax2.dtype == torch.float32 and layer.nf4_code.dtype == torch.float32
    assert layer.bias.dtype == torch.bfloat16 and layer.weight_dtype == torch.float32
    assert torch.equal(layer.dequantized(), before)
    x = torch.randn(2, 64, dtype=torch.bfloat16)
    assert layer(x).dtype == torch.bfloat16


@pytest.mark.parametrize("device", DEVICES)
def test_nf4_state_as_parameters_keeps_names_tensors_and_results(device):
    """What FSDP2 shards (`as_parameters_`): the same tensors under the same names, now frozen Parameters; the forward,
    the state dict and dtype moves are unchanged."""
    layer = NF4Linear.from_linear(make_linear(64, 48, torch.float32, device))
    x = torch.randn(3, 64, device=device)
    before, state = layer(x), {k: v.clone() for k, v in layer.state_dict().items()}
    packed = layer.weight_packed
    layer.as_parameters_(DequantWorkspace(reuse=False))
    assert layer.weight_packed is not None and layer.weight_packed.data_ptr() == packed.data_ptr()
    names = {n for n, p in layer.named_parameters() if not p.requires_grad}
    assert names == {"weight_packed", "weight_absmax_q", "weight_absmax2", "bias"}
    assert {n for n, _ in layer.named_buffers()} == {"weight_offset", "nf4_code", "absmax_code"}
    assert layer.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in layer.state_dict().items())
    assert torch.equal(layer(x), before)
    layer.to(torch.bfloat16)
    assert isinstance(layer.weight_packed, nn.Parameter) and not layer.weight_packed.requires_grad
    assert layer.weight_packed.dtype == torch.uint8 and layer.weight_absmax2.dtype == torch.float32
    assert torch.equal(
        layer.dequantized(torch.float32),
        NF4Linear.from_linear(make_linear(64, 48, torch.float32, device)).dequantized(torch.float32),
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the workspace holds Triton dequantizations: needs CUDA")
def test_workspace_without_reuse_dequantizes_every_time():
    """reuse=False (FSDP2): a weight is written again even when its (address, version) key says it is held."""
    q = quantize_nf4(weight((48, 64), device="cuda"))
    for reuse in (True, False):
        ws = DequantWorkspace(reuse=reuse)
        first = ws.weight(q, torch.bfloat16).clone()
        ws.weight(q, torch.bfloat16).fill_(7.0)  # someone else's weight at the same address (FSDP2's next gather)
        again = ws.weight(q, torch.bfloat16)
        assert torch.equal(again, first) != reuse


@pytest.mark.parametrize("device", DEVICES)
def test_nf4_linear_gradient_of_x_uses_the_dequantized_weight(device, rel_error):
    q = quantize_nf4(weight((40, 72), device=device))
    x = torch.randn(6, 72, device=device, requires_grad=True)
    bias = torch.randn(40, device=device, requires_grad=True)
    dy = torch.randn(6, 40, device=device)
    nf4_linear(x, q, bias).backward(dy)
    w = dequantize_nf4(q.to("cpu"), torch.float32).to(device)
    assert rel_error(x.grad, dy @ w) < 1e-6 and rel_error(bias.grad, dy.sum(0)) < 1e-6


def test_workspace_is_reused_and_regrown():
    ws = DequantWorkspace()
    a = ws.get((4, 8), torch.float32, torch.device("cpu"))
    b = ws.get((2, 3), torch.float32, torch.device("cpu"))
    assert a.data_ptr() == b.data_ptr()
    c = ws.get((10, 10), torch.float32, torch.device("cpu"))
    assert c.shape == (10, 10) and ws.get((10, 10), torch.bfloat16, torch.device("cpu")).dtype == torch.bfloat16


TINY = dict(model_type="llama", hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=176, vocab_size=128, rms_norm_eps=1e-5, max_position_embeddings=256,
            rope_theta=10000.0)  # fmt: skip
PROJ = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def tiny_model(device="cpu"):
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig.from_hf(TINY), select("reference")).to(device)
    model.init_weights(std=0.05)
    return model.eval()


@pytest.mark.parametrize("device", DEVICES)
def test_quantize_model_replaces_every_decoder_linear_and_frees_the_originals(device):
    model = tiny_model()
    ids = torch.randint(0, 128, (2, 11))
    with torch.no_grad():  # an autograd graph would keep the weights alive
        before = model(ids).float()
    originals = [weakref.ref(m) for n, m in model.named_modules() if n.rsplit(".", 1)[-1] in PROJ]
    weights = [weakref.ref(m().weight) for m in originals]
    head = model.lm_head
    names = quantize_model_(model, device=device)
    model.to(device)
    assert len(names) == 2 * 7 and all(n.rsplit(".", 1)[-1] in PROJ for n in names)
    assert all(isinstance(model.get_submodule(n), NF4Linear) for n in names)
    assert model.lm_head is head and type(head) is nn.Linear
    assert not any(isinstance(m, nn.Linear) for n, m in model.named_modules() if n != "lm_head")
    workspaces = {id(model.get_submodule(n).workspace) for n in names}
    assert len(workspaces) == 1
    gc.collect()
    assert all(r() is None for r in originals + weights)  # nothing else kept the 16-bit weights alive
    with torch.no_grad():
        after = model(ids.to(device)).float().cpu()
    # Two layers whose seven matrices each move by ~9%: the logits move by ~20%; scrambled codes would give ~100%.
    assert 0 < ((after - before).norm() / before.norm()).item() < 0.35


def test_quantize_model_leaves_the_kept_layers_16_bit():
    """`keep`: the layers QPiSSA factorises first (method.init pissa over NF4), quantized afterwards as residuals."""
    model = tiny_model()
    kept = ["model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"]
    names = quantize_model_(model, keep=kept)
    assert len(names) == 2 * 7 - 2 and not set(kept) & set(names)
    assert all(type(model.get_submodule(n)) is nn.Linear for n in kept)
    assert all(isinstance(model.get_submodule(n), NF4Linear) for n in names)


def test_quantize_model_refuses_meta_weights():
    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig.from_hf(TINY), select("reference"))
    with pytest.raises(ConfigError, match="materialize_quantized_"):
        quantize_model_(model)


def test_materialize_quantized_builds_a_random_nf4_model_from_meta():
    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig.from_hf(TINY), select("reference"))
    names = materialize_quantized_(model, "cpu", init_std=0.02, generator=torch.Generator().manual_seed(0))
    assert len(names) == 14
    assert not any(t.is_meta for t in list(model.parameters()) + list(model.buffers()))
    layers = [model.get_submodule(n) for n in names]
    assert all(isinstance(m, NF4Linear) for m in layers)
    std = torch.cat([m.dequantized().float().reshape(-1) for m in layers]).std().item()
    assert abs(std - 0.02) < 0.002
    assert abs(model.lm_head.weight.float().std().item() - 0.02) < 0.002
    assert torch.all(model.model.norm.weight == 1)
    ids = torch.randint(0, 128, (2, 11))
    loss_sum, count = model(ids, labels=ids)
    assert torch.isfinite(loss_sum) and abs(loss_sum.item() / count - math.log(128)) < 0.5


@pytest.mark.gpu
def test_quantize_model_onto_the_gpu_holds_one_16_bit_weight_at_a_time():
    config = dict(TINY, hidden_size=1024, intermediate_size=2816, num_hidden_layers=4, num_attention_heads=8,
                  num_key_value_heads=8)  # fmt: skip
    model = LlamaForCausalLM(LlamaConfig.from_hf(config), select("reference")).to(torch.bfloat16)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated()
    names = quantize_model_(model, device="cuda")
    torch.cuda.synchronize()
    held = torch.cuda.memory_allocated() - start
    biggest = max(math.prod(model.get_submodule(n).nf4().shape) for n in names) * 2  # bytes of the largest bf16 weight
    all_16 = sum(math.prod(model.get_submodule(n).nf4().shape) for n in names) * 2
    assert held < 0.3 * all_16  # ~0.26 of 16 bits: 4-bit codes + absmax state
    assert torch.cuda.max_memory_allocated() - start < held + 2.5 * biggest  # one weight, its fp32 absmaxes, slack
