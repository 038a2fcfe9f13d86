"""`auto` options across --resume: the resumed run keeps the values its start chose (so it ends bit-identical to an
uninterrupted run, keep_best included), and `auto` against the number it chose is no change for the resume check."""

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

import tunelab.training.auto as auto
import tunelab.training.recipe as recipe
from tunelab.config import load_config
from tunelab.errors import ConfigError
from tunelab.training.resume import config_changes, kept_auto

AUTO_TRAIN = {"train.lr": "auto", "train.micro_batch": "auto", "train.warmup_ratio": "auto", "train.eval_every": "auto"}


def _overrides(tiny_overrides, tmp_path, name):
    # 18 training rows (eval_fraction 0.25 of 24): micro-batch 1; 8 steps, an evaluation after each (10 a run).
    return (
        tiny_overrides
        | AUTO_TRAIN
        | {
            "data.eval_fraction": 0.25,
            "train.grad_accum": 1,
            "train.max_steps": 8,
            "train.save_every": 2,
            "output_dir": str(tmp_path / name),
        }
    )


def test_a_resumed_run_keeps_its_auto_values_and_ends_where_an_uninterrupted_one_does(
    tiny_overrides, tmp_path, monkeypatch, crash_at, capsys
):
    straight = recipe.train(None, _overrides(tiny_overrides, tmp_path, "straight"))
    assert {k: v["value"] for k, v in straight.auto.items()} == {
        "train.lr": 3e-3,  # width 64: the top of the range
        "train.micro_batch": 1,
        "train.warmup_ratio": 0.05,
        "train.eval_every": 1,
        "train.checkpointing": False,  # the CPU: no GPU budget to plan for
        "train.offload_activations": False,
    }

    overrides = _overrides(tiny_overrides, tmp_path, "resumed")
    with crash_at(6):  # dies during step 6: the checkpoint of step 4 stays, best.safetensors may be of step 5
        recipe.train(None, overrides)
    # Were the rules to choose differently now (a new version), the resumed run still trains with the run's values.
    monkeypatch.setattr(auto, "LR_RANGE", (1e-5, 1e-3))
    monkeypatch.setattr(auto, "EVALS_PER_RUN", 2)
    capsys.readouterr()
    resumed = recipe.train(None, overrides, resume=True)
    out = capsys.readouterr().out
    assert "as the run chose at its start: LoRA, hidden size 64" in out

    assert {k: v["value"] for k, v in resumed.auto.items()} == {k: v["value"] for k, v in straight.auto.items()}
    a, b = (load_file(r.run_dir / "adapter_model.safetensors") for r in (straight, resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    info = [json.loads((r.run_dir / "run.json").read_text()) for r in (straight, resumed)]
    assert info[0]["extra"].get("best") == info[1]["extra"].get("best")
    assert info[0]["eval_loss"] == info[1]["eval_loss"]
    assert info[0]["extra"]["verdict"]["kind"] == info[1]["extra"]["verdict"]["kind"]


def test_auto_against_the_chosen_number_is_no_change(tiny_overrides, tmp_path):
    overrides = _overrides(tiny_overrides, tmp_path, "run") | {"train.keep_checkpoints_after_finish": True}
    run_dir = recipe.train(None, overrides).run_dir
    chosen = json.loads((run_dir / "run.json").read_text())["extra"]["auto"]
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["train"]["lr"] == "auto"  # config.yaml keeps what was written

    def changes(**train):
        new = load_config(None, overrides | {f"train.{k}": v for k, v in train.items()}).config
        return config_changes(saved, new, chosen)

    assert changes() == ([], [])
    assert changes(lr=3e-3, micro_batch=1, warmup_ratio=0.05) == ([], [])  # the numbers auto chose
    refused, _ = changes(lr=1e-3)
    assert refused == ["train.lr: auto (0.003) -> 0.001"]
    _, allowed = changes(eval_every=4)
    assert allowed == ["train.eval_every: auto (1) -> 4"]

    # The other way round: a run started with a number, resumed with auto, keeps the number.
    fixed = recipe.train(None, overrides | {"train.lr": 2e-3, "output_dir": str(tmp_path / "fixed")}).run_dir
    resumed_cfg = load_config(None, overrides | {"output_dir": str(fixed)}).config
    kept = kept_auto(fixed, resumed_cfg)
    assert kept["train.lr"].value == 2e-3 and "config.yaml" in kept["train.lr"].reason
    assert kept["train.micro_batch"].value == 1 and "as the run chose at its start" in kept["train.micro_batch"].reason
    with pytest.raises(ConfigError, match=r"train.lr: auto \(0.003\) -> 0.001"):
        recipe.train(None, overrides | {"train.lr": 1e-3}, resume=True)


def test_an_option_the_task_does_not_read_is_no_change_on_resume():
    """A run saved with dpo.beta on an sft run (accepted before such options were refused): resuming without it was
    refused as a change of dpo.beta, and resuming with it by the task-option refusal, a dead end."""
    saved = {"task": "sft", "dpo": {"beta": 0.05}, "train": {"lr": 1e-3}}
    assert config_changes(saved, load_config(None, {"train.lr": 1e-3}).config) == ([], [])
    refused, _ = config_changes(saved | {"task": "dpo"}, load_config(None, {"task": "dpo", "train.lr": 1e-3}).config)
    assert refused == ["dpo.beta: 0.05 -> 0.1"]  # on a dpo run it is a change of what trains


def test_a_longer_resume_keeps_the_auto_eval_cadence_and_says_so(tiny_overrides, capsys):
    """eval_every auto, chosen for 4 steps, stayed on a resume to 6 steps without a word: the user could not tell
    whether the new length had been given its own 10 evaluations."""
    common = tiny_overrides | {"data.eval_fraction": 0.25, "train.save_every": 1, "train.eval_every": "auto"}
    common |= {"train.keep_checkpoints_after_finish": True}
    recipe.train(None, common | {"train.max_steps": 4})
    capsys.readouterr()
    resumed = recipe.train(None, common | {"train.max_steps": 6}, resume=True)
    out = capsys.readouterr().out
    assert "train.eval_every stays 1, as auto chose it when the run started" in out
    records = map(json.loads, (resumed.run_dir / "metrics.jsonl").open())
    assert [r["step"] for r in records if "eval_loss" in r] == [1, 2, 3, 4, 5, 6]
