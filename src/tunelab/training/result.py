"""The end of a finished run: its result saved into the run directory (`save_final`), then what is no longer needed
removed (`tidy_up`): the step checkpoints, unless kept, and the run this one replaced.

Weights are checked finite before anything is written; the result is written to a staging folder inside the run
directory and moved into place once complete, so a failure leaves no half-written result, and never over a file of
the user's (training/publish.py `refuse_foreign_saved`). Its files get the
permissions of any file the user creates (the umask's), as a merged model's do.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from tunelab.atomic import ordinary_permissions
from tunelab.config import RunConfig
from tunelab.config.flags import CLI, Spelling
from tunelab.errors import RunDirError
from tunelab.peft.save import record_base_revision, save_adapter
from tunelab.rundir import record_result
from tunelab.tasks import SFT
from tunelab.tasks.task import Task, save_tokenizer
from tunelab.training.build import BuiltModel, save_full_weights
from tunelab.training.checkpoint import STEP_PREFIX, delete_checkpoints, intact_checkpoint, no_space_message
from tunelab.training.guard import require_finite
from tunelab.training.outdir import OutputPlan, finish_replacement
from tunelab.training.publish import refuse_foreign_saved, saved_files
from tunelab.training.run_files import listed


def save_final(
    run_dir: Path,
    built: BuiltModel,
    tokenizer,
    cfg: RunConfig,
    task: Task = SFT,
    data=None,
    weights: dict | None = None,
    base_revision: str = "",
    spelling: Spelling = CLI,
    owned: dict | None = None,
) -> dict | None:
    """The run's result, as the task saves it (sft, the default: the adapter in PEFT's layout or the full weights, and
    the tokenizer; a head adds its labels), written to a staging folder and moved into the run directory once
    complete. `data` is the task's Datasets (what it learnt from the data, e.g. the labels; sft reads none).
    `weights`: the full weights gathered from FSDP2's shards (training/sharded_checkpoint.full_weights; task sft),
    the trainable ones alone for an adapter (QLoRA). `base_revision`: a hub base's commit (run.json's), written into
    an adapter's adapter_config.json as PEFT's `revision`. `spelling`: how a failed save names --resume.
    `owned`: the run's own result files there (RunInfo.result_files, training/publish.py owned_results): the save
    replaces no other file, RunDirError naming it, and returns the new record of them for run.json, which it also
    writes there before moving the files. None (a federation's round after round): neither."""
    params = weights.items() if weights is not None else built.model.named_parameters()
    written = (
        params if weights is not None or not cfg.method.is_adapter else ((n, p) for n, p in params if p.requires_grad)
    )
    require_finite(written, "the weights to save", f"{run_dir}")
    staging = run_dir / ".tmp-final"
    shutil.rmtree(staging, ignore_errors=True)
    moved: list[Path] = []
    try:
        staging.mkdir()
        if weights is not None:
            if cfg.method.is_adapter:
                save_adapter(built.model, staging, base_model=cfg.model.name, weights=weights)
            else:
                save_full_weights(built, staging, weights)
            save_tokenizer(tokenizer, staging, cfg, data)
        else:
            task.save(staging, built, tokenizer, cfg, data)
        record_base_revision(staging, base_revision)
        ordinary_permissions(staging)  # safetensors writes its files 0600: unreadable to the other users of a run
        if owned is not None:  # a file of the user's put there while the run trained, named as a result file
            names = sorted(item.name for item in staging.iterdir())
            refuse_foreign_saved(run_dir, owned, names, _what_is_left(run_dir, spelling))
            record = {n: r for n, r in owned.items() if n not in names and (run_dir / n).exists()}
            record = dict(sorted((record | saved_files(staging, names)).items()))  # a move keeps size and mtime
            record_result(run_dir, record)
        for item in staging.iterdir():
            os.replace(item, run_dir / item.name)
            moved.append(run_dir / item.name)
        staging.rmdir()
    except RunDirError:  # a file of the user's in the way: nothing moved
        shutil.rmtree(staging, ignore_errors=True)
        raise
    except KeyboardInterrupt:  # a second Ctrl-C (or SIGTERM): no part of the result is left to pass for the whole
        for path in (staging, *moved):
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink(missing_ok=True)
        raise
    except OSError as exc:
        for path in (staging, *moved):  # as above: no part of the result passes for the whole
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() and not path.is_symlink() else path.unlink(True)
        needed = sum(p.numel() * p.element_size() for _, p in built.model.named_parameters())
        why = (
            no_space_message("the result", run_dir, needed) if exc.errno == errno.ENOSPC else f"{exc.strerror or exc}."
        )
        raise RunDirError(
            f"{run_dir}: the result could not be saved: {why} {_what_is_left(run_dir, spelling)}"
        ) from None
    return record if owned is not None else None


def _what_is_left(run_dir: Path, spelling: Spelling) -> str:
    """After a failed save of the result: the checkpoint --resume would continue from, or that there is none."""
    checkpoint = intact_checkpoint(run_dir)[0]
    if checkpoint is None:
        return "No checkpoint was written (train.save_every: 0), so the run must be trained again once it can be saved."
    step = int(checkpoint.name.removeprefix(STEP_PREFIX))
    return f"The checkpoint of step {step} ({checkpoint}) is kept; continue from it with {spelling.rerun}."


# What tunelab compare, eval and report write into a run directory (eval/compare.py COMPARE_FILE, eval/evaluate.py
# EVAL_FILE, eval/report.py REPORT_FILE): figures of the weights they read.
RESULT_FILES = ("compare.json", "eval.json", "report.html")


def drop_stale_results(run_dir: Path, resumed: bool = True) -> None:
    """After a run that trained on: the comparison, evaluation and report of the weights before a --resume, or a
    report written while the run trained (`resumed` False), are removed, saying so; kept, `tunelab report` showed them
    as the run's result beside the new step count, and refused to replace them without --overwrite."""
    stale = [name for name in RESULT_FILES if (run_dir / name).is_file()]
    for name in stale:
        (run_dir / name).unlink()
    if stale:
        what = "they" if len(stale) > 1 else "it"
        why = (
            f"{what} described the weights before this resume"
            if resumed
            else f"written while the run trained, {what} described it unfinished"
        )
        print(
            f"removed {', '.join(stale)}: {why} (run tunelab compare, eval or report again for the new ones)",
            flush=True,
        )


def tidy_up(run_dir: Path, plan: OutputPlan, keep_checkpoints: bool, spelling: Spelling = CLI) -> None:
    """After a finished run: step checkpoints go (unless kept), the run this one replaced, and the results of the
    weights before (a --resume's) or of the unfinished run (a report made while it trained)."""
    drop_stale_results(run_dir, resumed=plan.resume)
    if not keep_checkpoints:
        deleted, left = delete_checkpoints(run_dir)
        if deleted:
            what, them = ("the step checkpoint", "it") if deleted == 1 else (f"the {deleted} step checkpoints", "them")
            print(
                f"deleted {what}: the run is finished and its result saved "
                f"(train.keep_checkpoints_after_finish: true keeps {them})",
                flush=True,
            )
        if left:
            print(
                f"kept {run_dir / 'checkpoints'}: it holds {listed(left)} that tunelab did not write there",
                flush=True,
            )
    message = finish_replacement(plan, spelling)
    if message:
        print(message, flush=True)
