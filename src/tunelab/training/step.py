"""One optimizer step: forward, loss, backward over the micro-batches, clip, guard, step, schedule, zero-grad.

The loss is normalised once per optimizer step: the summed token losses of all micro-batches are divided by the
number of loss tokens in all of them, so a micro-batch with more answer tokens weighs more, as it should. With
several ranks (training/distributed.py) the count is summed over every rank's micro-batches before the division and
the gradients are summed across ranks, so the step is the one of a single process with all the micro-batches.
The guard (training/guard.py) skips the update when the loss or the gradient norm is NaN/inf: the gradients are
dropped and the optimizer never sees them, whatever the optimizer (fused AdamW, AdamW8bit).
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from tunelab.models.llama import LlamaForCausalLM
from tunelab.training.distributed import ONE_PROCESS, Ranks, gradient_sync, is_parallel, replicated, unwrap, weight
from tunelab.training.guard import advance_schedule, update_is_finite


def loss_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Tokens that carry a loss after the shift by one (labels[:, 1:] are the targets); none in a blank batch."""
    return int((batch["labels"][:, 1:] != -100).sum()) if weight(batch) else 0


# Families whose logits are exactly lm_head(final hidden state): no soft-capping or scaling after the head.
PLAIN_HEAD_FAMILIES = {"llama", "mistral", "qwen2", "qwen3"}


def summed_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of next-token cross-entropy over the batch's loss tokens (fp32 scalar). A model wrapped for several
    ranks is called through its own forward (DDP and FSDP2 hook it), so it gets the full logits on the generic path."""
    if isinstance(unwrap(model), LlamaForCausalLM):  # our model: the LM head fused with the loss
        if "doc_lengths" in batch:
            return model(**packed_inputs(batch)).loss_sum
        return model(
            batch["input_ids"], batch["position_ids"], batch["attention_mask"], labels=batch["labels"]
        ).loss_sum
    targets = batch["labels"][:, 1:]  # (B, T-1): position t predicts token t+1
    if not is_parallel(model) and getattr(model.config, "model_type", None) in PLAIN_HEAD_FAMILIES:
        # Apply the LM head only where a loss is taken: answers are often a third of the tokens.
        hidden = model.get_decoder()(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=batch.get("position_ids")
        ).last_hidden_state[:, :-1]  # (B, T-1, d)
        keep = targets != -100
        logits = model.get_output_embeddings()(hidden[keep]).float()  # (n, V)
        return F.cross_entropy(logits, targets[keep], reduction="sum")
    logits = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=batch.get("position_ids")
    ).logits  # (B, T, V)
    logits = logits[:, :-1].float()
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100, reduction="sum"
    )


def packed_inputs(batch: dict) -> dict[str, torch.Tensor]:
    """Rows of packed documents (B, T, right-padded) -> one row (1, N) of all real tokens with cu_seqlens, so that
    variable-length attention runs without padding and never across documents."""
    keep = batch["attention_mask"].bool()  # (B, T)
    lengths = [n for row in batch["doc_lengths"] for n in row]
    cu_seqlens = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32, device=keep.device)
    return {
        "input_ids": batch["input_ids"][keep][None],
        "position_ids": batch["position_ids"][keep][None],
        "labels": batch["labels"][keep][None],
        "cu_seqlens": cu_seqlens,
    }


def train_step(
    model: nn.Module,
    micro_batches: list[dict[str, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    max_grad_norm: float,
    ranks: Ranks = ONE_PROCESS,
) -> dict[str, float]:
    """Returns loss (mean over the step's loss tokens), grad_norm (before clipping), loss_tokens, and skipped:
    whether the guard dropped the update because the loss or the gradient norm was not finite. With several ranks,
    `micro_batches` are this rank's (training/distributed.py) and the figures are the whole step's."""
    total = int(ranks.sum(sum(loss_tokens(b) for b in micro_batches)))  # every rank's loss tokens
    loss_sum = 0.0
    for i, batch in enumerate(micro_batches):
        with gradient_sync(model, sync=i == len(micro_batches) - 1):  # ranks exchange (sum) gradients once
            loss = summed_loss(model, batch) * weight(batch)
            (loss / max(total, 1)).backward()
        loss_sum += loss.item()
    loss_sum = ranks.sum(loss_sum)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm if max_grad_norm > 0 else float("inf"))
    norm = float(replicated(norm))
    applied = ranks.all(update_is_finite(loss_sum, norm))  # all ranks apply or skip together
    if applied:
        optimizer.step()
        scheduler.step()
    else:
        advance_schedule(scheduler)  # the schedule follows the step count, as a resumed run does
    optimizer.zero_grad(set_to_none=True)
    return {"loss": loss_sum / max(total, 1), "grad_norm": norm, "loss_tokens": total, "skipped": not applied}


@torch.no_grad()
def evaluate(model: nn.Module, batches: list[dict[str, torch.Tensor]]) -> float:
    """Mean token loss over the eval batches."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for batch in batches:
        total += summed_loss(model, batch).item()
        count += loss_tokens(batch)
    model.train(was_training)
    return total / max(count, 1)
