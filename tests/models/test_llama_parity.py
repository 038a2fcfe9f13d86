"""Our llama-family decoder against transformers' on 2-layer random models of each family: logits, loss, gradients.

Weights go through `from_hf_model`, the same code the loader uses. Everything runs in fp32 on the CPU, so the two
sides differ only where they order the same maths differently (SDPA vs eager softmax, matmul blocking): rounding of
about 1e-6 relative. A real mistake is far larger: 1% off in rope theta alone moves logits by 2e-3 or more.
"""

from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

from tunelab.kernels import reference
from tunelab.models.hf_adapter import from_hf_model

# Measured: max |difference| 2e-6 where |logits| <= 5, 4e-5 for SmolLM2's |logits| up to 130 (larger sums over a
# 576-wide hidden state); rtol 2e-5 with atol 2e-5 for entries near zero leaves ~10x headroom.
LOGIT_TOL = dict(rtol=2e-5, atol=2e-5)
# Gradients, measured: max |difference| 1e-6 (6e-6 for SmolLM2, whose gradients reach 6); they sum roundings over
# every token, so entries near zero get an absolute allowance of 3x the worst case seen.
GRAD_TOL = dict(rtol=1e-4, atol=2e-5)

SMALL = dict(
    vocab_size=300,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
)
FAMILIES = {
    "llama": dict(model_type="llama", **SMALL),
    # Llama 3.1 rope with a short "original" context so all three frequency bands occur at head_dim 16, plus the
    # optional attention and MLP biases.
    "llama3_rope_bias": dict(
        model_type="llama",
        **SMALL,
        attention_bias=True,
        mlp_bias=True,
        rope_parameters=dict(
            rope_type="llama3",
            rope_theta=10000.0,
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=64,
        ),
    ),
    "mistral": dict(model_type="mistral", **SMALL, sliding_window=None),
    "qwen2": dict(model_type="qwen2", **SMALL, tie_word_embeddings=True),  # q/k/v bias, tied like Qwen2.5-0.5B
    "qwen3": dict(model_type="qwen3", **SMALL, head_dim=32),  # per-head q/k RMSNorm; heads * head_dim != hidden
    "smollm2": dict(
        model_type="llama",
        **{**SMALL, "hidden_size": 576, "intermediate_size": 128, "num_attention_heads": 9, "num_key_value_heads": 3},
        head_dim=64,
        tie_word_embeddings=True,
        rope_parameters=dict(rope_type="default", rope_theta=100000.0),
    ),
}


def reference_ops() -> SimpleNamespace:
    return SimpleNamespace(
        rms_norm=reference.rms_norm,
        apply_rope=reference.apply_rope,
        swiglu=reference.swiglu,
        attention=reference.attention,
        linear_cross_entropy=reference.linear_cross_entropy,
    )


def randomize(model: nn.Module) -> None:
    """Weights far from transformers' init (norms at 1, biases at 0, tiny matrices), so every term shows in logits."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.3 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.normal_(std=0.3)
            elif "embed_tokens" in name:
                p.normal_(std=0.5)
            else:
                p.normal_(std=p.shape[1] ** -0.5)  # unit-variance outputs


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These tensors are tiny: a second intra-op thread only adds waiting, and on a busy 2-core machine OpenMP threads
    spinning against other processes made the module ~10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=list(FAMILIES))
def pair(request):
    torch.manual_seed(0)
    fields = dict(FAMILIES[request.param])
    hf_config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    hf = AutoModelForCausalLM.from_config(hf_config, attn_implementation="eager").float().eval()
    randomize(hf)
    ours = from_hf_model(hf, ops=reference_ops())
    return SimpleNamespace(family=request.param, hf=hf, ours=ours)


def tokens(*shape: int) -> torch.Tensor:
    return torch.randint(3, 300, shape)


def test_parameter_names_match_transformers(pair):
    assert [n for n, _ in pair.ours.named_parameters()] == [n for n, _ in pair.hf.named_parameters()]
    assert set(pair.ours.state_dict()) == set(pair.hf.state_dict())
    tied = pair.hf.config.tie_word_embeddings
    assert (pair.ours.lm_head.weight is pair.ours.model.embed_tokens.weight) == tied


def test_plain_batch_logits(pair):
    ids = tokens(2, 11)
    with torch.no_grad():
        torch.testing.assert_close(pair.ours(ids), pair.hf(ids).logits, **LOGIT_TOL)


def test_offset_positions_logits(pair):
    """Positions far past 0 turn the slow rope frequencies too, where llama3/linear scaling makes its difference."""
    ids = tokens(2, 9)
    positions = torch.arange(9)[None].repeat(2, 1) + torch.tensor([[150], [31]])
    with torch.no_grad():
        torch.testing.assert_close(
            pair.ours(ids, position_ids=positions), pair.hf(ids, position_ids=positions).logits, **LOGIT_TOL
        )


def test_right_padded_batch_logits(pair):
    ids = tokens(3, 12)
    mask = torch.zeros(3, 12, dtype=torch.long)
    for row, length in enumerate((12, 7, 4)):
        mask[row, :length] = 1
    ids = ids * mask  # pad id 0
    with torch.no_grad():
        ours = pair.ours(ids, attention_mask=mask)
        theirs = pair.hf(ids, attention_mask=mask).logits
    real = mask.bool()
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours[real], theirs[real], **LOGIT_TOL)


def test_packed_documents_equal_documents_alone(pair):
    doc_a, doc_b = tokens(1, 7), tokens(1, 9)
    packed = torch.cat((doc_a, doc_b), dim=1)  # (1, 16)
    cu_seqlens = torch.tensor([0, 7, 16], dtype=torch.int32)
    positions = torch.cat((torch.arange(7), torch.arange(9)))[None]
    with torch.no_grad():
        ours = pair.ours(packed, position_ids=positions, cu_seqlens=cu_seqlens)
        alone = torch.cat((pair.hf(doc_a).logits, pair.hf(doc_b).logits), dim=1)
        # The packed row goes through a masked attention over all 16 keys, each document alone through a causal one
        # over its own: the same sums in another blocking. At smollm2's width (576) the logits differ by up to 4.1e-5
        # absolute (seen on one 2-core x86 CPU; 2.9e-5 on another) where they are about 1 in size: fp32 roundoff of
        # two 576-wide layers, not a leak across documents, which would move them by the logits' own size.
        torch.testing.assert_close(ours, alone, rtol=2e-5, atol=1e-4)
        # Without position_ids the model derives the restarting positions from cu_seqlens.
        torch.testing.assert_close(pair.ours(packed, cu_seqlens=cu_seqlens), ours, rtol=0, atol=0)


def padded_batch_with_labels():
    ids = tokens(3, 10)
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    ids = ids * mask
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :2] = -100  # a "prompt" that does not count
    return ids, mask, labels


def test_loss_sum_over_count_equals_transformers_mean(pair):
    ids, mask, labels = padded_batch_with_labels()
    with torch.no_grad():
        loss_sum, count = pair.ours(ids, attention_mask=mask, labels=labels)
        hf_loss = pair.hf(ids, attention_mask=mask, labels=labels).loss
    # Targets are labels shifted left by one: tokens 2..9 of row 0, 2..5 of row 1, token 2 of row 2.
    assert count.item() == 8 + 4 + 1
    torch.testing.assert_close(loss_sum / count, hf_loss, **LOGIT_TOL)


def test_packed_loss_equals_documents_alone(pair):
    doc_a, doc_b = tokens(1, 7), tokens(1, 9)
    packed = torch.cat((doc_a, doc_b), dim=1)
    cu_seqlens = torch.tensor([0, 7, 16], dtype=torch.int32)
    with torch.no_grad():
        sum_a, n_a = pair.ours(doc_a, labels=doc_a)
        sum_b, n_b = pair.ours(doc_b, labels=doc_b)
        contract = packed.clone()
        contract[0, 7] = -100  # the caller's side of the packing contract: no label at a document's first token
        for labels in (contract, packed):  # the model also guards the boundary itself
            loss_sum, count = pair.ours(packed, cu_seqlens=cu_seqlens, labels=labels)
            assert count.item() == n_a.item() + n_b.item() == 6 + 8
            torch.testing.assert_close(loss_sum, sum_a + sum_b, **LOGIT_TOL)


def grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def our_grads(pair, ids, mask, labels, checkpointing: bool) -> dict[str, torch.Tensor]:
    pair.ours.zero_grad(set_to_none=True)
    pair.ours.gradient_checkpointing = checkpointing
    try:
        loss_sum, count = pair.ours(ids, attention_mask=mask, labels=labels)
        (loss_sum / count).backward()
    finally:
        pair.ours.gradient_checkpointing = False
    return grads(pair.ours)


def test_gradients_match_transformers_and_checkpointing(pair):
    ids, mask, labels = padded_batch_with_labels()
    pair.hf.zero_grad(set_to_none=True)
    pair.hf(ids, attention_mask=mask, labels=labels).loss.backward()
    theirs = grads(pair.hf)
    ours = our_grads(pair, ids, mask, labels, checkpointing=False)
    assert ours.keys() == theirs.keys()
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], **GRAD_TOL, msg=lambda m, name=name: f"{name}: {m}")
    # Recomputing each layer in backward must give the same gradients; only the saved activations differ.
    calls = []
    # On the attention: the recomputation calls the layer's backward_through, which calls its submodules.
    hook = pair.ours.model.layers[0].self_attn.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        recomputed = our_grads(pair, ids, mask, labels, checkpointing=True)
    finally:
        hook.remove()
    assert len(calls) == 2  # the layer ran again during backward: checkpointing was really on
    for name in ours:
        # The recomputation sums the residual's and the MLP's gradients itself: another order, roundings of 1e-7 that
        # the layers above amplify (1.3e-6 absolute seen on one host CPU at smollm2's width, 576).
        torch.testing.assert_close(
            recomputed[name], ours[name], rtol=1e-5, atol=2e-6, msg=lambda m, name=name: f"{name}: {m}"
        )
