"""The training recipe: config -> model, data, optimizer -> the loop -> a run directory.

In order: the config is resolved and output_dir checked (nothing written); with --resume the config is compared
with the run's and an intact checkpoint chosen (training/resume.py); the data is loaded and the cheap checks run
(`tunelab check` has them all); the model is built and its untrained token rows repaired. Only then is the run
directory made (an existing run moves aside until this one finishes, training/outdir.py). The loop
(training/loop.py) is plain: one `train_step` per optimizer step; the non-finite guard, eval, checkpoint and logging
are one-line calls every N steps. Resuming restores weights, optimizer, RNG and the position inside the epoch, so a
resumed run takes the same steps as an uninterrupted one.

The options left at `auto` are chosen in two stages (training/auto.py): those that depend on the data once it is
loaded (the data checks read the micro-batch), the learning rate once the model is (it depends on its width). They
are printed with their reasons and recorded in run.json; a resumed run keeps the values it started with. At the
end (training/finish.py), keep_best puts back the weights of the lowest eval loss (training/best.py), the result is saved and the step
checkpoints removed (training/result.py), and the verdict reads the loss curves (training/verdict.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import shlex
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tunelab.atomic import write_json
from tunelab.config import AUTO, ResolvedConfig, RunConfig, describe, dump_yaml, load_config, to_dict
from tunelab.config.flags import CLI, Spelling
from tunelab.config.load import locate
from tunelab.config.overrides import check_overrides, from_python, is_override
from tunelab.data.formats import eval_said_as, trained_system
from tunelab.data.loader import epoch_rows
from tunelab.errors import (
    CheckFailed,
    ConfigError,
    DataError,
    WriteFailed,
    article,
)
from tunelab.kernels.lora import accumulate_into_grads
from tunelab.models.base_record import base_record, recorded_commit, run_base
from tunelab.models.untrained import UntrainedReport
from tunelab.run_info import RunInfo
from tunelab.rundir import read_info, resume_warning, write_config, write_info
from tunelab.tasks import get_task
from tunelab.tasks.task import Task
from tunelab.training.auto import AutoPlan, model_shape, plan_from_data
from tunelab.training.best import BestWeights, off_under_fsdp2
from tunelab.training.build import BuiltModel
from tunelab.training.checkpoint import remove_cut_short
from tunelab.training.distributed import Ranks, backend, nf4_bytes_held, parallelize, pick_sharding, session
from tunelab.training.early_stop import EarlyStop, check_not_stopped_early, require_eval_split
from tunelab.training.evals import eval_sets
from tunelab.training.finish import TrainResult, finish
from tunelab.training.graphs import CapturedLoss, bucket_width, use_graphs
from tunelab.training.initial_factors import factors_to_keep, kept_factors, write_factors
from tunelab.training.loop import Run, evaluate_at, loop
from tunelab.training.loss_scale import LossScale, uses_loss_scale
from tunelab.training.metrics import MetricsLog
from tunelab.training.neftune import add_embedding_noise, noise_width
from tunelab.training.optim import build_optimizer, rate_groups, rate_lines
from tunelab.training.outdir import OutputPlan, failure_noted, hold_lock, plan_output_dir, start_run_dir
from tunelab.training.plan import MemoryPlan, longest_prompt, longest_row, plan_memory
from tunelab.training.prepare import Inputs, load_inputs, load_model, protected_paths
from tunelab.training.progress import end_record, record_progress, record_stopped
from tunelab.training.publish import owned_results, refuse_foreign_saved
from tunelab.training.resume import (
    CONTENT,
    WARMUP,
    check_more_steps,
    check_resume_config,
    check_same_data,
    data_digest,
    file_digests,
    gguf_split_facts,
    kept_auto,
    kept_warmup,
    load_position,
    resume_checkpoint,
    split_changed,
)
from tunelab.training.schedule import lr_factor
from tunelab.training.tracking import TrackTo, open_trackers


def refuse_resume_and_overwrite(resolved: ResolvedConfig, resume: bool) -> None:
    """ConfigError for resume with an overwrite given beside it (the flag, or `overwrite` among the API's overrides),
    as `tunelab train --resume --overwrite` is refused: one continues output_dir, the other replaces it. An
    `overwrite: true` of the YAML file is left to resume, as the CLI leaves it."""
    origin = resolved.origins.get("overwrite", "")
    if resume and resolved.config.overwrite and is_override(origin):
        # the CLI's flags by their flags, a Python caller's keyword and override by what it wrote
        given, overwrite = ("resume=True", origin) if from_python(origin) else ("--resume", "--overwrite")
        raise ConfigError(
            f"{given} continues the run in output_dir and {overwrite} replaces it; give one of them (to start the "
            "run again, overwrite alone)."
        )


def resolve(
    config: str | Path | RunConfig | ResolvedConfig | None, overrides: dict[str, Any] | None = None
) -> ResolvedConfig:
    """Accept a YAML path, a RunConfig, or an already resolved config, and apply overrides."""
    if isinstance(config, ResolvedConfig):
        if overrides:
            raise ConfigError(
                "a ResolvedConfig takes no overrides: it is already resolved. Give them to load_config(path, "
                "overrides) that makes it, or pass the YAML path (or a RunConfig) with the overrides."
            )
        return config
    if config is not None and not isinstance(config, str | os.PathLike | RunConfig):
        raise ConfigError(
            f"the config must be a YAML file's path, a RunConfig, a ResolvedConfig, or None with every option in "
            f"overrides; got {article(type(config).__name__)}. Options go in overrides, with dotted names: "
            "{'train.lr': 1e-4}."
        )
    if isinstance(config, RunConfig):
        flat = {}
        for section, value in dataclasses.asdict(config).items():
            if (
                isinstance(value, dict)
                and hasattr(config, section)
                and dataclasses.is_dataclass(getattr(config, section))
            ):
                flat.update({f"{section}.{k}": v for k, v in value.items()})
            else:
                flat[section] = value
        resolved = load_config(None, flat | check_overrides(overrides))
        resolved.origins = {k: ("python" if v != "default" else v) for k, v in resolved.origins.items()}
        return resolved
    return load_config(config, overrides)


def config_path(config: Any) -> Path | None:
    """The YAML file a config was read from: the path itself, or the one a resolved config remembers."""
    if isinstance(config, ResolvedConfig):
        return config.path
    return Path(config) if isinstance(config, (str, Path)) else None


def cheap_check_gate(cfg: RunConfig, inputs, task: Task, spelling: Spelling = CLI) -> None:
    """The task's data checks (those of `tunelab check` for sft), before the model is loaded; CheckFailed when one
    fails, naming the way past it as `spelling` does (--no-check, or check=False)."""
    items = task.checks(cfg, inputs) if task.checks else []
    for item in items:
        if item.status != "pass":
            print(item.line(), flush=True)
    failed = [item for item in items if item.status == "fail"]
    if failed:
        raise CheckFailed(
            "the checks before training failed: "
            + "; ".join(f"{item.name}: {item.summary}" for item in failed)
            + (
                ". Run `tunelab check` with the same config and flags for the details, or pass --no-check to train "
                "anyway."
                if spelling.flags
                else ". Call tunelab.check() with the same config and overrides for the details, or pass check=False "
                "to train anyway."
            )
        )


def train(
    config: str | Path | RunConfig | ResolvedConfig | None = None,
    overrides: dict[str, Any] | None = None,
    *,
    resume: bool = False,
    check: bool = True,
    overwrite_non_run: bool = False,
    extra_eval: dict[str, list] | None = None,
    track_to: TrackTo | None = None,
) -> TrainResult:
    """Fine-tune as the config says and write the run directory. `overrides` are {'train.lr': 1e-4, ...}.

    check: run the data checks of `tunelab check` first (CheckFailed when one fails). overwrite_non_run: with
    overwrite, replace output_dir even when it is not a run directory tunelab wrote. extra_eval: more eval data,
    {name: rendered rows}, evaluated beside the run's own (`eval_loss/<name>`; a staged run's earlier stages).
    track_to: where train.report_to's trackers write (default: the run directory; a staged run's stage: its place in
    the staged run's trackers, training/tracking.py).

    Under torchrun (WORLD_SIZE > 1) every rank calls this; rank 0 alone prints and writes (training/distributed.py)."""
    resolved = resolve(config, overrides)
    f = resolved.config.federated
    if f.enabled:
        what = "federated.clients" if f.clients else "federated.split_file"
        path = config_path(config)
        named = shlex.quote(str(path)) if path is not None else "CONFIG"
        raise ConfigError(
            f"option '{what}' is set: this config is a federation, whose clients train on their own data. Run it "
            f"with `tunelab federate {named}` (tunelab.federate); tunelab train trains one model on data.train."
        )
    with session(resolved.config) as ranks:
        return _train(resolved, config_path(config), ranks, resume, check, overwrite_non_run, extra_eval, track_to)


def _train(
    resolved: ResolvedConfig,
    path: Path | None,
    ranks: Ranks,
    resume: bool,
    check: bool,
    overwrite_non_run: bool,
    extra_eval: dict[str, list] | None,
    track_to: TrackTo | None,
) -> TrainResult:
    cfg = resolved.config
    sharding = pick_sharding(cfg, resolved.spelling) if ranks.world > 1 else None
    plan = plan_output_dir(
        cfg.output_dir,
        overwrite=cfg.overwrite,
        resume=resume,
        protected=protected_paths(cfg, path),
        overwrite_non_run=overwrite_non_run,
        stage_of=track_to.run_dir if track_to is not None else None,  # a staged run's stage: its own stage-K folder
        spelling=resolved.spelling,
    )
    # wherever it stops (loading, training, saving): the lock let go, for a resume or a replacement by the next
    # command, and where a run this one replaces was moved aside and how to put it back
    with failure_noted(plan, ranks.main):
        return _train_planned(plan, resolved, ranks, sharding, resume, check, extra_eval, track_to)


def _train_planned(
    plan: OutputPlan,
    resolved: ResolvedConfig,
    ranks: Ranks,
    sharding: str | None,
    resume: bool,
    check: bool,
    extra_eval: dict[str, list] | None,
    track_to: TrackTo | None,
) -> TrainResult:
    cfg = resolved.config
    run_dir = plan.run_dir
    checkpoint = _start(resolved, run_dir, ranks, resume)

    task = get_task(cfg.task, cfg, resolved.spelling)
    inputs, fingerprints, before = _load_data(resolved, task, run_dir, resume)
    data, tokenizer = inputs.data, inputs.tokenizer
    require_eval_split(cfg.train.early_stopping_patience, data.eval)  # before the model loads
    first = epoch_rows(data, cfg.train.seed, 0)  # what a step trains on: a mixture's draw, packed where asked
    kept = kept_auto(run_dir, cfg) if resume else {}
    built, untrained, auto, memory = _build_model(
        cfg, inputs, task, first, kept, before, sharding, ranks, check, resolved.spelling
    )
    trained = dataclasses.replace(cfg, train=auto.train)  # config.yaml keeps `auto` as written; the loop the values
    model = built.model
    t = trained.train
    graphs_on, graphs_why = use_graphs(trained, built.impl, built.device, task.name, ranks.world)
    print(f"cuda graphs: {graphs_why}", flush=True)
    train_model = parallelize(model, sharding, ranks)  # the model itself on one rank
    trainable = [p for p in model.parameters() if p.requires_grad]
    # One process: the adapters' GEMMs add their gradients into .grad themselves (kernels/lora.py); DDP and FSDP2
    # must see every gradient pass through autograd
    accumulate_into_grads(trainable, ranks.world == 1)
    if ranks.world > 1:
        _describe_ranks(trained, ranks, sharding, train_model)
        torch.manual_seed(t.seed + ranks.rank)  # each rank its own dropout draws

    pad_id = tokenizer.pad_token_id
    batches_per_epoch = len(task.make_batches(first, t.micro_batch, pad_id, shuffle=False, seed=t.seed, epoch=0))
    steps_per_epoch = math.ceil(batches_per_epoch / t.grad_accum)
    total_steps = t.max_steps or max(1, math.ceil(t.epochs * steps_per_epoch))
    warmup, warmup_note = (
        kept_warmup(run_dir, t.warmup_ratio, total_steps) if resume else (int(t.warmup_ratio * total_steps), "")
    )
    if warmup_note:
        print(warmup_note, flush=True)
    lrs = task.learning_rates(trained) if task.learning_rates else None
    optimizer = build_optimizer(model, t.lr, t.weight_decay, t.optimizer, lrs, t.loraplus_lr_ratio)
    evals = eval_sets(task, data, extra_eval, t.micro_batch, pad_id, built.device)

    info = _run_info(cfg, inputs, task, built, untrained, fingerprints, total_steps, auto, warmup)
    info.result_files = owned_results(run_dir, before) if before is not None else {}  # what its save may replace
    if cfg.task == "dpo":  # which preference loss: the report names it beside the task (orpo is no DPO)
        info.extra["dpo"] = {"loss": cfg.dpo.loss, "beta": cfg.dpo.beta}
    if t.loraplus_lr_ratio:  # the rate B starts from, train.lr auto resolved (config.yaml keeps the ratio as written)
        info.extra["loraplus"] = {"lr_ratio": t.loraplus_lr_ratio, "lr_B": t.lr * t.loraplus_lr_ratio}
    for line in rate_lines(t.lr, t.loraplus_lr_ratio, lrs):  # B's and a head's rates (tunelab check shows the same)
        print(line, flush=True)
    factors = factors_to_keep(built.started, before, info)  # method.init pissa/olora: A0, B0, for a later --resume
    position = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "tokens": 0, "elapsed_s": 0.0, "skipped_steps": 0}
    ranks.barrier()  # every rank has read output_dir (plan, resume checks) before rank 0 changes it
    if checkpoint is not None:
        position |= load_position(checkpoint, train_model, optimizer, total_steps, ranks)
        check_more_steps(run_dir, total_steps, position["step"], resolved.spelling)
        check_not_stopped_early(
            run_dir,
            read_info(run_dir, require_finished=False),
            t.early_stopping_patience,
            t.early_stopping_min_delta,
            resolved.spelling.resume,
        )
        if ranks.main:  # the run is now this config's (allowed changes included): a later --resume compares with it
            write_config(run_dir, dump_yaml(cfg))
            _record_at_checkpoint(run_dir, info, position, track_to)  # kept while resuming, even if killed outright
    elif ranks.main:
        start_run_dir(plan)
        write_info(run_dir, info)  # first: a folder with run.json is a run, which a later --overwrite may replace
        write_config(run_dir, dump_yaml(cfg))
        write_json(run_dir / "data_report.json", data.report.to_dict())
    if factors is not None and ranks.main:
        write_factors(run_dir, factors)
    del factors  # not held through training
    ranks.barrier()  # the run directory exists before any rank writes a checkpoint into it
    scheduler = torch.optim.lr_scheduler.LambdaLR(  # resumed: at the checkpoint's step (param groups restored)
        optimizer, lambda s: lr_factor(s, total_steps, warmup, t.scheduler), last_epoch=position["step"] - 1
    )
    resume_step = position["step"] if resume else None
    early = EarlyStop(t.early_stopping_patience, t.early_stopping_min_delta, position)  # a checkpoint's count kept
    if early.start_note():
        print(early.start_note(), flush=True)
    loss_scale = LossScale.resumed(position) if uses_loss_scale(built.dtype) else None
    if loss_scale is not None:
        position["overflow_steps"] = position.get("overflow_steps", 0)
        position["loss_scale"] = loss_scale.saved()
        print(
            f"fp16: dynamic loss scaling, scale {loss_scale.scale:g}; a step whose scaled gradients overflow is "
            "skipped and the scale halved (counted as overflow steps, not as non-finite ones)",
            flush=True,
        )
    # keep_best saves and loads the trainable weights whole: rank 0's replica under DDP; not under FSDP2's shards
    keep_best = t.keep_best and bool(evals.own) and ranks.main and sharding != "fsdp2"
    best = BestWeights(run_dir, keep_best, resume_step, checkpoint)
    best_off = (
        off_under_fsdp2(run_dir, resume_step, checkpoint)
        if t.keep_best and evals.own and ranks.main and sharding == "fsdp2"
        else ""
    )
    if best_off:
        print(best_off, flush=True)
    # the trackers' runs start here: from now on every way out ends them, as finished, failed or killed
    log = (
        MetricsLog(
            run_dir, resume_step, sinks=open_trackers(t.report_to, track_to or run_dir, to_dict(trained), resume_step)
        )
        if ranks.main
        else Unlogged()
    )

    run = Run(
        trained,
        task,
        run_dir,
        built,
        data,
        pad_id,
        optimizer,
        scheduler,
        evals,
        log,
        total_steps,
        position,
        best,
        train_model,
        ranks,
        memory=memory,
        captured=CapturedLoss(task.loss, trainable) if graphs_on else None,
        graph_width=bucket_width(cfg.data.max_length),
        loss_scale=loss_scale,
        progress=lambda at: _record_at_checkpoint(run_dir, info, at, track_to),
        early=early if early.patience else None,
        spelling=resolved.spelling,
        rate_groups=rate_groups(optimizer, model, t.lr, t.loraplus_lr_ratio, lrs),
    )
    last_loss = _train_steps(run, info, trainable)
    try:
        return finish(run, cfg, plan, info, tokenizer, last_loss, resume_step, best_off, steps_per_epoch, auto)
    except BaseException as exc:  # the steps are done, the result unsaved (a full disk, a second Ctrl-C)
        if ranks.main and not info.finished:
            with contextlib.suppress(WriteFailed, OSError):  # must not hide the error that stopped the run
                info.end = end_record(position["step"], exc)
                record_progress(run_dir, info, position)
        raise


def _build_model(
    cfg: RunConfig,
    inputs: Inputs,
    task: Task,
    first: list,
    kept: dict,
    before: RunInfo | None,
    sharding: str | None,
    ranks: Ranks,
    check: bool,
    spelling: Spelling,
) -> tuple[BuiltModel, UntrainedReport, AutoPlan, MemoryPlan | None]:
    """The auto values the data decides, the cheap checks, the model loaded and adapted for the task, the auto values
    the model decides and the memory plan, all printed. first: the first epoch's rows; kept: a resumed run's auto
    values."""
    data = inputs.data
    auto = plan_from_data(cfg.train, len(first), bool(data.eval), kept, cfg.grpo if cfg.task == "grpo" else None)
    if check:
        cheap_check_gate(dataclasses.replace(cfg, train=auto.train), inputs, task, spelling)
    built, untrained = load_model(cfg, inputs, resumed=before, start=kept_factors(before, cfg.method, spelling))
    auto = auto.with_lr(cfg.method, model_shape(built.hf_config), cfg.task, cfg.dpo.loss)
    longest = longest_row(cfg, first)  # grpo: the prompt and its answer
    # Checkpointing and offload (the memory planner) are set on the causal LM before the task adapts it: a head keeps
    # the LM's body, and with it the body's recompute settings.
    if sharding == "fsdp2":  # our recomputation runs outside FSDP2's gathers: auto means off there
        off = {k: False for k in ("checkpointing", "offload_activations") if getattr(auto.train, k) == AUTO}
        auto.train = dataclasses.replace(auto.train, **off)
    auto, memory = plan_memory(auto, cfg, built, longest, ranks.world, sharding, longest_prompt(cfg, first), len(first))
    trained = dataclasses.replace(cfg, train=auto.train)  # config.yaml keeps `auto` as written; the loop the values
    task.prepare(built, data, trained)  # dpo caches its reference in micro-batches of the chosen size
    if cfg.train.neftune_alpha:
        add_embedding_noise(built.model, cfg.train.neftune_alpha, noise_width(cfg.data))
    _describe_model(cfg, built, untrained, auto, memory)
    return built, untrained, auto, memory


def _start(resolved: ResolvedConfig, run_dir: Path, ranks: Ranks, resume: bool) -> Path | None:
    """The resolved config printed (and with --resume, the run's lock held and its config compared); the checkpoint
    to resume from, and the seed set."""
    cfg = resolved.config
    if resume and ranks.main:
        hold_lock(run_dir)  # a new run takes it in start_run_dir
    notes = (
        check_resume_config(run_dir, cfg, by_content=CONTENT, spelling=resolved.spelling) if resume else []
    )  # _load_data compares the rows
    print("tunelab train — resolved config (value, then where it came from):")
    print(describe(resolved), flush=True)
    checkpoint = resume_checkpoint(run_dir, resolved.spelling) if resume else None
    if resume:  # a file of the user's that the result's save would replace: refused before anything loads
        info = read_info(run_dir, require_finished=False)
        refuse_foreign_saved(run_dir, owned_results(run_dir, info), spelling=resolved.spelling)
    for note in remove_cut_short(run_dir) if resume and ranks.main else []:
        print(note, flush=True)
    warning = (
        resume_warning(run_dir, resolved.spelling) if resume else ""
    )  # a run the non-finite guard stopped: before anything loads
    for note in notes + ([f"warning: {warning}"] if warning else []):
        print(note, flush=True)
    torch.manual_seed(cfg.train.seed)
    return checkpoint


def _load_data(
    resolved: ResolvedConfig, task: Task, run_dir: Path, resume: bool
) -> tuple[Inputs, dict, RunInfo | None]:
    """The data and tokenizer, with their report printed; the data's fingerprints as run.json records them; with
    --resume, the run's run.json, whose data and base the loaded ones must be."""
    cfg = resolved.config
    try:
        inputs = load_inputs(cfg, task, recorded_commit(run_dir) if resume else None, spelling=resolved.spelling)
    except (ConfigError, DataError) as exc:
        raise eval_said_as(locate(exc, resolved.origins), resolved.spelling, run_dir) from None
    data = inputs.data
    print(data.report.summary(), flush=True)
    digest, eval_digest = data_digest(data.train), (data_digest(data.eval) if data.eval else "")
    files, eval_files = file_digests(data.train), file_digests(data.eval or [])
    fingerprints = {"data_sha256": digest, "eval_sha256": eval_digest, "data_files": files, "eval_files": eval_files}
    before = read_info(run_dir, require_finished=False) if resume else None
    if before is not None:
        split, said = split_changed(before, inputs.source, resolved.spelling), resolved.spelling
        check_same_data(run_dir, before.data_sha256, digest, "training", (before.data_files, files), split, said)
        check_same_data(run_dir, before.eval_sha256, eval_digest, "eval", (before.eval_files, eval_files), split, said)
        run_base(before)  # the checkpoint's adapter trained over these weights
    return inputs, fingerprints, before


def _describe_model(
    cfg: RunConfig, built: BuiltModel, untrained: UntrainedReport, auto: AutoPlan, memory: MemoryPlan | None
) -> None:
    """The model loaded, its trainable share, its repaired token rows, the auto values and the memory notes."""
    nf4 = " compute, base in NF4" if cfg.method.quantize_base == "nf4" else ""  # QLoRA: the frozen weights are 4-bit
    if nf4 and cfg.train.fp8:
        nf4 += " multiplied in FP8 (train.fp8)"
    print(
        f"model: {cfg.model.name} ({built.impl} path, {built.dtype}{nf4}, {built.device}); trainable parameters "
        f"{built.trainable:,} of {built.total:,} ({100 * built.trainable / built.total:.2f}%)",
        flush=True,
    )
    if built.dtype_note:
        print(built.dtype_note, flush=True)
    print(untrained.summary(), flush=True)
    print(auto.describe(), flush=True)
    for note in memory.notes if memory is not None else []:  # the GPU shared with other processes
        print(note, flush=True)


def _run_info(
    cfg: RunConfig, inputs, task: Task, built, untrained, fingerprints: dict, total_steps: int, auto, warmup: int
) -> RunInfo:
    """run.json of the run as it starts: its base, method, task, template, data and length."""
    data = inputs.data
    return RunInfo(
        **base_record(cfg.model.name, inputs.source.revision),  # a hub id: the commit it loaded (pinned_source)
        method="dora" if cfg.method.dora else cfg.method.name,
        task=task.name,
        template=data.template.name,
        system_prompt=trained_system(cfg.data.system_prompt),
        refusal=cfg.eval.refusal,
        impl=built.impl,
        quantize_base=cfg.method.quantize_base,
        init=cfg.method.init if cfg.method.is_adapter else "default",
        rslora=cfg.method.rslora and cfg.method.is_adapter,
        dtype=str(built.dtype).removeprefix("torch."),
        trust_remote_code=cfg.model.trust_remote_code,
        fixed_untrained_tokens=untrained.rows() if untrained.repaired else {},
        **fingerprints,
        total_steps=total_steps,
        extra=dict(data.facts)
        | {"auto": auto.to_dict(), WARMUP: warmup}
        | data.report.split_facts()
        | gguf_split_facts(inputs.source),
    )


def _train_steps(run: Run, info: RunInfo, trainable: list) -> float | None:
    """The loop (and the evaluation of the model before training, as step 0); stopped, run.json records how far it
    came and the trackers' runs end failed. Returns the last finite loss."""
    try:
        if run.evals and run.task.eval_at_start and run.position["step"] == 0:  # the model before training, as step 0
            evaluate_at(run, 0)
        return loop(run)
    except BaseException as exc:
        with contextlib.suppress(WriteFailed):  # a full disk must not hide the error that stopped the run
            if run.ranks.main:
                info.end = end_record(run.position["step"], exc)
                record_progress(run.run_dir, info, run.position)
        run.log.close(exc)  # the trackers' runs end failed (killed for Ctrl-C), not finished
        raise
    finally:
        accumulate_into_grads(trainable, on=False)  # the model goes back to plain autograd for whoever holds it


def _record_at_checkpoint(run_dir: Path, info: RunInfo, position: dict, track_to: TrackTo | None) -> None:
    """run.json at a checkpoint: the run's, and a staged run's own (its stages summed), as --resume would start."""
    record_progress(run_dir, info, position)
    if track_to is not None:  # a stage of a staged run
        record_stopped(track_to.run_dir)


def _describe_ranks(cfg: RunConfig, ranks: Ranks, sharding: str, model: nn.Module) -> None:
    t = cfg.train
    print(
        f"ranks: {ranks.world} ({backend(cfg.model.device)}, {sharding}); each optimizer step takes {t.grad_accum} "
        f"micro-batches of {t.micro_batch} rows over all ranks (the same steps as one process)",
        flush=True,
    )
    held, whole = nf4_bytes_held(model)
    each = ranks.each(held)  # every rank takes part
    if whole and sharding == "fsdp2":
        shares = ", ".join(_size(b) for b in each)
        print(f"NF4 base: {_size(whole)}, sharded; the ranks hold {shares} of it between layers", flush=True)
    if t.grad_accum % ranks.world:
        print(
            f"note: train.grad_accum {t.grad_accum} is not a multiple of the {ranks.world} ranks, so some ranks run a "
            "blank micro-batch in each step; a multiple uses every rank fully.",
            flush=True,
        )


def _size(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


class Unlogged:
    """The metrics log of ranks other than 0: they write nothing."""

    def write(self, record: dict) -> None:
        pass

    def close(self, error: BaseException | None = None) -> None:
        pass

    def __enter__(self) -> Unlogged:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        pass
