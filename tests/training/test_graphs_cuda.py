"""CUDA graphs replay a micro-batch's forward and backward: the losses and gradients equal eager ones bit for bit."""

import pytest
import torch

from tunelab.kernels import select
from tunelab.models.llama import LlamaConfig, LlamaForCausalLM
from tunelab.peft.lora import attach_lora
from tunelab.quant.linear import materialize_quantized_

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")

SHAPE = dict(
    model_type="llama",
    hidden_size=512,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=4,
    intermediate_size=1376,
    vocab_size=2048,
    max_position_embeddings=1024,
)
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _model(quantized: bool, checkpointing: bool):
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("meta"):
            model = LlamaForCausalLM(LlamaConfig.from_hf(SHAPE), select("auto"))
    finally:
        torch.set_default_dtype(default)
    if quantized:
        materialize_quantized_(model, "cuda", init_std=0.02)
    else:
        model = model.to_empty(device="cuda")
        model.init_weights(std=0.02)
    torch.manual_seed(1)
    attach_lora(model, TARGETS, r=8, alpha=16)
    model.gradient_checkpointing = checkpointing
    return model.train()


def _train(graphs: bool, quantized: bool, checkpointing: bool, into_grads: bool, steps: int = 5, grad_accum: int = 2):
    from tunelab.kernels.lora import accumulate_into_grads
    from tunelab.training.graphs import CapturedLoss

    model = _model(quantized, checkpointing)
    params = [p for p in model.parameters() if p.requires_grad]
    accumulate_into_grads(params, into_grads)  # as `tunelab train` in one process
    optimizer = torch.optim.AdamW(params, lr=1e-3, fused=True)
    ids = torch.randint(0, SHAPE["vocab_size"], (grad_accum, 256), generator=torch.Generator().manual_seed(2)).cuda()
    scale = 1.0 / (grad_accum * 255)
    captured = CapturedLoss(lambda m, b: m(b["ids"], labels=b["ids"]), params) if graphs else None
    losses, grads = [], []
    for _ in range(steps):
        total = 0.0
        for part in ids.split(1):
            if captured is None:
                loss_sum, _ = model(part, labels=part)
                (loss_sum * scale).backward()
            else:
                loss_sum, _ = captured(model, {"ids": part}, scale)
            total += loss_sum.item() * scale
        losses.append(total)
        grads.append(torch.cat([p.grad.flatten().float() for p in params]).clone())
        optimizer.step()
        if captured is None:
            optimizer.zero_grad(set_to_none=True)
        else:
            captured.zero_grads()
    return losses, grads


@pytest.mark.parametrize("into_grads", [False, True], ids=["autograd-sums", "gemm-adds"])
@pytest.mark.parametrize("quantized", [False, True], ids=["lora", "qlora"])
@pytest.mark.parametrize("checkpointing", [False, True], ids=["keep", "recompute"])
def test_graph_replay_equals_eager_bit_for_bit(quantized, checkpointing, into_grads):
    eager_losses, eager_grads = _train(False, quantized, checkpointing, into_grads)
    graph_losses, graph_grads = _train(True, quantized, checkpointing, into_grads)
    assert eager_losses[-1] < eager_losses[0]  # it trains
    assert graph_losses == eager_losses
    for a, b in zip(eager_grads, graph_grads):
        assert torch.equal(a, b)


def test_shapes_beyond_the_graph_limit_run_eagerly_with_the_same_result(monkeypatch):
    from tunelab.training import graphs

    monkeypatch.setattr(graphs, "MAX_GRAPHS", 1)
    model = _model(quantized=False, checkpointing=False)
    params = [p for p in model.parameters() if p.requires_grad]
    captured = graphs.CapturedLoss(lambda m, b: m(b["ids"], labels=b["ids"]), params)
    ids = torch.randint(0, SHAPE["vocab_size"], (2, 128), generator=torch.Generator().manual_seed(3)).cuda()
    captured(model, {"ids": ids[:1]}, 1.0)  # captured: the one graph allowed
    first = [p.grad.clone() for p in params]
    captured.zero_grads()
    loss, _ = captured(model, {"ids": ids[:, :64]}, 1.0)  # another shape: eager
    assert len(captured.graphs) == 1 and torch.isfinite(loss)
    captured.zero_grads()
    captured(model, {"ids": ids[:1]}, 1.0)  # the graph again, unchanged
    assert all(torch.equal(a, p.grad) for a, p in zip(first, params))
