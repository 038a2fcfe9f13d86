"""`tunelab merge` and the GGUF export of a method.init pissa run: the merged weights are the original base plus the
trained change, W + s (B A - B0 A0), with B0 A0 worked out here from the base's own SVD; not the residual plus that
change (the residual base would be merged over) nor the base plus the change twice (a doubled lora_alpha on top of a
doubled r). Over an NF4 base (QPiSSA) alike: the saved adapter is over the original 16-bit W, not the quantized
residual the run trained over."""

import json

import pytest
import torch
from safetensors.torch import load_file

from tunelab.cli import main
from tunelab.export.gguf import gguf_shape, gguf_tensors
from tunelab.export.merge import merged_model

PREFIX = "base_model.model."  # PEFT's key of a layer's adapter is PREFIX + its name + ".lora_A.weight"


@pytest.mark.parametrize("quantize", ["none", "nf4"])
def test_merge_and_gguf_of_a_pissa_run_are_the_base_plus_the_trained_change(
    tiny_overrides, tiny_model_dir, cli_flags, quantize
):
    cfg = tiny_overrides | {"train.max_steps": 2, "method.init": "pissa", "method.dropout": 0.0}
    cfg |= {"method.quantize_base": quantize}
    assert main(["train", *cli_flags(cfg)]) == 0
    run = tiny_overrides["output_dir"]
    out = f"{run}-merged"
    assert main(["merge", run, "--out", out]) == 0
    base = load_file(f"{tiny_model_dir}/model.safetensors")
    merged = load_file(f"{out}/model.safetensors")
    saved = load_file(f"{run}/adapter_model.safetensors")
    config = json.loads(open(f"{run}/adapter_config.json").read())
    r = cfg["method.r"]
    scale = config["lora_alpha"] / config["r"]  # 2 alpha / 2r: the scale trained with
    expected = {}
    for key in (k for k in saved if k.endswith("lora_A.weight")):
        name = key.removeprefix(PREFIX).removesuffix(".lora_A.weight")
        a, b = saved[key][:r], saved[key.replace("lora_A", "lora_B")][:, :r]  # the trained A, B: the first r
        w = base[f"{name}.weight"].double()
        u, sigma, vh = torch.linalg.svd(w, full_matrices=False)
        start = (u[:, :r] * sigma[:r]) @ vh[:r]  # s B0 A0: W's best rank-r part, which the base gave the adapter
        change = scale * (b.double() @ a.double()) - start
        expected[name] = w + change
        assert change.abs().max() > 1e-4  # trained: the change is no rounding
        # fp32 merge (W + s B' A' summed in fp32) against the same sum in fp64: rounding, ~1e-7 of weights ~0.02
        torch.testing.assert_close(merged[f"{name}.weight"].double(), w + change, rtol=0, atol=1e-5)
    assert len(expected) == 14  # the seven projections of both layers
    # the GGUF export writes what merged_model gives (v_proj is not permuted for rope)
    model = merged_model(run, torch.float32).model
    written = dict(gguf_tensors(model, gguf_shape(model.config)))
    for layer in (0, 1):
        v = expected[f"model.layers.{layer}.self_attn.v_proj"]
        torch.testing.assert_close(written[f"blk.{layer}.attn_v.weight"].double(), v, rtol=0, atol=1e-5)


@pytest.mark.parametrize(("init", "method"), [("pissa", "lora"), ("olora", "dora")])
def test_merge_of_a_run_started_from_its_weights_is_the_model_training_ended_with(
    tiny_overrides, cli_flags, monkeypatch, init, method
):
    """The merged weights of a finished pissa (olora, DoRA) run are those of the model in memory when training ended,
    W_res + s B A (DoRA: normalised), read back from the saved plain LoRA of rank 2r over the original W."""
    from tunelab.peft.lora import lora_modules
    from tunelab.training import finish

    real, ended = finish.save_final, {}

    def keep_weights(run_dir, built, *args, **kwargs):
        ended.update({name: m.merged_weight().detach().clone() for name, m in lora_modules(built.model)})
        return real(run_dir, built, *args, **kwargs)

    monkeypatch.setattr(finish, "save_final", keep_weights)
    cfg = tiny_overrides | {"train.max_steps": 3, "method.init": init, "method.name": method, "method.dropout": 0.0}
    assert main(["train", *cli_flags(cfg)]) == 0
    run = tiny_overrides["output_dir"]
    assert main(["merge", run, "--out", f"{run}-merged"]) == 0
    merged = load_file(f"{run}-merged/model.safetensors")
    assert len(ended) == 14
    for name, weight in ended.items():
        assert merged[f"{name}.weight"].dtype == torch.float32
        # W + s (B A - B0 A0) against (W - s B0 A0) + s B A, each summed in fp32 in its own order: the weights are
        # below 0.1 (1 ulp 7.5e-9) and differ by up to 6e-8 measured; a merge over the residual or of the change
        # twice would be off by s B0 A0, of the weights' size
        torch.testing.assert_close(merged[f"{name}.weight"], weight, rtol=0, atol=2e-7)
