"""The Data section of `tunelab report` on a federation: the server reads only its eval set, so the section says what
the clients trained on, as they reported it round by round (federated.json)."""

import json

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
