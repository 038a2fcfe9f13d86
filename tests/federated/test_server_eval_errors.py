"""A server eval set (data.eval) that cannot be used stops a federation naming it as the server's eval set."""

import json

import pytest
import yaml

pytest.importorskip("flwr", reason="the federated extra (flwr) is not installed")

from tunelab.config import load_config
from tunelab.errors import DataError
from tunelab.federated.run import check_clients, federation_clients


def test_an_unusable_server_eval_set_is_named_as_the_servers_not_as_training_data(tiny_model_dir, tmp_path):
    """An eval file whose rows were all too long stopped the federation with 'no usable training examples', read as
    a client's data, though every client's was fine."""
    row = {"question": "Code of box 1?", "answer": "Box 1 has code 1001."}
    (tmp_path / "north.jsonl").write_text(json.dumps(row) + "\n")
    (tmp_path / "south.jsonl").write_text(json.dumps(row | {"question": "Code of box 2?"}) + "\n")
    long_row = {"question": "Code of box 3? " * 40, "answer": "Box 3 has code 1003."}
    (tmp_path / "held_out.jsonl").write_text(json.dumps(long_row) + "\n")
    (tmp_path / "empty.jsonl").write_text("")
    config = tmp_path / "federate.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "output_dir": "run",
                "model": {"name": str(tiny_model_dir)},
                "data": {"eval": "held_out.jsonl", "max_length": 64},
                "federated": {"clients": ["north.jsonl", "south.jsonl"], "rounds": 1, "local_steps": 1},
            }
        )
    )
    for eval_file, said in (("held_out.jsonl", "no usable eval examples"), ("empty.jsonl", "no eval examples")):
        cfg = load_config(config, {"data.eval": str(tmp_path / eval_file)}).config
        with pytest.raises(DataError) as error:
            check_clients(cfg, federation_clients(cfg))
        message = str(error.value)
        assert message.startswith(f"the server's eval set (option 'data.eval'): {tmp_path / eval_file}: {said}")
        assert "training examples" not in message
