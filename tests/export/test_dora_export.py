"""A DoRA (and rsLoRA) run merges and exports: merge_run folds m (W + s B A) / n into plain weights that transformers
loads with the tuned logits, and the GGUF file of the run reads back with them."""

import json

import torch
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from tunelab.export.gguf import export_gguf
from tunelab.export.merge import merge_run
from tunelab.infer.run import open_run
from tunelab.peft.dora import DoRALinear
from tunelab.peft.lora import attach_lora, lora_modules
from tunelab.peft.save import save_adapter

IDS = torch.tensor([[1, 504, 1458, 314, 1760, 260, 1104, 2], [17, 29, 2000, 2047, 12, 9, 8, 7]])


def test_a_dora_run_merges_and_exports_with_its_logits(small_tokenizer, tiny_llama_config, tmp_path):
    torch.manual_seed(0)
    config = tiny_llama_config(small_tokenizer)  # 2048 tokens
    base = tmp_path / "base"
    LlamaForCausalLM(config).save_pretrained(base)
    small_tokenizer.save_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    attach_lora(model, ["all-linear"], r=4, alpha=8, dora=True, rslora=True)
    torch.manual_seed(3)
    for _, m in lora_modules(model):
        torch.nn.init.normal_(m.lora_B.weight, std=0.05)
        with torch.no_grad():
            m.lora_magnitude_vector.mul_(1 + 0.2 * torch.rand_like(m.lora_magnitude_vector))
    with torch.no_grad():
        tuned = model(IDS).logits
    run = tmp_path / "run"
    save_adapter(model, run, base_model=str(base))
    small_tokenizer.save_pretrained(run)
    (run / "run.json").write_text(
        json.dumps({"base_model": str(base), "method": "dora", "quantize_base": "none", "finished": True})
    )

    opened = open_run(run, device="cpu")
    assert all(isinstance(m, DoRALinear) for _, m in lora_modules(opened.model))
    merged = merge_run(run, tmp_path / "merged")
    plain = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    with torch.no_grad():
        # fp32: the fold re-associates g (x W^T + s x A^T B^T) into x (g (W + s B A))^T
        torch.testing.assert_close(plain(IDS).logits, tuned, rtol=1e-4, atol=1e-5)
    out = export_gguf(run, tmp_path / "gguf" / "dora.gguf", "f32", check=False).path
    loaded = AutoModelForCausalLM.from_pretrained(out.parent, gguf_file=out.name, dtype=torch.float32).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(IDS).logits, tuned, rtol=1e-4, atol=1e-4)
