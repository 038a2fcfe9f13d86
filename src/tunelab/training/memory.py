"""The fast path's GPU memory at its peak, from the model's shapes and the training setup: each part a named number.

Notation: L layers, d hidden size, q = heads x head_dim, kv = kv_heads x head_dim, m intermediate size, V vocab,
N = B x W tokens a micro-batch has (`Setup.tokens`; x 2 for dpo's pairs): B micro_batch rows, or the epoch's where
fewer (`data.batches.make_batches`), W the longest row, padded up to a multiple of `training.graphs.bucket_width` when
graphed, e bytes a value of the model's dtype (`Setup.dtype_bytes`: 2 for bf16 and fp16, 4 for fp32: weights and
activations alike), r the LoRA rank, R_qkv = 3r and R_gu = 2r the spare columns of the grouped projections.

Static (alive the whole step):
- weights: e bytes a weight; NF4 (QLoRA's frozen linears) per matrix of n weights ceil(n/2) codes
  + ceil(n/64) 8-bit absmaxes + 4 ceil(n/64/256) fp32 absmax2 + 4 (offset) + 1088 (the 16 + 256 fp32 code tables).
  Embedding and head V d e each (one when tied; classify and reward load no LM head), norms (2L + 1) d e, biases as
  they come.
- adapters (fp32 master weights, 4 bytes) and their fp32 gradients (4 bytes): r (in + out) per adapted projection,
  and with DoRA (`Setup.dora`, `peft.dora`) its magnitude, out more.
- optimizer: AdamW 8 bytes per trainable parameter (fp32 m and v); adamw_8bit 2 + 8 ceil(n/256)/n for tensors of
  >= 4096 values, fp32 moments below; either one e more for a bf16 parameter (full fine-tuning, layers), its Kahan
  compensation (`training.compensated`); fp32 weights keep none. adamw_torch: 2 e per parameter (torch's AdamW keeps
  m and v in the parameter's dtype: 8 bytes for fp32 adapters, 4 for a bf16 weight), no compensation.
- scratch: the stacked [W | sB; A] matrix of the widest grouped projection, (O + R)(in + R) e (`peft.group`), and
  QLoRA's dequantization workspace, the largest ungrouped NF4 weight out x in x e (o_proj and down_proj); neither
  with train.fp8, whose FP8 products keep their weight scales and one FP8 weight buffer instead: the
  last product's input rows in FP8 at every phase, a backward's FP8 operands in the backward phases, and its groups'
  adapter casts among the saved tensors (`training.memory_fp8`, every term there).
- offload: the two landing buffers, 2 N d e (`models.offload`).
- rope tables: cos and sin, 2 N head_dim e, shared by all layers.
- cuBLAS workspaces (`training.workspaces`): one per thread and stream that runs GEMMs, `Setup.blas_workspace` bytes
  each (32 MiB on a Hopper): 2 for an eager step; a graphed one 3, and a 4th from its captured backward on.
- FSDP2 across S ranks (`Setup.shards`, train.sharding fsdp2; `training.distributed.shard`): weights, adapters,
  gradients and optimizer state are cut on dim 0, so each rank holds ceil(x / S) of each. Beside its shards a rank
  holds whole what it gathers: the root unit's weights (embedding, head, final norm: kept from the forward through
  the backward) and two decoder layers' (the one computing and the next, prefetched), and the unsharded gradients of
  the root and of two trained layers (the one in backward and the one being reduce-scattered).
- grpo's reference (`Setup.reference_copy`: grpo.beta > 0 with full, layers or a continued adapter, `tasks.grpo`
  prepare): a copy of every trainable tensor as it starts, beside the trained one, the whole run long.
- method.init pissa or olora (`Setup.initial_copy`, `peft.weight_init`): each adapted layer keeps its starting
  factors A0 (r, in) and B0 (out, r) in fp32 the whole run long (for the saved adapter and the base with adapters
  off), 4 r (in + out) bytes per adapted projection, as much as the adapters themselves; over an NF4 base
  (QPiSSA) alike, its residual bases in NF4 as QLoRA's.
- QPiSSA's build (`Estimate.build`, `build_bytes`): before the first step, each adapted weight is factorised on the
  GPU in fp32 before its residual is quantized (`peft.weight_init.init_from_weight_`), one at a time. At the widest
  one (out x in, k = min(out, in)) the GPU holds at most the decoder's NF4 weights, the adapters and their A0, B0
  (all but that layer's already there: counted whole), and the weight in fp32, 4 out in, the copy of it the SVD
  (QR) overwrites, 4 out in, and its factors U (out, k) and V^T (k, in) (Q and R), 4 k (out + in): 8 out in + 4 k
  (out + in) bytes. The residual after it, W - s B0 A0, takes W and two (out, in) fp32 temporaries, 12 out in, never
  more, since k (out + in) >= out in. The solver's own workspace (cuSOLVER's, blocks of a few columns) is left out.
  It is a peak of its own, once, with no activation, gradient or optimizer state alive yet: `Estimate.peak` is the
  larger of it and the step's.
- DDP (`Setup.ddp`, train.sharding ddp on several ranks): every rank holds the whole model, and DDP's gradient
  buckets besides, one more copy of every trainable gradient (`training.distributed.parallelize` leaves
  gradient_as_bucket_view off, so the buckets are buffers of their own).

Saved per layer for backward (`models.llama` with `kernels/`, counted from their save_for_backward):
  attention half: x (rms_norm's input) N d e + rstd 4N + the norm's output with its spare columns N (d + R_qkv) e
      (saved by the grouped GEMM) + the group's output N (q + 2kv) e (v is a view of it, so all of it stays) + rope's
      q, k N (q + kv) e + attention's output N q e + its logsumexp 4 N heads + o_proj's x A^T N r e
      + A and B in e bytes, r (in + out) e, that o_proj's LoRA node keeps (cast once in forward; a grouped layer's
      are in the stacked matrix; none in fp32)
      (q/k/v one by one, not grouped: the norm's output N d e and each adapted layer's x A^T, N r e, the same sum,
      and each adapted one's A and B in e bytes;
      of their outputs only v, N kv e, as rope saves only cos and sin; all three under Qwen3's q/k norms)
      + Qwen3's q/k norms (`LlamaConfig.qk_norm`): each saves its input and rstd, 4 N (heads + kv_heads); its
      input is the projection's output where q or k has a buffer of its own (counted above), but a row-strided view
      of the group's buffer is copied to rows first (`kernels.rms_norm._rows`), N (q + kv) e more
      + packed rows (`Setup.packed`) in fp32 or with a head_dim varlen_attn does not take run the reference's
      attention (`dense_attention`): its additive (N, N) mask, N ceil16(N) e, and with grouped-query k and v repeated
      to every head, 2 N q e, saved instead of rope's k and of the projections' v, which nothing else then keeps
  MLP half: h N d e + rstd 4N + normed N (d + R_gu) e + gate|up N 2m e (SwiGLU saves both, views of one buffer)
      + SwiGLU's output N m e + down_proj's x A^T N r e and its A and B (R_gu counted as gate's and up's x A^T
      when not grouped, their A and B too)
  A checkpointed layer keeps only x (N d e), on the host when offloaded; a layer below every trained one nothing.
  DoRA: its layers run one by one (no spare columns, no stacked matrix) and each saves L(x), N out e, for m's
  gradient. LoRA dropout (`Setup.dropout`): the layers run one by one, each adapted one saving its bool keep-mask,
  N in bytes, and a checkpointed layer's MLP is recomputed over all N tokens at once (chunks would draw other masks).

Transients (the largest wins, on top of what is saved at that moment):
- the optimizer step of full fine-tuning and layers in bf16 (`training.compensated`), when no activation is left: the
  fp32 gradient copy, denom and working weight of one foreach chunk, 12 min(n_trained, max(2^25, n_max)) (each rank's
  1/S of it under fsdp2; fp32 weights take torch's fused AdamW: none);
- head (classify and reward: the final norm's three alone, their head's (B, K) logits are nothing; `Setup.lm_head`):
  the final norm's input N d e + rstd, its output N d e, the loss' grad_hidden N d e, two chunks of logits
  2 min(N, C) V e, C = `kernels.head_chunk.head_chunk_tokens(V)` (4096 tokens at V 32,000, 1024 at 128,256; the
  kernel holds one block at a time, the GPU measured one more) and the fp32 losses 4N (`kernels/cross_entropy.py`);
- backward of a kept layer: d act N m e + two (N, d) gradients, beside all saved activations; with DoRA, y = g L(x)'s
  backward 2 N out e more (dy g and dy * L(x), the widest DoRA layer's);
- with LoRA dropout, a layer's backward (kept or recomputed) 2 N in e more, the widest adapted input's: gxa A and its
  product with the mask beside dx (the dropped input for dA is freed before);
- DoRA's weight norm, in the forward of the top layer (every activation saved, as at the head) and again in a
  checkpointed layer's recomputation: the widest of its layers' W + s B A in fp32 blocks of 2048 rows, three blocks
  (the block cast to fp32, s B A and their sum; two in fp32), 12 min(out, 2048) in bytes, and over an NF4 base the
  whole W dequantized first, out x in x e (`DoRALinear.weight_norm`);
- grpo's sampling before the step (`tasks.grpo`, `models.kv_cache.KVCache`), when no activation is alive: the KV
  cache of the B = prompts_per_step x num_generations answers it samples at once (a rank's ceil(B / ranks) share
  with several), each S = the longest prompt + grpo.max_new_tokens long, 2 L B kv_heads S head_dim e (keys and
  values of every layer); beside it the prefill's working set, one layer over the P = B x T prompt tokens (T the
  longest prompt; no gradients, so a layer's tensors are freed when it returns; the head runs on each row's last
  position only, (B, V), never on (P, V)); with DoRA, beside it, a layer's weight norm (below), computed at the
  prefill and kept for the decode steps (`peft.dora.norms_held`: every layer's n, (out,) fp32, 4 bytes an output
  row of each DoRA layer, alive the whole sampling). The whole prefill long: the cache's mask (B, 1, T, T) bool,
  B T^2, and rope's cos and sin, 2 P head_dim e. Then the largest of: the attention, x, the norm's output, q as
  (B, kv_heads, G T, head_dim) (a copy), k, v and its output, P (2d + 2q + 2kv) e, with the mask's G = heads /
  kv_heads repeats (B, 1, G T, T) bool and the additive mask in e bytes that `scaled_dot_product_attention` makes of
  a bool one, B G T^2 (1 + e); o_proj, those without the masks, the output's copy as (B, T, q) and o_proj's output,
  P (3d + 3q + 2kv) e; the MLP, x, h, gate, up, their SwiGLU product and the down projection's output, P (3d + 3m) e;
- backward of a checkpointed layer, when every kept layer above has freed its activations: the attention half
  recomputed (its saved set above), the MLP in chunks of min(N, 4096) tokens (its saved set for a chunk, and d act
  for it), and three (N, d) gradients.

What the model leaves out, on purpose: the CUDA context and library memory outside the allocator's reserved memory,
the allocator's rounding and fragmentation (`plan.Calibration.activation_scale` takes them from one measured
step), per-parameter buffers under a kilobyte.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from tunelab.config import parse_size  # noqa: F401  (re-exported: sizes in the planner's terms)
from tunelab.kernels.head_chunk import head_chunk_tokens
from tunelab.models.llama_config import LlamaConfig
from tunelab.training import memory_fp8
from tunelab.training.memory_setup import (
    MLP,
    QKV,
    Setup,
    adamw8bit_bytes,
    adapter_casts,
    adapter_ranks,
    dora_norm_bytes,
    dora_outputs,
    dropout_masks,
    held_norm_bytes,
    nf4_bytes,
    projection_shapes,
    spare_columns,
)
from tunelab.training.workspaces import step_workspaces

MLP_CHUNK = 4096  # tokens per chunk of checkpointing's MLP backward (`LlamaDecoderLayer.mlp_chunk_tokens`)
FOREACH_VALUES = 2**25  # values a chunk of CompensatedAdamW's foreach step gathers (`training.compensated`)
GIB = 1024**3


@dataclass
class Estimate:
    """Peak memory as named parts (bytes); `peak` = static + saved at the peak + the largest transient."""

    static: dict[str, int]
    saved: dict[str, int]  # activations alive at the peak
    transient: dict[str, int]  # the working set at the peak
    peak_phase: str  # which transient wins: "head", "backward of a kept layer", "recomputation", "optimizer step"
    activation_scale: float = 1.0  # from a measured step (`plan.Calibration`)
    build: dict[str, int] = field(default_factory=dict)  # what the model's build holds at its peak (QPiSSA; else {})

    @property
    def static_bytes(self) -> int:
        return sum(self.static.values())

    @property
    def dynamic_bytes(self) -> int:
        return sum(self.saved.values()) + sum(self.transient.values())

    @property
    def step_peak(self) -> int:
        """The training step's peak: what a measured first step is compared with (`plan.calibrate`)."""
        return self.static_bytes + math.ceil(self.dynamic_bytes * self.activation_scale)

    @property
    def build_peak(self) -> int:
        """The model's build's peak, before the first step (0: none counted)."""
        return sum(self.build.values())

    @property
    def peak(self) -> int:
        """What the run needs: the larger of the step's peak and the build's."""
        return max(self.step_peak, self.build_peak)

    @property
    def build_wins(self) -> bool:
        return self.build_peak > self.step_peak

    def components(self) -> dict[str, int]:
        """Every part by name, the dynamic ones scaled by the calibration."""
        scale = self.activation_scale
        dynamic = {k: math.ceil(v * scale) for k, v in (self.saved | self.transient).items()}
        return self.static | dynamic

    def dominant(self) -> tuple[str, int]:
        """The largest part at the peak (the build's where it is the larger) and its size."""
        return max((self.build if self.build_wins else self.components()).items(), key=lambda kv: kv[1])


# ----------------------------------------------------------------------------------------------------------------
# Static parts


def _bias_count(c: LlamaConfig) -> int:
    q, kv, d, m = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim, c.hidden_size, c.intermediate_size
    return (q + 2 * kv) * c.qkv_bias + d * c.o_bias + (2 * m + d) * c.mlp_bias


def layer_weight_bytes(c: LlamaConfig, s: Setup) -> int:
    """One decoder layer's weights as stored (in the model's dtype, or NF4 for QLoRA's projections)."""
    shapes, e = projection_shapes(c), s.dtype_bytes
    per_layer = sum(nf4_bytes(i * o) if s.quantized else e * i * o for i, o in shapes.values())
    return per_layer + e * (_bias_count(c) + 2 * c.hidden_size + (2 * c.head_dim if c.qk_norm else 0))


def root_weight_bytes(c: LlamaConfig, s: Setup) -> int:
    """Embedding, head (none of its own when tied) and final norm, in the model's dtype."""
    e = s.dtype_bytes
    head = 0 if c.tie_word_embeddings or not s.lm_head else e * c.vocab_size * c.hidden_size
    return e * c.vocab_size * c.hidden_size + head + e * c.hidden_size


def weight_bytes(c: LlamaConfig, s: Setup) -> dict[str, int]:
    return {
        "weights: decoder" + (" (nf4)" if s.quantized else f" ({s.dtype})"): c.num_layers * layer_weight_bytes(c, s),
        "weights: embedding + head + norm": root_weight_bytes(c, s),
    }


def _trainable(c: LlamaConfig, s: Setup) -> tuple[list[tuple[int, int]], int, list[tuple[int, int]]]:
    """(one trained layer's tensors, how many layers are trained, the root's trained tensors), each tensor as
    (values, bytes per value)."""
    shapes = projection_shapes(c)
    if s.method == "lora":
        ranks = adapter_ranks(c, s)
        per_layer = [(ranks[n] * i, 4) for n, (i, _) in shapes.items() if ranks[n]]
        per_layer += [(ranks[n] * o, 4) for n, (_, o) in shapes.items() if ranks[n]]
        per_layer += [(o, 4) for n, (_, o) in shapes.items() if ranks[n] and s.dora]  # DoRA's magnitude m (out,)
        return per_layer, c.num_layers, []
    e = s.dtype_bytes
    layer = [(i * o, e) for i, o in shapes.values()] + [(c.hidden_size, e), (c.hidden_size, e)]
    if s.method == "layers":
        return layer, min(s.top_layers, c.num_layers), []
    embed = [(c.vocab_size * c.hidden_size, e)] * (1 if c.tie_word_embeddings or not s.lm_head else 2)
    return layer, c.num_layers, embed + [(c.hidden_size, e)]


def trainable_tensors(c: LlamaConfig, s: Setup) -> list[tuple[int, int]]:
    """(values, bytes per value) of every trainable tensor: the adapters' A and B (and DoRA's magnitudes; fp32), or
    the trained weights."""
    layer, count, root = _trainable(c, s)
    return layer * count + root


def training_state_bytes(c: LlamaConfig, s: Setup) -> dict[str, int]:
    tensors = trainable_tensors(c, s)
    kind = "adapters" if s.method == "lora" else "trained weights"
    params = sum(n * b for n, b in tensors)
    if s.optimizer == "adamw_torch":  # m and v in the parameter's dtype, nothing compensated
        optim = sum(2 * n * b for n, b in tensors)
    else:
        moments = adamw8bit_bytes if s.optimizer == "adamw_8bit" else (lambda n: 8 * n)  # 8-bit or fp32 m and v
        optim = sum(moments(n) + (n * b if b < 4 else 0) for n, b in tensors)  # and a bf16 weight's compensation
    out = {f"{kind}: gradients": params, f"optimizer ({s.optimizer})": optim}
    if s.method == "lora":
        out = {"adapters (fp32)": params} | out  # full/layers: the weights are already counted
    return out


def sharded_bytes(c: LlamaConfig, s: Setup, parts: dict[str, int]) -> dict[str, int]:
    """Under FSDP2 across s.shards ranks (see the module docstring): each of `parts` (weights, training state) cut
    to its 1/S share, and what a rank gathers whole beside it. `parts` as they are for one rank."""
    n = s.shards
    if n <= 1:
        return parts
    out = {f"{name}, 1/{n} (fsdp2)": -(-size // n) for name, size in parts.items()}
    layer, count, root = _trainable(c, s)
    out["fsdp2: gathered weights (root, two layers)"] = root_weight_bytes(c, s) + min(
        2, c.num_layers
    ) * layer_weight_bytes(c, s)
    grads = sum(v * b for v, b in root) + min(2, count) * sum(v * b for v, b in layer)
    out["fsdp2: unsharded grads (root, two layers)"] = grads
    return out


def optimizer_step_bytes(c: LlamaConfig, s: Setup) -> int:
    """The optimizer step's working set beyond its state: full/layers in bf16 with adamw step their tensors in foreach
    chunks of up to FOREACH_VALUES values (a larger tensor alone), each through fp32 copies of the gradient, denom and
    the working weight, 12 bytes a value (`training.compensated.adamw_update_foreach`). torch's fused AdamW (LoRA's
    fp32 adapters, fp32 weights, and every weight under adamw_torch) and the 8-bit kernel work in registers."""
    if s.method == "lora" or s.optimizer != "adamw" or s.dtype_bytes == 4:
        return 0
    sizes = [n for n, _ in trainable_tensors(c, s)]
    return 12 * -(-min(sum(sizes), max(FOREACH_VALUES, *sizes)) // s.shards)  # fsdp2: each rank steps its shards


def scratch_bytes(c: LlamaConfig, s: Setup) -> dict[str, int]:
    shapes, e = projection_shapes(c), s.dtype_bytes
    r_qkv, r_gu = spare_columns(c, s)
    out: dict[str, int] = {}
    stacked = []
    if r_qkv:
        o = sum(shapes[n][1] for n in ("q_proj", "k_proj", "v_proj"))
        stacked.append((o + r_qkv) * (c.hidden_size + r_qkv))
    if r_gu:
        stacked.append((2 * c.intermediate_size + r_gu) * (c.hidden_size + r_gu))
    fp8 = memory_fp8.fp8_on(s)  # FP8 products keep neither buffer: their weights go into the FP8 one
    if stacked and not fp8:
        out["scratch: stacked group weight"] = e * max(stacked)
    if fp8:
        out["fp8: weight scales"] = memory_fp8.scale_bytes(c, s)
        out["fp8: weight buffer"] = memory_fp8.weight_buffer_bytes(c, s)
    elif s.quantized:
        grouped = set()
        if r_qkv:
            grouped |= {"q_proj", "k_proj", "v_proj"}
        if r_gu:
            grouped |= {"gate_proj", "up_proj"}
        loose = [i * o for n, (i, o) in shapes.items() if n not in grouped]
        if loose:
            out["scratch: nf4 dequantization"] = e * max(loose)
    if s.offload and s.checkpointed:
        out["offload: landing buffers"] = 2 * s.tokens * c.hidden_size * e
    out["rope tables"] = 2 * s.tokens * c.head_dim * e
    return out


# ----------------------------------------------------------------------------------------------------------------
# Activations


def attention_saved(c: LlamaConfig, s: Setup, n: int) -> int:
    """Bytes the attention half of one kept layer saves for backward, for n tokens."""
    q, kv, d, e = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim, c.hidden_size, s.dtype_bytes
    grouped, _ = spare_columns(c, s)
    r = adapter_ranks(c, s)
    r_qkv = r["q_proj"] + r["k_proj"] + r["v_proj"]  # x A^T: in the norm's spare columns, or one (N, r) per layer
    # Grouped, one buffer that v (a view of it) keeps whole; one by one, q and k are freed by rope (which saves only
    # cos and sin) unless Qwen3's q/k norms save them; v stays. DoRA: each layer's L(x) (N, out) besides.
    outputs = q + 2 * kv if grouped or c.qk_norm else kv
    heads = q + kv  # rope's q and k, which the attention saves
    dense = e * n * -(-n // 16) * 16 if dense_attention(c, s) else 0  # the reference's additive mask
    if dense and c.num_heads > c.num_kv_heads:  # it saves k and v repeated to every head, not rope's k nor v
        outputs, heads = (q + kv if c.qk_norm and not grouped else 0), 3 * q  # q/k norms keep their own q and k
    outputs += dora_outputs(c, s, QKV)
    o_proj = r["o_proj"] + dora_outputs(c, s, ("o_proj",))
    masks = n * dropout_masks(c, s, (*QKV, "o_proj")) + dense
    casts = adapter_casts(c, s, ("o_proj",) if grouped else (*QKV, "o_proj")) + memory_fp8.group_casts(c, s, QKV)
    stats = 4 * n + 4 * n * c.num_heads + qk_norm_saved(c, s, n)  # the norms' rstd (q/k: and copies), logsumexp
    return e * n * (d + (d + r_qkv) + outputs + heads + q + o_proj) + stats + masks + casts


def dense_attention(c: LlamaConfig, s: Setup) -> bool:
    """Whether a packed row's attention falls back to the reference (`kernels.attention`: varlen_attn takes 16-bit
    q, k, v with a head_dim that is a multiple of 8 and at most 256), which masks a dense (N, N) score matrix."""
    return s.packed and (s.dtype_bytes == 4 or c.head_dim % 8 > 0 or c.head_dim > 256)


def qk_norm_saved(c: LlamaConfig, s: Setup, n: int) -> int:
    """Bytes Qwen3's per-head q and k RMSNorms save beyond the projections' outputs, for n tokens: their rstd, one
    fp32 per head and token, 4 n (heads + kv_heads), and, under the grouped GEMM, the copies of q and k the norm
    takes of its row-strided views of the group's buffer, e n (q + kv); 0 without q/k norms."""
    if not c.qk_norm:
        return 0
    q, kv = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    copies = s.dtype_bytes * n * (q + kv) if spare_columns(c, s)[0] else 0
    return 4 * n * (c.num_heads + c.num_kv_heads) + copies


def mlp_saved(c: LlamaConfig, s: Setup, n: int) -> int:
    """Bytes the MLP half of one kept layer saves for backward, for n tokens."""
    d, m, e = c.hidden_size, c.intermediate_size, s.dtype_bytes
    r = adapter_ranks(c, s)
    r_gu = r["gate_proj"] + r["up_proj"]  # x A^T: in the norm's spare columns, or one (N, r) per layer
    down = r["down_proj"] + dora_outputs(c, s, ("gate_proj", "up_proj", "down_proj"))
    casts = adapter_casts(c, s, ("down_proj",) if spare_columns(c, s)[1] else MLP) + memory_fp8.group_casts(c, s, MLP)
    return e * n * (d + (d + r_gu) + 2 * m + m + down) + 4 * n + n * dropout_masks(c, s, MLP) + casts


def layer_saved(c: LlamaConfig, s: Setup, n: int) -> int:
    return attention_saved(c, s, n) + mlp_saved(c, s, n)


def saving_layers(c: LlamaConfig, s: Setup) -> int:
    """Decoder layers that save anything for backward: all of them, or (method=layers) the trained top ones."""
    return min(s.top_layers, c.num_layers) if s.method == "layers" else c.num_layers


def recomputed_layers(c: LlamaConfig, s: Setup) -> int:
    """Of the lowest s.checkpointed layers, those recomputed in backward: the ones that save anything (`saving_layers`).
    A frozen layer below every trained one (method=layers) runs without a graph whether checkpointed or not
    (`models.recompute.recomputed_layer`), so checkpointing it keeps and saves nothing."""
    return max(0, min(s.checkpointed, c.num_layers) - (c.num_layers - saving_layers(c, s)))


def sampler_cache_bytes(c: LlamaConfig, s: Setup) -> int:
    """grpo's KV cache while it samples: keys and values of every layer, (B, kv_heads, S, head_dim) each."""
    return 2 * c.num_layers * s.sampled * c.num_kv_heads * s.sample_len * c.head_dim * s.dtype_bytes


def sampler_prefill_bytes(c: LlamaConfig, s: Setup) -> int:
    """grpo's prefill beside the KV cache: one layer's working set over the (B, T) prompts (module docstring)."""
    b, t, e = s.sampled, s.sample_prompt, s.dtype_bytes
    p, d, m = b * t, c.hidden_size, c.intermediate_size
    q, kv = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    group = c.num_heads // c.num_kv_heads
    attention = e * p * (2 * d + 2 * q + 2 * kv) + b * group * t * t * (1 + e)
    o_proj = e * p * (3 * d + 3 * q + 2 * kv)
    mlp = e * p * (3 * d + 3 * m)
    return b * t * t + 2 * p * c.head_dim * e + max(attention, o_proj, mlp)


def build_bytes(c: LlamaConfig, s: Setup, static: dict[str, int]) -> dict[str, int]:
    """QPiSSA's build peak (method.init pissa or olora over an NF4 base; {} otherwise): the decoder's NF4 weights, the
    adapters and their A0, B0 from `static`, and the factorisation of the widest adapted weight (module docstring)."""
    if not (s.initial_copy and s.quantized and s.method == "lora"):
        return {}
    ranks = adapter_ranks(c, s)
    adapted = [(i, o) for n, (i, o) in projection_shapes(c).items() if ranks[n]]
    if not adapted:
        return {}
    # no gradient, optimizer state, embedding or head (moved to the GPU after: `training.build`) yet
    held = [n for n in static if n.startswith(("weights: decoder", "adapters (fp32)", "adapters' starting"))]
    factorised = max(8 * i * o + 4 * min(i, o) * (i + o) for i, o in adapted)
    return {n: static[n] for n in held} | {"build: widest adapted weight factorised (fp32, SVD/QR)": factorised}


def estimate(c: LlamaConfig, s: Setup, activation_scale: float = 1.0) -> Estimate:
    """The peak of one training step of the fast path (see the module docstring for every term)."""
    n, d, e = s.tokens, c.hidden_size, s.dtype_bytes
    static = sharded_bytes(c, s, weight_bytes(c, s) | training_state_bytes(c, s)) | scratch_bytes(c, s)
    if s.ddp:
        static["ddp: gradient buckets"] = sum(v * b for v, b in trainable_tensors(c, s))
    if s.reference_copy:
        static["grpo reference: the trained tensors' starting copy"] = sum(v * b for v, b in trainable_tensors(c, s))
    if s.initial_copy and s.method == "lora":  # A0 (r, in) and B0 (out, r) in fp32 per adapted projection
        ranks = adapter_ranks(c, s)
        per_layer = sum(4 * ranks[n] * (i + o) for n, (i, o) in projection_shapes(c).items())
        static["adapters' starting A0, B0 (fp32, method.init)"] = c.num_layers * per_layer
    through, taken = step_workspaces(s.graphs and not s.offload)  # taken: the captured backward's, when it starts
    static |= {"cuBLAS workspaces": through * s.blas_workspace} if s.blas_workspace else {}
    late = {"cuBLAS workspace of the captured backward": taken * s.blas_workspace} if taken and s.blas_workspace else {}
    layers = saving_layers(c, s)
    checkpointed = recomputed_layers(c, s)
    kept = layers - checkpointed
    saved = {
        "activations: kept layers": kept * layer_saved(c, s, n),
        "activations: checkpointed inputs": 0 if s.offload else checkpointed * e * n * d,
    }
    chunk = min(n, head_chunk_tokens(c.vocab_size))
    # Two (chunk, V) blocks, not the one the kernel holds at a time: the H200 run of benchmarks/plan_bench.py measured
    # the head phase one such block above that count, at 7B (V 32000) and at 8B (V 128256) alike, with 4096-token
    # chunks at both (BENCHMARKS.md).
    head = e * n * d * 3 + 4 * n + (2 * e * chunk * c.vocab_size + 4 * n if s.lm_head else 0)
    kept_bwd = e * n * (c.intermediate_size + 2 * d)
    if s.dora:  # backward of y = g * L(x): dL = dy g and dy * L (reduced to m's gradient), both (N, out), at once
        kept_bwd += (
            2 * e * n * max((o for p, (_, o) in projection_shapes(c).items() if adapter_ranks(c, s)[p]), default=0)
        )
    # LoRA dropout's backward (`kernels.lora._lora_backward`): gxa A and its product with the mask beside dx, two
    # (N, in) for the widest adapted input (the dropped input for dA is freed before dx)
    dropout_bwd = (
        2 * e * n * max((i for p, (i, _) in projection_shapes(c).items() if adapter_ranks(c, s)[p]), default=0)
    )
    kept_bwd += dropout_bwd if s.dropout else 0
    # in chunks of MLP_CHUNK tokens, but all at once where dropout draws in the MLP (`LlamaDecoderLayer.backward_mlp`)
    mlp_chunk = n if dropout_masks(c, s, MLP) else min(n, MLP_CHUNK)
    recompute = attention_saved(c, s, n) + mlp_saved(c, s, mlp_chunk) + e * mlp_chunk * c.intermediate_size
    recompute += 3 * e * n * d + dora_norm_bytes(c, s)  # a DoRA layer's norm again, in its recomputed forward
    recompute += dropout_bwd if s.dropout else 0
    norm = dora_norm_bytes(c, s)
    # The phases: the head (everything saved), a kept layer's backward (everything saved), the recomputation of the
    # top checkpointed layer (the kept layers' activations freed, the checkpointed inputs still there), and the
    # optimizer step and grpo's sampling before the step (every activation freed).
    step = optimizer_step_bytes(c, s)
    cache = sampler_cache_bytes(c, s)
    fp8 = memory_fp8.phase_parts(c, s, n, mlp_chunk)  # train.fp8's buffers at each phase ({} each without it)
    chunk = "tensors" if s.shards <= 1 else f"shards (1/{s.shards})"  # under fsdp2 a rank steps its shards
    phases = {
        "head": (saved, {"head: logits chunk, hidden and its gradient": head} | fp8["head"]),
        "optimizer step": ({}, {f"optimizer step: fp32 copies of one chunk of trained {chunk}": step} | late)
        if step
        else None,
        "sampling": (
            {},
            {
                f"grpo sampler: KV cache of {s.sampled} answers x {s.sample_len} tokens": cache,
                f"grpo sampler: prefill of {s.sampled} prompts x {s.sample_prompt} tokens": sampler_prefill_bytes(c, s),
            }
            | fp8["sampling"]
            | (
                {
                    "grpo sampler: DoRA weight norm of one layer": norm,  # at the prefill, then kept
                    "grpo sampler: DoRA norms kept (fp32)": held_norm_bytes(c, s),
                }
                if norm
                else {}
            ),
        )
        if cache
        else None,
        "backward of a kept layer": (saved, {"backward: a kept layer's gradients": kept_bwd} | fp8["backward"] | late)
        if kept
        else None,
        # each forward of a DoRA layer computes its norm; the top layer's, with (nearly) every activation saved
        "forward": (saved, {"forward: DoRA weight norm ||W + s B A|| of one layer": norm}) if norm else None,
        "recomputation": (
            {"activations: checkpointed inputs": saved["activations: checkpointed inputs"]},
            {"recomputation: one layer and its gradients": recompute} | fp8["recomputation"] | late,
        )
        if checkpointed
        else None,
    }
    best = max(
        ((name, p) for name, p in phases.items() if p is not None),
        key=lambda item: sum(item[1][0].values()) + sum(item[1][1].values()),
    )
    name, (saved_at_peak, transient) = best
    return Estimate(static, dict(saved_at_peak), transient, name, activation_scale, build_bytes(c, s, static))


def gib(n: int | float) -> str:
    """Bytes in GiB to two places; below 0.1 GiB in MiB, so that a small model's figures do not all read 0.00."""
    return f"{n / GIB:.2f} GiB" if abs(n) >= GIB / 10 else f"{n / 2**20:.1f} MiB"
