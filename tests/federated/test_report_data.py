"""The Data section of `tunelab report` on a federation: the server reads only its eval set, so the section says what
the clients trained on, as they reported it round by round (federated.json)."""

import json

import pytest

from tunelab.eval.report import render_report


def _client(name, status, examples, tokens):
    return {
        "client": name,
        "status": status,
        "reason": None if status == "ok" else "RuntimeError: boom",
        "train_loss": 2.0 if status == "ok" else None,
        "examples": examples,
        "tokens": tokens,
        "bytes_sent": 1,
        "bytes_received": 1,
    }


def test_the_data_section_of_a_federation_gives_what_each_client_trained_on(tmp_path):
    """The Data section showed 0 training rows for a federated run (data_report.json is the server's eval set alone)
    and nothing of the clients' data: it now says the data stayed with the clients and gives each one's training
    rows, rounds trained and tokens as federated.json records them."""
    rounds = {1: [("site10", 20, 500), ("site2", 7, 90)], 2: [("site10", 20, 480), ("site2", 0, 0)]}
    history = [
        {"round": r, "applied": True, "clients": [_client(n, "ok" if e else "failed", e, t) for n, e, t in clients]}
        for r, clients in rounds.items()
    ]
    state = {
        "strategy": "fedavg",
        "clients": ["site2", "site10"],
        "rounds_done": 2,
        "rounds": 2,
        "local_steps": 3,
        "history": history,
    }
    (tmp_path / "federated.json").write_text(json.dumps(state))
    counts = {"examples": 6, "used": 6, "rows": 6, "tokens": 300, "loss_tokens": 120}
    report = {"train": dict.fromkeys(counts, 0), "eval": counts, "eval_source": "file", "files": {}, "skips": {}}
    (tmp_path / "data_report.json").write_text(json.dumps(report))

    page = render_report(tmp_path)
    data = page[page.index('id="data"') :]
    assert "The training data stayed with the clients" in data
    assert "27 training rows in all" in data and "1,070 tokens trained over the rounds" in data
    table = data[data.index('class="clients"') :]
    site2, site10 = table.index("<td>site2</td>"), table.index("<td>site10</td>")
    assert site2 < site10  # by name, numbers as numbers
    assert '<td>site10</td><td class="num">20</td><td class="num">2</td><td class="num">980</td>' in table
    assert '<td>site2</td><td class="num">7</td><td class="num">1</td><td class="num">90</td>' in table


def test_the_data_section_of_a_plain_run_says_nothing_of_clients(tmp_path):
    counts = {"examples": 6, "used": 6, "rows": 6, "tokens": 300, "loss_tokens": 120}
    report = {"train": counts, "eval": dict.fromkeys(counts, 0), "files": {}, "skips": {}}
    (tmp_path / "data_report.json").write_text(json.dumps(report))
    page = render_report(tmp_path)
    assert "stayed with the clients" not in page and 'class="clients"' not in page


def _federation_files(folder, state_text: str) -> None:
    (folder / "federated.json").write_text(state_text)
    counts = {"examples": 6, "used": 6, "rows": 6, "tokens": 300, "loss_tokens": 120}
    report = {"train": dict.fromkeys(counts, 0), "eval": counts, "eval_source": "file", "files": {}, "skips": {}}
    (folder / "data_report.json").write_text(json.dumps(report))


def _state(**client) -> dict:
    return {
        "strategy": "fedavg",
        "clients": ["site1", "site2"],
        "rounds_done": 1,
        "rounds": 2,
        "local_steps": 3,
        "history": [{"round": 1, "clients": [_client("site1", "ok", 20, 500), _client("site2", "ok", 7, 90) | client]}],
    }


def test_a_damaged_federated_json_is_named_with_its_line_not_blamed_on_data_report_json(tmp_path):
    """A federated.json that is not JSON cost the Data section with 'data_report.json holds what tunelab does not
    write there', though data_report.json was intact: the section now names federated.json and its line, and still
    draws data_report.json's tables."""
    text = json.dumps(_state(), indent=2)
    text = text.replace('"round": 1,', '"round": 1,,')  # a stray comma, as a hand edit leaves one
    _federation_files(tmp_path, text)
    line = text[: text.index(",,")].count("\n") + 1
    page = render_report(tmp_path)
    data = page[page.index('id="data"') :]
    assert f"federated.json, line {line}: not valid JSON" in data
    assert "data_report.json" not in data and 'class="files"' in data  # its own tables drawn
    assert f"federated.json, line {line}: not valid JSON" in page[page.index('id="federated"') :]
    # --resume reads it first: the same words, exit code 2, where a JSONDecodeError's traceback ended it
    from tunelab.config import RunConfig
    from tunelab.errors import RunDirError
    from tunelab.federated.resume import check_resume

    with pytest.raises(RunDirError, match=f"federated.json, line {line}: not valid JSON"):
        check_resume(tmp_path, RunConfig())


def test_a_field_of_another_kind_in_federated_json_is_named_with_its_line(tmp_path):
    from tunelab.errors import RunDirError
    from tunelab.federated.history import read_state

    text = json.dumps(_state(examples="7"), indent=2)
    _federation_files(tmp_path, text)
    line = text[: text.index('"examples": "7"')].count("\n") + 1
    with pytest.raises(RunDirError) as damaged:
        read_state(tmp_path)
    said = str(damaged.value)
    assert said.startswith(f"{tmp_path / 'federated.json'}, line {line}: history entry 1, clients entry 2, ")
    assert "field 'examples' is \"7\"; it must be a whole number >= 0" in said and "--overwrite" in said
    page = render_report(tmp_path)
    assert "history entry 1, clients entry 2, field &#x27;examples&#x27;" in page[page.index('id="data"') :]

    missing = _state()
    del missing["history"][0]["round"]
    text = json.dumps(missing, indent=2)
    (tmp_path / "federated.json").write_text(text)
    entry = text.index('"history": [') + len('"history": [')
    with pytest.raises(
        RunDirError,
        match=rf"line {text[: text.index('{', entry)].count(chr(10)) + 1}: history entry 1, field 'round' is missing",
    ):
        read_state(tmp_path)


def test_a_damaged_federated_json_names_resume_and_overwrite_as_the_caller_gives_them(
    tmp_path, tiny_model_dir, federate_config
):
    """tunelab.federate(config, resume=True) on a damaged federated.json was told to restore what "its --resume" reads
    or to "run the federation again with --overwrite": flags a Python caller never typed."""
    import tunelab
    from tunelab.config import RunConfig
    from tunelab.config.flags import CLI
    from tunelab.errors import RunDirError
    from tunelab.federated.resume import check_resume

    config = federate_config(tmp_path, tiny_model_dir)
    (tmp_path / "run").mkdir()
    _federation_files(tmp_path / "run", "{not json")
    with pytest.raises(RunDirError) as python:
        tunelab.federate(config, resume=True)
    said = str(python.value)
    assert "federated.json, line 1: not valid JSON" in said
    assert "which tunelab.federate() writes after every round and its resume=True and tunelab.report() read" in said
    assert said.endswith("run the federation again with overrides['overwrite'] = True.") and "--" not in said
    with pytest.raises(RunDirError) as cli:
        check_resume(tmp_path / "run", RunConfig(), CLI)
    said = str(cli.value)
    assert "which tunelab federate writes after every round and its --resume and tunelab report read" in said
    assert said.endswith("run the federation again with --overwrite.") and "resume=True" not in said
