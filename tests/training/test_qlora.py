"""QLoRA through the trainer: the base linears become NF4, only adapters train, and the run opens for inference."""

import json

import pytest

import tunelab.training.recipe as recipe
from tunelab.config import load_config
from tunelab.errors import ConfigError
from tunelab.models.load import resolve_source
from tunelab.quant.linear import NF4Linear
from tunelab.training.build import build_model


def test_qlora_trains_and_saves_a_peft_adapter(tiny_overrides, capsys):
    """The model line at start said `(fast path, torch.float32, cpu)` of a base held in NF4, as of a 32-bit one: it
    names the NF4 base now."""
    result = recipe.train(None, tiny_overrides | {"method.quantize_base": "nf4", "train.max_steps": 4})
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("model: "))
    assert "torch.float32 compute, base in NF4" in line, line
    losses = [
        json.loads(line)["loss"]
        for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()
        if '"loss"' in line
    ]
    assert len(losses) == 4 and all(x == x for x in losses)
    assert (result.run_dir / "adapter_model.safetensors").is_file()


def test_one_process_run_adds_adapter_gradients_in_the_gemm_and_stops_after(tiny_overrides, monkeypatch):
    """`tunelab train` in one process lets the LoRA nodes add dA and dB into .grad (kernels.lora), and takes that
    back when the run ends, whatever happens."""
    import tunelab.kernels.lora as lora_kernels

    added, calls, real_grad = [], [], lora_kernels._grad
    monkeypatch.setattr(lora_kernels, "_grad", lambda *a: added.append(real_grad(*a) is None) or None)

    def spy(params, on=True):
        calls.append((on, list(params)))
        return lora_kernels.accumulate_into_grads(params, on)

    monkeypatch.setattr(recipe, "accumulate_into_grads", spy)
    recipe.train(None, tiny_overrides | {"method.quantize_base": "nf4", "train.max_steps": 2})
    assert [on for on, _ in calls] == [True, False]
    assert added and all(added)  # every adapter gradient went into .grad by the GEMM
    assert not any(hasattr(p, "_accumulate_into_grad") for p in calls[0][1])


def test_qlora_quantizes_every_decoder_linear(tiny_model_dir):
    cfg = load_config(None, {"model.name": str(tiny_model_dir), "method.quantize_base": "nf4"}).config
    built = build_model(resolve_source(cfg.model.name), cfg.model, cfg.method)
    bases = [m.base_layer for m in built.model.modules() if hasattr(m, "base_layer")]
    assert len(bases) == 14 and all(isinstance(b, NF4Linear) for b in bases)
    assert all(".lora_" in n for n, p in built.model.named_parameters() if p.requires_grad)


def test_qlora_needs_lora(tiny_overrides):
    with pytest.raises(ConfigError, match="quantize_base"):
        recipe.train(None, tiny_overrides | {"method.quantize_base": "nf4", "method.name": "full"})


@pytest.mark.parametrize("method", ["full", "layers"])
def test_qlora_beside_full_or_layers_is_refused_with_the_config(tiny_overrides, method):
    """nf4 with method full or layers was refused only once the model had loaded: `tunelab check --data-only`
    passed it, and `tunelab plan` planned a 4-bit base for a run that could not start."""
    with pytest.raises(
        ConfigError, match=rf"overrides\['method\.quantize_base'\]: .*needs method.name lora or dora, not {method}"
    ):
        load_config(None, tiny_overrides | {"method.quantize_base": "nf4", "method.name": method})
