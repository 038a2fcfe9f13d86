"""method.init pissa and olora: the model starts as the base model, with A and B the principal part of each weight
(pissa) or its first r QR directions (olora); switched off, the adapters give the base model; the saved adapter is a
plain rank-2r LoRA over the original base, which PEFT loads with the trained model's logits and tunelab merges into
the trained model's weights."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from tunelab.errors import ConfigError
from tunelab.peft.dora import DoRALinear
from tunelab.peft.lora import adapters_disabled, attach_lora, lora_modules, merge_lora
from tunelab.peft.save import load_adapter, save_adapter

from ..smollm2_vocab import smollm2_tiny_model_dir, smollm2_tiny_tokenizer  # noqa: F401 (SmolLM2's vocabulary)


def _tiny(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


def _train_a_little(model):
    """A and B (and DoRA's m) moved away from their start, as training would."""
    torch.manual_seed(1)
    with torch.no_grad():
        for _, m in lora_modules(model):
            m.lora_A.weight.add_(0.02 * torch.randn_like(m.lora_A.weight))
            m.lora_B.weight.add_(0.02 * torch.randn_like(m.lora_B.weight))
            if isinstance(m, DoRALinear):
                m.lora_magnitude_vector.mul_(1 + 0.1 * torch.randn_like(m.lora_magnitude_vector))


@pytest.mark.parametrize(("dora", "rslora"), [(False, False), (False, True), (True, False)])
def test_pissa_starts_as_the_base_model_from_the_principal_part(tiny_model_dir, dora, rslora):
    # (the olora case is test_olora_starts_from_the_first_qr_directions)
    model = _tiny(tiny_model_dir)
    original = {n: m.weight.detach().clone() for n, m in model.named_modules() if n.endswith("q_proj")}
    ids = torch.randint(0, model.config.vocab_size, (2, 9))
    before = model(ids).logits
    attach_lora(model, ["all-linear"], r=4, alpha=8, dora=dora, rslora=rslora, init="pissa")
    # W_res + s B0 A0 = W up to fp32 rounding of the SVD's products
    torch.testing.assert_close(model(ids).logits, before, atol=1e-5, rtol=1e-5)
    name, layer = next((n, m) for n, m in lora_modules(model) if n.endswith("q_proj"))
    w = original[name]
    scaled = layer.scale * (layer.lora_B.weight @ layer.lora_A.weight)
    # s B0 A0 is W's best rank-4 approximation: its singular values are W's top four, the residual holds the rest
    sigma = torch.linalg.svdvals(w)
    torch.testing.assert_close(torch.linalg.svdvals(scaled)[:4], sigma[:4], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(torch.linalg.svdvals(layer.base_layer.weight)[:4], sigma[4:8], atol=1e-4, rtol=1e-4)
    _train_a_little(model)
    assert not torch.allclose(model(ids).logits, before, atol=1e-3)
    with adapters_disabled(model):  # the reference of dpo, kto, grpo and the "base" answers: the original model
        torch.testing.assert_close(model(ids).logits, before, atol=1e-5, rtol=1e-5)


def test_olora_starts_from_the_first_qr_directions(tiny_model_dir):
    model = _tiny(tiny_model_dir)
    original = {n: m.weight.detach().clone() for n, m in model.named_modules() if n.endswith("gate_proj")}
    ids = torch.randint(0, model.config.vocab_size, (2, 9))
    before = model(ids).logits
    attach_lora(model, ["all-linear"], r=4, alpha=8, dora=True, init="olora")
    torch.testing.assert_close(model(ids).logits, before, atol=1e-5, rtol=1e-5)
    name, layer = next((n, m) for n, m in lora_modules(model) if n.endswith("gate_proj"))
    w, b0, a0 = original[name], layer.lora_B.weight, layer.lora_A.weight
    # B0 = Q_r has orthonormal columns, A0 = R_r = Q_r^T W (PEFT's olora: the scale is not divided out)
    torch.testing.assert_close(b0.T @ b0, torch.eye(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(a0, b0.T @ w, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(layer.base_layer.weight, w - 2.0 * b0 @ a0, atol=1e-6, rtol=0)
    _train_a_little(model)
    with adapters_disabled(model):
        torch.testing.assert_close(model(ids).logits, before, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("init", "dora", "rslora"),
    [("pissa", False, False), ("pissa", False, True), ("pissa", True, True), ("olora", False, False)],
)
def test_saved_adapter_is_a_rank_2r_lora_over_the_original_base(tiny_model_dir, tmp_path, init, dora, rslora):
    from peft import PeftModel

    ours = _tiny(tiny_model_dir)
    attach_lora(ours, ["q_proj", "v_proj", "down_proj"], r=4, alpha=8, dora=dora, rslora=rslora, init=init)
    _train_a_little(ours)
    ids = torch.randint(0, ours.config.vocab_size, (2, 11))
    expected = ours(ids).logits
    save_adapter(ours, tmp_path, base_model=str(tiny_model_dir))
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["init_lora_weights"] is True
    assert config["lora_alpha"] == pytest.approx(8 * 2**0.5 if rslora else 16)

    peft_model = PeftModel.from_pretrained(_tiny(tiny_model_dir), tmp_path).eval()
    torch.testing.assert_close(peft_model(ids).logits, expected, atol=1e-5, rtol=1e-5)

    # tunelab's merge over the original base: the trained model's effective weights
    merged_here = merge_lora(ours)
    merged_saved = merge_lora(load_adapter(_tiny(tiny_model_dir), tmp_path))
    saved = dict(merged_saved.named_parameters())
    for name, p in merged_here.named_parameters():
        torch.testing.assert_close(saved[name], p, atol=1e-6, rtol=1e-5, msg=name)


def test_default_init_keeps_no_initial_factors(tiny_model_dir):
    model = _tiny(tiny_model_dir)
    attach_lora(model, ["q_proj"], r=4, alpha=8)
    assert all(m.initial_A is None and m.initial_B is None for _, m in lora_modules(model))
    assert not [n for n, _ in model.named_buffers() if "initial_" in n]


def test_the_principal_part_is_the_product_summed_rank_by_rank():
    """s B0 A0 as the residual takes it: the product within fp32 rounding of its five terms, the same bits for the
    factors with their paired signs flipped, and with kept factors given the layer starts from them, not an SVD."""
    from tunelab.peft.lora_linear import LoRALinear
    from tunelab.peft.weight_init import init_from_weight_, principal_part

    g = torch.Generator().manual_seed(0)
    b0, a0 = torch.randn(37, 5, generator=g), torch.randn(5, 23, generator=g)
    part = principal_part(b0, a0, 0.7)
    expected = 0.7 * (b0.double() @ a0.double())
    torch.testing.assert_close(part.double(), expected, atol=1e-5, rtol=1e-6)  # five fp32 roundings per element
    assert torch.equal(principal_part(-b0, -a0, 0.7), part)
    base = torch.nn.Linear(23, 37, bias=False)
    w = base.weight.detach().clone()
    layer = LoRALinear(base, r=5, alpha=3.5)  # scale 0.7
    init_from_weight_(layer, "pissa", factors=(a0, b0))
    assert torch.equal(layer.initial_A, a0) and torch.equal(layer.lora_B.weight, b0)
    assert torch.equal(layer.base_layer.weight, w - part)


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_a_rank_above_the_weights_is_refused(tiny_model_dir, init):
    model = _tiny(tiny_model_dir)
    smallest = min(model.config.hidden_size, model.config.num_key_value_heads * model.config.head_dim)
    with pytest.raises(ConfigError, match=rf"option 'method.r' is .*init {init} .*k_proj.* lower method.r"):
        attach_lora(model, ["k_proj"], r=smallest + 1, alpha=8, init=init)


def test_an_unknown_init_is_refused(tiny_model_dir):
    with pytest.raises(ValueError, match="init 'pisa': expected one of pissa, olora"):
        attach_lora(_tiny(tiny_model_dir), ["q_proj"], r=4, alpha=8, init="pisa")


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_the_memory_plan_counts_the_kept_start_as_the_layers_hold_it(tiny_model_dir, init):
    """The planner's A0, B0 term is the bytes the layers keep: fp32 whatever the model's dtype (here bf16)."""
    from tunelab.models.llama_config import LlamaConfig
    from tunelab.training.memory import estimate
    from tunelab.training.memory_setup import Setup

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16)
    attach_lora(model, ["all-linear"], r=4, alpha=8, init=init)
    kept = [t for _, m in lora_modules(model) for t in (m.initial_A, m.initial_B)]
    assert {t.dtype for t in kept} == {torch.float32}
    planned = estimate(LlamaConfig.from_hf(model.config.to_dict()), Setup(rank=4, initial_copy=True)).static
    assert planned["adapters' starting A0, B0 (fp32, method.init)"] == sum(t.nbytes for t in kept)


@pytest.mark.parametrize(("init", "dora"), [("pissa", False), ("olora", True)])
def test_qpissa_quantizes_the_residual_of_the_adapted_layers_only(tiny_model_dir, tmp_path, init, dora):
    """QPiSSA (method.quantize_base nf4): the factors come from the 16-bit W, the adapted layers' NF4 base is
    Q(W - s B0 A0), the other linears are Q(W) as in QLoRA, and the saved adapter is the rank-2r LoRA over the
    original 16-bit W, whose merge is the trained layer up to the residual's quantization error."""
    from tunelab.config import MethodConfig
    from tunelab.quant.linear import NF4Linear
    from tunelab.quant.nf4 import dequantize_nf4
    from tunelab.quant.nf4_ops import quantize_nf4
    from tunelab.training.build import apply_method

    model = _tiny(tiny_model_dir)
    original = {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    method = MethodConfig(
        name="dora" if dora else "lora", r=4, alpha=8, target_modules=["q_proj", "down_proj"], quantize_base="nf4"
    )
    method.init = init
    apply_method(model, method, torch.device("cpu"))
    adapted = dict(lora_modules(model))
    assert len(adapted) == 4 and all(type(m.base_layer) is NF4Linear for m in adapted.values())
    for name, m in adapted.items():
        start = m.scale * (m.initial_B @ m.initial_A)
        torch.testing.assert_close(m.scale * (m.lora_B.weight @ m.lora_A.weight), start)
        # the base is the quantized residual, bit for bit as quantize_nf4 gives it
        expected = dequantize_nf4(quantize_nf4(original[name] - start), torch.float32)
        assert torch.equal(m.base_layer.dequantized(torch.float32), expected), name
    k_name = "model.layers.0.self_attn.k_proj"  # not adapted: QLoRA's Q(W)
    k_proj = model.get_submodule(k_name).dequantized(torch.float32)
    assert torch.equal(k_proj, dequantize_nf4(quantize_nf4(original[k_name]), torch.float32))
    _train_a_little(model)
    save_adapter(model, tmp_path, base_model=str(tiny_model_dir))
    over_w = merge_lora(load_adapter(_tiny(tiny_model_dir), tmp_path))  # what a user loads: the adapter over W
    for name, m in adapted.items():
        trained = m.merged_weight()  # deq(Q(W_res)) + s B A, DoRA's magnitude applied to that
        residual = original[name] - m.scale * (m.initial_B @ m.initial_A)
        quantization_error = (residual - m.base_layer.dequantized(torch.float32)).abs().max()
        gap = (over_w.get_submodule(name).weight - trained).abs().max()
        # LoRA: the gap is the residual's quantization error itself; DoRA rescales each row by g / ||row||, which
        # the error moves by well under a factor 2 here (rows of norm ~1, errors ~1e-2)
        assert 0 < gap <= (2 if dora else 1) * quantization_error + 1e-6, name
        if not dora:  # W + s (B A - B0 A0): exactly the residual plus the trained adapter
            torch.testing.assert_close(
                over_w.get_submodule(name).weight, residual + m.scale * (m.lora_B.weight @ m.lora_A.weight)
            )


def test_qpissa_quantization_error_is_below_qlora_on_a_real_weight():
    """The PiSSA paper's point for QPiSSA: with the principal part kept in the adapter in full precision, the NF4
    error of the start, ||W - (deq(Q(W_res)) + s B0 A0)||, is below QLoRA's ||W - deq(Q(W))||; on a weight of the
    embedded model (layer 0's q_proj, read from its GGUF file)."""
    import importlib.util
    from pathlib import Path

    from gguf import GGUFReader
    from gguf.quants import dequantize
    from torch import nn

    from tunelab.config.model import EMBEDDED
    from tunelab.peft.lora_linear import LoRALinear
    from tunelab.peft.weight_init import init_from_weight_
    from tunelab.quant.nf4 import dequantize_nf4
    from tunelab.quant.nf4_ops import quantize_nf4

    package, filename, _ = EMBEDDED["smollm2-135m-instruct"]
    spec = importlib.util.find_spec(package)
    if spec is None:
        pytest.skip("the embedded model's package is not installed")
    reader = GGUFReader(Path(spec.submodule_search_locations[0]) / filename)
    tensor = next(t for t in reader.tensors if t.name == "blk.0.attn_q.weight")
    w = torch.from_numpy(dequantize(tensor.data, tensor.tensor_type)).to(torch.bfloat16)  # (576, 576)
    linear = nn.Linear(w.shape[1], w.shape[0], bias=False, dtype=torch.bfloat16)
    with torch.no_grad():
        linear.weight.copy_(w)
    layer = LoRALinear(linear, r=16, alpha=32)
    init_from_weight_(layer, "pissa", nf4=True)
    start = layer.base_layer.dequantized(torch.float32) + layer.scale * (layer.lora_B.weight @ layer.lora_A.weight)
    qpissa = (w.float() - start).norm()
    qlora = (w.float() - dequantize_nf4(quantize_nf4(w), torch.float32)).norm()
    assert qpissa < 0.8 * qlora, (qpissa, qlora)


def test_the_memory_plan_of_qpissa_counts_the_kept_start_over_the_nf4_base(tiny_model_dir, qa_file):
    """A config with method.init pissa over an NF4 base plans the NF4 weights and the fp32 A0, B0 the layers keep."""
    from tunelab.config import load_config
    from tunelab.models.llama_config import LlamaConfig
    from tunelab.training.build import apply_method
    from tunelab.training.memory import estimate
    from tunelab.training.plan_setup import config_setup

    overrides = {"model.name": str(tiny_model_dir), "data.train": str(qa_file), "method.r": 4, "method.alpha": 8}
    cfg = load_config(None, overrides | {"method.init": "pissa", "method.quantize_base": "nf4"}).config
    setup = config_setup(cfg, seq=64)
    assert setup.quantized and setup.initial_copy
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16)
    apply_method(model, cfg.method, torch.device("cpu"))
    kept = sum(t.nbytes for _, m in lora_modules(model) for t in (m.initial_A, m.initial_B))
    planned = estimate(LlamaConfig.from_hf(model.config.to_dict()), setup).static
    assert planned["adapters' starting A0, B0 (fp32, method.init)"] == kept > 0
