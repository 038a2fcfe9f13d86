"""Log-probabilities of given answers under the model, summed per row: what preference and policy-gradient losses
(tasks/dpo.py) are made of.

    logp[b] = sum_t log p(labels[b, t+1] | tokens <= t)     over the t where labels[b, t+1] != -100

Only the positions that carry a label go through the LM head. On our fast model they go through the fused head +
log-prob op (`kernels/log_probs.py`, reference on the CPU): the (N, V) logits never exist at once. On the generic
path the head is applied only at those positions for the families whose logits are exactly lm_head(hidden)
(`tasks/sft.PLAIN_HEAD_FAMILIES`), else the full logits are taken from the model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tunelab.models.llama import IGNORE_INDEX, LlamaForCausalLM
from tunelab.tasks.sft import PLAIN_HEAD_FAMILIES
from tunelab.training.distributed import is_parallel, unwrap


def token_log_probs(model: nn.Module, batch: dict, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(n,) fp32 log p of every labelled target token of the batch, and (n,) the row each belongs to, row-major. A
    model wrapped for several ranks is called through its own forward (DDP and FSDP2 hook it). p is
    softmax(logits / temperature), the distribution answers sampled at that temperature were drawn from (grpo); at
    temperature 1 nothing is divided."""
    input_ids, mask, positions = batch["input_ids"], batch["attention_mask"], batch.get("position_ids")
    if isinstance(unwrap(model), LlamaForCausalLM):
        return model(input_ids, positions, mask, labels=batch["labels"], token_log_probs=True, temperature=temperature)
    targets = batch["labels"][:, 1:]  # (B, T-1)
    keep = targets != IGNORE_INDEX
    if not is_parallel(model) and getattr(model.config, "model_type", None) in PLAIN_HEAD_FAMILIES:
        hidden = model.get_decoder()(input_ids=input_ids, attention_mask=mask, position_ids=positions)
        logits = model.get_output_embeddings()(hidden.last_hidden_state[:, :-1][keep]).float()  # (n, V)
    else:
        logits = model(input_ids=input_ids, attention_mask=mask, position_ids=positions).logits[:, :-1][keep].float()
    if temperature != 1:
        logits = logits / temperature
    logp = -F.cross_entropy(logits, targets[keep], reduction="none")  # (n,)
    return logp, keep.nonzero()[:, 0]


def sequence_log_probs(model: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) fp32 summed log p of each row's labelled tokens, and (B,) how many tokens that is."""
    logp, rows = token_log_probs(model, batch)
    return row_sums(logp, rows, batch["input_ids"].shape)


def row_sums(values: torch.Tensor, rows: torch.Tensor, shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) sums of `values` (n,) per row and (B,) how many there are, `rows` (n,) ascending, at most T per row of
    a (B, T) batch. The values are laid out in a (B, T) grid, each row's first, and summed along T: index_add on CUDA
    adds with atomics in an order that changes between runs, so a row's sum (and a resumed run) would not repeat."""
    b, t = shape
    counts = torch.bincount(rows, minlength=b)
    starts = counts.cumsum(0) - counts
    cols = torch.arange(rows.numel(), device=rows.device) - starts[rows]
    grid = values.new_zeros(b, t).index_put((rows, cols), values)  # unique places: no accumulation
    return grid.sum(1), counts
