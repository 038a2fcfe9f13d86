"""Grouped LoRA projections (q/k/v, gate/up as one GEMM) give the outputs and gradients of the projections run one by
one: 16-bit and NF4 bases, biases, grouped-query widths, both backward paths (gradients side by side in the forward's
buffer, and apart), spare columns used in place, and a whole model with and without checkpointing. CPU, fp32."""

import copy

import pytest
import torch
from torch import nn

import tunelab.kernels.lora as lora_kernels
from tunelab.kernels import reference
from tunelab.models.llama import LlamaConfig, LlamaForCausalLM
from tunelab.models.slots import PassClock, reserve_scratch
from tunelab.peft.group import GroupWeights, LoRAGroup, set_grouping
from tunelab.peft.lora import LoRALinear, attach_lora
from tunelab.peft.projection import FusedProjection
from tunelab.quant.linear import NF4Linear, quantize_model_
from tunelab.quant.nf4_ops import DequantWorkspace

IN = 48


def _members(kind: str, outs=(48, 16, 16), ranks=(4, 4, 4), bias=False) -> list[LoRALinear]:
    torch.manual_seed(0)
    members = []
    for out, r in zip(outs, ranks):
        base = nn.Linear(IN, out, bias=bias)
        nn.init.normal_(base.weight, std=0.2)
        if bias:
            nn.init.normal_(base.bias, std=0.2)
        if kind == "nf4":
            base = NF4Linear.from_linear(base)
        m = LoRALinear(base, r=r, alpha=2.0 * r)
        nn.init.normal_(m.lora_B.weight, std=0.1)  # B = 0 would hide the update's share of every gradient
        members.append(m)
    return members


def _slot(members, grouped: bool | None = True, weights: GroupWeights | None = None) -> LoRAGroup:
    """The members as a group slot (as the decoder's q/k/v or gate/up), one GEMM forced unless `grouped` says."""
    clock = PassClock()
    children = {f"proj{i}": m for i, m in enumerate(members)}
    slot = LoRAGroup(children, tuple(children), clock, weights or GroupWeights(clock))
    slot.grouped = grouped
    return slot


def _one_by_one(members, x, grads):
    outs = [m(x) for m in members]
    torch.autograd.backward(outs, grads)
    return outs


@pytest.mark.parametrize("adjacent", [False, True])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("kind", ["linear", "nf4"])
def test_group_matches_projections_one_by_one(kind, bias, adjacent, monkeypatch):
    joined = []
    real = lora_kernels._joined
    monkeypatch.setattr(lora_kernels, "_joined", lambda *a: joined.append(real(*a)) or joined[-1])
    members = _members(kind, bias=bias)
    twins = copy.deepcopy(members)
    x = torch.randn(2, 5, IN, requires_grad=True)
    x_twin = x.detach().clone().requires_grad_(True)
    grads = [torch.randn(2, 5, m.out_features) for m in members]

    expected = _one_by_one(twins, x_twin, grads)
    outs = _slot(members)(x)
    for out, want in zip(outs, expected):
        torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    if adjacent:
        # Gradients written over the outputs themselves: side by side in the group's buffer, as SwiGLU's kernel
        # leaves them (through .data: a kernel's write bumps no version counter either).
        for out, g in zip(outs, grads):
            out.data.copy_(g)
        torch.autograd.backward(outs, list(outs))
    else:
        torch.autograd.backward(outs, grads)

    assert len(joined) == 1 and (joined[0] is not None) == adjacent  # the backward path under test ran
    torch.testing.assert_close(x.grad, x_twin.grad, rtol=1e-5, atol=1e-5)
    for m, twin in zip(members, twins):
        for name in ("lora_A", "lora_B"):
            got, want = getattr(m, name).weight.grad, getattr(twin, name).weight.grad
            assert want.abs().sum() > 0
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=name)


def test_group_writes_its_low_rank_products_into_the_spare_columns():
    members = _members("linear")
    slot = _slot(members)
    x = torch.randn(7, IN, requires_grad=True)
    R = slot.spare_columns(x)
    assert R == 12
    normed = reference.rms_norm(x, torch.ones(IN), 1e-6, spare_columns=R)
    assert normed.stride(0) == IN + R
    slot(normed, room=R)
    room = normed.as_strided((7, IN + R), normed.stride())[:, IN:]  # the columns after each row
    a_cat = torch.cat([m.lora_A.weight for m in members])
    torch.testing.assert_close(room, normed.detach() @ a_cat.T)


def test_groups_only_form_where_they_are_exact():
    members = _members("linear")
    x = torch.randn(3, IN)
    assert _slot(members, grouped=None).members(x) is None  # CPU: off unless forced
    assert list(_slot(members).members(x)) == members
    members[1].enabled = False  # adapters_disabled
    assert _slot(members).members(x) is None
    members[1].enabled = True
    with_dropout = LoRALinear(nn.Linear(IN, 16), r=4, alpha=8, dropout=0.1).train()
    assert _slot([members[0], with_dropout]).members(x) is None
    assert _slot([members[0], with_dropout.eval()]).members(x) is not None  # no dropout in eval
    assert _slot([members[0], _members("nf4")[1]]).members(x) is None  # mixed bases
    assert _slot([members[0], nn.Linear(IN, 16)]).members(x) is None  # no adapter
    assert _slot([members[0], nn.Linear(IN, 16)]).spare_columns(x) == 0


CONFIG = dict(
    model_type="qwen2",
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=120,
    rms_norm_eps=1e-5,
    max_position_embeddings=64,
)


def _lora_model(config, method, checkpointing, grouped, chunk, ops=None, device="cpu") -> LlamaForCausalLM:
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig.from_hf(config), ops=ops).to(device)
    model.init_weights(std=0.1)
    if method == "qlora":
        quantize_model_(model)
    attach_lora(model, ["all-linear"], r=4, alpha=8)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            nn.init.normal_(p, std=0.05)
    model.gradient_checkpointing = checkpointing
    set_grouping(model, grouped)
    for layer in model.model.layers:
        layer.mlp_chunk_tokens = chunk
    return model.train()


def _two_steps(model, ids, **kwargs) -> tuple[float, dict[str, torch.Tensor]]:
    """The second step's loss and gradients. It must see the adapters the first update changed (the stacked weights
    are rebuilt), though the update, like CUDA's fused AdamW, moves no version counter (it writes through .data)."""
    params = [p for p in model.parameters() if p.requires_grad]
    for _ in range(2):
        model.zero_grad()
        loss_sum, count = model(ids, labels=ids, **kwargs)
        (loss_sum / count).backward()
        for p in params:
            p.data.sub_(p.grad, alpha=0.5)
    return loss_sum.item(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_model_gradients_equal_with_and_without_groups(method, checkpointing):
    """Qwen2: q/k/v carry biases, k/v are narrower than q (grouped-query attention)."""
    ids = torch.randint(0, 120, (2, 12), generator=torch.Generator().manual_seed(1))
    results = {}
    for grouped in (False, True):
        model = _lora_model(CONFIG, method, checkpointing, grouped, chunk=5)
        results[grouped] = _two_steps(model, ids)
    assert results[True][0] == pytest.approx(results[False][0], rel=1e-6)
    for name, g in results[False][1].items():
        assert g.abs().sum() > 0, name
        torch.testing.assert_close(results[True][1][name], g, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_adapter_gradients_added_into_grad_by_the_gemm(method, checkpointing, device):
    """`accumulate_into_grads`: the nodes add dA and dB into .grad themselves and hand autograd None for them (so
    `torch.autograd.grad` sees none, the reason the trainer turns it on for `backward()` only), and the gradients
    are those autograd would have summed, over two steps and chunked checkpointing."""
    ids = torch.randint(0, 120, (2, 12), generator=torch.Generator().manual_seed(1)).to(device)
    results, handed = {}, {}
    for on in (False, True):
        model = _lora_model(CONFIG, method, checkpointing, True, chunk=5, device=device)
        adapters = [p for n, p in model.named_parameters() if "lora_" in n]
        assert lora_kernels.accumulate_into_grads(adapters, on) == (len(adapters) if on else 0)
        loss, grads = _two_steps(model, ids)
        results[on] = loss, {name: g.clone() for name, g in grads.items()}
        if not checkpointing:  # (recomputation runs its own backward: autograd.grad sees no adapter there)
            loss_sum, _ = model(ids, labels=ids)
            handed[on] = sum(g is None for g in torch.autograd.grad(loss_sum, adapters, allow_unused=True))
    if not checkpointing:  # q/k/v and gate/up are grouped nodes; o and down fused ones over NF4 or on CUDA
        assert handed == {False: 0, True: 2 * 2 * (7 if method == "qlora" or device == "cuda" else 5)}
    assert results[True][0] == pytest.approx(results[False][0], rel=1e-6)
    for name, g in results[False][1].items():
        assert g.abs().sum() > 0, name
        torch.testing.assert_close(results[True][1][name], g, rtol=1e-5, atol=1e-7, msg=name)


def test_parameters_with_hooks_keep_autograd_accumulation():
    hooked, plain, half = (torch.zeros(2, 3, requires_grad=True) for _ in range(3))
    hooked.register_hook(lambda g: g * 2)
    half.data = half.data.half()
    assert lora_kernels.accumulate_into_grads([hooked, plain, half]) == 1
    assert lora_kernels.accumulate_into_grads([hooked, plain, half], on=False) == 0
    assert not any(hasattr(p, "_accumulate_into_grad") for p in (hooked, plain, half))


@pytest.mark.gpu  # the fused kernels
@pytest.mark.triton
@pytest.mark.parametrize("checkpointing", [False, True, "offload"])
@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_model_gradients_equal_with_and_without_groups_on_cuda(method, checkpointing, monkeypatch):
    """The GPU path: Triton RMSNorm writing into spare columns, SwiGLU over column slices with its gradients written
    in place (the one-GEMM backward), NF4 dequantized into the rows of a wider matrix; packed rows."""
    joined = []
    real = lora_kernels._joined
    monkeypatch.setattr(lora_kernels, "_joined", lambda *a: joined.append(real(*a) is not None) or real(*a))
    from tunelab.kernels import select

    config = dict(
        CONFIG,
        model_type="llama",
        hidden_size=128,
        intermediate_size=344,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    ids = torch.randint(0, 120, (1, 96), device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    cu_seqlens = torch.tensor([0, 40, 96], dtype=torch.int32, device="cuda")
    results = {}
    for grouped in (False, None):  # None: the default, on for CUDA
        model = _lora_model(config, method, checkpointing, grouped, chunk=40, ops=select("auto"), device="cuda")
        results[grouped] = _two_steps(model, ids, cu_seqlens=cu_seqlens)
    assert any(joined) and not all(joined)  # gate/up backward as one GEMM; q/k/v's gradients come apart
    assert results[None][0] == pytest.approx(results[False][0], rel=1e-5)
    for name, g in results[False][1].items():
        assert g.abs().sum() > 0, name
        torch.testing.assert_close(results[None][1][name], g, rtol=1e-4, atol=1e-5, msg=name)


def test_reserve_scratch_sizes_the_buffers_for_the_largest_group_and_weight():
    attention = _slot(_members("nf4"))  # 48 + 16 + 16 outputs over 48 inputs, ranks 4
    shared = attention.weights
    mlp = _slot(_members("nf4", outs=(96, 96), ranks=(4, 4)), weights=shared)
    single = NF4Linear.from_linear(nn.Linear(96, 48))
    last = FusedProjection({"o_proj": single}, "o_proj", attention.clock)
    x = torch.randn(3, IN)
    reserve_scratch([attention, last, mlp], x)
    assert shared.buffer._flat.numel() == (192 + 8) * (IN + 8)  # the MLP's stacked weight, the larger
    assert single.workspace is None  # a layer without a workspace is left alone
    single.workspace = attention.projections()[0].base_layer.workspace or DequantWorkspace()
    attention.grouped = False  # not grouped: its members count as single projections
    reserve_scratch([attention, last], x)
    assert single.workspace._flat.numel() == 96 * 48


@pytest.mark.triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("ranks", [(4,), (8, 4), (4, 16, 4)])
def test_stacking_kernel_writes_the_torch_ops_values_bit_for_bit(ranks, dtype, triton_device):
    """`kernels.lora_stack` (one kernel) against `_write_adapters`' torch ops on the CPU, over a buffer full of junk:
    every element but the frozen weights' is written, each rounded as torch rounds it."""
    from tunelab.kernels.lora_stack import stack_adapters
    from tunelab.peft.group import _write_adapters

    outs = (48, 16, 24)[: len(ranks)]
    members = _members("linear", outs, ranks)
    for m, s in zip(members, (0.3, 2.0, 1.7)):
        m.scale = s  # distinct scales: a member written with another's shows
    O, R = sum(outs), sum(ranks)
    junk = torch.randn(O + R, IN + R + 5, generator=torch.Generator().manual_seed(1)).to(dtype)
    want = junk[:, : IN + R].clone()
    with torch.no_grad():
        _write_adapters(want, IN, O, members)
        got = junk.to(triton_device)[:, : IN + R]  # row stride IN + R + 5: a view, as the workspace gives
        stack_adapters(got, IN, [(m.lora_B.weight.to(triton_device), m.lora_A.weight.to(triton_device), m.scale)
                                 for m in members])  # fmt: skip
    if dtype == torch.bfloat16 and triton_device == "cpu":
        # Triton's interpreter truncates fp32 to bf16 where the GPU rounds to nearest: within one bf16 step there.
        torch.testing.assert_close(got.float(), want.float(), rtol=2**-7, atol=0)
    else:
        assert torch.equal(got.cpu(), want)
    assert torch.equal(want[:O, :IN], junk[:O, :IN])  # the frozen weights' place untouched by both
