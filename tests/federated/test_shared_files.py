"""Files that two parties of a federation would read: a server eval file that a client trains on too is said (by
`tunelab federate` as it starts and by `tunelab check`), as `tunelab train` notes an eval file among its training
files; a file two clients would train on is refused."""

import json

import pytest
import yaml

pytest.importorskip("flwr", reason="the federated extra (flwr) is not installed")

from tunelab.cli import main
from tunelab.config import load_config
from tunelab.errors import ConfigError
from tunelab.federated.run import check_clients, federation_clients


def _rows(path, start: int, stop: int) -> None:
    path.write_text(
        "".join(
            json.dumps({"question": f"Code of box {i}?", "answer": f"Box {i} has code {1000 + i}."}) + "\n"
            for i in range(start, stop)
        )
    )


def _config(tmp_path, model_dir, clients, eval_file) -> str:
    config = {
        "output_dir": "run",
        "model": {"name": str(model_dir)},
        "data": {"eval": eval_file, "max_length": 64},
        "method": {"r": 4},
        "federated": {"clients": clients, "rounds": 1, "local_steps": 1},
    }
    path = tmp_path / "federate.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_a_server_eval_file_inside_a_clients_folder_is_a_warning(tiny_model_dir, tmp_path, capsys):
    """The eval file lay in client north's folder, so north trained on the rows the server's eval loss (and
    train.keep_best's choice of round) read, and neither check nor federate said a word."""
    (tmp_path / "north").mkdir()
    _rows(tmp_path / "north" / "faq.jsonl", 0, 10)
    _rows(tmp_path / "north" / "held_out.jsonl", 50, 54)
    _rows(tmp_path / "south.jsonl", 10, 20)
    config = _config(tmp_path, tiny_model_dir, ["north", "south.jsonl"], "north/held_out.jsonl")

    assert main(["check", config, "--data-only", "--html", str(tmp_path / "page.html")]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if "server eval:" in line)
    assert line.strip().startswith("[WARN] server eval:")
    assert "held_out.jsonl, data.eval) is also training data of client north:" in line and "south" not in line

    cfg = load_config(config).config
    check_clients(cfg, federation_clients(cfg))  # what federate says before any client starts
    assert "warning: the server's eval file" in capsys.readouterr().out

    _rows(tmp_path / "held_out.jsonl", 50, 54)  # the same rows, outside every client's data: nothing to say
    cfg = load_config(_config(tmp_path, tiny_model_dir, ["north/faq.jsonl", "south.jsonl"], "held_out.jsonl")).config
    check_clients(cfg, federation_clients(cfg))
    assert "server's eval file" not in capsys.readouterr().out


def test_a_file_inside_another_clients_folder_is_refused(tiny_model_dir, tmp_path, capsys):
    """Clients [sites/, sites/a.jsonl] both trained on sites/a.jsonl, which then weighed twice in every average;
    only two entries naming the same path were refused."""
    (tmp_path / "sites").mkdir()
    _rows(tmp_path / "sites" / "a.jsonl", 0, 10)
    _rows(tmp_path / "sites" / "b.jsonl", 10, 20)
    _rows(tmp_path / "held_out.jsonl", 50, 54)
    config = _config(tmp_path, tiny_model_dir, ["sites", "sites/a.jsonl"], "held_out.jsonl")
    cfg = load_config(config).config
    with pytest.raises(ConfigError, match=r"a\.jsonl is data of client sites \(.*\) and of client a \("):
        check_clients(cfg, federation_clients(cfg))
    assert main(["check", config, "--data-only", "--html", str(tmp_path / "page.html")]) == 2
    assert "its rows would be trained by both" in capsys.readouterr().err


def test_server_eval_rows_copied_from_a_clients_file_are_a_warning(tiny_model_dir, tmp_path, capsys):
    """Eval rows sampled from a client's file were trained on by that client; tunelab train notes such rows, a
    federation said nothing."""
    _rows(tmp_path / "north.jsonl", 0, 10)
    _rows(tmp_path / "south.jsonl", 10, 20)
    lines = (tmp_path / "south.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "held_out.jsonl").write_text("".join(lines[:2]))  # two of south's rows
    _rows(tmp_path / "other.jsonl", 50, 52)
    (tmp_path / "held_out.jsonl").write_text(
        (tmp_path / "held_out.jsonl").read_text() + (tmp_path / "other.jsonl").read_text()
    )
    cfg = load_config(_config(tmp_path, tiny_model_dir, ["north.jsonl", "south.jsonl"], "held_out.jsonl")).config
    check_clients(cfg, federation_clients(cfg))
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("warning: client south: 2 of the 4 server eval examples (data.eval) are also")
    assert "held_out.jsonl:1 repeats" in warnings[0] and "south.jsonl:1" in warnings[0]
