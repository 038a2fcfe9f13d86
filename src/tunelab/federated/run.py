"""`tunelab federate`: check the config and every client's data, then run the federation on Flower.

Two engines, one ServerApp and one ClientApp:
- simulation (the default): Flower's simulation engine runs the server and one virtual SuperNode per client on
  this machine (Ray workers; `federated.client_cpus` cores each). Every client reads only its own files.
- deployment: `app_dir` writes a Flower App (app_dir.py) that names the same ServerApp and ClientApp
  (tunelab.federated.app) and carries the resolved config; Flower's own tools run it on real, separate processes or
  hosts: `flower-superlink`, one `flower-supernode --node-config "data='...'"` per client, and `flwr run APP_DIR`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunelab.config import FederatedConfig, ResolvedConfig, RunConfig, iter_options
from tunelab.config.federated import NOT_READ
from tunelab.config.flags import CLI, Spelling
from tunelab.config.load import locate
from tunelab.config.validate import option_default
from tunelab.errors import ConfigError, TunelabError, counted
from tunelab.eval.compare import compare_after_training
from tunelab.federated.app_dir import data_note, write_flower_app
from tunelab.federated.history import all_rounds_done
from tunelab.federated.hostpaths import absolute_model, app_note
from tunelab.federated.resume import check_resume, check_same_eval
from tunelab.federated.setup import require_accountant, without_flower_lines
from tunelab.federated.shards import ClientData, client_data, federation_protected
from tunelab.rundir import read_info
from tunelab.training.outdir import hold_lock, plan_output_dir, release_lock

if TYPE_CHECKING:
    from tunelab.data.loader import Datasets


@dataclass
class FederateResult:
    run_dir: Path
    rounds_done: int
    eval_loss: float | None
    epsilon: float | None


def _unread_federated(f: FederatedConfig, defaults: dict[str, Any]) -> list[str]:
    """federated.* options that only another setting of the federation reads, set while that setting is off."""
    return [
        f"federated.{key} ({getattr(f, key)!r}): {why}"
        for key, why in f.idle().items()
        if getattr(f, key) != defaults[f"federated.{key}"]
    ]


def check_config(cfg: RunConfig) -> None:
    """Rules for a federated run beyond the per-option ones."""
    defaults = {name: option_default(f) for name, f, _ in iter_options()}
    unread = []
    for name, instead in NOT_READ.items():
        section, _, key = name.rpartition(".")
        value = getattr(getattr(cfg, section) if section else cfg, key)
        if value != defaults[name]:
            unread.append(f"{name} ({value!r}): {instead}")
    unread += _unread_federated(cfg.federated, defaults)
    if unread:
        raise ConfigError(
            f"tunelab federate does not read these options, which are set: {'; '.join(unread)}. Remove them (a "
            "federation's data is in federated.clients or federated.split_file; its length in federated.rounds and "
            "federated.local_steps)."
        )
    if cfg.task != "sft":
        raise ConfigError(
            f"option 'task' is {cfg.task}; a federation trains task sft (the clients' answers), so remove the option "
            "or set it to sft."
        )
    if cfg.method.name != "lora" or cfg.method.use_dora:
        raise ConfigError(
            f"option 'method.name' is {cfg.method.name}; a federation exchanges LoRA adapters, so it needs lora (without use_dora)."
        )
    if cfg.data.train:
        raise ConfigError(
            "option 'data.train' is set, but a federated run takes each client's data from federated.clients or "
            "federated.split_file; move the files there (data.eval stays: it is the server's eval set)."
        )
    if cfg.data.eval_fraction:
        raise ConfigError(
            "option 'data.eval_fraction' is set; the server has no training data to hold out from. Give the server "
            "its own eval file in data.eval."
        )
    f = cfg.federated
    if f.dp and (f.dp_clipping_norm <= 0 or f.dp_noise_multiplier <= 0 or not 0 < f.dp_delta < 1):
        raise ConfigError(
            "option 'federated.dp' needs dp_clipping_norm > 0, dp_noise_multiplier > 0 and 0 < dp_delta < 1 "
            f"(got {f.dp_clipping_norm}, {f.dp_noise_multiplier}, {f.dp_delta})."
        )


def check_run_dir(cfg: RunConfig, resume: bool, config: Any, spelling: Spelling = CLI) -> list[str]:
    """Fail before any client starts, and delete nothing here (the server replaces the folder, as tunelab train does:
    training/outdir.py). With `resume`, the config against the run's (federated/resume.py): the notes about the
    changes it allows, the refusals naming resume and overwrite as `spelling` does."""
    run_dir = Path(cfg.output_dir)
    if resume:
        return check_resume(run_dir, cfg, spelling)
    plan_output_dir(
        run_dir,
        overwrite=cfg.overwrite,
        resume=False,
        protected=federation_protected(cfg, config),
        command="federate",
        spelling=spelling,
    )
    return []


def check_client_count(f: FederatedConfig, num_clients_set: bool = False) -> None:
    """ConfigError when federated.num_clients is given beside a list of federated.clients of another length: it counts
    split_file's shards and the SuperNodes a deployment's server waits for (--app-dir), so beside a list it can only
    repeat its length. `num_clients_set`: the config gives it (its default, 2, beside three clients is then refused)."""
    if (
        f.clients
        and f.num_clients != len(f.clients)
        and (num_clients_set or f.num_clients != FederatedConfig().num_clients)
    ):
        raise ConfigError(
            f"option 'federated.num_clients' is {f.num_clients} but option 'federated.clients' names "
            f"{counted(len(f.clients), 'client')}; num_clients counts federated.split_file's shards and the SuperNodes "
            "the server of --app-dir waits for, so remove it (the clients listed count) or make the two agree."
        )


def federation_clients(cfg: RunConfig, num_clients_set: bool = False) -> list[ClientData]:
    """The federation's rules (`check_config`) and its clients; ConfigError when fewer than min_clients, or when
    `check_client_count` refuses federated.num_clients (`num_clients_set`: the config gives it)."""
    check_config(cfg)
    clients = client_data(cfg.federated, cfg.train.seed)
    f = cfg.federated
    check_client_count(f, num_clients_set)
    named = [("federated.clients", path) for path in f.client_paths()]
    named += [("federated.split_file", f.split_file)] * bool(f.split_file)
    for option, entry in named:  # said of the option that names it, not of data.train, which a federation leaves unset
        if not Path(entry).exists():
            raise ConfigError(
                f"option '{option}': {entry}: no such file or folder (a relative path is read from the folder of "
                "the YAML config that sets it; given as a --flag, from the working directory)."
            )
    if cfg.federated.min_clients > len(clients):
        raise ConfigError(
            f"option 'federated.min_clients' is {cfg.federated.min_clients} but the federation has {len(clients)} "
            f"client{'' if len(clients) == 1 else 's'}; lower min_clients or add clients."
        )
    return clients


def read_clients(cfg: RunConfig, clients: list[ClientData]) -> tuple[Any, list[Datasets]]:
    """The tokenizer and every client's data through the pipeline (on this machine, as the simulation will read
    it): a client with no usable data is bad input naming the client and its files."""
    from tunelab.federated.local import client_datasets
    from tunelab.models.load import load_hf_config, load_tokenizer, resolve_source
    from tunelab.training.build import pick_impl
    from tunelab.training.prepare import refuse_beyond_context, refuse_packing_off_the_fast_path

    source = resolve_source(cfg.model.name, cfg.model.revision)
    tokenizer = load_tokenizer(source, cfg.model.trust_remote_code)
    refuse_beyond_context(cfg, source)
    refuse_packing_off_the_fast_path(
        cfg, pick_impl(cfg.model.impl, load_hf_config(source, cfg.model.trust_remote_code))
    )
    sets = []
    for client in clients:
        try:
            sets.append(client_datasets(cfg.data, tokenizer, cfg.train.seed, client))
        except TunelabError as exc:
            raise type(exc)(f"{client.label}: {exc}{_one_mapping(exc, clients)}") from None
    refuse_shared_files(clients, sets)
    return tokenizer, sets


def _one_mapping(error: TunelabError, clients: list[ClientData]) -> str:
    """What a federation adds to the data reader's advice to map columns with data.fields: it maps the columns of
    every client that has no mapping of its own, so a client whose columns differ (instruction/output beside
    instruction/response) gets its own in its entry of federated.clients."""
    if len(clients) < 2 or "data.fields" not in str(error):
        return ""
    return (
        " In a federation data.fields maps the columns of every client's files alike: a client whose columns differ "
        "gets a mapping of its own in its entry of federated.clients, {path: FILE, fields: {...}} (format and "
        "delimiter too)."
    )


def refuse_shared_files(clients: list[ClientData], sets: list) -> None:
    """ConfigError when two clients read one file (a folder of one client holds another's file): its rows would be
    trained by both and weigh twice in every average, as shards.py refuses two entries naming the same path. The
    shards of federated.split_file share their file by design, each with rows of its own."""
    owner: dict[Path, ClientData] = {}
    for client, data in zip(clients, sets):
        if client.shard is not None:
            continue
        for path in dict.fromkeys(Path(ex.path).resolve() for ex in data.examples):
            first = owner.setdefault(path, client)
            if first is not client:
                raise ConfigError(
                    f"option 'federated.clients': {path} is data of {first.label} ({', '.join(first.paths)}) and of "
                    f"{client.label} ({', '.join(client.paths)}): its rows would be trained by both and weigh twice "
                    "in every average. Each client holds its own data: move the file out of the other's folder."
                )


def average_weights(f: FederatedConfig, sets: list) -> list[str]:
    """What each client's update weighs in the server's average, one line per client of `sets` (their Datasets):
    its training rows (federated/local.py training_examples: chat examples, and a text's blocks of data.max_length),
    and their share; with DP every client weighs the same (federated/rounds.py)."""
    from tunelab.federated.local import training_examples

    n = len(sets)
    if f.dp:
        return [f"weight in the average: 1 of {n} (with federated.dp every client weighs the same)"] * n
    rows = [training_examples(data) for data in sets]
    total = sum(rows) or 1
    sampled = max(int(n * f.fraction), f.min_clients)
    when = "of each round's average" if sampled >= n else f"when every client takes part (a round samples {sampled})"
    return [
        f"weight in the average: {r} training rows (chat examples and text blocks), {100 * r / total:.1f}% {when}"
        for r in rows
    ]


def format_note(clients: list[ClientData], sets: list) -> tuple[str, str] | None:
    """(status, note) when the clients' data are in different formats (their Datasets' reports), which FedAvg
    averages without a word otherwise: "warn" where raw text (a loss on every token: continued pretraining) meets
    conversations (a loss on the answers), two objectives in one average; "info" where every format is a
    conversation, rendered alike through the one template. None when every client reads the same formats."""
    formats = {client.label: sorted(set(data.report.formats.values())) for client, data in zip(clients, sets)}
    if len({tuple(f) for f in formats.values()}) <= 1:
        return None
    listed = "; ".join(f"{label}: {', '.join(f) or 'none'}" for label, f in formats.items())
    note = f"the clients' data are in different formats ({listed})."
    if any("text" in f for f in formats.values()) and any(f != ["text"] for f in formats.values()):
        return "warn", note + (
            " A text format trains on every token of raw text (continued pretraining), the others on the answers of "
            "their conversations: the server averages updates of two objectives, so the global adapter is pulled "
            "toward continuing plain text as well as toward answering. Give every client data of one kind, unless "
            "that mix is meant."
        )
    return "info", note + (
        " Each is rendered through the same template (data.template) with the loss on its answers, so they train "
        "alike; said so that a file read in another format than meant (data.format, data.fields) is seen."
    )


def shared_eval_notes(clients: list[ClientData], sets: list, eval_data: Datasets | None) -> list[str]:
    """Warnings when the server's eval rows are rows a client trains on: its file is a client's too (a client's
    folder holds data.eval, or data.eval is federated.split_file or a client's file), or a client's files repeat its
    rows word for word. The eval loss after every round then measures how the global adapter recalls rows it was
    trained on, and train.keep_best chooses the result by it. tunelab train notes its own eval rows among its
    training rows alike (data/loader.py: note_trained_eval, note_repeated_eval)."""
    from tunelab.data.loader import note_repeated_eval
    from tunelab.data.report import DataReport

    if eval_data is None:
        return []
    held = {Path(ex.path).resolve() for ex in eval_data.examples}
    owners = [
        client.label
        for client, data in zip(clients, sets)
        if any(Path(ex.path).resolve() in held for ex in data.examples)
    ]
    notes = []
    if owners:
        files = ", ".join(sorted(dict.fromkeys(ex.path for ex in eval_data.examples)))
        notes.append(
            f"the server's eval file ({files}, data.eval) is also training data of {', '.join(owners)}: its eval loss "
            "after each round measures how the global adapter recalls rows a client trained on, not how it does on "
            "new ones (train.keep_best chooses the result by it); give data.eval rows no client holds (a file outside "
            "the clients' folders and federated.split_file)"
        )
    for client, data in zip(clients, sets):
        report = DataReport()
        note_repeated_eval(data.examples, eval_data.examples, report)  # rows of its own files: counted above
        notes += [
            f"{client.label}: {note.replace('eval examples', 'server eval examples (data.eval)', 1)}"
            for note in report.notes
        ]
    return notes


def check_clients(cfg: RunConfig, clients: list[ClientData], resume: bool = False, spelling: Spelling = CLI) -> None:
    """Read every client's data (`read_clients`) and the server's eval set before anything starts (a bad one found
    by the server only after Ray and the clients started), and say what each client holds; resumed, the server's eval
    rows must be those the run recorded (`check_same_eval`)."""
    tokenizer, sets = read_clients(cfg, clients)
    eval_data = None
    if cfg.data.eval:
        from tunelab.federated.local import server_eval_datasets

        eval_data = server_eval_datasets(cfg, tokenizer)
        if resume:
            from tunelab.models.load import resolve_source

            source = resolve_source(cfg.model.name, cfg.model.revision)
            check_same_eval(cfg.output_dir, eval_data.train, source, spelling)
    from tunelab.federated.local import training_examples

    for client, data, weight in zip(clients, sets, average_weights(cfg.federated, sets)):
        # "training rows" as each round's line says them (server.py _line): a text's blocks, a chat example each
        print(
            f"{client.label}: {counted(data.report.train.used, 'example')} -> "
            f"{counted(training_examples(data), 'training row')} "
            f"({', '.join(client.paths)}{f', shard {client.shard.index + 1} of {client.shard.count}' if client.shard else ''}); "
            f"{weight}",
            flush=True,
        )
        for line in data.report.losses():  # what of its files the client does not train on, as train says it
            print(line, flush=True)
    if formats := format_note(clients, sets):
        print(f"{'warning' if formats[0] == 'warn' else 'note'}: {formats[1]}", flush=True)
    for note in shared_eval_notes(clients, sets, eval_data):
        print(f"warning: {note}", flush=True)


def _result(run_dir: Path) -> FederateResult:
    info = read_info(run_dir, require_finished=False)
    fed = info.extra.get("federated", {})
    return FederateResult(run_dir, int(fed.get("rounds_done", 0)), info.eval_loss, fed.get("epsilon"))


def simulate(resolved: ResolvedConfig, clients: list[ClientData], resume: bool) -> None:
    """Flower's simulation engine: this process runs the ServerApp; Ray workers run one ClientApp per client."""
    import torch
    from flwr.simulation import run_simulation

    from tunelab.federated.client import make_client_app
    from tunelab.federated.server import make_server_app

    f = resolved.config.federated
    cores = os.cpu_count() or 1
    if f.client_cpus > cores:
        raise ConfigError(f"option 'federated.client_cpus' is {f.client_cpus}, but this machine has {cores} cores.")
    gpu = resolved.config.model.device != "cpu" and torch.cuda.is_available()
    # Flower's own deprecation of run_simulation asks its users to run `flwr run`: tunelab federate runs it for them
    quiet = without_flower_lines("DEPRECATED FEATURE: The `run_simulation` function")
    with _short_ray_temp(), warnings.catch_warnings(), quiet:
        # Ray's tip, at every start, about a default it will change for workers given no GPU (they see none now, as
        # a client on model.device cpu should): nothing for a user of tunelab federate to act on
        warnings.filterwarnings("ignore", "Tip: In future versions of Ray", FutureWarning)
        run_simulation(
            server_app=make_server_app(resolved, clients=[c.name for c in clients], resume=resume),
            client_app=make_client_app(clients),
            num_supernodes=len(clients),
            backend_config={
                "client_resources": {"num_cpus": f.client_cpus, "num_gpus": 1.0 if gpu else 0.0},
                "init_args": {"num_cpus": cores, "num_gpus": torch.cuda.device_count() if gpu else 0},
            },
        )


# What Ray adds under its temp root for its object store's socket: /ray/session_<date>_<time>_<us>_<pid>/sockets/
# plasma_store, 68 characters with a 7-digit pid; a Unix socket's path holds at most 107.
RAY_SOCKET_SUFFIX, UNIX_SOCKET_PATH_MAX = 68, 107


@contextlib.contextmanager
def _short_ray_temp():
    """Ray's temp root (RAY_TMPDIR, else TMPDIR on Linux, else /tmp), moved to a short folder under /tmp for the
    simulation when it is too long for Ray's socket paths: Ray then fails to start ("AF_UNIX path length cannot
    exceed 107 bytes"), which a long TMPDIR (a job scheduler's, a test runner's) is enough for."""
    root = os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp"
    if sys.platform == "win32" or len(root) + RAY_SOCKET_SUFFIX <= UNIX_SOCKET_PATH_MAX:
        yield
        return
    short = tempfile.mkdtemp(prefix="tl-ray-", dir="/tmp")
    before = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = short
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = before
        shutil.rmtree(short, ignore_errors=True)


def federate(
    config: str | Path | RunConfig | ResolvedConfig | None = None,
    overrides: dict[str, Any] | None = None,
    *,
    resume: bool = False,
    app_dir: str | Path | None = None,
) -> FederateResult | Path:
    """Run the federation of `config` in Flower's simulation engine, or with `app_dir` write the Flower App for its
    deployment engine (and return that folder)."""
    from tunelab.training.recipe import refuse_resume_and_overwrite, resolve

    resolved = resolve(config, overrides)
    refuse_resume_and_overwrite(resolved, resume)
    cfg = resolved.config
    check_config(cfg)
    if cfg.federated.dp:
        require_accountant()
    cfg.output_dir = str(Path(cfg.output_dir).resolve())
    absolute_model(cfg)
    num_clients_set = resolved.origins.get("federated.num_clients", "default") != "default"
    if app_dir is not None:
        f = cfg.federated
        try:  # the server waits for num_clients SuperNodes: a list of clients of another length says otherwise
            check_client_count(f, num_clients_set)
        except ConfigError as exc:
            raise locate(exc, resolved.origins) from None
        if f.clients and f.num_clients == FederatedConfig().num_clients:  # unset: one SuperNode per client listed
            f.num_clients = len(f.clients)
        if cfg.data.eval:
            cfg.data.eval = str(Path(cfg.data.eval).resolve())
        for note in (app_note(cfg), data_note(f)):
            if note:
                print(note, flush=True)
        return write_flower_app(app_dir, resolved, resume, overwrite=cfg.overwrite)
    try:
        clients = federation_clients(cfg, num_clients_set)
    except ConfigError as exc:
        raise locate(exc, resolved.origins) from None
    run_dir = Path(cfg.output_dir)
    held = resume and run_dir.is_dir()
    if held:  # as tunelab train --resume: no other process writes the run while this one resumes it
        hold_lock(run_dir)
    try:
        check_run_dir(cfg, resume, config, resolved.spelling)
        finished = all_rounds_done(run_dir, cfg.federated.rounds, resolved.spelling) if resume else None
        if finished:  # refused, as tunelab train refuses a finished run, before the simulation engine (Ray) starts
            raise ConfigError(finished)
        check_clients(cfg, clients, resume, resolved.spelling)
        simulate(resolved, clients, resume)
    finally:
        if held:
            release_lock(run_dir)
    result = _result(run_dir)
    if cfg.eval.questions and result.rounds_done == cfg.federated.rounds:
        compare_after_training(run_dir, cfg)  # as after tunelab train: scores printed, compare.json
    return result
