"""What a federation says of clients that failed: every one named with its error's first line, at the end, since the
round lines are many and Ray folds the clients' tracebacks into one when they repeat across its workers."""

import pytest

pytest.importorskip("flwr", reason="the federated extra (flwr) is not installed")

from tunelab.config import load_config
from tunelab.errors import TrainingStopped
from tunelab.federated import rounds
from tunelab.federated.history import error_line
from tunelab.federated.rounds import ClientRound, RoundReport
from tunelab.federated.server import brief, run_federation

# as client.py's failed_reply words an unexpected error of several lines: its type and first line first
OOM = "RuntimeError: CUDA error: an illegal memory access was encountered\nCompile with TORCH_USE_CUDA_DSA to debug."
# as Flower words a Ray worker that died (a reason it makes itself)
DIED = (
    "<class 'ray.exceptions.ActorDiedError'>:<'The actor died unexpectedly before finishing this task.\n"
    "\tpid: 29210\nThe actor is dead because its worker process has died.'>"
)


def _rounds_failing(monkeypatch, failures: dict[int, dict[str, str]]):
    """Recorded.start replaced: in round r the clients of failures[r] fail with their reasons, the others train;
    a round applies with two usable updates (federated.min_clients)."""

    def start(self, *, grid, initial_arrays, num_rounds, timeout, evaluate_fn):
        evaluate_fn(0, initial_arrays)
        for r in range(self.offset + 1, self.offset + num_rounds + 1):
            failed = failures.get(r, {})
            clients = [
                ClientRound(name, i, "failed", reason=failed[name])
                if name in failed
                else ClientRound(name, i, "ok", examples=3, train_loss=2.0)
                for i, name in enumerate(["site0", "site1", "site2"])
            ]
            usable = sum(c.status == "ok" for c in clients)
            self.reports[r] = RoundReport(r, sampled=3, applied=usable >= 2, clients=clients)
            evaluate_fn(r - self.offset, initial_arrays)

    monkeypatch.setattr(rounds.Recorded, "start", start)


def test_a_failed_message_of_several_lines_is_shown_by_its_first():
    """The round line showed 'Compile with TORCH_USE_CUDA_DSA to debug.': the last line of the client's message,
    without the error it named."""
    assert error_line(OOM) == "RuntimeError: CUDA error: an illegal memory access was encountered"
    assert brief(OOM).startswith("RuntimeError: CUDA error: an illegal memory access was encountered (the whole")
    assert error_line(DIED) == "The actor is dead because its worker process has died."
    assert error_line("<class 'ValueError'>:<'bad row'>") == "ValueError: bad row"
    assert error_line(" \n") == ""


def test_a_federation_whose_clients_all_fail_names_each_in_its_error(
    tmp_path, tiny_model_dir, federate_config, monkeypatch
):
    """The exit-3 message said 'see the round lines for each client's failure'; under Ray the clients' identical
    tracebacks were folded into one ('[repeated 2x across cluster]'), so the user saw one client's error."""
    config = federate_config(tmp_path, tiny_model_dir, clients=3)
    every = {"site0": OOM, "site1": OOM, "site2": DIED}
    _rounds_failing(monkeypatch, {1: every, 2: every})
    with pytest.raises(TrainingStopped) as stopped:
        run_federation(None, load_config(config), 3, ["site0", "site1", "site2"], resume=False)
    message = str(stopped.value)
    for name, line in (
        ("site0", "RuntimeError: CUDA error: an illegal memory access was encountered"),
        ("site1", "RuntimeError: CUDA error: an illegal memory access was encountered"),
        ("site2", "The actor is dead because its worker process has died."),
    ):
        assert f"{name} (failed in rounds 1-2): {line}" in message, message
    assert "TORCH_USE_CUDA_DSA" not in message


def test_a_federation_that_went_on_without_a_client_names_it_at_the_end(
    tmp_path, tiny_model_dir, federate_config, monkeypatch, capsys
):
    config = federate_config(tmp_path, tiny_model_dir, clients=3)
    _rounds_failing(monkeypatch, {2: {"site1": "DataError: site1.jsonl: gone"}})
    run_federation(None, load_config(config), 3, ["site0", "site1", "site2"], resume=False)
    out = capsys.readouterr().out
    assert "warning: rounds went on without 1 client: site1 (failed in round 2): DataError: site1.jsonl: gone" in out


def test_a_federation_that_applied_no_update_says_no_round_was_kept(
    tmp_path, tiny_model_dir, federate_config, monkeypatch, capsys
):
    """Before failing with 'the saved adapter is the untrained one', it said 'keep_best: round 1 had the lowest eval
    loss ...; its global adapter is the result': a round that had applied nothing."""
    config = federate_config(tmp_path, tiny_model_dir)
    every = {"site0": OOM, "site1": OOM, "site2": OOM}
    _rounds_failing(monkeypatch, {1: every, 2: every})
    with pytest.raises(TrainingStopped):
        run_federation(None, load_config(config), 2, ["site0", "site1"], resume=False)
    out = capsys.readouterr().out
    assert "round 2/2 | eval loss" in out and "keep_best:" not in out


def test_the_report_names_the_clients_a_round_went_on_without(tmp_path):
    """The report's federation section listed each round's clients in the order their replies came, with no word of
    a client that failed every round."""
    import json

    from tunelab.federated.history import federated_section

    def client(name, status, reason=None):
        return {
            "client": name,
            "status": status,
            "reason": reason,
            "train_loss": 2.0 if status == "ok" else None,
            "examples": 3,
            "bytes_sent": 1,
            "bytes_received": 1,
        }

    history = [
        {
            "round": r,
            "applied": True,
            "clients": [client("site10", "ok"), client("site2", "failed", OOM), client("site1", "ok")],
        }
        for r in (1, 2)
    ]
    state = {
        "strategy": "fedavg",
        "clients": ["site1", "site2", "site10"],
        "rounds_done": 2,
        "rounds": 2,
        "local_steps": 3,
        "history": history,
    }
    (tmp_path / "federated.json").write_text(json.dumps(state))
    section = federated_section(tmp_path)
    assert (
        "Clients whose update a round lost: site2 (failed in rounds 1-2): RuntimeError: CUDA error: an illegal memory "
        "access was encountered." in section
    )
    first_round = section[section.index("round 1") : section.index("round 2")]
    assert first_round.index("site1<") < first_round.index("site2<") < first_round.index("site10<")
    # the column FedAvg weighs by is named as the round lines name it: training rows (a text's blocks), not examples
    assert "<th>training rows</th>" in section and "<th>examples</th>" not in section


def test_a_resume_names_the_failed_clients_by_name_not_by_reply():
    """--resume's note on rounds that applied nothing listed the clients in the order their replies came (site1
    before site0), unlike the round lines."""
    from tunelab.federated.resume import idle_note

    clients = [{"client": name, "status": "failed", "reason": OOM} for name in ("site10", "site1", "site2")]
    note = idle_note({"history": [{"round": 1, "applied": False, "clients": clients}]})[0]
    assert note.index("site1:") < note.index("site2:") < note.index("site10:")
    assert "site1: RuntimeError: CUDA error: an illegal memory access was encountered;" in note
