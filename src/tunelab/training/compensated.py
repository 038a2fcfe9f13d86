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

`CompensatedAdamW` runs that arithmetic with torch's `_foreach_*` ops over the parameters (`adamw_update_foreach`):
a few launches for many tensors where one tensor at a time took ~14 each (a 7B full fine-tune has ~290 tensors).
The ops are those of `adamw_update` in the same order, so the results are bit-identical to it. The parameters go
in chunks of about FOREACH_VALUES values (a larger tensor alone), whose fp32 copies are the step's working set:
12 bytes a value (the gradient's fp32 copy, denom, and the working weight; `training.memory`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import chain
from typing import Any

import torch

from tunelab.quant.adamw8bit import COMPENSATION  # noqa: F401  (re-exported: the state key, one for both optimizers)

FOREACH_VALUES = 2**25  # values a chunk of `adamw_update_foreach` gathers (a larger tensor is a chunk alone)


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


def _chunks(params: list[torch.Tensor]) -> Iterator[list[torch.Tensor]]:
    """`params` in runs of at most FOREACH_VALUES values (a larger tensor alone)."""
    chunk: list[torch.Tensor] = []
    size = 0
    for p in params:
        if chunk and size + p.numel() > FOREACH_VALUES:
            yield chunk
            chunk, size = [], 0
        chunk.append(p)
        size += p.numel()
    if chunk:
        yield chunk


def _local(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's local shard (its own storage: in-place ops on it update the DTensor), else `t`."""
    to_local = getattr(t, "to_local", None)
    return t if to_local is None else to_local()


def _fp32(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """fp32 copies of `tensors` (one foreach copy for all), or the tensors themselves where they are fp32 already."""
    if all(t.dtype == torch.float32 for t in tensors):
        return list(tensors)
    out = [torch.empty_like(t, dtype=torch.float32, memory_format=torch.preserve_format) for t in tensors]
    torch._foreach_copy_(out, tensors)
    return out


def adamw_update_foreach(
    params: list[torch.Tensor],
    states: list[dict[str, torch.Tensor]],
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    wd: float,
    step: int,
) -> None:
    """`adamw_update` for each of `params` (with its state, all at one `step` and on one device), op for op in
    `_foreach_*` ops: bit-identical to it, in a few launches per chunk of FOREACH_VALUES values."""
    for state, p in zip(states, params, strict=True):
        complete_state(state, p)
    by_param = dict(zip(map(id, params), states, strict=True))
    # One dtype a list: the foreach fast paths take lists of one dtype (bf16 weights and their fp32 ones apart)
    for kind in (False, True):
        same = [p for p in params if (by_param[id(p)].get(COMPENSATION) is not None) == kind]
        for chunk in _chunks(same):
            chosen = [by_param[id(p)] for p in chunk]
            _foreach_chunk(chunk, chosen, kind, lr, beta1, beta2, eps, wd, step)


def _foreach_chunk(
    params: list[torch.Tensor],
    states: list[dict[str, torch.Tensor]],
    compensated: bool,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    wd: float,
    step: int,
) -> None:
    given = list(params)  # the parameters as given, which hold the gradients
    # FSDP2's DTensors: each rank's shard (elementwise ops: the same arithmetic); foreach ops take plain tensors
    grads = _fp32([_local(p.grad) for p in params])  # copies only of bf16 gradients: freed once the moments have them
    params = [_local(p) for p in params]
    exp_avgs = [_local(s["exp_avg"]) for s in states]
    exp_avg_sqs = [_local(s["exp_avg_sq"]) for s in states]
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
    bias_correction2_sqrt = (1 - beta2**step) ** 0.5
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denom, bias_correction2_sqrt)
    torch._foreach_add_(denom, eps)
    if compensated:
        compensation = [_local(s[COMPENSATION]) for s in states]
        if all(p.grad.dtype == torch.float32 for p in given):  # fp32 gradients, not copies: c gets its own
            grads = _fp32(compensation)
        else:
            torch._foreach_copy_(grads, compensation)  # the gradients' fp32 copies, reused for c in fp32
        work = _fp32(params)
        torch._foreach_add_(work, grads)  # p + c in fp32, as adamw_update's p.float().add_(c)
    else:
        work = list(params)
    del grads
    torch._foreach_mul_(work, 1 - lr * wd)
    torch._foreach_addcdiv_(work, exp_avgs, denom, value=-lr / (1 - beta1**step))
    if compensated:
        torch._foreach_copy_(params, work)  # rounded to nearest even
        torch._foreach_sub_(work, params)
        torch._foreach_copy_(compensation, work)


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


def adamw_defaults(name: str, lr: float, betas: tuple[float, float], eps: float, weight_decay: float) -> dict:
    """An AdamW optimizer's param-group defaults, checked as torch.optim.AdamW checks them (ValueError naming `name`)."""
    if lr < 0 or eps < 0 or weight_decay < 0 or not all(0.0 <= b < 1.0 for b in betas):
        raise ValueError(f"{name}: invalid lr={lr}, betas={betas}, eps={eps} or weight_decay={weight_decay}")
    return {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay}


def adamw_groups(
    optimizer: torch.optim.Optimizer, name: str
) -> Iterator[tuple[tuple[float, float, float, float, float], Iterator[torch.Tensor]]]:
    """Each param group's hyper-parameters (lr, beta1, beta2, eps, weight_decay) with its parameters that have a
    gradient, in order, for an AdamW optimizer's step; a sparse gradient is a RuntimeError naming `name`."""
    for group in optimizer.param_groups:
        yield (group["lr"], *group["betas"], group["eps"], group["weight_decay"]), _with_grads(group["params"], name)


def _with_grads(params: list[torch.Tensor], name: str) -> Iterator[torch.Tensor]:
    for p in params:
        if p.grad is None:
            continue
        if p.grad.is_sparse:
            raise RuntimeError(f"{name} does not support sparse gradients")
        yield p


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
        super().__init__(params, adamw_defaults("CompensatedAdamW", lr, betas, eps, weight_decay))

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for hyper, with_grads in adamw_groups(self, "CompensatedAdamW"):
            together: dict[tuple, list[torch.Tensor]] = {}  # (device, step): stepped in one foreach call
            for p in with_grads:
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0, dtype=torch.float32)
                    init_adamw_state(state, p)
                state["step"] += 1
                together.setdefault((p.device, int(state["step"].item())), []).append(p)
            for (_, step), params in together.items():
                adamw_update_foreach(params, [self.state[p] for p in params], *hyper, step)
        return loss

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's loading, then the saved state in its own dtypes (`keep_saved_dtypes`)."""
        super().load_state_dict(state_dict)
        keep_saved_dtypes(self, state_dict)
