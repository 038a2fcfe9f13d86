"""The guard with the CUDA optimizers: fused AdamW and the Triton AdamW8bit never see a NaN step."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import tunelab.tasks.sft as sft_task  # the sft task computes the loss train_step takes
import tunelab.training.step as step
from tunelab.training.optim import build_optimizer


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["adamw", "adamw_8bit"])
def test_nan_step_leaves_cuda_optimizer_state_untouched(kind, monkeypatch):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2
    )
    model = LlamaForCausalLM(config).cuda()
    optimizer = build_optimizer(model, 1e-3, 0.0, kind)
    if kind == "adamw":
        assert optimizer.defaults.get("fused"), "on CUDA build_optimizer picks the fused AdamW"
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    ids = torch.randint(0, 512, (2, 16), device="cuda")
    batch = {"input_ids": ids, "labels": ids, "attention_mask": torch.ones_like(ids)}
    real, calls = sft_task.summed_loss, {"n": 0}

    def poisoned(model, batch):
        calls["n"] += 1
        value = real(model, batch)
        return value * float("nan") if calls["n"] == 2 else value

    monkeypatch.setattr(sft_task, "summed_loss", poisoned)
    assert not step.train_step(model, [batch], optimizer, scheduler, 1.0)["skipped"]
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    state = {(id(p), k): v.clone() for p, s in optimizer.state.items() for k, v in s.items() if torch.is_tensor(v)}
    assert step.train_step(model, [batch], optimizer, scheduler, 1.0)["skipped"]
    assert all(torch.equal(weights[n], p) for n, p in model.named_parameters())
    after = {(id(p), k): v for p, s in optimizer.state.items() for k, v in s.items() if torch.is_tensor(v)}
    assert state.keys() == after.keys() and all(torch.equal(state[k], after[k]) for k in state)
