"""What train.fp8 changes in the memory model (`training.memory`): the NF4 base's products in FP8 (`quant.fp8`)
write their weights into one FP8 buffer where the bf16 path dequantizes into 16-bit ones, and quantize their inputs
at each use.

An FP8 base (`quant.fp8.FP8Base`) is a projection group's stacked weights (q/k/v, gate/up) where the group runs as
one node (`peft.fp8_group`: every member adapted, as `memory_setup.spare_columns` says), else one NF4 layer's. For a
base of `in` inputs and O outputs over n tokens, with e the model's bytes a value:
- static: its scales, made at first use and kept: the factor and 1/factor as (1, O) and (1, in) vectors, fp32,
  4 (1 + O + in) bytes (a group member's own FP8Base never runs, so it makes none); and the one FP8 buffer
  (`quant.fp8.SCRATCH`, reserved before the first step) that every base writes its weight, straight or transposed,
  into: the largest base's in O bytes. Gone: the 16-bit dequantization workspace and the stacked [W | sB; A] matrix.
- forward (`FP8Base.product`): the input's rows in FP8 and their scales, n in + 4 n bytes, which `quant.fp8._LastRows`
  keeps until the next product quantizes another input (so q/k/v, and gate/up, quantize theirs once): after a forward
  it holds the top layer's down_proj input, N (m + 4), through the head and every kept layer's backward; a
  recomputation replaces it with its own inputs, of which the widest is q/k/v's (N, d) or o_proj's (N, q) (offload
  skips o_proj's GEMM; gate/up's are chunks of at most N tokens).
- backward (`FP8Base.input_grad`): the output gradient's rows in FP8 and their scales, n (O + 4), beside the GEMM's
  dx: the widest base's, over N tokens in a kept layer, over an MLP chunk for the MLP of a recomputed one.
- saved for backward: an FP8 group saves what the bf16 group does (the norm's output and x A^T, now two tensors,
  N (d + R) e together; its output buffer, which v keeps) and its adapters in the model's dtype, A_cat (R, in) and the
  block-diagonal B (O, R), R (in + O) e. Nothing in FP8 is saved: the base is frozen, so no weight gradient needs x,
  and dx needs only the output gradient.
"""

from __future__ import annotations

from tunelab.models.llama_config import LlamaConfig
from tunelab.training.memory_setup import MLP, QKV, Setup, adapter_ranks, projection_shapes, spare_columns

ROW_SCALE = 4  # bytes of a row's fp32 scale
GATE_UP = ("gate_proj", "up_proj")
ROWS = "fp8: the last input's rows in FP8"  # the parts' names in `memory.Estimate`
OPERANDS = "fp8: a backward's FP8 operands"


def fp8_on(s: Setup) -> bool:
    """Whether the NF4 base's products run in FP8 (train.fp8 applies to QLoRA's NF4 layers only)."""
    return s.fp8 and s.quantized


def bases(c: LlamaConfig, s: Setup) -> dict[tuple[str, ...], tuple[int, int]]:
    """One decoder layer's FP8 bases: the projections each stacks -> its (in, O); {} without train.fp8."""
    if not fp8_on(s):
        return {}
    shapes = projection_shapes(c)
    r_qkv, r_gu = spare_columns(c, s)
    groups = [QKV] if r_qkv else [(n,) for n in QKV]
    groups += [("o_proj",), GATE_UP] if r_gu else [("o_proj",), *((n,) for n in GATE_UP)]
    groups.append(("down_proj",))
    return {g: (shapes[g[0]][0], sum(shapes[n][1] for n in g)) for g in groups}


def scale_bytes(c: LlamaConfig, s: Setup) -> int:
    """Static: every FP8 base's scales, 4 (1 + O + in) bytes each, in every layer."""
    return c.num_layers * sum(4 * (1 + i + o) for i, o in bases(c, s).values())


def weight_buffer_bytes(c: LlamaConfig, s: Setup) -> int:
    """Static: the one FP8 buffer the weights are written into, the largest base's in O bytes; 0 without train.fp8."""
    return max((i * o for i, o in bases(c, s).values()), default=0)


def group_casts(c: LlamaConfig, s: Setup, names: tuple[str, ...]) -> int:
    """Saved per layer: the adapters an FP8 group among `names` casts to the model's dtype for backward, A_cat (R, in)
    and the block-diagonal B (O, R), R (in + O) e; 0 where none runs (no fp8, or its members one by one)."""
    ranks = adapter_ranks(c, s)
    out = 0
    for group, (i, o) in bases(c, s).items():
        if len(group) > 1 and set(group) <= set(names):
            out += s.dtype_bytes * sum(ranks[n] for n in group) * (i + o)
    return out


def rows_bytes(n: int, width: int) -> int:
    """n rows of `width` values in FP8 with their fp32 scales (`quant.fp8.quantize_rows`)."""
    return n * (width + ROW_SCALE)


def last_rows(c: LlamaConfig, s: Setup, n: int, recomputing: bool = False) -> int:
    """The input rows `_LastRows` holds: after a forward the top down_proj's, N (m + 4); in a recomputation its widest,
    q/k/v's (N, d) or, without offload, o_proj's (N, q). 0 without train.fp8."""
    if not fp8_on(s):
        return 0
    if not recomputing:
        return rows_bytes(n, c.intermediate_size)
    return rows_bytes(n, max(c.hidden_size, 0 if s.offload else c.num_heads * c.head_dim))


def grad_operands(c: LlamaConfig, s: Setup, n: int, mlp_n: int | None = None) -> int:
    """The widest FP8 backward's operand beside its dx: the output gradient's rows, n (O + 4) (its transposed weight
    lies in the FP8 buffer); `mlp_n` tokens for the MLP's (a recomputed layer's chunk; n where None). 0 without
    train.fp8."""
    sizes = [rows_bytes((mlp_n or n) if set(g) <= set(MLP) else n, o) for g, (i, o) in bases(c, s).items()]
    return max(sizes, default=0)


def phase_parts(c: LlamaConfig, s: Setup, n: int, mlp_chunk: int) -> dict[str, dict[str, int]]:
    """What train.fp8 adds to each phase of `memory.estimate`, n tokens a micro-batch and `mlp_chunk` a recomputed
    MLP's chunk: the head holds the forward's last rows; a kept layer's backward those and its FP8 operands; a
    recomputation its own rows and operands; grpo's sampling its prefill's last rows. {} each without train.fp8."""
    if not fp8_on(s):
        return {"head": {}, "backward": {}, "recomputation": {}, "sampling": {}}
    rows = {ROWS: last_rows(c, s, n)}
    return {
        "head": rows,
        "backward": rows | {OPERANDS: grad_operands(c, s, n)},
        "recomputation": {ROWS: last_rows(c, s, n, recomputing=True), OPERANDS: grad_operands(c, s, n, mlp_chunk)},
        "sampling": {ROWS: last_rows(c, s, s.sampled * s.sample_prompt)} if s.sampled else {},
    }
