"""A federation's metrics.jsonl records as history.py writes them, held to the keys its docstring and the README name,
and federated.png's learning-rate panel, drawn from them."""

import json
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
