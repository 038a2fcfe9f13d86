"""The optimizer: AdamW over the trainable parameters, with no weight decay on norms, biases and 1-D tensors.

`kind` "adamw" is torch's AdamW (fused on CUDA) when every trainable parameter is fp32 (LoRA's adapters), and
`CompensatedAdamW` when some are bf16 or fp16 (full fine-tuning, method=layers): fp32 moments and Kahan-compensated
weights, without which most small updates of a bf16 weight round away (`training.compensated`). "adamw_8bit" is
`AdamW8bit`, the same update with both moments stored in 8 bits (imported here only when chosen). "adamw_torch" is
torch's AdamW whatever the parameters' dtype: a bf16 weight's moments are bf16 and nothing compensates its rounding
(6 bytes less a weight than "adamw", for a user who takes the rounded-away updates for the memory).

LoRA+ (train.loraplus_lr_ratio; Hayou, Ghosh, Yu 2024, arXiv 2402.12354): B of every adapter y += s x A^T B^T trains at
lr x ratio, A at lr. B starts at zero and A at random, and for wide layers feature learning wants eta_B / eta_A of
order the width; the paper's default is 16. DoRA's magnitude m (one per output row) stays at lr: it starts at the
base's row norms, not at zero, and is no factor of BA, which is what the analysis is about (PEFT's
create_loraplus_optimizer gives every 1-D tensor B's rate; we do not). The B matrices are found by their module
(`LoRALinear`, also DoRA's base class), on the fast path and the generic one alike. Each group keeps its own `lr`, so
a LambdaLR schedule scales all of them by one factor, and a checkpoint's param_groups restore them.
"""

import math

import torch
from torch import nn

from tunelab.errors import ConfigError
from tunelab.peft.lora_linear import LoRALinear
from tunelab.training.compensated import CompensatedAdamW, needs_compensation


def build_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    kind: str = "adamw",
    lrs: dict[str, float] | None = None,
    loraplus_ratio: float | None = None,
) -> torch.optim.Optimizer:
    """`lrs`: {parameter-name prefix: learning rate} for parameters that do not take `lr` (a head's classify.head_lr);
    they get groups of their own after the others, so param_groups[0] keeps `lr` (the one the metrics log).
    `loraplus_ratio`: the adapters' B matrices (outside `lrs`) get a group of their own at lr x ratio, after the
    groups at `lr` and before those of `lrs` (module docstring); ConfigError when the model has no trainable B."""
    lrs = lrs or {}
    b_ids = {id(m.lora_B.weight) for m in model.modules() if isinstance(m, LoRALinear)} if loraplus_ratio else set()
    decay, no_decay, b_mats, own = [], [], [], {prefix: ([], []) for prefix in lrs}
    for name, p in model.named_parameters():
        if p.requires_grad:
            prefix = next((k for k in lrs if name == k or name.startswith(k + ".")), None)
            if prefix is None and id(p) in b_ids:
                b_mats.append(p)
                continue
            pair = own[prefix] if prefix is not None else (decay, no_decay)
            pair[0 if p.ndim >= 2 else 1].append(p)
    if loraplus_ratio and not b_mats:
        raise ConfigError(
            f"option 'train.loraplus_lr_ratio' is {loraplus_ratio:g}, LoRA+'s learning rate of the adapters' B "
            "matrices over their A's, but the model has no trainable LoRA adapter; it needs method.name lora or dora."
        )
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if b_mats:
        groups.append({"params": b_mats, "weight_decay": weight_decay, "lr": lr * loraplus_ratio})
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


def start_rates(lr: float, loraplus_ratio: float | None, lrs: dict[str, float] | None) -> dict[str, float]:
    """The rates `build_optimizer`'s groups start from (warmup and the schedule scale them all by one factor), by the
    keys metrics.jsonl logs them under: lr (train.lr: A's, and every parameter without a rate of its own), lr_B
    (LoRA+'s B matrices: lr x ratio) and lr_head (a head's rate, `lrs`' one entry, when it differs from lr)."""
    rates = {"lr": lr}
    if loraplus_ratio:
        rates["lr_B"] = lr * loraplus_ratio
    for own in (lrs or {}).values():
        if own != lr:
            rates["lr_head"] = own
    return rates


def rate_lines(lr: float | None, loraplus_ratio: float | None, lrs: dict[str, float] | None) -> list[str]:
    """What train prints at its start, and `tunelab check` shows, of the rates beside train.lr (`start_rates`'): one
    line for LoRA+'s B and one for a head's own rate; none when every group trains at train.lr. `lr` None: train.lr
    is auto and not chosen yet (check, where the model's config cannot be read): the rates are said by their
    options."""
    rates = start_rates(lr if lr is not None else math.nan, loraplus_ratio, lrs)  # NaN: a head's rate differs
    a = f"{lr:.3g}" if lr is not None else "train.lr (auto: from the model's width when training starts)"
    named = f"train.lr {a}" if lr is not None else a
    lines = []
    if "lr_B" in rates:
        b = f"{rates['lr_B']:.3g} (train.lr {lr:.3g} x " if lr is not None else "train.lr x ("
        lines.append(
            f"LoRA+: the adapters' B matrices train at {b}train.loraplus_lr_ratio {loraplus_ratio:g}), A at {a}; "
            "metrics.jsonl logs B's as lr_B"
        )
    if "lr_head" in rates:
        lines.append(
            f"head: trains at {rates['lr_head']:.3g} (classify.head_lr), {named}; metrics.jsonl logs the "
            "head's as lr_head"
        )
    return lines


def rate_groups(
    optimizer: torch.optim.Optimizer, model: nn.Module, lr: float, loraplus_ratio: float | None, lrs: dict | None
) -> dict[str, int]:
    """{metrics.jsonl key: index in optimizer.param_groups} of the rates logged beside lr (`start_rates`): lr_B,
    LoRA+'s group of B matrices (`build_optimizer`'s group that holds nothing else); lr_head, the first group of the
    head's parameters. A checkpoint's param_groups restore the groups in this order, so the indices hold on resume."""
    rates = start_rates(lr, loraplus_ratio, lrs)
    b_ids = {id(m.lora_B.weight) for m in model.modules() if isinstance(m, LoRALinear)}
    own = {id(p) for name, p in model.named_parameters() for k in (lrs or {}) if name == k or name.startswith(k + ".")}
    found = {}
    for index, group in enumerate(optimizer.param_groups):
        ids = {id(p) for p in group["params"]}
        if "lr_B" in rates and ids and ids <= b_ids:
            found.setdefault("lr_B", index)
        if "lr_head" in rates and ids and ids <= own:
            found.setdefault("lr_head", index)
    return found


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}
