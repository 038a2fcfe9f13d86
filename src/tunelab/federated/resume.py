"""`tunelab federate --resume`: the config is checked against the run's config.yaml by tunelab train's rules
(training/resume.py), with federated.rounds as the option that sets the length.

So a resumed federation refuses every change that would make it another run (the model, the data, the clients,
the method, the learning rate, the seed, local_steps, the strategy, ...), listing each as `option: old -> new`;
federated.rounds may change to no fewer than the rounds done: the learning rate's decay is then recomputed over the
new rounds x local_steps from the next round on, its warmup kept at the steps the federation started with
(`started_warmup`; server.py sends them to the clients), and the rounds already trained keep the rates they had
(`rounds_note` says so); options that only say how the run is watched or run may change. The server writes the
config it resumes with to config.yaml, so a later --resume compares with it. The server's eval rows are compared
by content too (`check_same_eval`); the clients' data the server never sees.
"""

from __future__ import annotations

from pathlib import Path

from tunelab.config import AUTO, RunConfig, TrainConfig
from tunelab.config.flags import CLI, Spelling
from tunelab.errors import ConfigError, RunDirError, counted
from tunelab.federated.checkpoints import resume_round
from tunelab.federated.history import by_name, error_line, read_state
from tunelab.rundir import read_info
from tunelab.training.auto import auto_warmup
from tunelab.training.resume import check_resume_config, check_same_data, data_digest, file_digests, split_changed

LENGTH = {"federated.rounds"}


def check_resume(run_dir: str | Path, cfg: RunConfig, spelling: Spelling = CLI) -> list[str]:
    """RunDirError when nothing can be resumed, ConfigError for a refused change; else the notes about allowed ones.
    `spelling`: how the caller names resume and overwrite."""
    run_dir = Path(run_dir)
    state = read_state(run_dir, spelling)
    if state is None:
        raise RunDirError(f"{run_dir}: nothing to resume (no federated.json: no round finished there).")
    # federated options the config's other settings leave unread (proximal_mu under fedavg, ...; num_clients beside
    # a list of clients, which counts them): a config saved before they were refused may hold them, and what reads
    # them is compared
    unread = {f"federated.{key}" for key in cfg.federated.idle()} | (
        {"federated.num_clients"} if cfg.federated.clients else set()
    )
    notes = check_resume_config(run_dir, cfg, length=LENGTH, unread=unread, spelling=spelling)
    done = int(state["rounds_done"])
    if cfg.federated.rounds < done:
        raise ConfigError(
            f"{run_dir}: option 'federated.rounds' is {cfg.federated.rounds}, fewer than the {done} rounds the "
            f"federation has done; ask for at least {done} to resume."
        )
    resumed, damaged = resume_round(run_dir, state, spelling)  # RunDirError when no round's checkpoint is intact
    # training/resume.py's note for a new length says "the run"; a federation's says what its rounds do
    notes = [rounds_note(note, cfg, resumed) if note.startswith(ROUNDS_CHANGED) else note for note in notes]
    return notes + damaged + idle_note(state, spelling) + _sampling_note(cfg)


ROUNDS_CHANGED = "resume: federated.rounds:"


def warmup_steps(train: TrainConfig, total: int) -> int:
    """The warmup of a federation of `total` steps (rounds x local_steps): train.warmup_ratio of them, `auto` as a
    client resolves it (auto_warmup of that length)."""
    ratio = auto_warmup(total).value if train.warmup_ratio == AUTO else train.warmup_ratio
    return int(ratio * total)


def started_warmup(state: dict, cfg: RunConfig) -> int:
    """The warmup steps the federation started with (federated.json; one written before they were recorded: the
    warmup of the rounds it started with), which every later round keeps, whatever federated.rounds becomes."""
    first = int(state.get("rounds", cfg.federated.rounds)) * cfg.federated.local_steps
    return int(state.get("warmup_steps", warmup_steps(cfg.train, first)))


def rounds_note(note: str, cfg: RunConfig, state: dict) -> str:
    """The note for a new federated.rounds (`note` is training/resume.py's, whose 'option: old -> new' it keeps): what
    happens to the learning rate, as the clients compute it (local.py's local_train, over the rounds the server
    sends and the warmup it kept)."""
    change = note.split(";")[0]
    f = cfg.federated
    warmup = started_warmup(state, cfg)
    kept = f", and its warmup keeps the {counted(warmup, 'step')} the federation started with" if warmup else ""
    if cfg.train.scheduler == "constant":
        rate = f"the learning rate stays constant{kept}"
    else:
        rate = (
            f"from round {int(state['rounds_done']) + 1} on, the learning rate's {cfg.train.scheduler} decay is "
            f"recomputed over the new {f.rounds} x {f.local_steps} steps (the rounds already trained keep the rates "
            f"they had){kept}"
        )
    return f"{change}; the federation continues to {f.rounds} rounds: {rate}"


def idle_note(state: dict, spelling: Spelling = CLI) -> list[str]:
    """A note when the federation's last rounds applied no update (every client failed, or too few usable updates):
    --resume continues from the global adapter of the last round that applied one, with the same clients and
    settings, so the rounds it runs fail as those did unless what the clients failed on was fixed meanwhile. Said
    before anything starts, as tunelab train --resume warns of a run its NaN guard stopped; `spelling`: how the
    caller names resume."""
    history = state.get("history", [])
    idle = []
    for report in reversed(history):
        if report.get("applied"):
            break
        idle.insert(0, report)
    if not idle:
        return []
    first, last = idle[0]["round"], idle[-1]["round"]
    rounds = f"round {last}" if first == last else f"rounds {first}-{last}"
    failed = [
        f"{c['client']}: {error_line(c.get('reason')) or c['status']}"
        for c in sorted(idle[-1].get("clients", []), key=lambda c: by_name(c["client"]))  # not the replies' order
        if c.get("status") != "ok"
    ]
    why = f" ({'; '.join(failed)})" if failed else f" ({idle[-1]['note']})" if idle[-1].get("note") else ""
    start = (
        "the untrained adapter, as no round applied one"
        if len(idle) == len(history)
        else f"the global adapter of round {first - 1}"
    )
    return [
        f"resume: {rounds} of the federation applied no update{why}. {spelling.resume} continues from {start}, with "
        "the same clients and settings: fix what the clients failed on first, or the rounds it runs will fail the "
        "same way."
    ]


def _sampling_note(cfg: RunConfig) -> list[str]:
    """A note when not every client trains each round: Flower samples them (`strategy_utils.sample_nodes`) with
    Python's global, unseeded `random`, over node ids that change when the clients connect again, so the rounds after
    a resume ask other clients than an uninterrupted run would have. Its result is not that run's."""
    fed = cfg.federated
    population = len(fed.clients) if fed.clients else fed.num_clients if fed.split_file else None
    if fed.fraction >= 1 or (
        population is not None and max(int(population * fed.fraction), fed.min_clients) >= population
    ):
        return []
    return [
        f"resume: federated.fraction is {fed.fraction:g}, so each round asks a sample of the clients, drawn by Flower "
        "without a seed: the rounds from here on may ask other clients than an uninterrupted run would have, and its "
        "result is not that run's (with fraction 1 it is)"
    ]


def check_same_eval(run_dir: str | Path, rows: list, source=None, spelling: Spelling = CLI) -> None:
    """ConfigError when the server's eval rows (data.eval as tokenized) differ from those run.json recorded, as
    tunelab train --resume refuses: each round's eval loss, and keep_best's choice among the rounds, would compare
    losses on two eval sets. A run that recorded none (written before they were) is not checked. `source`: the base
    model (models/load.ModelSource); a GGUF base whose run.json records an older tokenizer conversion than today's
    (`gguf_conversion`) is named as a possible reason, as tunelab train --resume names it. `spelling`: how the caller
    names resume."""
    info = read_info(run_dir, require_finished=False)
    now = (data_digest(rows), file_digests(rows)) if rows else ("", {})
    split = split_changed(info, source) if source is not None else ""
    check_same_data(Path(run_dir), info.eval_sha256, now[0], "eval", (info.eval_files, now[1]), split, spelling)
