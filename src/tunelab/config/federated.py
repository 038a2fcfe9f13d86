"""The federated: section (FederatedConfig): the clients' data, the rounds, the aggregation strategy and differential
privacy of `tunelab federate` (federated/)."""

from __future__ import annotations

from dataclasses import dataclass

from tunelab.config.data import DataConfig
from tunelab.config.options import opt


def _choices(option: str) -> tuple[str, ...]:
    return DataConfig.__dataclass_fields__[option].metadata["choices"]


@dataclass
class ClientSource:
    """One entry of federated.clients written as a mapping: a client's data with reading options of its own, for
    clients whose files differ (other column names, another format); an option it leaves unset is data.*'s."""

    path: str | None = opt(None, "the client's data: a file or a folder of files")
    name: str | None = opt(None, "the client's name in messages, metrics and reports (default: the file's name)")
    format: str | None = opt(
        None, "record format of this client's files (default: data.format)", choices=_choices("format")
    )
    fields: dict[str, str] | None = opt(None, "column mapping of this client's files (default: data.fields)")
    delimiter: str | None = opt(
        None, "field separator of this client's .csv files (default: data.delimiter)", choices=_choices("delimiter")
    )


@dataclass
class FederatedConfig:
    clients: list[str | ClientSource] = opt(
        [],
        "each client's own data, one entry per client: a file or a folder of files (the entry's name names the "
        "client), or a mapping {path, name, format, fields, delimiter} for a client that reads its files otherwise",
    )
    split_file: str | None = opt(
        None, "instead of clients: one file split into num_clients shards, one per client (for simulations)"
    )
    num_clients: int = opt(
        2, "with split_file: how many clients (shards); with --app-dir: the SuperNodes the server waits for", min=1
    )
    split: str = opt(
        "iid",
        "with split_file: iid (a seeded shuffle dealt out in turn) or column (every row with one value of split_column goes to one client: non-IID)",
        choices=("iid", "column"),
    )
    split_column: str | None = opt(None, "with split: column, the column whose values decide the client")
    rounds: int = opt(3, "federated rounds: clients train, the server averages their adapters", min=1)
    local_steps: int = opt(
        10, "optimizer steps each client trains per round (train.micro_batch x train.grad_accum rows each)", min=1
    )
    fraction: float = opt(
        1.0, "fraction of the clients asked to train each round (never fewer than min_clients)", min=0.0, max=1.0
    )
    min_clients: int = opt(
        2,
        "a round's average is applied only when at least this many clients return an update; otherwise it is skipped and reported",
        min=1,
    )
    strategy: str = opt(
        "fedavg",
        "fedavg: mean of the client adapters weighted by their examples; fedprox: the same, with a proximal term on each client",
        choices=("fedavg", "fedprox"),
    )
    proximal_mu: float = opt(
        0.01, "fedprox: mu of the term (mu/2)||w - w_global||^2 added to each client's loss", min=0.0
    )
    dp: bool = opt(
        False,
        "differential privacy: each client clips its update, the server adds Gaussian noise to the mean, clients are weighted equally, and the epsilon spent is reported",
    )
    dp_clipping_norm: float = opt(1.0, "dp: L2 bound on each client's adapter update", min=0.0)
    dp_noise_multiplier: float = opt(1.0, "dp: noise standard deviation as a multiple of the clipping norm", min=0.0)
    dp_delta: float = opt(1e-5, "dp: the delta at which the epsilon is reported", min=0.0, max=1.0)
    client_cpus: int = opt(
        1, "simulation: CPU cores reserved per client; clients train side by side when the cores allow", min=1
    )
    round_timeout: float = opt(3600.0, "seconds the server waits for the clients of a round", min=1.0)

    @property
    def enabled(self) -> bool:
        """A federation (`tunelab federate`): clients or split_file name the clients' data."""
        return bool(self.clients or self.split_file)

    def client_paths(self) -> list[str]:
        """The file or folder of each entry of `clients`, in order."""
        return [entry.path if isinstance(entry, ClientSource) else entry for entry in self.clients]

    def idle(self) -> dict[str, str]:
        """The options this config's other settings leave unread: {name: what reads it}."""
        idle = {}
        if self.strategy != "fedprox":
            idle["proximal_mu"] = "only strategy fedprox reads it"
        if not self.dp:
            idle |= dict.fromkeys(
                ("dp_clipping_norm", "dp_noise_multiplier", "dp_delta"), "only federated.dp: true reads it"
            )
        if not self.split_file:
            idle["split"] = "only federated.split_file is split"
        if not self.split_file or self.split != "column":
            idle["split_column"] = "only federated.split: column reads it"
        return idle


# Options of tunelab train that a federation does not read, and what it does instead: set to anything but their
# default, tunelab federate refuses them rather than ignoring them (federated/run.py), and its printed config leaves
# them out (validate.unread_options).
NOT_READ = {
    "stages": "a federation trains one adapter over federated.rounds; it has no stages",
    "model.adapter": "the server starts every federation from a fresh adapter, initialised by train.seed",
    "data.mix_by": "each client reads its own files whole, with no mixture weights",
    "data.temperature": "each client reads its own files whole, with no mixture weights",
    "train.epochs": "federated.rounds x federated.local_steps set how long it trains",
    "train.max_steps": "federated.rounds x federated.local_steps set how long it trains",
    "train.eval_every": "the server evaluates the global adapter on data.eval after every round",
    "train.save_every": "the server saves the global adapter after every round, and --resume continues from it",
    "train.keep_checkpoints": "the server keeps the global adapters of the last two rounds",
    "train.keep_checkpoints_after_finish": "the server keeps the global adapters of the last two rounds",
    "train.max_bad_steps": "a client's step whose loss or gradient is not finite is skipped, and the round goes on",
    "train.log_every": "metrics.jsonl holds one record per round and per client and round",
    "train.checkpoint_layers": "with train.checkpointing: true, clients recompute every decoder layer",
    "train.gpu_memory": "no memory planner runs for it; set train.micro_batch and train.checkpointing",
    "train.cuda_graphs": "clients run the plain train step, without CUDA graphs",
    "train.sharding": "each client trains in one process",
    "train.report_to": "its metrics go to metrics.jsonl and federated.png",
    "train.push_to": "push the federation's adapter once it has finished: tunelab push OUTPUT_DIR --repo OWNER/NAME",
    "train.push_private": "push the federation's adapter once it has finished: tunelab push OUTPUT_DIR --repo OWNER/NAME --private",
}
