"""fp16 training of adapters with dynamic loss scaling: gradients that underflow unscaled come out right, an overflow
step is skipped and counted (not the guard's failure), and a resumed run carries the scale on bit for bit."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import tunelab
import tunelab.tasks.sft as sft_task
import tunelab.training.build as build
import tunelab.training.loop as loop
import tunelab.training.loss_scale as loss_scale
import tunelab.training.recipe as recipe
from tunelab.config import load_config
from tunelab.errors import RunDirError
from tunelab.models.load import pick_dtype
from tunelab.rundir import read_info
from tunelab.training.build import training_dtype
from tunelab.training.loss_scale import GROWTH_INTERVAL, LossScale
from tunelab.training.stages import stage_dir
from tunelab.training.step import train_step


class Recording(torch.optim.SGD):
    """An optimizer that keeps the gradients its step() is given and changes nothing."""

    def step(self, closure=None):
        self.grads = [p.grad.clone() for g in self.param_groups for p in g["params"]]


def _step_grads(small_weight_lora, dtype, scale):
    model, batch = small_weight_lora(dtype)
    optimizer = Recording([p for p in model.parameters() if p.requires_grad], lr=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    stats = train_step(model, [batch], optimizer, scheduler, 0.0, loss_scale=scale)
    return stats, optimizer.grads


def test_fp16_adapter_gradients_that_underflow_unscaled_match_fp32_with_the_loss_scale(small_weight_lora):
    _, reference = _step_grads(small_weight_lora, torch.float32, None)
    _, unscaled = _step_grads(small_weight_lora, torch.float16, None)
    stats, scaled = _step_grads(small_weight_lora, torch.float16, LossScale())
    # unscaled (as before loss scaling): a whole adapter matrix's gradient underflowed to zero
    assert max(float((g == 0).float().mean()) for g in unscaled) == 1.0
    assert not stats["overflow"] and not stats["skipped"]
    for g, r in zip(scaled, reference):
        assert bool((g != 0).any())
        # fp16 activations round each product to 11 bits (~5e-4 relative); 1% leaves room for their sums
        assert float((g - r).norm() / r.norm()) < 0.01


def _tiny_step(small_weight_lora, scale, inf_grad=False):
    """One step of a small-init fp16 LoRA model; inf_grad: one adapter's gradient is made inf (the loss is finite)."""
    model, batch = small_weight_lora(torch.float16, init_range=0.02)
    params = [p for p in model.parameters() if p.requires_grad]
    if inf_grad:
        params[0].register_hook(lambda g: g * float("inf"))
    before = [p.detach().clone() for p in params]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    stats = train_step(model, [batch], optimizer, scheduler, 1.0, loss_scale=scale)
    changed = any(not torch.equal(a, p) for a, p in zip(before, params))
    return stats, changed


def test_an_overflowing_scale_skips_the_update_halves_the_scale_and_is_not_a_guard_failure(small_weight_lora):
    scale = LossScale(2.0**60)  # the scaled gradients overflow fp16's activations
    stats, changed = _tiny_step(small_weight_lora, scale)
    assert stats["overflow"] and not stats["skipped"] and stats["loss"] == stats["loss"]
    assert not changed and scale.scale == 2.0**59 and scale.good_steps == 0
    fine = LossScale()
    stats, changed = _tiny_step(small_weight_lora, fine)
    assert not stats["overflow"] and not stats["skipped"] and changed and fine.good_steps == 1


def test_a_non_finite_loss_is_the_guards_failure_and_leaves_the_scale(monkeypatch, small_weight_lora):
    real = sft_task.summed_loss
    monkeypatch.setattr(sft_task, "summed_loss", lambda model, batch: real(model, batch) * float("nan"))
    scale = LossScale()
    stats, changed = _tiny_step(small_weight_lora, scale)
    assert stats["skipped"] and not stats["overflow"] and not changed
    assert scale.saved() == {"scale": 2.0**16, "good_steps": 0}


def test_the_scale_doubles_after_its_growth_interval_and_an_overflow_at_scale_1_is_a_failure(small_weight_lora):
    scale = LossScale(4.0, GROWTH_INTERVAL - 1)
    scale.update(overflow=False)
    assert scale.saved() == {"scale": 8.0, "good_steps": 0}
    two = LossScale(2.0)
    stats, changed = _tiny_step(small_weight_lora, two, inf_grad=True)
    assert stats["overflow"] and not stats["skipped"] and not changed and two.scale == 1.0
    one = LossScale(1.0)  # no scaling left to undo: the gradient is not finite by itself
    stats, changed = _tiny_step(small_weight_lora, one, inf_grad=True)
    assert stats["skipped"] and not stats["overflow"] and not changed and one.scale == 0.5


def test_an_fp16_lora_run_counts_its_overflow_steps_in_the_log_and_run_json(small_vocab_overrides, monkeypatch, capsys):
    monkeypatch.setattr(loss_scale, "INIT_SCALE", 2.0**26)  # starts too high: the first steps overflow (2**20 did
    # on the CPU but not on a GPU, whose fp16 matmuls accumulate in fp32)
    options = small_vocab_overrides | {"model.dtype": "fp16", "train.max_steps": 12, "method.dropout": 0.0}
    result = recipe.train(None, options)
    out = capsys.readouterr().out
    assert "fp16: dynamic loss scaling, scale 6.71089e+07" in out
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    overflows = [r for r in records if r.get("overflow")]
    assert overflows and all(r["loss"] is not None and r["grad_norm"] is None for r in overflows)
    assert result.skipped_steps == 0 and result.steps == 12 and result.overflow_steps == len(overflows)
    kept = read_info(result.run_dir).extra["fp16_loss_scale"]
    assert kept == {"overflow_steps": len(overflows), "final_scale": 2.0**26 / 2 ** len(overflows)}
    assert f"{len(overflows)} skipped as fp16 overflow" in out
    assert records[-1]["overflow_steps"] == len(overflows) and records[-1]["loss_scale"] == kept["final_scale"]
    adapter = load_file(result.run_dir / "adapter_model.safetensors")
    assert all(bool(torch.isfinite(v).all()) for v in adapter.values())
    assert len(overflows) < 12, [r["step"] for r in overflows]  # then it trained


class Crash(Exception):
    pass


@pytest.mark.parametrize("init", [2.0**16, 2.0**20])
def test_an_fp16_run_resumed_keeps_its_loss_scale_bit_for_bit(small_vocab_overrides, tmp_path, monkeypatch, init):
    monkeypatch.setattr(loss_scale, "INIT_SCALE", init)  # 2**20: overflows in the first steps
    common = small_vocab_overrides | {"model.dtype": "fp16", "train.max_steps": 6, "train.save_every": 2}
    straight = recipe.train(None, common | {"output_dir": str(tmp_path / "straight")})
    real, calls = loop.train_step, {"n": 0}

    def crashing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # during step 5, after the checkpoint of step 4
            raise Crash()
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", crashing)
    with pytest.raises(Crash):
        recipe.train(None, common | {"output_dir": str(tmp_path / "resumed")})
    monkeypatch.setattr(loop, "train_step", real)
    monkeypatch.setattr(loss_scale, "INIT_SCALE", 2.0**10)  # a resumed run must not start from a fresh scale
    resumed = recipe.train(None, common | {"output_dir": str(tmp_path / "resumed")}, resume=True)
    a = load_file(straight.run_dir / "adapter_model.safetensors")
    b = load_file(resumed.run_dir / "adapter_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    logs = [(r / "metrics.jsonl").read_text().splitlines() for r in (straight.run_dir, resumed.run_dir)]
    assert [json.loads(x) | {"elapsed_s": 0, "tokens_per_s": 0} for x in logs[0]] == [
        json.loads(x) | {"elapsed_s": 0, "tokens_per_s": 0} for x in logs[1]
    ]
    assert read_info(straight.run_dir).extra["fp16_loss_scale"] == read_info(resumed.run_dir).extra["fp16_loss_scale"]


def _method(name):
    return load_config(None, {"method.name": name}).config.method


@pytest.mark.parametrize("bf16", [True, False])
def test_auto_dtype_on_a_gpu_without_bf16_is_fp16_for_adapters_and_fp32_for_full(monkeypatch, bf16):
    asked = []
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: asked.append(1) or bf16)
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    lora, dora = training_dtype("auto", cuda, _method("lora")), training_dtype("auto", cuda, _method("dora"))
    full, layers = training_dtype("auto", cuda, _method("full")), training_dtype("auto", cuda, _method("layers"))
    if bf16:
        assert lora == full == layers == (torch.bfloat16, "") and pick_dtype("auto", cuda) == torch.bfloat16
    else:
        assert lora[0] == dora[0] == torch.float16 and "fp16 with dynamic loss scaling" in lora[1]
        assert "no native bf16" in lora[1]
        assert full[0] == layers[0] == torch.float32 and "fp32" in full[1] and "method.name full" in full[1]
        assert pick_dtype("auto", cuda) == torch.float16  # chat, generate, serve
    assert asked
    assert (
        training_dtype("auto", cpu, _method("lora")) == (torch.float32, "") and pick_dtype("auto", cpu) == torch.float32
    )
    bf16_asked = training_dtype("bf16", cuda, _method("full"))  # asked for: kept, with a note where emulated
    assert bf16_asked[0] == torch.bfloat16 and (bf16_asked[1] == "") == bf16
    if not bf16:
        assert "model.dtype is bf16, but this GPU has no native bf16" in bf16_asked[1] and "pick fp32" in bf16_asked[1]
    assert training_dtype("fp16", cuda, _method("lora")) == (torch.float16, "")


def test_a_run_whose_auto_dtype_is_fp16_says_why_and_trains_with_the_loss_scale(
    small_vocab_overrides, monkeypatch, capsys
):
    """On the CPU, with training_dtype answering as on a GPU without bf16: the note is printed and the run scales."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    real = build.training_dtype
    monkeypatch.setattr(
        build, "training_dtype", lambda dtype, device, method: real(dtype, torch.device("cuda"), method)
    )
    result = recipe.train(None, small_vocab_overrides | {"train.max_steps": 2})
    out = capsys.readouterr().out
    assert "model.dtype auto: fp16 with dynamic loss scaling, since this GPU has no native bf16" in out
    assert "fp16: dynamic loss scaling, scale 65536" in out
    info = read_info(result.run_dir)
    assert info.dtype == "float16" and info.extra["fp16_loss_scale"]["overflow_steps"] == 0


@pytest.mark.parametrize("bad", [{"scale": "x", "good_steps": 0}, {"scale": 0.0, "good_steps": 0}, [1]])
def test_a_checkpoint_with_an_edited_loss_scale_is_damaged_and_skipped(small_vocab_overrides, capsys, bad):
    run = small_vocab_overrides | {
        "model.dtype": "fp16",
        "train.save_every": 1,
        "train.keep_checkpoints_after_finish": True,
    }
    run_dir = recipe.train(None, run | {"train.max_steps": 3}).run_dir
    state = run_dir / "checkpoints" / "step-0000003" / "state.json"
    saved = json.loads(state.read_text())
    state.write_text(json.dumps(saved | {"position": saved["position"] | {"loss_scale": bad}}))
    result = recipe.train(None, run | {"train.max_steps": 4}, resume=True)
    out = capsys.readouterr().out
    assert "state.json is damaged (its loss_scale" in out and "step-0000002 (step 2 of 4)" in out
    assert result.steps == 4


@pytest.mark.parametrize(
    ("method", "started", "trained", "here"),
    [("lora", False, "float16", "bf16"), ("full", True, "bfloat16", "fp32")],
)
def test_a_run_resumed_where_auto_picks_another_dtype_keeps_the_one_it_trained_in(
    small_vocab_overrides, tmp_path, monkeypatch, gpu_bf16, crash_at, capsys, method, started, trained, here
):
    """Started on a GPU with (or without) native bf16, resumed on one without (or with): auto keeps the run's dtype,
    says so, and the result is bit-identical to the uninterrupted run's. On the CPU, with training_dtype answering as
    on such a GPU."""
    bf16 = gpu_bf16
    bf16["native"] = started
    common = small_vocab_overrides | {"method.name": method, "train.max_steps": 4, "train.save_every": 2}
    straight = recipe.train(None, common | {"output_dir": str(tmp_path / "straight")})
    with crash_at(3):
        recipe.train(None, common | {"output_dir": str(tmp_path / "resumed")})
    bf16["native"] = not started  # the other machine
    resumed = recipe.train(None, common | {"output_dir": str(tmp_path / "resumed")}, resume=True)
    out = capsys.readouterr().out
    short = {"float16": "fp16", "bfloat16": "bf16"}[trained]
    assert (
        f"resume: model.dtype auto keeps {short}, the dtype the run trained in (on this machine auto picks {here})"
        in out
    )
    assert f"start a new run with model.dtype {here}" in out
    assert read_info(straight.run_dir).dtype == read_info(resumed.run_dir).dtype == trained
    weights = "adapter_model.safetensors" if method == "lora" else "model.safetensors"
    a, b = (load_file(r.run_dir / weights) for r in (straight, resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_json_with_an_edited_dtype_is_refused_on_resume(tiny_overrides, crash_at):
    run = tiny_overrides | {"train.max_steps": 3, "train.save_every": 1}
    with crash_at(3):
        recipe.train(None, run)
    path = Path(run["output_dir"]) / "run.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | {"dtype": "int8"}))
    with pytest.raises(
        RunDirError, match=r"run.json: field 'dtype' is \"int8\", but must be one of float32, bfloat16, float16"
    ):
        recipe.train(None, run, resume=True)


def test_a_staged_fp16_run_returns_its_overflow_steps_summed_over_the_stages(
    small_vocab_overrides, qa_file, monkeypatch
):
    monkeypatch.setattr(loss_scale, "INIT_SCALE", 2.0**40)  # each stage starts too high: its first steps overflow
    stage = {"data": {"train": [str(qa_file)]}, "train": {"max_steps": 4}}
    result = tunelab.train(None, small_vocab_overrides | {"model.dtype": "fp16", "stages": [stage, stage]})
    whole = read_info(result.run_dir).extra["fp16_loss_scale"]["overflow_steps"]
    assert result.overflow_steps == whole > 0 and result.skipped_steps == 0
    stages = [read_info(stage_dir(result.run_dir, k)).extra["fp16_loss_scale"]["overflow_steps"] for k in (1, 2)]
    assert sum(stages) == whole and min(stages) > 0
