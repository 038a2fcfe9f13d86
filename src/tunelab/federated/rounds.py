"""The server's strategy: Flower's FedAvg or FedProx (inside Flower's client-side-clipping DP wrapper when asked),
wrapped in `Recorded`, which checks every reply before Flower averages and records what each client did.

Flower runs the rounds (`Strategy.start`), samples the clients, sends and receives, and averages: the global
adapter after a round is sum_k (n_k / sum_j n_j) * adapter_k over the clients k whose update is used, n_k their
examples (or 1 each with DP, whose accounting needs equal weights). `Recorded` adds what tunelab needs:
- a reply whose adapter does not match the global one (keys, shapes, dtypes) is skipped and reported, before
  numpy could broadcast it into the mean;
- each node is asked its client's name before it first trains (`ask_names`), so that a client that fails (its
  reply is Flower's error message, reported with Flower's reason) or never replies is named as the user knows it,
  not by Flower's node id; so is each node that federated.fraction < 1 left out of a round (`not_asked`);
- with fewer than federated.min_clients usable updates the round's average is not applied (the global adapter
  stays as it was) and the report says why;
- bytes sent and received per client, each client's train loss, and the epsilon spent so far.
Round numbers given to the inner strategy start at 1 on every start; `offset` turns them into the run's rounds
when a federation resumes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid, NeighboringRelation, PrivacyConfig, RdpAccountant, SamplingMethod
from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping, FedAvg, FedProx, Strategy

from tunelab.config import FederatedConfig
from tunelab.errors import ConfigError
from tunelab.federated.payload import (
    ARRAYS,
    ASK,
    CLIENT,
    CONFIG,
    METRICS,
    RATE_KEYS,
    RECIPE,
    ROUND,
    ROUNDS,
    UNIFORM_WEIGHT,
    WARMUP,
    WEIGHT,
    mismatch,
    payload_bytes,
)
from tunelab.federated.setup import without_flower_lines


@dataclass
class ClientRound:
    client: str
    node_id: int
    status: str  # ok | failed | skipped
    reason: str | None = None
    examples: int = 0
    train_loss: float | None = None
    steps: int = 0
    tokens: int = 0  # the real tokens the client trained on this round (0: a client that does not say)
    seconds: float = 0.0
    bytes_sent: int = 0
    bytes_received: int = 0
    dtype: str | None = None  # what the client trained in, as it replied (None: a client that does not say)
    # the rates its round's first local step ran at, by metrics.jsonl key (lr; lr_B with LoRA+); {}: none said
    rates: dict[str, float] = field(default_factory=dict)


@dataclass
class RoundReport:
    round: int
    sampled: int = 0
    applied: bool = False
    note: str | None = None
    epsilon: float | None = None
    clients: list[ClientRound] = field(default_factory=list)
    not_asked: list[str] = field(default_factory=list)  # the clients fraction < 1 left out of the round, by name

    @property
    def used(self) -> list[ClientRound]:
        return [c for c in self.clients if c.status == "ok"]

    def to_dict(self) -> dict:
        return asdict(self)


def sampled_clients(cfg: FederatedConfig, population: int) -> int:
    """How many clients FedAvg asks each round: max(int(population * fraction), min_clients)."""
    return max(int(population * cfg.fraction), cfg.min_clients)


def build_strategy(cfg: FederatedConfig, population: int) -> tuple[Strategy, RdpAccountant | None]:
    """Flower's strategy for the config, and its privacy accountant when DP is on."""
    if cfg.min_clients > population:
        raise ConfigError(
            f"option 'federated.min_clients' is {cfg.min_clients} but the federation has {population} "
            f"client{'' if population == 1 else 's'}; "
            "lower min_clients or add clients."
        )
    common = {
        # Flower reads fraction_train 0 as "train no client" (min_train_nodes then 0 too): every round did nothing. The
        # option promises at least min_clients a round, which any fraction under 1 / population asks for, since
        # Flower samples max(int(population x fraction), min_train_nodes) clients.
        "fraction_train": cfg.fraction or 1e-9,
        "fraction_evaluate": 0.0,  # the server evaluates the global adapter itself
        "min_train_nodes": cfg.min_clients,
        "min_evaluate_nodes": 0,
        "min_available_nodes": population,
        "weighted_by_key": UNIFORM_WEIGHT if cfg.dp else WEIGHT,
    }
    # Flower warns that fraction_evaluate 0 skips federated evaluation: the server evaluates each round itself
    with without_flower_lines("fraction_evaluate is set to 0.0"):
        if cfg.strategy == "fedprox":
            strategy: Strategy = FedProx(**common, proximal_mu=cfg.proximal_mu)
        else:
            strategy = FedAvg(**common)
    if not cfg.dp:
        return strategy, None
    if cfg.dp_clipping_norm <= 0 or cfg.dp_noise_multiplier <= 0 or not 0 < cfg.dp_delta < 1:
        raise ConfigError(
            "federated.dp needs dp_clipping_norm > 0, dp_noise_multiplier > 0 and 0 < dp_delta < 1 "
            f"(got {cfg.dp_clipping_norm}, {cfg.dp_noise_multiplier}, {cfg.dp_delta})."
        )
    accountant = RdpAccountant(
        PrivacyConfig(
            target_delta=cfg.dp_delta,
            population_size=population,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION,  # sampling is not counted on: a conservative epsilon
        )
    )
    wrapped = DifferentialPrivacyClientSideFixedClipping(
        strategy,
        noise_multiplier=cfg.dp_noise_multiplier,
        clipping_norm=cfg.dp_clipping_norm,
        num_sampled_clients=sampled_clients(cfg, population),
        accountant=accountant,
    )
    return wrapped, accountant


NAME_WAIT = 120.0  # seconds the server waits for the nodes' names (a deployment's ClientApp starts a process each)


class Recorded(Strategy):
    """`inner` with replies checked and every round recorded in `reports` (see the module docstring)."""

    def __init__(
        self,
        inner: Strategy,
        *,
        min_clients: int,
        offset: int,
        rounds: int,
        recipe: str,
        layout: dict[str, tuple[tuple[int, ...], str]],
        accountant: RdpAccountant | None = None,
        warmup: int | None = None,
        round_timeout: float | None = None,
        supernodes: int | None = None,
    ):
        self.inner, self.min_clients, self.offset, self.rounds = inner, min_clients, offset, rounds
        self.supernodes = supernodes  # a deployment's federated.num_clients: the SuperNodes its app was written for
        self.round_timeout = round_timeout  # federated.round_timeout, named in a silent client's reason
        self.warmup = warmup  # the federation's warmup steps, as it started: clients follow it, not rounds x ratio
        self.recipe, self.layout, self.accountant = recipe, layout, accountant
        self.reports: dict[int, RoundReport] = {}
        self.names: dict[int, str] = {}  # node id -> client name, learnt from replies
        self._sent: dict[int, dict[int, int]] = {}
        self._left_out: dict[int, list[int]] = {}  # round -> the connected nodes the strategy did not sample
        self._asked: set[int] = set()  # the nodes asked their name (`ask_names`)

    def _unique(self, name: str, node: int) -> str:
        """The name a SuperNode gave itself, unless another node took it first (two hosts' data files of one name, the
        default name): then with its node id, so that the reports, metrics and plot keep the two apart."""
        if any(other == name for n, other in self.names.items() if n != node):
            return f"{name} (node {node})"
        return name

    def refuse_extra_supernodes(self, grid: Grid) -> None:
        """ConfigError, before anything trains, when more SuperNodes are connected than the app was written for:
        Flower asks a fraction of all connected nodes, so a SuperNode the federation does not count would train and
        be averaged in (and with federated.dp, Flower's accounting for num_clients refuses the round). Checked as
        the federation (or its resume) starts only: later, a SuperNode that reconnects may briefly count twice."""
        connected = len(list(grid.get_node_ids()))
        if connected > self.supernodes:
            raise ConfigError(
                f"{connected} SuperNodes are connected to the SuperLink, but this federation's app was written for "
                f"{self.supernodes} (option 'federated.num_clients' in its pyproject.toml's run config): each "
                "connected SuperNode would train and be averaged in. Stop the SuperNodes that do not belong to it, "
                f"or write the app again with federated.num_clients {connected} (tunelab federate CONFIG --app-dir "
                "DIR --overwrite)."
            )

    def ask_names(self, grid: Grid, nodes: list[int]) -> None:
        """Ask `nodes` their client's name (a QUERY message, which the ClientApp answers without loading anything):
        a client that then fails its round, or never replies, is reported by its name, not as `node-ID`. Each node is
        asked once: one that does not answer within NAME_WAIT seconds (or federated.round_timeout, if shorter) keeps
        `node-ID` until a reply of its own names it, and delays no later round."""
        self._asked.update(nodes)
        asks = [
            Message(RecordDict({CONFIG: ConfigRecord({ASK: "name"})}), dst_node_id=node, message_type=MessageType.QUERY)
            for node in nodes
        ]
        wait = NAME_WAIT if self.round_timeout is None else min(NAME_WAIT, self.round_timeout)
        for reply in grid.send_and_receive(asks, timeout=wait):
            node = reply.metadata.src_node_id
            if not reply.has_error() and CLIENT in reply.content.config_records and node not in self.names:
                self.names[node] = self._unique(str(reply.content[CLIENT]["name"]), node)

    def summary(self) -> None:
        self.inner.summary()

    def stamp(self, config: ConfigRecord, round_: int) -> None:
        """What tunelab adds to a round's train config (payload.py): the round, the rounds, the warmup, the recipe."""
        config[ROUND], config[ROUNDS], config[RECIPE] = round_, self.rounds, self.recipe
        if self.warmup is not None:
            config[WARMUP] = self.warmup

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        round_ = server_round + self.offset
        if server_round == 1 and self.supernodes is not None:
            self.refuse_extra_supernodes(grid)
        self.stamp(config, round_)
        messages = list(self.inner.configure_train(server_round, arrays, config, grid))
        sampled = [m.metadata.dst_node_id for m in messages]
        # every connected node, sampled or not: a round's report names the clients federated.fraction left out
        nodes = list(dict.fromkeys([*sampled, *grid.get_node_ids()]))
        if unasked := [node for node in nodes if node not in self._asked]:
            self.ask_names(grid, unasked)
        self._left_out[round_] = [node for node in nodes if node not in sampled]
        self._sent[round_] = {m.metadata.dst_node_id: payload_bytes(m.content) for m in messages}
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        round_ = server_round + self.offset
        sent = self._sent.pop(round_, {})
        report = RoundReport(round_, sampled=len(sent))
        report.not_asked = sorted(self.names.get(node, f"node-{node}") for node in self._left_out.pop(round_, []))
        usable = []
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error():
                name = self.names.get(node, f"node-{node}")
                report.clients.append(
                    ClientRound(name, node, "failed", reply.error.reason, bytes_sent=sent.get(node, 0))
                )
                continue
            content = reply.content
            name = self.names.get(node) or self._unique(
                str(content[CLIENT]["name"]) if CLIENT in content.config_records else f"node-{node}", node
            )
            self.names[node] = name
            entry = ClientRound(name, node, "ok", bytes_sent=sent.get(node, 0), bytes_received=payload_bytes(content))
            if CLIENT in content.config_records and "dtype" in content[CLIENT]:
                entry.dtype = str(content[CLIENT]["dtype"])
            if CLIENT in content.config_records:  # a client of an earlier version says no rates
                said = content[CLIENT]
                entry.rates = {key: float(said[sent]) for key, sent in RATE_KEYS.items() if sent in said}
            metrics = content.metric_records.get(METRICS)
            if metrics is not None:
                entry.examples = int(metrics.get(WEIGHT, 0))
                entry.train_loss = float(metrics["train-loss"]) if "train-loss" in metrics else None
                entry.steps = int(metrics.get("local-steps", 0))
                entry.tokens = int(metrics.get("tokens", 0))
                entry.seconds = float(metrics.get("train-seconds", 0.0))
            if ARRAYS not in content.array_records or metrics is None:
                entry.status, entry.reason = "skipped", "the reply holds no adapter or no metrics"
            elif (why := mismatch(content[ARRAYS], self.layout)) is not None:
                entry.status, entry.reason = "skipped", f"mismatched adapter: {why}"
            else:
                usable.append(reply)
            report.clients.append(entry)
        for node, size in sent.items():  # sampled, but no reply at all within the round's timeout
            if not any(c.node_id == node for c in report.clients):
                name = self.names.get(node, f"node-{node}")
                waited = f" ({self.round_timeout:g} s)" if self.round_timeout is not None else ""
                why = f"no reply before federated.round_timeout{waited}"
                report.clients.append(ClientRound(name, node, "failed", why, bytes_sent=size))
        self.reports[round_] = report
        if len(usable) < self.min_clients:
            failed = sum(c.status == "failed" for c in report.clients)
            skipped = sum(c.status == "skipped" for c in report.clients)
            report.note = (
                f"{len(usable)} of {report.sampled} clients returned a usable adapter ({failed} failed, {skipped} "
                f"replied with an adapter that does not fit), fewer than federated.min_clients={self.min_clients}: "
                "the global adapter is unchanged this round"
            )
            return None, None
        arrays, metrics = self.inner.aggregate_train(server_round, usable)
        if arrays is None:
            report.note = (
                "the aggregation strategy skipped this round (DP accounting needs every sampled client's update)"
            )
            return None, None
        report.applied = True
        if self.accountant is not None:
            report.epsilon = self.accountant.get_privacy_spent().epsilon
        return arrays, metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(server_round, replies)
