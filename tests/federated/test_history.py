"""A federation's metrics.jsonl records as history.py writes them, held to the keys its docstring and the README name."""

import re
from pathlib import Path

import tunelab.federated.history as history
from tunelab.federated.history import round_records

README = Path(__file__).resolve().parents[2] / "README.md"


def _client(name: str, status: str = "ok", **extra) -> dict:
    """A client's entry of a round's report as federated.json holds it (rounds.py ClientRound.to_dict)."""
    return {
        "client": name,
        "node_id": 1,
        "status": status,
        "reason": None if status == "ok" else "RuntimeError: out of memory",
        "examples": 12,
        "train_loss": 1.5 if status == "ok" else None,
        "steps": 2,
        "tokens": 480,
        "seconds": 3.0,
        "bytes_sent": 100,
        "bytes_received": 100 if status == "ok" else 0,
        "dtype": "float32",
        "rates": {},
    } | extra


def _written() -> tuple[set[str], set[str]]:
    """The keys of a round's record and of a client's record, a LoRA+ client's rates among them."""
    report = {
        "round": 1,
        "sampled": 2,
        "applied": True,
        "note": None,
        "epsilon": None,
        "clients": [_client("north", rates={"lr": 1e-3, "lr_B": 1.6e-2}), _client("south", "failed")],
        "not_asked": [],
    }
    first, *clients = round_records(report, 0.9, 12.0)
    return set(first) | {"step", "round", "eval_loss"}, set().union(*clients)  # round 0's: the base model's eval loss


def _halves(text: str, start: str, end: str, pattern: str) -> tuple[set[str], set[str]]:
    """The names `pattern` finds from `start` to `end` of `text`, before and after 'per client and round'."""
    part = text[text.index(start) : text.index(end, text.index(start))]
    rounds, clients = part.split("per client and round")
    return set(re.findall(pattern, rounds)), set(re.findall(pattern, clients))


def test_every_key_of_the_metrics_records_is_documented():
    """The round records' `applied` and `elapsed_s` and the client records' `lr`, `lr_B` (history.py) and `reason`
    (README) were written into metrics.jsonl but not named where its keys are listed."""
    rounds, clients = _written()
    assert {"applied", "elapsed_s"} <= rounds and {"lr", "lr_B", "tokens", "reason"} <= clients
    docstring = _halves(history.__doc__, "metrics.jsonl ", "federated.png ", r'"(\w+)"')
    assert docstring == (rounds, clients)
    readme = _halves(README.read_text(), "It also holds `metrics.jsonl`", "`federated.png`", r"`(\w+)`")
    assert readme == (rounds, clients)
