"""keep_best: the weights of the lowest eval loss are the saved result, whatever order the losses come in."""

import torch
from torch import nn

from tunelab.training.best import BestWeights


def _set(model, value):
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)


def test_observe_keeps_the_lowest_and_restore_loads_it(tmp_path):
    model = nn.Linear(3, 2)
    best = BestWeights(tmp_path, enabled=True)
    for step, (value, loss) in enumerate([(1.0, 0.9), (2.0, 0.5), (3.0, 0.7), (4.0, 0.5), (5.0, float("nan"))], 1):
        _set(model, value)
        best.observe(step, loss, model)
    assert (best.step, best.loss) == (2, 0.5)  # a tie later does not replace it; NaN never counts
    resumed = BestWeights(tmp_path, enabled=True, resume=True)  # a resumed run reads the best so far
    assert (resumed.step, resumed.loss) == (2, 0.5)
    message = best.restore(model, last_step=5, last_loss=float("nan"))
    assert torch.all(model.weight == 2.0) and torch.all(model.bias == 2.0)
    assert "loaded the weights of step 2" in message and "0.5000" in message
    assert not best.path.exists()  # the result now holds these weights


def test_last_step_best_or_disabled_changes_nothing(tmp_path):
    model = nn.Linear(3, 2)
    best = BestWeights(tmp_path, enabled=True)
    _set(model, 1.0)
    best.observe(4, 0.3, model)
    assert "the last step (4) had the lowest eval loss" in best.restore(model, 4, 0.3)
    off = BestWeights(tmp_path / "off", enabled=False)
    assert not off.observe(1, 0.1, model) and off.restore(model, 1, 0.1) is None
    assert not (tmp_path / "off").exists()
