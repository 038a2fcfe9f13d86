"""Checks examples/intents: prepare.py regenerates the bundled files byte for byte, the rows carry the 11 labels in
balance with no test request seen in training, the config loads, and the data pipeline puts the loss on the label
tokens only (with the labels listed in the system prompt of every example, train and eval alike)."""

import dataclasses
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tunelab.config import load_config
from tunelab.data.loader import build_datasets
from tunelab.data.render import IGNORE
from tunelab.eval.questions import read_questions

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "intents"
CLINC = Path("/work/shared/data/clinc150_oos")
END = "<|im_end|>"
TRAIN_PER_LABEL, TEST_PER_LABEL = 40, 20


def _labels() -> list[str]:
    return [*json.loads((CLINC / "domains.json").read_text(encoding="utf-8")), "oos"]


def _rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (EXAMPLE / name).read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def config():
    return load_config(EXAMPLE / "config.yaml").config


def test_prepare_reproduces_the_bundled_files(tmp_path):
    subprocess.run(
        [
            sys.executable,
            str(EXAMPLE / "prepare.py"),
            "--data",
            str(CLINC / "data_full.json"),
            "--domains",
            str(CLINC / "domains.json"),
            "--out",
            str(tmp_path),
        ],
        check=True,
        capture_output=True,
    )
    for name in ("train.jsonl", "test.jsonl", "train_more.jsonl"):
        assert (tmp_path / name).read_bytes() == (EXAMPLE / name).read_bytes(), (
            f"{name} differs from prepare.py's output"
        )


def test_prepare_refuses_what_it_cannot_draw_with_exit_status_2(tmp_path):
    base = [
        sys.executable,
        str(EXAMPLE / "prepare.py"),
        "--domains",
        str(CLINC / "domains.json"),
        "--out",
        str(tmp_path),
    ]
    too_many = subprocess.run(
        [*base, "--data", str(CLINC / "data_full.json"), "--more-per-label", "100000"], capture_output=True, text=True
    )
    assert too_many.returncode == 2, too_many.stderr
    assert "fewer than the 100040 asked for" in too_many.stderr and "--more-per-label" in too_many.stderr
    missing = subprocess.run([*base, "--data", str(tmp_path / "nope.json")], capture_output=True, text=True)
    assert missing.returncode == 2 and "nope.json: not found" in missing.stderr
    assert not list(tmp_path.glob("*.jsonl"))  # nothing written


def test_rows_have_the_eleven_labels_in_balance():
    labels = _labels()
    assert len(labels) == 11
    train, test = _rows("train.jsonl"), _rows("test.jsonl")
    assert all(set(r) == {"question", "answer"} and r["question"].strip() for r in train)
    assert all(set(r) == {"question", "label"} and r["question"].strip() for r in test)
    assert Counter(r["answer"] for r in train) == {label: TRAIN_PER_LABEL for label in labels}
    assert Counter(r["label"] for r in test) == {label: TEST_PER_LABEL for label in labels}
    questions = Counter(r["question"] for r in train + test)
    assert max(questions.values()) == 1, questions.most_common(2)  # no request twice, none shared by train and test
    # the head variant's further rows: as many again of each label, none already in train.jsonl or test.jsonl
    more = _rows("train_more.jsonl")
    assert all(set(r) == {"question", "answer"} and r["question"].strip() for r in more)
    assert Counter(r["answer"] for r in more) == {label: TRAIN_PER_LABEL for label in labels}
    assert not {r["question"] for r in more} & set(questions)
    assert len({r["question"] for r in more}) == len(more)
    # shuffled: the first 33 training rows already hold most labels (a sorted file would hold one or two)
    assert len({r["answer"] for r in train[:33]}) >= 8


def test_config_loads_and_its_paths_exist(config):
    assert [Path(p).name for p in config.data.train] == ["train.jsonl"]
    assert all(Path(p).is_file() for p in config.data.train)
    assert Path(config.eval.questions).is_file() and Path(config.eval.questions).name == "test.jsonl"
    assert config.model.name == "smollm2-135m-instruct" and config.method.name == "lora"
    # every label is offered to the model (and to the base model it is compared with)
    assert all(label in config.data.system_prompt for label in _labels())


def _loss_text(tokenizer, row) -> str:
    return tokenizer.decode([t for t, label in zip(row.input_ids, row.labels) if label != IGNORE])


def test_training_examples_have_the_loss_on_the_label_only(config, smollm2_tokenizer):
    data = dataclasses.replace(config.data, eval_fraction=0.0, shuffle=False)  # every row, in file order
    built = build_datasets(data, smollm2_tokenizer, seed=config.train.seed)
    train = _rows("train.jsonl")
    assert built.report.formats == {config.data.train[0]: "question_answer"}
    assert len(built.train) == len(train)  # nothing dropped as over-long or empty
    for row, want in zip(built.train, train):
        assert _loss_text(smollm2_tokenizer, row) == want["answer"] + END
        text = smollm2_tokenizer.decode(row.input_ids)
        assert config.data.system_prompt in text and want["question"] in text
    # the configured split still trains on 90% and takes the eval loss on the rest
    split = build_datasets(config.data, smollm2_tokenizer, seed=config.train.seed)
    held = round(len(train) * config.data.eval_fraction)
    assert (len(split.train), len(split.eval)) == (len(train) - held, held)
    assert held > 0


def test_test_rows_are_label_tasks_for_eval_and_compare(config):
    test = _rows("test.jsonl")
    items = read_questions(config.eval.questions, config.data, need_expected=True)
    assert all(it.is_label and it.kind == "label" for it in items)
    assert [it.expected for it in items] == [r["label"] for r in test]
    assert all(it.prompt[0] == {"role": "system", "content": config.data.system_prompt} for it in items)
