"""The ServerApp: holds the global adapter, runs Flower's rounds, evaluates and saves after every round.

After each round the run directory is a complete tunelab run (run.json, config.yaml, the global adapter in PEFT
layout, the tokenizer), so compare, chat, eval, merge and export work on it while later rounds still run;
run.json's `steps` is the rounds done and `extra.federated` says how far the federation got. With train.keep_best
(and data.eval) the global adapter there is the one of the round with the lowest eval loss so far, as tunelab
train keeps the step of the lowest: a later round replaces it only by beating it, and federated.json's `best`
(run.json's `extra.best`) names it; checkpoints/ still holds the last rounds, which --resume continues from. The
server never sees a client's data: it evaluates on its own eval set (data.eval) and learns from clients only what
payload.py lists.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from flwr.app import Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from tunelab.atomic import write_json
from tunelab.config import AUTO, ResolvedConfig, RunConfig, describe, dump_yaml, load_config
from tunelab.config.flags import CLI, Spelling
from tunelab.data.batches import make_batches
from tunelab.data.templates import resolve_template
from tunelab.errors import RunDirError, TrainingStopped, counted
from tunelab.federated.checkpoints import load_round, resume_round, save_round
from tunelab.federated.history import (
    all_rounds_done,
    by_name,
    client_dtypes,
    error_line,
    last_train_loss,
    lost_clients,
    nothing_applied,
    plot_federation,
    read_state,
    round_records,
    trained_tokens,
    write_state,
)
from tunelab.federated.local import federation_plan, server_eval_datasets, untrained_rows
from tunelab.federated.payload import from_record, layout, load_adapter_state, recipe_text, to_record
from tunelab.federated.resume import check_resume, check_same_eval, started_warmup, warmup_steps
from tunelab.federated.rounds import Recorded, RoundReport, build_strategy
from tunelab.federated.setup import flower_warnings_only
from tunelab.federated.shards import federation_protected
from tunelab.models.base_record import base_record, pinned_source, recorded_commit
from tunelab.models.load import load_tokenizer
from tunelab.peft.save import adapter_state_dict
from tunelab.run_info import RunInfo, hub_revision
from tunelab.rundir import read_info, write_config, write_info
from tunelab.training.auto import MICRO_BATCH, model_shape
from tunelab.training.build import SHORT, build_model
from tunelab.training.metrics import MetricsLog
from tunelab.training.optim import rate_lines
from tunelab.training.outdir import (
    OutputPlan,
    failure_note,
    failure_noted,
    finish_replacement,
    hold_lock,
    plan_output_dir,
    start_run_dir,
)
from tunelab.training.prepare import refuse_packing_off_the_fast_path
from tunelab.training.result import drop_stale_results, save_final
from tunelab.training.resume import data_digest, file_digests, gguf_split_facts
from tunelab.training.step import evaluate

RUN_CONFIG_KEY, RESUME_KEY = "tunelab-config", "tunelab-resume"  # the Flower App's run config (deployment)


def _eval_batches(cfg: RunConfig, tokenizer) -> tuple[list[dict], dict | None, list]:
    """The server's own eval set (data.eval) as batches, its data report and its rows; none without data.eval."""
    if not cfg.data.eval:
        return [], None, []
    data = server_eval_datasets(cfg, tokenizer)
    micro_batch = MICRO_BATCH if cfg.train.micro_batch == AUTO else cfg.train.micro_batch  # sizes eval batches only
    batches = make_batches(data.train, micro_batch, tokenizer.pad_token_id, shuffle=False, seed=0, epoch=0)
    return batches, eval_only(data.report.to_dict()), data.train


def eval_only(report: dict) -> dict:
    """The server's data report (data_report.json) as what it is: an eval set, read through the pipeline as training
    rows (`server_eval_datasets`). Written as read, the run's report showed it as the run's training split (6 train
    examples, eval: none) though nothing trained on it; the clients' data, which the server never sees, is in none."""
    empty = dict.fromkeys(report["train"], 0)
    return report | {"train": empty, "eval": report["train"], "eval_source": "file"}


def run_extra(auto: dict, source) -> dict:
    """run.json's extra as the federation starts: what the clients' auto options became (`auto`), as a run of
    tunelab train records them, and a GGUF base's tokenizer conversion (training/resume.py gguf_split_facts), which a
    later --resume names where the server's eval rows differ (`check_same_eval`), as tunelab train --resume does."""
    return {"auto": auto} | gguf_split_facts(source)


def _recorded_info(run_dir: Path) -> RunInfo | None:
    """The run.json of the federation --resume continues; None where it has none (its resume checks say why)."""
    try:
        return read_info(run_dir, require_finished=False)
    except RunDirError:
        return None


def _line(report: RoundReport, rounds: int, eval_loss: float | None) -> str:
    parts = [f"round {report.round}/{rounds}"]
    parts.append(f"eval loss {eval_loss:.4f}" if eval_loss is not None else "no eval set")
    for c in sorted(report.clients, key=lambda c: by_name(c.client)):  # one order every round, not the replies' order
        if c.status == "ok":
            parts.append(
                f"{c.client}: train loss {c.train_loss:.4f} ({counted(c.examples, 'training row')}, {c.seconds:.0f} s)"
            )
        else:
            parts.append(f"{c.client}: {c.status.upper()} ({brief(c.reason)})")
    if report.not_asked:  # federated.fraction < 1: the clients this round's sample left out
        parts.append(f"not asked: {', '.join(report.not_asked)}")
    sent = sum(c.bytes_sent for c in report.clients) / 1e6
    received = sum(c.bytes_received for c in report.clients) / 1e6
    parts.append(f"sent {sent:.1f} MB, received {received:.1f} MB")
    if report.epsilon is not None:
        parts.append(f"epsilon {report.epsilon:.3f}")
    if report.note:
        parts.append(report.note)
    return " | ".join(parts)


def brief(reason: str | None) -> str:
    """A failed client's reason as its round line shows it: one line (history.py's error_line); a reason of several
    lines (a traceback Flower made) says where the rest is."""
    line = error_line(reason)
    if not line:
        return "no reason given"
    more = len([x for x in (reason or "").splitlines() if x.strip()]) > 1
    return f"{line} (the whole reason: federated.json)" if more else line


def run_federation(
    grid: Grid, resolved: ResolvedConfig, population: int, clients: list[str] | None, resume: bool
) -> Path:
    """Run (or resume) the federation of `resolved` over `population` clients on Flower's `grid`. `clients` are
    their names when the server knows them (simulation); real SuperNodes name themselves in their replies."""
    cfg = resolved.config
    run_dir = Path(cfg.output_dir)
    notes, plan = [], None
    if resume:
        if run_dir.is_dir():  # no other process writes the run while this one resumes it (this process's hold is kept)
            hold_lock(run_dir)
        notes = check_resume(run_dir, cfg, resolved.spelling)  # the deployment engine's server checks it first
        # the round's checkpoint verified: where it was damaged, the state of the last intact round (notes said so)
        state, _ = resume_round(run_dir, read_state(run_dir, resolved.spelling), resolved.spelling)
        # as tunelab train --resume: the run an --overwrite moved aside to NAME.previous goes once this one finishes
        plan = OutputPlan(run_dir, replace=False, resume=True)
    else:
        # The overwrite rules of tunelab train (training/outdir.py): a run directory only, kept aside until this one ends.
        plan = plan_output_dir(
            run_dir,
            overwrite=cfg.overwrite,
            resume=False,
            protected=federation_protected(cfg),
            command="federate",
            spelling=resolved.spelling,
        )
        start_run_dir(plan)
        state = {"rounds_done": 0, "history": [], "accountant": None, "elapsed_s": 0.0}
    with failure_noted(plan):  # where the run it replaces was moved aside
        return _run_rounds(grid, resolved, population, clients, resume, state, notes, plan)


def _run_rounds(
    grid: Grid,
    resolved: ResolvedConfig,
    population: int,
    clients: list[str] | None,
    resume: bool,
    state: dict,
    notes: list[str],
    plan: OutputPlan | None,
) -> Path:
    cfg = resolved.config
    f = cfg.federated
    run_dir = Path(cfg.output_dir)
    done = int(state["rounds_done"])
    warmup = started_warmup(state, cfg)
    if warmup != (longer := warmup_steps(cfg.train, f.rounds * f.local_steps)):
        notes = [
            *notes,
            f"resume: the warmup stays {counted(warmup, 'step')}, as the federation started with them "
            f"(train.warmup_ratio of the new {f.rounds} x {f.local_steps} steps would be {longer}, and would "
            "change the rate of rounds already trained)",
        ]
    state["warmup_steps"] = warmup
    state.update(rounds=f.rounds, local_steps=f.local_steps, strategy=f.strategy + (" + DP" if f.dp else ""))
    state["clients"] = clients or state.get("clients", [])
    print("tunelab federate — resolved config (value, then where it came from):")
    print(describe(resolved), flush=True)
    for note in notes:
        print(note, flush=True)
    if done >= f.rounds:
        print(all_rounds_done(run_dir, f.rounds, resolved.spelling), flush=True)
        _finish(plan, resolved.spelling)
        return run_dir

    torch.manual_seed(cfg.train.seed)  # the LoRA initialisation every client starts from
    # a hub base at one commit for the whole federation: the one a resumed run recorded, else model.revision's now;
    # the clients get it in the recipe, so none loads what its branch holds when that client trains
    source = pinned_source(cfg.model.name, (recorded_commit(run_dir) if resume else None) or cfg.model.revision)
    pinned = replace(cfg, model=replace(cfg.model, revision=source.revision)) if source.kind == "hub" else cfg
    tokenizer = load_tokenizer(source, cfg.model.trust_remote_code)
    eval_batches, eval_report, eval_rows = _eval_batches(cfg, tokenizer)
    if resume:
        check_same_eval(run_dir, eval_rows, source, resolved.spelling)
    before = _recorded_info(run_dir) if resume else None
    built = build_model(source, cfg.model, cfg.method, resumed=before)  # resumed: auto keeps the run's dtype
    if built.dtype_note:
        print(built.dtype_note, flush=True)
    if before is not None and before.dtype and cfg.model.dtype == AUTO and built.dtype != torch.float32:
        # the clients train in it too, whatever auto picks on their hosts now, as the rounds before the resume did.
        # fp32 is not sent: auto trains LoRA in 16 bits on every GPU, so a run that recorded fp32 had its server on
        # the CPU, which says nothing of the devices its clients trained on.
        pinned = replace(pinned, model=replace(pinned.model, dtype=SHORT[built.dtype]))
    refuse_packing_off_the_fast_path(cfg, built.impl)  # the deployment engine's server is the first to see the model
    model = built.model
    # model.fix_untrained_tokens: the rows every client repairs too, recorded in run.json for whoever opens the run
    untrained = untrained_rows(model, tokenizer, cfg.model.fix_untrained_tokens)
    if resume:
        load_adapter_state(model, load_round(run_dir, done))
        print(f"resuming {run_dir} after round {done} of {f.rounds}", flush=True)
    elif eval_report is not None:
        write_json(run_dir / "data_report.json", eval_report)
    write_config(run_dir, dump_yaml(cfg))  # resumed: with the changes allowed, which a later --resume reads
    initial = to_record(adapter_state_dict(model))
    print(
        f"model: {cfg.model.name} ({built.impl} path, {built.dtype}, {built.device}); the adapter clients exchange: "
        f"{built.trainable:,} parameters, {initial.count_bytes() / 1e6:.1f} MB",
        flush=True,
    )
    print(untrained.summary(federation=True), flush=True)
    auto = federation_plan(cfg.train, cfg.method, model_shape(built.hf_config), f.rounds * f.local_steps)
    print(same_for_every_client(auto), flush=True)

    strategy, accountant = build_strategy(f, population)
    if accountant is not None and state.get("accountant"):
        accountant.load_state_dict(state["accountant"])
    recorder = Recorded(
        strategy,
        min_clients=f.min_clients,
        offset=done,
        rounds=f.rounds,
        recipe=recipe_text(pinned),
        layout=layout(initial),
        accountant=accountant,
        warmup=warmup,
        round_timeout=f.round_timeout,
        supernodes=population if clients is None else None,  # a deployment: no more SuperNodes than it counts
    )
    log = MetricsLog(run_dir, resume_step=done if resume else None)
    info = RunInfo(
        **base_record(cfg.model.name, source.revision),
        method=cfg.method.name,
        template=resolve_template(cfg.data.template, tokenizer).name,
        system_prompt=cfg.data.system_prompt,
        refusal=cfg.eval.refusal,
        impl=built.impl,
        quantize_base=cfg.method.quantize_base,
        dtype=str(built.dtype).removeprefix("torch."),  # a QLoRA base is quantized from it again when opened
        trust_remote_code=cfg.model.trust_remote_code,
        fixed_untrained_tokens=untrained.rows() if untrained.repaired else {},
        eval_sha256=data_digest(eval_rows) if eval_rows else "",
        eval_files=file_digests(eval_rows),
        total_steps=f.rounds,
        extra=run_extra(auto.to_dict(), source),
    )
    earlier = float(state.get("elapsed_s", 0.0))  # the rounds' seconds before a --resume, counted on from there
    began = time.perf_counter()
    started = began - earlier
    keep_best = cfg.train.keep_best and bool(eval_batches)  # as in train: only with an eval set to choose by
    last_loss: list[float | None] = [None]
    stale = [resume]  # the results of the adapter before a resume (eval.json, ...), until its first new one is saved

    def on_round(server_round: int, arrays) -> MetricRecord | None:
        """Flower calls this with the global adapter before round 1 and after every round."""
        if server_round == 0:
            if resume or not eval_batches:
                return None
            loss = evaluate(model, [_on(b, built.device) for b in eval_batches])
            log.write({"step": 0, "round": 0, "eval_loss": loss})
            state["base_eval_loss"] = loss  # what keep_best's choice among the rounds is told against at the end
            print(f"round 0 (the base model, adapter untrained): eval loss {loss:.4f}", flush=True)
            return MetricRecord({"eval-loss": loss})
        r = server_round + done
        report = recorder.reports.pop(r, RoundReport(r, note="no client was asked to train"))
        load_adapter_state(model, from_record(arrays))
        loss = evaluate(model, [_on(b, built.device) for b in eval_batches]) if eval_batches else None
        last_loss[0] = loss
        if not keep_best:  # turned off on --resume: the result files move on, so the best kept before is not theirs
            state.pop("best", None)
        best = state.get("best")
        if keep_best and loss is not None and (best is None or loss < best["eval_loss"]):
            best = state["best"] = {"round": r, "eval_loss": loss}
        if best is None or best["round"] == r:  # the result: this round's adapter, unless keep_best keeps an earlier
            model.eval()
            save_final(run_dir, built, tokenizer, cfg, base_revision=hub_revision(info))
            model.train()
            if stale[0]:  # as after tunelab train --resume: the report showed them beside the new rounds
                drop_stale_results(run_dir)
                stale[0] = False
        elapsed = time.perf_counter() - started
        records = round_records(report.to_dict(), loss, elapsed)
        for record in records:
            log.write(record)
        state["history"].append(report.to_dict())
        state.update(rounds_done=r, elapsed_s=round(elapsed, 1))
        if not clients:
            state["clients"] = sorted(set(state["clients"]) | set(recorder.names.values()))
        state["accountant"] = accountant.state_dict() if accountant is not None else None
        # finished once every round asked for has run: a federation stopped after an earlier round is resumable
        info.finished, info.steps, info.eval_loss = r == f.rounds, r, best["eval_loss"] if best else loss
        if best:
            info.extra["best"] = {"step": best["round"], "eval_loss": best["eval_loss"]}
        # the loss of the round whose update the global adapter holds (not None after a round nothing was applied in)
        info.final_loss, loss_round = last_train_loss(state["history"])
        info.elapsed_s, info.tokens = round(elapsed, 1), trained_tokens(state["history"])
        info.extra["federated"] = {
            "rounds_done": r,
            "final_loss_round": loss_round,
            "rounds": f.rounds,
            "complete": r == f.rounds,
            "clients": state["clients"],
            "client_dtypes": client_dtypes(state["history"]),  # run.json's dtype is the server's
            "strategy": state["strategy"],
            "epsilon": report.epsilon,
            "delta": f.dp_delta if f.dp else None,
        }
        write_info(run_dir, info)
        plot_federation(run_dir)
        # with the state, should round r+1's be damaged
        save_round(run_dir, r, adapter_state_dict(model), state, spelling=resolved.spelling)
        write_state(run_dir, state)  # last: federated.json names the round --resume starts from
        print(_line(report, f.rounds, loss), flush=True)
        return MetricRecord({"eval-loss": loss}) if loss is not None else None

    with flower_warnings_only():  # one line a round, tunelab's (on_round); FLWR_LOG_LEVEL=INFO shows Flower's too
        recorder.start(
            grid=grid, initial_arrays=initial, num_rounds=f.rounds - done, timeout=f.round_timeout, evaluate_fn=on_round
        )
    # no round applied an update: every round's adapter is the untrained one, so keep_best chose nothing to speak of
    # (the federation ends saying so: nothing_applied)
    if keep_best and state.get("best") and any(report.get("applied") for report in state["history"]):
        print(_kept(state["best"], int(state["rounds_done"]), last_loss[0], state.get("base_eval_loss")), flush=True)
    resumed_after, done = done, int(state["rounds_done"])
    whole = f"{f.rounds} round{'' if f.rounds == 1 else 's'}"
    rounds = (
        whole if done >= f.rounds else f"stopped after round {done} of {f.rounds}; {resolved.spelling.resume} goes on"
    )
    now = time.perf_counter()
    spent = f"{now - started:.0f} s" + (f" in all, {now - began:.0f} s this time" if earlier else "")
    print(f"saved to {run_dir} ({rounds}, {spent})", flush=True)
    if done >= f.rounds and (untrained := nothing_applied(state["history"], resolved.spelling)):
        # a failure, as train's guard stop is: exit 3, and the run an --overwrite moved aside is kept (failure_noted)
        raise TrainingStopped(untrained)
    if lost := lost_clients(state["history"], after=resumed_after):
        # every client named with its error: the round lines are many, and in the simulation Ray folds the clients'
        # tracebacks into one when they repeat across its workers
        print(f"warning: rounds went on without {counted(len(lost), 'client')}: {'; '.join(lost)}", flush=True)
    if done >= f.rounds:
        print(kept_checkpoints(run_dir), flush=True)
        _finish(plan, resolved.spelling)
    elif plan is not None and (note := failure_note(plan)):  # stopped early: the run it replaces is still wanted
        print(note, flush=True)
    return run_dir


def kept_checkpoints(run_dir: str | Path) -> str:
    """A finished federation keeps its last rounds' global adapters (a finished `tunelab train` deletes its step
    checkpoints): `--resume` with more federated.rounds continues from the last one, which keep_best's result need
    not be. Said with their size, and that they may go when no rounds will follow."""
    folder = Path(run_dir) / "checkpoints"
    kept = sorted(folder.glob("round-*"))
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    rounds = " and ".join(str(int(p.name.rpartition("-")[2])) for p in kept)
    return (
        f"kept {folder} ({size / 1e6:.1f} MB, the global adapter of round{'s' if len(kept) > 1 else ''} {rounds}): "
        "--resume with more federated.rounds continues from it; delete it if no more rounds will follow"
    )


def _finish(plan: OutputPlan | None, spelling: Spelling = CLI) -> None:
    """Every round has run: the run an --overwrite moved aside is deleted (training/outdir.py), said as train says it."""
    message = finish_replacement(plan, spelling) if plan is not None else None
    if message:
        print(message, flush=True)


def same_for_every_client(auto) -> str:
    """What every client trains with, said once at the start: the options left `auto`, resolved by the federation
    (`federated.local.federation_plan`), not by each client from its own data."""
    t = auto.train
    lines = [
        "every client trains with the same settings (FedAvg averages updates of one local procedure): "
        f"train.lr {t.lr:g}, train.micro_batch {t.micro_batch}, train.grad_accum {t.grad_accum}, a fresh optimizer "
        "each round"
    ]
    lines += [f"  {name:<24} = {c.value!s:<10} auto: {c.reason}" for name, c in auto.chosen.items()]
    lines += [f"  {line}" for line in rate_lines(t.lr, t.loraplus_lr_ratio, None)]  # LoRA+'s B, as train says it
    return "\n".join(lines)


def _kept(best: dict, last_round: int, last_loss: float | None, base_loss: float | None = None) -> str:
    """What train.keep_best kept as the result, said as tunelab train says it; and when the base model (round 0)
    evaluated lower than every round, that too: keep_best chooses among the rounds (as train among its steps), and
    'the lowest eval loss' alone, beside a lower round 0, read as if the federation had improved the model."""
    loss = best["eval_loss"]
    if best["round"] == last_round:
        message = f"keep_best: the last round ({last_round}) had the lowest eval loss ({loss:.4f}); it is the result."
    else:
        last = f"{last_loss:.4f}" if last_loss is not None else "?"
        message = (
            f"keep_best: round {best['round']} had the lowest eval loss ({loss:.4f}); its global "
            f"adapter is the result (the last round, {last_round}, had {last})."
        )
    if base_loss is not None and base_loss <= loss:
        message += f" But the base model's, before round 1, was no higher ({base_loss:.4f}): no round improved on it."
    return message


def _on(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def config_from_run_config(run_config: dict) -> ResolvedConfig:
    """The resolved config the Flower App carries in its run config (deployment engine). Its messages name the
    command's flags (--resume): the federation runs under `flwr run`, not inside a Python caller's call."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "tunelab.yaml"
        path.write_text(str(run_config[RUN_CONFIG_KEY]), encoding="utf-8")
        return replace(load_config(path), spelling=CLI)


def make_server_app(
    resolved: ResolvedConfig | None = None, *, clients: list[str] | None = None, resume: bool = False
) -> ServerApp:
    """With `resolved`: the simulation's ServerApp for those clients. Without: the deployment engine's, which
    reads the config from the run config and waits for federated.num_clients SuperNodes."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        if resolved is not None:
            run_federation(grid, resolved, len(clients or []), list(clients or []), resume)
            return
        run_deployment(grid, context)

    return app


def run_deployment(grid: Grid, context: Context) -> None:
    """The deployment engine's federation: the config from the run config, federated.num_clients SuperNodes."""
    config = config_from_run_config(dict(context.run_config))
    population = config.config.federated.num_clients
    run_federation(grid, config, population, None, bool(context.run_config.get(RESUME_KEY, False)))
