"""`tunelab check` says what train says at its start about the GPU and the trackers: the budget against this GPU (a
train.gpu_memory above its memory refused, exit 2, as plan and train refuse it), the memory other processes hold of
it, and where each tracker of train.report_to reports."""

import types

import pytest
import torch

from tunelab.cli import main

GIB = 2**30


@pytest.fixture
def fake_gpu(monkeypatch):
    """A 24 GiB CUDA device with `free` GiB free (the others' processes hold the rest); checks run --data-only, so
    nothing is placed on it."""

    def place(free: int = 24):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: types.SimpleNamespace(
            total_memory=24 * GIB, name="Test GPU 24G"))  # fmt: skip
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free * GIB, 24 * GIB))
        monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 0)

    return place


def test_a_budget_above_the_gpu_is_refused_by_check_as_by_train(tiny_overrides, capsys, cli_flags, fake_gpu):
    """check passed a train.gpu_memory of 80GiB on a 24 GiB GPU, and train then refused it."""
    fake_gpu()
    assert main(["check", *cli_flags(tiny_overrides | {"train.gpu_memory": "80GiB"}), "--data-only"]) == 2
    err = capsys.readouterr().err
    assert "option 'train.gpu_memory' (--gpu-memory) is 80GiB, more than the 24.00 GiB of this GPU" in err
    assert main(["check", *cli_flags(tiny_overrides | {"train.gpu_memory": "20GiB"}), "--data-only"]) == 0
    out = capsys.readouterr().out
    assert "[PASS] gpu memory: budget 20.00 GiB of this GPU's 24.00 GiB (Test GPU 24G; train.gpu_memory 20GiB)" in out


def test_a_gpu_shared_with_other_processes_is_a_warning(tiny_overrides, capsys, cli_flags, fake_gpu):
    fake_gpu(free=10)
    assert main(["check", *cli_flags(tiny_overrides), "--data-only"]) == 0
    out = capsys.readouterr().out
    assert "[WARN] gpu memory: budget 22.08 GiB of this GPU's 24.00 GiB (Test GPU 24G; 0.92 of it" in out
    assert "note: the budget 22.08 GiB is more than the 10.00 GiB of GPU memory this process can have now" in out


def test_check_says_where_each_tracker_reports(tiny_overrides, capsys, cli_flags, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    overrides = tiny_overrides | {"train.report_to": "[tensorboard]"}
    assert main(["check", *cli_flags(overrides), "--data-only"]) == 0
    out = capsys.readouterr().out
    run = tiny_overrides["output_dir"]
    assert "[INFO] trackers: 1 tracker reports the run's metrics" in out
    assert f"report_to tensorboard: TensorBoard event files in {run}/tensorboard (local)" in out
    assert "gpu memory" not in out  # no GPU here and no budget set: nothing to say


def test_a_shared_gpu_is_a_warning_only_where_train_plans_memory(tiny_overrides, capsys, cli_flags, fake_gpu):
    """train notes the memory other processes hold only while it plans checkpointing, offload or the micro-batch;
    check warned of it always, for a config whose every memory option is given."""
    fake_gpu(free=10)
    given = tiny_overrides | {"train.checkpointing": "false", "train.offload_activations": "false"}
    assert main(["check", *cli_flags(given), "--data-only"]) == 0
    out = capsys.readouterr().out
    assert "[PASS] gpu memory: budget 22.08 GiB of this GPU's 24.00 GiB" in out
    assert "note: the budget" not in out


def test_no_auto_values_item_when_no_option_is_auto(tiny_overrides, capsys, cli_flags, fake_gpu):
    """check printed "auto values: 0 chosen from the data" with nothing under it."""
    fake_gpu()
    given = tiny_overrides | {"train.epochs": 1, "train.warmup_ratio": 0.1, "train.eval_every": 0}
    assert main(["check", *cli_flags(given), "--data-only"]) == 0
    assert "auto values" not in capsys.readouterr().out
    assert main(["check", *cli_flags(given | {"train.epochs": "auto"}), "--data-only"]) == 0
    assert "[INFO] auto values: 1 chosen from the data" in capsys.readouterr().out
