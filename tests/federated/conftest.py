"""Helpers for the federated tests: Flower messages built without a running federation."""

import json
import time
from pathlib import Path

import pytest
import yaml


def message(content, dst_node_id: int, src_node_id: int = 0, message_id: str = "m"):
    """A Flower message with explicit metadata (no Flower run needed)."""
    from flwr.app import Message, MessageType, Metadata

    metadata = Metadata(
        run_id=1,
        message_id=message_id,
        src_node_id=src_node_id,
        dst_node_id=dst_node_id,
        reply_to_message_id="",
        group_id="",
        created_at=time.time(),
        ttl=3600.0,
        message_type=MessageType.TRAIN,
    )
    return Message(content, metadata=metadata)


@pytest.fixture
def flower_task(monkeypatch):
    """The identity Flower's messages are stamped with inside a run (a strategy builds messages from it)."""
    from flwr.supercore.task_identity import TaskIdentity

    for name, value in (("_run_id", 1), ("_task_id", 1), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, name, value)


@pytest.fixture
def flower_message():
    """`message(content, dst_node_id, src_node_id=0)`: a Flower message outside a run."""
    return message


def _rows(start: int, stop: int) -> str:
    return "".join(
        json.dumps({"question": f"What is the code of box {i}?", "answer": f"Box {i} has code {1000 + 37 * i}."}) + "\n"
        for i in range(start, stop)
    )


def write_federate_config(folder: Path, model_dir: Path, clients: int = 2, **federated) -> Path:
    for i in range(clients):
        (folder / f"site{i}.jsonl").write_text(_rows(12 * i, 12 * i + 12))
    (folder / "server_eval.jsonl").write_text(_rows(100, 106))
    config = {
        "output_dir": str(folder / "run"),
        "model": {"name": str(model_dir)},
        "data": {"eval": "server_eval.jsonl", "system_prompt": "You answer box questions.", "max_length": 64},
        "method": {"r": 4},
        "train": {"micro_batch": 4, "lr": 1e-3},
        "federated": {"clients": [f"site{i}.jsonl" for i in range(clients)], "rounds": 2, "local_steps": 3} | federated,
    }
    path = folder / "federate.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def federate_config():
    """`federate_config(folder, model_dir, clients=2, **federated)`: client files, a server eval file and a
    federate.yaml in `folder` (the run goes to folder/run); returns the YAML's path."""
    return write_federate_config


@pytest.fixture(scope="module")
def federate_config_module():
    return write_federate_config


@pytest.fixture(scope="session")
def zero_row_model_dir(tmp_path_factory, tiny_model_dir):
    """The tiny model with a zero embedding row for <|im_start|>, the first token of every chat example, as a base
    never trained on that token holds it (models/untrained.py): (its folder, the token's id)."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    im_start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    with torch.no_grad():
        model.model.embed_tokens.weight[im_start] = 0.0
    path = tmp_path_factory.mktemp("zero-row-llama")
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path, im_start


def _applied(recorded, r: int) -> None:
    """Round r (after the start's evaluation, r = 0) as two clients' applied updates, the global adapter unchanged:
    a federation in which no round applied one fails."""
    from tunelab.federated.rounds import ClientRound, RoundReport

    if r:
        ok = [ClientRound(f"site{i}", i, "ok", examples=3, train_loss=2.0) for i in range(2)]
        recorded.reports[r + recorded.offset] = RoundReport(r + recorded.offset, sampled=2, applied=True, clients=ok)


@pytest.fixture
def applied_round():
    """`applied_round(recorded, r)`: round r recorded as two clients' applied updates (r = 0: nothing)."""
    return _applied


def _without_clients(patch: pytest.MonkeyPatch) -> None:
    import tunelab.federated.run as federated_run
    from tunelab.federated import rounds

    def start(self, *, grid, initial_arrays, num_rounds, timeout, evaluate_fn):
        for r in range(num_rounds + 1):
            _applied(self, r)
            evaluate_fn(r, initial_arrays)

    patch.setattr(rounds.Recorded, "start", start)

    def simulate(*args, **kwargs):
        raise AssertionError("a federation was started in the test process")

    patch.setattr(federated_run, "simulate", simulate)


@pytest.fixture
def rounds_without_clients(monkeypatch):
    """The ServerApp's rounds without Flower's transport: `Recorded.start` replaced by calls of the server's
    per-round callback with the global adapter unchanged, as Flower makes them (round 0 first), each round applied;
    `simulate` fails the test if it is reached."""
    _without_clients(monkeypatch)


def _federate_once(folder: Path, model_dir: Path, overrides: dict) -> tuple[Path, str]:
    import contextlib
    import io

    from tunelab.config import load_config
    from tunelab.federated.server import run_federation

    config = load_config(write_federate_config(folder, model_dir), overrides)
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(out):
        _without_clients(patch)
        run = run_federation(None, config, 2, ["site0", "site1"], resume=False)
    return run, out.getvalue()


@pytest.fixture(scope="session")
def federate_once():
    """`federate_once(folder, model_dir, overrides)`: the federation of federate_config's two clients in `folder`,
    its rounds as rounds_without_clients runs them, with `overrides` on top: (its run directory, what it printed), for
    a run that a module-scoped fixture makes once for the tests that only read it."""
    return _federate_once
