"""AdamW8bit: its codes, its block-wise quantization, its trajectory beside torch's AdamW, its state through
state_dict and checkpoints, a resumed QLoRA run, the multi-tensor tables, and the Triton kernels (one parameter, many
parameters in one launch) against the PyTorch reference.

The kernel tests need Triton and a CUDA device, or `TRITON_INTERPRET=1` (Triton's interpreter on the CPU), where the
kernel must equal the reference bit for bit (bf16 parameters only on CUDA: the interpreter truncates fp32 -> bf16).
The optimizer tests marked needs_cuda run only on a CUDA device (the optimizer takes the kernel path for CUDA
parameters only).
"""

import copy
import json
import os
import sys

import pytest
import torch
from safetensors.torch import load_file

import tunelab.training.recipe as recipe
from tunelab.config import load_config
from tunelab.errors import ConfigError
from tunelab.peft.quant import dynamic_code
from tunelab.training.adamw8bit import (
    BLOCK,
    MIN_8BIT_SIZE,
    QUANTIZED_KEYS,
    AdamW8bit,
    adamw8bit_update_reference,
    block_maps,
    dequantize_blockwise,
    nearest_code,
    pointer_table,
    quantize_blockwise,
    unsigned_dynamic_code,
    update_scalars,
)
from tunelab.training.checkpoint import load_checkpoint, save_checkpoint
from tunelab.training.optim import build_optimizer

SIGNED, UNSIGNED = dynamic_code(), unsigned_dynamic_code()
CUDA = torch.cuda.is_available()
KERNEL_DEVICE = "cuda" if CUDA else "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else None
needs_kernel = pytest.mark.skipif(KERNEL_DEVICE is None, reason="needs a CUDA device (or TRITON_INTERPRET=1)")
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")


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


def _regression(cls, steps: int, **kwargs):
    """Fit W (50, 97) (4850 values: 8-bit, 19 blocks, the last partial) to a noiseless linear map; W after each step."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 97, generator=g)
    y = x @ (0.5 * torch.randn(50, 97, generator=g)).T
    w = torch.nn.Parameter(torch.zeros(50, 97))
    opt = cls([w], lr=1e-2, weight_decay=0.01, **kwargs)
    path, losses = [], []
    for _ in range(steps):
        loss = ((x @ w.T - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        path.append(w.detach().clone())
        losses.append(loss.item())
    return path, losses, opt


def test_trajectory_stays_close_to_torch_adamw():
    ours, our_losses, opt = _regression(AdamW8bit, 100)
    theirs, their_losses, _ = _regression(torch.optim.AdamW, 100, foreach=False)
    assert opt.state[opt.param_groups[0]["params"][0]]["exp_avg_q"].dtype == torch.uint8
    # Step 1 moves by the unquantized moments (m = 0.1 g, v = 0.001 g^2): torch's step up to rounding (its CPU sqrt
    # is off by an ulp at times; ours is correctly rounded).
    torch.testing.assert_close(ours[0], theirs[0], rtol=1e-6, atol=0)
    # Tolerance: each later step moves W by (lr / bc1) m / (sqrt(v) / sqrt(bc2) + eps) with m and v carried in 8 bits,
    # whose relative error is a few percent for values near their block's absmax (at most 7% down to a tenth of it,
    # test above); the update direction is off by as much, and on a convex quadratic the distance to the common
    # minimum contracts, so the errors do not compound: the two paths stay within 3.9% of |W| (measured); 10% is
    # the bound. The losses end within 10% of each other (measured 3.2%) after falling 26-fold.
    for step, (a, b) in enumerate(zip(ours, theirs)):
        assert (a - b).norm() <= 0.1 * b.norm(), step
    assert our_losses[-1] < their_losses[0] / 20
    assert our_losses[-1] == pytest.approx(their_losses[-1], rel=0.1)


def test_small_parameters_keep_fp32_moments_and_follow_torch_exactly():
    torch.manual_seed(0)
    small = torch.nn.Parameter(torch.randn(63, 65))  # 4095 values
    large = torch.nn.Parameter(torch.randn(64, 64))  # 4096 values: 8-bit
    small_bf16 = torch.nn.Parameter(torch.randn(10, 10).to(torch.bfloat16))
    twin = torch.nn.Parameter(small.detach().clone())
    ours = AdamW8bit([small, large, small_bf16], lr=1e-2, weight_decay=0.1)
    theirs = torch.optim.AdamW([twin], lr=1e-2, weight_decay=0.1, foreach=False)
    for _ in range(5):
        grad = torch.randn(63, 65)
        small.grad, twin.grad = grad.clone(), grad.clone()
        large.grad, small_bf16.grad = torch.randn(64, 64), torch.randn(10, 10).to(torch.bfloat16)
        ours.step()
        theirs.step()
        assert torch.equal(small, twin)
    assert set(ours.state[small]) == set(ours.state[small_bf16]) == {"step", "exp_avg", "exp_avg_sq"}
    assert ours.state[small]["exp_avg"].dtype == ours.state[small_bf16]["exp_avg_sq"].dtype == torch.float32
    assert torch.equal(ours.state[small]["exp_avg_sq"], theirs.state[twin]["exp_avg_sq"])
    assert set(ours.state[large]) == {"step", *QUANTIZED_KEYS} and MIN_8BIT_SIZE == 4096
    assert ours.state[large]["step"].item() == 5.0 and ours.state[large]["exp_avg_sq_absmax"].shape == (16,)
    assert small_bf16.dtype == torch.bfloat16


def _params():
    torch.manual_seed(3)
    return [
        torch.nn.Parameter(torch.randn(41, 100)),  # 8-bit, fp32, partial last block
        torch.nn.Parameter(torch.randn(5000).to(torch.bfloat16)),  # 8-bit, bf16: absmaxes must stay fp32
        torch.nn.Parameter(torch.randn(7, 9)),  # fp32 moments
        torch.nn.Parameter(torch.randn(300)),  # never gets a gradient: no state, never moves
    ]


def _grads(step: int, params):
    g = torch.Generator().manual_seed(100 + step)
    for p in params[:3]:
        p.grad = torch.randn(p.shape, generator=g).to(device=p.device, dtype=p.dtype)


def _make(params):
    return AdamW8bit(
        [{"params": params[:2], "weight_decay": 0.05}, {"params": params[2:], "weight_decay": 0.0}], lr=3e-3
    )


def test_state_dict_round_trip_gives_identical_next_steps():
    params = _params()
    opt = _make(params)
    for step in range(3):
        _grads(step, params)
        opt.step()
    saved = copy.deepcopy(opt.state_dict())
    frozen = copy.deepcopy(saved)
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    restored = _make(twins)
    restored.load_state_dict(saved)
    for a, b in zip(params, twins):
        sa, sb = opt.state[a], restored.state[b]
        assert sa.keys() == sb.keys()
        for key in sa:
            assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), key
    assert restored.state[twins[1]]["exp_avg_q"].dtype == torch.uint8
    assert restored.state[twins[1]]["exp_avg_absmax"].dtype == torch.float32
    assert not restored.state[twins[3]]
    for step in range(3, 5):
        _grads(step, params)
        _grads(step, twins)
        opt.step()
        restored.step()
    for a, b in zip(params, twins):
        assert torch.equal(a, b)
        for key in opt.state[a]:
            assert torch.equal(opt.state[a][key], restored.state[b][key]), key
    # The loaded state is a copy: stepping did not write into the dict it came from.
    for index, per_param in saved["state"].items():
        for key, value in per_param.items():
            assert torch.equal(value, frozen["state"][index][key]), (index, key)


def test_checkpoint_files_keep_the_8bit_state(tmp_path):
    params = _params()
    model = torch.nn.ParameterList(params)
    opt = _make(params)
    for step in range(2):
        _grads(step, params)
        opt.step()
    folder = save_checkpoint(tmp_path, model, opt, {"step": 2}, keep=1)
    tensors = load_file(str(folder / "optimizer.safetensors"))
    assert (
        tensors["state.1.exp_avg_q"].dtype == torch.uint8
        and tensors["state.1.exp_avg_sq_absmax"].dtype == torch.float32
    )
    twins = _params()
    restored = _make(twins)
    assert load_checkpoint(folder, torch.nn.ParameterList(twins), restored) == {"step": 2}
    for step in range(2, 4):
        _grads(step, params)
        _grads(step, twins)
        opt.step()
        restored.step()
    assert all(torch.equal(a, b) for a, b in zip(params, twins))


def test_refuses_fp16_parameters():
    with pytest.raises(ConfigError, match="train.optimizer"):
        AdamW8bit([torch.nn.Parameter(torch.zeros(8, dtype=torch.float16))])


def test_build_optimizer_and_the_config_option():
    model = torch.nn.Sequential(torch.nn.Linear(80, 64), torch.nn.LayerNorm(64))
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.1, kind="adamw_8bit")
    assert isinstance(opt, AdamW8bit)
    assert [(len(g["params"]), g["weight_decay"]) for g in opt.param_groups] == [(1, 0.1), (3, 0.0)]
    assert type(build_optimizer(model, 1e-3, 0.1)) is torch.optim.AdamW
    with pytest.raises(ConfigError, match="adamw_8bit"):
        build_optimizer(model, 1e-3, 0.1, kind="adam8")
    assert load_config(None, {"train.optimizer": "adamw_8bit"}).config.train.optimizer == "adamw_8bit"
    with pytest.raises(ConfigError, match="adamw, adamw_8bit"):
        load_config(None, {"train.optimizer": "sgd"})


def test_cpu_path_never_imports_triton_or_the_kernel(monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", None)  # any `import triton` now raises ImportError
    monkeypatch.delitem(sys.modules, "tunelab.kernels.adamw8bit", raising=False)
    p = torch.nn.Parameter(torch.randn(5000))
    p.grad = torch.randn(5000)
    AdamW8bit([p]).step()
    assert "tunelab.kernels.adamw8bit" not in sys.modules


def _losses(run_dir):
    return [
        json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in line
    ]


def test_qlora_run_learns_and_resumes_exactly(tiny_overrides, tmp_path, monkeypatch):
    # r = 64 on the tiny model's 64-wide layers: most adapter matrices reach 4096 values (8-bit), k/v's B stay fp32.
    common = tiny_overrides | {
        "train.optimizer": "adamw_8bit",
        "method.quantize_base": "nf4",
        "method.r": 64,
        "train.max_steps": 6,
        "train.save_every": 2,
        "train.warmup_ratio": 0.0,
        "train.keep_checkpoints_after_finish": True,  # the checkpoint of step 6 is read below
    }
    straight = recipe.train(None, common | {"output_dir": str(tmp_path / "straight")})
    losses = _losses(straight.run_dir)
    assert sum(losses[-2:]) / 2 < losses[0]

    checkpoint = load_file(str(straight.run_dir / "checkpoints" / "step-0000006" / "optimizer.safetensors"))
    codes = [k for k, t in checkpoint.items() if k.endswith(".exp_avg_q") and t.dtype == torch.uint8]
    fp32 = [k for k in checkpoint if k.endswith(".exp_avg")]
    assert len(codes) >= 10 and len(fp32) >= 2

    real_step = recipe.train_step
    calls = {"n": 0}

    def crashing_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # dies during step 4, after the checkpoint of step 2
            raise RuntimeError("crash")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(recipe, "train_step", crashing_step)
    with pytest.raises(RuntimeError, match="crash"):
        recipe.train(None, common | {"output_dir": str(tmp_path / "resumed")})
    monkeypatch.setattr(recipe, "train_step", real_step)
    resumed = recipe.train(None, common | {"output_dir": str(tmp_path / "resumed")}, resume=True)
    a = load_file(str(straight.run_dir / "adapter_model.safetensors"))
    b = load_file(str(resumed.run_dir / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _losses(resumed.run_dir) == losses


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


@needs_kernel
@pytest.mark.parametrize("shape", [(4173,), (3, 5, 300), (1, 256 * 17)])
@pytest.mark.parametrize("dtype", [torch.float32] + ([torch.bfloat16] if CUDA else []))
def test_triton_kernel_equals_reference(shape, dtype):
    pytest.importorskip("triton")
    from tunelab.kernels.adamw8bit import adamw8bit_update_multi

    def adamw8bit_update(param, grad, *rest):  # one tensor through the multi-tensor kernel
        *state, signed, unsigned, scalars = rest
        table = pointer_table([param], [dict(zip(QUANTIZED_KEYS, state))]).to(param.device)
        index = block_maps([param.numel()])[0].to(param.device)
        grad_ptrs = torch.tensor([grad.data_ptr()], dtype=torch.int64).to(param.device)
        adamw8bit_update_multi(table, grad_ptrs, index, signed, unsigned, scalars, param.dtype, grad.dtype)

    param, state, grads = _kernel_case(shape, dtype, seed=sum(shape))
    ref_param, ref_state = param.clone(), [t.clone() for t in state]
    dev = KERNEL_DEVICE
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


@needs_cuda
def test_optimizer_on_cuda_equals_the_cpu_reference():
    pytest.importorskip("triton")
    cpu = _params()
    gpu = [torch.nn.Parameter(p.detach().cuda()) for p in cpu]
    opt_cpu, opt_gpu = _make(cpu), _make(gpu)
    for step in range(3):
        _grads(step, cpu)
        _grads(step, gpu)
        opt_cpu.step()
        opt_gpu.step()
    for a, b in zip(cpu[:2], gpu[:2]):  # the 8-bit ones (the kernel); fp32 moments use torch's CUDA ops
        assert torch.equal(a, b.cpu())
        for key in QUANTIZED_KEYS:
            assert torch.equal(opt_cpu.state[a][key], opt_gpu.state[b][key].cpu()), key


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
    table = pointer_table(params, states)
    assert table.dtype == torch.int64 and table.shape == (7, 2)
    assert table[0].tolist() == [p.data_ptr() for p in params]
    for row, key in enumerate(QUANTIZED_KEYS, start=1):
        assert table[row].tolist() == [s[key].data_ptr() for s in states], key
    assert table[5].tolist() == [4173, 300] and table[6].tolist() == [0, 17]


def _multi_case(dtype, seed):
    """Parameters of several sizes (partial last blocks, a single partial block, exact blocks) and their states."""
    shapes = [(4173,), (3, 5, 300), (1, 256 * 17), (70,), (2, 257)]
    cases = [_kernel_case(shape, dtype, seed + i) for i, shape in enumerate(shapes)]
    return [c[0] for c in cases], [c[1] for c in cases], [c[2] for c in cases]


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32] + ([torch.bfloat16] if CUDA else []))
def test_multi_tensor_kernel_equals_reference(dtype):
    pytest.importorskip("triton")
    from tunelab.kernels.adamw8bit import TABLE_ROWS, adamw8bit_update_multi

    assert TABLE_ROWS[1:5] == QUANTIZED_KEYS
    params, states, grads = _multi_case(dtype, seed=11)
    ref_params, ref_states = [p.clone() for p in params], [[t.clone() for t in s] for s in states]
    before = ref_params[3].clone()
    dev = KERNEL_DEVICE
    k_params, k_states = [p.to(dev) for p in params], [[t.to(dev) for t in s] for s in states]
    index = block_maps([p.numel() for p in params])[0].to(dev)
    table = pointer_table(k_params, [dict(zip(QUANTIZED_KEYS, s)) for s in k_states]).to(dev)
    codes = SIGNED.to(dev), UNSIGNED.to(dev)
    for step in range(1, 4):
        scalars = update_scalars(3e-3, 0.9, 0.999, 1e-8, 0.01, step)
        k_grads = [g[step - 1].to(dev) for g in grads]  # fresh gradient tensors each step, as after zero_grad
        grad_ptrs = torch.tensor([g.data_ptr() for g in k_grads], dtype=torch.int64).to(dev)
        adamw8bit_update_multi(table, grad_ptrs, index, *codes, scalars, dtype, dtype)
        for p, s, g in zip(ref_params, ref_states, grads):
            adamw8bit_update_reference(p, g[step - 1], *s, SIGNED, UNSIGNED, scalars)
        for i, (kp, rp, ks, rs) in enumerate(zip(k_params, ref_params, k_states, ref_states)):
            assert torch.equal(kp.cpu(), rp), (step, i)
            for name, a, b in zip(QUANTIZED_KEYS, ks, rs):
                assert torch.equal(a.cpu(), b), (step, i, name)
    assert not torch.equal(ref_params[3], before)  # the one-partial-block tensor moved (and the kernel's with it)


def _many_params():
    """8-bit parameters of both dtypes in two groups (two weight decays), an fp32-moment one and one without grads."""
    torch.manual_seed(5)
    shapes = [(64, 100), (4173,), (17, 300), (4096,), (80, 70)]
    decayed = [torch.nn.Parameter(torch.randn(s)) for s in shapes[:3]]
    decayed.append(torch.nn.Parameter(torch.randn(shapes[3]).to(torch.bfloat16)))
    plain = [torch.nn.Parameter(torch.randn(shapes[4]).to(torch.bfloat16)), torch.nn.Parameter(torch.randn(9, 9))]
    plain.append(torch.nn.Parameter(torch.randn(5000)))  # never gets a gradient
    return decayed + plain


def _many_grads(step, params):
    g = torch.Generator().manual_seed(200 + step)
    for p in params[:-1]:
        p.grad = torch.randn(p.shape, generator=g).to(device=p.device, dtype=p.dtype)


def _make_many(params):
    groups = [{"params": params[:4], "weight_decay": 0.05}, {"params": params[4:], "weight_decay": 0.0}]
    return AdamW8bit(groups, lr=3e-3)


@needs_cuda
def test_optimizer_on_cuda_launches_once_per_dtype_and_group_and_equals_the_cpu_reference(monkeypatch):
    pytest.importorskip("triton")
    import tunelab.kernels.adamw8bit as kernels

    launches = []
    real = kernels.adamw8bit_update_multi

    def counting(table, *args, **kwargs):
        launches.append(table.shape[1])
        return real(table, *args, **kwargs)

    monkeypatch.setattr(kernels, "adamw8bit_update_multi", counting)
    cpu = _many_params()
    gpu = [torch.nn.Parameter(p.detach().cuda()) for p in cpu]
    opt_cpu, opt_gpu = _make_many(cpu), _make_many(gpu)
    for step in range(4):  # new gradient tensors each step: the kernel must read each step's (its pointer table)
        _many_grads(step, cpu)
        _many_grads(step, gpu)
        opt_cpu.step()
        opt_gpu.step()
    # Per step: fp32 group 0 (3 tensors), bf16 group 0 (1), bf16 group 1 (1); the fp32-moment one takes torch ops.
    assert sorted(launches[:3]) == [1, 1, 3] and len(launches) == 12
    assert len(opt_gpu._tables) == 3
    for i, (a, b) in enumerate(zip(cpu[:5], gpu[:5])):
        assert torch.equal(a, b.cpu()), i
        for key in QUANTIZED_KEYS:
            assert torch.equal(opt_cpu.state[a][key], opt_gpu.state[b][key].cpu()), (i, key)
    # Loaded state lives in new tensors: new tables, and the next steps still equal the CPU's.
    twins = [torch.nn.Parameter(p.detach().clone()) for p in gpu]
    restored = _make_many(twins)
    restored.load_state_dict(opt_gpu.state_dict())
    for step in range(4, 6):
        _many_grads(step, cpu)
        _many_grads(step, twins)
        opt_cpu.step()
        restored.step()
    for i, (a, b) in enumerate(zip(cpu[:5], twins[:5])):
        assert torch.equal(a, b.cpu()), i
