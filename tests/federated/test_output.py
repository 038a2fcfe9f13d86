"""What `tunelab federate` prints: one line a round, its own; Flower's lines at WARNING and above unless
FLWR_LOG_LEVEL (Flower's own switch) asks for more. The rounds run without Flower's transport (`Recorded.start`
replaced, as in test_server), logging what Flower's strategy logs at each round."""

import io
import logging

import pytest

pytest.importorskip("flwr", reason="the federated extra (flwr) is not installed")

from flwr.supercore.logger import console_handler  # noqa: E402

from tunelab.config import load_config  # noqa: E402
from tunelab.federated import rounds  # noqa: E402
from tunelab.federated.server import run_federation  # noqa: E402


@pytest.fixture
def flower_console(monkeypatch, applied_round, rounds_without_clients):
    """Flower's console handler writing into a buffer, and rounds that log as Flower's strategy does: its INFO
    lines of each round and the final results, and one WARNING."""
    buffer = io.StringIO()
    before = console_handler.setStream(buffer)
    log = logging.getLogger("flwr")

    def start(self, *, grid, initial_arrays, num_rounds, timeout, evaluate_fn):
        log.info("Starting Recorded strategy:")
        for r in range(num_rounds + 1):
            log.info("[ROUND %d/%d]", r, num_rounds)
            log.info("aggregate_train: Received 2 results and 0 failures")
            applied_round(self, r)
            evaluate_fn(r, initial_arrays)
        log.warning("a warning of Flower's own")
        log.info("Final results:")

    monkeypatch.setattr(rounds.Recorded, "start", start)
    yield buffer
    console_handler.setStream(before)


def _federate(tmp_path, tiny_model_dir, federate_config, capsys) -> str:
    config = load_config(federate_config(tmp_path, tiny_model_dir), {"federated.rounds": 3})
    run_federation(None, config, 2, ["site0", "site1"], resume=False)
    return capsys.readouterr().out


def test_a_federation_prints_one_line_a_round_and_flowers_warnings_only(
    tmp_path, tiny_model_dir, federate_config, flower_console, capsys, monkeypatch
):
    """Flower's INFO lines (about eight a round, and a block of every round's averaged metrics at the end) came
    between tunelab's own round lines, which the README promises alone."""
    monkeypatch.delenv("FLWR_LOG_LEVEL", raising=False)
    out = _federate(tmp_path, tiny_model_dir, federate_config, capsys)
    lines = [line for line in out.splitlines() if line.startswith("round ")]
    assert [line.split(" |")[0] for line in lines[1:]] == ["round 1/3", "round 2/3", "round 3/3"]
    assert lines[0].startswith("round 0 (the base model")
    assert flower_console.getvalue().splitlines() == [
        line for line in flower_console.getvalue().splitlines() if "WARNING" in line
    ]
    assert "a warning of Flower's own" in flower_console.getvalue()
    assert console_handler.level == logging.INFO  # Flower's own level again after the federation


def test_flowers_own_lines_are_shown_with_flwr_log_level(
    tmp_path, tiny_model_dir, federate_config, flower_console, capsys, monkeypatch
):
    monkeypatch.setenv("FLWR_LOG_LEVEL", "INFO")
    _federate(tmp_path, tiny_model_dir, federate_config, capsys)
    assert "[ROUND 2/3]" in flower_console.getvalue() and "Final results:" in flower_console.getvalue()


def test_federate_help_says_how_to_see_flowers_lines(capsys):
    from tunelab.cli import main

    with pytest.raises(SystemExit) as done:
        main(["federate", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert done.value.code == 0 and "FLWR_LOG_LEVEL=INFO shows them all" in help_text
