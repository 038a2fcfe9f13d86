"""LoRA+ (train.loraplus_lr_ratio): the adapters' B matrices train at train.lr x ratio under every optimizer and
through the whole schedule, a run with it trains differently and resumes exactly, and methods without adapters
refuse it."""

import json
import re

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import tunelab
from tunelab.cli import main
from tunelab.errors import ConfigError
from tunelab.peft.lora import attach_lora, lora_modules
from tunelab.rundir import read_info
from tunelab.training.optim import build_optimizer
from tunelab.training.schedule import lr_factor

LR, RATIO, HEAD_LR = 1e-3, 16.0, 5e-2


def _model(dora: bool) -> nn.Module:
    """A body of two adapted linears and a trainable head beside it (the classify/reward shape)."""
    torch.manual_seed(0)
    body = nn.ModuleDict({"q_proj": nn.Linear(8, 8), "v_proj": nn.Linear(8, 8)})
    attach_lora(body, ["q_proj", "v_proj"], r=2, alpha=4.0, dora=dora)
    return nn.ModuleDict({"model": body, "score": nn.Linear(8, 2, bias=False)})


def _rates(optimizer, model) -> dict[str, float]:
    """The learning rate of each trainable parameter by name."""
    by_id = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    return {name: by_id[id(p)] for name, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("kind", ["adamw", "adamw_8bit", "adamw_torch"])
@pytest.mark.parametrize("dora", [False, True])
def test_b_trains_at_ratio_times_a_at_every_step_of_the_schedule(kind, dora):
    model = _model(dora)
    optimizer = build_optimizer(model, LR, 0.0, kind, {"score": HEAD_LR}, RATIO)
    assert optimizer.param_groups[0]["lr"] == LR  # the rate the metrics log stays train.lr
    total, warmup = 8, 2
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, warmup, "cosine"))
    params = dict(model.named_parameters())
    for step in range(total):
        factor = lr_factor(step, total, warmup, "cosine")
        rates = _rates(optimizer, model)
        for name, rate in rates.items():
            if ".lora_B." in name:
                expected = LR * RATIO * factor
            elif name.startswith("score"):
                expected = HEAD_LR * factor  # the head keeps classify.head_lr, not multiplied
            else:  # A, and DoRA's magnitude
                expected = LR * factor
            assert rate == pytest.approx(expected, rel=1e-12), (step, name)
        # Adam's first step moves each weight by lr x sign(grad) (|g| >> eps): the optimizer honours each group's rate
        before = {name: p.detach().clone() for name, p in params.items()}
        for p in params.values():
            p.grad = torch.ones_like(p) if p.requires_grad else None
        optimizer.step()
        if step == 0:
            for name, p in params.items():
                if p.requires_grad:
                    moved = (before[name] - p.detach()).abs().max().item()
                    assert moved == pytest.approx(rates[name], rel=1e-3), name
        scheduler.step()
    assert sum(".lora_B." in n for n in rates) == 2 and any("magnitude" in n for n in rates) == dora


def test_without_the_ratio_b_takes_train_lr_and_a_model_without_adapters_is_refused():
    model = _model(dora=False)
    assert set(_rates(build_optimizer(model, LR, 0.0), model).values()) == {LR}
    with pytest.raises(ConfigError, match="train.loraplus_lr_ratio.*no trainable LoRA adapter"):
        build_optimizer(nn.Linear(4, 4), LR, 0.0, loraplus_ratio=RATIO)


@pytest.mark.parametrize(("impl", "method"), [("fast", "lora"), ("generic", "dora")])
def test_a_run_with_the_ratio_trains_b_faster(tiny_overrides, tmp_path, capsys, impl, method):
    common = tiny_overrides | {"train.max_steps": 3, "model.impl": impl, "method.name": method}
    plain = tunelab.train(None, common | {"output_dir": str(tmp_path / "plain")})
    capsys.readouterr()
    plus = tunelab.train(None, common | {"output_dir": str(tmp_path / "plus"), "train.loraplus_lr_ratio": RATIO})
    printed = capsys.readouterr().out  # the resolved config printed at start, with where the value came from
    assert re.search(r"train\.loraplus_lr_ratio +\= 16\.0 +\(overrides\['train\.loraplus_lr_ratio'\]\)", printed)
    assert (
        "LoRA+: the adapters' B matrices train at 0.016 (train.lr 0.001 x train.loraplus_lr_ratio 16), A at" in printed
    )
    info = read_info(plus.run_dir)
    assert info.impl == impl and info.method == method
    assert info.extra["loraplus"] == {"lr_ratio": RATIO, "lr_B": pytest.approx(1e-3 * RATIO)}
    assert "loraplus" not in read_info(plain.run_dir).extra
    a, b = load_file(plain.run_dir / "adapter_model.safetensors"), load_file(plus.run_dir / "adapter_model.safetensors")

    def moved(weights, part):  # B starts at zero: its size is how far it trained
        return sum(w.norm().item() for k, w in weights.items() if f".{part}." in k)

    assert moved(b, "lora_B") > 4 * moved(a, "lora_B") > 0
    losses = [[json.loads(line)["loss"] for line in (r.run_dir / "metrics.jsonl").read_text().splitlines()] for r in (plain, plus)]  # fmt: skip
    assert losses[0][0] == losses[1][0] and losses[0][1:] != losses[1][1:]  # B = 0 at step 1: the same first loss
    records = [json.loads(line) for line in (plus.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records and all(r["lr_B"] == pytest.approx(r["lr"] * RATIO) and r["lr_B"] > 0 for r in records)
    assert not any("lr_B" in json.loads(line) for line in (plain.run_dir / "metrics.jsonl").read_text().splitlines())


def test_a_resumed_run_with_the_ratio_equals_the_uninterrupted_one(tiny_overrides, straight_and_resumed, logged_losses):
    common = tiny_overrides | {"train.max_steps": 6, "train.save_every": 2, "train.loraplus_lr_ratio": RATIO}
    straight, resumed = straight_and_resumed(common, 4)  # dies during step 4, after the checkpoint of step 2
    assert resumed.steps == straight.steps == 6
    a = load_file(straight.run_dir / "adapter_model.safetensors")
    b = load_file(resumed.run_dir / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert logged_losses(straight.run_dir) == logged_losses(resumed.run_dir)


@pytest.mark.parametrize("method", ["full", "layers"])
def test_methods_without_adapters_refuse_the_ratio(tiny_overrides, cli_flags, capsys, method):
    flags = cli_flags(tiny_overrides | {"method.name": method, "train.loraplus_lr_ratio": 16})
    assert main(["train", *flags]) == 2
    err = capsys.readouterr().err
    assert "train.loraplus_lr_ratio" in err and f"method.name is {method}" in err and "no adapter" in err


def test_a_stage_without_adapters_refuses_the_ratio(tiny_overrides):
    stages = [{"method.name": "lora"}, {"method.name": "full"}]
    with pytest.raises(ConfigError, match=r"stage 2: option 'train.loraplus_lr_ratio' is 16.*method.name is full"):
        tunelab.train(None, tiny_overrides | {"stages": stages, "train.loraplus_lr_ratio": 16})


# Each task's rows and options beside tiny_overrides: every task that trains adapters builds its optimizer alike
TASKS = {
    "sft": ([], {}),
    "dpo": (
        [{"prompt": f"Code of box {i}?", "chosen": f"Box {i}: {1000 + i}.", "rejected": "No idea."} for i in range(8)],
        {"task": "dpo", "train.grad_accum": 1, "train.micro_batch": 2},
    ),
    "grpo": (
        [{"prompt": f"What is {i} plus {i + 1}?", "expected": str(2 * i + 1)} for i in range(8)],
        {
            "task": "grpo",
            "train.grad_accum": 1,
            "grpo.num_generations": 2,
            "grpo.prompts_per_step": 2,
            "grpo.max_new_tokens": 4,
            "grpo.rewards": [{"kind": "contains"}],
        },
    ),
    "classify": (
        [{"text": f"{'good' if i % 2 else 'bad'} {i}", "label": "pos" if i % 2 else "neg"} for i in range(8)],
        {"task": "classify", "classify.head_lr": HEAD_LR},
    ),
}


@pytest.mark.parametrize("task", list(TASKS))
def test_every_adapter_of_a_run_gets_the_ratio_in_every_task(tiny_overrides, tmp_path, monkeypatch, task):
    """Every B of the built model (all-linear) lands in the group at lr x ratio, and nothing else does; a head keeps
    classify.head_lr."""
    import tunelab.training.recipe as recipe

    rows, extra = TASKS[task]
    over = tiny_overrides | extra | {"train.max_steps": 1, "train.loraplus_lr_ratio": RATIO}
    if rows:
        data = tmp_path / f"{task}.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        over["data.train"] = [str(data)]
    seen = {}
    real = recipe.build_optimizer

    def spy(model, *args):
        seen["model"], seen["optimizer"] = model, real(model, *args)
        return seen["optimizer"]

    monkeypatch.setattr(recipe, "build_optimizer", spy)
    tunelab.train(None, over, check=False)
    model, optimizer = seen["model"], seen["optimizer"]
    b_ids = {id(m.lora_B.weight) for _, m in lora_modules(model)}
    rates = [g["initial_lr"] for g in optimizer.param_groups if {id(p) for p in g["params"]} == b_ids]
    assert len(b_ids) > 2 and rates == [pytest.approx(1e-3 * RATIO)]
    others = {g["initial_lr"] for g in optimizer.param_groups if not b_ids & {id(p) for p in g["params"]}}
    assert others == ({1e-3, HEAD_LR} if task == "classify" else {1e-3})


def test_resume_refuses_a_changed_ratio(tiny_overrides):
    run = tiny_overrides | {"train.max_steps": 2, "train.save_every": 1, "train.keep_checkpoints_after_finish": True}
    tunelab.train(None, run | {"train.loraplus_lr_ratio": RATIO})
    with pytest.raises(ConfigError, match=r"train\.loraplus_lr_ratio: 16\.0 -> 4\.0"):
        tunelab.train(None, run | {"train.max_steps": 3, "train.loraplus_lr_ratio": 4.0}, resume=True)
    with pytest.raises(ConfigError, match=r"train\.loraplus_lr_ratio: 16\.0 -> None"):
        tunelab.train(None, run | {"train.max_steps": 3}, resume=True)
