"""examples/federated_faq: its config loads and passes federate's checks, its files are what prepare.py writes, and
the department split gives each client facts the others never see."""

import json
import subprocess
import sys
from pathlib import Path

from tunelab.config import load_config
from tunelab.data.sources import read_records
from tunelab.federated.run import check_config
from tunelab.federated.shards import client_data

EXAMPLE = Path(__file__).parents[2] / "examples" / "federated_faq"


def test_config_loads_and_passes_federate_checks():
    cfg = load_config(EXAMPLE / "config.yaml").config
    check_config(cfg)
    assert Path(cfg.federated.split_file).is_file() and Path(cfg.data.eval).is_file()
    assert Path(cfg.eval.questions).is_file()


def test_each_client_holds_facts_the_others_never_see():
    cfg = load_config(EXAMPLE / "config.yaml").config
    records = read_records([cfg.federated.split_file])
    clients = client_data(cfg.federated, cfg.train.seed)
    refusal = cfg.eval.refusal
    answers = [{r.row["answer"] for r in c.shard.select(records)} for c in clients]
    facts = [a - {refusal} for a in answers]
    assert [len(f) for f in facts] == [7, 7, 6]  # 20 facts in all, by department
    for i, mine in enumerate(facts):
        others = set().union(*(f for j, f in enumerate(facts) if j != i))
        assert not mine & others
    assert all(refusal in a for a in answers)  # every client also learns to refuse
    server = [json.loads(line)["answer"] for line in (EXAMPLE / "server_eval.jsonl").read_text().splitlines()]
    train_questions = {r.row["question"] for r in records}
    server_questions = {
        json.loads(line)["question"] for line in (EXAMPLE / "server_eval.jsonl").read_text().splitlines()
    }
    assert len(set(server) - {refusal}) == 20 and not train_questions & server_questions


def test_prepare_regenerates_the_committed_files(tmp_path):
    before = {name: (EXAMPLE / name).read_text() for name in ("faq_by_department.jsonl", "server_eval.jsonl")}
    subprocess.run([sys.executable, str(EXAMPLE / "prepare.py")], check=True, capture_output=True)
    assert {name: (EXAMPLE / name).read_text() for name in before} == before
