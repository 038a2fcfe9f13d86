"""Checks the head examples: the intents head variant reads the same files as the generative one (train rows with
their labels, the 220 test rows with theirs), and the spam and HH-RLHF reward examples' prepare scripts make the
same reproducible, leak-free splits from the shared data, which their configs read."""

import importlib.util
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tunelab.config import load_config
from tunelab.data.report import DataReport
from tunelab.tasks import get_task
from tunelab.tasks.classify import read_labelled
from tunelab.tasks.reward import read_pairs

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SHARED = Path("/work/shared/data")
SPAM = SHARED / "sms_spam_collection" / "SMSSpamCollection"
HH = SHARED / "hh_rlhf_harmless_base_test" / "test.jsonl.gz"


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _prepare(example: str, data: Path, out: Path) -> None:
    if not data.is_file():
        pytest.skip(f"{data} is not here")
    script = EXAMPLES / example / "prepare.py"
    subprocess.run(
        [sys.executable, str(script), "--data", str(data), "--out", str(out)], check=True, capture_output=True
    )


def test_intents_head_variant_reads_the_generative_variants_files_and_the_further_rows(smollm2_tokenizer):
    cfg = load_config(EXAMPLES / "intents" / "config_head.yaml").config
    assert cfg.task == "classify" and cfg.method.name == "lora"
    assert [Path(p).name for p in cfg.data.train] == ["train.jsonl", "train_more.jsonl"]
    data = get_task("classify").build_data(cfg, smollm2_tokenizer, cfg.train.seed)
    train = _rows(EXAMPLES / "intents" / "train.jsonl") + _rows(EXAMPLES / "intents" / "train_more.jsonl")
    assert data.facts["labels"] == sorted({r["answer"] for r in train}) and len(data.facts["labels"]) == 11
    assert len(data.train) == len(train) == 880 and not data.eval  # every row trains, as cross-validated
    assert data.facts["input"] == "text"  # the request as plain text: short rows, cheap steps
    first = smollm2_tokenizer.decode(data.train[0].input_ids)
    assert first.startswith("Request: ") and first.endswith("\nDomain:")  # classify.prompt_format
    assert cfg.classify.head_lr is None  # head and adapters at one rate: sweep_cv.py's best setting
    test = read_labelled([str(EXAMPLES / "intents" / "test.jsonl")], cfg.data.fields, None, DataReport(), lenient=True)
    assert [r.label for r in test] == [r["label"] for r in _rows(EXAMPLES / "intents" / "test.jsonl")]
    assert len(test) == 220


def test_spam_prepare_is_reproducible_stratified_and_leak_free(tmp_path):
    _prepare("spam", SPAM, tmp_path / "a")
    _prepare("spam", SPAM, tmp_path / "b")
    for name in ("train.jsonl", "test.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    train, test = _rows(tmp_path / "a" / "train.jsonl"), _rows(tmp_path / "a" / "test.jsonl")
    assert len(train) + len(test) == 5171  # 5,574 messages, 403 repeated texts dropped
    assert not {r["text"] for r in train} & {r["text"] for r in test}
    spam = (
        Counter(r["label"] for r in train)["spam"] / len(train),
        Counter(r["label"] for r in test)["spam"] / len(test),
    )
    assert abs(spam[0] - spam[1]) < 0.005 and len(test) == round(0.2 * 4518) + round(0.2 * 653)


def test_spam_config_loads():
    cfg = load_config(EXAMPLES / "spam" / "config.yaml").config
    assert cfg.task == "classify" and [Path(p).name for p in cfg.data.train] == ["train.jsonl"]


def test_hh_reward_prepare_makes_prompt_and_answer_pairs(tmp_path, smollm2_tokenizer):
    _prepare("hh_reward", HH, tmp_path / "a")
    _prepare("hh_reward", HH, tmp_path / "b")
    for name in ("train.jsonl", "test.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    train, test = _rows(tmp_path / "a" / "train.jsonl"), _rows(tmp_path / "a" / "test.jsonl")
    assert len(test) == 200 and len(train) == 2312 - 9 - 200
    assert not {json.dumps(r) for r in train} & {json.dumps(r) for r in test}
    first = test[0]
    assert first["prompt"][-1]["role"] == "user" and first["chosen"] != first["rejected"]
    cfg = load_config(EXAMPLES / "hh_reward" / "config.yaml").config
    assert cfg.task == "reward"
    pairs = read_pairs([str(tmp_path / "a" / "test.jsonl")], cfg.data.fields, cfg.data.system_prompt, DataReport())
    assert len(pairs) == 200 and pairs[0].chosen.messages[-1] == {"role": "assistant", "content": first["chosen"]}


def test_intents_cross_validation_folds_are_disjoint_label_balanced_and_seeded():
    spec = importlib.util.spec_from_file_location("sweep_cv", EXAMPLES / "intents" / "sweep_cv.py")
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    rows = (EXAMPLES / "intents" / "train.jsonl").read_text().splitlines(keepends=True)
    parts = sweep.folds(rows)
    assert parts == sweep.folds(rows) and len(parts) == sweep.FOLDS == 5
    assert sorted(r for p in parts for r in p) == sorted(rows)  # each row held out exactly once
    for part in parts:
        labels = [json.loads(r)["answer"] for r in part]
        assert len(part) == 88 and all(labels.count(label) == 8 for label in set(labels)) and len(set(labels)) == 11
    # a setting's further rows train in every fold and are never held out
    assert all(not Path(s["+rows"]).is_absolute() for s in sweep.SETTINGS.values() if "+rows" in s)
    more = (EXAMPLES / "intents" / "train_more.jsonl").read_text().splitlines(keepends=True)
    assert not set(more) & set(rows)


def test_hh_reward_readme_counts_the_test_pairs_eval_skips(tmp_path, smollm2_tokenizer):
    """`tunelab eval` of a reward run skips the pairs training would skip as longer than data.max_length (as the main
    README says); the example's README said all 200 test pairs were scored, 188 of them cut to their last 160 tokens.
    Its count of the pairs eval scores and skips is the one the run's data rule gives."""
    _prepare("hh_reward", HH, tmp_path)
    over = {"data.train": [str(tmp_path / "test.jsonl")], "data.eval_fraction": 0.0}
    cfg = load_config(EXAMPLES / "hh_reward" / "config.yaml", over).config
    data = get_task("reward").build_data(cfg, smollm2_tokenizer, cfg.train.seed)
    scored, skipped = len(data.train), data.report.total_skipped
    assert scored + skipped == 200
    text = " ".join((EXAMPLES / "hh_reward" / "README.md").read_text(encoding="utf-8").split())
    assert f"scores {scored} of the 200 test pairs and skips the other {skipped}" in text, (scored, skipped)
    assert "188 of the 200 test pairs" not in text
