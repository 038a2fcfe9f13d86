"""The non-finite guard: a NaN/inf step never reaches the weights or the optimizer state, is counted, and enough of
them in a row stop the run with exit code 3, a message naming steps, rows and checkpoint, and no NaN in any file."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

import tunelab.tasks.sft as sft_task  # the sft task computes the loss train_step takes
import tunelab.training.recipe as recipe
import tunelab.training.step as step
from tunelab.cli import main
from tunelab.errors import TrainingStopped
from tunelab.training.checkpoint import save_checkpoint
from tunelab.training.guard import BadSteps, stop_message
from tunelab.training.optim import build_optimizer


def _poisoned(monkeypatch, bad_calls):
    """summed_loss times NaN on the listed calls (1-based): a step whose loss and every gradient are NaN."""
    real, calls = sft_task.summed_loss, {"n": 0}

    def loss(model, batch):
        calls["n"] += 1
        value = real(model, batch)
        return value * float("nan") if calls["n"] in bad_calls else value

    monkeypatch.setattr(sft_task, "summed_loss", loss)


def _snapshot(model, optimizer):
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    state = {
        (i, k): v.clone() for i, s in enumerate(optimizer.state.values()) for k, v in s.items() if torch.is_tensor(v)
    }
    return weights, state


@pytest.mark.parametrize("kind", ["adamw", "adamw_8bit"])
def test_a_nan_step_leaves_weights_and_optimizer_state_untouched(kind, monkeypatch):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4
    )
    model = LlamaForCausalLM(config)
    optimizer = build_optimizer(model, 1e-3, 0.0, kind)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    ids = torch.randint(0, 300, (2, 12))
    batch = {"input_ids": ids, "labels": ids, "attention_mask": torch.ones_like(ids)}
    _poisoned(monkeypatch, bad_calls={2})
    good = step.train_step(model, [batch], optimizer, scheduler, 1.0)
    assert not good["skipped"] and optimizer.state  # the first step created the optimizer state
    weights, state = _snapshot(model, optimizer)
    bad = step.train_step(model, [batch], optimizer, scheduler, 1.0)
    assert bad["skipped"] and bad["loss"] != bad["loss"]
    after_weights, after_state = _snapshot(model, optimizer)
    assert all(torch.equal(weights[n], after_weights[n]) for n in weights)
    assert state.keys() == after_state.keys() and all(torch.equal(state[k], after_state[k]) for k in state)
    assert all(p.grad is None for p in model.parameters())  # the NaN gradients were dropped
    assert not step.train_step(model, [batch], optimizer, scheduler, 1.0)["skipped"]  # and training goes on


def _finite_files(run_dir: Path) -> list[str]:
    files = sorted(run_dir.rglob("*.safetensors"))
    for file in files:
        for name, t in load_file(file).items():
            assert not t.is_floating_point() or torch.isfinite(t).all(), f"{file}: {name}"
    return [str(f.relative_to(run_dir)) for f in files]


def test_lr_1e6_in_fp16_stops_with_exit_3_and_no_nan_in_any_file(tiny_overrides, capsys, cli_flags):
    """fp16 with lr 1e6: the first update is finite, the next forwards overflow; three skipped steps stop the run."""
    overrides = tiny_overrides | {
        "model.dtype": "fp16",
        "train.lr": 1e6,
        "train.max_steps": 8,
        "train.save_every": 1,
        "method.dropout": 0.0,
    }
    args = ["train", *cli_flags(overrides)]
    assert main(args) == 3
    err = capsys.readouterr().err
    assert "training stopped at step 4 of 8" in err and "steps 2-4" in err and "Traceback" not in err
    assert "qa.jsonl:" in err  # the rows of the first bad step
    assert "train.lr is 1e+06" in err and "model.fix_untrained_tokens" in err
    run = Path(overrides["output_dir"])
    assert "checkpoints/step-0000003" in err  # the last one written; skipped steps left the weights of step 1
    written = _finite_files(run)
    assert "checkpoints/step-0000003/trainable.safetensors" in written
    assert not (run / "adapter_model.safetensors").exists()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("skipped", False) for r in records] == [False, True, True, True]
    assert records[1]["loss"] is None and records[-1]["skipped_steps"] == 3
    info = json.loads((run / "run.json").read_text())
    assert info["finished"] is False and info["skipped_steps"] == 3


def test_isolated_bad_steps_are_skipped_counted_and_the_run_finishes(tiny_overrides, monkeypatch):
    # grad_accum 2: the step of calls 3-4 is step 2; calls 9-10 are step 5.
    _poisoned(monkeypatch, bad_calls={3, 9})
    result = recipe.train(None, tiny_overrides | {"train.max_steps": 6})
    assert result.skipped_steps == 2 and result.final_loss == result.final_loss
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r.get("skipped")] == [2, 5]
    assert json.loads((result.run_dir / "run.json").read_text())["skipped_steps"] == 2
    _finite_files(result.run_dir)


def test_stop_message_names_steps_rows_causes_and_checkpoint():
    bad = BadSteps(limit=2)
    assert not bad.record(7, {"skipped": True, "loss": float("nan"), "grad_norm": float("inf")}, ["a.jsonl:3"])
    assert not bad.record(8, {"skipped": False, "loss": 1.0, "grad_norm": 1.0}, ["a.jsonl:4"])  # the streak resets
    assert not bad.record(9, {"skipped": True, "loss": float("nan"), "grad_norm": 1.0}, ["a.jsonl:5", "b.csv:2"])
    assert bad.record(10, {"skipped": True, "loss": float("inf"), "grad_norm": 1.0}, ["a.jsonl:6"])
    assert bad.skipped == 3
    text = stop_message(bad.streak, 50, 2e-4, "run/checkpoints/step-0000008")
    assert "stopped at step 10 of 50" in text and "steps 9-10" in text
    assert "a.jsonl:5, b.csv:2" in text and "other rows" in text
    assert "train.lr is 0.0002" in text and "run/checkpoints/step-0000008" in text
    assert "No checkpoint was written" in stop_message(bad.streak, 50, 2e-4, None)


def test_a_non_finite_weight_is_never_written(tmp_path):
    model = torch.nn.Linear(4, 4)
    optimizer = torch.optim.AdamW(model.parameters())
    with torch.no_grad():
        model.weight[1, 2] = float("nan")
    with pytest.raises(TrainingStopped, match="weight"):
        save_checkpoint(tmp_path, model, optimizer, {"step": 3}, keep=2)
    assert not any((tmp_path / "checkpoints").glob("*"))


def test_a_resumed_run_goes_on_counting_the_bad_steps_before_its_checkpoint(tiny_overrides, monkeypatch):
    """A checkpoint written in a streak of bad steps (save_every, Ctrl-C) forgot the streak: the resumed run
    counted from zero and trained on past the step where the uninterrupted run stops."""
    import tunelab.training.loop as loop

    overrides = tiny_overrides | {"train.max_steps": 6, "train.save_every": 3, "train.max_bad_steps": 3}
    _poisoned(monkeypatch, bad_calls={3, 5})  # grad_accum 2: steps 2 and 3 are bad, then the checkpoint of step 3
    real_step, calls = loop.train_step, {"n": 0}

    def dying_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt  # killed during step 4, after the checkpoint
        return real_step(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        recipe.train(None, overrides)
    monkeypatch.setattr(loop, "train_step", real_step)
    _poisoned(monkeypatch, bad_calls={1})  # step 4 is bad too: the third in a row
    with pytest.raises(TrainingStopped) as stopped:
        recipe.train(None, overrides, resume=True)
    message = str(stopped.value)
    assert "stopped at step 4 of 6" in message and "3 optimizer steps in a row (steps 2-4" in message
    assert "qa.jsonl:" in message  # the rows of step 2, the first bad one
