"""One decoder block of tunelab's Llama-family model (models/llama.py, whose docstring says what is unusual about
it), and its parts: `RMSNorm`, `LlamaAttention`, `LlamaMLP`. The block is written once, as two halves
(`LlamaDecoderLayer.attend`, `.feed_forward`) that checkpointing's recomputation runs again for their gradients;
every linear layer is called through a projection slot (models/slots.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tunelab.models.llama_config import LlamaConfig
from tunelab.models.slots import PassClock, Projection, ProjectionGroup


def _draws_random(module: nn.Module) -> bool:
    """True when `module` is training with dropout somewhere inside it."""
    return module.training and any(isinstance(m, nn.Dropout) and m.p > 0 for m in module.modules())


class RMSNorm(nn.Module):
    """y = x / rms(x) * weight over the last dimension."""

    def __init__(self, dim: int, eps: float, ops: Any):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps
        self.ops = ops

    def forward(self, x: torch.Tensor, spare_columns: int = 0, with_residual: bool = False) -> Any:
        """spare_columns > 0: the result is the first columns of a wider buffer, for a projection group to use.
        with_residual: returns (norm(x), x), the second for the residual stream: the fused kernel then adds that
        use's gradient to x's in its own backward pass."""
        return self.ops.rms_norm(x, self.weight, self.eps, spare_columns=spare_columns, with_residual=with_residual)


class LlamaAttention(nn.Module):
    """Grouped-query causal self-attention with rope; optional qkv/o bias and per-head q/k RMSNorm (Qwen3).

    q/k/v run through the slot `qkv`, o_proj through `o` (`models.slots`)."""

    projection_slots = ("qkv", "o")

    def __init__(self, config: LlamaConfig, ops: Any, clock: PassClock):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_heads, config.num_kv_heads, config.head_dim
        q_dim, kv_dim = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
        self.q_proj = nn.Linear(config.hidden_size, q_dim, bias=config.qkv_bias)
        self.k_proj = nn.Linear(config.hidden_size, kv_dim, bias=config.qkv_bias)
        self.v_proj = nn.Linear(config.hidden_size, kv_dim, bias=config.qkv_bias)
        self.o_proj = nn.Linear(q_dim, config.hidden_size, bias=config.o_bias)
        if config.qk_norm:
            self.q_norm = RMSNorm(config.head_dim, config.rms_norm_eps, ops)
            self.k_norm = RMSNorm(config.head_dim, config.rms_norm_eps, ops)
        else:
            self.q_norm = self.k_norm = None
        self.ops = ops
        self.qkv = ProjectionGroup(self._modules, ("q_proj", "k_proj", "v_proj"), clock)
        self.o = Projection(self._modules, "o_proj", clock)

    def to_heads(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The projections (B, T, H * D), (B, T, Hk * D) x 2 split into heads, q and k normed (Qwen3) and rotated:
        q (B, T, H, D), k and v (B, T, Hk, D). The training forward and `forward_cached` both start here."""
        B, T, _ = q.shape
        q = q.view(B, T, self.num_heads, self.head_dim)  # (B, T, H, D)
        k = k.view(B, T, self.num_kv_heads, self.head_dim)  # (B, T, Hk, D)
        v = v.view(B, T, self.num_kv_heads, self.head_dim)  # (B, T, Hk, D)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = self.ops.apply_rope(q, k, cos, sin)
        return q, k, v

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cu_seqlens: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        max_seqlen: int | None = None,
        output: bool = True,
        residual: torch.Tensor | None = None,
        room: int = 0,
    ) -> torch.Tensor:
        """Returns residual + attention (when residual is given). output=False (recomputation for backward): o_proj's
        autograd node is recorded but its GEMM skipped. room: spare columns after x's rows (`models.slots`)."""
        B, T, _ = x.shape
        q, k, v = self.to_heads(*self.qkv(x, room), cos, sin)
        out = self.ops.attention(q, k, v, cu_seqlens=cu_seqlens, attention_mask=attention_mask, max_seqlen=max_seqlen)
        return self.o(out.reshape(B, T, self.num_heads * self.head_dim), residual, output)

    def forward_cached(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        start: int | torch.Tensor,
        mask: torch.Tensor,
        residual: torch.Tensor,
    ) -> torch.Tensor:
        """Inference only: residual + attention for the new tokens x (B, t, d) at cache positions start..start+t,
        whose keys and values are written into this layer's cache `keys`/`values` (B, Hk, S, D) first. mask
        (B, 1, t, start + t) from `KVCache.attention_mask`. A 0-dim tensor `start` (one new token, t = 1): written
        there by index, and the attention reads all S positions, mask (B, 1, 1, S) (`LlamaModel.forward_step`).

        q/k/v run one by one (the default group): a grouped slot would rebuild its stacked weight matrix for every few
        tokens, a copy of the weights per step where the GEMMs themselves only read them once."""
        B, T, _ = x.shape
        q, k, v = self.to_heads(*self.qkv.as_default()(x), cos, sin)  # (B, t, H, D), (B, t, Hk, D) x 2
        if isinstance(start, torch.Tensor):
            keys.index_copy_(2, start.view(1), k.transpose(1, 2))
            values.index_copy_(2, start.view(1), v.transpose(1, 2))
            end = keys.shape[2]
        else:
            end = start + T
            keys[:, :, start:end] = k.transpose(1, 2)
            values[:, :, start:end] = v.transpose(1, 2)
        # Grouped-query without copying the cache: query head h reads key head h // G (G = H / Hk), so the G query
        # heads of one key head become G * t rows of one attention over that head's keys (row g * t + i).
        G = self.num_heads // self.num_kv_heads
        q = q.transpose(1, 2).reshape(B, self.num_kv_heads, G * T, self.head_dim)  # (B, Hk, G * t, D)
        out = F.scaled_dot_product_attention(
            q, keys[:, :, :end], values[:, :, :end], attn_mask=mask.repeat(1, 1, G, 1)
        )  # (B, Hk, G * t, D)
        out = out.reshape(B, self.num_heads, T, self.head_dim).transpose(1, 2)  # (B, t, H, D)
        return self.o(out.reshape(B, T, self.num_heads * self.head_dim), residual)

    def extra_repr(self) -> str:
        return f"qkv={self.qkv!r}, o={self.o!r}"


class LlamaMLP(nn.Module):
    """down_proj(silu(gate_proj(x)) * up_proj(x)); gate/up run through the slot `gate_up`, down_proj through `down`."""

    projection_slots = ("gate_up", "down")

    def __init__(self, config: LlamaConfig, ops: Any, clock: PassClock):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.mlp_bias)
        self.ops = ops
        self.gate_up = ProjectionGroup(self._modules, ("gate_proj", "up_proj"), clock)
        self.down = Projection(self._modules, "down_proj", clock)

    def forward(
        self, x: torch.Tensor, output: bool = True, residual: torch.Tensor | None = None, room: int = 0
    ) -> torch.Tensor:
        """Returns residual + mlp(x) (when residual is given). output=False (recomputation for backward): the down
        projection's autograd node is recorded but its GEMM skipped, so the result's values are undefined; only its
        gradient path is real. room: spare columns after x's rows (`models.slots`)."""
        gate, up = self.gate_up(x, room)
        # The projections' outputs feed only the activation: its backward may reuse their memory for its gradients.
        act = self.ops.swiglu(gate, up, reuse_inputs=True)
        return self.down(act, residual, output)

    def extra_repr(self) -> str:
        return f"gate_up={self.gate_up!r}, down={self.down!r}"


class LlamaDecoderLayer(nn.Module):
    """Pre-norm block: h = x + attn(norm(x)); out = h + mlp(norm(h)).

    The block is written once, as its two halves `attend` and `feed_forward`: forward runs them in turn, and
    checkpointing's recomputation (`backward_through`, and offload's `backward_mlp` then `backward_attention`) runs them
    again, for their gradients only where backward never reads a result (output=False).
    """

    def __init__(self, config: LlamaConfig, ops: Any, clock: PassClock):
        super().__init__()
        # Registered in Hugging Face's order, so that parameter lists and saved files list them alike.
        self.self_attn = LlamaAttention(config, ops, clock)
        self.mlp = LlamaMLP(config, ops, clock)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, ops)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, ops)
        # Tokens per MLP chunk in checkpointing's backward (None: all at once); see `backward_mlp`.
        self.mlp_chunk_tokens: int | None = 4096

    def attend(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cu_seqlens: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        max_seqlen: int | None = None,
        output: bool = True,
    ) -> torch.Tensor:
        """The first half, h = x + attn(norm(x)). output=False: attn(norm(x))'s autograd node alone, o_proj's GEMM
        skipped (values undefined, no residual): for a recomputation whose result backward never reads."""
        room = self.self_attn.qkv.spare_columns(x)
        # The residual stream reads x through the norm's second output, so that one kernel sums x's two gradients.
        norm = self.input_layernorm
        normed, residual = norm(x, room, with_residual=True) if output else (norm(x, room), None)
        return self.self_attn(
            normed, cos, sin, cu_seqlens, attention_mask, max_seqlen, output=output, residual=residual, room=room
        )

    def feed_forward(self, h: torch.Tensor, output: bool = True) -> torch.Tensor:
        """The second half, h + mlp(norm(h)). output=False: mlp(norm(h))'s autograd node alone, the down projection's
        GEMM skipped (values undefined, no residual)."""
        room = self.mlp.gate_up.spare_columns(h)
        norm = self.post_attention_layernorm
        normed, residual = norm(h, room, with_residual=True) if output else (norm(h, room), None)
        return self.mlp(normed, output=output, residual=residual, room=room)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cu_seqlens: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        max_seqlen: int | None = None,
        keep_mid: Callable[[torch.Tensor], None] | None = None,
    ) -> torch.Tensor:
        """keep_mid: called with h = x + attn(norm(x)) as soon as it exists (activation offload parks it)."""
        h = self.attend(x, cos, sin, cu_seqlens, attention_mask, max_seqlen)
        if keep_mid is not None:
            keep_mid(h)
        return self.feed_forward(h)

    def forward_cached(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        start: int | torch.Tensor,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        """Inference only: the block over the new tokens x (B, t, d), reading and extending this layer's cache (see
        `LlamaAttention.forward_cached`). gate/up run one by one, for the reason q/k/v do there."""
        h = self.self_attn.forward_cached(self.input_layernorm(x), cos, sin, keys, values, start, mask, residual=x)
        gate, up = self.mlp.gate_up.as_default()(self.post_attention_layernorm(h))
        return self.mlp.down(self.mlp.ops.swiglu(gate, up), h)

    def slots(self) -> tuple[ProjectionGroup | Projection, ...]:
        """The layer's projection slots, in the order they run."""
        return self.self_attn.qkv, self.self_attn.o, self.mlp.gate_up, self.mlp.down

    def draws_random(self) -> bool:
        """True when training with dropout somewhere in the layer (its recomputation must replay the draws in order)."""
        return _draws_random(self)

    def backward_through(self, x: torch.Tensor, grad_out: torch.Tensor, *rope_and_packing: Any) -> None:
        """Checkpointing's recomputation and backward, for grad_out = d loss / d output: gradients accumulate into
        the parameters and, if it requires grad, into x.grad. `rope_and_packing`: forward's (cos, sin, cu_seqlens,
        attention_mask, max_seqlen).

        Backward reads neither the output h + mlp(norm(h)) nor the MLP's result, so the down projection's GEMM is
        skipped; the MLP's part is `backward_mlp`.
        """
        h = self.attend(x, *rope_and_packing)
        grad_h = self.backward_mlp(h.detach(), grad_out)
        torch.autograd.backward(h, grad_h)

    def backward_mlp(self, h: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
        """The second half recomputed and backpropagated from h = x + attn(norm(x)) (no grad): returns d loss / d h,
        grad_out plus the MLP path's gradient. The MLP works token by token: it runs `mlp_chunk_tokens` tokens at a
        time (unless dropout is on in it), so its widest activations (gate, up, their product and gradients) exist
        for one chunk only."""
        flat_h = h.reshape(-1, h.shape[-1])  # (N, d)
        flat_g = grad_out.reshape(-1, grad_out.shape[-1])  # (N, d)
        grad_h = torch.empty_like(flat_g)  # grad_out + the MLP path's gradient
        # Dropout draws its masks over the whole tensor in forward; chunks would draw other ones.
        step = (None if _draws_random(self.mlp) else self.mlp_chunk_tokens) or flat_h.shape[0]
        for start in range(0, flat_h.shape[0], step):
            h_chunk = flat_h[start : start + step].detach().requires_grad_(True)
            g_chunk = flat_g[start : start + step]
            part = self.feed_forward(h_chunk, output=False)  # mlp(norm(h)): the residual's gradient is g_chunk
            torch.autograd.backward(part, g_chunk)
            torch.add(g_chunk, h_chunk.grad, out=grad_h[start : start + step])
            del part, h_chunk
        return grad_h.view_as(grad_out)

    def backward_attention(self, x: torch.Tensor, grad_h: torch.Tensor, *rope_and_packing: Any) -> None:
        """The first half, given d loss / d h from `backward_mlp` (h itself came from elsewhere): attention is
        recomputed for its gradients only, and grad_h also flows to x through the residual. Gradients accumulate
        into the parameters and x.grad."""
        attn = self.attend(x, *rope_and_packing, output=False)  # attn(norm(x)): the residual's gradient is grad_h
        if x.requires_grad:
            torch.autograd.backward([attn, x], [grad_h, grad_h])
        else:
            torch.autograd.backward(attn, grad_h)
