"""What a federation says of its clients' data formats before any client trains: formats that differ between
clients, and preference pairs, which a federation (task sft alone) cannot train."""

import json

import pytest

pytest.importorskip("flwr", reason="the federated extra (flwr) is not installed")

import tunelab
import tunelab.federated.run as federated_run
from tunelab.config import load_config
from tunelab.errors import DataError
from tunelab.federated.run import check_clients, federation_clients


def _jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _alpaca(tmp_path) -> str:
    rows = [{"instruction": f"Code of box {i}?", "output": f"Box {i} has code {1000 + i}."} for i in range(8)]
    return _jsonl(tmp_path / "alpaca.jsonl", rows)


def _text(tmp_path) -> str:
    rows = [{"text": f"Box {i} is kept in the north hall and opens with code {1000 + i}."} for i in range(8)]
    return _jsonl(tmp_path / "notes.jsonl", rows)


def test_clients_in_different_formats_are_named_and_text_beside_chats_is_a_warning(
    tmp_path, tiny_model_dir, federate_config, capsys
):
    """One client of chats, one of alpaca rows and one of raw text were averaged together without a word, though the
    text client trains on every token (continued pretraining) and the others on their answers."""
    config = federate_config(tmp_path, tiny_model_dir)
    chat = str(tmp_path / "site0.jsonl")
    mixed = load_config(config, {"federated.clients": [chat, _alpaca(tmp_path), _text(tmp_path)]}).config
    check_clients(mixed, federation_clients(mixed))
    out = capsys.readouterr().out
    assert (
        "warning: the clients' data are in different formats (client site0: question_answer; client alpaca: alpaca; "
        "client notes: text). A text format trains on every token of raw text" in out
    )

    chats = load_config(config, {"federated.clients": [chat, _alpaca(tmp_path)]}).config
    check_clients(chats, federation_clients(chats))
    out = capsys.readouterr().out
    assert (
        "note: the clients' data are in different formats (client site0: question_answer; client alpaca: alpaca)" in out
    )
    assert "warning:" not in out

    same = load_config(config).config  # two clients of question/answer rows: nothing to say
    check_clients(same, federation_clients(same))
    assert "different formats" not in capsys.readouterr().out

    result = tunelab.check(config, {"federated.clients": [chat, _alpaca(tmp_path), _text(tmp_path)]}, model=False)
    item = next(i for i in result.items if i.name == "client formats")
    assert item.status == "warn" and "client notes: text" in item.summary


def test_a_client_of_preference_pairs_is_told_what_a_federation_trains_not_to_use_dpo(
    tmp_path, tiny_model_dir, federate_config, monkeypatch
):
    """A client holding chosen/rejected pairs stopped federate with the data reader's advice, 'train them with task:
    dpo', which federate then refused: the message says what a federation can do with them now."""
    config = federate_config(tmp_path, tiny_model_dir)
    pairs = [{"prompt": f"Box {i}?", "chosen": f"Code {i}.", "rejected": "No idea."} for i in range(6)]
    clients = {"federated.clients": [str(tmp_path / "site0.jsonl"), _jsonl(tmp_path / "prefs.jsonl", pairs)]}
    monkeypatch.setattr(federated_run, "simulate", None)  # refused before any federation starts
    with pytest.raises(DataError) as error:
        tunelab.federate(config, clients)
    said = str(error.value)
    assert said.startswith("client prefs: ") and "prefs.jsonl" in said
    assert "which tunelab federate cannot train: a federation trains task sft alone" in said
    assert "train them with task: dpo" not in said and "Give this client its preferred answers as sft rows" in said
    assert not (tmp_path / "run").exists()
    eval_pairs = {"data.eval": str(tmp_path / "prefs.jsonl")}  # the server's eval set: said of it, not of a client
    with pytest.raises(DataError, match=r"Give the server's eval set \(data.eval\) its preferred answers as sft rows"):
        tunelab.federate(config, eval_pairs)


def test_the_split_column_is_not_noted_as_text_left_out_of_each_clients_examples(
    tmp_path, tiny_model_dir, federate_config, capsys
):
    """The README's example (split: column, split_column: department) noted for every client that the column
    'department' was text left out of its examples, with how to train on it: the column chose the client's shard."""
    rows = [
        {"question": f"Box {i}?", "answer": f"Code {i}.", "department": ("support", "sales")[i % 2]} for i in range(8)
    ]
    split = {
        "federated.clients": [],
        "federated.split_file": _jsonl(tmp_path / "all.jsonl", rows),
        "federated.split": "column",
        "federated.split_column": "department",
    }
    cfg = load_config(federate_config(tmp_path, tiny_model_dir), split).config
    check_clients(cfg, federation_clients(cfg))
    out = capsys.readouterr().out
    assert "client-1: 4 examples" in out and "client-2: 4 examples" in out
    assert "department" not in out


def test_a_text_client_counts_its_training_rows_alike_at_start_and_in_each_round(
    tmp_path, tiny_model_dir, federate_config, capsys
):
    """The start said 'client notes: 8 examples, 20 rows' of a text client and each round '(20 examples, 3 s)': two
    counts under one word. Both now say training rows (a text's blocks of data.max_length), the FedAvg weight."""
    from tunelab.federated.local import training_examples
    from tunelab.federated.rounds import ClientRound, RoundReport
    from tunelab.federated.run import read_clients
    from tunelab.federated.server import _line

    long = [{"text": f"Box {i} is kept in the north hall and opens with code {1000 + i}. " * 8} for i in range(8)]
    notes = _jsonl(tmp_path / "notes.jsonl", long)
    cfg = load_config(
        federate_config(tmp_path, tiny_model_dir), {"federated.clients": [notes, str(tmp_path / "site0.jsonl")]}
    ).config
    clients = federation_clients(cfg)
    blocks = training_examples(read_clients(cfg, clients)[1][0])
    assert blocks > len(long)  # one long text is several rows: the two counts differ
    check_clients(cfg, clients)
    assert f"client notes: 8 examples -> {blocks} training rows (" in capsys.readouterr().out
    line = _line(
        RoundReport(
            1, sampled=1, applied=True, clients=[ClientRound("notes", 1, "ok", examples=blocks, train_loss=1.0)]
        ),
        1,
        None,
    )
    assert f"notes: train loss 1.0000 ({blocks} training rows, 0 s)" in line
