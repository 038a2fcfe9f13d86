"""The key/value cache of generation (`LlamaModel.forward_cached` and `forward_step`, used by `models.decode`)."""

from __future__ import annotations

import torch

from tunelab.models.llama_config import LlamaConfig


class KVCache:
    """Keys and values of every layer for a batch being generated (`LlamaForCausalLM.forward_cached`).

    Preallocated once: per layer (B, Hk, S, D) keys and values in the model's dtype, S = the longest prompt plus the
    new tokens. `valid` (B, S) marks the positions that hold a real token (a left-padded prompt's pads do not);
    the first `length` positions are filled. Zeros at first: `forward_step` attends over all S positions, and a
    masked weight of 0 times an unwritten value must stay 0 (uninitialised memory may hold NaN)."""

    def __init__(self, config: LlamaConfig, batch: int, capacity: int, dtype: torch.dtype, device: torch.device):
        shape = (batch, config.num_kv_heads, capacity, config.head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_layers)]
        self.valid = torch.zeros(batch, capacity, dtype=torch.bool, device=device)
        self.length = 0

    def attention_mask(self, new: int) -> torch.Tensor:
        """(B, 1, new, length + new) bool: which keys the `new` next positions may read (real ones, causally)."""
        start, end = self.length, self.length + new
        keys = torch.arange(end, device=self.valid.device)
        queries = torch.arange(start, end, device=self.valid.device)
        allowed = self.valid[:, None, :end] & (keys[None, :] <= queries[:, None])  # (B, new, end)
        # A pad position would read no key at all: a softmax over nothing, NaN in some attention kernels, which would
        # flow into cached values that masked weights of 0 still multiply. It reads itself; real positions never
        # read a pad.
        allowed |= keys[None, None, :] == queries[None, :, None]
        return allowed[:, None]

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only the batch rows `rows` (indices, e.g. those still generating); one layer copied at a time."""
        for i in range(len(self.keys)):
            self.keys[i], self.values[i] = self.keys[i][rows], self.values[i][rows]
        self.valid = self.valid[rows]

    def step_mask(self, at: torch.Tensor) -> torch.Tensor:
        """For one new token a row at position `at` (a 0-dim tensor, as `forward_step` takes it): marks `at` real and
        returns the (B, 1, 1, S) bool mask of the keys it may read, every real position up to `at`, all in tensor
        operations (a CUDA graph replays them with `at` moved)."""
        self.valid.index_fill_(1, at.view(1), True)
        seen = torch.arange(self.valid.shape[1], device=at.device) <= at  # (S,)
        return (self.valid & seen)[:, None, None, :]
