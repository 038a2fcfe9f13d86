"""bitsandbytes' 8-bit dynamic codes (`create_dynamic_map`): 256 values spread over [-1, 1] (signed) or [0, 1]
(unsigned), dense near zero, for block-wise quantization scaled by each block's absmax. The signed code stores NF4's
block absmaxes (double quantization, `quant.nf4`) and AdamW8bit's first moments, the unsigned one its second moments
(`quant.adamw8bit`). Built in fp32 with bitsandbytes' own operations, on the CPU, so that the values are its values.
"""

from __future__ import annotations

import torch


def dynamic_code(device: torch.device | str | None = None) -> torch.Tensor:
    """bitsandbytes' signed 8-bit dynamic code (`create_dynamic_map(signed=True)`), sorted, (256,) fp32.

    For exponent e = 0..6, 2^e + 1 points evenly spaced on [0.1, 1] give 2^e midpoints, scaled by 10^(e - 6) and taken
    with both signs (254 values), plus 0 and 1. Built in fp32 with the same operations as bitsandbytes, on the CPU.
    """
    values: list[float] = [0.0, 1.0]
    for e in range(7):
        edges = torch.linspace(0.1, 1, 2**e + 1, dtype=torch.float32)
        means = (edges[:-1] + edges[1:]) / 2.0
        scaled = (10 ** (e - 6)) * means
        values += scaled.tolist() + (-scaled).tolist()
    values.sort()
    return torch.tensor(values, dtype=torch.float32, device=device)


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
