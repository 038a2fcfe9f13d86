"""Projection slots: they add nothing to the parameter names or the state dict, call whatever module sits under a
projection's name, and the model's pass clock moves once per forward (not in the recomputation)."""

import torch
from torch import nn

from tunelab.models.llama import LlamaConfig, LlamaForCausalLM
from tunelab.models.slots import Projection, ProjectionGroup, projection_slots

CONFIG = dict(
    model_type="llama",
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=50,
    max_position_embeddings=64,
)


def _model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig.from_hf(CONFIG))
    model.init_weights(std=0.1)
    return model


def test_slots_are_not_modules_and_leave_the_names_alone():
    model = _model()
    slots = [getattr(module, name) for module, name in projection_slots(model)]
    assert [type(s) for s in slots[:4]] == [ProjectionGroup, Projection, ProjectionGroup, Projection]
    assert len(slots) == 4 * 2  # qkv, o, gate_up, down in each layer
    assert not any(".qkv" in k or ".gate_up" in k or k.endswith((".o", ".down")) for k in model.state_dict())
    attn = model.model.layers[0].self_attn
    assert attn.qkv.projections() == (attn.q_proj, attn.k_proj, attn.v_proj)
    assert "qkv=ProjectionGroup(q_proj, k_proj, v_proj), o=Projection(o_proj)" in repr(attn)


def test_a_projection_swapped_in_by_name_is_the_one_called():
    model = _model()
    ids = torch.randint(0, 50, (2, 7))
    calls = []

    class Counting(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            calls.append(x.shape)
            return self.inner(x)

    with torch.no_grad():
        before = model(ids)
        mlp = model.model.layers[1].mlp
        mlp.down_proj = Counting(mlp.down_proj)
        model.model.layers[0].self_attn.k_proj = Counting(model.model.layers[0].self_attn.k_proj)
        after = model(ids)
    assert calls == [(2, 7, 32), (2, 7, 48)]  # layer 0's k_proj, then layer 1's down_proj
    assert torch.equal(after, before)


def test_the_pass_clock_moves_once_per_forward_and_not_in_the_recomputation():
    model = _model().train()
    model.gradient_checkpointing = True
    ids = torch.randint(0, 50, (2, 7))
    clock = model.model.passes
    assert all(getattr(m, n).clock is clock for m, n in projection_slots(model))
    for step in range(1, 3):
        loss_sum, count = model(ids, labels=ids)
        (loss_sum / count).backward()  # recomputes every layer
        assert clock.now == step
