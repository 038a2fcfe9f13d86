"""`tunelab train --nproc N`: start N ranks of the same command on this host through torch's elastic launcher.

This is `torchrun --standalone --nproc-per-node N -m tunelab.cli train ...` from inside tunelab: the launcher
(`torch.distributed.launcher.api.elastic_launch`) runs a local rendezvous on a free port, starts the workers with
RANK, WORLD_SIZE, LOCAL_RANK and MASTER_ADDR/PORT set, watches them, and stops the others when one fails. Each
worker is `python -m tunelab.cli train ...` without --nproc, so it is the same code path as under torchrun.

What can be checked before any process starts is checked here (`check_launch`), so bad input gets one message and
exit code 2 rather than N copies of it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.distributed.elastic.multiprocessing.api import DefaultLogsSpecs, SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from tunelab.config import RunConfig, dump_yaml
from tunelab.config.flags import CLI, PYTHON, Spelling
from tunelab.errors import ConfigError, TunelabError, counted
from tunelab.training.distributed import backend, pick_sharding
from tunelab.training.outdir import plan_output_dir
from tunelab.training.prepare import protected_paths


def check_launch(cfg: RunConfig, nproc: int, spelling: Spelling = CLI) -> None:
    """ConfigError when `nproc` ranks cannot train this config on this host; `spelling`: how it names nproc (the
    CLI's --nproc, or train's argument)."""
    if nproc < 1:
        raise ConfigError(f"{spelling.option('nproc')} is {nproc}; give the number of processes to start (1 or more).")
    if backend(cfg.model.device) == "nccl" and nproc > torch.cuda.device_count():
        devices = torch.cuda.device_count()
        fewer = f"--nproc {devices}" if spelling.flags else f"nproc={devices}"
        raise ConfigError(
            f"{spelling.option('nproc')} is {nproc}, but this host has {counted(devices, 'CUDA device')}; each rank "
            f"needs its own GPU. Use {fewer} or fewer (or model.device cpu)."
        )
    if nproc > 1:
        pick_sharding(cfg, spelling)


@contextlib.contextmanager
def threads_per_rank(nproc: int) -> Iterator[int | None]:
    """While the ranks start: OMP_NUM_THREADS = this process's cores / nproc (at least 1) in the environment they
    inherit, unless the user set it (then None). Each rank's torch would otherwise take every core, and N ranks on
    one host would run N times as many threads as cores, waiting on each other (torchrun sets 1 for the same
    reason). The environment is given back afterwards: the Python API's caller keeps its own."""
    if nproc < 2 or "OMP_NUM_THREADS" in os.environ:
        yield None
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = max(1, cores // nproc)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        yield threads
    finally:
        os.environ.pop("OMP_NUM_THREADS", None)


def launch(worker_args: list[str], nproc: int) -> int:
    """Run `python -m tunelab.cli *worker_args` as `nproc` ranks; the exit code of the first failed rank (its
    error already printed by that rank), or 0."""
    # The agent logs each failure with a banner of its own; the rank has printed the error, so keep the agent quiet.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    try:
        # The agent keeps each rank's error file in a log folder, a new torchelastic_* one under the system's
        # temporary directory unless told, and never removes it: here it is ours, removed when the ranks are done.
        with tempfile.TemporaryDirectory(prefix="tunelab-ranks-") as logs, threads_per_rank(nproc) as threads:
            config = LaunchConfig(
                min_nodes=1,
                max_nodes=1,
                nproc_per_node=nproc,
                logs_specs=DefaultLogsSpecs(log_dir=logs),
                run_id=f"tunelab-{uuid.uuid4().hex[:12]}",
                rdzv_backend="c10d",
                rdzv_endpoint="localhost:0",  # a free port, as torchrun --standalone picks
                max_restarts=0,  # a failed rank fails the run: its error is the user's to fix
            )
            if threads is not None:
                print(
                    f"{nproc} ranks, {counted(threads, 'CPU thread')} each (OMP_NUM_THREADS; set it to choose)",
                    flush=True,
                )
            elastic_launch(config, sys.executable)("-m", "tunelab.cli", *worker_args)
    except ChildFailedError as exc:
        first = min(exc.failures.values(), key=lambda failure: failure.timestamp)
        return first.exitcode if first.exitcode > 0 else 1
    except SignalException as exc:  # Ctrl-C or SIGTERM: the agent has stopped the ranks; 130 or 143, as one process
        return 128 + int(exc.sigval)
    return 0


class RanksFailed(TunelabError):
    """A rank of `train_on_ranks` failed; it printed its error, and its exit code is this error's."""

    def __init__(self, exit_code: int):
        super().__init__(f"training on several processes stopped (exit code {exit_code}); the error is printed above.")
        self.exit_code = exit_code


def train_on_ranks(
    cfg: RunConfig,
    nproc: int,
    *,
    resume: bool,
    check: bool,
    overwrite_non_run: bool,
    config_file: Path | None = None,
    spelling: Spelling = PYTHON,
) -> None:
    """The Python API's `train(..., nproc=N)`: the resolved config, saved to a temporary YAML file, trained by
    `nproc` ranks of `tunelab train` on this host. RanksFailed when one fails. The ranks read the copy, so the
    user's `config_file` is kept out of output_dir here (RunDirError), as each rank keeps its data files out."""
    check_launch(cfg, nproc, spelling)
    plan_output_dir(
        cfg.output_dir,
        overwrite=cfg.overwrite,
        resume=resume,
        protected=protected_paths(cfg, config_file),
        overwrite_non_run=overwrite_non_run,
        spelling=spelling,
    )
    # --resume continues the run and wins over a config's overwrite (the CLI refuses the two flags together)
    flags = ["--resume"] if resume else ["--overwrite"] * cfg.overwrite
    flags += ["--no-check"] * (not check)
    flags += ["--overwrite-non-run"] * overwrite_non_run
    with tempfile.TemporaryDirectory(prefix="tunelab-launch-") as folder:
        config = Path(folder) / "config.yaml"
        config.write_text(dump_yaml(cfg))
        code = launch(["train", str(config), *flags], nproc)
    if code:
        raise RanksFailed(code)
