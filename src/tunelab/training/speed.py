"""The planner's speed model: predicted seconds of one optimizer step of the fast path (`step_time`).

Coarse on purpose: it ranks the planner's candidates (training/plan.py). Its three constants were fitted to one H200 call
(`benchmarks/launch_count.py` and `train_bench.py`, 7B QLoRA, seq 2048; BENCHMARKS.md, "planner speed model"):
- GPU time = FLOPs / THROUGHPUT. Per token and layer the forward is 2 W (W the layer's weights) + 2 T q (causal
  attention: QK^T and PV over T/2 keys on average). Backward is one forward more for frozen weights (input gradients
  only; LoRA's products are small) and two for trained ones, attention's backward twice its forward. The head is
  2 V d forward and again backward (and its weight gradient when trained); classify and reward have none. A checkpointed layer's recomputation is
  one more forward without the down projection (and without o_proj where offload parks the midpoint), except where
  that projection is a DoRA layer, which computes its output anyway. With
  method=layers backward stops at the lowest trained layer: the frozen ones below run forward only, and checkpointing
  one of them recomputes nothing (`memory.recomputed_layers`).
- Weights: every pass over a layer (forward, recomputation, backward) copies the weights that are copied: every NF4
  weight into its 16-bit copy (dequantized), and those of a grouped LoRA GEMM into its stacked matrix (`peft.group`)
  where it is built: about WEIGHT_BYTES per parameter of a 16-bit run at HBM_BYTES_S, per micro-batch, and twice
  that in fp32, whose copies are fp32 (`Setup.dtype_bytes`). The stacked matrix is one buffer for the whole model,
  kept within a pass until another group needs it (`peft.group.GroupWeights`), so a pass that finds its group's
  matrix still there only reads it (e bytes a parameter; `group_builds`): the top layer's gate/up in backward (right
  after the forward's last group, unless checkpointing recomputes that layer first without offload), and a
  checkpointed layer's gate/up in its backward (built once for the recomputation and backward of every token chunk),
  with offload its q/k/v too (recomputed from the parked midpoint and backpropagated at once). A recomputation
  neither reads nor dequantizes the weights of the projections whose GEMM it skips (above). A 16-bit or fp32 weight
  of a layer that runs alone (DoRA, LoRA dropout, groups off or not all adapted, full and layers) is read by its GEMM
  as it is: e bytes a parameter and pass (`pass_bytes`). It is why, of two micro-batches both GPU-bound, the larger
  one is faster.
- CPU time: HOST_S_PER_LAYER of Python and kernel launches per layer per micro-batch, and HOST_S_PER_RECOMPUTE more
  per checkpointed layer (7B QLoRA, micro-batch 1 x 2048: ~4,900 launches a step; 190 ms a step without
  checkpointing, 238 ms with every layer checkpointed and offloaded, while the GPU needs 115-155 ms of it). A
  micro-batch takes max(GPU, CPU): small micro-batches are CPU-bound. The host matters: the same step took up to
  twice as long on slower hosts (BENCHMARKS.md), so on those the planner is optimistic about small micro-batches.
  A micro-batch replayed from a CUDA graph (train.cuda_graphs; not with offload) costs the host HOST_S_GRAPH: the
  measured graphed steps ran at the GPU times this model predicts (124 and 166 ms at micro-batch 1, against 122
  and 167 predicted).
- fp32 (full and layers on a GPU without native bf16, or model.dtype fp32): the matmuls run on the CUDA cores
  (torch leaves TF32 off for matmuls, and tunelab does not turn it on), at `fp32_fraction` of THROUGHPUT.
- Offload: each checkpointed layer moves 2 N d e bytes each way over PCIe (input and midpoint) at PCIE_BYTES_S,
  beside the next layer's compute; only the part longer than that compute costs time.
- train.fp8 (`Setup.fp8`, `quant.fp8`): the projections' GEMMs take 1 / FP8_GEMM_SPEEDUP of their bf16 time, a factor
  fitted to the end-to-end ratios of ten H100 runs beside bf16 ones (7B and 8B QLoRA: 1.08-1.11x with every layer
  checkpointed and offloaded, 1.05-1.08x at micro-batch 2 without recomputation), not the 2x of FP8's datasheet rate
  nor the 1.55x its GEMMs alone reached; `tunelab plan` says so under the table. Each pass dequantizes every weight to FP8 (FP8_WEIGHT_BYTES a parameter; no stacked matrix is built or
  reused), and every product's activation or output gradient is quantized to FP8 rows, 2 e + 1 bytes a value (read
  twice, written once: `quant.fp8_triton`); measured at ~25 ms of the 549 ms step, which this count gives. grpo's
  fixed log-prob forwards are counted as the step's forward is (FP8 GEMMs, FP8 weight bytes, quantized rows). Its
  sampler runs FP8 products too, but is timed as in bf16 (a 16-bit copy of each weight per decode step): decoding in
  FP8 was never measured, and where its bytes say 2.5 a weight against 4.5, the FP8 dequantization kernels ran at
  half their bytes' speed in the step; the plan says so.

DoRA (`Setup.dora`, `peft.dora`): every forward of a DoRA layer, the recomputed ones too (an MLP's once per 4096-token
chunk), computes its norm ||W + s B A|| (grpo's sampler once, at its prefill, and keeps it through the decode steps,
and its fixed log-prob forwards once for all their micro-batches: `peft.dora.norms_held`): B A, an fp32
GEMM of 2 out r in FLOPs at the GPU's fp32 rate, then elementwise passes over (out, in) fp32 blocks (the cast of W,
s B A, their sum, the norm), DORA_NORM_FP32_BYTES a weight, more for W's cast from 16 bits (over NF4 the whole weight
dequantized first: its codes read and a 16-bit copy written). Per token each DoRA layer also scales L(x) by g and
backward takes dy g and dy * L(x), DORA_TOKEN_BYTES e bytes per output value, a forward's share 2 of them.

grpo samples its answers before each step (`sample_time`, `models.decode`): one prefill, a forward over the B x T
prompt tokens (FLOPs as above, the head on each row's last position only, and one pass over the weights), then one
decode step per new token, up to grpo.max_new_tokens (every row steps until the last one ends, so a step that has one
answer run to the limit takes them all). A decode step reads every weight once (an NF4 weight: its codes read, its
16-bit copy written and read by the GEMM) and the whole KV cache (the fixed-shape step attends over all S positions)
at the GPU's memory bandwidth (`decode_bandwidth`), or does its 2 B (weights) + 4 B S q (attention) FLOPs per layer,
whichever takes longer, and DECODE_S_PER_LAYER more per layer: its ~35 small kernels replayed from a CUDA graph wait
on each other. Fitted to three H200 sampler calls (BENCHMARKS.md, 2026-12-02, 7B shape, prompts of 128 tokens):
QLoRA, 16 rows x 128 new tokens, 2.50 s measured, 2.22 predicted; bf16 LoRA, the same rows, 1.49 and 1.69; grpo's
QLoRA step of 64 rows x 256 new tokens, 4.8 and 5.2.

Then, before the step, grpo puts the sampled answers through the model without gradients for the log-probs the loss
holds fixed (`fixed_time`, `tasks.grpo`): one forward for the reference's (when grpo.beta > 0) and one for the old
policy's (when LoRA dropout draws in the training forward), each over the B answers, prompt and answer (`Setup.seq`),
in micro-batches of train.micro_batch rows. A micro-batch of it costs what the training step's forward does: its FLOPs
(the head's 2 V d on every token) at the matmul rate and one pass over the weights, or, where that is less, the host's
launches, taken as a third of a training micro-batch's (HOST_S_PER_LAYER covers forward and backward; this share is
not measured). The reference of a new adapter is the base with the adapters off: its layers run alone (no stacked
matrix is built, a 16-bit weight is read as it is) and no DoRA norm is computed; a continued adapter's reference
(the starting weights) and the old policy run as the adapted forward does.
"""

from __future__ import annotations

import dataclasses

from tunelab.models.llama_config import LlamaConfig
from tunelab.training.memory import MLP_CHUNK, recomputed_layers, sampler_cache_bytes, saving_layers
from tunelab.training.memory_fp8 import fp8_on
from tunelab.training.memory_setup import (
    MLP,
    PROJECTIONS,
    QKV,
    E,
    Setup,
    adapter_ranks,
    grouped_projections,
    nf4_bytes,
    projection_shapes,
)

THROUGHPUT = 540e12  # FLOP/s of the matmuls (recompute counted): fits four measured H200 steps within 4%
HOST_S_PER_LAYER = 0.006  # CPU seconds per decoder layer per micro-batch (see the module docstring)
HOST_S_PER_RECOMPUTE = 0.0015  # CPU seconds more per checkpointed layer per micro-batch
HOST_S_GRAPH = 0.002  # CPU seconds per micro-batch replayed from a CUDA graph (copy the batch in, launch)
WEIGHT_BYTES = 5  # per frozen parameter and pass in 16 bits: NF4 or bf16 read, bf16 written, read again by the GEMM
HBM_BYTES_S = 4e12  # device memory bandwidth reached by those copies (an H200 has 4.8e12 peak, an H100 3.35e12)
PCIE_BYTES_S = 25e9  # pinned host <-> device copies, one direction, beside compute
# Dense (no sparsity) matmul TFLOP/s of fp32 on the CUDA cores against 16-bit on the tensor cores (bf16; fp16 before
# Ampere), from NVIDIA's datasheets: the fraction of THROUGHPUT an fp32 run's matmuls get. Keys are matched in the
# device name (the longest first: "A100" before "A10", "L40" before "L4"); another GPU, or none here, takes
# FP32_FRACTION_DEFAULT, the H100/H200's (the GPU THROUGHPUT was fitted on).
FP32_FRACTION = {
    "H200": 67 / 989,  # H200 SXM: 67 fp32, 989 bf16
    "H100": 67 / 989,  # H100 SXM (PCIe 51 / 756, the same ratio)
    "A100": 19.5 / 312,
    "A10": 31.2 / 125,
    "L40": 90.5 / 181,
    "L4": 30.3 / 121,
    "V100": 15.7 / 125,  # fp16 tensor cores
    "T4": 8.1 / 65,  # fp16 tensor cores
}
FP32_FRACTION_DEFAULT = FP32_FRACTION["H100"]
# Memory bandwidth (bytes/s) from NVIDIA's datasheets, matched in the device name as FP32_FRACTION is (the SXM parts;
# the 80 GB A100's; an H100 PCIe has 2.0e12). Decoding reaches HBM_BYTES_S / HBM_PEAK["H200"] of it (`decode_bandwidth`);
# another GPU, or none here, takes HBM_BYTES_S, the H200's.
HBM_PEAK = {
    "H200": 4.8e12,
    "H100": 3.35e12,
    "A100": 2.039e12,
    "A10": 0.6e12,
    "L40": 0.864e12,
    "L4": 0.3e12,
    "V100": 0.9e12,
    "T4": 0.32e12,
}
# DoRA's norm, bytes per weight and forward (module docstring): s B A written 4, scaled 4 + 4, added to the fp32 block
# 4 + 4 + 4, the norm reading the sum 4; beside it the block's cast from a 16-bit W, 2 + 4 (none in fp32), and over
# NF4 the dequantization, 0.5 (codes) + 2 (the 16-bit copy)
DORA_NORM_FP32_BYTES = 28
DORA_TOKEN_BYTES = 8  # g L(x) forward (L read, y written) and its backward (dy g, dy * L(x) and its sum), in e bytes
DECODE_S_PER_LAYER = 0.00028  # seconds per decoder layer per decode step beyond its bytes (module docstring)
# train.fp8 (module docstring): the base GEMMs' time in bf16 over their time in FP8, fitted by least squares to the
# end-to-end ratios of the ten pairs on record of an FP8 run and the bf16 run of the same configuration in the same
# H100 call (tokens/s FP8 / bf16 = measured; then the ratio this model gives at 1.13, and the factor that alone would
# give the measured one):
#   2026-12-06-h100-llama2-7b-qlora-fp8.jsonl       7B, mb 4, all offloaded  14,924 / 13,802 = 1.081   1.081  1.130
#   2026-12-06-h100-qlora-fp8-beside-unsloth.jsonl  7B, mb 4, all offloaded  15,274 / 13,794 = 1.107   1.081  1.162
#                                                   8B, mb 4, all offloaded  13,990 / 12,729 = 1.099   1.079  1.156
#                                                   8B, the same, planned    13,954 / 12,692 = 1.099   1.079  1.156
#                                                   7B, mb 2 x 2, none kept  18,634 / 17,695 = 1.053   1.095  1.078
#   2026-12-06-h100-qlora-fp8-one-buffer.jsonl      7B, mb 2 x 2, none kept  16,105 / 14,910 = 1.080   1.095  1.112
#   2026-12-06-h100-qlora-fp8-targets.jsonl         7B, mb 4, all offloaded  15,115 / 13,817 = 1.094   1.081  1.146
#                                                   the same, again          15,215 / 13,817 = 1.101   1.081  1.155
#                                                   the same, again          15,229 / 13,817 = 1.102   1.081  1.156
#                                                   7B, mb 2 x 2, none kept  18,674 / 17,731 = 1.053   1.095  1.079
# The squared error of the ten ratios is least at 1.133 (rms 0.025; tests/training/test_speed.py refits it from the
# records). The offloaded runs alone would give 1.151, the runs without recomputation 1.08-1.11: there this model's
# FP8 gains more (two micro-batches each pass over the weights, whose FP8 copies move half the bytes) where the runs
# gained less, so one factor splits them, under the offloaded runs by up to 2.6% and over the others by 1.4-4.0%. The GEMMs alone ran 1.55x
# faster (benchmarks/fp8_gemm.py, 8192 rows): the dequantization kernels, measured at ~25 ms a step where their bytes
# take ~11 ms at HBM_BYTES_S, and the host are folded into the smaller factor.
FP8_GEMM_SPEEDUP = 1.13
FP8_WEIGHT_BYTES = 2.5  # per frozen parameter and pass: NF4 codes read 0.5, FP8 written 1, read by the GEMM 1
FP8_SOURCE = (
    "ten H100 runs beside bf16 ones (BENCHMARKS.md 2026-12-06: 7B and 8B QLoRA, 1.08-1.11x end to end with every layer "
    "offloaded, 1.05-1.08x at micro-batch 2 without recomputation)"
)


def layer_forward_flops(c: LlamaConfig, seq: int) -> tuple[float, float, float, float]:
    """Per token: (all matmuls of a layer, attention's scores and mixing, the down projection, o_proj), forward."""
    shapes = projection_shapes(c)
    matmul = 2.0 * sum(i * o for i, o in shapes.values())
    attention = 2.0 * seq * c.num_heads * c.head_dim
    down = 2.0 * c.intermediate_size * c.hidden_size
    o_proj = 2.0 * c.num_heads * c.head_dim * c.hidden_size
    return matmul, attention, down, o_proj


def pass_bytes(c: LlamaConfig, s: Setup, skipped: tuple[str, ...] = ()) -> float:
    """Bytes one pass over a decoder layer moves of its weights (module docstring): WEIGHT_BYTES e / E a parameter of
    a copied weight (an NF4 one, or a member of a grouped GEMM: `memory_setup.grouped_projections`), e of one its GEMM
    reads as it is; none of the `skipped` projections, whose GEMM the pass does not run."""
    grouped = grouped_projections(c, s)
    copied = FP8_WEIGHT_BYTES if fp8_on(s) else WEIGHT_BYTES * s.dtype_bytes / E
    return sum(
        i * o * (copied if s.quantized or name in grouped else s.dtype_bytes)
        for name, (i, o) in projection_shapes(c).items()
        if name not in skipped
    )


def group_builds(c: LlamaConfig, s: Setup) -> dict[str, tuple[int, int]]:
    """Per micro-batch, for each group that runs as one GEMM ("qkv", "gate_up"; `memory_setup.grouped_projections`): (the
    passes over one layer's group, summed over the layers, the times its stacked matrix is built in them). Forward
    builds every group; backward goes top down, and a group finds its matrix still there when the group before it in
    that order was itself (module docstring): with k of L layers checkpointed, gate/up is reused k times (once per
    checkpointed layer, across its token chunks) and once more at the top layer, unless that layer is recomputed
    without offload (attention first, so q/k/v take the buffer); q/k/v k times with offload (the MLP backpropagated
    first, then attention recomputed and backpropagated at once), none without (recomputed before the MLP).
    None with train.fp8: an FP8 group builds no stacked matrix, it dequantizes its weights to FP8 at every use
    (`pass_bytes` counts each)."""
    if fp8_on(s):
        return {}
    grouped = grouped_projections(c, s)
    layers, k = c.num_layers, recomputed_layers(c, s)
    passes = layers + saving_layers(c, s) + k
    out = {}
    if "q_proj" in grouped:
        out["qkv"] = (passes, passes - (k if s.offload else 0))
    if "gate_proj" in grouped:
        out["gate_up"] = (passes, passes - k - (1 if k < layers or s.offload else 0))
    return out


def reused_group_bytes(c: LlamaConfig, s: Setup) -> float:
    """Bytes per micro-batch that the passes finding their stacked matrix still built do not move (`group_builds`):
    a copy, WEIGHT_BYTES e / E a parameter, where `pass_bytes` counts one, less the GEMM's read of it, e."""
    shapes, e = projection_shapes(c), s.dtype_bytes
    members = {"qkv": QKV, "gate_up": ("gate_proj", "up_proj")}
    copied = WEIGHT_BYTES * e / E
    return sum(
        (passes - built) * sum(shapes[n][0] * shapes[n][1] for n in members[group]) * (copied - e)
        for group, (passes, built) in group_builds(c, s).items()
    )


def fp8_row_values(c: LlamaConfig, s: Setup, passes: tuple[int, int, int], skipped: tuple[str, ...]) -> float:
    """Values per token and micro-batch that train.fp8 quantizes to FP8 rows (`quant.fp8.quantize_rows`), for
    `passes` = (forwards, backwards, recomputations) over a layer: a forward quantizes each input once (q/k/v and
    gate/up share theirs), d + q + d + m; a backward every projection's output gradient; a recomputation the inputs of
    the products it runs (not those `skipped`). 0 without train.fp8."""
    if not fp8_on(s):
        return 0.0
    shapes = projection_shapes(c)
    inputs = {name: shapes[name][0] for name in ("q_proj", "o_proj", "gate_proj", "down_proj")}
    forwards, backwards, recomputations = passes
    outputs = sum(o for _, o in shapes.values())
    redone = sum(w for name, w in inputs.items() if name not in skipped)
    return forwards * sum(inputs.values()) + backwards * outputs + recomputations * redone


def _by_device(table: dict[str, float], gpu_name: str | None) -> float | None:
    """The entry of a datasheet table whose key is in the device name (the longest key first: "A100" before "A10"),
    or None for a GPU not in it, or none here."""
    for key in sorted(table, key=len, reverse=True):
        if gpu_name and key in gpu_name.upper():
            return table[key]
    return None


def fp32_fraction(gpu_name: str | None) -> float:
    """The fraction of the 16-bit matmul rate a GPU reaches in fp32 (`FP32_FRACTION`, by its device name)."""
    fraction = _by_device(FP32_FRACTION, gpu_name)
    return FP32_FRACTION_DEFAULT if fraction is None else fraction


def decode_bandwidth(gpu_name: str | None) -> float:
    """Bytes/s a decode step reads at on the GPU named `gpu_name`: its datasheet bandwidth (`HBM_PEAK`) at the share
    of it the H200 reached (HBM_BYTES_S); HBM_BYTES_S for a GPU not in the table."""
    peak = _by_device(HBM_PEAK, gpu_name)
    return HBM_BYTES_S if peak is None else peak * HBM_BYTES_S / HBM_PEAK["H200"]


def dora_norm_time(c: LlamaConfig, s: Setup, gpu_name: str | None, names: tuple[str, ...]) -> float:
    """Seconds of the norms ||W + s B A|| of the DoRA layers among `names` in one forward of one decoder layer (module
    docstring); 0 without DoRA."""
    if not s.dora:
        return 0.0
    rate = THROUGHPUT * fp32_fraction(gpu_name)  # B A in fp32, on the CUDA cores
    e = s.dtype_bytes
    per_weight = DORA_NORM_FP32_BYTES + (e + 4 if e < 4 else 0) + (0.5 + e if s.quantized else 0)
    shapes, ranks = projection_shapes(c), adapter_ranks(c, s)
    adapted = [(shapes[n], ranks[n]) for n in names if ranks[n]]
    return sum(2.0 * o * r * i / rate + per_weight * o * i / HBM_BYTES_S for (i, o), r in adapted)


def dora_layer_time(c: LlamaConfig, s: Setup, gpu_name: str | None) -> float:
    """dora_norm_time over a whole decoder layer."""
    return dora_norm_time(c, s, gpu_name, PROJECTIONS)


def sample_time(c: LlamaConfig, s: Setup, gpu_name: str | None = None) -> float:
    """Predicted seconds grpo's sampler takes before each step (see the module docstring): s.sampled answers of up to
    s.sample_len - s.sample_prompt new tokens after s.sample_prompt-token prompts; 0 when nothing is sampled."""
    if not s.sampled:
        return 0.0
    rate = THROUGHPUT * (fp32_fraction(gpu_name) if s.dtype == "fp32" else 1.0)
    bandwidth = decode_bandwidth(gpu_name)
    e, b, prompt = s.dtype_bytes, s.sampled, s.sample_prompt
    new = s.sample_len - prompt
    sizes = [i * o for i, o in projection_shapes(c).values()]
    head = c.vocab_size * c.hidden_size
    per_layer = sum(nf4_bytes(n) + 2 * e * n if s.quantized else e * n for n in sizes)  # bytes of one pass
    weights = c.num_layers * per_layer + e * head
    matmul, attention, _, _ = layer_forward_flops(c, prompt)
    prefill = (b * prompt * c.num_layers * (matmul + attention) + b * 2.0 * head) / rate + weights / bandwidth
    q = c.num_heads * c.head_dim
    flops = b * (c.num_layers * (matmul + 4.0 * s.sample_len * q) + 2.0 * head)  # one token a row, all S keys read
    reads = weights + sampler_cache_bytes(c, s)
    decode = max(reads / bandwidth, flops / rate) + DECODE_S_PER_LAYER * c.num_layers
    # DoRA: every layer's norm once, at the prefill; the decode steps reuse it (`peft.dora.norms_held`)
    norms = c.num_layers * dora_layer_time(c, s, gpu_name)
    return prefill + new * decode + norms


def fixed_time(c: LlamaConfig, s: Setup, gpu_name: str | None = None) -> float:
    """Predicted seconds of grpo's forwards over the sampled answers for the log-probs its loss holds fixed (see the
    module docstring): s.fixed_forwards forwards over s.sampled rows of s.seq tokens; 0 when there are none."""
    if not s.sampled or not s.fixed_forwards:
        return 0.0
    rate = THROUGHPUT * (fp32_fraction(gpu_name) if s.dtype == "fp32" else 1.0)
    matmul, attention, _, _ = layer_forward_flops(c, s.seq)
    if fp8_on(s):  # the base GEMMs in FP8, by the factor of the training step's (whose forward this is)
        matmul /= FP8_GEMM_SPEEDUP
    per_token = c.num_layers * (matmul + attention) + 2.0 * c.vocab_size * c.hidden_size
    batches = -(-s.sampled // s.micro_batch)
    flops_s = s.sampled * s.seq * per_token / rate
    # train.fp8: each forward quantizes its products' inputs to FP8 rows, as the training step's (`step_time`)
    flops_s += (
        s.sampled * s.seq * fp8_row_values(c, s, (c.num_layers, 0, 0), ()) * (2 * s.dtype_bytes + 1) / HBM_BYTES_S
    )
    cpu = batches * HOST_S_PER_LAYER * c.num_layers / 3
    # in eval mode: no dropout draws, so the groups form
    adapted = dataclasses.replace(s, dropout=False)
    # a new adapter's reference is the base, adapters off (`tasks.grpo.Online.reference`): no group forms (its
    # members are disabled) and no DoRA norm is computed, each weight read (or an NF4 one dequantized) alone
    base = (
        dataclasses.replace(adapted, grouped=False, dora=False)
        if s.method == "lora" and not s.reference_copy
        else adapted
    )
    olds = int(s.dropout)  # the old policy's forward: only where dropout draws in the training forward
    total = 0.0
    for setup, count in ((adapted, olds), (base, s.fixed_forwards - olds)):
        # each layer's weights once a micro-batch; a DoRA layer's norm once for them all (`peft.dora.norms_held`)
        gpu = flops_s + batches * c.num_layers * pass_bytes(c, setup) / HBM_BYTES_S
        gpu += c.num_layers * dora_layer_time(c, setup, gpu_name)
        total += count * max(gpu, cpu)
    return total


def step_time(c: LlamaConfig, s: Setup, grad_accum: int, gpu_name: str | None = None) -> float:
    """Predicted seconds of one optimizer step (see the module docstring) on the GPU named `gpu_name` (its name
    matters in fp32 only: `fp32_fraction`)."""
    rate = THROUGHPUT * (fp32_fraction(gpu_name) if s.dtype == "fp32" else 1.0)  # matmul FLOP/s
    matmul, attention, down, o_proj = layer_forward_flops(c, s.seq)
    if fp8_on(s):  # the projections' GEMMs read the frozen base: FP8 products, by the measured factor
        matmul, down, o_proj = (f / FP8_GEMM_SPEEDUP for f in (matmul, down, o_proj))
    trained = s.method != "lora"
    layers = c.num_layers
    backed = saving_layers(c, s)  # layers backward runs through: all, or (method=layers) the trained top ones
    forward = matmul + attention
    backward = (2 if trained else 1) * matmul + 2 * attention
    checkpointed = recomputed_layers(c, s)
    # A recomputation skips the GEMM of the down projection (and of o_proj when offloaded), whose output backward
    # never reads; a DoRA layer computes its output all the same (`DoRALinear.forward` ignores output=False).
    dora = adapter_ranks(c, s) if s.dora else {}
    recompute = forward - (0.0 if dora.get("down_proj") else down)
    recompute -= o_proj if s.offload and not dora.get("o_proj") else 0.0
    # and neither reads nor (NF4) dequantizes their weights: output=False skips both (`kernels.lora`, `quant.linear`)
    skipped = tuple(p for p in ("down_proj", "o_proj")[: 2 if s.offload else 1] if not dora.get(p))
    head = 2.0 * c.vocab_size * c.hidden_size * (3 if s.method == "full" else 2) if s.lm_head else 0.0
    per_token = layers * forward + backed * backward + checkpointed * recompute + head
    n = s.tokens
    gpu = n * per_token / rate
    weights = (layers + backed) * pass_bytes(c, s) + checkpointed * pass_bytes(c, s, skipped)
    gpu += (weights - reused_group_bytes(c, s)) / HBM_BYTES_S
    # train.fp8's row quantization: each value read twice (its row's absmax, then scaled) and written in one byte
    rows = fp8_row_values(c, s, (layers, backed, checkpointed), skipped)
    gpu += n * rows * (2 * s.dtype_bytes + 1) / HBM_BYTES_S
    if s.dora:  # the norms of every forward (a recomputed MLP's once per chunk) and g L(x) on every token
        chunks = 1 if s.dropout else -(-n // MLP_CHUNK)  # dropout: the MLP recomputed whole (`memory.mlp_saved`)
        gpu += layers * dora_layer_time(c, s, gpu_name)
        attention = dora_norm_time(c, s, gpu_name, (*QKV, "o_proj"))
        gpu += checkpointed * (attention + chunks * dora_norm_time(c, s, gpu_name, MLP))
        shapes, ranks = projection_shapes(c), adapter_ranks(c, s)
        out = sum(o for name, (_, o) in shapes.items() if ranks[name])
        gpu += n * out * s.dtype_bytes * (backed * DORA_TOKEN_BYTES + 2 * checkpointed) / HBM_BYTES_S
    if s.offload and checkpointed:
        layer_s = n * forward / rate
        copy_s = 2 * n * c.hidden_size * s.dtype_bytes / PCIE_BYTES_S
        gpu += 2 * checkpointed * max(0.0, copy_s - layer_s)
    if s.graphs and not s.offload:
        cpu = HOST_S_GRAPH
    else:
        cpu = HOST_S_PER_LAYER * layers + HOST_S_PER_RECOMPUTE * checkpointed
    return grad_accum * max(gpu, cpu)
