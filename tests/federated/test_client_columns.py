"""Clients whose files name their columns differently: the data reader's advice to map them with data.fields says
that one mapping serves every client."""

import json

import pytest
import yaml

pytest.importorskip("flwr", reason="the federated extra (flwr) is not installed")

from tunelab.config import load_config
from tunelab.errors import DataError
from tunelab.federated.run import check_clients, federation_clients


def test_the_advice_to_map_columns_says_the_mapping_is_every_clients(tiny_model_dir, tmp_path):
    """Told to map {output: response} for the client whose answers are in `response`, the user did, and the other
    client (whose answers are in `output`) then failed: data.fields maps every client's files alike."""
    rows = [{"instruction": f"Code of box {i}?", "input": "", "output": f"Box {i}: {1000 + i}."} for i in range(6)]
    (tmp_path / "north.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    renamed = [{"instruction": r["instruction"], "input": "", "response": r["output"]} for r in rows]
    (tmp_path / "south.jsonl").write_text("".join(json.dumps(r) + "\n" for r in renamed))
    config = tmp_path / "federate.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "output_dir": "run",
                "model": {"name": str(tiny_model_dir)},
                "data": {"max_length": 64},
                "federated": {"clients": ["north.jsonl", "south.jsonl"], "rounds": 1, "local_steps": 1},
            }
        )
    )
    for overrides, client in (({}, "south"), ({"data.fields": {"output": "response"}}, "north")):
        cfg = load_config(config, overrides).config
        with pytest.raises(DataError, match=f"client {client}: ") as error:
            check_clients(cfg, federation_clients(cfg))
        assert "In a federation data.fields maps the columns of every client's files alike" in str(error.value)
        assert "data.transform rename the columns" in str(error.value)
