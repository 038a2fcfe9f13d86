"""`tunelab check` for a federated config (federated.clients or federated.split_file): what `tunelab federate`
checks before any client trains, then each client's data as tunelab train checks its own.

- the federation's rules (task sft, LoRA, no data.train, ...) and the clients: bad input, exit 2, as for federate;
- output_dir: what federate would do with it (it never holds a client's data file);
- per client, its rows read through the pipeline as that client reads them (its files, or its shard of the shared
  file), its data report, the auto values its local training takes, and the data checks (prompt rendering,
  answer ends, padding), each item named after the client;
- the server's eval set (data.eval), read as the server reads it;
- with the model: the untrained rows of every token the tokenizer has, which federate finds and repairs on the server
  and every client (it cannot see their data: federated/local.py's untrained_rows), and the sft model checks (one
  forward/backward, the padded and packed comparisons, fast against generic) on the first client's first
  micro-batch.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunelab.config import AUTO, ResolvedConfig, RunConfig
from tunelab.config.flags import CLI, Spelling
from tunelab.config.load import locate
from tunelab.data.checks import CheckItem, data_checks
from tunelab.errors import ConfigError, RunDirError
from tunelab.models.load import resolve_source
from tunelab.training.optim import rate_lines
from tunelab.training.prepare import Inputs

if TYPE_CHECKING:
    from tunelab.federated.shards import ClientData

# tunelab.federated's modules are imported where they are used: they load Flower, which a check of an ordinary
# config does not need.


def label(client: ClientData) -> str:
    """How items name a client: "client-2" (a shard of split_file) or "client clinic-a" (a file's name)."""
    return client.label


def clients_of(resolved: ResolvedConfig) -> list[ClientData]:
    """The federation's rules and its clients, as `tunelab federate` checks them first (ConfigError: exit 2, naming
    the file that set the option)."""
    from tunelab.federated.run import federation_clients

    try:
        return federation_clients(
            resolved.config, resolved.origins.get("federated.num_clients", "default") != "default"
        )
    except ConfigError as exc:
        raise locate(exc, resolved.origins) from None


def output_item(cfg: RunConfig, config: Any, resume: bool, spelling: Spelling = CLI) -> CheckItem:
    from tunelab.federated.run import check_run_dir

    name = "resume" if resume else "output_dir"
    try:
        notes = check_run_dir(cfg, resume, config, spelling)  # its refusals name resume as the caller gave it
    except (RunDirError, ConfigError) as exc:
        return CheckItem(name, "fail", str(exc))
    if resume:
        return CheckItem(name, "pass", f"{cfg.output_dir}: federate resumes after its last finished round", notes)
    exists = Path(cfg.output_dir).exists()
    return CheckItem(name, "pass", f"{cfg.output_dir}: " + ("federate replaces it" if exists else "new"))


def client_inputs(cfg: RunConfig, clients: list[ClientData]) -> list[tuple[ClientData, Inputs]]:
    """Every client's rows as that client reads them; a client without usable data is bad input naming it."""
    from tunelab.federated.run import read_clients

    tokenizer, sets = read_clients(cfg, clients)
    source = resolve_source(cfg.model.name, cfg.model.revision)
    return [(client, Inputs(source, tokenizer, data)) for client, data in zip(clients, sets)]


def client_weights(cfg: RunConfig, read: list[tuple[ClientData, Inputs]]) -> list[str]:
    """What each client weighs in the server's average (its training rows, not the data report's examples)."""
    from tunelab.federated.run import average_weights

    return average_weights(cfg.federated, [inputs.data for _, inputs in read])


def client_formats_item(clients: list[ClientData], sets: list) -> CheckItem | None:
    """The clients' data formats when they differ (federated/run.py format_note); None when they agree."""
    from tunelab.federated.run import format_note

    found = format_note(clients, sets)
    return CheckItem("client formats", *found) if found else None


def client_items(cfg: RunConfig, client: ClientData, inputs: Inputs) -> tuple[RunConfig, list[CheckItem]]:
    """The auto values this client's local training takes (the federation's, the same on every client:
    federated/local.py's federation_auto) and its data checks, named after the client."""
    from tunelab.federated.local import federation_auto

    f = cfg.federated
    plan = federation_auto(cfg.train, f.rounds * f.local_steps)
    local = dataclasses.replace(cfg, train=plan.train)
    prefix = f"{label(client)}: "
    details = [f"{name} = {c.value!r}: {c.reason}" for name, c in plan.chosen.items()]
    later = "; train.lr: from the model's width when the client trains" if plan.train.lr == "auto" else ""
    summary = f"{len(plan.chosen)} chosen by the federation, the same on every client{later}"
    items = [CheckItem(prefix + "auto values", "info", summary, details)] if plan.chosen or later else []
    if rates := rate_lines(plan.train.lr if plan.train.lr != AUTO else None, plan.train.loraplus_lr_ratio, None):
        items.append(CheckItem(prefix + "learning rates", "info", "as federate prints them at its start", rates))
    items += [dataclasses.replace(item, name=prefix + item.name) for item in data_checks(local, inputs)]
    return local, items


def server_eval_item(cfg: RunConfig, tokenizer, read: list[tuple[ClientData, Inputs]] = ()) -> CheckItem:
    """The server's eval set as the server reads it; a warning when a client trains on its file too (`read`: the
    clients' data)."""
    if not cfg.data.eval:
        return CheckItem("server eval", "info", "no data.eval: the server reports no eval loss after each round")
    from tunelab.federated.local import server_eval_datasets
    from tunelab.federated.run import shared_eval_notes

    data = server_eval_datasets(cfg, tokenizer)
    summary = f"{cfg.data.eval}: {len(data.train)} rows, read as the server reads them"
    if shared := shared_eval_notes([c for c, _ in read], [inputs.data for _, inputs in read], data):
        return CheckItem("server eval", "warn", f"{summary}; but {'; '.join(shared)}")
    return CheckItem("server eval", "pass", summary)
