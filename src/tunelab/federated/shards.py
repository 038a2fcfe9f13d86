"""Which records each federated client trains on: its own files, or its shard of one shared file.

A client is a name and a way to find its records; nothing here moves data. The shard of a shared file is a pure
function of (file, number of clients, split, column, seed), so every client computes its own shard and no one
hands out rows:

    iid      a seeded shuffle of the row indices, dealt out in turn: client i keeps positions i, i+N, i+2N, ...
    column   rows grouped by the value of one column; groups go whole to clients, largest group first, each to the
             client holding the fewest rows so far (ties: the lower index). Every client sees only its own values:
             the non-IID case federated learning is for.
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.config import ClientSource, DataConfig, FederatedConfig, RunConfig
from tunelab.data.report import location
from tunelab.data.sources import Record
from tunelab.errors import ConfigError, DataError


@dataclass(frozen=True)
class Shard:
    """Client `index` of `count`, over the rows of one shared file."""

    index: int
    count: int
    split: str  # iid | column
    column: str | None
    seed: int

    def select(self, records: list[Record]) -> list[Record]:
        if self.split == "iid":
            order = list(range(len(records)))
            random.Random(f"tunelab-shard:{self.seed}").shuffle(order)  # str seeds hash with sha512: stable
            return [records[i] for i in sorted(order[self.index :: self.count])]
        owner = column_owners(records, self.column, self.count)
        return [r for r in records if owner[_value(r, self.column)] == self.index]


@dataclass(frozen=True)
class ClientData:
    """One client's data: files or folders (read by data.sources), optionally only a shard of their rows, and the
    reading options of its own entry of federated.clients (None: data.*'s)."""

    name: str
    paths: tuple[str, ...]
    shard: Shard | None = None
    format: str | None = None
    fields: tuple[tuple[str, str], ...] | None = None  # data.fields' pairs, a tuple so that the record stays frozen
    delimiter: str | None = None
    entry: int | None = None  # its entry of federated.clients (from 1), which its options' errors name

    @property
    def label(self) -> str:
        """How messages name the client: "client-2" (a shard of split_file, named so already) or "client north"."""
        return self.name if re.fullmatch(r"client(-\d+)?", self.name) else f"client {self.name}"

    @property
    def fields_option(self) -> str | None:
        """How errors name the client's own column mapping (its entry of federated.clients, or a SuperNode's node
        config); None where it reads with data.fields."""
        if self.fields is None:
            return None
        if self.entry is None:
            return f"this SuperNode's --node-config fields ({self.label})"
        return f"option 'federated.clients', entry {self.entry} ({self.label}), fields"

    def data_config(self, data: DataConfig) -> DataConfig:
        """data.* with this client's files, and its own format, fields and delimiter where its entry sets them; no
        eval split (the server evaluates)."""
        return dataclasses.replace(
            data,
            train=list(self.paths),
            eval=None,
            eval_fraction=0.0,
            format=self.format or data.format,
            fields=dict(self.fields) if self.fields is not None else data.fields,
            delimiter=self.delimiter or data.delimiter,
        )


def _value(record: Record, column: str) -> str:
    if column not in record.row:
        raise DataError(
            f"{location(record.path, record.line)}: no field '{column}', which option 'federated.split_column' names; "
            "every row of federated.split_file needs it."
        )
    return str(record.row[column])


def column_owners(records: list[Record], column: str, count: int) -> dict[str, int]:
    """Column value -> client index: whole groups, largest first, each to the least-loaded client."""
    sizes = Counter(_value(r, column) for r in records)
    if len(sizes) < count:
        path = records[0].path if records else "federated.split_file"
        raise ConfigError(
            f"{path}: column '{column}' (federated.split_column) has {len(sizes)} distinct values, fewer than "
            f"federated.num_clients={count}, so a client would hold no data. Lower num_clients, or split by another "
            "column or with split: iid."
        )
    load = [0] * count
    owner = {}
    for value, size in sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0])):
        client = min(range(count), key=lambda i: (load[i], i))
        owner[value] = client
        load[client] += size
    return owner


def _name(entry: str) -> str:
    name = Path(entry).name
    for suffix in (".gz", ".jsonl", ".json", ".csv", ".tsv", ".parquet", ".txt"):
        name = name.removesuffix(suffix)
    return name or "client"


def _client_entry(k: int, entry: ClientSource, name: str) -> ClientData:
    """ClientData of a mapping entry of federated.clients; ConfigError naming the entry and the client for an entry
    without a path, or a mapping with an empty field or column name (data.fields' rules)."""
    where = f"option 'federated.clients', entry {k}"
    if entry.path is None:
        raise ConfigError(f"{where}: give 'path', the client's data file or folder (its keys: {CLIENT_KEYS}).")
    label = ClientData(name, (entry.path,)).label
    fields = entry.fields
    if fields is not None and any(not key.strip() for key in fields):
        raise ConfigError(
            f"{where} ({label}): fields has an empty field name; its keys are tunelab's fields (prompt, completion, "
            "...), its values the columns of this client's files, e.g. {prompt: question}."
        )
    if fields is not None and (blank := next((key for key, column in fields.items() if not column.strip()), None)):
        raise ConfigError(
            f"{where} ({label}): fields maps {blank!r} to an empty column name; give the column of this client's "
            f"files that holds it (e.g. {{{blank}: my_column}}), or remove {blank!r}."
        )
    pairs = tuple(fields.items()) if fields is not None else None
    return ClientData(name, (entry.path,), format=entry.format, fields=pairs, delimiter=entry.delimiter, entry=k)


CLIENT_KEYS = ", ".join(f.name for f in dataclasses.fields(ClientSource))


def _check_distinct(entries: list[str]) -> None:
    """ConfigError when two clients name the same file or folder: each client's data is its own."""
    seen: dict[Path, int] = {}
    for k, entry in enumerate(entries, 1):
        first = seen.setdefault(Path(entry).resolve(), k)
        if first != k:
            raise ConfigError(
                f"option 'federated.clients': entries {first} and {k} both name {entry}; each client holds its own "
                "data (to split one file among clients, use federated.split_file)."
            )


def client_data(cfg: FederatedConfig, seed: int) -> list[ClientData]:
    """The clients of a federated config, in order (client i is simulated SuperNode partition i)."""
    if cfg.clients and cfg.split_file:
        raise ConfigError(
            "options 'federated.clients' and 'federated.split_file' are both set; give each client its own data "
            "(clients) or split one file (split_file), not both."
        )
    if cfg.clients:
        paths = cfg.client_paths()
        _check_distinct([p for p in paths if p is not None])
        given = _given_names(cfg.clients)
        names: list[str] = []
        for k, path in enumerate(paths, 1):
            name = base = given.get(k) or _name(path or "")
            n = 2
            while k not in given and (name in names or name in given.values()):  # a given name is that client's
                name, n = f"{base}-{n}", n + 1
            names.append(name)
        return [
            _client_entry(k, entry, name) if isinstance(entry, ClientSource) else ClientData(name, (entry,))
            for k, (entry, name) in enumerate(zip(cfg.clients, names), 1)
        ]
    if cfg.split_file:
        if cfg.split == "column" and not (cfg.split_column or "").strip():
            raise ConfigError("option 'federated.split' is column; set 'federated.split_column' to the column's name.")
        return [
            ClientData(
                f"client-{i + 1}",
                (cfg.split_file,),
                Shard(i, cfg.num_clients, cfg.split, cfg.split_column if cfg.split == "column" else None, seed),
            )
            for i in range(cfg.num_clients)
        ]
    raise ConfigError(
        "a federated run needs clients: set 'federated.clients' (one data file or folder per client) or "
        "'federated.split_file' (one file split into federated.num_clients shards)."
    )


def _given_names(entries: list) -> dict[int, str]:
    """{entry (from 1): name} of the mapping entries of federated.clients that give one; ConfigError for an empty
    name or one that two entries give."""
    given: dict[int, str] = {}
    for k, entry in enumerate(entries, 1):
        if not isinstance(entry, ClientSource) or entry.name is None:
            continue
        name = entry.name.strip()
        if not name:
            raise ConfigError(
                f"option 'federated.clients', entry {k}: name is empty; give the client a name, or remove it."
            )
        if (first := next((j for j, other in given.items() if other == name), None)) is not None:
            raise ConfigError(
                f"option 'federated.clients', entries {first} and {k} are both named {name!r}; each client's name is "
                "its own (messages, metrics and reports tell the clients apart by it)."
            )
        given[k] = name
    return given


def from_node_config(node_config: dict) -> ClientData:
    """A SuperNode's data in the deployment engine: `--node-config "data='a.jsonl,b.jsonl' name='clinic-a'"`, and the
    reading options of its own, as a federated.clients mapping gives them in the simulation: `format`, `fields`
    ('output=response,input=context') and `delimiter`."""
    paths = tuple(p.strip() for p in str(node_config.get("data", "")).split(",") if p.strip())
    if not paths:
        raise ConfigError(
            "this SuperNode has no data: start it with --node-config \"data='/path/to/file.jsonl'\" (comma-separated "
            "files or folders; optionally name='NAME')."
        )
    for path in paths:  # said of the node config, not of data.train, which the data reader's message names
        if not Path(path).expanduser().exists():
            raise ConfigError(
                f"this SuperNode's data (--node-config \"data='{','.join(paths)}'\"): {path}: no such file or folder on "
                "this host. Restart the SuperNode with the path of its data here (an absolute path: its ClientApp "
                "need not run in the folder the SuperNode started in)."
            )
    fmt, delimiter = (_node_choice(node_config, key) for key in ("format", "delimiter"))
    return ClientData(node_name(node_config), paths, format=fmt, fields=_node_fields(node_config), delimiter=delimiter)


def _node_choice(node_config: dict, key: str) -> str | None:
    """A SuperNode's own `format` or `delimiter` (None: data.*'s); ConfigError naming the key and the choices."""
    value = node_config.get(key)
    if value is None:
        return None
    choices = DataConfig.__dataclass_fields__[key].metadata["choices"]
    if str(value) not in choices:
        raise ConfigError(
            f"this SuperNode's --node-config {key}={value!r}: allowed values: {', '.join(choices)}. Restart the "
            f"SuperNode with one of them, or without {key} (data.{key} of the server's config then applies)."
        )
    return str(value)


def _node_fields(node_config: dict) -> tuple[tuple[str, str], ...] | None:
    """A SuperNode's own column mapping, `fields='output=response,input=context'` (None: data.fields); ConfigError
    naming the pair that is no FIELD=COLUMN."""
    text = node_config.get("fields")
    if text is None:
        return None
    pairs = []
    for pair in str(text).split(","):
        field, _, column = (part.strip() for part in pair.partition("="))
        if not field or not column:
            raise ConfigError(
                f"this SuperNode's --node-config fields={text!r}: {pair.strip()!r} is no FIELD=COLUMN pair; write "
                "each of tunelab's fields with the column of this host's files that holds it, comma-separated "
                "(fields='output=response,input=context')."
            )
        pairs.append((field, column))
    return tuple(pairs)


def node_name(node_config: dict) -> str:
    """A SuperNode's name: its node config's `name`, else its first data file's (`_name`), else "client" (a node
    without data, which fails its rounds saying so)."""
    first = next((p.strip() for p in str(node_config.get("data", "")).split(",") if p.strip()), "")
    return str(node_config.get("name") or _name(first))


def federation_protected(cfg: RunConfig, config: Any = None) -> dict[str, list[str]]:
    """The user's files a federation's run directory must never hold: tunelab train's list (training/prepare.py)
    and every client's data."""
    # imported here: a SuperNode's ClientApp process imports this module to name itself, without torch (client.py)
    from tunelab.training.prepare import protected_paths
    from tunelab.training.recipe import config_path

    protected = protected_paths(cfg, config_path(config))
    f = cfg.federated
    protected["client data file"] = [p for p in f.client_paths() if p] + ([f.split_file] if f.split_file else [])
    return protected
