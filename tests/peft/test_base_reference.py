"""A run's adapter loads outside tunelab with plain transformers + PEFT, exactly as README shows: its
adapter_config.json names a base other tools can load (an absolute directory, or for GGUF models and the
embedded alias the converted safetensors copy in tunelab's cache), while run.json keeps the name the user gave."""

import json

import pytest
import torch

from tunelab.api import generate
from tunelab.infer.generate import GenerationSettings
from tunelab.infer.run import open_run
from tunelab.models.load import materialize, resolve_source
from tunelab.peft.lora import attach_lora, lora_modules
from tunelab.peft.save import loadable_base, save_adapter


def _readme_recipe(run_dir):
    """The README's snippet, verbatim but for the run directory; returns the model, tokenizer and answer."""
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    model = AutoPeftModelForCausalLM.from_pretrained(run_dir)  # reads the base from adapter_config.json
    tokenizer = AutoTokenizer.from_pretrained(run_dir)
    messages = [{"role": "user", "content": "Where is your office?"}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    return model, tokenizer, answer


def test_plain_peft_loads_the_run_with_tunelabs_logits(tiny_run_dir, tiny_model_dir):
    config = json.loads((tiny_run_dir / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_model_dir.resolve())
    assert json.loads((tiny_run_dir / "run.json").read_text())["base_model"] == str(tiny_model_dir)
    model, tokenizer, answer = _readme_recipe(tiny_run_dir)
    ids = tokenizer("Code of box 3?", return_tensors="pt")["input_ids"]
    run = open_run(tiny_run_dir, device="cpu", dtype="fp32")
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, run.model(ids).logits, rtol=1e-5, atol=1e-5)
    settings = GenerationSettings(max_new_tokens=8)
    assert answer.strip() == generate(run, "Where is your office?", system="", settings=settings)


def test_hub_ids_stay_as_they_are():
    assert loadable_base("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.mark.slow
def test_the_embedded_alias_points_at_the_converted_copy(tmp_path, smollm2_tokenizer):  # skips without the model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cached = materialize(resolve_source("smollm2-135m-instruct"))
    assert loadable_base("smollm2-135m-instruct") == cached
    base = AutoModelForCausalLM.from_pretrained(cached, dtype=torch.float32).eval()
    attach_lora(base, ["q_proj", "v_proj"], r=4, alpha=8)
    torch.manual_seed(0)
    for _, m in lora_modules(base):
        torch.nn.init.normal_(m.lora_B.weight, std=0.02)
    save_adapter(base, tmp_path, base_model="smollm2-135m-instruct")
    AutoTokenizer.from_pretrained(cached).save_pretrained(tmp_path)
    model, tokenizer, _ = _readme_recipe(tmp_path)
    ids = tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, base(ids).logits, rtol=1e-4, atol=1e-4)
