"""The kto example: prepare.py writes the same unpaired rows from LLaMA-Factory's dpo_en_demo pairs each time (a
desirable and an undesirable row a pair, no prompt in both files), and the config reads them as loss kto does."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tunelab.config import load_config
from tunelab.models.load import load_tokenizer, resolve_source
from tunelab.tasks.kto_data import build_feedback

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "kto_feedback"
PAIRS = Path("/work/shared/data/llamafactory_dpo_en_demo/dpo_en_demo.json")


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_prepare_writes_unpaired_rows_reproducibly_and_the_config_reads_them(tmp_path, tiny_model_dir):
    if not PAIRS.is_file():
        pytest.skip(f"{PAIRS} is not here")
    for out in ("a", "b"):
        cmd = [sys.executable, str(EXAMPLE / "prepare.py"), "--data", str(PAIRS), "--out", str(tmp_path / out)]
        subprocess.run(cmd, check=True, capture_output=True)
    for name in ("train.jsonl", "test.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    train, test = _rows(tmp_path / "a" / "train.jsonl"), _rows(tmp_path / "a" / "test.jsonl")
    pairs = json.loads(PAIRS.read_text(encoding="utf-8"))
    assert len(test) == 60 and len(train) == 2 * len(pairs) - 60
    for part in (train, test):
        assert sum(r["label"] for r in part) == len(part) // 2  # each pair: one row of each label
        assert all(r["prompt"][-1]["role"] == "user" and r["completion"] for r in part)
    asked = {json.dumps(r["prompt"]) for r in train}
    assert not asked & {json.dumps(r["prompt"]) for r in test}  # a held-out pair's prompt is never trained on
    side_by_side = sum(a["prompt"] == b["prompt"] for a, b in zip(train, train[1:]))
    assert side_by_side < len(train) // 20  # shuffled: a pair's two rows mostly apart, as unpaired feedback comes
    cfg = load_config(EXAMPLE / "config.yaml", {"model.name": str(tiny_model_dir)}).config
    assert (cfg.task, cfg.dpo.loss) == ("dpo", "kto")
    cfg.data.train, cfg.data.eval = [str(tmp_path / "a" / "train.jsonl")], str(tmp_path / "a" / "test.jsonl")
    data = build_feedback(cfg, load_tokenizer(resolve_source(str(tiny_model_dir))), cfg.train.seed)
    assert data.train and data.eval and {r.desirable for r in data.train} == {True, False}
    assert not [n for n in data.report.notes if "labels the other way" in n or "KTO paper advises" in n]
