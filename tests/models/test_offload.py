"""Checkpointing with layer inputs parked in host memory gives the gradients of plain checkpointing (CUDA only)."""

import pytest
import torch

from tunelab.models.llama import LlamaConfig, LlamaForCausalLM
from tunelab.peft.lora import attach_lora

pytestmark = pytest.mark.gpu  # offloading activations needs CUDA


def _model(mode, dropout=0.1):
    config = LlamaConfig.from_hf(
        dict(
            model_type="llama",
            hidden_size=128,
            intermediate_size=344,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=500,
            rms_norm_eps=1e-5,
            max_position_embeddings=512,
            rope_theta=10000.0,
        )
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).cuda()
    model.init_weights()
    attach_lora(model, ["all-linear"], r=4, alpha=8, dropout=dropout)
    torch.manual_seed(1)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    model.gradient_checkpointing = mode
    return model.train()


@pytest.mark.parametrize("dropout", [0.1, 0.0])  # 0.0: each layer's midpoint is parked too (backward from h)
def test_offloaded_checkpointing_matches_plain_checkpointing(dropout):
    ids = torch.randint(0, 500, (2, 64), device="cuda")
    grads = {}
    for mode in (True, "offload"):
        model = _model(mode, dropout)
        torch.cuda.manual_seed(7)  # the same dropout masks in both runs
        for step in range(2):  # the second step reuses the landing buffers of the first
            model.zero_grad(set_to_none=True)
            loss_sum, count = model(ids[:, : 64 - 16 * step], labels=ids[:, : 64 - 16 * step])  # and a smaller batch
            (loss_sum / count).backward()
        grads[mode] = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    assert grads[True].keys() == grads["offload"].keys() and grads[True]
    for name in grads[True]:
        torch.testing.assert_close(grads["offload"][name], grads[True][name], rtol=1e-5, atol=1e-6, msg=name)
