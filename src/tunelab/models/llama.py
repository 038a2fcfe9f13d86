"""tunelab's own Llama-family decoder: Llama 2/3/3.x, SmolLM2, Mistral, Qwen2 and Qwen3, in plain PyTorch.

Module and parameter names are exactly Hugging Face's (`model.layers.{i}.self_attn.q_proj`, `model.norm`,
`lm_head`, ...), so checkpoints load by identity and LoRA target names and PEFT adapter keys match. All the maths that
has a fused kernel goes through an `ops` object with the fields `rms_norm, apply_rope, swiglu, attention,
linear_cross_entropy`: the pure-PyTorch reference (`tunelab.kernels.reference`) on the CPU, Triton kernels on the GPU,
chosen by whoever builds the model. What is unusual here:

- `forward(..., labels=...)` never builds the (B, T, V) logits: it returns the SUM of token losses and the number of
  tokens that count, from `ops.linear_cross_entropy` on the final hidden states. The caller divides once per optimizer
  step (all micro-batches, all ranks).
- Packed rows (several documents in one row of a batch of one, delimited by `cu_seqlens`) attend only within their own
  document, and the loss never asks a document's last token to predict the next document's first token.
- Rope cos/sin are recomputed on every forward from the config in fp32 (`models.rope`): no `inv_freq` buffer for `.to(bf16)`
  to round, and nothing to initialise when the model is built on the meta device.
- Every linear layer but the head is called through a projection slot (`models.slots`): q/k/v and gate/up as groups
  that read one input, o_proj and down_proj as last projections that join the residual stream. By default they run
  one by one; `tunelab.peft` puts in its own implementations (adapters grouped into one GEMM, fused last projections).
- Each decoder block is written once, as two halves (`LlamaDecoderLayer.attend`, `.feed_forward`) that checkpointing's
  recomputation (`models.recompute`, `models.offload`) runs again for their gradients.
- Generation (`models.decode`) runs beside training, never through it: `forward_cached` on each module extends a
  preallocated `KVCache` and returns the last position's logits only; the training forward does not know it exists.

No adapter, quantization, distributed or compile code lives here: those are applied to the modules from outside.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from tunelab.kernels import reference
from tunelab.models.kv_cache import KVCache
from tunelab.models.llama_config import (  # noqa: F401  (supports, unsupported_reason: re-exported)
    LlamaConfig,
    RopeConfig,
    supports,
    unsupported_reason,
)
from tunelab.models.offload import HostActivations
from tunelab.models.recompute import recomputed_layer
from tunelab.models.rope import packed_position_ids, rope_cos_sin, rope_inv_freq
from tunelab.models.slots import PassClock, Projection, ProjectionGroup, reserve_scratch

IGNORE_INDEX = -100


# --------------------------------------------------------------------------------------------------------------------
# Helpers


def shift_labels(labels: torch.Tensor, cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T) targets: position t predicts labels[:, t + 1]; the last position and every packed document's last token
    get IGNORE_INDEX, so no token is asked to predict across a document boundary. Documents must be non-empty."""
    pad = labels.new_full((labels.shape[0], 1), IGNORE_INDEX)
    targets = torch.cat((labels[:, 1:], pad), dim=1)
    if cu_seqlens is not None:
        last_tokens = cu_seqlens[1:].long() - 1  # (docs,) position of each document's last token
        targets.index_fill_(1, last_tokens, IGNORE_INDEX)
    return targets


def reference_ops() -> SimpleNamespace:
    """The pure-PyTorch ops, as the object the model expects (`tunelab.kernels.select("reference")` gives the same)."""
    return SimpleNamespace(
        rms_norm=reference.rms_norm,
        apply_rope=reference.apply_rope,
        swiglu=reference.swiglu,
        attention=reference.attention,
        linear_cross_entropy=reference.linear_cross_entropy,
        linear_log_probs=reference.linear_log_probs,
    )


# --------------------------------------------------------------------------------------------------------------------
# Modules


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


class LlamaModel(nn.Module):
    """Embedding, decoder layers and final norm: input_ids (B, T) -> hidden states (B, T, hidden_size)."""

    def __init__(self, config: LlamaConfig, ops: Any = None):
        super().__init__()
        ops = ops if ops is not None else reference_ops()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.passes = PassClock()  # ticked by every forward; read by slots that keep copies of weights
        self.layers = nn.ModuleList(LlamaDecoderLayer(config, ops, self.passes) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, ops)
        self.gradient_checkpointing = False
        # With checkpointing: recompute only the lowest this many layers (None: all). The lowest, because backward
        # reaches them last, when the kept layers above have freed their activations for the recomputation's.
        self.checkpoint_layers: int | None = None
        self._offload_stream = None  # created on first use by activation offload
        self._offload_buffers: list[torch.Tensor | None] = [None, None]  # where offloaded inputs come back to

    def get_decoder(self) -> LlamaModel:
        """Itself: the decoder whose `layers` are the blocks (transformers' base models answer so too)."""
        return self

    def _embed(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The embeddings h (B, T, d) of input_ids (B, T), and the rope tables cos, sin (B, T, D) of position_ids in
        h's dtype: what every layer of the training forward and of a cached one reads."""
        h = self.embed_tokens(input_ids)  # (B, T, d)
        inv_freq = rope_inv_freq(self.config.rope, self.config.head_dim, device=h.device)
        cos, sin = rope_cos_sin(position_ids, inv_freq, h.dtype)  # (B, T, D) each
        return h, cos, sin

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """See `LlamaForCausalLM.forward` for the arguments."""
        self.passes.tick()  # weights may have changed since the last pass: copies of them in slots are rebuilt
        B, T = input_ids.shape
        if cu_seqlens is not None and B != 1:
            raise ValueError(f"packed sequences (cu_seqlens) need a batch of one row, got {B} rows")
        if position_ids is None:
            if cu_seqlens is not None:
                position_ids = packed_position_ids(cu_seqlens, T)
            else:
                position_ids = torch.arange(T, device=input_ids.device)[None].expand(B, T)
        h, cos, sin = self._embed(input_ids, position_ids)
        recompute = bool(self.gradient_checkpointing) and torch.is_grad_enabled()
        checkpointed = (
            len(self.layers) if self.checkpoint_layers is None else min(self.checkpoint_layers, len(self.layers))
        )
        recompute = recompute and checkpointed > 0
        store = None
        if recompute and self.gradient_checkpointing == "offload" and h.is_cuda:
            if self._offload_stream is None:
                self._offload_stream = torch.cuda.Stream(h.device)
            # Layer inputs (and, where no dropout draws, each layer's midpoint) wait on the host.
            with_mid = not any(layer.draws_random() for layer in self.layers[:checkpointed])
            store = HostActivations(h.device, self._offload_stream, self._offload_buffers, with_mid)
            store.reserve(h)  # before this step's activations: the two landing buffers stay low in the allocator
        if h.is_cuda and self.layers:
            reserve_scratch(self.layers[0].slots(), h)  # likewise the buffers the slots fill (all layers share them)
        max_seqlen = None
        if cu_seqlens is not None:
            # The boundaries read once (a device sync on CUDA) for every layer's attention and its recomputation.
            cu_seqlens, max_seqlen = reference.document_bounds(cu_seqlens, T)
        for index, layer in enumerate(self.layers):
            if recompute and index < checkpointed:
                # Keep only each layer's input (on the device or in `store`); recompute the rest during backward.
                h = recomputed_layer(layer, store, index, h, cos, sin, cu_seqlens, attention_mask, max_seqlen)
            else:
                h = layer(h, cos, sin, cu_seqlens, attention_mask, max_seqlen)
        return self.norm(h)

    def forward_cached(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        cache: KVCache,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Inference only: the final-norm hidden state (B, d) of the last of the new tokens input_ids (B, t), at
        rope positions position_ids (B, t), appended to `cache`. attention_mask (B, t) of 1/0 marks real tokens
        (left padding of a prompt; default all real)."""
        T = input_ids.shape[1]
        if cache.length == 0:
            self.passes.tick()  # a new generation: the weights may have changed since the last pass; not within one
        start = cache.length
        cache.valid[:, start : start + T] = True if attention_mask is None else attention_mask.bool()
        h = self._through_cache(input_ids, position_ids, cache, start, cache.attention_mask(T))
        cache.length = start + T
        return h

    def forward_step(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, cache: KVCache, at: torch.Tensor
    ) -> torch.Tensor:
        """Inference only: `forward_cached` for one new token a row, input_ids and position_ids (B, 1), written at
        cache position `at` (a 0-dim long tensor). Every shape is fixed and every index a tensor, so a CUDA graph
        can replay it step after step with `at` moved in place (`models.decode`): the attention reads the cache's
        whole capacity, with the positions after `at` masked. `cache.length` is left to the caller."""
        return self._through_cache(input_ids, position_ids, cache, at, cache.step_mask(at))

    def _through_cache(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, cache: KVCache, start: int | torch.Tensor, mask
    ) -> torch.Tensor:
        """The layers over the new tokens (B, t), each reading its cache and writing their keys and values at
        `start`; the final-norm hidden state (B, d) of the last position, the only one that feeds the head."""
        h, cos, sin = self._embed(input_ids, position_ids)
        for layer, keys, values in zip(self.layers, cache.keys, cache.values, strict=True):
            h = layer.forward_cached(h, cos, sin, keys, values, start, mask)
        return self.norm(h[:, -1])


class LossOutput(NamedTuple):
    """Summed cross-entropy over the tokens that count, and how many they are (both 0-dim tensors)."""

    loss_sum: torch.Tensor
    num_tokens: torch.Tensor


class LlamaForCausalLM(nn.Module):
    """LlamaModel + lm_head (sharing the embedding's Parameter when the config ties them)."""

    def __init__(self, config: LlamaConfig, ops: Any = None):
        super().__init__()
        self.ops = ops if ops is not None else reference_ops()
        self.config = config
        self.model = LlamaModel(config, self.ops)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def get_decoder(self) -> LlamaModel:
        """The decoder (its `layers` are the blocks), as transformers' models name it."""
        return self.model

    @property
    def gradient_checkpointing(self) -> bool:
        """Recompute each decoder layer during backward (`models.recompute`) to save memory."""
        return self.model.gradient_checkpointing

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, enabled: bool | str) -> None:
        """True, False, or "offload": checkpointing with the layer inputs kept in pinned host memory (CUDA)."""
        self.model.gradient_checkpointing = enabled if enabled == "offload" else bool(enabled)

    @property
    def checkpoint_layers(self) -> int | None:
        """With checkpointing: how many decoder layers, from the bottom, are recomputed (None: all)."""
        return self.model.checkpoint_layers

    @checkpoint_layers.setter
    def checkpoint_layers(self, count: int | None) -> None:
        if count is not None and count < 0:
            raise ValueError(f"checkpoint_layers must be >= 0 or None, got {count}")
        self.model.checkpoint_layers = count

    def init_weights(self, std: float = 0.02) -> None:
        """Random init for training from scratch or benchmarks: N(0, std) matrices, zero biases, unit norms."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        token_log_probs: bool = False,
        temperature: float = 1.0,
    ) -> torch.Tensor | LossOutput | tuple[torch.Tensor, torch.Tensor]:
        """Logits (B, T, V) without labels; with labels, `LossOutput(loss_sum, num_tokens)`, or with
        token_log_probs (no packing) (n,) log p of each labelled target and (n,) its row, row-major, by the fused
        head + log-prob op (what `tasks/log_probs.py` reads, through this forward so that DDP and FSDP2 hook it), of
        the distribution softmax(logits / temperature).

        input_ids (B, T). position_ids (B, T), default 0..T-1 per row (or restarting per document when cu_seqlens is
        given). attention_mask (B, T) of 1/0 marks the real tokens of a right-padded batch. cu_seqlens (docs + 1,)
        int32 cumulative document lengths starting at 0, for a packed batch of one row: attention stays within each
        document; pass position_ids that restart at 0 for each document (the default does this).

        labels (B, T) are aligned with input_ids as in Hugging Face (labels[t] is the token at t; the model shifts
        internally, so position t is scored on labels[t + 1]); -100 marks tokens that do not count (prompt, padding).
        Packing contract: put -100 at each document's first label. The model also never scores a document's last
        token against the next document's first label (it ignores that target itself), so a stray label there is
        harmless. Returns the SUM of the losses, not the mean: divide by the step's total num_tokens.
        """
        hidden = self.model(input_ids, position_ids, attention_mask, cu_seqlens)  # (B, T, d)
        if labels is None:
            return self.lm_head(hidden)  # (B, T, V)
        targets = shift_labels(labels, cu_seqlens)  # (B, T)
        if token_log_probs:
            keep = targets != IGNORE_INDEX
            logp = self.ops.linear_log_probs(hidden[keep], self.lm_head.weight, targets[keep], temperature=temperature)
            return logp, keep.nonzero()[:, 0]
        # lm_head is applied chunk by chunk inside the loss, so it must stay a plain nn.Linear here.
        loss_sum = self.ops.linear_cross_entropy(
            hidden.reshape(-1, hidden.shape[-1]), self.lm_head.weight, targets.reshape(-1), ignore_index=IGNORE_INDEX
        )
        return LossOutput(loss_sum, (targets != IGNORE_INDEX).sum())

    def forward_cached(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        cache: KVCache,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Inference only (`models.decode`): the logits (B, V) of the last position of input_ids (B, t), whose keys
        and values are appended to `cache`; the head runs on that position alone, never on (B, t, V). See
        `LlamaModel.forward_cached` for the arguments."""
        return self.lm_head(self.model.forward_cached(input_ids, position_ids, cache, attention_mask))

    def forward_step(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, cache: KVCache, at: torch.Tensor
    ) -> torch.Tensor:
        """Inference only: the logits (B, V) of one new token a row at cache position `at` (a 0-dim tensor), with
        fixed shapes for a CUDA graph; see `LlamaModel.forward_step`."""
        return self.lm_head(self.model.forward_step(input_ids, position_ids, cache, at))
