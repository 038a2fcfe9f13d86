"""AdamW with both moments stored in 8 bits: block-wise dynamic quantization (Dettmers et al. 2021, "8-bit Optimizers
via Block-wise Quantization"), written in plain PyTorch here and as one Triton kernel for CUDA parameters.

State of a parameter with n >= MIN_8BIT_SIZE elements, its flattened values cut into blocks of BLOCK = 256:
  - exp_avg_q (n,) uint8, exp_avg_absmax (ceil(n / 256),) fp32: m = code_s[q] * absmax of its block, where code_s is
    bitsandbytes' signed dynamic code (`tunelab.peft.quant.dynamic_code`);
  - exp_avg_sq_q, exp_avg_sq_absmax: v the same way with code_u, the unsigned dynamic code (`unsigned_dynamic_code`);
  - step: a 0-dim fp32 tensor, as torch's AdamW keeps it.
That is 2 + 8 / 256 = 2.03125 bytes per parameter instead of AdamW's 8. Smaller parameters keep fp32 exp_avg and
exp_avg_sq (also for bf16 parameters) and take torch's single-tensor AdamW update (bit-identical to
torch.optim.AdamW(foreach=False) for fp32 ones). `load_state_dict` keeps every state tensor in its saved dtype, where
torch's would cast the codes and absmaxes to the parameter's dtype.

One step of an 8-bit parameter, per block, all in fp32 (each operation rounded on its own, no fused multiply-add):
    m = code_s[m_q] * m_absmax,    v = code_u[v_q] * v_absmax                       (dequantize)
    m = beta1 m + (1 - beta1) g,   v = beta2 v + (1 - beta2) g^2
    p = p (1 - lr wd);   p = p - (lr / bc1) * (m / (sqrt(v) / sqrt(bc2) + eps))      bc_i = 1 - beta_i^step
    m_absmax = max |m|, m_q = nearest code to m / m_absmax; the same for v           (requantize)
The parameter moves with the fresh fp32 m and v; only what is carried to the next step is rounded to 8 bits (as in
bitsandbytes). Nearest means no other code is closer; an exact tie between two codes goes to the lower one.
`adamw8bit_update_reference` does this vectorised over the whole parameter; on CUDA (with Triton importable)
`tunelab.kernels.adamw8bit.adamw8bit_update_multi` does the same for all contiguous 8-bit parameters of one device,
parameter dtype, gradient dtype, hyper-parameters and step count in ONE launch, one program per block of their
concatenation (a per-launch cost of ~0.3 ms of CPU time per parameter would otherwise add ~120 ms to each step of a
7B QLoRA model). The launch reads int64 tables of data pointers (`pointer_table`, cached while the tensors stay where
they are; the gradients' row is rebuilt when they move) and a block -> tensor map (`block_maps`). It equals the
reference bit for bit in Triton's interpreter; on the GPU it runs the same correctly rounded fp32 operations with fp
fusion off, so it should there too (the CUDA tests assert it).
"""

from __future__ import annotations

import importlib.util
import math
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import torch
import torch.nn.functional as F

from tunelab.errors import ConfigError
from tunelab.peft.quant import dynamic_code

BLOCK = 256
"""Moment elements per block (one fp32 absmax each)."""
MIN_8BIT_SIZE = 4096
"""Parameters with fewer elements keep fp32 moments (bitsandbytes' min_8bit_size): their 8-bit saving is negligible."""
QUANTIZED_KEYS = ("exp_avg_q", "exp_avg_absmax", "exp_avg_sq_q", "exp_avg_sq_absmax")
SUPPORTED_DTYPES = (torch.float32, torch.bfloat16)


def unsigned_dynamic_code(device: torch.device | str | None = None) -> torch.Tensor:
    """bitsandbytes' unsigned 8-bit dynamic code (`create_dynamic_map(signed=False)`), sorted, (256,) fp32, for v >= 0.

    Built as `dynamic_code` is, but with no sign to store, the sign bit doubles the fraction resolution: for exponent
    e = 0..6, 2^(e+1) + 1 points evenly spaced on [0.1, 1] give 2^(e+1) midpoints, scaled by 10^(e - 6) (254 values,
    2 + 4 + ... + 128), plus 0 and 1. So the decade [0.1, 1] holds 128 values (the signed code: 64 a sign), the
    smallest positive value is 0.325e-6, and the largest gap is 0.9 / 128 (signed: 0.9 / 64). Built in fp32 with the
    same operations as bitsandbytes, on the CPU; code[0] == 0 and code[255] == 1.
    """
    values: list[float] = [0.0, 1.0]
    for e in range(7):
        edges = torch.linspace(0.1, 1, 2 ** (e + 1) + 1, dtype=torch.float32)
        means = (edges[:-1] + edges[1:]) / 2.0
        values += ((10 ** (e - 6)) * means).tolist()
    values.sort()
    return torch.tensor(values, dtype=torch.float32, device=device)


def nearest_code(x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """Index (int64, x's shape) of the code value nearest to each x in [code[0], code[-1]]; a tie goes to the lower.

    hi = the first code >= x (the count of codes below x, as the kernel's binary search finds it); lo = hi - 1.
    """
    hi = torch.searchsorted(code, x.contiguous()).clamp_(max=code.numel() - 1)
    lo = (hi - 1).clamp_(min=0)
    return torch.where(code[hi] - x < x - code[lo], hi, lo)


def _blocks(flat: torch.Tensor) -> torch.Tensor:
    """(n,) -> (ceil(n / BLOCK), BLOCK), the last block padded with zeros (which change no absmax)."""
    return F.pad(flat, (0, -flat.numel() % BLOCK)).view(-1, BLOCK)


def quantize_blockwise(x: torch.Tensor, code: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (any shape, fp32) -> codes (n,) uint8 of flattened x and absmax (ceil(n / 256),) fp32 of each block.

    Each x / absmax of its block gets its nearest code; a block of zeros gets the code of 0.
    """
    flat = x.reshape(-1).float()
    blocks = _blocks(flat)  # (n_blocks, 256)
    absmax = blocks.abs().amax(dim=1)
    scaled = blocks / torch.where(absmax > 0, absmax, torch.ones_like(absmax))[:, None]
    q = nearest_code(scaled, code).to(torch.uint8).view(-1)[: flat.numel()]
    return q, absmax


def dequantize_blockwise(q: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """Codes (n,) uint8 and absmax (n_blocks,) fp32 -> (n,) fp32: code[q] * absmax of q's block."""
    values = _blocks(code[q.long()])  # (n_blocks, 256)
    return (values * absmax[:, None]).view(-1)[: q.numel()]


def _f32(x: float) -> float:
    """x rounded to the nearest fp32 (the precision the kernel receives its scalars in), as a Python float."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


def update_scalars(
    lr: float, beta1: float, beta2: float, eps: float, weight_decay: float, step: int
) -> dict[str, float]:
    """The fp32 scalars of one step (computed in fp64, rounded once), shared by the reference and the kernel."""
    return {
        "beta1": _f32(beta1), "one_minus_beta1": _f32(1 - beta1),
        "beta2": _f32(beta2), "one_minus_beta2": _f32(1 - beta2),
        "decay": _f32(1 - lr * weight_decay), "step_size": _f32(lr / (1 - beta1**step)),
        "bc2_sqrt": _f32(math.sqrt(1 - beta2**step)), "eps": _f32(eps),
    }  # fmt: skip


def adamw8bit_update_reference(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg_q: torch.Tensor,
    exp_avg_absmax: torch.Tensor,
    exp_avg_sq_q: torch.Tensor,
    exp_avg_sq_absmax: torch.Tensor,
    signed_code: torch.Tensor,
    unsigned_code: torch.Tensor,
    scalars: dict[str, float],
) -> None:
    """One AdamW step of `param` (fp32 or bf16) from `grad`, moments in 8 bits; updates all tensors in place.

    exp_avg_q / exp_avg_sq_q: (n,) uint8; the absmaxes (ceil(n / 256),) fp32; codes (256,) fp32 sorted;
    `scalars` from `update_scalars`.
    """
    s = scalars
    g = grad.reshape(-1).float()  # (n,)
    m = dequantize_blockwise(exp_avg_q, exp_avg_absmax, signed_code)
    v = dequantize_blockwise(exp_avg_sq_q, exp_avg_sq_absmax, unsigned_code)
    m = s["beta1"] * m + s["one_minus_beta1"] * g
    v = s["beta2"] * v + s["one_minus_beta2"] * (g * g)
    p = param.reshape(-1).float() * s["decay"]
    # The correctly rounded fp32 square root, as the kernel's: torch's vectorised fp32 sqrt on the CPU is off by one
    # unit in the last place for ~20% of inputs; through fp64 it is exact (53 >= 2 * 24 + 2 bits: no double rounding).
    root = v.double().sqrt().float()
    p = p - s["step_size"] * (m / (root / s["bc2_sqrt"] + s["eps"]))
    param.copy_(p.view_as(param))  # one rounding to bf16 (nearest even) where the parameter is bf16
    moments = ((exp_avg_q, exp_avg_absmax, m, signed_code), (exp_avg_sq_q, exp_avg_sq_absmax, v, unsigned_code))
    for q, absmax, fresh, code in moments:  # requantized with the new block absmaxes
        new_q, new_absmax = quantize_blockwise(fresh, code)
        q.copy_(new_q)
        absmax.copy_(new_absmax)


def block_maps(numels: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Blocks of T tensors of `numels` elements laid end to end: (the tensor of each block, (sum ceil(n / 256),)
    int32; the global index of each tensor's first block, (T,) int64). Global block i is local block
    i - first_block[index[i]] of tensor index[i]."""
    counts = torch.tensor([-(-n // BLOCK) for n in numels], dtype=torch.int64)  # (T,)
    first_block = torch.cumsum(counts, 0) - counts
    index = torch.repeat_interleave(torch.arange(len(numels), dtype=torch.int32), counts)
    return index, first_block


def pointer_table(params: Sequence[torch.Tensor], states: Sequence[dict[str, torch.Tensor]]) -> torch.Tensor:
    """(7, T) int64 on the CPU, `tunelab.kernels.adamw8bit.TABLE_ROWS`: the data pointers of each parameter and of
    its QUANTIZED_KEYS state tensors, its element count, the global index of its first block (`block_maps`)."""
    numels = [p.numel() for p in params]
    rows = [[p.data_ptr() for p in params]] + [[s[key].data_ptr() for s in states] for key in QUANTIZED_KEYS]
    return torch.tensor(rows + [numels, block_maps(numels)[1].tolist()], dtype=torch.int64)


def _triton_usable() -> bool:
    return importlib.util.find_spec("triton") is not None


@dataclass
class _Tables:
    """One kernel batch's device tables: `pointer_table` (7, T) int64, `block_maps`' index (blocks,) int32, and the
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
        if lr < 0 or eps < 0 or weight_decay < 0 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"AdamW8bit: invalid lr={lr}, betas={betas}, eps={eps} or weight_decay={weight_decay}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})
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
        else:
            state["exp_avg"] = torch.zeros(p.shape, dtype=torch.float32, device=p.device)
            state["exp_avg_sq"] = torch.zeros(p.shape, dtype=torch.float32, device=p.device)
        return state

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        scalars: dict[tuple[float, ...], dict[str, float]] = {}  # (lr, beta1, beta2, eps, wd, step) -> update_scalars
        batches: dict[tuple[Any, ...], list[tuple[torch.Tensor, dict[str, torch.Tensor]]]] = {}
        for group in self.param_groups:
            hyper = (group["lr"], *group["betas"], group["eps"], group["weight_decay"])
            for p in group["params"]:
                grad = p.grad
                if grad is None:
                    continue
                if grad.is_sparse:
                    raise RuntimeError("AdamW8bit does not support sparse gradients")
                state = self.state[p] or self._init_state(p)
                state["step"] += 1
                step = int(state["step"].item())
                if "exp_avg_q" not in state:
                    _step_fp32(p, state, *hyper, step)
                    continue
                key = (*hyper, step)
                if key not in scalars:
                    scalars[key] = update_scalars(*key)
                if p.is_cuda and p.is_contiguous() and grad.is_contiguous() and self._kernel_usable():
                    batches.setdefault((p.device, p.dtype, grad.dtype, key), []).append((p, state))
                else:
                    tensors = (*(state[k] for k in QUANTIZED_KEYS), *self._codes_on(p.device))
                    adamw8bit_update_reference(p, grad, *tensors, scalars[key])
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
        from tunelab.kernels.adamw8bit import adamw8bit_update_multi  # imports Triton: only here, on CUDA

        params = [p for p, _ in members]
        states = [s for _, s in members]
        layout = ((p.data_ptr(), p.numel(), *(s[k].data_ptr() for k in QUANTIZED_KEYS)) for p, s in members)
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
            params[0].grad.dtype,
        )  # fmt: skip

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's loading, then every saved moment tensor back in its own dtype on the parameter's device.

        torch casts floating-point state to the parameter's dtype: it would turn uint8 codes into floats, and the fp32
        absmaxes and small-parameter moments of a bf16 parameter into bf16. Loaded tensors are copies (never shared
        with `state_dict`'s, which would otherwise be updated in place by the next step).
        """
        super().load_state_dict(state_dict)
        saved_ids = chain.from_iterable(g["params"] for g in state_dict["param_groups"])
        params = chain.from_iterable(g["params"] for g in self.param_groups)
        for saved_id, p in zip(saved_ids, params, strict=True):
            for key, value in state_dict["state"].get(saved_id, {}).items():
                if torch.is_tensor(value):  # step stays where it was saved (the CPU), as torch keeps it
                    self.state[p][key] = value.clone() if key == "step" else value.to(device=p.device, copy=True)


def _step_fp32(
    p: torch.Tensor,
    state: dict[str, torch.Tensor],
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    wd: float,
    step: int,
) -> None:
    """torch's single-tensor AdamW step on fp32 moments (the parameter updated through an fp32 copy if it is bf16)."""
    exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
    work = p if p.dtype == torch.float32 else p.float()
    grad = p.grad.float()
    work.mul_(1 - lr * wd)
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    bias_correction2_sqrt = (1 - beta2**step) ** 0.5
    denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
    work.addcdiv_(exp_avg, denom, value=-lr / (1 - beta1**step))
    if work is not p:
        p.copy_(work)
