"""Staged runs: `stages:` trains partial configs one after another in one run directory, each from the result before.

    output_dir/
      config.yaml, run.json   the whole config, its stages as they train (`as_trained`); run.json describes the final
                              result (and, in extra, every stage and the forgetting matrix), so compare, chat, eval,
                              report, merge and export open output_dir
      adapter or weights      the last stage's result, copied (hard links where the file system allows), with its
                              data_report.json (training/publish.py: over no file of the user's)
      metrics.jsonl, loss.png every stage's records in turn, each with its "stage" and steps counted across stages
      tensorboard/, mlflow.db, the trackers of train.report_to: one set for the whole run, steps counted across stages
      wandb/, trackers.json   as in metrics.jsonl (each stage logs here, not into its own directory: training/tracking.py)
      stage-1/, stage-2/ ...  each a complete run directory (its own config.yaml, run.json, metrics, checkpoints), but
                              for the trackers
      stage-K/merged/         stage K's adapter folded into its base, when stage K+1 says continue: merge

Stage k's config is the run's config without `stages`, overlaid with the stage's entry (`config.stage_config`), and
starts from stage k-1's result:
- `continue: adapter` (default): the same base, and stage k-1's adapter as the adapter to train on (`model.adapter`,
  so r, alpha, target_modules and DoRA must stay as they were);
- `continue: merge`: stage k-1's adapter folded into its base (`peft.lora.merge_lora`, over the base as it was
  trained: QLoRA's NF4 dequantized) is stage k's base, and stage k starts a fresh adapter (or trains full weights);
- after a full or layer-wise stage, its weights are the next stage's base, whatever `continue` says;
- after a classify or reward stage, only a stage of the same task, continuing its adapter and its head (the
  task's `prepare` loads the head, `tasks.head.continue_head`), with the same labels (`stage_plan.refuse_other_labels`).
A stage may set anything but output_dir (data, format, method settings, train settings, the task); a later stage
whose model.name differs from stage 1's is refused: its model is the previous stage's result.

Nothing is written before every stage's config and data are loaded and checked. After each stage, its model is
evaluated on the eval data of every earlier stage (`eval_loss/stage-j` beside its own, recipe's `extra_eval`): row k
of the forgetting matrix, in run.json and in `tunelab report`. `--resume` skips finished stages (their configs must
be unchanged, but for a longer train.max_steps or train.epochs, which is said and applies to the stages still to
train), resumes the stage that stopped from its last checkpoint, or starts it again when it had none.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
from pathlib import Path

import torch

from tunelab.atomic import scratch_folder, write_text
from tunelab.config import ResolvedConfig, describe, dump_yaml, stage_name
from tunelab.config.load import STAGE_PREFIX
from tunelab.config.render import as_trained
from tunelab.data.entries import source_names
from tunelab.errors import (
    ConfigError,
    DataError,
    Interrupted,
    TrainingStopped,
    TunelabError,
    counted,
)
from tunelab.models.base_record import base_record, run_base
from tunelab.models.load import ModelSource, load_tokenizer
from tunelab.models.quiet import quiet_progress
from tunelab.peft.lora import merge_lora
from tunelab.peft.save import load_adapter
from tunelab.run_info import RunInfo
from tunelab.rundir import is_run_dir, read_info, write_config, write_info
from tunelab.tasks.grpo import RewardError
from tunelab.training.build import trained_base
from tunelab.training.checkpoint import intact_checkpoint
from tunelab.training.forgetting import forgetting, format_forgetting, stage_record
from tunelab.training.interrupt import graceful_interrupt
from tunelab.training.metrics import plot_losses
from tunelab.training.outdir import failure_noted, finish_replacement, hold_lock, plan_output_dir, start_run_dir
from tunelab.training.prepare import protected_paths
from tunelab.training.progress import overflow_steps, record_stopped, whole_run
from tunelab.training.publish import publish, published_names, refuse_foreign_results
from tunelab.training.recipe import TrainResult, train
from tunelab.training.result import drop_stale_results
from tunelab.training.resume import CONTENT, LENGTH, DataChanged, config_changes
from tunelab.training.stage_plan import MERGED, eval_rows, plan_stages
from tunelab.training.stage_resume import (
    check_finished_data,
    check_staged_resume,
    follow_move,
    refuse_nothing_to_train,
    saved_config,
    stage_dir,
    stage_named,
)
from tunelab.training.tracking import TrackTo, end_held, end_running_tracker_runs

METRICS = "metrics.jsonl"
STARTS_FROM = ("model", "adapter the run starts from")  # protected_paths' names for model.name and model.adapter


@torch.no_grad()
def merge_stage(run_dir: Path, out: Path) -> None:
    """Fold the adapter of the finished stage `run_dir` into its base (as trained: QLoRA's base quantized again, then
    dequantized by the fold; untrained rows repaired as in training) and save it as a Hugging Face directory."""
    info = read_info(run_dir)
    dtype = getattr(torch, info.dtype) if info.dtype else torch.float32
    model = trained_base(info, dtype, torch.device("cpu"), info.nf4_again)
    merge_lora(load_adapter(model, run_dir), dtype)
    tokenizer = load_tokenizer(ModelSource(str(run_dir), str(run_dir)), info.trust_remote_code)
    # the run's tokenizer carries the template it trained with and its system prompt (tasks.task.save_tokenizer); the
    # next stage's base keeps its base's own, so that the next stage resolves data.template as the first one did
    tokenizer.chat_template = load_tokenizer(run_base(info), info.trust_remote_code).chat_template
    with scratch_folder(out) as scratch, quiet_progress():
        model.save_pretrained(scratch, safe_serialization=True)
        tokenizer.save_pretrained(scratch)


def _metrics(run_dir: Path, count: int) -> None:
    """Every stage's metrics.jsonl in turn, each record with its stage and its step counted across the stages."""
    lines, offset = [], 0
    for k in range(1, count + 1):
        path = stage_dir(run_dir, k) / METRICS
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
        for record in records:
            lines.append(json.dumps(record | {"stage": k, "step": record.get("step", 0) + offset}))
        offset += read_info(stage_dir(run_dir, k)).steps
    write_text(run_dir / METRICS, "".join(line + "\n" for line in lines))


def _stage_verdict(info: RunInfo, k: int, name: str, offset: int) -> None:
    """The run's verdict is its last stage's, whose step numbers (and the train.max_steps it advises) are the stage's
    own, while the run's metrics.jsonl, report and run.json count steps across the stages: the text says which stage
    and how its steps map to the run's, and the numbers carry the stage and the offset."""
    verdict = info.extra.get("verdict")
    if not isinstance(verdict, dict) or not isinstance(verdict.get("text"), str):
        return
    numbers = verdict.get("numbers") if isinstance(verdict.get("numbers"), dict) else {}
    lead = (
        f"stage {k} ({name}), its steps counted from the stage's start (its step N is step N + {offset} of the run, "
        "as metrics.jsonl counts; train.max_steps is the stage's): "
    )
    info.extra["verdict"] = verdict | {
        "text": lead + verdict["text"],
        "numbers": numbers | {"stage": k, "step_offset": offset},
    }


def train_stages(
    resolved: ResolvedConfig,
    config_file: Path | None = None,
    *,
    resume: bool = False,
    check: bool = True,
    overwrite_non_run: bool = False,
) -> TrainResult:
    """Train every stage of `resolved` into its output_dir (module docstring); returns the last stage's result with
    the run directory's path."""
    cfg = resolved.config
    protected = protected_paths(cfg, config_file)
    run_dir = Path(cfg.output_dir)
    plans = plan_stages(resolved, run_dir.expanduser())
    inside = run_dir.expanduser().resolve()
    for k, plan in enumerate(plans, 1):  # every stage's files too, but not the earlier stages' results it starts from
        for what, paths in protected_paths(plan.config, None).items():
            chained = k > 1 and what in STARTS_FROM  # plan_stages points these at stage-(k-1)/ inside the run
            mine = [p for p in paths if not (chained and Path(p).expanduser().resolve().is_relative_to(inside))]
            protected[what] = protected.get(what, []) + mine
    plan_dir = plan_output_dir(
        cfg.output_dir,
        overwrite=cfg.overwrite,
        resume=resume,
        protected=protected,
        overwrite_non_run=overwrite_non_run,
        spelling=resolved.spelling,
    )
    run_dir = plan_dir.run_dir
    notes = []
    if resume:
        hold_lock(run_dir)  # a new run takes it in start_run_dir
        refuse_foreign_results(run_dir)  # a file of the user's that the result would replace: before anything trains
        notes = check_staged_resume(run_dir, resolved)  # moved data: each stage compares its rows (`_run_stage`)
        refuse_nothing_to_train(run_dir, len(plans), resolved.spelling)
        follow_move(run_dir, plans)
    print("tunelab train — a staged run; the resolved config (value, then where it came from):")
    print(describe(resolved), flush=True)
    for note in notes:
        print(note, flush=True)
    names = [stage_name(cfg.stages[i], i + 1) for i in range(len(plans))]
    evals = eval_rows(plans, names, run_dir)  # every stage's data loaded and checked before anything is written
    held: dict = {}  # the tracker sinks the stages share, by name (training/tracking.py)
    # from the move of a run --overwrite replaces: however the run stops, the note on where that run waits
    with failure_noted(plan_dir):
        if not resume:
            start_run_dir(plan_dir)
        # resumed: with the changes allowed (eval.questions, a longer length, a stage's name), which the export's
        # self-check, the report and a later --resume read, as a single run's resume records them
        write_config(run_dir, dump_yaml(as_trained(resolved)))
        first = plans[0].config
        write_info(
            run_dir,
            RunInfo(
                **base_record(first.model.name, first.model.revision),
                method=first.method.name,
                extra={"stages": names},
            ),
        )
        if resume:  # the stages' progress so far, as the stop recorded it: kept while resuming, even if killed outright
            record_stopped(run_dir, len(plans))
        try:
            result = _stages(run_dir, cfg, plans, names, evals, held, resume=resume, check=check)
            last = stage_dir(run_dir, len(plans))  # a file of the user's put where it goes while the stages trained
            refuse_foreign_results(run_dir, last, resolved.spelling, published_names(last))
        except BaseException as error:
            end_held(held, error)
            end_running_tracker_runs(run_dir, error)
            with contextlib.suppress(TunelabError, OSError):  # must not hide the error that stopped the run
                record_stopped(run_dir, len(plans), error)
            raise
    # Ctrl-C here waits for the run's result (its run.json, the last stage's files), as a stage's own save does
    with graceful_interrupt("the last stage is saved: writing the run's result first") as stop:
        matrix, measures = forgetting(run_dir, len(plans))
        publish(run_dir, last, resolved.spelling)
        _metrics(run_dir, len(plans))
        plot_losses(run_dir, [plan.config.task for plan in plans])
        info = read_info(stage_dir(run_dir, len(plans)))
        stages = [
            {
                "name": names[i],
                "dir": f"{STAGE_PREFIX}{i + 1}",
                "continue": cfg.stages[i].get("continue", "adapter") if i else None,
                "data": source_names(plans[i].config.data.train),  # by name, as reports say them: no paths
            }
            | stage_record(read_info(stage_dir(run_dir, i + 1)))
            for i in range(len(plans))
        ]
        info.extra |= {"stages": stages, "forgetting": {"stages": names, "matrix": matrix, "measures": measures}}
        each = [read_info(stage_dir(run_dir, i + 1)) for i in range(len(plans))]
        whole_run(info, each)
        _stage_verdict(info, len(plans), names[-1], sum(i.steps for i in each[:-1]))
        write_info(run_dir, info)
        print(format_forgetting(names, matrix, measures, [plan.config.task for plan in plans]), flush=True)
        print(
            f"saved to {run_dir}: the last stage's result ({counted(info.steps, 'step')} in {len(plans)} stages, {info.tokens:,} tokens, "
            f"{info.elapsed_s:.0f} s)",
            flush=True,
        )
        drop_stale_results(run_dir, resumed=resume)
        message = finish_replacement(plan_dir, resolved.spelling)
        if message:
            print(message, flush=True)
    if stop.requested:
        print(f"interrupt: the result is saved in {run_dir}; nothing after training runs.", file=sys.stderr, flush=True)
    return dataclasses.replace(
        result,
        run_dir=run_dir,
        steps=info.steps,
        skipped_steps=info.skipped_steps,
        overflow_steps=overflow_steps(info),
        **({"interrupted": True, "stop_signal": stop.signum} if stop.requested else {}),
    )


def _stages(
    run_dir: Path,
    cfg,
    plans: list[ResolvedConfig],
    names: list[str],
    evals: list,
    held: dict,
    *,
    resume: bool,
    check: bool,
):
    result = None
    for k, plan in enumerate(plans, 1):
        here = stage_dir(run_dir, k)
        if k > 1 and cfg.stages[k - 1].get("continue") == "merge" and plans[k - 2].config.method.is_adapter:
            merged = stage_dir(run_dir, k - 1) / MERGED
            if not (merged / "config.json").is_file():
                print(f"stage {k}: folding stage {k - 1}'s adapter into its base ({merged})", flush=True)
                merge_stage(stage_dir(run_dir, k - 1), merged)
        # the forgetting matrix's row: earlier stages' eval rows of the same task (a dpo stage cannot score sft rows)
        extra = {
            f"{STAGE_PREFIX}{j}": evals[j - 1]
            for j in range(1, k)
            if evals[j - 1] and plans[j - 1].config.task == plan.config.task
        }
        print(f"\n===== stage {k} of {len(plans)}: {names[k - 1]} ({here}) =====", flush=True)
        # the trackers log into the run directory, the stage's steps after the earlier stages' (as _metrics counts)
        offset = sum(read_info(stage_dir(run_dir, j)).steps for j in range(1, k))
        track_to = TrackTo(run_dir, offset, continues=k > 1 or resume, last=k == len(plans), held=held)
        if k > 1:
            _same_commit(plan, stage_dir(run_dir, 1))
        where = stage_named(k, names)
        try:
            result = _run_stage(plan, here, extra, track_to, resume=resume, check=check)
        except DataChanged as error:  # the stage's rows differ from those it recorded: which stage, by its name
            raise DataChanged(f"{where}: {error}") from None
        except Interrupted as stop:  # its step and total are the stage's own: said so, with the run's step
            at = f"{where}, its {stop.at} (step {offset + stop.step} of the run, as metrics.jsonl counts)"
            raise Interrupted(
                f"{where}: {stop}", offset + stop.step, stop.checkpoint, stop.exit_code - 128, at=at
            ) from None
        except TrainingStopped as stop:  # the non-finite guard's steps are the stage's own too
            raise TrainingStopped(
                f"{where}, its steps counted from the stage's start (its step N is step N + {offset} of the run): {stop}"
            ) from None
        except (
            DataError,
            RewardError,
        ) as error:  # a reward function failing in a stage's step: which, and what is kept
            kept = ""
            if k > 1:
                done = "Stage 1 is" if k == 2 else f"Stages 1 to {k - 1} are"
                kept = f" {done} saved: {plan.spelling.resume} with the same config continues at stage {k}, not from the start."
            raise type(error)(f"{where}: {error}{kept}") from None
        record_stopped(run_dir, len(plans))  # the stage's result counted: a run killed before the next checkpoint
        if result.interrupted and k < len(plans):  # Ctrl-C while the stage saved its result: the next one waits
            raise Interrupted(
                f"interrupted after stage {k} of {len(plans)} was saved; continue with {plan.spelling.rerun}, which "
                "starts the next stage.",
                step=offset + result.steps,
                checkpoint=None,
                signum=result.stop_signal,
                at=f"{where}, which was saved (step {offset + result.steps} of the run)",
            )
    return result


def _same_commit(plan: ResolvedConfig, first: Path) -> None:
    """A later stage that trains over the run's hub base (continue: adapter) loads it at the commit stage 1 recorded,
    not at what the branch holds by then: the adapter it trains on was trained over those weights."""
    info = read_info(first, require_finished=False)
    model = plan.config.model
    if info.base_source == "hub" and info.base_revision and model.name == info.base_model:
        model.revision = info.base_revision
        plan.origins["model.revision"] = "stage 1's base commit"


def _run_stage(
    plan: ResolvedConfig, here: Path, extra: dict, track_to: TrackTo, *, resume: bool, check: bool
) -> TrainResult:
    """Train one stage: skipped when finished (its config unchanged), resumed from its checkpoint, or (re)started."""
    if is_run_dir(here):
        info = read_info(here, require_finished=False)
        if info.finished:
            digested = {name for name in CONTENT if getattr(info, CONTENT[name], "")}
            refused, allowed = config_changes(saved_config(here), plan.config, by_content=digested)
            if refused:
                raise ConfigError(
                    f"{here}: the stage has finished with another config ({'; '.join(refused)}); a resumed staged run "
                    f"keeps its finished stages. Put the options back, or start the run again with {plan.spelling.overwrite}."
                )
            check_finished_data(plan, here, info)
            longer = [line for line in allowed if line.split(":", 1)[0] in LENGTH]
            kept = f" (kept at its {info.steps} steps: {'; '.join(longer)} applies to the stages still to train)"
            print(f"{here}: finished; skipped" + (kept if longer else ""), flush=True)
            return TrainResult(
                here,
                info.steps,
                info.final_loss,
                info.eval_loss,
                info.skipped_steps,
                overflow_steps=overflow_steps(info),
            )
        checkpoint, damaged = intact_checkpoint(here) if resume else (None, [])
        if checkpoint is not None:
            return train(plan, resume=True, check=check, extra_eval=extra, track_to=track_to)
        why = (
            f"none of its checkpoints is intact ({'; '.join(damaged)})"
            if damaged
            else "stopped before its first checkpoint"
        )
        print(f"{here}: {why}; starting the stage again", flush=True)
        plan = dataclasses.replace(plan, config=dataclasses.replace(plan.config, overwrite=True))
    return train(plan, check=check, extra_eval=extra, track_to=track_to)
