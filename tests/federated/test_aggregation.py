"""The server's side of a round: Flower's FedAvg inside `Recorded`, on replies built by hand."""

import pytest

pytest.importorskip("flwr", reason="the federated extra (flwr) is not installed")

import numpy as np
import torch
from flwr.app import ConfigRecord, Error, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from tunelab.config import FederatedConfig
from tunelab.errors import ConfigError
from tunelab.federated.payload import CLIENT, to_record
from tunelab.federated.rounds import Recorded, build_strategy

KEYS = ("base_model.model.layers.0.q_proj.lora_A.weight", "base_model.model.layers.0.q_proj.lora_B.weight")


def _adapter(seed: int, shape_b=(8, 2)) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {KEYS[0]: torch.randn(2, 6, generator=g), KEYS[1]: torch.randn(*shape_b, generator=g)}


def _reply(message, node: int, name: str, adapter: dict, examples: int, loss: float = 1.0, **client):
    content = RecordDict(
        {
            "arrays": to_record(adapter),
            "metrics": MetricRecord({"num-examples": examples, "uniform-weight": 1, "train-loss": loss}),
            CLIENT: ConfigRecord({"name": name} | client),
        }
    )
    return message(content, dst_node_id=0, src_node_id=node)


def _recorded(inner=None, min_clients=2):
    inner = inner or FedAvg(fraction_evaluate=0.0, min_train_nodes=2, min_available_nodes=2)
    layout = {k: (tuple(v.shape), "float32") for k, v in _adapter(0).items()}
    return Recorded(inner, min_clients=min_clients, offset=0, rounds=1, recipe="", layout=layout)


def test_fedavg_of_known_adapters_is_the_example_weighted_mean(flower_message):
    adapters, examples = [_adapter(1), _adapter(2), _adapter(3)], [10, 30, 60]
    recorded = _recorded()
    replies = [_reply(flower_message, n + 1, f"c{n}", a, e) for n, (a, e) in enumerate(zip(adapters, examples))]
    arrays, _ = recorded.aggregate_train(1, replies)
    total = sum(examples)
    for key in KEYS:
        by_hand = sum(a[key].double() * (e / total) for a, e in zip(adapters, examples))
        np.testing.assert_allclose(arrays[key].numpy(), by_hand.numpy(), rtol=1e-6, atol=1e-7)
    report = recorded.reports[1]
    assert report.applied and [c.client for c in report.clients] == ["c0", "c1", "c2"]
    assert [c.examples for c in report.clients] == examples
    assert all(c.bytes_received > 0 and c.status == "ok" for c in report.clients)


def test_mismatched_and_failed_clients_are_reported_and_the_round_goes_on(flower_message):
    recorded = _recorded()
    good = [_reply(flower_message, 1, "a", _adapter(1), 10), _reply(flower_message, 2, "b", _adapter(2), 30)]
    wrong_rank = _reply(flower_message, 3, "c", _adapter(3, shape_b=(8, 4)), 50)  # r=4 instead of 2
    crashed = flower_message(Error(code=1, reason="ValueError: out of memory"), dst_node_id=0, src_node_id=4)
    arrays, _ = recorded.aggregate_train(1, [*good, wrong_rank, crashed])
    report = recorded.reports[1]
    status = {c.client: (c.status, c.reason) for c in report.clients}
    assert status["c"][0] == "skipped" and "lora_B.weight is float32[8, 4]" in status["c"][1]
    assert status["node-4"] == ("failed", "ValueError: out of memory")
    assert report.applied
    expected = (_adapter(1)[KEYS[1]] * 10 + _adapter(2)[KEYS[1]] * 30) / 40  # only the usable two
    np.testing.assert_allclose(arrays[KEYS[1]].numpy(), expected.numpy(), rtol=1e-6, atol=1e-7)


def test_a_client_that_never_replied_is_told_with_the_timeout_it_missed(flower_message):
    """The reason said "no reply before federated.round_timeout" without its value: the user looked it up."""
    inner = FedAvg(fraction_evaluate=0.0, min_train_nodes=2, min_available_nodes=2)
    layout = {k: (tuple(v.shape), "float32") for k, v in _adapter(0).items()}
    recorded = Recorded(inner, min_clients=1, offset=0, rounds=1, recipe="", layout=layout, round_timeout=90.0)
    recorded._sent[1] = {1: 100, 7: 100}  # what configure_train sent this round: node 7 never replies
    recorded.aggregate_train(1, [_reply(flower_message, 1, "a", _adapter(1), 10)])
    status = {c.client: (c.status, c.reason) for c in recorded.reports[1].clients}
    assert status["node-7"] == ("failed", "no reply before federated.round_timeout (90 s)")


def test_a_mismatched_adapter_is_counted_apart_from_failed_clients(flower_message):
    """metrics.jsonl's clients_failed counted a client that replied with an adapter of other shapes as failed, beside
    those that crashed: a user looked for an error that was a config difference (another method.r on that host)."""
    from tunelab.federated.history import round_records

    recorded = _recorded(min_clients=3)
    good = _reply(flower_message, 1, "a", _adapter(1), 10)
    wrong_rank = _reply(flower_message, 3, "c", _adapter(3, shape_b=(8, 4)), 50)
    crashed = flower_message(Error(code=1, reason="ValueError: out of memory"), dst_node_id=0, src_node_id=4)
    assert recorded.aggregate_train(1, [good, wrong_rank, crashed]) == (None, None)
    report = recorded.reports[1]
    assert "(1 failed, 1 replied with an adapter that does not fit), fewer than" in report.note
    record = round_records(report.to_dict(), None, 1.0)[0]
    assert (record["clients_used"], record["clients_failed"], record["clients_skipped"]) == (1, 1, 1)


def test_each_clients_dtype_is_recorded_as_it_replied(flower_message):
    """run.json named only the server's dtype: a GPU client on model.dtype auto trained in bfloat16 beside a CPU
    server's float32, and nothing said so. The reply names it; a client that does not is recorded as unknown."""
    recorded = _recorded()
    replies = [
        _reply(flower_message, 1, "gpu-site", _adapter(1), 10, dtype="bfloat16"),
        _reply(flower_message, 2, "old-site", _adapter(2), 10),
    ]
    recorded.aggregate_train(1, replies)
    assert [(c.client, c.dtype) for c in recorded.reports[1].clients] == [("gpu-site", "bfloat16"), ("old-site", None)]


def test_two_supernodes_of_one_name_are_kept_apart(flower_message):
    """Two SuperNodes named alike (each host's data file /srv/records.jsonl gives the default name 'records') were one
    client in the reports: two rows of one name a round, one line in the plot, one entry in the client list."""
    recorded = _recorded()
    for round_ in (1, 2):
        replies = [_reply(flower_message, node, "records", _adapter(node), 10) for node in (7, 9)]
        recorded.aggregate_train(round_, replies)
        assert [c.client for c in recorded.reports[round_].clients] == ["records", "records (node 9)"]
    assert sorted(recorded.names.values()) == ["records", "records (node 9)"]


def test_too_few_usable_updates_leave_the_global_adapter_unchanged(flower_message):
    recorded = _recorded(min_clients=2)
    crashed = flower_message(Error(code=1, reason="boom"), dst_node_id=0, src_node_id=2)
    arrays, metrics = recorded.aggregate_train(1, [_reply(flower_message, 1, "a", _adapter(1), 10), crashed])
    assert arrays is None and metrics is None
    report = recorded.reports[1]
    assert not report.applied and "fewer than federated.min_clients=2" in report.note


def test_strategy_choice_and_dp_wrapper():
    strategy, accountant = build_strategy(FederatedConfig(strategy="fedprox", proximal_mu=0.1, min_clients=2), 3)
    assert type(strategy).__name__ == "FedProx" and strategy.proximal_mu == 0.1 and accountant is None
    assert strategy.weighted_by_key == "num-examples"
    pytest.importorskip("dp_accounting")
    strategy, accountant = build_strategy(FederatedConfig(dp=True, min_clients=2), 3)
    assert type(strategy).__name__ == "DifferentialPrivacyClientSideFixedClipping"
    assert strategy.strategy.weighted_by_key == "uniform-weight" and strategy.num_sampled_clients == 3
    with pytest.raises(ConfigError, match="min_clients"):
        build_strategy(FederatedConfig(min_clients=4), 3)


class _Grid:
    """What FedAvg's sampling asks of a Grid, and nodes that answer the server's question of their name (None: a node
    that never answers)."""

    def __init__(self, message, names=None):
        self.message, self.names = message, names or {1: "a", 2: "b"}
        self.asked: list[tuple[int, str]] = []

    def get_node_ids(self):
        return list(self.names)

    def send_and_receive(self, messages, *, timeout=None):
        replies = []
        for m in messages:
            node = m.metadata.dst_node_id
            self.asked.append((node, m.metadata.message_type))
            if self.names[node] is not None:
                content = RecordDict({CLIENT: ConfigRecord({"name": self.names[node]})})
                replies.append(self.message(content, dst_node_id=0, src_node_id=node))
        return replies


def test_dp_round_adds_noise_and_reports_epsilon(flower_task, flower_message):
    pytest.importorskip("dp_accounting")
    cfg = FederatedConfig(dp=True, min_clients=2, dp_noise_multiplier=1.0, dp_clipping_norm=0.5)
    inner, accountant = build_strategy(cfg, 2)
    layout = {k: (tuple(v.shape), "float32") for k, v in _adapter(0).items()}
    recorded = Recorded(inner, min_clients=2, offset=0, rounds=1, recipe="r", layout=layout, accountant=accountant)
    messages = list(recorded.configure_train(1, to_record(_adapter(0)), ConfigRecord(), _Grid(flower_message)))
    assert [m.content["config"]["clipping_norm"] for m in messages] == [0.5, 0.5]  # what fixedclipping_mod reads
    arrays, _ = recorded.aggregate_train(
        1, [_reply(flower_message, 1, "a", _adapter(1), 10), _reply(flower_message, 2, "b", _adapter(2), 30)]
    )
    mean = (_adapter(1)[KEYS[0]] + _adapter(2)[KEYS[0]]) / 2  # DP weighs clients equally
    noise = arrays[KEYS[0]].numpy() - mean.numpy()
    assert 0.1 < noise.std() < 0.5  # stdv = noise_multiplier * clipping_norm / clients = 0.25
    report = recorded.reports[1]
    assert report.epsilon is not None and report.epsilon > 0
    assert report.epsilon == pytest.approx(accountant.get_privacy_spent().epsilon)


class _Three:
    def get_node_ids(self):
        return [1, 2, 3]


def test_fraction_zero_asks_min_clients_each_round(flower_task):
    """Flower reads fraction_train 0 as "train no client": each round asked no one and the global adapter never
    changed, though the option promises at least min_clients clients a round."""
    strategy, _ = build_strategy(FederatedConfig(fraction=0.0, min_clients=2), 3)
    messages = list(strategy.configure_train(1, to_record(_adapter(0)), ConfigRecord(), _Three()))
    assert len(messages) == 2


def test_a_client_that_fails_before_it_ever_replied_is_named_as_the_user_knows_it(flower_task, flower_message):
    """A client that failed its first round (its data unreadable on its host, out of memory), or never replied, was
    reported as node-4785329, Flower's node id, which no user knows: the server learnt names only from replies that
    trained. It asks each node its name before the node first trains now, once."""
    grid = _Grid(flower_message, {11: "north", 12: "south", 13: "east", 14: None})
    layout = {k: (tuple(v.shape), "float32") for k, v in _adapter(0).items()}
    inner = FedAvg(fraction_evaluate=0.0, min_train_nodes=1, min_available_nodes=4)
    recorded = Recorded(inner, min_clients=1, offset=0, rounds=2, recipe="r", layout=layout, round_timeout=30.0)
    for round_ in (1, 2):
        messages = list(recorded.configure_train(round_, to_record(_adapter(0)), ConfigRecord(), grid))
        assert len(messages) == 4
        crashed = flower_message(Error(code=2, reason="DataError: south.jsonl: gone"), dst_node_id=0, src_node_id=12)
        recorded.aggregate_train(round_, [_reply(flower_message, 11, "north", _adapter(1), 10), crashed])
        status = {c.client: (c.status, c.reason) for c in recorded.reports[round_].clients}
        assert status["south"] == ("failed", "DataError: south.jsonl: gone")
        assert status["east"] == ("failed", "no reply before federated.round_timeout (30 s)")
        assert status["node-14"][0] == "failed"  # it answered nothing, not even its name
    asked = sorted(node for node, kind in grid.asked if kind == "query")
    assert asked == [11, 12, 13, 14]  # once each: one that never answers delays no later round


def test_more_supernodes_than_the_app_was_written_for_are_refused_before_anything_trains(flower_task, flower_message):
    """An app written for federated.num_clients 2 ran with a third SuperNode connected: Flower asked it too, and its
    update was averaged in (with federated.dp the round failed inside Flower: 'sample size does not match'). The
    federation is refused before round 1 now, with both numbers and the option; a count that fits starts."""
    layout = {k: (tuple(v.shape), "float32") for k, v in _adapter(0).items()}
    grid = _Grid(flower_message, {1: "a", 2: "b", 3: "stranger"})
    inner = FedAvg(fraction_evaluate=0.0, min_train_nodes=2, min_available_nodes=2)
    recorded = Recorded(inner, min_clients=2, offset=0, rounds=1, recipe="r", layout=layout, supernodes=2)
    with pytest.raises(
        ConfigError, match=r"^3 SuperNodes are connected .* written for 2 \(option 'federated.num_clients'"
    ):
        recorded.configure_train(1, to_record(_adapter(0)), ConfigRecord(), grid)
    assert grid.asked == []  # nothing was sent
    recorded = Recorded(inner, min_clients=2, offset=0, rounds=1, recipe="r", layout=layout, supernodes=3)
    assert len(list(recorded.configure_train(1, to_record(_adapter(0)), ConfigRecord(), grid))) == 3


def test_the_clients_a_sampled_round_left_out_are_named(flower_task, flower_message):
    """With federated.fraction below 1 a round's report named the clients asked and nothing of the others: a user
    could not tell a client left out by the draw from one that was lost."""
    from tunelab.federated.history import round_records
    from tunelab.federated.server import _line

    grid = _Grid(flower_message, {11: "north", 12: "south", 13: "east"})
    inner, _ = build_strategy(FederatedConfig(fraction=0.34, min_clients=1), 3)
    layout = {k: (tuple(v.shape), "float32") for k, v in _adapter(0).items()}
    recorded = Recorded(inner, min_clients=1, offset=0, rounds=1, recipe="r", layout=layout)
    messages = list(recorded.configure_train(1, to_record(_adapter(0)), ConfigRecord(), grid))
    assert len(messages) == 1
    asked = messages[0].metadata.dst_node_id
    recorded.aggregate_train(1, [_reply(flower_message, asked, grid.names[asked], _adapter(1), 10)])
    report = recorded.reports[1]
    left_out = sorted(name for node, name in grid.names.items() if node != asked)
    assert report.not_asked == left_out and [c.client for c in report.clients] == [grid.names[asked]]
    assert f"not asked: {', '.join(left_out)}" in _line(report, 1, None)
    assert round_records(report.to_dict(), None, 1.0)[0]["not_asked"] == left_out


def test_a_round_line_names_the_clients_in_one_order_every_round():
    """Each round's line listed the clients in the order their replies came ('client-2 ... client-1 ... client-3',
    then 'client-1 ... client-3 ... client-2'): reading a client's loss down the rounds meant hunting for it."""
    from tunelab.federated.rounds import ClientRound, RoundReport
    from tunelab.federated.server import _line

    replies = [ClientRound(name, n, "ok", examples=3, train_loss=1.0) for n, name in enumerate(("c-2", "c-10", "c-1"))]
    line = _line(RoundReport(1, sampled=3, applied=True, clients=replies), 2, 0.5)
    assert line.index("c-1:") < line.index("c-2:") < line.index("c-10:")


def test_each_clients_rates_reach_its_metrics_record(flower_message):
    """metrics.jsonl's record of a client and round holds the rates it replied (lr; lr_B with LoRA+); a reply or a
    federated.json from before them has none."""
    from tunelab.federated.history import round_records

    recorded = _recorded()
    plus = _reply(flower_message, 1, "a", _adapter(1), 10, **{"lr": 5e-4, "lr-B": 8e-3})
    older = _reply(flower_message, 2, "b", _adapter(2), 30)
    recorded.aggregate_train(1, [plus, older])
    report = recorded.reports[1].to_dict()
    by_client = {r["client"]: r for r in round_records(report, None, 1.0)[1:]}
    assert (by_client["a"]["lr"], by_client["a"]["lr_B"]) == (5e-4, 8e-3)
    assert "lr" not in by_client["b"] and "lr_B" not in by_client["b"]
    for c in report["clients"]:
        del c["rates"]  # a federated.json written before the clients replied their rates
    assert not any("lr" in r for r in round_records(report, None, 1.0))
