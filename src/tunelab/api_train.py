"""The Python API's `train` (tunelab/api.py forwards it): the run's checks before training, the training (one
process, the stages of a staged run, or `nproc` ranks launched here), and what follows a run that finished well:
the comparison of eval.questions, then the push of train.push_to.

Under `nproc` the ranks are `tunelab train` processes, each its own api.train: rank 0 compares and pushes, and this
process, the launcher, builds its result from what rank 0 recorded in run.json (`from_ranks`) and neither compares
nor pushes again (`after_training`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from tunelab.api_args import checked
from tunelab.config import ResolvedConfig, RunConfig, stage_config
from tunelab.config.flags import Spelling
from tunelab.errors import ConfigError
from tunelab.eval.compare import compare_after_training
from tunelab.eval.questions import check_questions
from tunelab.export.push import PUSHED, check_push_to, push_result
from tunelab.models.load import load_tokenizer, resolve_source
from tunelab.rundir import read_info
from tunelab.training.distributed import from_environment
from tunelab.training.early_stop import stopped_early
from tunelab.training.launch import check_launch, train_on_ranks
from tunelab.training.progress import overflow_steps
from tunelab.training.recipe import TrainResult, config_path, refuse_resume_and_overwrite, resolve
from tunelab.training.recipe import train as _train
from tunelab.training.stages import train_stages
from tunelab.training.verdict_curve import Verdict


def from_ranks(run_dir: Path, spelling: Spelling) -> TrainResult:
    """The result of a run `nproc` ranks trained, read from the run.json rank 0 wrote (with the URL it pushed to)."""
    info = read_info(run_dir, spelling=spelling)
    verdict = info.extra.get("verdict")
    pushed = info.extra.get(PUSHED)
    return TrainResult(
        run_dir,
        info.steps,
        info.final_loss,
        info.eval_loss,
        info.skipped_steps,
        info.extra.get("auto", {}),
        Verdict(**verdict) if verdict else None,
        overflow_steps=overflow_steps(info),
        early_stop=stopped_early(info),
        pushed=pushed.get("url") if isinstance(pushed, dict) else None,
    )


def after_training(config: RunConfig, result: TrainResult, launched: bool) -> tuple[bool, bool]:
    """What this process does after training: (compare eval.questions, push train.push_to). Only a run that finished
    uninterrupted, and only where it trained: rank 0 of torchrun's ranks or one process, not the launcher of `nproc`
    ranks (`launched`), whose rank 0 has done both."""
    here = from_environment().main and not launched and not result.interrupted
    return here and bool(config.eval.questions), here and bool(config.train.push_to)


@checked
def train(
    config: str | Path | RunConfig | ResolvedConfig | None = None,
    overrides: dict[str, Any] | None = None,
    *,
    resume: bool = False,
    check: bool = True,
    overwrite_non_run: bool = False,
    nproc: int | None = None,
) -> TrainResult:
    """Fine-tune as the config says and write the run directory; `overrides` are {'train.lr': 1e-4, ...}. `check`
    runs the data checks of `tunelab check` first; `overwrite_non_run` lets `overwrite` replace a folder that is not a
    tunelab run. When eval.questions is set, the base and the tuned model then answer them (compare.json, scores
    printed); a train.push_to is pushed last (by rank 0; PushFailed, the run kept). `nproc`: train with that many
    processes on this host (as `tunelab train --nproc`; a script started by torchrun trains on its ranks without it)."""
    world = from_environment().world
    if nproc is not None and world > 1 and nproc != world:  # as the CLI: the processes are torchrun's
        raise ConfigError(f"argument 'nproc' is {nproc}, but torchrun started {world} processes; drop nproc.")
    resolved = resolve(config, overrides)
    refuse_resume_and_overwrite(resolved, resume)
    check_push_to(resolved.config)  # a token for train.push_to: said now, not after the run
    if resolved.config.eval.questions:  # asked after training: a file that cannot be read must not wait for that
        source = resolve_source(resolved.config.model.name, resolved.config.model.revision)
        stages = resolved.config.stages  # a staged run's questions are asked of its last stage, with its settings
        asked = stage_config(resolved, len(stages) - 1, "").config if stages else resolved.config
        tokenizer = load_tokenizer(source, resolved.config.model.trust_remote_code, resolved.spelling)
        check_questions(asked, source, tokenizer, resolved.spelling)
    launched = nproc is not None and world == 1  # this process starts the ranks
    if launched:
        check_launch(resolved.config, nproc, resolved.spelling)  # stages and head tasks train in one process
    if resolved.config.stages:
        result = train_stages(
            resolved, config_path(resolved), resume=resume, check=check, overwrite_non_run=overwrite_non_run
        )
    elif launched:
        train_on_ranks(
            resolved.config,
            nproc,
            resume=resume,
            check=check,
            overwrite_non_run=overwrite_non_run,
            config_file=config_path(resolved),
            spelling=resolved.spelling,
        )
        result = from_ranks(Path(resolved.config.output_dir), resolved.spelling)
    else:
        result = _train(resolved, resume=resume, check=check, overwrite_non_run=overwrite_non_run)
    compare, push = after_training(resolved.config, result, launched)
    if compare:
        compare_after_training(result.run_dir, resolved.config)
    if push:
        result = dataclasses.replace(result, pushed=push_result(result.run_dir, resolved.config, resolved.spelling))
    return result
