"""AdamW for bf16 (or fp16) weights: fp32 moments and a Kahan-compensated update, so small steps are not rounded away.

A bf16 weight has 8 significant bits: adding an update smaller than half a unit in its last place (~0.2-0.4% of the
weight) leaves it unchanged. With torch's AdamW on bf16 weights (full fine-tuning and method=layers in bf16) that is
most updates at the learning rates of full fine-tuning (a tiny Llama in bf16 at lr 2e-5: 70% of its weights did not
move in the first step; fp32 moved them all), and its moments are bf16 too (v = 0.999 v + 0.001 g^2 stays v in bf16).

Here each low-precision parameter p keeps, beside fp32 exp_avg and exp_avg_sq, a `compensation` c of p's dtype: the
part of the weight that p could not hold. One step, in fp32:
    w = p + c                                             the weight as it would be in fp32 (~16 significant bits)
    w = w (1 - lr wd) - (lr / bc1) m / (sqrt(v) / sqrt(bc2) + eps)      AdamW, torch's bias correction
    p = round(w);   c = round(w - p)                      what p cannot hold waits in c for the next step
The arithmetic is deterministic (no stochastic rounding), so a resumed run stays bit-exact; c is optimizer state and
travels in checkpoints. fp32 parameters take torch's single-tensor AdamW step (bit-identical to
`torch.optim.AdamW(foreach=False)`) and keep no compensation.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import chain
from typing import Any

import torch

from tunelab.quant.adamw8bit import COMPENSATION  # noqa: F401  (re-exported: the state key, one for both optimizers)


def needs_compensation(p: torch.Tensor) -> bool:
    return p.dtype in (torch.bfloat16, torch.float16)


def init_adamw_state(state: dict[str, torch.Tensor], p: torch.Tensor) -> None:
    """fp32 moments of p's shape (and placement: a DTensor's are sharded as it is) and, below fp32, a zero
    compensation."""
    state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32, memory_format=torch.preserve_format)
    state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32, memory_format=torch.preserve_format)
    complete_state(state, p)


def complete_state(state: dict[str, torch.Tensor], p: torch.Tensor) -> None:
    """What a state loaded from a checkpoint of torch's AdamW (bf16 moments, no compensation) lacks: its moments in
    fp32 (8-bit ones are left as they are), and a zero compensation for a parameter below fp32."""
    for key in ("exp_avg", "exp_avg_sq"):
        if key in state and state[key].dtype != torch.float32:
            state[key] = state[key].float()
    if needs_compensation(p) and COMPENSATION not in state:
        state[COMPENSATION] = torch.zeros_like(p, memory_format=torch.preserve_format)


def adamw_update(
    p: torch.Tensor,
    state: dict[str, torch.Tensor],
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    wd: float,
    step: int,
) -> None:
    """torch's single-tensor AdamW step on fp32 moments; a parameter below fp32 moves through w = p + compensation
    (see the module docstring)."""
    complete_state(state, p)
    exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
    compensation = state.get(COMPENSATION)
    grad = p.grad.float()  # a bf16 gradient's fp32 copy lives only until the moments have it
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    del grad
    bias_correction2_sqrt = (1 - beta2**step) ** 0.5
    denom = exp_avg_sq.sqrt().div_(bias_correction2_sqrt).add_(eps)
    work = p if compensation is None else p.float().add_(compensation)
    # Working set beyond the state: denom and (below fp32) work, 4 + 4 bytes a value (`training.memory`).
    work.mul_(1 - lr * wd)
    work.addcdiv_(exp_avg, denom, value=-lr / (1 - beta1**step))
    if compensation is not None:
        p.copy_(work)  # rounded to nearest even
        compensation.copy_(work.sub_(p))  # w - round(w) is exact in fp32; rounded once more into c


def keep_saved_dtypes(optimizer: torch.optim.Optimizer, state_dict: dict[str, Any]) -> None:
    """After torch's `load_state_dict`: every saved state tensor back in its own dtype on its parameter's device.

    torch casts floating-point state to the parameter's dtype: fp32 moments of a bf16 parameter would come back bf16
    (and an 8-bit optimizer's uint8 codes floats). Loaded tensors are copies (never shared with `state_dict`'s, which
    the next step would otherwise update in place)."""
    saved_ids = chain.from_iterable(g["params"] for g in state_dict["param_groups"])
    params = chain.from_iterable(g["params"] for g in optimizer.param_groups)
    for saved_id, p in zip(saved_ids, params, strict=True):
        for key, value in state_dict["state"].get(saved_id, {}).items():
            if torch.is_tensor(value):  # step stays where it was saved (the CPU), as torch keeps it
                optimizer.state[p][key] = value.clone() if key == "step" else value.to(device=p.device, copy=True)


class CompensatedAdamW(torch.optim.Optimizer):
    """AdamW (decoupled weight decay, torch's bias correction) with fp32 moments, and Kahan-compensated updates of
    bf16/fp16 parameters; see the module docstring. Same hyper-parameters and defaults as `torch.optim.AdamW`; no
    amsgrad, maximize, foreach or fused. Parameters without a gradient are skipped."""

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
    ) -> None:
        if lr < 0 or eps < 0 or weight_decay < 0 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(
                f"CompensatedAdamW: invalid lr={lr}, betas={betas}, eps={eps} or weight_decay={weight_decay}"
            )
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            hyper = (group["lr"], *group["betas"], group["eps"], group["weight_decay"])
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("CompensatedAdamW does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0, dtype=torch.float32)
                    init_adamw_state(state, p)
                state["step"] += 1
                adamw_update(p, state, *hyper, int(state["step"].item()))
        return loss

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's loading, then the saved state in its own dtypes (`keep_saved_dtypes`)."""
        super().load_state_dict(state_dict)
        keep_saved_dtypes(self, state_dict)
