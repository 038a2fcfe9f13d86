"""Clients whose files name their columns differently: each may map its own columns (an entry of federated.clients
written as a mapping {path, name, format, fields, delimiter}), and the data reader's advice to map them says so."""

import json

import pytest
import yaml

pytest.importorskip("flwr", reason="the federated extra (flwr) is not installed")

from tunelab.config import dump_yaml, load_config
from tunelab.errors import ConfigError, DataError
from tunelab.federated.run import check_clients, federation_clients, read_clients
from tunelab.federated.shards import federation_protected

ROWS = [{"instruction": f"Code of box {i}?", "input": "", "output": f"Box {i}: {1000 + i}."} for i in range(6)]


def _federation(tmp_path, tiny_model_dir, clients: list) -> str:
    """north.jsonl (alpaca: instruction, output), south.jsonl (instruction, response) and a config of `clients`."""
    (tmp_path / "north.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    renamed = [{"instruction": r["instruction"], "input": "", "response": r["output"]} for r in ROWS]
    (tmp_path / "south.jsonl").write_text("".join(json.dumps(r) + "\n" for r in renamed))
    config = tmp_path / "federate.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "output_dir": "run",
                "model": {"name": str(tiny_model_dir)},
                "data": {"max_length": 64},
                "federated": {"clients": clients, "rounds": 1, "local_steps": 1},
            }
        )
    )
    return config


def test_the_advice_to_map_columns_names_a_mapping_of_the_client_s_own(tiny_model_dir, tmp_path):
    """Told to map {output: response} for the client whose answers are in `response`, the user did, and the other
    client (whose answers are in `output`) then failed: data.fields maps every client's files alike, so the advice
    names the mapping a client's own entry of federated.clients may hold."""
    config = _federation(tmp_path, tiny_model_dir, ["north.jsonl", "south.jsonl"])
    for overrides, client in (({}, "south"), ({"data.fields": {"output": "response"}}, "north")):
        cfg = load_config(config, overrides).config
        with pytest.raises(DataError, match=f"client {client}: ") as error:
            check_clients(cfg, federation_clients(cfg))
        assert "In a federation data.fields maps the columns of every client's files alike" in str(error.value)
        assert "a mapping of its own in its entry of federated.clients, {path: FILE, fields: {...}}" in str(error.value)


def test_a_client_maps_its_own_columns(tiny_model_dir, tmp_path):
    """One data.fields mapping served every client, so a federation whose clients' files name the answer column
    otherwise could not be described: a client's entry may now be a mapping with its own fields (and format,
    delimiter, name), read relative to the YAML file and kept in config.yaml as written."""
    south = {"path": "south.jsonl", "name": "clinic-b", "format": "alpaca", "fields": {"output": "response"}}
    config = _federation(tmp_path, tiny_model_dir, ["north.jsonl", south])
    cfg = load_config(config).config
    clients = federation_clients(cfg)
    assert [(c.name, c.paths) for c in clients] == [
        ("north", (str(tmp_path / "north.jsonl"),)),
        ("clinic-b", (str(tmp_path / "south.jsonl"),)),
    ]
    _, (north, clinic_b) = read_clients(cfg, clients)
    answers = [[m["content"] for m in ex.messages if m["role"] == "assistant"] for ex in clinic_b.examples]
    assert answers == [[r["output"]] for r in ROWS]  # the response column, read as the alpaca format's output
    assert len(north.examples) == len(ROWS)
    assert str(tmp_path / "south.jsonl") in federation_protected(cfg)["client data file"]
    again = tmp_path / "saved.yaml"  # a run's config.yaml, which --resume compares with
    again.write_text(dump_yaml(cfg))
    assert load_config(again).config.federated.clients == cfg.federated.clients


def test_a_client_s_bad_mapping_is_named_by_its_entry_and_client(tiny_model_dir, tmp_path):
    """A mapping of a client's own names that client's entry and the field, as data.fields' errors name it."""
    wrong = {"path": "south.jsonl", "name": "clinic-b", "fields": {"output": "answer"}}
    cfg = load_config(_federation(tmp_path, tiny_model_dir, ["north.jsonl", wrong])).config
    with pytest.raises(DataError) as error:
        read_clients(cfg, federation_clients(cfg))
    assert (
        "client clinic-b: " in str(error.value)
        and "option 'federated.clients', entry 2 (client clinic-b), fields maps output -> 'answer', but the "
        "record has no such column"
        in str(error.value)
    )
    for clients, said in (
        (
            ["north.jsonl", {"path": "south.jsonl", "fields": {"output": " "}}],
            r"entry 2 \(client south\): fields maps 'output'",
        ),
        (
            ["north.jsonl", {"name": "x"}],
            r"entry 2: give 'path', the client's data file or folder \(its keys: path, name,",
        ),
        (
            [{"path": "north.jsonl", "name": "n"}, {"path": "south.jsonl", "name": "n"}],
            r"entries 1 and 2 are both named 'n'",
        ),
        (
            ["north.jsonl", {"path": "south.jsonl", "format": "xml"}],
            r"entry 2, key 'format' is 'xml'; allowed values: auto,",
        ),
    ):
        with pytest.raises(ConfigError, match=said):
            federation_clients(load_config(_federation(tmp_path, tiny_model_dir, clients)).config)


def test_the_file_of_a_client_s_mapping_is_data_no_command_writes_over(tiny_model_dir, tmp_path):
    """places.data_of, which keeps eval --out, report --out and export from writing over a run's data, took each
    entry of federated.clients for a path and failed on a mapping (TypeError); it names the mapping's path."""
    from tunelab.places import data_of

    config = _federation(tmp_path, tiny_model_dir, ["north.jsonl", {"path": "south.jsonl", "name": "clinic-b"}])
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(dump_yaml(load_config(config).config))
    named = data_of(run)
    assert ("federated.clients", (tmp_path / "south.jsonl").resolve()) in named
    assert ("federated.clients", (tmp_path / "north.jsonl").resolve()) in named
