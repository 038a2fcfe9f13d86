"""The AdamW8bit optimizer: its trajectory beside torch's AdamW, small parameters kept in fp32, its state through
state_dict and checkpoints, a resumed QLoRA run, and on CUDA one kernel launch per batch, equal to the CPU reference
(its format and kernel: tests/quant/test_adamw8bit.py).

The optimizer tests marked gpu run only on a CUDA device (the optimizer takes the kernel path for CUDA
parameters only).
"""

import copy
import sys

import pytest
import torch
from safetensors.torch import load_file

from tunelab.config import load_config
from tunelab.errors import ConfigError
from tunelab.quant.adamw8bit import QUANTIZED_KEYS
from tunelab.training.adamw8bit import MIN_8BIT_SIZE, AdamW8bit
from tunelab.training.checkpoint import load_checkpoint, save_checkpoint
from tunelab.training.optim import build_optimizer


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
    assert set(ours.state[small]) == {"step", "exp_avg", "exp_avg_sq"}
    assert set(ours.state[small_bf16]) == {"step", "exp_avg", "exp_avg_sq", "compensation"}  # bf16: Kahan's too
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
    monkeypatch.delitem(sys.modules, "tunelab.quant.adamw8bit_triton", raising=False)
    p = torch.nn.Parameter(torch.randn(5000))
    p.grad = torch.randn(5000)
    AdamW8bit([p]).step()
    assert "tunelab.quant.adamw8bit_triton" not in sys.modules


def test_qlora_run_learns_and_resumes_exactly(tiny_overrides, straight_and_resumed, logged_losses):
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
    straight, resumed = straight_and_resumed(common, 4)  # dies during step 4, after the checkpoint of step 2
    losses = logged_losses(straight.run_dir)
    assert sum(losses[-2:]) / 2 < losses[0]

    checkpoint = load_file(str(straight.run_dir / "checkpoints" / "step-0000006" / "optimizer.safetensors"))
    codes = [k for k, t in checkpoint.items() if k.endswith(".exp_avg_q") and t.dtype == torch.uint8]
    fp32 = [k for k in checkpoint if k.endswith(".exp_avg")]
    assert len(codes) >= 10 and len(fp32) >= 2

    a = load_file(str(straight.run_dir / "adapter_model.safetensors"))
    b = load_file(str(resumed.run_dir / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert logged_losses(resumed.run_dir) == losses


@pytest.mark.gpu
@pytest.mark.triton
def test_optimizer_on_cuda_equals_the_cpu_reference():
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


@pytest.mark.gpu
@pytest.mark.triton
def test_optimizer_on_cuda_launches_once_per_dtype_and_group_and_equals_the_cpu_reference(monkeypatch):
    import tunelab.quant.adamw8bit_triton as kernels

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
