"""Rope positions: the inverse frequencies (with Llama 3.1's and linear rescaling), cos/sin tables, and the positions
of packed documents, which restart at 0 at each document start."""

from __future__ import annotations

import math

import torch

from tunelab.models.llama_config import RopeConfig


def rope_inv_freq(rope: RopeConfig, head_dim: int, device: torch.device | None = None) -> torch.Tensor:
    """(head_dim // 2,) fp32 inverse frequencies theta^(-2i/D), rescaled as `rope.kind` says."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim
    inv_freq = 1.0 / (rope.theta**exponents)
    if rope.kind == "linear":
        return inv_freq / rope.factor
    if rope.kind == "llama3":
        # Llama 3.1, with L the pretraining context: wavelengths shorter than L / high_freq_factor are kept, longer
        # than L / low_freq_factor are stretched by `factor`, and those between are interpolated by
        # s = (L / wavelength - low) / (high - low), which the clamp sends to 1 and 0 in the outer bands.
        context = rope.original_max_position_embeddings
        wavelength = 2 * math.pi / inv_freq
        smooth = (context / wavelength - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor)
        smooth = smooth.clamp(0.0, 1.0)
        return (1 - smooth) * inv_freq / rope.factor + smooth * inv_freq
    return inv_freq


def rope_cos_sin(
    position_ids: torch.Tensor, inv_freq: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (B, T, D) for position_ids (B, T), computed in fp32 and cast to the compute dtype."""
    freqs = position_ids.float()[..., None] * inv_freq  # (B, T, D/2)
    angles = torch.cat((freqs, freqs), dim=-1)  # (B, T, D): "rotate half" pairs dimension i with i + D/2
    return angles.cos().to(dtype), angles.sin().to(dtype)


def packed_position_ids(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """(1, total) positions restarting at 0 at each document start; positions past the last boundary keep counting."""
    positions = torch.arange(total, device=cu_seqlens.device)
    starts = cu_seqlens.to(positions.dtype)
    doc = torch.searchsorted(starts[1:], positions, right=True).clamp(max=starts.numel() - 2)
    return (positions - starts[doc])[None]
