"""`tunelab check CONFIG`: the checks in order, printed as they go, one verdict line, and an HTML page.

It takes the same config and flags as `tunelab train` and never writes into output_dir: the page goes where --html
says, or to check.html in a new folder under the system's temporary directory. A config that cannot be resolved,
or data that cannot be read or rendered, is bad input (TunelabError, exit 2), as for train.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from tunelab.atomic import check_can_write, write_text
from tunelab.checks.device import start_items
from tunelab.checks.federated import (
    client_formats_item,
    client_inputs,
    client_items,
    client_weights,
    clients_of,
    label,
    output_item,
    server_eval_item,
)
from tunelab.checks.grpo import grpo_data_checks, grpo_model_items, grpo_preview
from tunelab.checks.heads import CHECKED_TASKS, head_data_checks, head_model_items, head_preview
from tunelab.checks.model import (
    compared,
    documents,
    dtype_items,
    eval_comparisons,
    first_batch,
    forward_backward,
    mean_loss,
    padded,
    untrained_item,
)
from tunelab.checks.preview import HTML_MARK, check_html, preview_text
from tunelab.config import AUTO, ResolvedConfig, RunConfig, describe, stage_name, trained_stages
from tunelab.config.flags import CLI, Spelling
from tunelab.config.load import locate
from tunelab.config.validate import unused_notes
from tunelab.data.checks import CheckItem, CheckResult, data_checks
from tunelab.data.formats import eval_said_as
from tunelab.data.loader import epoch_rows
from tunelab.data.render import render_examples
from tunelab.data.report import DataReport
from tunelab.errors import ConfigError, DataError, RunDirError, TunelabError, counted
from tunelab.eval.questions import check_questions
from tunelab.export.push import check_push_to
from tunelab.models.llama import unsupported_reason
from tunelab.models.load import load_hf_config
from tunelab.places import refuse_file_in_the_way
from tunelab.run_info import RunInfo
from tunelab.rundir import is_run_dir, read_info, resume_warning
from tunelab.tasks import get_task
from tunelab.training.auto import AutoPlan, model_shape, plan_from_data, shown
from tunelab.training.checkpoint import intact_checkpoint
from tunelab.training.early_stop import check_not_stopped_early, require_eval_split
from tunelab.training.initial_factors import KeptFactors, kept_factors
from tunelab.training.optim import rate_lines
from tunelab.training.outdir import plan_output_dir
from tunelab.training.plan import plans_memory
from tunelab.training.prepare import load_inputs, load_model, protected_paths
from tunelab.training.publish import owned_results, refuse_foreign_saved
from tunelab.training.recipe import config_path, refuse_resume_and_overwrite, resolve
from tunelab.training.resume import CONTENT, check_resume_config, data_digest, file_digests, kept_auto, what_changed
from tunelab.training.stage_plan import plan_stages, refuse_other_labels
from tunelab.training.stage_resume import check_staged_resume, refuse_nothing_to_train, stage_dir, stage_error


def html_path(html: str | Path | None) -> Path | None:
    """Where the page goes: the given path (never into a run directory, never over a file check did not write), or
    None for a new temporary folder, made when the page is written (a check that stops on bad input leaves none)."""
    if html is None:
        return None
    path = Path(html).expanduser()
    holder = next((f for f in path.absolute().parents if is_run_dir(f)), None)  # run/checkpoints/ is the run's too
    if holder is not None:
        raise RunDirError(f"--html {html}: {holder} is a run directory, which check never writes into.")
    if path.is_dir() or (path.exists() and HTML_MARK not in path.read_text(errors="replace")[:2000]):
        raise RunDirError(f"--html {html}: exists and is not a page tunelab check wrote; choose another path.")
    refuse_file_in_the_way(path, f"--html {html}")
    check_can_write(path)  # a read-only folder: said now, not after the checks
    return path


def output_items(resolved: ResolvedConfig, config, resume: bool, overwrite_non_run: bool) -> list[CheckItem]:
    """What train would do with output_dir, as a check: refusals fail, the rest informs."""
    cfg, spelling = resolved.config, resolved.spelling
    try:
        plan = plan_output_dir(
            cfg.output_dir,
            overwrite=cfg.overwrite,
            resume=resume,
            protected=protected_paths(cfg, config_path(config)),
            overwrite_non_run=overwrite_non_run,
            spelling=spelling,
        )
        if not resume:
            what = "an existing run: train replaces it, keeping it as {} until the new run finishes"
            summary = what.format(plan.previous) if plan.replace else "new: train creates it"
            return [CheckItem("output_dir", "pass", f"{plan.run_dir}: {summary}")]
        if cfg.stages:  # compared as train compares them: each stage as it trains
            notes = check_staged_resume(plan.run_dir, resolved)
            return [_staged_resume(plan.run_dir, len(cfg.stages), notes, spelling)]
        notes = check_resume_config(plan.run_dir, cfg, by_content=CONTENT, spelling=spelling)  # rows: the data item
        checkpoint, damaged = intact_checkpoint(plan.run_dir)
        if checkpoint is None:
            return [CheckItem("resume", "fail", f"{plan.run_dir}: no intact checkpoint to resume from", damaged)]
        t = cfg.train  # a finished run that early stopping ended, with the same patience: train refuses it
        info = read_info(plan.run_dir, require_finished=False, spelling=spelling)
        check_not_stopped_early(
            plan.run_dir, info, t.early_stopping_patience, t.early_stopping_min_delta, spelling.resume
        )
        refuse_foreign_saved(plan.run_dir, owned_results(plan.run_dir, info), spelling=spelling)  # as train refuses
        warning = resume_warning(plan.run_dir, spelling)  # a run the non-finite guard stopped would stop again
        if warning:
            return [CheckItem("resume", "warn", f"from {checkpoint}", [warning] + damaged + notes)]
        return [CheckItem("resume", "pass", f"from {checkpoint}", damaged + notes)]
    except (RunDirError, ConfigError) as exc:
        return [CheckItem("resume" if resume else "output_dir", "fail", str(exc))]


def push_items(cfg: RunConfig) -> list[CheckItem]:
    """train.push_to as train checks it before training: offline mode off and a token (the repository's form and the
    method were checked with the config)."""
    repo = cfg.train.push_to
    if repo is None:
        return []
    try:
        check_push_to(cfg)
    except TunelabError as exc:
        return [CheckItem("train.push_to", "fail", str(exc))]
    private = " (private)" if cfg.train.push_private else ""
    return [CheckItem("train.push_to", "pass", f"{repo}{private}: a token is there; the result is pushed at the end")]


def _staged_resume(run_dir: Path, count: int, notes: list[str], spelling: Spelling) -> CheckItem:
    """Where train --resume of a staged run goes on (training/stages.py): its finished stages are skipped, the first
    other one resumes from its checkpoint, or starts again when it stopped before its first. ConfigError when every
    stage has finished."""
    refuse_nothing_to_train(run_dir, count, spelling)
    k = _unfinished_stage(run_dir, count)
    if k is None:  # stopped after the last stage was saved, before the run's result was written
        return CheckItem("resume", "pass", f"every one of the {count} stages has finished; writes the run's result")
    here = stage_dir(run_dir, k)
    checkpoint, damaged = intact_checkpoint(here) if is_run_dir(here) else (None, [])
    if checkpoint is not None:
        warning = resume_warning(here, spelling)  # the stage the non-finite guard stopped would stop again
        status, details = ("warn", [warning]) if warning else ("pass", [])
        return CheckItem("resume", status, f"stage {k} of {count} from {checkpoint}", details + damaged + notes)
    if damaged:  # train --resume starts it again, its steps so far lost
        summary = f"stage {k} of {count} starts again: none of its checkpoints is intact"
        return CheckItem("resume", "warn", f"{summary}; the stages before it have finished", damaged + notes)
    how = "starts again (it stopped before its first checkpoint)" if is_run_dir(here) else "starts"
    return CheckItem("resume", "pass", f"stage {k} of {count} {how}; the stages before it have finished", notes)


def _unfinished_stage(run_dir: Path, count: int) -> int | None:
    return next((k for k in range(1, count + 1) if not _finished_stage(stage_dir(run_dir, k))), None)


def _compared_stages(run_dir: Path, count: int) -> set[int]:
    """The stages whose data train --resume compares with their run.json: the finished ones, and the one it continues
    from a checkpoint (not one it starts afresh)."""
    k = _unfinished_stage(run_dir, count)
    if k is None:
        return set(range(1, count + 1))
    here = stage_dir(run_dir, k)
    resumed = is_run_dir(here) and intact_checkpoint(here)[0] is not None
    return set(range(1, k + 1 if resumed else k))


def _finished_stage(here: Path) -> bool:
    return is_run_dir(here) and read_info(here, require_finished=False).finished


def resume_data_items(info: RunInfo, data, stage: str = "") -> list[CheckItem]:
    """A failed item for the training or eval rows that differ from those the run (or stage) recorded, as train
    --resume refuses them."""
    items = []
    for what, recorded, files, rows in (
        ("training", info.data_sha256, info.data_files, data.train),
        ("eval", info.eval_sha256, info.eval_files, data.eval),
    ):
        if recorded and recorded != (data_digest(rows) if rows else ""):
            which = what_changed(files, file_digests(rows or []))
            detail = f"the tokenized {what} rows differ from the {'stage' if stage else 'run'}'s" + (
                f": {which}" if which else ""
            )
            items.append(CheckItem(f"{stage}resume data", "fail", detail))
    return items


def auto_item(cfg, data, resume: bool, source=None) -> tuple[AutoPlan, CheckItem | None]:
    """The `auto` values train would choose from this data (a resumed run keeps its own), and the learning rate from
    the width in the model's config (`source`; where it cannot be read here, train chooses it when it starts). No item
    when no option is left auto."""
    kept = {}
    if resume and is_run_dir(cfg.output_dir):
        try:
            kept = kept_auto(cfg.output_dir, cfg)
        except (RunDirError, ConfigError):  # the resume item reports what is wrong with the run
            pass
    rows = len(epoch_rows(data, cfg.train.seed, 0))  # a mixture's draw, packed where asked, as training counts it
    plan = plan_from_data(cfg.train, rows, bool(data.eval), kept, cfg.grpo if cfg.task == "grpo" else None)
    if plan.train.lr == "auto" and source is not None:
        with contextlib.suppress(TunelabError):  # a config not readable here: train reads it with the model
            shape = model_shape(load_hf_config(source, cfg.model.trust_remote_code))
            plan = plan.with_lr(cfg.method, shape, cfg.task, cfg.dpo.loss)
    later = "; train.lr: from the model's width when training starts" if plan.train.lr == "auto" else ""
    if not plan.chosen and not later:
        return plan, None
    details = [f"{name} = {shown(c.value)}: {c.reason}" for name, c in plan.chosen.items()]  # as train prints them
    summary = f"{len(plan.chosen)} chosen from the data and the model{later}"
    return plan, CheckItem("auto values", "info", summary, details)


def rates_items(cfg, train) -> list[CheckItem]:
    """The rates beside train.lr as train prints them at its start (training/optim.py rate_lines): LoRA+'s B matrices
    and a head's own rate; no item when every parameter trains at train.lr. `train`: cfg.train with the auto values
    chosen (train.lr still auto when the model's config cannot be read here)."""
    task = get_task(cfg.task, cfg)
    lrs = task.learning_rates(cfg) if task.learning_rates else None
    lines = rate_lines(train.lr if train.lr != AUTO else None, train.loraplus_lr_ratio, lrs)
    return [CheckItem("learning rates", "info", "as train prints them at its start", lines)] if lines else []


def _free(*objects) -> None:
    del objects
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def model_items(
    cfg, inputs, resumed: RunInfo | None = None, federation: bool = False, start: KeptFactors | None = None
) -> list[CheckItem]:
    """`federation`: the untrained rows of every token of the tokenizer, found and repaired as `tunelab federate`
    repairs them on the server and every client, not only those of the tokens `inputs` use; `start`: the kept A0, B0
    of the run --resume continues (`training.initial_factors`), from which both models below are built."""
    pad = inputs.tokenizer.pad_token_id
    built, untrained = load_model(cfg, inputs, resumed=resumed, federation=federation, start=start)
    batch = first_batch(cfg, inputs.data, pad)
    items = [*dtype_items(built), untrained_item(untrained, federation), *forward_backward(built, batch)]
    comparisons, fast_loss = eval_comparisons(built, batch, pad)
    items += comparisons
    name = "fast path = generic path"
    if built.impl != "fast":
        reason = unsupported_reason(built.hf_config) or "model.impl is generic"
        return items + [CheckItem(name, "info", f"not applicable: the model trains on the generic path ({reason})")]
    dtype = built.dtype
    _free(built)
    # The same model, method and repairs through transformers' code; LoRA's B starts at zero and dropout is off in
    # eval mode, so both compute the base model's loss (quantized alike under QLoRA).
    generic_cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, packing=False))
    generic, _ = load_model(generic_cfg, inputs, impl="generic", resumed=resumed, federation=federation, start=start)
    generic.model.eval()
    generic_loss = mean_loss(generic.model, padded(documents(batch), pad), generic.device)
    _free(generic)
    return items + [compared(name, "the first micro-batch", fast_loss, generic_loss, dtype)]


def _stage_inputs(cfg: RunConfig, task, k: int, names: list[str], spelling: Spelling, run_dir: str):
    """load_inputs for stage k of a staged run (`names`: its stages' names), its errors naming the stage and eval of
    `run_dir` as tunelab train names them."""
    try:
        return load_inputs(cfg, task, spelling=spelling)
    except (ConfigError, DataError, RunDirError) as exc:
        raise stage_error(exc, k, names, spelling, run_dir) from None


def run_check(
    config: Any = None,
    overrides: dict[str, Any] | None = None,
    *,
    resume: bool = False,
    overwrite_non_run: bool = False,
    html: str | Path | None = None,
    examples: int = 3,
    model: bool = True,
    show: bool = True,
) -> CheckResult:
    def out(text: str) -> None:
        if show:
            print(text, flush=True)

    resolved = resolve(config, overrides)
    refuse_resume_and_overwrite(resolved, resume)
    cfg = resolved.config
    page = html_path(html)
    # a federation's rules (ConfigError, exit 2, as tunelab federate raises it) before the ~100 lines of the config,
    # so that a refusal is the one thing printed
    clients = clients_of(resolved) if cfg.federated.enabled else []
    out("tunelab check — resolved config (value, then where it came from):")
    out(describe(resolved))
    if cfg.federated.enabled:
        color = show and sys.stdout.isatty()
        described = describe(resolved)
        return federated_check(
            cfg, clients, config, resume, page, examples, model, out, color, described, resolved.spelling
        )
    items = output_items(resolved, config, resume, overwrite_non_run) + push_items(cfg)
    if resume and (
        warning := resume_warning(cfg.output_dir, resolved.spelling)
    ):  # before the data and the model load, as train says it
        out(f"warning: {warning}")
    # printed under the config; an item for the API and the page
    if unused := unused_notes(cfg, resolved.origins, trained_stages(resolved)):
        items.append(
            CheckItem(
                "unused options", "info", f"{counted(len(unused), 'option')} set that the run does not read", unused
            )
        )
    plans, later = [], []
    if cfg.stages:  # a staged run: stage 1 in full; the later stages' data (their models are results yet to come)
        plans = plan_stages(resolved, Path(cfg.output_dir))
        first, *later = [plan.config for plan in plans]
        cfg = first
        out(f"a staged run of {len(later) + 1} stages: stage 1 is checked in full, the others' data")
    head = cfg.task in CHECKED_TASKS  # classify, reward, dpo: checks/heads.py
    grpo = cfg.task == "grpo"  # checks/grpo.py
    task = get_task("grpo", cfg, resolved.spelling) if grpo else None  # grpo's rollout reads what its build_data saw
    # DataError (file:line) for a row without input (or label), a classifier of one class
    spelling = resolved.spelling
    try:
        staged = resolved.config.stages
        names = [stage_name(entry, k) for k, entry in enumerate(staged, 1)]
        run_dir = resolved.config.output_dir
        inputs = (
            _stage_inputs(cfg, task, 1, names, spelling, run_dir)
            if staged
            else load_inputs(cfg, task, spelling=spelling)
        )
        require_eval_split(cfg.train.early_stopping_patience, inputs.data.eval)  # train refuses it here too (exit 2)
    except (ConfigError, DataError) as exc:
        raise eval_said_as(locate(exc, resolved.origins), spelling, resolved.config.output_dir) from None
    data = inputs.data
    out(data.report.summary())
    # a staged run: the stages whose data train compares with their run.json (training/stage_resume.py): the
    # finished ones and the one --resume continues from its checkpoint
    top = Path(resolved.config.output_dir).expanduser()  # a staged run's folder, which holds its stages'
    compared = _compared_stages(top, len(plans)) if resume and plans else set()
    before = None  # the run --resume continues: its model is built in the dtype it trained in (`build.kept_dtype`)
    start = None  # and over the base its kept A0, B0 rebuild (method.init pissa or olora), as train --resume reads them
    if resume and is_run_dir(cfg.output_dir):
        before = read_info(cfg.output_dir, require_finished=False)
        start = kept_factors(before, cfg.method, spelling, say=out)  # RunDirError (exit 2) as train --resume's
        if not plans or 1 in compared:
            items += resume_data_items(before, data, "stage 1: " if plans else "")
    plan, item = auto_item(cfg, data, resume, inputs.source)
    items += [item] if item else []
    items += rates_items(cfg, plan.train)
    planned = plans_memory(cfg.train, plan)  # train weighs the GPU's free memory only when it plans memory
    cfg = dataclasses.replace(cfg, train=plan.train)  # the micro-batch the data checks and the first step use
    items += start_items(cfg, inputs, planned)  # the GPU's budget and the trackers, as train says them at its start
    if head or grpo:  # checks/heads.py, checks/grpo.py: the rows as the task reads them, then its data checks
        preview = head_preview(cfg, inputs, examples) if head else grpo_preview(inputs, examples)
        rows = []
        out(preview)
        items += head_data_checks(cfg, inputs) if head else grpo_data_checks(cfg, inputs)
    else:
        preview = ""
        rows = render_examples(data.examples[:examples], inputs.tokenizer, data.template, cfg.data, DataReport())
        out(preview_text(rows, inputs.tokenizer, color=show and sys.stdout.isatty()))
        items += data_checks(cfg, inputs)
    page_text = data.report.summary()
    labels = [data.facts.get("labels")]
    for k, stage in enumerate(later, 2):
        # A stage that starts from the weights of the stage before (after a full-weight stage, or continue: merge)
        # reads its rows with their tokenizer once they exist; before that, with stage 1's, and says so
        done = _finished_stage(stage_dir(top, k - 1)) and Path(stage.model.name).expanduser().is_dir()
        own = stage.model.name == cfg.model.name or done
        stage_inputs = _stage_inputs(
            stage if own else dataclasses.replace(stage, model=cfg.model), None, k, names, spelling, run_dir
        )
        read_with = (
            ""
            if own
            else f" (read with stage 1's tokenizer, {cfg.model.name}: stage {k - 1}'s result is not trained yet)"
        )
        out(f"stage {k}: " + stage_inputs.data.report.summary() + read_with)
        labels.append(stage_inputs.data.facts.get("labels"))
        if k in compared:  # read over the stage's own model, the stage before's result, as the stage read them
            info = read_info(stage_dir(top, k), require_finished=False)
            items += resume_data_items(
                info, _stage_inputs(stage, None, k, names, spelling, run_dir).data, f"stage {k}: "
            )
        items += [
            dataclasses.replace(item, name=f"stage {k}: {item.name}") for item in _stage_items(stage, stage_inputs)
        ]
    if plans:
        refuse_other_labels(plans, labels)
    if cfg.eval.questions:
        items.append(questions_item(cfg, inputs))
    for item in items:
        out(item.line())
    if model:
        if grpo:
            more = grpo_model_items(cfg, inputs, task, before, start)
        elif head:
            more = head_model_items(cfg, inputs, before, start)
        else:
            more = model_items(cfg, inputs, before, start=start)
        for item in more:
            out(item.line())
        items += more
    return finish(items, page, rows, inputs.tokenizer, describe(resolved), page_text, out, preview)


def _stage_items(stage: RunConfig, inputs) -> list[CheckItem]:
    """The data checks of a later stage, as its task reads its data, with its auto values as train will choose them
    from the stage's data."""
    grpo = stage.grpo if stage.task == "grpo" else None
    rows = len(epoch_rows(inputs.data, stage.train.seed, 0))
    stage = dataclasses.replace(stage, train=plan_from_data(stage.train, rows, bool(inputs.data.eval), {}, grpo).train)
    if stage.task in CHECKED_TASKS:
        return head_data_checks(stage, inputs)
    return grpo_data_checks(stage, inputs) if grpo else data_checks(stage, inputs)


def questions_item(cfg: RunConfig, inputs) -> CheckItem:
    """eval.questions as the comparison after training reads and renders them, within the model's context."""
    name = "eval.questions"
    try:
        questions = check_questions(cfg, inputs.source, inputs.tokenizer)
    except TunelabError as exc:
        return CheckItem(name, "fail", str(exc))
    return CheckItem(
        name, "pass", f"the {counted(len(questions), 'row')} of {cfg.eval.questions} can be asked after training"
    )


def _resumed_info(cfg) -> RunInfo | None:
    """The run.json of the federation --resume continues; None where it has none (the resume item says why)."""
    try:
        return read_info(cfg.output_dir, require_finished=False) if is_run_dir(cfg.output_dir) else None
    except RunDirError:
        return None


def federated_check(
    cfg,
    clients,
    config,
    resume: bool,
    page: Path | None,
    examples: int,
    model: bool,
    out,
    color: bool,
    described: str,
    spelling: Spelling = CLI,
) -> CheckResult:
    """`tunelab check` of a federated config (checks/federated.py): the federation's rules and output_dir, every
    client's data as that client reads it, the server's eval set, and the model checks on the first client's data."""
    items = [output_item(cfg, config, resume, spelling)]
    summaries = []
    first = None
    read = client_inputs(cfg, clients)  # DataError naming the client (exit 2)
    for (client, inputs), weight in zip(read, client_weights(cfg, read)):
        # the data report counts examples; the server's average weighs the rows the client trains on
        summary = f"{label(client)}:\n" + inputs.data.report.summary() + f"\n  {weight}"
        out(summary)
        summaries.append(summary)
        local, more = client_items(cfg, client, inputs)
        items += more
        first = first or (client, local, inputs)
    if formats := client_formats_item(clients, [inputs.data for _, inputs in read]):
        items.append(formats)
    client, local, inputs = first
    rows = render_examples(
        inputs.data.examples[:examples], inputs.tokenizer, inputs.data.template, cfg.data, DataReport()
    )
    out(f"{label(client)}, " + preview_text(rows, inputs.tokenizer, color=color))
    items.append(server_eval_item(cfg, inputs.tokenizer, read))
    if cfg.eval.questions:
        items.append(questions_item(cfg, inputs))
    for item in items:
        out(item.line())
    if model:
        before = _resumed_info(cfg) if resume else None  # the server sends the run's dtype to every client
        checked = model_items(local, inputs, before, federation=True)  # the rows federate repairs
        # named after the client whose micro-batch they ran on; the untrained rows are the tokenizer's, every client's
        more = [
            i if i.name == "untrained tokens" else dataclasses.replace(i, name=f"{label(client)}: {i.name}")
            for i in checked
        ]
        for item in more:
            out(item.line())
        items += more
    return finish(items, page, rows, inputs.tokenizer, described, "\n\n".join(summaries), out)


def finish(
    items: list[CheckItem], page: Path | None, rows, tokenizer, described: str, page_text: str, out, preview: str = ""
) -> CheckResult:
    """The result of the items: its HTML page written, where it is and the verdict printed. preview: the rows of a
    task other than sft as it reads them (sft's are `rows`, rendered)."""
    if page is None:
        page = Path(tempfile.mkdtemp(prefix="tunelab-check-")) / "check.html"
    result = CheckResult(items, page)
    page.parent.mkdir(parents=True, exist_ok=True)
    write_text(page, check_html(result, rows, tokenizer, described, page_text, preview))
    out(f"page: {page}")
    out(result.verdict())
    return result
