"""A federation's metrics.jsonl records as history.py writes them, held to the keys its docstring and the README name,
and federated.png's learning-rate panel, drawn from them."""

import json
import re
from pathlib import Path

import pytest

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


def _run(tmp_path, rates: list[dict]) -> Path:
    """A run directory whose metrics.jsonl holds len(rates) rounds of two clients, each replying its round's rates."""
    run = tmp_path / "run"
    run.mkdir(parents=True)
    lines, reports = [], []
    for r, said in enumerate(rates, start=1):
        clients = [_client(name, rates=said) for name in ("north", "south")]
        reports.append({"round": r, "applied": True, "epsilon": None, "clients": clients, "not_asked": []})
        lines += round_records(reports[-1], 1.0 / r, 10.0 * r)
    (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    state = {"rounds_done": len(rates), "rounds": len(rates), "local_steps": 2, "strategy": "fedavg"}
    history.write_state(run, state | {"clients": ["north", "south"], "history": reports})
    return run


def _rate_axis(run: Path):
    from tunelab.training.metrics import read_metrics

    fig = history._figure(read_metrics(run))
    return [ax for ax in fig.axes if ax.get_ylabel().startswith("learning rate")]


def test_federated_png_draws_the_rate_each_round_started_at(tmp_path):
    """metrics.jsonl held each client's lr and lr_B by round, but federated.png drew losses and bytes alone. The rate
    panel draws the recorded values, one point a round (the clients share the schedule), lr_B beside lr on a log
    axis as the report's learning-rate plot draws a LoRA+ run."""
    rates = [{"lr": 1e-3 * (1 - r / 4), "lr_B": 1.6e-2 * (1 - r / 4)} for r in range(3)]
    run = _run(tmp_path, rates)
    (ax,) = _rate_axis(run)
    drawn = {line.get_label(): list(zip(line.get_xdata(), line.get_ydata())) for line in ax.get_lines()}
    assert drawn == {
        "A and the rest (train.lr)": [(r, said["lr"]) for r, said in enumerate(rates, start=1)],
        "B matrices (LoRA+)": [(r, said["lr_B"]) for r, said in enumerate(rates, start=1)],
    }
    assert ax.get_yscale() == "log"
    assert "<figcaption>Loss, learning rate and bytes by round</figcaption>" in history.federated_section(run)
    (ax,) = _rate_axis(_run(tmp_path / "plain", [{"lr": 2e-4}, {"lr": 1e-4}]))
    assert [list(zip(line.get_xdata(), line.get_ydata())) for line in ax.get_lines()] == [[(1, 2e-4), (2, 1e-4)]]
    assert ax.get_yscale() == "linear"
    older = _run(tmp_path / "older", [{}, {}])  # clients from before the rates: no panel
    assert _rate_axis(older) == []
    assert "<figcaption>Loss and bytes by round</figcaption>" in history.federated_section(older)


def _documented_state() -> tuple[set[str], set[str], set[str]]:
    """The keys history.py's docstring names for federated.json: the state's, a round report's, a client entry's."""
    part = history.__doc__[history.__doc__.index("federated.json ") : history.__doc__.index("metrics.jsonl ")]
    state, report = part.split("each round's report (")
    report, client = report.split("each client's entry (")
    return tuple(set(re.findall(r'"(\w+)"', text)) for text in (state, report, client))


def test_every_key_of_federated_json_is_documented(tmp_path, tiny_model_dir, federate_config, monkeypatch):
    """history.py described federated.json as "rounds done, the clients, each round's report ..., the DP
    accountant's state", leaving out rounds, local_steps, strategy, warmup_steps and elapsed_s, and no key of a
    round's report or a client's entry by name. A federation's own file is held to the keys it names."""
    pytest.importorskip("flwr", reason="the federated extra (flwr) is not installed")
    from tunelab.config import load_config
    from tunelab.federated import rounds
    from tunelab.federated.rounds import ClientRound, RoundReport
    from tunelab.federated.server import run_federation

    def start(self, *, grid, initial_arrays, num_rounds, timeout, evaluate_fn):
        evaluate_fn(0, initial_arrays)
        clients = [ClientRound("site0", 1, "ok", examples=3, train_loss=2.0, dtype="float32", rates={"lr": 1e-3})]
        clients.append(ClientRound("site1", 2, "failed", reason="out of memory"))
        self.reports[1] = RoundReport(1, sampled=2, applied=True, clients=clients)
        evaluate_fn(1, initial_arrays)

    monkeypatch.setattr(rounds.Recorded, "start", start)
    config = load_config(federate_config(tmp_path, tiny_model_dir), {"federated.rounds": 1})
    run = run_federation(None, config, 2, ["site0", "site1"], resume=False)
    state = history.read_state(run)
    assert "best" in state and "base_eval_loss" in state  # the keys written with an eval set and keep_best
    (report,) = state["history"]
    written = (set(state), set(report), set().union(*report["clients"]))
    assert _documented_state() == written
