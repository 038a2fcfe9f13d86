"""The rates beside train.lr: a head's own (classify.head_lr) and LoRA+'s B matrices'. train logs each in
metrics.jsonl (lr_head, lr_B) and prints it at its start; `tunelab check` shows the same lines."""

import json

import pytest

import tunelab
from tunelab.training.optim import rate_lines, start_rates

LR, HEAD_LR, RATIO = 1e-3, 5e-2, 16.0
ROWS = [{"text": f"{'good' if i % 2 else 'bad'} {i}", "label": "pos" if i % 2 else "neg"} for i in range(8)]


@pytest.fixture
def classify(tiny_overrides, tmp_path):
    data = tmp_path / "labels.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return tiny_overrides | {"task": "classify", "data.train": [str(data)], "train.max_steps": 3, "train.lr": LR}


def _records(run_dir) -> list[dict]:
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def test_a_heads_own_rate_is_logged_and_printed_beside_lr(classify, tmp_path, capsys):
    run = tunelab.train(None, classify | {"classify.head_lr": HEAD_LR, "train.warmup_ratio": 0.5}, check=False)
    printed = capsys.readouterr().out
    assert (
        "head: trains at 0.05 (classify.head_lr), train.lr 0.001; metrics.jsonl logs the head's as lr_head" in printed
    )
    records = _records(run.run_dir)
    assert len(records) == 3 and len({r["lr"] for r in records}) > 1  # the schedule moves both alike
    assert all(r["lr_head"] == pytest.approx(r["lr"] * HEAD_LR / LR) for r in records)
    assert "lr_B" not in records[0]


def test_a_head_at_train_lr_logs_no_rate_of_its_own(classify, tmp_path, capsys):
    run = tunelab.train(None, classify | {"classify.head_lr": LR, "output_dir": str(tmp_path / "same")}, check=False)
    assert "lr_head" not in capsys.readouterr().out
    assert not any("lr_head" in r for r in _records(run.run_dir))


def test_with_loraplus_a_run_logs_both_and_check_shows_what_train_prints(classify, capsys):
    over = classify | {"classify.head_lr": HEAD_LR, "train.loraplus_lr_ratio": RATIO}
    result = tunelab.check(None, over, model=False)
    item = next(i for i in result.items if i.name == "learning rates")
    run = tunelab.train(None, over, check=False)
    printed = capsys.readouterr().out.splitlines()
    assert item.details == rate_lines(LR, RATIO, {"score": HEAD_LR}) and len(item.details) == 2
    assert all(line in printed for line in item.details)  # word for word what train printed
    assert "B matrices train at 0.016 (train.lr 0.001 x train.loraplus_lr_ratio 16)" in item.details[0]
    record = _records(run.run_dir)[-1]
    assert record["lr_B"] == pytest.approx(record["lr"] * RATIO) and record["lr_head"] == pytest.approx(
        record["lr"] * HEAD_LR / LR
    )


def test_check_shows_b_rate_of_an_sft_run_and_nothing_without_one(tiny_overrides):
    item = next(
        i
        for i in tunelab.check(None, tiny_overrides | {"train.loraplus_lr_ratio": 4}, model=False).items
        if i.name == "learning rates"
    )
    assert item.details == ["LoRA+: the adapters' B matrices train at 0.004 (train.lr 0.001 x train.loraplus_lr_ratio 4), A at 0.001; metrics.jsonl logs B's as lr_B"]  # fmt: skip
    assert not any(i.name == "learning rates" for i in tunelab.check(None, tiny_overrides, model=False).items)


def test_start_rates_and_lines_before_the_auto_rate_is_chosen():
    assert start_rates(LR, None, None) == {"lr": LR}
    assert start_rates(LR, RATIO, {"score": LR}) == {"lr": LR, "lr_B": LR * RATIO}  # a head at lr logs none
    lines = rate_lines(None, RATIO, {"score": HEAD_LR})  # train.lr auto, the model's config not read
    assert "train.lr x (train.loraplus_lr_ratio 16)" in lines[0] and "from the model's width" in lines[0]
    assert lines[1].startswith("head: trains at 0.05 (classify.head_lr), train.lr (auto")
