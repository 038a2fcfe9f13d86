"""A projection group over NF4 bases with FP8 products (train.fp8, `peft.fp8_group`): one stacked FP8 product forward
and backward, the adapters exact. Run on the CPU through the torch reference of each FP8 step."""

import copy

import pytest
import torch

from tests.peft.test_group import CONFIG, IN, _lora_model, _members, _slot
from tunelab.peft.group import set_grouping
from tunelab.quant import fp8
from tunelab.quant.linear import use_fp8_


def _fp8_members(bias=False):
    members = _members("nf4", bias=bias)
    for m in members:
        use_fp8_(m)
    return members


@pytest.mark.parametrize("adjacent", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_the_group_is_one_stacked_fp8_product_and_exact_adapters(bias, adjacent):
    members = _fp8_members(bias)
    twins = copy.deepcopy(members)  # one by one, each over its own FP8 base
    x = torch.randn(2, 5, IN, requires_grad=True)
    grads = [torch.randn(2, 5, m.out_features) for m in members]
    outs = _slot(members)(x)

    stacked = fp8.FP8Base(*(m.base_layer.nf4 for m in members))
    x2 = x.detach().reshape(10, IN)
    a_cat = torch.cat([m.lora_A.weight for m in members])
    b_blk = torch.block_diag(*[m.lora_B.weight * m.scale for m in members])
    want = stacked.product(x2) + (x2 @ a_cat.T) @ b_blk.T
    if bias:
        want = want + torch.cat([m.base_layer.bias for m in members])
    torch.testing.assert_close(torch.cat([o.reshape(10, -1) for o in outs], dim=1), want, rtol=1e-5, atol=1e-5)

    if adjacent:  # gradients written over the outputs, side by side in the group's buffer (SwiGLU's backward)
        for out, g in zip(outs, grads):
            out.data.copy_(g)
        torch.autograd.backward(outs, list(outs))
    else:
        torch.autograd.backward(outs, grads)
    g = torch.cat([g.reshape(10, -1) for g in grads], dim=1)
    want_dx = stacked.input_grad(g) + (g @ b_blk) @ a_cat
    torch.testing.assert_close(x.grad.reshape(10, IN), want_dx, rtol=1e-5, atol=1e-5)

    x_twin = x.detach().clone().requires_grad_(True)
    torch.autograd.backward([m(x_twin) for m in twins], grads)  # the same output gradients
    for m, twin in zip(members, twins):
        for name in ("lora_A", "lora_B"):
            got, exact = getattr(m, name).weight.grad, getattr(twin, name).weight.grad
            assert exact.abs().sum() > 0
            torch.testing.assert_close(got, exact, rtol=1e-5, atol=1e-6, msg=name)
    assert 0 < ((x.grad - x_twin.grad).norm() / x_twin.grad.norm()).item() < 0.05  # one scale for the stack


def test_a_group_of_fp8_and_plain_bases_runs_one_by_one():
    members = _members("nf4")
    use_fp8_(members[0])
    slot = _slot(members)
    assert slot.members(torch.zeros(1, IN)) is None


@pytest.mark.parametrize("checkpointing", [False, True])
def test_a_model_with_fp8_groups_trains_as_with_fp8_projections_one_by_one(checkpointing):
    """Grouped or one by one, the FP8 products move the loss and the gradients of a 2-layer random model by as much
    (e4m3 rounds each operand by up to 1/16; a product moves by ~4%, a gradient after a few such layers by ~15%); a
    grouped node that dropped a part (an adapter's update, a member's input gradient) would move them by far more."""
    ids = torch.randint(0, 120, (2, 12), generator=torch.Generator().manual_seed(1))
    results = {}
    for name, on, grouped in (("plain", False, False), ("one by one", True, False), ("grouped", True, True)):
        model = _lora_model(CONFIG, "qlora", checkpointing, grouped, chunk=5)
        if on:
            assert use_fp8_(model) == 14
        set_grouping(model, grouped)
        loss_sum, count = model(ids, labels=ids)
        (loss_sum / count).backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        results[name] = (loss_sum.item() / float(count), grads)
    plain_loss, plain = results["plain"]
    for name in ("one by one", "grouped"):
        loss, grads = results[name]
        assert loss != plain_loss and loss == pytest.approx(plain_loss, rel=0.01), name
        errors = sorted(((grads[n] - g).norm() / g.norm()).item() for n, g in plain.items())
        assert errors[len(errors) // 2] < 0.25 and errors[-1] < 0.4, (name, errors)


def test_fp8_projections_reserve_the_fp8_buffer_and_no_16_bit_one(monkeypatch):
    """FP8 products dequantize into the one FP8 buffer (`quant.fp8.SCRATCH`): the reserve before the first step grows
    it to the largest stack, in FP8 whatever the input's dtype, and not the shared 16-bit workspace or the stacked
    group matrix (memory a QLoRA step at Unsloth's budget lacks)."""
    from torch import nn

    from tunelab.models.slots import reserve_scratch
    from tunelab.peft.projection import FusedProjection
    from tunelab.quant.linear import NF4Linear
    from tunelab.quant.nf4_ops import DequantWorkspace

    attention = _slot(_fp8_members())
    single = NF4Linear.from_linear(nn.Linear(48, 64), workspace=DequantWorkspace())
    last = FusedProjection({"o_proj": single}, "o_proj", attention.clock)
    x = torch.randn(3, IN)
    use_fp8_(single)
    monkeypatch.setattr(fp8, "SCRATCH", fp8.FP8Scratch())
    reserve_scratch([attention, last], x)
    assert attention.weights.buffer._flat is None and single.workspace._flat is None
    stack = sum(m.out_features for m in attention.projections()) * IN
    assert stack > 64 * 48 and fp8.SCRATCH.numel() == stack
    assert fp8.SCRATCH.get((2, 3), x.device).dtype == fp8.E4M3
    use_fp8_(single, on=False)  # the same layer in 16 bits reserves its weight's size
    reserve_scratch([last], x)
    assert single.workspace._flat.numel() == 64 * 48


def test_fp8_weights_of_every_size_are_written_into_one_buffer(monkeypatch):
    """Each FP8 weight, straight or transposed, is a view of the one buffer, not a tensor of its own: the allocator
    sees one block, not the four sizes of a layer allocated and freed at each use."""
    monkeypatch.setattr(fp8, "SCRATCH", fp8.FP8Scratch())
    members = _fp8_members()
    stacked = fp8.FP8Base(*(m.base_layer.nf4 for m in members))
    single = members[0].base_layer.fp8
    x = torch.randn(4, IN)
    qs, factor = stacked._weights(), stacked.scales(stacked._weights())[0]
    pointers = {stacked.weight(qs, factor).data_ptr(), stacked.transposed(qs, factor).data_ptr()}
    pointers.add(single.weight(single._weights(), single.scales(single._weights())[0]).data_ptr())
    assert len(pointers) == 1 and fp8.SCRATCH.numel() == stacked.scratch_need()
    want = fp8.scaled_mm(
        *fp8.quantize_rows_reference(x),
        fp8.weight_fp8_reference(qs[0], factor),
        stacked.scales(qs)[1][:, : members[0].out_features],
        x.dtype,
    )
    torch.testing.assert_close(stacked.product(x)[:, : members[0].out_features], want)
