"""State-dict mapping between Hugging Face llama-family checkpoints and our model: strict loading with clear errors."""

import pytest
import torch
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model
from transformers import AutoConfig, AutoModelForCausalLM

from tunelab.errors import ModelError
from tunelab.models.hf_adapter import from_hf_model, load_hf_state_dict, to_tunelab_state_dict
from tunelab.models.llama import LlamaConfig, LlamaForCausalLM

FIELDS = dict(
    vocab_size=97,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
)


def hf_model(model_type: str = "llama", **extra):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **FIELDS, **extra))


def our_model(hf) -> LlamaForCausalLM:
    return LlamaForCausalLM(LlamaConfig.from_hf(hf.config))


def test_from_hf_model_shares_weights_and_keeps_mode():
    hf = hf_model("qwen2", tie_word_embeddings=True)
    hf.train()
    ours = from_hf_model(hf)
    assert ours.training
    assert ours.model.layers[1].self_attn.q_proj.bias.data_ptr() == hf.model.layers[1].self_attn.q_proj.bias.data_ptr()
    assert ours.lm_head.weight is ours.model.embed_tokens.weight
    assert not any(p.is_meta for p in ours.parameters())
    assert all(p.requires_grad for p in ours.parameters())


def test_from_hf_model_refuses_unsupported_configs():
    with pytest.raises(ModelError, match="sliding_window"):
        from_hf_model(hf_model("mistral", sliding_window=16, max_position_embeddings=64))


def test_copying_load_converts_dtype_and_accepts_hf_layouts():
    hf = hf_model("llama", tie_word_embeddings=True)
    state = {k: v.to(torch.bfloat16) for k, v in hf.state_dict().items() if k != "lm_head.weight"}  # tied: absent
    bare = {k.removeprefix("model."): v for k, v in state.items()}  # a LlamaModel checkpoint, no "model." prefix
    bare["layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(4)  # old checkpoints saved this buffer
    ours = our_model(hf)
    load_hf_state_dict(ours, bare)
    assert ours.model.norm.weight.dtype == torch.float32
    expected = state["model.layers.1.mlp.down_proj.weight"].float()
    torch.testing.assert_close(ours.model.layers[1].mlp.down_proj.weight, expected, rtol=0, atol=0)
    assert ours.lm_head.weight is ours.model.embed_tokens.weight


def test_untied_lm_head_is_required():
    hf = hf_model("llama")
    state = hf.state_dict()
    del state["lm_head.weight"]
    with pytest.raises(ModelError, match=r"missing \(1\): lm_head\.weight"):
        load_hf_state_dict(our_model(hf), state)


def test_mismatches_are_listed():
    hf = hf_model("llama")
    state = dict(hf.state_dict())
    state["model.layers.2.mlp.up_proj.weight"] = torch.zeros(48, 32)  # a third layer the config does not have
    state["model.norm.weight"] = torch.zeros(31)
    del state["model.layers.0.self_attn.k_proj.weight"]
    with pytest.raises(ModelError) as err:
        load_hf_state_dict(our_model(hf), state)
    message = str(err.value)
    assert "missing (1): model.layers.0.self_attn.k_proj.weight" in message
    assert "unexpected (1): model.layers.2.mlp.up_proj.weight" in message
    assert "model.norm.weight: checkpoint (31,) vs model (32,)" in message


def test_tied_copy_of_lm_head_is_dropped():
    config = LlamaConfig.from_hf(AutoConfig.for_model("llama", **FIELDS, tie_word_embeddings=True))
    mapped = to_tunelab_state_dict({"lm_head.weight": torch.zeros(1), "embed_tokens.weight": torch.ones(1)}, config)
    assert list(mapped) == ["model.embed_tokens.weight"]


def test_lora_adapter_keys_match_transformers():
    """PEFT finds the same target modules by name in both models, so an adapter saved from one loads into the other."""
    lora = dict(r=4, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    hf = hf_model("qwen3", head_dim=16)
    ours = inject_adapter_in_model(LoraConfig(**lora), our_model(hf))
    hf = inject_adapter_in_model(LoraConfig(**lora), hf)
    keys = set(get_peft_model_state_dict(ours))
    assert len(keys) == 2 * 7 * 2  # lora_A and lora_B for 7 projections in each of 2 layers
    assert keys == set(get_peft_model_state_dict(hf))
