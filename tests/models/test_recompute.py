"""Checkpointing's recomputation gives the gradients of a plain backward, for every way a layer can be trained.

The recomputation (`backward_through`) skips the down projection's GEMM and backpropagates the MLP in token chunks,
keeps dropout's masks (RNG replay), and
leaves frozen layers below every trained one out of backward. Everything on the CPU in fp32 with the reference ops;
the offloaded variant is compared on CUDA in test_offload.py.
"""

import pytest
import torch
from torch import nn

from tunelab.models.llama import LlamaConfig, LlamaForCausalLM
from tunelab.models.slots import linear_grad_only
from tunelab.peft.lora import attach_lora
from tunelab.quant.linear import quantize_model_

CONFIG = dict(
    model_type="llama",
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=200,
    rms_norm_eps=1e-5,
    max_position_embeddings=128,
    rope_theta=10000.0,
    mlp_bias=True,
)


def _model(method: str, checkpointing: bool, chunk: int | None = 4096, dropout: float = 0.2) -> LlamaForCausalLM:
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig.from_hf(CONFIG))
    model.init_weights(std=0.1)
    if method == "qlora":
        quantize_model_(model)
    if method in ("lora", "qlora"):
        attach_lora(model, ["all-linear"], r=4, alpha=8, dropout=dropout)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                nn.init.normal_(p, std=0.05)  # B = 0 would hide the update's contribution to the input gradients
    elif method == "layers":  # only the top layer trains: the two below need no backward at all
        for p in model.parameters():
            p.requires_grad_(False)
        for p in model.model.layers[-1].parameters():
            p.requires_grad_(True)
    model.gradient_checkpointing = checkpointing
    for layer in model.model.layers:
        layer.mlp_chunk_tokens = chunk
    return model.train()


@pytest.mark.parametrize("chunk", [None, 7])  # all tokens at once; chunks of 7 of the 48 tokens, the last one short
@pytest.mark.parametrize("method", ["full", "lora", "qlora", "layers"])
def test_checkpointed_gradients_equal_plain_ones(method, chunk):
    ids = torch.randint(0, 200, (2, 24), generator=torch.Generator().manual_seed(1))
    grads, losses = {}, {}
    for checkpointing in (False, True):
        model = _model(method, checkpointing, chunk, dropout=0.0 if chunk else 0.2)  # chunks: see test_dropout_...
        torch.manual_seed(5)  # the same dropout masks in both runs, which the recomputation must draw again
        loss_sum, count = model(ids, labels=ids)
        (loss_sum / count).backward()
        losses[checkpointing] = loss_sum.item()
        grads[checkpointing] = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert losses[True] == pytest.approx(losses[False], rel=1e-6)
    assert grads[True].keys() == grads[False].keys() and grads[True]
    for name, g in grads[False].items():
        assert g is not None and g.abs().sum() > 0, name
        torch.testing.assert_close(grads[True][name], g, rtol=1e-5, atol=1e-6, msg=name)


def test_packed_batch_checkpointed_gradients_equal_plain_ones():
    ids = torch.randint(0, 200, (1, 30), generator=torch.Generator().manual_seed(2))
    cu_seqlens = torch.tensor([0, 7, 19, 30], dtype=torch.int32)
    grads = {}
    for checkpointing in (False, True):
        model = _model("lora", checkpointing, chunk=8, dropout=0.0)
        torch.manual_seed(5)
        loss_sum, count = model(ids, cu_seqlens=cu_seqlens, labels=ids)
        (loss_sum / count).backward()
        grads[checkpointing] = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    for name, g in grads[False].items():
        torch.testing.assert_close(grads[True][name], g, rtol=1e-5, atol=1e-6, msg=name)


def test_packed_boundaries_are_read_once_per_forward(monkeypatch):
    """The documents' boundaries (a device sync on CUDA) are read by the model once, for every layer's attention and
    for their recomputation in backward."""
    from tunelab.kernels import reference

    reads = []
    real = reference.document_bounds
    monkeypatch.setattr(reference, "document_bounds", lambda *a: reads.append(a[1]) or real(*a))
    model = _model("lora", checkpointing=True, chunk=8, dropout=0.0)
    ids = torch.randint(0, 200, (1, 30), generator=torch.Generator().manual_seed(2))
    loss_sum, count = model(ids, cu_seqlens=torch.tensor([0, 7, 19, 30], dtype=torch.int32), labels=ids)
    (loss_sum / count).backward()
    assert reads == [30] and len(model.model.layers) == 3


def test_frozen_layers_below_the_trained_ones_are_not_recomputed():
    model = _model("layers", True)
    recomputed = []
    for index, layer in enumerate(model.model.layers):
        run = layer.backward_through
        layer.backward_through = lambda *args, _run=run, _i=index: recomputed.append(_i) or _run(*args)
    ids = torch.randint(0, 200, (1, 16))
    loss_sum, count = model(ids, labels=ids)
    loss_sum.backward()
    assert recomputed == [2]  # the trained top layer only
    assert model.model.layers[0].self_attn.q_proj.weight.grad is None
    assert model.model.layers[2].mlp.down_proj.weight.grad is not None


def test_linear_grad_only_has_the_gradients_of_linear():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 8, requires_grad=True)
    w = torch.randn(6, 8, requires_grad=True)
    b = torch.randn(6, requires_grad=True)
    dy = torch.randn(3, 5, 6)
    expected = torch.autograd.grad(torch.nn.functional.linear(x, w, b), (x, w, b), dy)
    out = linear_grad_only(x, w, b)
    assert out.shape == (3, 5, 6)
    for got, want in zip(torch.autograd.grad(out, (x, w, b), dy), expected, strict=True):
        torch.testing.assert_close(got, want)


def test_dropout_in_the_mlp_turns_chunking_off_so_the_masks_match_forward():
    ids = torch.randint(0, 200, (2, 24), generator=torch.Generator().manual_seed(1))
    grads = {}
    for checkpointing in (False, True):
        model = _model("lora", checkpointing, chunk=7, dropout=0.2)
        torch.manual_seed(5)
        loss_sum, count = model(ids, labels=ids)
        (loss_sum / count).backward()
        grads[checkpointing] = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    for name, g in grads[False].items():
        torch.testing.assert_close(grads[True][name], g, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
def test_backward_from_the_midpoint_equals_backward_through(method):
    """Offload's midpoint path (MLP from a given h, then attention for its gradients only, o_proj's GEMM skipped)
    gives the gradients of the whole-layer recomputation."""
    ids = torch.randint(0, 200, (2, 24), generator=torch.Generator().manual_seed(1))
    grads = {}
    for split in (False, True):
        model = _model(method, checkpointing=False, chunk=7, dropout=0.0)
        layer = model.model.layers[1]
        with torch.no_grad():
            x = model.model.embed_tokens(ids) * 3
            args = _rope_args(model, ids)
            h = x + layer.self_attn(layer.input_layernorm(x), *args)
        x = x.detach().requires_grad_(True)
        grad_out = torch.randn_like(x)
        if split:
            grad_h = layer.backward_mlp(h, grad_out)
            layer.backward_attention(x, grad_h, *args)
        else:
            layer.backward_through(x, grad_out, *args)
        grads[split] = {"x": x.grad} | {n: p.grad for n, p in layer.named_parameters() if p.requires_grad}
    for name, g in grads[False].items():
        assert g is not None and g.abs().sum() > 0, name
        # x's gradient sums the residual and attention paths in another order: fp32 rounding of values up to ~10
        torch.testing.assert_close(grads[True][name], g, rtol=1e-5, atol=1e-5, msg=name)


def _rope_args(model, ids):
    from tunelab.models.rope import rope_cos_sin, rope_inv_freq

    config = model.config
    positions = torch.arange(ids.shape[1])[None].expand(ids.shape[0], -1)
    cos, sin = rope_cos_sin(positions, rope_inv_freq(config.rope, config.head_dim), torch.float32)
    return cos, sin, None, None


@pytest.mark.parametrize("method", ["lora", "full"])
def test_selective_checkpointing_equals_all_and_no_layers(method):
    """checkpoint_layers=k recomputes the lowest k layers: loss and gradients equal those of no checkpointing and of
    every layer checkpointed, and exactly k layers go through the recomputation."""
    ids = torch.randint(0, 200, (2, 24), generator=torch.Generator().manual_seed(3))
    results = {}
    for name, checkpointing, count in (("none", False, None), ("all", True, None), ("lowest 2", True, 2)):
        model = _model(method, checkpointing, dropout=0.2)
        model.checkpoint_layers = count
        recomputed = []
        for index, layer in enumerate(model.model.layers):
            original = layer.backward_through
            layer.backward_through = lambda *a, _i=index, _f=original, _r=recomputed: (_r.append(_i), _f(*a))[1]
        torch.manual_seed(5)
        loss_sum, num = model(ids, labels=ids)
        (loss_sum / num).backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
        results[name] = (loss_sum.item(), grads, sorted(recomputed))
    assert results["none"][2] == [] and results["all"][2] == [0, 1, 2] and results["lowest 2"][2] == [0, 1]
    for name in ("all", "lowest 2"):
        assert results[name][0] == pytest.approx(results["none"][0], rel=1e-6)
        for key, g in results["none"][1].items():
            assert g.abs().sum() > 0, key
            torch.testing.assert_close(results[name][1][key], g, rtol=1e-5, atol=1e-6, msg=f"{name}: {key}")


def test_checkpoint_layers_rejects_a_negative_count():
    with pytest.raises(ValueError, match="checkpoint_layers"):
        _model("lora", True).checkpoint_layers = -1
