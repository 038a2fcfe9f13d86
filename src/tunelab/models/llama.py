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
- Each decoder block (models/llama_layers.py) is written once, as two halves (`LlamaDecoderLayer.attend`,
  `.feed_forward`) that checkpointing's recomputation (`models.recompute`, `models.offload`) runs again for their
  gradients.
- Generation (`models.decode`) runs beside training, never through it: `forward_cached` on each module extends a
  preallocated `KVCache` and returns the last position's logits only; the training forward does not know it exists.

No adapter, quantization, distributed or compile code lives here: those are applied to the modules from outside.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, NamedTuple

import torch
from torch import nn

from tunelab.kernels import reference
from tunelab.models.kv_cache import KVCache
from tunelab.models.llama_config import (  # noqa: F401  (supports, unsupported_reason: re-exported)
    LlamaConfig,
    RopeConfig,
    supports,
    unsupported_reason,
)
from tunelab.models.llama_layers import LlamaDecoderLayer, RMSNorm
from tunelab.models.offload import HostActivations
from tunelab.models.recompute import recomputed_layer
from tunelab.models.rope import packed_position_ids, rope_cos_sin, rope_inv_freq
from tunelab.models.slots import PassClock, reserve_scratch

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
