"""Build the model to train: load it, pick the implementation, then apply the method (LoRA, full, top layers).

This is the one place where a model is put together for training; the model code itself knows nothing of adapters,
freezing or precision.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from tunelab.config import MethodConfig, ModelConfig
from tunelab.errors import ConfigError
from tunelab.models.load import ModelSource, load_hf_model, pick_device, pick_dtype
from tunelab.peft.lora import attach_lora


@dataclass
class BuiltModel:
    model: nn.Module
    impl: str  # "fast" or "generic"
    device: torch.device
    dtype: torch.dtype
    trainable: int
    total: int


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The stack of decoder blocks: the longest nn.ModuleList in the model."""
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
    if not lists:
        raise ConfigError("option 'method.name' is layers, but this model has no list of decoder layers.")
    return max(lists, key=len)


def apply_method(model: nn.Module, method: MethodConfig) -> None:
    if method.name == "lora":
        attach_lora(model, method.target_modules, method.r, method.alpha, method.dropout)
    elif method.name == "full":
        for p in model.parameters():
            p.requires_grad_(True)
    elif method.name == "layers":
        layers = decoder_layers(model)
        if method.top_layers > len(layers):
            raise ConfigError(f"option 'method.top_layers' is {method.top_layers}, but the model has {len(layers)} layers.")
        for p in model.parameters():
            p.requires_grad_(False)
        for layer in layers[len(layers) - method.top_layers :]:
            for p in layer.parameters():
                p.requires_grad_(True)


def build_model(source: ModelSource, model_cfg: ModelConfig, method: MethodConfig) -> BuiltModel:
    device = pick_device(model_cfg.device)
    dtype = pick_dtype(model_cfg.dtype, device)
    if method.name in ("full", "layers") and dtype == torch.float16:
        raise ConfigError("option 'model.dtype' fp16 cannot train full weights without loss scaling; use bf16 or fp32.")
    model = load_hf_model(source, dtype, device, model_cfg.trust_remote_code)
    impl = "generic"
    if model_cfg.impl == "fast":
        raise ConfigError("option 'model.impl' fast is not available for this model yet; use auto or generic.")
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = False  # no KV cache while training
    apply_method(model, method)
    model.train()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return BuiltModel(model, impl, device, dtype, trainable, total)
