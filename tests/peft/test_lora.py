"""LoRA layers: they start as the base model, train only A and B, and their saved adapter loads in PEFT unchanged."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from tunelab.errors import ConfigError
from tunelab.peft.lora import LoRALinear, adapters_disabled, attach_lora, lora_modules, merge_lora
from tunelab.peft.save import load_adapter, save_adapter


def _tiny(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


def _randomize(model):
    torch.manual_seed(1)
    for _, m in lora_modules(model):
        torch.nn.init.normal_(m.lora_B.weight, std=0.05)


def test_fresh_lora_is_the_base_model_and_trains_only_adapters(tiny_model_dir):
    model = _tiny(tiny_model_dir)
    ids = torch.randint(0, model.config.vocab_size, (2, 9))
    before = model(ids).logits
    names = attach_lora(model, ["all-linear"], r=4, alpha=8)
    assert len(names) == 2 * 7  # 2 layers x (q, k, v, o, gate, up, down)
    assert torch.equal(model(ids).logits, before)  # B starts at zero
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)


def test_target_names_are_checked(tiny_model_dir):
    model = _tiny(tiny_model_dir)
    with pytest.raises(ConfigError, match="qq_proj.*available: down_proj"):
        attach_lora(model, ["qq_proj"], r=4, alpha=8)


def test_a_model_without_linear_layers_is_refused_with_its_layer_kind_and_the_methods_that_train_it():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=50, n_positions=32))
    with pytest.raises(ConfigError) as err:
        attach_lora(model, ["all-linear"], r=2, alpha=2)
    text = str(err.value)
    assert "held by Conv1D layers" in text  # GPT-2's matrices; its head (a Linear) is not among them
    assert "method.name: full" in text and "method.name: layers" in text


def test_disable_and_merge(tiny_model_dir):
    model = _tiny(tiny_model_dir)
    ids = torch.randint(0, model.config.vocab_size, (2, 9))
    base = model(ids).logits
    attach_lora(model, ["q_proj", "v_proj", "down_proj"], r=4, alpha=8)
    _randomize(model)
    tuned = model(ids).logits
    assert not torch.allclose(tuned, base)
    with adapters_disabled(model):
        assert torch.equal(model(ids).logits, base)
    merge_lora(model)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    # fp32 re-association of (x A^T) B^T versus x (W + B A)^T: differences at the 1e-6 level.
    torch.testing.assert_close(model(ids).logits, tuned, rtol=1e-4, atol=1e-5)


def test_saved_adapter_loads_in_peft_with_identical_logits(tiny_model_dir, tmp_path):
    from peft import PeftModel

    ours = _tiny(tiny_model_dir)
    attach_lora(ours, ["all-linear"], r=4, alpha=8)
    _randomize(ours)
    save_adapter(ours, tmp_path, base_model=str(tiny_model_dir))
    ids = torch.randint(0, ours.config.vocab_size, (2, 11))
    expected = ours(ids).logits

    peft_model = PeftModel.from_pretrained(_tiny(tiny_model_dir), tmp_path).eval()
    assert torch.equal(peft_model(ids).logits, expected)

    reloaded = load_adapter(_tiny(tiny_model_dir), tmp_path)
    assert torch.equal(reloaded(ids).logits, expected)


def test_attach_puts_the_fast_slots_in_and_merge_takes_them_out():
    """On our decoder, attach_lora puts peft's slot implementations in (grouped q/k/v and gate/up sharing one
    stacked-weight buffer, fused last projections) and merge_lora the default ones back, logits unchanged."""
    from tunelab.models.llama import LlamaConfig, LlamaForCausalLM
    from tunelab.models.slots import Projection, ProjectionGroup, projection_slots
    from tunelab.peft.group import LoRAGroup
    from tunelab.peft.projection import FusedProjection

    torch.manual_seed(0)
    config = dict(model_type="llama", hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=50, max_position_embeddings=64)  # fmt: skip
    model = LlamaForCausalLM(LlamaConfig.from_hf(config)).eval()
    model.init_weights(std=0.1)
    attach_lora(model, ["q_proj", "v_proj", "down_proj"], r=4, alpha=8)
    _randomize(model)
    slots = [getattr(m, n) for m, n in projection_slots(model)]
    assert [type(s) for s in slots[:4]] == [LoRAGroup, FusedProjection, LoRAGroup, FusedProjection]
    assert len({id(s.weights) for s in slots if isinstance(s, LoRAGroup)}) == 1
    ids = torch.randint(0, 50, (2, 9))
    tuned = model(ids)
    merge_lora(model)
    slots = [getattr(m, n) for m, n in projection_slots(model)]
    assert [type(s) for s in slots[:4]] == [ProjectionGroup, Projection, ProjectionGroup, Projection]
    torch.testing.assert_close(model(ids), tuned, rtol=1e-4, atol=1e-5)  # fp32 re-association, as above
