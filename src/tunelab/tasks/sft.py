"""Supervised fine-tuning (and continued pretraining): next-token cross-entropy on the answer tokens.

The default task. Rows are rendered chats or text blocks (`data/`), optionally packed; the loss is the sum of the
token losses, normalised by the loss tokens of the whole optimizer step. On our fast model the LM head is fused with
the loss (the (N, V) logits never exist); on the generic path the head is applied only at loss positions for the
families whose logits are exactly lm_head(final hidden state). The result is a PEFT adapter or the full weights.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tunelab.config import RunConfig
from tunelab.data.batches import make_batches
from tunelab.data.checks import data_checks
from tunelab.data.loader import Datasets, build_datasets
from tunelab.models.llama import LlamaForCausalLM
from tunelab.peft.save import save_adapter
from tunelab.tasks.task import Task, eval_mode, save_tokenizer
from tunelab.training.build import BuiltModel, save_full_weights
from tunelab.training.distributed import is_parallel, unwrap


def loss_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Tokens that carry a loss after the shift by one (labels[:, 1:] are the targets)."""
    return int((batch["labels"][:, 1:] != -100).sum())


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


@torch.no_grad()
def mean_loss(model: nn.Module, batches: list[dict[str, torch.Tensor]]) -> float:
    """Mean token loss over the batches (eval mode while it runs)."""
    total, count = 0.0, 0
    with eval_mode(model):
        for batch in batches:
            total += summed_loss(model, batch).item()
            count += loss_tokens(batch)
    return total / max(count, 1)


def build_data(cfg: RunConfig, tokenizer, seed: int) -> Datasets:
    return build_datasets(cfg.data, tokenizer, seed)


def loss(model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
    return summed_loss(model, batch), {}


def prepare(built: BuiltModel, data: Datasets, cfg: RunConfig) -> None:
    """Nothing to add: the model keeps its LM head."""


def save(folder: Path, built: BuiltModel, tokenizer, cfg: RunConfig, data: Datasets) -> None:
    """The adapter (PEFT layout) or the full weights (safetensors), and the tokenizer with the chat template training
    wrote (`save_tokenizer`)."""
    if cfg.method.is_adapter:
        save_adapter(built.model, folder, base_model=cfg.model.name)
    else:
        save_full_weights(built, folder)
    save_tokenizer(tokenizer, folder, cfg, data)


def evaluate(model: nn.Module, batches: list[dict]) -> dict[str, float]:
    return {"eval_loss": mean_loss(model, batches)}


SFT = Task(
    name="sft",
    build_data=build_data,
    make_batches=make_batches,
    count=loss_tokens,
    loss=loss,
    prepare=prepare,
    save=save,
    evaluate=evaluate,
    checks=data_checks,
)
