"""The optimizer: AdamW over the trainable parameters, with no weight decay on norms, biases and 1-D tensors.

`kind` "adamw" is torch's AdamW (fused on CUDA) when every trainable parameter is fp32 (LoRA's adapters), and
`CompensatedAdamW` when some are bf16 or fp16 (full fine-tuning, method=layers): fp32 moments and Kahan-compensated
weights, without which most small updates of a bf16 weight round away (`training.compensated`). "adamw_8bit" is
`AdamW8bit`, the same update with both moments stored in 8 bits (imported here only when chosen). "adamw_torch" is
torch's AdamW whatever the parameters' dtype: a bf16 weight's moments are bf16 and nothing compensates its rounding
(6 bytes less a weight than "adamw", for a user who takes the rounded-away updates for the memory).
"""

import torch
from torch import nn

from tunelab.errors import ConfigError
from tunelab.training.compensated import CompensatedAdamW, needs_compensation


def build_optimizer(
    model: nn.Module, lr: float, weight_decay: float, kind: str = "adamw", lrs: dict[str, float] | None = None
) -> torch.optim.Optimizer:
    """`lrs`: {parameter-name prefix: learning rate} for parameters that do not take `lr` (a head's classify.head_lr);
    they get groups of their own after the others, so param_groups[0] keeps `lr` (the one the metrics log)."""
    lrs = lrs or {}
    decay, no_decay, own = [], [], {prefix: ([], []) for prefix in lrs}
    for name, p in model.named_parameters():
        if p.requires_grad:
            prefix = next((k for k in lrs if name == k or name.startswith(k + ".")), None)
            pair = own[prefix] if prefix is not None else (decay, no_decay)
            pair[0 if p.ndim >= 2 else 1].append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    for prefix, (d, n) in own.items():
        groups += [
            {"params": d, "weight_decay": weight_decay, "lr": lrs[prefix]},
            {"params": n, "weight_decay": 0.0, "lr": lrs[prefix]},
        ]
    groups = [g for g in groups if g["params"]]
    if kind == "adamw_8bit":
        from tunelab.training.adamw8bit import AdamW8bit

        return AdamW8bit(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8)
    if kind not in ("adamw", "adamw_torch"):
        raise ConfigError(
            f"option 'train.optimizer': unknown optimizer {kind!r}; choose adamw, adamw_8bit or adamw_torch."
        )
    if kind == "adamw" and any(needs_compensation(p) for g in groups for p in g["params"]):
        return CompensatedAdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8)
    fused = all(p.is_cuda for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8, fused=fused or None)


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}
