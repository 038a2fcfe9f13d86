"""Which rows each client holds: IID shards, non-IID shards by a column, client names, and the errors."""

import json

import pytest

from tunelab.config import FederatedConfig
from tunelab.data.sources import read_records
from tunelab.errors import ConfigError, DataError
from tunelab.federated.shards import Shard, client_data, column_owners, from_node_config


@pytest.fixture
def topics_file(tmp_path):
    path = tmp_path / "all.jsonl"
    topics = ["a"] * 7 + ["b"] * 5 + ["c"] * 4 + ["d"] * 2
    path.write_text(
        "".join(json.dumps({"question": f"q{i}", "answer": f"x{i}", "topic": t}) + "\n" for i, t in enumerate(topics))
    )
    return path


def test_iid_shards_partition_every_row_once_and_are_deterministic(topics_file):
    records = read_records([str(topics_file)])
    shards = [Shard(i, 3, "iid", None, seed=7).select(records) for i in range(3)]
    lines = sorted(r.line for shard in shards for r in shard)
    assert lines == sorted(r.line for r in records)  # each row in exactly one shard
    assert [len(s) for s in shards] == [6, 6, 6]
    assert [r.line for r in Shard(1, 3, "iid", None, seed=7).select(records)] == [r.line for r in shards[1]]
    assert [r.line for r in Shard(1, 3, "iid", None, seed=8).select(records)] != [r.line for r in shards[1]]


def test_column_shards_give_each_value_to_one_client_balanced(topics_file):
    records = read_records([str(topics_file)])
    # groups 7, 5, 4, 2 over 3 clients: 7 -> 0, 5 -> 1, 4 -> 2, 2 -> the lightest (2, holding 4)
    assert column_owners(records, "topic", 3) == {"a": 0, "b": 1, "c": 2, "d": 2}
    shards = [Shard(i, 3, "column", "topic", seed=0).select(records) for i in range(3)]
    assert [sorted({r.row["topic"] for r in s}) for s in shards] == [["a"], ["b"], ["c", "d"]]


def test_column_split_errors_name_the_option(topics_file, tmp_path):
    records = read_records([str(topics_file)])
    with pytest.raises(ConfigError, match="4 distinct values, fewer than federated.num_clients=5"):
        column_owners(records, "topic", 5)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "a", "topic": "t"}\n{"question": "q2", "answer": "a2"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: no field 'topic'.*federated.split_column"):
        column_owners(read_records([str(bad)]), "topic", 1)


def test_client_data_from_config(tmp_path):
    clients = client_data(FederatedConfig(clients=["x/north.jsonl", "y/north.jsonl", "south.csv"]), seed=0)
    assert [c.name for c in clients] == ["north", "north-2", "south"]
    assert clients[1].paths == ("y/north.jsonl",) and clients[1].shard is None
    split = client_data(FederatedConfig(split_file="all.jsonl", num_clients=2, split="column", split_column="t"), 3)
    assert [c.name for c in split] == ["client-1", "client-2"]
    assert split[1].shard == Shard(1, 2, "column", "t", 3)
    with pytest.raises(ConfigError, match="both set"):
        client_data(FederatedConfig(clients=["a.jsonl"], split_file="b.jsonl"), 0)
    with pytest.raises(ConfigError, match="needs clients"):
        client_data(FederatedConfig(), 0)
    with pytest.raises(ConfigError, match="split_column"):
        client_data(FederatedConfig(split_file="b.jsonl", split="column"), 0)
    with pytest.raises(ConfigError, match="split_column"):  # blank: no column to read
        client_data(FederatedConfig(split_file="b.jsonl", split="column", split_column="  "), 0)
    with pytest.raises(ConfigError, match="entries 1 and 3 both name x/./a.jsonl; each client holds its own"):
        client_data(FederatedConfig(clients=["x/a.jsonl", "b.jsonl", "x/./a.jsonl"]), 0)


def test_node_config_names_a_supernodes_data(tmp_path):
    a, b, site = (tmp_path / name for name in ("a.jsonl", "b.jsonl", "site.jsonl"))
    for path in (a, b, site):
        path.write_text("")
    client = from_node_config({"data": f"{a}, {b}", "name": "clinic-a"})
    assert client.name == "clinic-a" and client.paths == (str(a), str(b))
    assert from_node_config({"data": str(site)}).name == "site"
    with pytest.raises(ConfigError, match="no data"):
        from_node_config({"partition-id": 0})


def test_a_supernodes_missing_data_is_said_of_its_node_config(tmp_path):
    """A SuperNode started with a wrong data path failed every round with the data reader's message, which told the
    user to check data.train / data.eval in a YAML config: options a SuperNode does not have."""
    (tmp_path / "a.jsonl").write_text("")
    data = f"{tmp_path / 'a.jsonl'},{tmp_path / 'gone.jsonl'}"
    with pytest.raises(ConfigError) as error:
        from_node_config({"data": data})
    assert str(error.value).startswith(
        f"this SuperNode's data (--node-config \"data='{data}'\"): {tmp_path / 'gone.jsonl'}: no such file or folder "
        "on this host."
    )


def test_a_supernode_reads_its_files_with_the_options_its_node_config_gives(tmp_path):
    """A federated.clients mapping gives a simulated client its own format, fields and delimiter; a SuperNode of the
    deployment engine, whose data the server never names, had no way to: its node config now gives them."""
    from tunelab.config import ClientSource
    from tunelab.federated.app_dir import data_note

    site = tmp_path / "site.csv"
    site.write_text("")
    node = {"data": str(site), "name": "west", "format": "alpaca", "fields": "output=response, input=context"}
    client = from_node_config(node | {"delimiter": ";"})
    assert (client.format, client.fields, client.delimiter) == (
        "alpaca",
        (("output", "response"), ("input", "context")),
        ";",
    )
    assert client.fields_option == "this SuperNode's --node-config fields (client west)"
    assert from_node_config({"data": str(site)}).fields is None
    with pytest.raises(ConfigError, match=r"--node-config format='xml': allowed values: auto, prompt_completion"):
        from_node_config(node | {"format": "xml"})
    with pytest.raises(ConfigError, match=r"--node-config fields='output': 'output' is no FIELD=COLUMN pair"):
        from_node_config(node | {"fields": "output"})
    # --app-dir says the config's own options of a client are not what a SuperNode reads with
    note = data_note(FederatedConfig(clients=["a.jsonl", ClientSource(path="b.csv", fields={"output": "response"})]))
    assert (
        "nor the reading options of entry 2: a SuperNode reads its files with data.* unless its --node-config" in note
    )
