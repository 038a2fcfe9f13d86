"""LoRA on a model: `attach_lora` freezes it and swaps a `LoRALinear` (`peft.lora_linear`) in for each selected linear
layer, by name, on any model, ours or transformers', so the same code serves the fast and the generic path; on our
decoder it also puts peft's implementations into the projection slots (`models.slots`): the q/k/v and gate/up
adapters grouped into one GEMM (`peft.group.LoRAGroup`) and the last projections through the fused nodes
(`peft.projection.FusedProjection`). `merge_lora` folds the adapters back (`merged_linear`) and restores the default
slots; `adapters_disabled` runs the base model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from tunelab.errors import ConfigError
from tunelab.models.slots import ProjectionGroup, projection_slots
from tunelab.peft.dora import DoRALinear
from tunelab.peft.group import GroupWeights, LoRAGroup
from tunelab.peft.lora_linear import LoRALinear, merged_linear
from tunelab.peft.projection import FusedProjection
from tunelab.peft.weight_init import init_from_weight_
from tunelab.quant.linear import NF4Linear
from tunelab.quant.nf4_ops import DequantWorkspace


def linear_names(model: nn.Module, targets: list[str]) -> list[str]:
    """Qualified names of the linear layers that `targets` selects; "all-linear" means every decoder linear but the head."""
    output = _output(model)
    linears = [
        name
        for name, m in model.named_modules()
        if isinstance(m, (nn.Linear, NF4Linear)) and m is not output and not isinstance(m, LoRALinear)
    ]
    linears = [n for n in linears if ".lora_" not in n and not n.endswith("lm_head")]
    if "all-linear" in targets:
        chosen = linears
    else:
        chosen = [n for n in linears if n.rsplit(".", 1)[-1] in targets]
        found = {n.rsplit(".", 1)[-1] for n in chosen}
        missing = [t for t in targets if t not in found]
        if missing:
            available = sorted({n.rsplit(".", 1)[-1] for n in linears})
            raise ConfigError(
                f"option 'method.target_modules': {', '.join(missing)} matched no linear layer of this model; "
                f"available: {', '.join(available)}, or all-linear."
            )
    if not chosen:
        raise ConfigError(f"option 'method.target_modules' selected no linear layer of this model.{_no_linear(model)}")
    return chosen


def _no_linear(model: nn.Module) -> str:
    """Why a model has no layer LoRA can adapt: the kinds of its 2-D weight layers (GPT-2's transformers `Conv1D`,
    say), and which methods train it anyway; "" when it has linear layers (the targets missed them)."""
    output = _output(model)
    layers = [m for m in model.modules() if m is not output]
    if any(isinstance(m, (nn.Linear, NF4Linear)) for m in layers):
        return ""
    kinds = sorted(
        {
            type(m).__name__
            for m in layers
            if isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.dim() == 2
        }
        - {"Embedding"}
    )
    held = f" Its matrices are held by {', '.join(kinds)} layers." if kinds else ""
    return (
        f" LoRA adapts nn.Linear layers, and it has none but the output head.{held} "
        "Train it with method.name: full or method.name: layers."
    )


def _output(model: nn.Module) -> nn.Module | None:
    return model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None


def attach_lora(
    model: nn.Module,
    targets: list[str],
    r: int,
    alpha: float,
    dropout: float = 0.0,
    *,
    dora: bool = False,
    rslora: bool = False,
    init: str = "default",
    nf4: bool = False,
    device: torch.device | str | None = None,
    workspace: DequantWorkspace | None = None,
    start: Callable[[str, LoRALinear], tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> list[str]:
    """Freeze the model and replace each selected nn.Linear by a LoRALinear around it (a DoRALinear with `dora`;
    scaled by alpha / sqrt(r) with `rslora`; started from part of each weight with init "pissa" or "olora",
    `peft.weight_init`, whose residual bases `nf4` quantizes onto `device`, dequantizing into `workspace`: QPiSSA).
    `start(name, layer)`: the (A0, B0) a resumed run kept for that layer, taken instead of factorising its weight
    again (`training.initial_factors`). Returns the replaced names."""
    for p in model.parameters():
        p.requires_grad_(False)
    names = linear_names(model, targets)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        layer = DoRALinear if dora else LoRALinear
        adapted = layer(getattr(parent, child), r, alpha, dropout, rslora)
        if init != "default":
            factors = start(name, adapted) if start is not None else None
            init_from_weight_(adapted, init, name, nf4=nf4, device=device, workspace=workspace, factors=factors)
        setattr(parent, child, adapted)
    use_fast_slots(model)
    return names


def use_fast_slots(model: nn.Module) -> None:
    """Put peft's implementations into every projection slot of `model` (none in a transformers model): groups as
    `LoRAGroup`s sharing one stacked-weight buffer, last projections as `FusedProjection`s."""
    weights = None
    for module, name in projection_slots(model):
        slot = getattr(module, name).as_default()
        if isinstance(slot, ProjectionGroup):
            weights = weights or GroupWeights(slot.clock)  # one stacked-weight buffer for the whole model
            setattr(module, name, LoRAGroup(slot.children, slot.names, slot.clock, weights))
        else:
            setattr(module, name, FusedProjection(slot.children, slot.name, slot.clock))


def lora_modules(model: nn.Module) -> Iterator[tuple[str, LoRALinear]]:
    for name, m in model.named_modules():
        if isinstance(m, LoRALinear):
            yield name, m


@contextmanager
def adapters_disabled(model: nn.Module):
    """Run the base model: every LoRA update is skipped inside the block (a PiSSA or OLoRA layer adds back the part
    its base gave up, `peft.weight_init`)."""
    layers = [m for _, m in lora_modules(model)]
    for m in layers:
        m.enabled = False
    try:
        yield model
    finally:
        for m in layers:
            m.enabled = True


def merge_lora(model: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
    """Replace every LoRALinear by its `merged_linear` (in `dtype`, default each base's) and put the default
    projection slots back. In place; returns the model."""
    for name, m in list(lora_modules(model)):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, merged_linear(m, dtype))
    for module, name in projection_slots(model):
        setattr(module, name, getattr(module, name).as_default())
    return model
