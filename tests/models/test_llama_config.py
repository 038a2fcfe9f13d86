"""Reading Hugging Face configs into LlamaConfig: both rope field layouts, family quirks, refusals naming a field."""

import math

import pytest
import torch
from transformers import AutoConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from tunelab.errors import ModelError
from tunelab.models.llama import LlamaConfig, RopeConfig, supports, unsupported_reason
from tunelab.models.rope import rope_inv_freq

LLAMA_31_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}
BASE = {
    "vocab_size": 128,
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 131072,
}


def test_old_and_new_rope_fields_give_the_same_config():
    old = {"model_type": "llama", **BASE, "rope_theta": 500000.0, "rope_scaling": LLAMA_31_SCALING}  # transformers 4
    new = {"model_type": "llama", **BASE, "rope_parameters": {**LLAMA_31_SCALING, "rope_theta": 500000.0}}  # 5
    hf_object = AutoConfig.for_model("llama", **BASE, rope_theta=500000.0, rope_scaling=dict(LLAMA_31_SCALING))
    expected = RopeConfig(
        theta=500000.0,
        kind="llama3",
        factor=8.0,
        low_freq_factor=1.0,
        high_freq_factor=4.0,
        original_max_position_embeddings=8192,
    )
    for source in (old, new, hf_object):
        assert LlamaConfig.from_hf(source).rope == expected


def test_old_linear_scaling_with_type_key():
    cfg = LlamaConfig.from_hf({"model_type": "llama", **BASE, "rope_scaling": {"type": "linear", "factor": 4.0}})
    assert cfg.rope == RopeConfig(theta=10000.0, kind="linear", factor=4.0)


def test_transformers_config_objects_expose_the_fields_we_read():
    """transformers renames fields between majors; these are the ones this version stores, per family."""
    qwen2 = LlamaConfig.from_hf(AutoConfig.for_model("qwen2", **BASE, tie_word_embeddings=True))
    assert (qwen2.qkv_bias, qwen2.o_bias, qwen2.qk_norm, qwen2.tie_word_embeddings) == (True, False, False, True)
    assert qwen2.head_dim == 16 and qwen2.num_kv_heads == 2
    qwen3 = LlamaConfig.from_hf(AutoConfig.for_model("qwen3", **BASE, head_dim=32, rms_norm_eps=1e-5))
    assert (qwen3.qk_norm, qwen3.head_dim, qwen3.rms_norm_eps, qwen3.qkv_bias) == (True, 32, 1e-5, False)
    # Without head_dim each family falls back to its own default, as transformers does.
    for family in ("llama", "mistral", "qwen2", "qwen3"):
        raw = {"model_type": family, **BASE, "sliding_window": None}
        hf_head_dim = getattr(AutoConfig.for_model(**raw), "head_dim", None) or 64 // 4  # Qwen2Config has no field
        assert LlamaConfig.from_hf(raw).head_dim == hf_head_dim == (128 if family == "qwen3" else 16)
    llama = LlamaConfig.from_hf(AutoConfig.for_model("llama", **BASE, attention_bias=True, mlp_bias=True))
    assert (llama.qkv_bias, llama.o_bias, llama.mlp_bias, llama.family) == (True, True, True, "llama")
    mistral = LlamaConfig.from_hf(AutoConfig.for_model("mistral", **BASE, sliding_window=None, rope_theta=1e6))
    assert (mistral.family, mistral.rope.theta, mistral.qkv_bias) == ("mistral", 1e6, False)


def test_qwen2_config_json_with_sliding_window_switched_off_is_supported():
    # As shipped in Qwen2.5 config.json: a window value that is unused because use_sliding_window is false.
    raw = {
        "model_type": "qwen2",
        **BASE,
        "use_sliding_window": False,
        "sliding_window": 32768,
        "max_window_layers": 21,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": True,
    }
    assert supports(raw)
    assert LlamaConfig.from_hf(raw).rope.theta == 1e6


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"model_type": "mixtral"}, "model_type"),
        ({"model_type": "mistral"}, "sliding_window"),  # transformers' default window 4096 < 131072 context
        ({"model_type": "mistral", "sliding_window": 4096}, "sliding_window"),
        ({"model_type": "qwen2", "use_sliding_window": True, "sliding_window": 4096}, "use_sliding_window"),
        ({"layer_types": ["full_attention", "sliding_attention"]}, "layer_types"),
        ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}}, "rope_type"),
        ({"rope_scaling": {"type": "dynamic", "factor": 2.0}}, "rope_type"),
        ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "low_freq_factor"),
        ({"partial_rotary_factor": 0.5}, "partial_rotary_factor"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"num_local_experts": 8}, "num_local_experts"),
        ({"attention_dropout": 0.1}, "attention_dropout"),
        ({"num_key_value_heads": 3}, "num_key_value_heads"),
        ({"quantization_config": {"quant_method": "gptq"}}, "quantization_config"),
        ({"num_hidden_layers": None}, "num_hidden_layers"),
    ],
)
def test_unsupported_configs_name_the_field(change, field):
    raw = {"model_type": "llama", **BASE, **change}
    assert not supports(raw)
    assert field in unsupported_reason(raw)
    with pytest.raises(ModelError, match=field):
        LlamaConfig.from_hf(raw)


def test_supported_families_pass():
    for family in ("llama", "qwen2", "qwen3"):
        assert unsupported_reason({"model_type": family, **BASE}) is None
    assert unsupported_reason({"model_type": "mistral", **BASE, "sliding_window": None}) is None
    # A window as long as the context never limits attention.
    assert supports({"model_type": "mistral", **BASE, "sliding_window": 131072})


@pytest.mark.parametrize(
    "rope_parameters",
    [
        {"rope_type": "default", "rope_theta": 500000.0},
        {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.5},
        {**LLAMA_31_SCALING, "rope_theta": 500000.0},
        {**LLAMA_31_SCALING, "rope_theta": 10000.0, "original_max_position_embeddings": 64},
    ],
)
def test_inverse_frequencies_equal_transformers(rope_parameters):
    hf_config = AutoConfig.for_model(
        "llama", **{**BASE, "hidden_size": 512, "num_attention_heads": 4}, rope_parameters=dict(rope_parameters)
    )
    ours = rope_inv_freq(LlamaConfig.from_hf(hf_config).rope, head_dim=128)
    kind = rope_parameters["rope_type"]
    if kind == "default":
        theirs = 1.0 / (500000.0 ** (torch.arange(0, 128, 2).float() / 128))
    else:
        theirs, _ = ROPE_INIT_FUNCTIONS[kind](hf_config, device=torch.device("cpu"))
    # Same formula in the same fp32 order, except llama3's clamp instead of three-way selection: at most 1 ulp.
    torch.testing.assert_close(ours, theirs, rtol=2e-7, atol=0)


def test_llama3_rope_keeps_fast_and_stretches_slow_frequencies():
    rope = RopeConfig(theta=500000.0, kind="llama3", factor=8.0, original_max_position_embeddings=8192)
    plain = rope_inv_freq(RopeConfig(theta=500000.0), 128)
    scaled = rope_inv_freq(rope, 128)
    wavelength = 2 * math.pi / plain
    assert torch.equal(scaled[wavelength < 8192 / 4], plain[wavelength < 8192 / 4])
    torch.testing.assert_close(scaled[wavelength > 8192], plain[wavelength > 8192] / 8)
    between = (wavelength > 8192 / 4) & (wavelength < 8192)
    assert between.any() and ((scaled[between] < plain[between]) & (scaled[between] > plain[between] / 8)).all()
