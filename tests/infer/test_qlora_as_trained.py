"""A QLoRA run is evaluated as it was trained: open_run puts the adapter on the NF4 base it learned over, so its logits
are the training model's; `base_precision="16bit"` chooses the unquantized base (and differs); merge dequantizes that
NF4 base explicitly and reports how far the merged model is from the adapter it folded."""

import json

import pytest
import torch
from safetensors.torch import load_file

from tunelab.config import load_config
from tunelab.errors import ConfigError
from tunelab.export.merge import merge_run, merged_model
from tunelab.infer.run import open_run
from tunelab.models.load import resolve_source
from tunelab.peft.lora import adapters_disabled, lora_modules
from tunelab.peft.save import PREFIX
from tunelab.quant.linear import NF4Linear
from tunelab.rundir import read_info
from tunelab.training.build import build_model
from tunelab.training.recipe import train

IDS = torch.tensor([[1, 50, 34, 14, 76, 26, 110, 2], [17, 29, 200, 40, 12, 9, 8, 7]])  # < every test vocabulary
# Our decoder (reference ops) against transformers' on the same weights: float32 rounding of two summation orders
# (tests/models/test_llama_parity.py argues the bound); the NF4 base's own error on these random weights moves the
# logits by ~1e-1, four orders above it (checked below), so the tolerance tells the two bases apart.
SAME = dict(rtol=2e-5, atol=2e-5)


def _train_qlora(folder, model_dir, **model):
    data = folder / "qa.jsonl"
    data.write_text(
        "".join(json.dumps({"question": f"Box {i}?", "answer": f"Code {1000 + 37 * i}."}) + "\n" for i in range(16))
    )
    overrides = {
        "model.name": str(model_dir),
        "data.train": [str(data)],
        "data.max_length": 64,
        "method.quantize_base": "nf4",
        "method.r": 4,
        "method.dropout": 0.1,
        "train.micro_batch": 4,
        "train.max_steps": 3,
        "train.lr": 1e-2,
        "output_dir": str(folder / "run"),
    }
    return train(None, overrides | {f"model.{k}": v for k, v in model.items()}).run_dir


@pytest.fixture(scope="module")
def qlora_run(tmp_path_factory, tiny_model_dir):
    """Three QLoRA steps of the tiny model on the CPU (the fast path: our decoder over NF4 linears)."""
    return _train_qlora(tmp_path_factory.mktemp("qlora-run"), tiny_model_dir, device="cpu")


@torch.no_grad()
def _training_model(run_dir):
    """The model as training built it (the fast path's decoder over an NF4 base), with the run's adapter weights."""
    cfg = load_config(run_dir / "config.yaml").config
    built = build_model(resolve_source(cfg.model.name), cfg.model, cfg.method)
    state = load_file(str(run_dir / "adapter_model.safetensors"))
    for name, m in lora_modules(built.model):
        m.lora_A.weight.copy_(state[f"{PREFIX}{name}.lora_A.weight"])
        m.lora_B.weight.copy_(state[f"{PREFIX}{name}.lora_B.weight"])
    assert built.impl == "fast"
    return built.model.eval()


@torch.no_grad()
def test_eval_logits_of_a_qlora_run_are_the_training_models(qlora_run):
    info = read_info(qlora_run)
    assert info.quantize_base == "nf4" and info.dtype == "float32"
    trained = _training_model(qlora_run)
    expected = trained(IDS)
    with adapters_disabled(trained):
        expected_base = trained(IDS)

    run = open_run(qlora_run, device="cpu")
    assert run.quantized_base and any(isinstance(m, NF4Linear) for m in run.model.modules())
    torch.testing.assert_close(run.model(IDS).logits, expected, **SAME)
    with run.base_model() as base:  # compare's and eval's "base": the adapter off, over the same NF4 base
        torch.testing.assert_close(base(IDS).logits, expected_base, **SAME)
    assert (expected - expected_base).abs().max() > 1e-3  # the adapter matters, so the first check means something

    sixteen = open_run(qlora_run, device="cpu", base_precision="16bit")
    assert not sixteen.quantized_base and not any(isinstance(m, NF4Linear) for m in sixteen.model.modules())
    assert (sixteen.model(IDS).logits - expected).abs().max() > 1e-3  # what evaluating on the wrong base costs


@torch.no_grad()
def test_merge_dequantizes_the_nf4_base_and_reports_the_difference(qlora_run, tmp_path, capsys):
    trained = _training_model(qlora_run)
    merged = merged_model(qlora_run, "fp32")
    assert merged.check.base == "nf4" and merged.check.tokens > 5
    assert merged.check.max_abs_logit_diff < 1e-4 and merged.check.same_next_token == 1.0
    torch.testing.assert_close(merged.model(IDS).logits, trained(IDS), **SAME)

    # the fold added B A to the dequantized NF4 weight, not to the 16-bit weight it was quantized from
    layer = trained.model.layers[0].self_attn.q_proj
    folded = layer.base_layer.dequantized(torch.float32) + layer.scale * (layer.lora_B.weight @ layer.lora_A.weight)
    torch.testing.assert_close(merged.model.model.layers[0].self_attn.q_proj.weight, folded, rtol=0, atol=1e-6)

    out = merge_run(qlora_run, tmp_path / "merged", show=True)
    saved = json.loads((out / "tunelab_merge.json").read_text())
    assert saved["quantize_base"] == "nf4" and saved["check"]["max_abs_logit_diff"] < 1e-4
    assert "merge check" in capsys.readouterr().out


def test_an_unknown_base_precision_is_refused(qlora_run):
    with pytest.raises(ConfigError, match="^argument 'base_precision' is '8bit'; allowed values: trained, 16bit"):
        open_run(qlora_run, device="cpu", base_precision="8bit")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_eval_quantizes_the_base_as_training_did(tmp_path, tiny_model_dir):
    """bf16 on the GPU, where NF4 is quantized by the Triton kernels: the generic path (transformers' model, as the
    evaluation uses) trains, and the opened run gives the training model's logits; the 16-bit base does not."""
    run_dir = _train_qlora(tmp_path, tiny_model_dir, device="cuda", impl="generic")
    assert read_info(run_dir).dtype == "bfloat16"
    with torch.no_grad():
        _compare_on_cuda(run_dir)


def _compare_on_cuda(run_dir):
    cfg = load_config(run_dir / "config.yaml").config
    built = build_model(resolve_source(cfg.model.name), cfg.model, cfg.method)
    state = load_file(str(run_dir / "adapter_model.safetensors"))
    for name, m in lora_modules(built.model):
        m.lora_A.weight.copy_(state[f"{PREFIX}{name}.lora_A.weight"])
        m.lora_B.weight.copy_(state[f"{PREFIX}{name}.lora_B.weight"])
    ids = IDS.cuda()
    expected = built.model.eval()(ids).logits.float()
    trained = open_run(run_dir, device="cuda")
    assert trained.dtype == torch.bfloat16 and trained.quantized_base
    as_trained = (trained.model(ids).logits.float() - expected).abs().max().item()
    del trained
    sixteen = open_run(run_dir, device="cuda", base_precision="16bit")
    off = (sixteen.model(ids).logits.float() - expected).abs().max().item()
    # the same modules, weights and kernels in the same order: equal up to bf16 rounding noise, which the NF4
    # error of the 16-bit base exceeds many times
    assert as_trained <= 0.1 * off, (as_trained, off)
