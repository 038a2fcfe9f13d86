"""Fixtures of the export tests: a small real byte-level BPE tokenizer (GGUF readers load it fast), a tiny LoRA run
on a sharp-attention base and its merged model (`tiny_run`, `tiny_merged`), the GGUF tests' helpers (`gguf_kit`), the
merge tests' LoRA run on the tiny model (`lora_run`; merge_setup.py), and the hub that push tests push to (`hub`:
hub_recorder.py)."""

import json
from types import SimpleNamespace

import huggingface_hub
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from tunelab.config import RunConfig, dump_yaml
from tunelab.export.gguf import encode_tensor, gguf_shape, gguf_tensors
from tunelab.export.merge import merged_model
from tunelab.models.load import materialize, resolve_source
from tunelab.peft.lora import attach_lora, lora_modules
from tunelab.peft.save import save_adapter

from . import merge_setup
from .hub_recorder import TOKEN, Hub

SMALL_VOCAB = 2048


@pytest.fixture(scope="session")
def small_tokenizer(smollm2_tokenizer, tmp_path_factory):
    """SmolLM2's tokenizer cut to its first 2048 tokens and the merges among them: still a real byte-level BPE
    with the same special tokens and chat template, but GGUF readers (transformers parses every token string in
    Python) load it in a tenth of the time."""
    path = tmp_path_factory.mktemp("small-tokenizer")
    smollm2_tokenizer.save_pretrained(path)
    spec = json.loads((path / "tokenizer.json").read_text())
    vocab = {t: i for t, i in spec["model"]["vocab"].items() if i < SMALL_VOCAB}
    spec["model"]["vocab"] = vocab
    spec["model"]["merges"] = [
        m for m in spec["model"]["merges"] if m[0] in vocab and m[1] in vocab and m[0] + m[1] in vocab
    ]
    (path / "tokenizer.json").write_text(json.dumps(spec))
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert len(tokenizer) == SMALL_VOCAB
    return tokenizer


IDS = torch.tensor([[1, 504, 1458, 314, 1760, 260, 1104, 2], [17, 29, 2000, 2047, 12, 9, 8, 7]])


def _lora_run(base, tokenizer, run_dir, std, targets=("all-linear",), system_prompt=None, template="auto"):
    """A finished LoRA run on model `base` (a directory or alias) whose B matrices are N(0, std)."""
    model = AutoModelForCausalLM.from_pretrained(materialize(resolve_source(str(base))), dtype=torch.float32).eval()
    torch.manual_seed(3)  # A's random init too: the run must not depend on what earlier tests drew
    attach_lora(model, list(targets), r=4, alpha=8)
    for _, m in lora_modules(model):
        if std:
            torch.nn.init.normal_(m.lora_B.weight, std=std)
    save_adapter(model, run_dir, base_model=str(base))
    tokenizer.save_pretrained(run_dir)
    info = {
        "base_model": str(base),
        "method": "lora",
        "template": template,
        "system_prompt": system_prompt,
        "quantize_base": "none",
        "finished": True,
    }
    (run_dir / "run.json").write_text(json.dumps(info))
    (run_dir / "config.yaml").write_text(dump_yaml(RunConfig()))  # as training saves it: the self-check reads it
    return run_dir


@pytest.fixture(scope="session")
def sharp_base(small_tokenizer, tiny_llama_config, tmp_path_factory):
    """A 2-layer random Llama with q and k scaled up 8x: random init gives near-uniform attention, where the rotary
    layout hardly matters; sharper attention makes a wrong q/k row order show in the logits (checked below)."""
    tok = small_tokenizer
    torch.manual_seed(0)
    # the embedding has 8 rows more than the tokenizer has tokens, as models padded to a round size do
    config = tiny_llama_config(tok, vocab_size=SMALL_VOCAB + 8)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(8)
            layer.self_attn.k_proj.weight.mul_(8)
    path = tmp_path_factory.mktemp("sharp")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_run(sharp_base, small_tokenizer, tmp_path_factory):
    return _lora_run(sharp_base, small_tokenizer, tmp_path_factory.mktemp("run"), std=0.05)


@pytest.fixture(scope="session")
def tiny_merged(tiny_run):
    merged = merged_model(tiny_run)
    with torch.no_grad():
        return merged, merged.model(IDS).logits


def _simulated(model, qtype):
    """The merged model with every weight rounded as the GGUF file stores it (dequantize(quantize(W)))."""
    import gguf

    shape = gguf_shape(model.config)
    sim = AutoModelForCausalLM.from_config(model.config).eval()
    state = {}
    hf_names = [n for n in model.state_dict() if not (shape.tied and n == "lm_head.weight")]
    for hf_name, (gguf_name, t) in zip(hf_names, gguf_tensors(model, shape), strict=True):
        data, raw = encode_tensor(gguf_name, t, qtype)
        state[hf_name] = torch.from_numpy(gguf.quants.dequantize(data, raw).astype(np.float32).reshape(t.shape))
    # the permutation moves whole rows and quantization blocks lie within rows, so un-permuting the rounded
    # permuted matrix equals rounding the original: only q and k need undoing for the reference
    for name, t in state.items():
        if name.endswith("q_proj.weight"):
            state[name] = _unpermute(t, shape.heads)
        elif name.endswith("k_proj.weight"):
            state[name] = _unpermute(t, shape.kv_heads)
    sim.load_state_dict(state, strict=False)
    sim.tie_weights()
    return sim


def _unpermute(w, n_heads):
    return w.reshape(n_heads, w.shape[0] // n_heads // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


# Tolerances against the fp32 merged model (logits of the tiny model are ~1 in size):
TOLERANCES = {
    "f16": 2e-3,  # f16 keeps 11 significant bits: each weight off by <= 2^-12 relative
    "q8_0": 3e-2,  # 8-bit integers per block of 32 with one f16 scale: ~0.4% error per weight
    "bf16": 1e-2,  # bf16 keeps 8 significant bits
    "q4_0": 3e-1,  # 4-bit integers per block: ~7% error per weight (token embedding kept at q8_0)
}


@pytest.fixture(scope="session")
def gguf_kit():
    """The GGUF tests' helpers: ids (two rows of token ids), lora_run (a finished LoRA run on a base), simulated (the
    merged model with its weights rounded as a GGUF qtype stores them), unpermute (undoes the q/k row order) and
    tolerances (per qtype, against the fp32 merged model)."""
    return SimpleNamespace(
        ids=IDS, lora_run=_lora_run, simulated=_simulated, unpermute=_unpermute, tolerances=TOLERANCES
    )


@pytest.fixture
def lora_run(tiny_model_dir, smollm2_tokenizer, tmp_path):
    """The merge tests' run: a finished LoRA run on the tiny model (SmolLM2's vocabulary) with a random (non-zero) B,
    and the logits its model gives on merge_setup.IDS."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    attach_lora(model, ["all-linear"], r=4, alpha=8)
    torch.manual_seed(3)
    for _, m in lora_modules(model):
        torch.nn.init.normal_(m.lora_B.weight, std=0.05)
    with torch.no_grad():
        tuned = model(merge_setup.IDS).logits
    run = merge_setup.write_run(tmp_path / "run", model, smollm2_tokenizer, tiny_model_dir, "lora")
    return run, tuned


@pytest.fixture
def hub(monkeypatch):
    """The hub recorder, with a token and offline mode off (the tests run with HF_HUB_OFFLINE=1)."""
    recorder = Hub()
    recorder.install(monkeypatch)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: TOKEN)
    return recorder
