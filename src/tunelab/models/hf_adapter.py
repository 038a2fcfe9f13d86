"""Weights between Hugging Face llama-family checkpoints and tunelab's `LlamaForCausalLM`.

Our parameter names are Hugging Face's, so the mapping is the identity up to three differences that checkpoints show:
a tied `lm_head.weight` is absent (or present as a copy of the embedding), a bare `LlamaModel` state dict lacks the
`model.` prefix, and old checkpoints carry non-persistent `rotary_emb.inv_freq` buffers we do not have. GGUF files
arrive already in these names through transformers' GGUF loader, so they need nothing more.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from tunelab.errors import ModelError
from tunelab.models.llama import LlamaConfig, LlamaForCausalLM

_BASE_MODEL_PREFIXES = ("embed_tokens.", "layers.", "norm.")
_SHOWN_KEYS = 8


def to_tunelab_state_dict(state_dict: Mapping[str, torch.Tensor], config: LlamaConfig) -> dict[str, torch.Tensor]:
    """Hugging Face names -> ours: add a missing `model.` prefix, drop rotary buffers and a tied lm_head copy."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        if key.endswith("rotary_emb.inv_freq"):
            continue
        if key.startswith(_BASE_MODEL_PREFIXES):
            key = "model." + key
        if config.tie_word_embeddings and key == "lm_head.weight":
            continue  # the same Parameter as model.embed_tokens.weight in our model
        out[key] = tensor
    return out


def load_hf_state_dict(model: LlamaForCausalLM, state_dict: Mapping[str, torch.Tensor], assign: bool = False) -> None:
    """Load a Hugging Face-named state dict into `model`, strictly: every parameter once, no extra key, same shapes.

    `assign=True` makes the model's parameters the given tensors (no copy; use it for a model built on the meta
    device); otherwise values are copied into the existing parameters, converting dtype.
    """
    weights = to_tunelab_state_dict(state_dict, model.config)
    expected = dict(model.state_dict())
    if model.config.tie_word_embeddings:
        del expected["lm_head.weight"]  # the embedding's Parameter, loaded under model.embed_tokens.weight
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    wrong_shape = [
        f"{k}: checkpoint {tuple(weights[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(weights) & set(expected))
        if weights[k].shape != expected[k].shape
    ]
    problems = [
        f"{label} ({len(keys)}): {', '.join(keys[:_SHOWN_KEYS])}{', ...' if len(keys) > _SHOWN_KEYS else ''}"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape))
        if keys
    ]
    if problems:
        raise ModelError(
            f"the checkpoint does not match the {model.config.family} config "
            f"({model.config.num_layers} layers, hidden {model.config.hidden_size}): "
            + "; ".join(problems)
            + ". Check that config.json belongs to these weights."
        )
    model.load_state_dict(weights, strict=False, assign=assign)
    if model.config.tie_word_embeddings:
        # assign=True replaced embed_tokens.weight with a new Parameter: tie lm_head to it again.
        model.lm_head.weight = model.model.embed_tokens.weight


def from_hf_model(hf_model: nn.Module, ops: Any = None) -> LlamaForCausalLM:
    """Build our model from an instantiated transformers llama-family model (its config and weights).

    The result SHARES weight storage with `hf_model` (no copy, same device and dtype): drop `hf_model` afterwards,
    and do not train one while using the other. Raises `ModelError` for configs we do not implement; call
    `tunelab.models.llama.supports(hf_model.config)` first to fall back to the generic path instead.
    """
    config = LlamaConfig.from_hf(hf_model.config)
    with torch.device("meta"):
        model = LlamaForCausalLM(config, ops)
    load_hf_state_dict(model, hf_model.state_dict(), assign=True)
    return model.train(hf_model.training)
