"""The step: the loss is summed over tokens and divided once per optimizer step, so accumulation equals one big batch."""

import torch
from transformers import LlamaForCausalLM

from tunelab.training.schedule import lr_factor
from tunelab.training.step import loss_tokens, summed_loss, train_step


def _model(tiny_llama_config):
    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_llama_config(vocab_size=300, tie_word_embeddings=False))


def _batch(rows, width, masked):
    ids = torch.randint(0, 300, (rows, width))
    labels = ids.clone()
    labels[:, :masked] = -100
    return {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)}


def test_summed_loss_matches_transformers_mean_loss(tiny_llama_config):
    model = _model(tiny_llama_config)
    batch = _batch(3, 12, masked=5)
    ours = summed_loss(model, batch) / loss_tokens(batch)
    theirs = model(input_ids=batch["input_ids"], labels=batch["labels"]).loss
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_accumulated_micro_batches_equal_one_batch(tiny_llama_config):
    torch.manual_seed(1)
    # Unequal loss-token counts: a per-micro-batch mean would weigh the two halves wrongly.
    a, b = _batch(2, 12, masked=2), _batch(2, 12, masked=9)
    whole = {k: torch.cat([a[k], b[k]]) for k in a}
    grads = []
    for micro in ([a, b], [whole]):
        model = _model(tiny_llama_config)
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        params = list(model.parameters())
        stats = train_step(model, micro, opt, sched, max_grad_norm=0.0)
        # train_step zeroes grads after the step; recompute the normalised gradient the same way to compare.
        total = sum(loss_tokens(x) for x in micro)
        for x in micro:
            (summed_loss(model, x) / total).backward()
        grads.append(([p.grad.clone() for p in params], stats["loss"]))
    (g1, loss1), (g2, loss2) = grads
    assert abs(loss1 - loss2) < 1e-5
    for x, y in zip(g1, g2):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-6)


def test_schedules():
    assert lr_factor(0, 100, 10, "cosine") < lr_factor(9, 100, 10, "cosine") <= 1.0
    assert lr_factor(10, 100, 10, "cosine") == 1.0
    assert abs(lr_factor(100, 100, 10, "cosine")) < 1e-9
    assert abs(lr_factor(55, 100, 10, "linear") - 0.5) < 1e-9
    assert lr_factor(99, 100, 0, "constant") == 1.0
