"""AdamW8bit's format and kernel: its codes, its block-wise quantization, the tables of the multi-tensor launch, and
the Triton kernel (one parameter, many parameters in one launch) against the PyTorch reference.

The kernel tests need Triton and a CUDA device, or `TRITON_INTERPRET=1` (Triton's interpreter on the CPU), where the
kernel must equal the reference bit for bit (bf16 parameters only on CUDA: the interpreter truncates fp32 -> bf16).
"""

import pytest
import torch

from tunelab.quant.adamw8bit import (
    BLOCK,
    COMPENSATION,
    QUANTIZED_KEYS,
    adamw8bit_update_reference,
    block_maps,
    dequantize_blockwise,
    nearest_code,
    pointer_table,
    quantize_blockwise,
    update_scalars,
)
from tunelab.quant.codes import dynamic_code, unsigned_dynamic_code

SIGNED, UNSIGNED = dynamic_code(), unsigned_dynamic_code()
CUDA = torch.cuda.is_available()


def moments(n: int, seed: int) -> torch.Tensor:
    """(n,) signed values spanning 4 decades in every block, as Adam's first moments do."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=g) * 10 ** (-4 * torch.rand(n, generator=g))


def test_unsigned_code_is_the_dynamic_code_with_twice_the_fractions():
    u = UNSIGNED
    assert u.shape == (256,) and u.dtype == torch.float32 and bool((u[1:] > u[:-1]).all())
    assert u[0] == 0 and u[-1] == 1
    # 2^(e+1) values in decade e: 128 in [0.1, 1), 64 in [0.01, 0.1), ... 2 in [1e-7, 1e-6).
    for e in range(7):
        low, high = 10.0 ** (e - 7), 10.0 ** (e - 6)
        assert int(((u >= low) & (u < high)).sum()) == 2 ** (e + 1)
    assert u[1].item() == pytest.approx(0.325e-6)
    # Twice the signed code's resolution where it matters, [0.1, 1]: half its widest gap.
    assert (u[1:] - u[:-1]).max().item() == pytest.approx((SIGNED[1:] - SIGNED[:-1]).max().item() / 2, rel=1e-5)


@pytest.mark.parametrize("code", [SIGNED, UNSIGNED], ids=["signed", "unsigned"])
def test_nearest_code_has_no_closer_code(code):
    g = torch.Generator().manual_seed(0)
    low = code[0].item()
    mids = (code[:-1] + code[1:]) / 2  # fp32 midpoints: ties, or within an ulp of one
    x = torch.cat(
        [torch.rand(20000, generator=g) * (1 - low) + low, code, mids, torch.tensor([-1.0 if low < 0 else 0.0, 1.0])]
    )
    q = nearest_code(x, code)
    dist = (x - code[q]).abs()
    all_dist = (x[:, None] - code[None, :]).abs()  # (N, 256)
    assert torch.equal(dist, all_dist.min(dim=1).values)
    # An exact tie goes to the lower code.
    tie = (all_dist == dist[:, None]).sum(dim=1) > 1
    assert int(tie.sum()) > 0
    assert torch.equal(q[tie], all_dist[tie].eq(dist[tie, None]).int().argmax(dim=1))
    assert torch.equal(q[20000 : 20000 + 256], torch.arange(256))  # each code maps to itself


@pytest.mark.parametrize("code,values", [(SIGNED, "m"), (UNSIGNED, "v")], ids=["signed", "unsigned"])
def test_blockwise_round_trip_error_is_bounded_per_block(code, values):
    n = 40 * BLOCK + 77  # a trailing partial block
    x = moments(n, seed=1)
    x = x if values == "m" else x * x  # second moments: squares, 8 decades
    x[BLOCK : 2 * BLOCK] = 0.0  # a block of zeros
    q, absmax = quantize_blockwise(x, code)
    assert q.dtype == torch.uint8 and q.shape == (n,) and absmax.shape == (41,) and absmax.dtype == torch.float32
    back = dequantize_blockwise(q, absmax, code)
    assert torch.equal(back[BLOCK : 2 * BLOCK], torch.zeros(BLOCK)) and absmax[1] == 0
    err = (back - x).abs()
    per_block = torch.nn.functional.pad(err, (0, -n % BLOCK)).view(-1, BLOCK).amax(dim=1)
    # Nearest code: at most half the widest gap of the code (or the signed code's missing -1 end), times absmax.
    half_gap = max((code[1:] - code[:-1]).max().item() / 2, 1 + code[0].item() if code[0] < 0 else 0.0)
    assert half_gap < (0.0071 if values == "m" else 0.0036)
    assert bool((per_block <= absmax * half_gap * (1 + 1e-5)).all())
    # Relative error of every value at least a tenth of its block's absmax: half a gap of [0.1, 1] over 0.1.
    scale = absmax.repeat_interleave(BLOCK)[:n]
    big = (x.abs() >= scale / 10) & (scale > 0)
    assert (err[big] / x.abs()[big]).max().item() <= 10 * half_gap * (1 + 1e-5)


def _kernel_case(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    n = torch.Size(shape).numel()
    param = torch.randn(shape, generator=g).to(dtype)
    m, v = moments(n, seed), moments(n, seed + 1) ** 2
    m[:BLOCK] = 0.0  # a zero block of state
    v[:BLOCK] = 0.0
    state = [*quantize_blockwise(m, SIGNED), *quantize_blockwise(v, UNSIGNED)]
    grads = [
        (torch.randn(shape, generator=g) * 10 ** (-3 * torch.rand(shape, generator=g))).to(dtype) for _ in range(3)
    ]
    grads[0].view(-1)[:BLOCK] = 0.0  # the zero block stays zero after the first step
    return param, state, grads


@pytest.mark.triton
@pytest.mark.parametrize("shape", [(4173,), (3, 5, 300), (1, 256 * 17)])
@pytest.mark.parametrize("dtype", [torch.float32] + ([torch.bfloat16] if CUDA else []))
def test_triton_kernel_equals_reference(shape, dtype, triton_device):
    from tunelab.quant.adamw8bit_triton import adamw8bit_update_multi

    def adamw8bit_update(param, grad, *rest):  # one tensor through the multi-tensor kernel
        *state, signed, unsigned, scalars = rest
        table = pointer_table([param], [dict(zip(QUANTIZED_KEYS, state))]).to(param.device)
        index = block_maps([param.numel()])[0].to(param.device)
        grad_ptrs = torch.tensor([grad.data_ptr()], dtype=torch.int64).to(param.device)
        adamw8bit_update_multi(table, grad_ptrs, index, signed, unsigned, scalars, param.dtype, grad.dtype)

    param, state, grads = _kernel_case(shape, dtype, seed=sum(shape))
    ref_param, ref_state = param.clone(), [t.clone() for t in state]
    dev = triton_device
    k_param, k_state = param.to(dev), [t.to(dev) for t in state]
    for step, grad in enumerate(grads, start=1):
        scalars = update_scalars(3e-3, 0.9, 0.999, 1e-8, 0.01, step)
        adamw8bit_update_reference(ref_param, grad, *ref_state, SIGNED, UNSIGNED, scalars)
        adamw8bit_update(k_param, grad.to(dev), *k_state, SIGNED.to(dev), UNSIGNED.to(dev), scalars)
        # Same fp32 operations in the same order, each correctly rounded, no FMA: bit-identical.
        assert torch.equal(k_param.cpu(), ref_param), step
        for name, a, b in zip(QUANTIZED_KEYS, k_state, ref_state):
            assert torch.equal(a.cpu(), b), (step, name)
        if step == 1:  # the zero block (zero state, zero gradient) stays zero: absmax 0, the code of 0
            assert ref_state[1][0] == 0 and bool((ref_state[0][:BLOCK] == int((SIGNED == 0).nonzero())).all())


def test_block_maps_lay_the_tensors_blocks_end_to_end():
    numels = [4173, 256, 1, 512 * 3, 257]  # blocks: 17, 1, 1, 6, 2
    index, first = block_maps(numels)
    assert index.dtype == torch.int32 and first.dtype == torch.int64
    assert index.tolist() == [0] * 17 + [1] + [2] + [3] * 6 + [4] * 2
    assert first.tolist() == [0, 17, 18, 19, 25]
    # Global block i is local block i - first[index[i]] of its tensor: each tensor's local blocks are 0, 1, ...
    local = torch.arange(index.numel()) - first[index.long()]
    assert local.tolist() == list(range(17)) + [0, 0] + list(range(6)) + [0, 1]
    empty_index, empty_first = block_maps([])
    assert empty_index.shape == (0,) and empty_first.shape == (0,)


def test_pointer_table_rows_follow_the_kernel_order():
    params = [torch.zeros(4173), torch.zeros(300, dtype=torch.bfloat16)]
    zeros = [torch.zeros(p.numel()) for p in params]
    states = [dict(zip(QUANTIZED_KEYS, quantize_blockwise(z, SIGNED) + quantize_blockwise(z, UNSIGNED))) for z in zeros]
    states[1][COMPENSATION] = torch.zeros(300, dtype=torch.bfloat16)
    table = pointer_table(params, states)
    assert table.dtype == torch.int64 and table.shape == (8, 2)
    assert table[0].tolist() == [p.data_ptr() for p in params]
    for row, key in enumerate(QUANTIZED_KEYS, start=1):
        assert table[row].tolist() == [s[key].data_ptr() for s in states], key
    assert table[5].tolist() == [4173, 300] and table[6].tolist() == [0, 17]
    # the compensation's pointer; the fp32 one has none and points at its parameter (never read)
    assert table[7].tolist() == [params[0].data_ptr(), states[1][COMPENSATION].data_ptr()]


def _multi_case(dtype, seed):
    """Parameters of several sizes (partial last blocks, a single partial block, exact blocks) and their states."""
    shapes = [(4173,), (3, 5, 300), (1, 256 * 17), (70,), (2, 257)]
    cases = [_kernel_case(shape, dtype, seed + i) for i, shape in enumerate(shapes)]
    return [c[0] for c in cases], [c[1] for c in cases], [c[2] for c in cases]


@pytest.mark.triton
@pytest.mark.parametrize("dtype", [torch.float32] + ([torch.bfloat16] if CUDA else []))
def test_multi_tensor_kernel_equals_reference(dtype, triton_device):
    from tunelab.quant.adamw8bit_triton import TABLE_ROWS, adamw8bit_update_multi

    assert TABLE_ROWS[1:5] == QUANTIZED_KEYS
    params, states, grads = _multi_case(dtype, seed=11)
    compensated = dtype == torch.bfloat16  # bf16 parameters carry a Kahan compensation (training.compensated)
    if compensated:  # below half an ulp of each weight, as the step leaves it
        states = [s + [(p.float() * 2.0**-10 * torch.randn(p.shape)).to(dtype)] for p, s in zip(params, states)]
    keys = (*QUANTIZED_KEYS, COMPENSATION) if compensated else QUANTIZED_KEYS
    ref_params, ref_states = [p.clone() for p in params], [[t.clone() for t in s] for s in states]
    before = ref_params[3].clone()
    dev = triton_device
    k_params, k_states = [p.to(dev) for p in params], [[t.to(dev) for t in s] for s in states]
    index = block_maps([p.numel() for p in params])[0].to(dev)
    table = pointer_table(k_params, [dict(zip(keys, s)) for s in k_states]).to(dev)
    codes = SIGNED.to(dev), UNSIGNED.to(dev)
    for step in range(1, 4):
        scalars = update_scalars(3e-3, 0.9, 0.999, 1e-8, 0.01, step)
        k_grads = [g[step - 1].to(dev) for g in grads]  # fresh gradient tensors each step, as after zero_grad
        grad_ptrs = torch.tensor([g.data_ptr() for g in k_grads], dtype=torch.int64).to(dev)
        adamw8bit_update_multi(table, grad_ptrs, index, *codes, scalars, dtype, dtype, compensated=compensated)
        for p, s, g in zip(ref_params, ref_states, grads):
            adamw8bit_update_reference(p, g[step - 1], *s[:4], SIGNED, UNSIGNED, scalars, *s[4:])
        for i, (kp, rp, ks, rs) in enumerate(zip(k_params, ref_params, k_states, ref_states)):
            assert torch.equal(kp.cpu(), rp), (step, i)
            for name, a, b in zip(keys, ks, rs):
                assert torch.equal(a.cpu(), b), (step, i, name)
    assert not torch.equal(ref_params[3], before)  # the one-partial-block tensor moved (and the kernel's with it)


@pytest.mark.triton
def test_compensated_kernel_holds_the_references_weight_in_p_plus_c(triton_device):
    """bf16 parameters with their Kahan compensation, also in Triton's interpreter: there fp32 -> bf16 truncates (about
    half the weights land one ulp off the reference's rounding), but what p loses c keeps, so p + c stays the
    reference's (measured in the interpreter: within 0.7% of the distance moved for a 70-value tensor, 3e-5 for the
    others; on CUDA the two are equal bit for bit, test above)."""
    from tunelab.quant.adamw8bit_triton import adamw8bit_update_multi

    dtype, dev = torch.bfloat16, triton_device
    params, states, grads = _multi_case(dtype, seed=11)
    states = [s + [(p.float() * 2.0**-10 * torch.randn(p.shape)).to(dtype)] for p, s in zip(params, states)]
    starts = [p.float() + s[4].float() for p, s in zip(params, states)]
    ref_params, ref_states = [p.clone() for p in params], [[t.clone() for t in s] for s in states]
    k_params, k_states = [p.to(dev) for p in params], [[t.to(dev) for t in s] for s in states]  # the CPU: no copy
    index = block_maps([p.numel() for p in params])[0].to(dev)
    table = pointer_table(k_params, [dict(zip((*QUANTIZED_KEYS, COMPENSATION), s)) for s in k_states]).to(dev)
    for step in range(1, 4):
        scalars = update_scalars(3e-3, 0.9, 0.999, 1e-8, 0.01, step)
        k_grads = [g[step - 1].to(dev) for g in grads]
        grad_ptrs = torch.tensor([g.data_ptr() for g in k_grads], dtype=torch.int64).to(dev)
        adamw8bit_update_multi(
            table, grad_ptrs, index, SIGNED.to(dev), UNSIGNED.to(dev), scalars, dtype, dtype, compensated=True
        )
        for p, s, g in zip(ref_params, ref_states, grads):
            adamw8bit_update_reference(p, g[step - 1], *s[:4], SIGNED, UNSIGNED, scalars, s[4])
    for i, (start, rp, rs, kp, ks) in enumerate(zip(starts, ref_params, ref_states, k_params, k_states)):
        held, expected = kp.cpu().float() + ks[4].cpu().float(), rp.float() + rs[4].float()
        moved = (expected - start).norm()
        assert (held - expected).norm() <= 0.02 * moved, i
        assert bool((ks[4].cpu() != 0).any()), i
