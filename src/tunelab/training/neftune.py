"""NEFTune: uniform noise on the input embeddings while training (Jain et al., 2023, "NEFTune: Noisy Embeddings
Improve Instruction Finetuning", arXiv:2310.05914; TRL, Axolotl and LLaMA-Factory offer it as `neftune_noise_alpha`).

Every training forward adds U(-s, s) to each entry of the (B, T, d) embedding output, s = alpha / sqrt(T * d): the
noise of one position then has norm about alpha / sqrt(3 T), the scale the paper picked so that one alpha suits every
length and width (it uses alpha 5 to 15 on 7B models). T is the batch's padded width, as the paper's and TRL's code
take it. With data.packing T is data.max_length, the width packed rows are filled up to (TRL's packed rows are
exactly that wide): a packed micro-batch reaches the embedding as one sequence of all its rows' tokens, whose length
grows with train.micro_batch, which must not change the noise. Evaluation, generation and the saved weights see none
of it: the hook acts only while the module is in training mode, and it is a forward hook on the model's own
embedding module (no class is patched).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from tunelab.errors import ConfigError


def input_embedding(model: nn.Module) -> nn.Embedding:
    """The token embedding of our decoder (model.model.embed_tokens, under a task head too) or of a transformers
    model (get_input_embeddings)."""
    getter = getattr(model, "get_input_embeddings", None)
    module = getter() if callable(getter) else None
    if module is None:
        body = getattr(model, "model", None)
        module = getattr(body, "embed_tokens", None)
    if not isinstance(module, nn.Embedding):
        raise ConfigError("option 'train.neftune_alpha': this model has no token embedding module to add noise to.")
    return module


def noise_width(data) -> int | None:
    """T of the noise's scale for a run of data config `data`: data.max_length with packing, else None (each
    batch's own padded width)."""
    return data.max_length if data.packing else None


def add_embedding_noise(model: nn.Module, alpha: float, width: int | None = None) -> RemovableHandle:
    """Register the noise on the model's embedding; the handle's remove() takes it off. `width`: T for every forward
    (`noise_width`); None: the width of the embedded batch."""

    def noisy(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        if not module.training:
            return None
        scale = alpha / math.sqrt((width or output.shape[-2]) * output.shape[-1])
        return output + torch.empty_like(output).uniform_(-scale, scale)

    return input_embedding(model).register_forward_hook(noisy)
