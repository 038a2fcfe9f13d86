"""`tunelab train --nproc N`'s launcher (`training/launch.py`): the CPU threads each rank starts with."""

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tunelab.errors import ConfigError
from tunelab.training import launch as launch_module
from tunelab.training.distributed import session


class _Launches(list):
    """(ranks, OMP_NUM_THREADS) of each launch, and the log folder each was given."""

    def __init__(self):
        super().__init__()
        self.logs: list[Path] = []


@pytest.fixture
def started(monkeypatch):
    """Replace torch's elastic launcher by one that records the environment the ranks would inherit."""
    seen = _Launches()

    def fake_elastic_launch(config, entrypoint):
        def run(*args):
            seen.append((config.nproc_per_node, os.environ.get("OMP_NUM_THREADS")))
            seen.logs.append(Path(config.logs_specs.root_log_dir))
            assert seen.logs[-1].is_dir()

        return run

    monkeypatch.setattr(launch_module, "elastic_launch", fake_elastic_launch)
    return seen


def test_ranks_share_the_cores_unless_the_user_chose(started, monkeypatch, capsys):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(launch_module.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert launch_module.launch(["train", "config.yaml"], 2) == 0
    assert started[-1] == (2, "4")  # 8 cores / 2 ranks
    assert "2 ranks, 4 CPU threads each" in capsys.readouterr().out
    assert "OMP_NUM_THREADS" not in os.environ  # given back after the launch
    assert launch_module.launch(["train", "config.yaml"], 16) == 0
    assert started[-1] == (16, "1")  # at least one
    assert "16 ranks, 1 CPU thread each" in capsys.readouterr().out
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert launch_module.launch(["train", "config.yaml"], 2) == 0
    assert started[-1] == (2, "3") and os.environ["OMP_NUM_THREADS"] == "3"  # the user's value, untouched
    assert "CPU thread" not in capsys.readouterr().out


def test_one_rank_keeps_the_environment(started, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert launch_module.launch(["train", "config.yaml"], 1) == 0
    assert started[-1] == (1, None)


def test_the_ranks_log_folder_is_removed_afterwards(started, monkeypatch):
    """torch's agent would make a torchelastic_* folder in the temporary directory and leave it there."""
    monkeypatch.setattr(launch_module.tempfile, "tempdir", None)
    assert launch_module.launch(["train", "config.yaml"], 2) == 0
    folder = started.logs[-1]
    assert folder.name.startswith("tunelab-ranks-")
    assert not folder.exists()


@pytest.mark.parametrize("signum, code", [(2, 130), (15, 143)])
def test_a_signal_to_the_launcher_exits_as_one_process_would(monkeypatch, signum, code):
    """SIGTERM to `tunelab train --nproc N` (a scheduler stopping the job) exited 130, the code of Ctrl-C."""
    import signal

    from torch.distributed.elastic.multiprocessing.api import SignalException

    def stopped(config, entrypoint):
        def run(*args):
            raise SignalException(f"Process got signal: {signum}", sigval=signal.Signals(signum))

        return run

    monkeypatch.setattr(launch_module, "elastic_launch", stopped)
    assert launch_module.launch(["train", "config.yaml"], 2) == code


def test_a_host_of_one_gpu_is_told_in_the_singular(monkeypatch):
    """--nproc 2 on a host of one GPU, and torchrun's local rank 1 there, said "1 CUDA device(s)"."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    cfg = SimpleNamespace(model=SimpleNamespace(device="cuda"))
    with pytest.raises(ConfigError, match=r"this host has 1 CUDA device; each rank needs its own GPU"):
        launch_module.check_launch(cfg, 2)
    for name, value in {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=r"local rank 1, but this host has 1 CUDA device; start at most one"):
        with session(cfg):
            pass


def test_too_many_ranks_for_the_gpus_name_the_launcher_that_started_them(
    monkeypatch, tiny_overrides, cli_flags, capsys
):
    """Ranks of tunelab train --nproc or train(nproc=...) are counted against the GPUs before they start, so the
    session's refusal reaches only ranks an outside launcher started: it named --nproc beside torchrun's flag."""
    import tunelab
    from tunelab.cli import main

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    for name, value in {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(name, value)
    over = tiny_overrides | {"model.device": "cuda"}
    assert main(["train", *cli_flags(over)]) == 2
    said = capsys.readouterr().err
    assert "at most one process per GPU (torchrun --nproc-per-node 1 or fewer)" in said and "--nproc " not in said
    with pytest.raises(ConfigError, match=r"torchrun --nproc-per-node 1 or fewer") as err:
        tunelab.train(None, over)
    assert "--nproc " not in str(err.value) and "nproc=" not in str(err.value)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)  # no GPU: no count of processes would do
    with pytest.raises(ConfigError, match=r"has 0 CUDA devices; .*GPU \(here none: set model.device cpu\)") as err:
        tunelab.train(None, over)
    assert "torchrun" not in str(err.value)


def test_a_staged_config_on_several_processes_names_nproc_as_the_caller_gives_it(tiny_overrides, tmp_path, capsys):
    """tunelab.train(staged, nproc=2) and tunelab.plan(staged, nproc=2) were told to "Drop --nproc", a flag a Python
    caller never typed; the command line still is."""
    import yaml

    import tunelab
    from tunelab.cli import main

    config = {k: v for k, v in tiny_overrides.items() if k != "data.train"}
    config["stages"] = [{"data": {"train": tiny_overrides["data.train"]}}, {"train": {"lr": 1e-4}}]
    path = tmp_path / "staged.yaml"
    path.write_text(yaml.safe_dump(config))
    for call in (lambda: tunelab.train(path, nproc=2), lambda: tunelab.plan(path, nproc=2)):
        with pytest.raises(ConfigError) as caught:
            call()
        said = str(caught.value)
        assert "Drop the argument nproc, or train each stage's config on its own with nproc=N." in said, said
        assert "--nproc" not in said
    for command in ("train", "plan"):
        assert main([command, str(path), "--nproc", "2"]) == 2
        err = capsys.readouterr().err
        assert "Drop --nproc, or train each stage's config on its own with --nproc." in err and "nproc=" not in err
    assert not (tmp_path / "run").exists()
