"""`tunelab check` on a config that leaves the training options to auto: it shows what train would choose from the
data, and its data checks and first step use that micro-batch."""

import tunelab

AUTO_TRAIN = {"train.lr": "auto", "train.micro_batch": "auto", "train.grad_accum": 1}


def test_check_shows_the_auto_values_from_the_data(tiny_overrides):
    result = tunelab.check(None, tiny_overrides | AUTO_TRAIN, model=True)
    assert result.passed, [i.line() for i in result.items if i.status == "fail"]
    item = next(i for i in result.items if i.name == "auto values")
    # the rate train would choose from the model's width, not 'when training starts': check reads the model's config
    assert item.status == "info" and "when training starts" not in item.summary
    assert any(d.startswith("train.lr = ") and "hidden size" in d for d in item.details)
    # 24 rows: micro-batch 1 (the power of two <= 24 / 32), 24 steps an epoch, 5 epochs for 100 steps
    assert any(d.startswith("train.micro_batch = 1: small set") for d in item.details)
    # printed as train prints them (5 epochs, not check's former 5.0)
    assert any(d.startswith("train.epochs = 5: ") for d in item.details)
    assert all(not d.split(":")[0].endswith(".0") for d in item.details)
