"""AdamW8bit: AdamW with both moments stored in 8 bits (`quant.adamw8bit` holds the format, the update reference and
the layout of the kernel's tables; `quant.adamw8bit_triton` the kernel).

Parameters with n >= MIN_8BIT_SIZE elements keep the 8-bit state of `quant.adamw8bit` plus `step`, a 0-dim fp32 tensor
as torch's AdamW keeps it. Smaller parameters keep fp32 exp_avg and exp_avg_sq (also for bf16 parameters) and take
`training.compensated.adamw_update` (bit-identical to torch.optim.AdamW(foreach=False) for fp32 ones). A bf16
parameter, 8-bit or not, also keeps a bf16 Kahan `compensation` (full fine-tuning and layers in bf16: without it most
small updates round away; `training.compensated`). `load_state_dict` keeps every state tensor in its saved dtype,
where torch's would cast the codes and absmaxes to the parameter's dtype.

On CUDA (with Triton importable) `quant.adamw8bit_triton.adamw8bit_update_multi` steps all contiguous 8-bit
parameters of one device, parameter dtype, gradient dtype, hyper-parameters and step count in ONE launch, one program
per block of their concatenation (a per-launch cost of ~0.3 ms of CPU time per parameter would otherwise add ~120 ms
to each step of a 7B QLoRA model). The launch reads int64 tables of data pointers (`pointer_table`, cached while the
tensors stay where they are; the gradients' row is rebuilt when they move) and a block -> tensor map (`block_maps`).
It equals the reference bit for bit in Triton's interpreter; on the GPU it runs the same correctly rounded fp32
operations with fp fusion off, so it should there too (the CUDA tests assert it). Elsewhere each parameter takes
`adamw8bit_update_reference`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import chain
from typing import Any

import torch

from tunelab.errors import ConfigError
from tunelab.quant.adamw8bit import (
    BLOCK,
    COMPENSATION,
    QUANTIZED_KEYS,
    adamw8bit_update_reference,
    block_maps,
    pointer_table,
    update_scalars,
)
from tunelab.quant.codes import dynamic_code, unsigned_dynamic_code
from tunelab.training.compensated import (
    adamw_defaults,
    adamw_groups,
    adamw_update,
    complete_state,
    init_adamw_state,
    keep_saved_dtypes,
)

MIN_8BIT_SIZE = 4096
"""Parameters with fewer elements keep fp32 moments (bitsandbytes' min_8bit_size): their 8-bit saving is negligible."""
SUPPORTED_DTYPES = (torch.float32, torch.bfloat16)


def _triton_usable() -> bool:
    return importlib.util.find_spec("triton") is not None


@dataclass
class _Tables:
    """One kernel batch's device tables: `pointer_table` (8, T) int64, `block_maps`' index (blocks,) int32, and the
    gradients' data pointers (T,) int64 with the host tuple they were copied from."""

    table: torch.Tensor
    block_tensor: torch.Tensor
    grad_ptrs: torch.Tensor | None = None
    grad_key: tuple[int, ...] | None = None


class AdamW8bit(torch.optim.Optimizer):
    """AdamW (decoupled weight decay, torch's bias correction) with 8-bit block-wise moments; see the module docstring.

    Same hyper-parameters and defaults as `torch.optim.AdamW` (lr, betas, eps, weight_decay) and param groups; no
    amsgrad, maximize, foreach or fused. Parameters must be fp32 or bf16; parameters without a gradient are skipped.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        min_8bit_size: int = MIN_8BIT_SIZE,
    ) -> None:
        super().__init__(params, adamw_defaults("AdamW8bit", lr, betas, eps, weight_decay))
        self.min_8bit_size = min_8bit_size
        for group in self.param_groups:
            for p in group["params"]:
                if p.dtype not in SUPPORTED_DTYPES:
                    raise ConfigError(
                        f"train.optimizer adamw_8bit: a trainable parameter of shape {tuple(p.shape)} is {p.dtype}; "
                        "the 8-bit AdamW updates fp32 or bf16 parameters. Set model.dtype to bf16 or fp32, or "
                        "train.optimizer to adamw."
                    )
        self._codes: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        self._triton: bool | None = None
        self._tables: dict[tuple[int | None, ...], _Tables] = {}  # per layout of a kernel batch (see _step_batch)

    def _codes_on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(signed, unsigned) codes on `device`, built once per device."""
        if device not in self._codes:
            self._codes[device] = (dynamic_code(device), unsigned_dynamic_code(device))
        return self._codes[device]

    def _init_state(self, p: torch.Tensor) -> dict[str, torch.Tensor]:
        state = self.state[p]
        state["step"] = torch.tensor(0.0, dtype=torch.float32)
        n = p.numel()
        if n >= self.min_8bit_size:
            signed, unsigned = self._codes_on(p.device)
            n_blocks = -(-n // BLOCK)
            # Zero moments: the code of 0 with absmax 0 (any code times 0 is 0; these keep the bytes tidy).
            state["exp_avg_q"] = torch.full((n,), int((signed == 0).nonzero()), dtype=torch.uint8, device=p.device)
            state["exp_avg_absmax"] = torch.zeros(n_blocks, dtype=torch.float32, device=p.device)
            state["exp_avg_sq_q"] = torch.full((n,), int((unsigned == 0).nonzero()), dtype=torch.uint8, device=p.device)
            state["exp_avg_sq_absmax"] = torch.zeros(n_blocks, dtype=torch.float32, device=p.device)
            complete_state(state, p)
        else:
            init_adamw_state(state, p)
        return state

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        scalars: dict[tuple[float, ...], dict[str, float]] = {}  # (lr, beta1, beta2, eps, wd, step) -> update_scalars
        batches: dict[tuple[Any, ...], list[tuple[torch.Tensor, dict[str, torch.Tensor]]]] = {}
        for hyper, with_grads in adamw_groups(self, "AdamW8bit"):
            for p in with_grads:
                grad = p.grad
                state = self.state[p] or self._init_state(p)
                state["step"] += 1
                step = int(state["step"].item())
                if "exp_avg_q" not in state:
                    adamw_update(p, state, *hyper, step)
                    continue
                complete_state(state, p)  # a bf16 parameter's state from a checkpoint without a compensation
                key = (*hyper, step)
                if key not in scalars:
                    scalars[key] = update_scalars(*key)
                if p.is_cuda and p.is_contiguous() and grad.is_contiguous() and self._kernel_usable():
                    batches.setdefault((p.device, p.dtype, grad.dtype, key), []).append((p, state))
                else:
                    tensors = (*(state[k] for k in QUANTIZED_KEYS), *self._codes_on(p.device))
                    adamw8bit_update_reference(p, grad, *tensors, scalars[key], state.get(COMPENSATION))
        for (device, _, _, key), members in batches.items():
            self._step_batch(device, members, scalars[key])
        return loss

    def _kernel_usable(self) -> bool:
        """Whether Triton is importable (looked up once: find_spec walks sys.path)."""
        if self._triton is None:
            self._triton = _triton_usable()
        return self._triton

    def _step_batch(
        self,
        device: torch.device,
        members: list[tuple[torch.Tensor, dict[str, torch.Tensor]]],
        scalars: dict[str, float],
    ) -> None:
        """One kernel launch over `members` (contiguous CUDA parameters of one dtype, gradients of one dtype).

        The tables depend only on where the parameters and their states are and how large they are: built once and
        kept while those stay put. The gradients' pointers change whenever the gradients are freed (zero_grad's
        set_to_none) and reallocated: rebuilt then, one host -> device copy of T int64.
        """
        from tunelab.quant.adamw8bit_triton import adamw8bit_update_multi  # imports Triton: only here, on CUDA

        params = [p for p, _ in members]
        states = [s for _, s in members]
        keys = (*QUANTIZED_KEYS, COMPENSATION) if COMPENSATION in states[0] else QUANTIZED_KEYS  # bf16: all have one
        layout = ((p.data_ptr(), p.numel(), *(s[k].data_ptr() for k in keys)) for p, s in members)
        key = (device.index, *chain.from_iterable(layout))
        tables = self._tables.get(key)
        if tables is None:
            if len(self._tables) >= 8:  # stale layouts (states replaced by load_state_dict, parameters moved)
                self._tables.clear()
            index = block_maps([p.numel() for p in params])[0].to(device)
            tables = self._tables[key] = _Tables(pointer_table(params, states).to(device), index)
        grad_key = tuple(p.grad.data_ptr() for p in params)
        if grad_key != tables.grad_key:
            tables.grad_ptrs = torch.tensor(grad_key, dtype=torch.int64).to(device, non_blocking=True)
            tables.grad_key = grad_key
        signed, unsigned = self._codes_on(device)
        adamw8bit_update_multi(
            tables.table, tables.grad_ptrs, tables.block_tensor, signed, unsigned, scalars, params[0].dtype,
            params[0].grad.dtype, compensated=COMPENSATION in states[0],
        )  # fmt: skip

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's loading, then every saved state tensor back in its own dtype (`keep_saved_dtypes`): torch's would
        turn uint8 codes into floats, and the fp32 absmaxes and small-parameter moments of a bf16 parameter into
        bf16."""
        super().load_state_dict(state_dict)
        keep_saved_dtypes(self, state_dict)
