"""DoRA and rsLoRA: a fresh DoRA layer is the base layer; the saved adapter is PEFT's layout (use_dora, use_rslora,
`lora_magnitude_vector`) and loads in PEFT with identical logits; the fused computation (CUDA, NF4) equals the
reference; merging folds m * (W + s B A) / n into one weight; on our decoder DoRA layers run one by one."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from tunelab.peft.dora import DoRALinear
from tunelab.peft.lora import LoRALinear, adapters_disabled, attach_lora, lora_modules, merge_lora
from tunelab.peft.save import load_adapter, save_adapter


def _tiny(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


def _randomize(model):
    """B and m away from their initial values, so that every term of DoRA counts."""
    torch.manual_seed(1)
    for _, m in lora_modules(model):
        torch.nn.init.normal_(m.lora_B.weight, std=0.05)
        if isinstance(m, DoRALinear):
            with torch.no_grad():
                m.lora_magnitude_vector.mul_(1 + 0.1 * torch.randn_like(m.lora_magnitude_vector))


def test_fresh_dora_is_the_base_model_and_trains_a_magnitude(tiny_model_dir):
    model = _tiny(tiny_model_dir)
    ids = torch.randint(0, model.config.vocab_size, (2, 9))
    before = model(ids).logits
    attach_lora(model, ["all-linear"], r=4, alpha=8, dora=True)
    # m = ||W|| and B = 0 give g = 1: (g - 1) x W^T is exactly zero, the update too
    assert torch.equal(model(ids).logits, before)
    trainable = {
        n.rsplit(".", 2)[-2] if n.endswith("weight") else n.rsplit(".", 1)[-1]
        for n, p in model.named_parameters()
        if p.requires_grad
    }
    assert trainable == {"lora_A", "lora_B", "lora_magnitude_vector"}


@pytest.mark.parametrize("rslora", [False, True])
def test_saved_dora_adapter_loads_in_peft_with_identical_logits(tiny_model_dir, tmp_path, rslora):
    from peft import PeftModel

    ours = _tiny(tiny_model_dir)
    attach_lora(ours, ["all-linear"], r=4, alpha=8, dora=True, rslora=rslora)
    _randomize(ours)
    save_adapter(ours, tmp_path, base_model=str(tiny_model_dir))
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["use_dora"] is True and config["use_rslora"] is rslora
    keys = load_file(tmp_path / "adapter_model.safetensors")
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector" in keys
    ids = torch.randint(0, ours.config.vocab_size, (2, 11))
    expected = ours(ids).logits

    peft_model = PeftModel.from_pretrained(_tiny(tiny_model_dir), tmp_path).eval()
    assert peft_model.base_model.model.model.layers[0].self_attn.q_proj.scaling["default"] == (4.0 if rslora else 2.0)
    assert torch.equal(peft_model(ids).logits, expected)

    reloaded = load_adapter(_tiny(tiny_model_dir), tmp_path)
    assert all(isinstance(m, DoRALinear) and m.rslora is rslora for _, m in lora_modules(reloaded))
    assert torch.equal(reloaded(ids).logits, expected)


def test_fused_dora_equals_the_reference_in_value_and_every_gradient():
    torch.manual_seed(0)
    base = torch.nn.Linear(24, 17, bias=True)
    layer = DoRALinear(base, r=3, alpha=6.0).train()
    torch.nn.init.normal_(layer.lora_B.weight, std=0.1)
    with torch.no_grad():
        layer.lora_magnitude_vector.mul_(1.3)
    x = torch.randn(5, 24, dtype=torch.float64, requires_grad=True)
    layer.double()
    results = []
    for path in (layer.reference, layer.fused):
        y = path(x, 0.0)
        grads = torch.autograd.grad(
            (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum(),
            [x, layer.lora_A.weight, layer.lora_B.weight, layer.lora_magnitude_vector],
        )
        results.append((y, *grads))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)  # float64: the same maths in another order


def test_merge_folds_dora_into_one_weight(tiny_model_dir):
    model = _tiny(tiny_model_dir)
    ids = torch.randint(0, model.config.vocab_size, (2, 9))
    base = model(ids).logits
    attach_lora(model, ["q_proj", "v_proj", "down_proj"], r=4, alpha=8, dora=True)
    _randomize(model)
    tuned = model(ids).logits
    assert not torch.allclose(tuned, base)
    with adapters_disabled(model):
        assert torch.equal(model(ids).logits, base)
    merge_lora(model)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    # fp32: m / n * (x W^T + s x A^T B^T) against x (m / n (W + s B A))^T, re-associated: 1e-6 level
    torch.testing.assert_close(model(ids).logits, tuned, rtol=1e-4, atol=1e-5)


def test_dora_layers_run_one_by_one_on_the_fast_path(tiny_model_dir, tmp_path):
    """On our decoder no projection group forms of DoRA layers (their rows are scaled by m / n), even forced on; the
    fast path then gives the transformers model's logits and loss gradients for the same adapter."""
    from tunelab.kernels import select
    from tunelab.models.hf_adapter import from_hf_model
    from tunelab.models.slots import projection_slots
    from tunelab.peft.group import LoRAGroup, set_grouping
    from tunelab.peft.save import load_adapter_weights

    hf = _tiny(tiny_model_dir)
    attach_lora(hf, ["all-linear"], r=4, alpha=8, dora=True)
    _randomize(hf)
    save_adapter(hf, tmp_path, base_model=str(tiny_model_dir))
    fast = from_hf_model(_tiny(tiny_model_dir), select("auto")).eval()
    attach_lora(fast, ["all-linear"], r=4, alpha=8, dora=True)
    load_adapter_weights(fast, tmp_path)
    set_grouping(fast, True)  # forced on: still no group, since its members are DoRA layers
    ids = torch.randint(0, hf.config.vocab_size, (2, 9))
    x = torch.randn(2, 9, hf.config.hidden_size)
    groups = [getattr(m, n) for m, n in projection_slots(fast) if isinstance(getattr(m, n), LoRAGroup)]
    assert groups and all(g.members(x) is None and g.spare_columns(x) == 0 for g in groups)

    labels = torch.where(torch.rand(ids.shape) < 0.7, ids, -100)
    out = fast(ids, torch.arange(9).expand(2, 9), torch.ones_like(ids), labels=labels)
    logits = hf(ids).logits[:, :-1]
    expected = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), reduction="sum"
    )
    torch.testing.assert_close(out.loss_sum, expected, rtol=1e-5, atol=1e-5)  # fp32, fused head vs logits
    out.loss_sum.backward()
    expected.backward()
    for (name, a), (_, b) in zip(lora_modules(fast), lora_modules(hf)):
        torch.testing.assert_close(
            a.lora_magnitude_vector.grad, b.lora_magnitude_vector.grad, rtol=1e-4, atol=1e-6, msg=name
        )
        torch.testing.assert_close(a.lora_B.weight.grad, b.lora_B.weight.grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["bf16", "nf4"])
def test_dora_on_cuda_equals_the_fp32_reference(kind):
    """The fused computation on CUDA (a bf16 base, or an NF4 one) against the reference in fp32 on the CPU, over the
    same (dequantized) weights: output and every adapter gradient."""
    from tunelab.quant.linear import NF4Linear

    torch.manual_seed(0)
    base = torch.nn.Linear(256, 96, bias=True).to(torch.bfloat16)
    if kind == "nf4":
        cuda_base = NF4Linear.from_linear(base.cuda())
        cpu_base = torch.nn.Linear(256, 96, bias=True)
        with torch.no_grad():
            cpu_base.weight.copy_(cuda_base.dequantized(torch.float32).cpu())
            cpu_base.bias.copy_(base.bias.float())
    else:
        cuda_base, cpu_base = base.cuda(), torch.nn.Linear(256, 96, bias=True)
        cpu_base.load_state_dict({k: v.float() for k, v in base.state_dict().items()})
    ref = DoRALinear(cpu_base, r=8, alpha=16.0).train()
    fast = DoRALinear(cuda_base, r=8, alpha=16.0).train()
    torch.nn.init.normal_(ref.lora_B.weight, std=0.05)
    with torch.no_grad():
        ref.lora_magnitude_vector.mul_(1.2)
        for name in ("lora_A.weight", "lora_B.weight", "lora_magnitude_vector"):
            fast.get_parameter(name).copy_(ref.get_parameter(name))
    x = torch.randn(4, 33, 256)
    y_ref = ref(x)
    y = fast(x.cuda().to(torch.bfloat16))
    weights = torch.randn_like(y_ref)
    (y_ref * weights).sum().backward()
    (y.float() * weights.cuda()).sum().backward()
    # bf16 activations against fp32: relative error of a few bf16 ulps (2^-8) over a 256-term dot product
    assert (y.float().cpu() - y_ref).norm() / y_ref.norm() < 2e-2
    for name in ("lora_A.weight", "lora_B.weight", "lora_magnitude_vector"):
        a, b = fast.get_parameter(name).grad.cpu(), ref.get_parameter(name).grad
        assert (a - b).norm() / b.norm() < 3e-2, name


@pytest.mark.parametrize("static", [False, True])
def test_sampling_computes_each_norm_once_and_draws_the_same_tokens(monkeypatch, static):
    """A decode step recomputed every DoRA layer's ||W + s B A|| although no weight changes while sampling: inside
    `norms_held` each layer computes it at its first forward only, and the draws are the same bit for bit."""
    from transformers import AutoConfig

    from tunelab.models.decode import SampleSettings, sample
    from tunelab.models.hf_adapter import from_hf_model
    from tunelab.peft.dora import norms_held

    torch.manual_seed(0)
    config = AutoConfig.for_model(
        "llama", vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256,
    )  # fmt: skip
    model = from_hf_model(AutoModelForCausalLM.from_config(config).float().eval())
    attach_lora(model, ["all-linear"], r=4, alpha=8, dora=True)
    _randomize(model)
    layers = [m for _, m in lora_modules(model)]
    calls = []
    original = DoRALinear.weight_norm
    monkeypatch.setattr(DoRALinear, "weight_norm", lambda self, w=None: calls.append(self) or original(self, w))
    prompts, settings = [[5, 17, 33, 9], [44, 3], [200]], SampleSettings(max_new_tokens=8, temperature=0.9)

    def draw():
        calls.clear()
        generator = torch.Generator().manual_seed(3)
        return sample(model, prompts, settings, pad_id=0, generator=generator, static=static)

    every_step = draw()
    assert len(calls) == len(layers) * 8  # the prefill and 7 decode steps, each layer's norm at each
    with norms_held(model):
        held = draw()
        assert sorted(map(id, calls)) == sorted(map(id, layers))  # once per layer for the whole sampling
        assert all(torch.equal(m._held[1], original(m)) for m in layers)
        with torch.no_grad():  # a weight written in place (a load) is seen: that layer's norm is computed again
            layers[0].lora_B.weight.add_(0.01)
        calls.clear()
        layers[0](torch.randn(1, layers[0].in_features))
        assert calls == [layers[0]]
    assert held == every_step
    assert not any(m.holds_norm or m._held for m in layers)  # the block's end drops them: after a step, afresh
    draw()
    assert len(calls) == len(layers) * 8


def test_a_held_norm_follows_weights_swapped_in_as_grpo_s_starting_weights_do():
    """grpo's fixed forwards run inside `norms_held`, and a continued adapter's reference swaps the starting A, B and
    m in by `.data` (`tasks.grpo.starting_weights`): the held norm must be that of the weights in place at each
    forward, not the first one's."""
    from tunelab.peft.dora import norms_held

    torch.manual_seed(0)
    layer = DoRALinear(torch.nn.Linear(12, 8), r=2, alpha=4).eval()
    torch.nn.init.normal_(layer.lora_B.weight, std=0.3)
    start = {name: p.detach().clone() for name, p in layer.named_parameters() if p.requires_grad}
    with torch.no_grad():
        layer.lora_B.weight.add_(0.5)  # trained since the start
    x = torch.randn(3, 12)
    with torch.no_grad():
        now = layer(x)
        current = {name: p.data for name, p in layer.named_parameters() if p.requires_grad}
        params = dict(layer.named_parameters())
        for name, value in start.items():
            params[name].data = value
        then = layer(x)
        for name, value in current.items():
            params[name].data = value
        with norms_held(layer):
            assert torch.equal(layer(x), now)
            for name, value in start.items():
                params[name].data = value
            assert torch.equal(layer(x), then)
            for name, value in current.items():
                params[name].data = value
            assert torch.equal(layer(x), now)
    assert not torch.equal(now, then)
