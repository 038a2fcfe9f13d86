"""One optimizer step over 4 rows in one micro-batch, or in micro-batches of 2 or 1 (gradient accumulation), moves the
weights alike for the head tasks and dpo: each task's loss is a sum the step divides once by the step's rows or pairs,
so rows of different lengths, padded differently in each split, weigh the same."""

import copy

import pytest
import torch
from transformers import LlamaForCausalLM

from tunelab.config import DpoConfig
from tunelab.kernels import select as select_ops
from tunelab.models.hf_adapter import from_hf_model
from tunelab.tasks import classify, dpo, reward
from tunelab.tasks.head import attach_head
from tunelab.tasks.head_data import pad_rows
from tunelab.tasks.preference_data import PreferenceRow
from tunelab.training.build import BuiltModel
from tunelab.training.step import train_step

ROWS = [[5, 17, 42, 9, 100, 7, 3], [8, 3, 61], [250, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20], [31, 32, 33, 34, 35]]


def _lm(impl, config):
    torch.manual_seed(0)
    hf = LlamaForCausalLM(config)
    return hf, (from_hf_model(hf, select_ops("auto")) if impl == "fast" else hf)


def _head(impl, config, outputs):
    hf, lm = _lm(impl, config)
    built = BuiltModel(lm, impl, hf.config, torch.device("cpu"), torch.float32, 0, 0)
    attach_head(built, outputs, seed=1)
    return built.model


def _classify_batches(rows):
    labels, weights = [0, 1, 2, 1], [1.0, 2.0, 0.5, 1.0]  # class weights too: still divided by the rows
    out = []
    for start in range(0, 4, rows):
        batch = pad_rows(ROWS[start : start + rows], 0)
        batch["targets"] = torch.tensor(labels[start : start + rows])
        batch["weights"] = torch.tensor(weights[start : start + rows])
        out.append(batch)
    return out


def _reward_batches(pairs):
    rejected = ROWS[::-1]
    return [pad_rows(ROWS[s : s + pairs] + rejected[s : s + pairs], 0) for s in range(0, 4, pairs)]


def _dpo_batches(pairs):
    def pair(i):
        prompt, chosen, rejected = ROWS[i][:2], ROWS[i][2:], ROWS[(i + 1) % 4][:4]
        ignored = [-100] * len(prompt)
        return PreferenceRow(
            prompt + chosen, ignored + chosen, prompt + rejected, ignored + rejected, "f", i, (-3.0 - i, -5.0 + i)
        )

    rows = [pair(i) for i in range(4)]
    return [dpo.collate(rows[s : s + pairs], 0) for s in range(0, 4, pairs)]


CASES = {
    "classify": (lambda impl, config: _head(impl, config, 3), _classify_batches, classify.CLASSIFY),
    "reward": (lambda impl, config: _head(impl, config, 1), _reward_batches, reward.REWARD),
    "dpo sigmoid": (lambda impl, config: _lm(impl, config)[1], _dpo_batches, dpo.make_task(DpoConfig(loss="sigmoid"))),
    "dpo ipo": (lambda impl, config: _lm(impl, config)[1], _dpo_batches, dpo.make_task(DpoConfig(loss="ipo"))),
}


def _step(model, batches, task):
    model = copy.deepcopy(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)  # the update is the gradient itself
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    figures = train_step(model, batches, optimizer, scheduler, max_grad_norm=0.0, task=task)
    return torch.cat([p.detach().flatten() for p in model.parameters()]), figures


@pytest.mark.parametrize("impl", ["fast", "generic"])
@pytest.mark.parametrize("case", list(CASES))
def test_accumulated_micro_batches_step_as_one_batch(case, impl, tiny_llama_config):
    make, batches, task = CASES[case]
    model = make(impl, tiny_llama_config(vocab_size=300, tie_word_embeddings=False))
    start = torch.cat([p.detach().flatten() for p in model.parameters()])
    whole, figures = _step(model, batches(4), task)
    assert figures["count"] == 4 and not torch.equal(whole, start)
    for size in (2, 1):
        split, split_figures = _step(model, batches(size), task)
        # fp32 sums in another order: a few ulps of the gradient, whose entries are at most ~5 here
        torch.testing.assert_close(split, whole, rtol=0, atol=1e-5)
        assert split_figures["loss"] == pytest.approx(figures["loss"], rel=1e-5)
        assert split_figures["metrics"] == pytest.approx(figures["metrics"], rel=1e-5, abs=1e-6)
