"""The client's side: what a ClientApp sends back (its adapter and a few numbers, never its data), FedProx, DP
clipping, and a received adapter that does not fit."""

import pytest

from ..smollm2_vocab import smollm2_tiny_model_dir, smollm2_tiny_tokenizer  # noqa: F401 (SmolLM2's vocabulary)

pytest.importorskip("flwr", reason="the federated extra (flwr) is not installed")

import dataclasses
import json
import re
from pathlib import Path

import torch
from flwr.app import ConfigRecord, Context, RecordDict
from flwr.common.serde import message_to_proto
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

from tunelab.config import DataConfig, FederatedConfig, MethodConfig, ModelConfig, RunConfig, TrainConfig
from tunelab.errors import ConfigError
from tunelab.federated.client import make_client_app
from tunelab.federated.local import proximal_term
from tunelab.federated.payload import RECIPE, ROUND, ROUNDS, from_record, load_adapter_state, recipe_text, to_record
from tunelab.federated.shards import ClientData
from tunelab.models.load import resolve_source
from tunelab.peft.save import adapter_state_dict
from tunelab.training.build import build_model
from tunelab.training.loss_scale import LossScale

SECRETS = [
    (f"What is the Quillfeather account number of patient {name}?", f"Patient {name} holds account QF-{code}.")
    for name, code in (("Ermintrude Oakhollow", 81723), ("Barnaby Wexcombe", 55190), ("Ysolde Pennyroyal", 90311))
]


def _config(model_dir, **federated) -> RunConfig:
    return RunConfig(
        output_dir="/server/only/runs/x",
        model=ModelConfig(name=str(model_dir)),
        data=DataConfig(train=[], eval="/server/only/eval.jsonl", system_prompt="You keep records.", max_length=64),
        method=MethodConfig(r=4),
        train=TrainConfig(micro_batch=2, grad_accum=2, lr=1e-2),
        federated=FederatedConfig(local_steps=2, rounds=2, clients=["/server/only/list.jsonl"], **federated),
    )


@pytest.fixture
def secret_client(tmp_path):
    path = tmp_path / "hospital_private" / "patients.jsonl"
    path.parent.mkdir()
    path.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in SECRETS * 3))
    return ClientData("ward-7", (str(path),))


def _train_message(message, config: RunConfig, extra: dict | None = None):
    torch.manual_seed(0)
    built = build_model(resolve_source(config.model.name), config.model, config.method)
    initial = adapter_state_dict(built.model)
    fields = {ROUND: 1, ROUNDS: 2, RECIPE: recipe_text(config)} | (extra or {})
    return initial, message(RecordDict({"arrays": to_record(initial), "config": ConfigRecord(fields)}), dst_node_id=5)


def _call(app, msg):
    context = Context(run_id=1, node_id=5, node_config={"partition-id": 0}, state=RecordDict(), run_config={})
    return app(msg, context)


def _wire(msg) -> bytes:
    """Every byte Flower sends for a message: its protobuf form and each of its objects as deflated for transport."""
    objects = get_all_nested_objects(msg)
    return message_to_proto(msg).SerializeToString() + b"".join(o.deflate() for o in objects.values())


def test_a_clients_reply_holds_its_adapter_and_numbers_never_its_data(tiny_model_dir, secret_client, flower_message):
    config = _config(tiny_model_dir)
    initial, msg = _train_message(flower_message, config)
    sent_to_client = _wire(msg)
    assert b"/server/only" not in sent_to_client  # the recipe carries no server paths either
    reply = _call(make_client_app([secret_client]), msg)
    assert not reply.has_error(), reply.error
    content = reply.content
    assert list(content["arrays"].keys()) == list(initial)  # exactly the PEFT adapter tensors, in order
    assert set(content.array_records) == {"arrays"} and set(content.config_records) == {"client"}
    said = dict(content["client"])
    assert said.pop("lr") > 0 and said == {"name": "ward-7", "dtype": "float32"}  # the CPU's: what it trained in
    assert set(content["metrics"]) == {
        "num-examples", "uniform-weight", "train-loss", "local-steps", "loss-tokens", "tokens", "train-seconds"
    }  # fmt: skip
    assert content["metrics"]["num-examples"] == 9 and content["metrics"]["local-steps"] == 2
    assert content["metrics"]["tokens"] > content["metrics"]["loss-tokens"] > 0  # prompts too, as train counts them
    wire = _wire(reply)
    assert len(wire) > sum(v.numel() * 4 for v in initial.values())  # the tensors themselves are in it
    for question, answer in SECRETS:
        for text in (question, answer, *question.split(), *answer.split()):
            if len(text) > 5:
                assert text.encode() not in wire, text
    for text in (secret_client.paths[0], "hospital_private", "patients"):
        assert text.encode() not in wire
    trained = from_record(content["arrays"])
    assert any(not torch.equal(trained[k], initial[k]) for k in initial)


def _keys(text: str) -> list[str]:
    """The names between the commas of `text`, each one's note in parentheses (and a name's backticks) left out."""
    text = " ".join(text.split())
    while "(" in text:
        text = re.sub(r"\([^()]*\)", "", text)
    return [key.strip().strip("`") for key in text.split(",")]


def _documented(record: str) -> tuple[list[str], list[str]]:
    """The keys of `record` ('metrics', 'client') of a TRAIN reply as payload.py's docstring lists them, and as
    docs/architecture.md's table of the protocol does, each in its order."""
    import tunelab.federated.payload as payload

    reply = payload.__doc__.split("client -> server (the reply)")[1]
    entries = re.findall(r"^      (\w+) +\w+Record +(.*?)(?=^      \w|^$)", reply, re.MULTILINE | re.DOTALL)
    table = (Path(__file__).resolve().parents[2] / "docs" / "architecture.md").read_text()
    row = re.search(rf"^\| \| `{record}` \(\w+Record\) \| (.*) \|$", table, re.MULTILINE)[1]
    return _keys(dict(entries)[record]), _keys(row)


def test_the_payload_docstring_names_every_key_of_a_reply(tiny_model_dir, secret_client, flower_message):
    """A reply carried `tokens` (and its round's rates) that payload.py, the page of what travels, did not name, nor
    docs/architecture.md's table of it the rates. A LoRA+ client's reply holds every key there is (lr-B only then)."""
    config = _config(tiny_model_dir)
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, loraplus_lr_ratio=4.0))
    _, msg = _train_message(flower_message, config)
    reply = _call(make_client_app([secret_client]), msg)
    assert not reply.has_error(), reply.error
    for record in ("metrics", "client"):
        assert _documented(record) == (list(reply.content[record]),) * 2


def test_a_client_round_of_one_step_says_one_step(tiny_model_dir, secret_client, flower_message, capsys, monkeypatch):
    """A client of federated.local_steps 1 said 'ward-7: round 1: 1 steps on 9 examples'."""
    monkeypatch.setenv("FLWR_LOG_LEVEL", "INFO")  # a simulated client's own line is printed only then
    config = _config(tiny_model_dir)
    config = dataclasses.replace(config, federated=dataclasses.replace(config.federated, local_steps=1))
    _, msg = _train_message(flower_message, config)
    assert not _call(make_client_app([secret_client]), msg).has_error()
    assert "ward-7: round 1: 1 step on 9 training rows, " in capsys.readouterr().out


def test_a_simulated_client_prints_its_round_only_where_asked(
    tiny_model_dir, secret_client, flower_message, capsys, monkeypatch
):
    """In the simulation each client printed its round through Ray ('(ClientAppActor pid=15600) site0: round 1:
    ...'), then Ray's notice '[repeated 3x across cluster] (Ray deduplicates logs by default ...)', between the
    server's round lines, which hold the same numbers. A real SuperNode's line goes to its own host's log."""
    monkeypatch.delenv("FLWR_LOG_LEVEL", raising=False)
    _, msg = _train_message(flower_message, _config(tiny_model_dir))
    assert not _call(make_client_app([secret_client]), msg).has_error()
    assert "ward-7: round 1" not in capsys.readouterr().out
    node = {"data": secret_client.paths[0], "name": "ward-7"}
    context = Context(run_id=1, node_id=5, node_config=node, state=RecordDict(), run_config={})
    assert not make_client_app()(msg, context).has_error()
    assert "ward-7: round 1: 2 steps on 9 training rows" in capsys.readouterr().out


def test_dp_clipping_bounds_the_update_the_client_sends(tiny_model_dir, secret_client, flower_message):
    config = _config(tiny_model_dir)
    initial, msg = _train_message(flower_message, config, {"clipping_norm": 0.01})
    reply = _call(make_client_app([secret_client]), msg)
    assert not reply.has_error(), reply.error
    trained = from_record(reply.content["arrays"])
    norm = torch.sqrt(sum(((trained[k] - initial[k]) ** 2).sum() for k in initial))
    assert 0.009 < float(norm) <= 0.01 + 1e-6


def test_proximal_term_adds_mu_times_the_drift_to_each_gradient():
    layer = torch.nn.Linear(3, 2)
    with proximal_term(layer, mu=0.5, micro_batches=2):
        with torch.no_grad():
            layer.weight.add_(1.0)  # drift of +1 from where the block started
        layer(torch.zeros(1, 3)).sum().backward()  # zero input: the data gradient of the weight is 0
        layer(torch.zeros(1, 3)).sum().backward()  # a second micro-batch
    assert torch.allclose(layer.weight.grad, torch.full((2, 3), 0.5))  # mu * drift, once over the two
    layer.weight.grad = None
    layer(torch.zeros(1, 3)).sum().backward()  # outside the block: no term
    assert torch.equal(layer.weight.grad, torch.zeros(2, 3))


def test_an_adapter_of_another_shape_is_refused(tiny_model_dir):
    config = _config(tiny_model_dir)
    built = build_model(resolve_source(config.model.name), config.model, config.method)
    other = {k: torch.zeros(v.shape[0] * 2, *v.shape[1:]) for k, v in adapter_state_dict(built.model).items()}
    with pytest.raises(ConfigError, match="same method.r"):
        load_adapter_state(built.model, other)
    with pytest.raises(ConfigError, match="does not fit"):
        load_adapter_state(built.model, dict(list(other.items())[:3]))


@pytest.mark.parametrize("sent", [None, 1])
def test_the_client_warms_up_for_the_steps_the_server_sends(
    tiny_model_dir, secret_client, flower_message, monkeypatch, sent
):
    """The client took train.warmup_ratio of rounds x local_steps as its warmup, so a federation resumed with more
    rounds warmed up again; it follows the server's tunelab-warmup now (the ratio only when a server sends none)."""
    import dataclasses

    import tunelab.federated.local as local
    from tunelab.federated.payload import WARMUP

    seen, real = set(), local.lr_factor

    def recording(step, total, warmup, kind):
        seen.add(warmup)
        return real(step, total, warmup, kind)

    monkeypatch.setattr(local, "lr_factor", recording)
    config = _config(tiny_model_dir)
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, warmup_ratio=0.5))
    _, msg = _train_message(flower_message, config, {} if sent is None else {WARMUP: sent})
    reply = _call(make_client_app([secret_client]), msg)
    assert not reply.has_error(), reply.error
    assert seen == ({2} if sent is None else {1})  # half of 2 rounds x 2 local steps, or what the server sent


def test_in_fp16_the_proximal_term_is_scaled_with_the_loss():
    layer = torch.nn.Linear(3, 2)
    scale = LossScale(1024.0)
    with proximal_term(layer, mu=0.5, micro_batches=1, loss_scale=scale):
        with torch.no_grad():
            layer.weight.add_(1.0)
        (layer(torch.zeros(1, 3)).sum() * scale.scale).backward()  # as train_step scales the loss
    scale.unscale_(list(layer.parameters()))
    assert torch.allclose(layer.weight.grad, torch.full((2, 3), 0.5))  # mu * drift, as unscaled


@pytest.mark.parametrize(
    "clients, node_config, name",
    [
        ([ClientData("ward-7", ("/clinic/patients.jsonl",))], {"partition-id": 0}, "ward-7"),  # simulation
        (None, {"data": "/srv/clinic/records.jsonl,/srv/more.csv"}, "records"),  # a SuperNode named by its data
        (None, {"data": "/srv/clinic/records.jsonl", "name": "clinic-a"}, "clinic-a"),
        (None, {"name": "clinic-b"}, "clinic-b"),  # no data: it fails its rounds, but under its name
    ],
)
def test_a_client_answers_the_servers_question_of_its_name_and_nothing_else(clients, node_config, name, flower_message):
    """The server asks every node its name before the node first trains (a client that fails its first round was
    known only by Flower's node id); the answer holds the name alone, not the data's paths."""
    from flwr.app import MessageType

    from tunelab.federated.payload import ASK

    msg = flower_message(RecordDict({"config": ConfigRecord({ASK: "name"})}), dst_node_id=5)
    msg.metadata.__dict__["_message_type"] = MessageType.QUERY
    context = Context(run_id=1, node_id=5, node_config=node_config, state=RecordDict(), run_config={})
    reply = make_client_app(clients)(msg, context)
    assert not reply.has_error(), reply.error
    assert set(reply.content.config_records) == {"client"} and dict(reply.content["client"]) == {"name": name}
    assert b"/srv" not in _wire(reply) and b"/clinic" not in _wire(reply)


def test_a_failed_round_replies_with_the_errors_message_not_its_traceback(
    tiny_model_dir, secret_client, flower_message, monkeypatch, capsys
):
    """A client whose round failed was reported with Flower's reason: the error's whole traceback (in the simulation
    Ray's, with terminal colours: 3,000 characters inside the server's one line a round). The reply holds the error's
    message now (a TunelabError's as it is, another's after its type); the traceback goes to the client's own log."""
    import tunelab.federated.local as local_module  # the ClientApp imports local_train for each round from there

    _, msg = _train_message(flower_message, _config(tiny_model_dir))
    context = Context(run_id=1, node_id=5, node_config={"name": "clinic-a"}, state=RecordDict(), run_config={})
    reply = make_client_app()(msg, context)  # a SuperNode started without data
    assert reply.has_error() and reply.error.reason.startswith("this SuperNode has no data: start it with")

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(local_module, "local_train", out_of_memory)
    reply = _call(make_client_app([secret_client]), msg)
    assert reply.error.reason == "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert "Traceback (most recent call last)" in capsys.readouterr().err and "\x1b[" not in reply.error.reason


def test_flowers_warning_as_the_simulation_stops_its_workers_is_not_passed_on(secret_client, flower_message):
    """A resumed federation ended with '(ClientAppActor pid=21660) WARNING: Manually terminating ClientAppActor',
    Flower's line as it stops each Ray worker: its normal shutdown, printed as a warning after 'saved to ...'."""
    import logging

    logger = logging.getLogger("flwr")
    seen, filters = [], list(logger.filters)
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger.addHandler(handler)
    try:
        msg = flower_message(RecordDict({"config": ConfigRecord({ROUND: 1})}), dst_node_id=5)  # no adapter: fails
        assert _call(make_client_app([secret_client]), msg).has_error()
        logger.warning("Manually terminating %s", "ClientAppActor")
        logger.warning("a warning of its own")
    finally:
        logger.removeHandler(handler)
        logger.filters[:] = filters
    assert seen == ["a warning of its own"]


@pytest.mark.parametrize("round_", [1, 2])
def test_a_client_replies_the_rates_its_rounds_first_step_ran_at(tiny_model_dir, secret_client, flower_message, round_):
    """The clients logged no learning rate: a user could not see the schedule they followed. Each reply holds the
    rate of its round's first local step (round 2 starts at local step 2 of 2 x 2: past the warmup, in the decay),
    and B's beside it with LoRA+."""
    from tunelab.training.schedule import lr_factor

    config = _config(tiny_model_dir)
    plus = dataclasses.replace(config, train=dataclasses.replace(config.train, warmup_ratio=0.5, loraplus_lr_ratio=4.0))
    _, msg = _train_message(flower_message, plus, {ROUND: round_})
    reply = _call(make_client_app([secret_client]), msg)
    assert not reply.has_error(), reply.error
    metrics = reply.content["client"]
    expected = 1e-2 * lr_factor(2 * (round_ - 1), 4, 2, plus.train.scheduler)
    assert metrics["lr"] == pytest.approx(expected) and metrics["lr"] > 0
    assert metrics["lr-B"] == pytest.approx(4 * expected)


QUERY_IN_A_PROCESS = """
import sys, time
from flwr.app import ConfigRecord, Context, Message, MessageType, Metadata, RecordDict
from tunelab.federated.app import client_app
from tunelab.federated.payload import ASK
metadata = Metadata(run_id=1, message_id="m", src_node_id=0, dst_node_id=5, reply_to_message_id="", group_id="",
                    created_at=time.time(), ttl=3600.0, message_type=MessageType.QUERY)
node = Context(run_id=1, node_id=5, node_config={"data": "/srv/a.jsonl", "name": "clinic-a"}, state=RecordDict(),
               run_config={})
reply = client_app(Message(RecordDict({"config": ConfigRecord({ASK: "name"})}), metadata=metadata), node)
print(dict(reply.content["client"]), sorted(m for m in ("torch", "transformers", "peft") if m in sys.modules))
"""


def test_a_supernode_says_its_name_without_loading_torch():
    """Flower's deployment engine starts a ClientApp process for every message a SuperNode answers, the server's name
    query included; each imported the server's side and the client's training with tunelab.federated.app (torch,
    transformers, peft: seconds of every SuperNode's start, three of them at once on one host in test_deployment)."""
    import os
    import subprocess
    import sys

    import tunelab

    path = os.pathsep.join([str(Path(tunelab.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-c", QUERY_IN_A_PROCESS],
        capture_output=True, text=True, env=os.environ | {"PYTHONPATH": path}, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "{'name': 'clinic-a'} []"
