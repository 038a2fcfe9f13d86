"""The sft task behind the seam is today's code: the same losses and weights, bit for bit, as the step before it."""

import copy

import pytest
import torch
from transformers import LlamaForCausalLM

from tunelab.kernels import select as select_ops
from tunelab.models.hf_adapter import from_hf_model
from tunelab.peft.lora import attach_lora
from tunelab.tasks import get_task
from tunelab.tasks.sft import SFT, loss_tokens, summed_loss
from tunelab.tasks.task import eval_mode
from tunelab.training.step import train_step


def _old_train_step(model, micro_batches, optimizer, scheduler, max_grad_norm):
    """training/step.train_step as it was before the task seam (commit 5da3157), verbatim."""
    total = sum(loss_tokens(b) for b in micro_batches)
    loss_sum = 0.0
    for batch in micro_batches:
        loss = summed_loss(model, batch)
        (loss / max(total, 1)).backward()
        loss_sum += loss.item()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm if max_grad_norm > 0 else float("inf"))
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return {"loss": loss_sum / max(total, 1), "grad_norm": float(norm), "loss_tokens": total}


def _model(impl, tiny_llama_config):
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(vocab_size=300, tie_word_embeddings=False))
    if impl == "fast":
        model = from_hf_model(model, select_ops("auto"))
    attach_lora(model, ["all-linear"], r=4, alpha=8.0)
    for _, p in model.named_parameters():  # B = 0 would make the first steps trivial; give it values
        if p.requires_grad and p.abs().sum() == 0:
            p.data.normal_(std=0.02)
    return model


def _batches(seed):
    g = torch.Generator().manual_seed(seed)
    out = []
    for masked, width in ((2, 12), (7, 10), (4, 12), (5, 9)):  # unequal loss tokens per micro-batch
        ids = torch.randint(0, 300, (3, width), generator=g)
        labels = ids.clone()
        labels[:, :masked] = -100
        labels[2, width - 3 :] = -100  # a right-padded row
        mask = torch.ones_like(ids)
        mask[2, width - 3 :] = 0
        out.append(
            {
                "input_ids": ids,
                "labels": labels,
                "attention_mask": mask,
                "position_ids": torch.arange(width)[None].expand(3, width),
            }
        )
    return out


@pytest.mark.parametrize("impl", ["generic", "fast"])
def test_sft_task_steps_are_bit_identical_to_the_old_step(impl, tiny_llama_config):
    runs = []
    for step_fn in (_old_train_step, lambda *a: train_step(*a, SFT)):
        model = _model(impl, tiny_llama_config)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-2)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - 0.1 * s)
        losses = []
        for step in range(3):  # two micro-batches per step, then the other two
            batches = _batches(step)
            for group in (batches[:2], batches[2:]):
                stats = step_fn(model, group, opt, sched, 1.0)
                losses.append((stats["loss"], stats["grad_norm"]))
        runs.append((losses, [copy.deepcopy(p.detach()) for p in params]))
    (old_losses, old_weights), (new_losses, new_weights) = runs
    assert old_losses == new_losses  # exact float equality: the same operations in the same order
    for a, b in zip(old_weights, new_weights):
        assert torch.equal(a, b)


def test_the_step_reports_the_tasks_count_and_metric_means(tiny_llama_config):
    model = _model("generic", tiny_llama_config)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    batches = _batches(0)[:2]
    stats = train_step(model, batches, opt, sched, 0.0)  # the default task is sft
    assert stats["count"] == stats["loss_tokens"] == sum(loss_tokens(b) for b in batches)  # federated/ reads the latter
    assert stats["metrics"] == {} and stats["skipped"] is False


def test_unknown_task_names_the_allowed_ones():
    from tunelab.errors import ConfigError

    with pytest.raises(ConfigError, match="allowed values: sft"):
        get_task("summarise")


def test_eval_mode_restores_the_mode_the_model_was_in_even_when_the_block_raises():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5))
    for training in (True, False):
        model.train(training)
        with eval_mode(model):
            assert not model.training and not model[1].training
        assert model.training is training
    model.train()
    with pytest.raises(RuntimeError), eval_mode(model):
        raise RuntimeError("an eval that fails")
    assert model.training
