"""`tunelab check` on a federated config: the federation's rules, output_dir, every client's data as that client
reads it (its file, or its shard of a shared file), the server's eval set, and the model checks on the first client's
first micro-batch; bad input exits 2 naming the client, as `tunelab federate` does."""

import json
from pathlib import Path

import yaml

from tunelab.cli import main


def _rows(start: int, stop: int, **extra) -> str:
    return "".join(
        json.dumps({"question": f"Code of box {i}?", "answer": f"Box {i} has code {1000 + i}."} | extra) + "\n"
        for i in range(start, stop)
    )


def _config(folder, model_dir, **federated) -> str:
    for i in range(2):
        (folder / f"site{i}.jsonl").write_text(_rows(10 * i, 10 * i + 10))
    (folder / "server_eval.jsonl").write_text(_rows(100, 104))
    config = {
        "output_dir": "run",
        "model": {"name": str(model_dir)},
        "data": {"eval": "server_eval.jsonl", "max_length": 64},
        "method": {"r": 4},
        "train": {"lr": 1e-3},
        "federated": {"clients": ["site0.jsonl", "site1.jsonl"], "rounds": 2, "local_steps": 3} | federated,
    }
    path = folder / "federate.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def _check(config, tmp_path, *more) -> list[str]:
    return ["check", config, "--html", str(tmp_path / "page.html"), *more]


def test_every_client_is_checked_and_the_model_on_the_first(tiny_model_dir, tmp_path, capsys):
    config = _config(tmp_path, tiny_model_dir)
    assert main(_check(config, tmp_path)) == 0
    out = capsys.readouterr().out
    assert "[PASS] output_dir: " in out and "run: new" in out
    for name in ("site0", "site1"):
        assert f"client {name}:\ndata: 1 file, 10 records" in out
        assert f"[INFO] client {name}: auto values: " in out and "train.micro_batch = " in out
        assert f"[PASS] client {name}: answers end with a stop token: 10 of 10 answers" in out
    assert "[PASS] server eval: " in out and "server_eval.jsonl: 4 rows" in out
    assert "[PASS] client site0: forward/backward loss: " in out and "client site1: forward/backward" not in out
    assert out.rstrip().splitlines()[-1].startswith("check: PASSED")
    assert not (tmp_path / "run").exists()


def test_a_shared_file_is_checked_shard_by_shard(tiny_model_dir, tmp_path, capsys):
    config = _config(tmp_path, tiny_model_dir, clients=[], split_file="all.jsonl", num_clients=3)
    (tmp_path / "all.jsonl").write_text(_rows(0, 30))
    assert main(_check(config, tmp_path, "--data-only")) == 0
    out = capsys.readouterr().out
    for k in (1, 2, 3):
        assert f"client-{k}:\ndata: 1 file, 10 records" in out and f"[PASS] client-{k}: padding: " in out  # 30 / 3


def test_a_client_without_usable_rows_is_bad_input_naming_it(tiny_model_dir, tmp_path, capsys):
    config = _config(tmp_path, tiny_model_dir)
    (tmp_path / "site1.jsonl").write_text(json.dumps({"question": "no answer here"}) + "\n")
    assert main(_check(config, tmp_path, "--data-only")) == 2
    err = capsys.readouterr().err
    assert "client site1: " in err and "site1.jsonl" in err


def test_the_federations_rules_are_bad_input_as_for_federate(tiny_model_dir, tmp_path, capsys):
    config = _config(tmp_path, tiny_model_dir)
    assert main(_check(config, tmp_path, "--data-only", "--method.name", "full")) == 2
    assert "needs lora" in capsys.readouterr().err
    assert main(_check(config, tmp_path, "--data-only", "--federated.min_clients", "3")) == 2
    assert "'federated.min_clients' is 3 but the federation has 2 clients" in capsys.readouterr().err


def test_a_federations_refusal_is_not_preceded_by_the_resolved_config(tiny_model_dir, tmp_path, capsys):
    """`tunelab check` of a federation printed ~100 lines of its resolved config before refusing a rule that
    `tunelab federate` refuses at once (clients and split_file both set, data.train set): the refusal comes alone now,
    as from federate."""
    config = _config(tmp_path, tiny_model_dir, split_file="site0.jsonl")
    for command in (_check(config, tmp_path, "--data-only"), ["federate", config]):
        assert main(command) == 2
        out, err = capsys.readouterr()
        assert out == "" and "'federated.clients' and 'federated.split_file' are both set" in err
    assert main(_check(_config(tmp_path, tiny_model_dir), tmp_path, "--data.train", "site0.jsonl")) == 2
    out, err = capsys.readouterr()
    assert out == "" and "option 'data.train' is set, but a federated run" in err


def test_each_client_is_shown_with_its_weight_in_the_average(tiny_model_dir, tmp_path, capsys):
    """The check showed each client's data report ("1 examples ... -> N rows"), while the server weighs a client by
    the rows it trains on: a client holding one long text, one example, weighs as its blocks. Each client's weight in
    the average is shown now, labelled as such, with its share."""
    config = _config(tmp_path, tiny_model_dir)
    words = " ".join(f"word{i}" for i in range(300))
    (tmp_path / "site1.jsonl").write_text(json.dumps({"text": words}) + "\n")
    assert main(_check(config, tmp_path, "--data-only")) == 0
    out = capsys.readouterr().out
    site1 = out.split("client site1:\n", 1)[1]
    rows = int(site1.split("1 example, 1 used -> ", 1)[1].split(" rows", 1)[0])
    assert rows > 1  # one document, several blocks
    share = f"{100 * 10 / (10 + rows):.1f}%"
    assert f"  weight in the average: 10 training rows (chat examples and text blocks), {share} of each round" in out
    assert f"  weight in the average: {rows} training rows" in site1

    # tunelab federate says the same of each client before it starts
    from tunelab.config import load_config
    from tunelab.federated.run import check_clients, federation_clients

    cfg = load_config(config).config
    check_clients(cfg, federation_clients(cfg))
    said = capsys.readouterr().out
    assert (
        f"client site1: 1 example -> {rows} training rows" in said
        and f"weight in the average: {rows} training rows" in said
    )


def test_federate_says_which_rows_a_client_skips(tiny_model_dir, tmp_path, capsys):
    """tunelab federate said 'client site0: 9 examples, 9 rows' of a file of 10 records: the row longer than
    data.max_length was dropped without a word (tunelab train and check name it). It is named now, as train names
    it."""
    from tunelab.config import load_config
    from tunelab.federated.run import check_clients, federation_clients

    config = _config(tmp_path, tiny_model_dir)
    long = {"question": "Why? " * 60, "answer": "Because."}
    with open(tmp_path / "site0.jsonl", "a") as f:
        f.write(json.dumps(long) + "\n")
    cfg = load_config(config).config
    check_clients(cfg, federation_clients(cfg))
    lines = capsys.readouterr().out.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("client site0: 10 examples -> 10 training rows"))
    assert lines[first + 1].startswith("  skipped 1: longer than max_length (64 tokens; data.overlong=drop)")
    assert lines[first + 1].endswith("site0.jsonl:11)")
    assert lines[first + 2].startswith("client site1: 10 examples")  # nothing skipped, nothing said


def test_with_loraplus_check_shows_b_rate_as_federate_prints_it(tiny_model_dir, tmp_path, capsys):
    """check said nothing of the rate LoRA+ gives the clients' B matrices; it shows federate's start line now."""
    from tunelab.config import load_config
    from tunelab.federated.local import federation_plan
    from tunelab.federated.server import same_for_every_client
    from tunelab.training.auto import ModelShape

    plain = _config(tmp_path, tiny_model_dir)
    assert main(_check(plain, tmp_path, "--data-only")) == 0
    assert "learning rates" not in capsys.readouterr().out
    config = yaml.safe_load(Path(plain).read_text())
    config["train"]["loraplus_lr_ratio"] = 8
    path = tmp_path / "plus.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(_check(str(path), tmp_path, "--data-only")) == 0
    out = capsys.readouterr().out
    line = "LoRA+: the adapters' B matrices train at 0.008 (train.lr 0.001 x train.loraplus_lr_ratio 8), A at 0.001"
    assert f"[INFO] client site0: learning rates: as federate prints them at its start\n           {line}" in out
    cfg = load_config(str(path)).config
    assert line in same_for_every_client(federation_plan(cfg.train, cfg.method, ModelShape(64, 2), 6))
