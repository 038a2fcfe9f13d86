"""What the memory model (`training.memory`) reads beside the model's shape, and the per-projection figures it
derives from both.

`Setup` holds the training setup: method, rank and targets, micro-batch and row width, checkpointing, offload,
sharding, dtype, grpo's sampler. From it and a `LlamaConfig` come each projection's (in, out) and LoRA rank, the
spare columns of the grouped GEMMs, the bytes of an NF4 matrix and of adamw_8bit's state, and what DoRA, LoRA dropout
and the adapters' casts add per layer. The speed model (`training.speed`) reads the same figures.
"""

from __future__ import annotations

from dataclasses import dataclass

from tunelab.models.llama_config import LlamaConfig
from tunelab.training.workspaces import BLAS_WORKSPACE

E = 2  # bytes of a bf16 (or fp16) weight or activation: `Setup.dtype_bytes`' default
NF4_TABLES = (16 + 256) * 4  # the fp32 code tables every NF4 layer keeps as buffers
MIN_8BIT = 4096  # adamw_8bit keeps smaller tensors' moments in fp32 (`training.adamw8bit.MIN_8BIT_SIZE`)
ADAMW8_BLOCK = 256
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
QKV = ("q_proj", "k_proj", "v_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
DORA_ROWS = 2048  # rows of W per block of DoRA's weight norm (`peft.dora._ROWS`)


@dataclass(frozen=True)
class Setup:
    """What the memory depends on besides the model's shape."""

    method: str = "lora"  # lora | full | layers
    quantized: bool = False  # QLoRA: NF4 frozen linears
    rank: int = 16
    targets: tuple[str, ...] = PROJECTIONS  # adapted projections (lora)
    top_layers: int = 2  # method=layers
    optimizer: str = "adamw"  # adamw | adamw_8bit
    micro_batch: int = 1
    seq: int = 2048
    rows: int = 1  # sequences a micro-batch example puts through the model (dpo: its chosen and rejected sides, 2)
    checkpointed: int = 0  # the lowest this many decoder layers are recomputed in backward
    offload: bool = False  # checkpointed inputs wait in host memory
    grouped: bool = True  # LoRA groups run as one GEMM (CUDA)
    graphs: bool = False  # micro-batches may replay from CUDA graphs (training/graphs.py; not with offload)
    shards: int = 1  # FSDP2 ranks the weights, gradients and optimizer state are cut across (1: every rank all)
    ddp: bool = False  # DDP on several ranks: its gradient buckets hold a second copy of the gradients
    dtype: str = "bf16"  # the model's weights and activations: bf16, fp16 or fp32 (e = `dtype_bytes`)
    sampled: int = 0  # grpo: answers the sampler generates at once (a rank's share); 0 for the other tasks
    sample_len: int = 0  # grpo: the sampler's KV cache length, the longest prompt + grpo.max_new_tokens
    sample_prompt: int = 0  # grpo: the longest prompt, the prefill's length (T of its (B, T) batch)
    fixed_forwards: int = 0  # grpo: forwards over the sampled answers for their reference (and old) log-probs
    reference_copy: bool = False  # grpo with a reference of its own: the trained tensors' starting values, kept
    lm_head: bool = True  # False for classify and reward: the body alone, its small head on each row's last token
    initial_copy: bool = False  # method.init pissa/olora: each adapted layer keeps its starting A0, B0 (fp32)
    dora: bool = False  # method lora with DoRA (`peft.dora`): a magnitude per output row, no grouped projections
    dropout: bool = False  # LoRA dropout on (method.dropout > 0): a keep-mask per adapted layer, no grouping
    fp8: bool = False  # train.fp8: the NF4 base's products in FP8 (`quant.fp8`; QLoRA only), see `memory_fp8`
    packed: bool = False  # data.packing: a micro-batch is one row of N tokens, its documents apart (cu_seqlens)
    epoch_rows: int = 0  # rows (dpo: pairs) an epoch holds: no micro-batch has more (0: micro_batch rows always)
    graph_bucket: int = 0  # a graphed micro-batch's width is padded to a multiple of this (0: not padded)
    blas_workspace: int = BLAS_WORKSPACE  # one cuBLAS workspace's bytes (`training.workspaces`; 0: none, the CPU)

    @property
    def tokens(self) -> int:
        """A micro-batch's: its rows (micro_batch, or the epoch's where fewer) x `rows` x the longest row, padded up
        to a multiple of graph_bucket when graphed (`training.graphs.pad_to`)."""
        bucket = self.graph_bucket if self.graphs and not self.offload and self.graph_bucket > 0 else 1
        return min(self.micro_batch, self.epoch_rows or self.micro_batch) * self.rows * -(-self.seq // bucket) * bucket

    @property
    def dtype_bytes(self) -> int:
        return 4 if self.dtype == "fp32" else E


def projection_shapes(c: LlamaConfig) -> dict[str, tuple[int, int]]:
    """(in, out) of each decoder projection."""
    q, kv, d, m = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim, c.hidden_size, c.intermediate_size
    return {
        "q_proj": (d, q),
        "k_proj": (d, kv),
        "v_proj": (d, kv),
        "o_proj": (q, d),
        "gate_proj": (d, m),
        "up_proj": (d, m),
        "down_proj": (m, d),
    }


def nf4_bytes(n: int) -> int:
    """One NF4 matrix of n weights with double quantization (`quant.nf4`), its code tables included."""
    blocks = -(-n // 64)
    return -(-n // 2) + blocks + 4 * -(-blocks // 256) + 4 + NF4_TABLES


def adamw8bit_bytes(n: int) -> int:
    """adamw_8bit's state for one tensor of n values (`quant.adamw8bit`)."""
    if n < MIN_8BIT:
        return 8 * n
    return 2 * n + 8 * -(-n // ADAMW8_BLOCK)


def adapter_ranks(c: LlamaConfig, s: Setup) -> dict[str, int]:
    """LoRA rank of each projection (0: not adapted)."""
    adapted = s.method == "lora"
    return {name: s.rank if adapted and name in s.targets else 0 for name in PROJECTIONS}


def spare_columns(c: LlamaConfig, s: Setup) -> tuple[int, int]:
    """Spare columns R_qkv, R_gu: the sum of a group's ranks when it runs as one GEMM (every member adapted)."""
    if not s.grouped or s.method != "lora" or s.dora or s.dropout:  # these run one by one (`peft.group`)
        return 0, 0
    r = adapter_ranks(c, s)
    qkv = sum(r[n] for n in ("q_proj", "k_proj", "v_proj")) if all(r[n] for n in ("q_proj", "k_proj", "v_proj")) else 0
    gu = r["gate_proj"] + r["up_proj"] if r["gate_proj"] and r["up_proj"] else 0
    return qkv, gu


def grouped_projections(c: LlamaConfig, s: Setup) -> set[str]:
    """The projections that run as members of a grouped GEMM (`spare_columns`), whose weights are copied into its
    stacked matrix at every pass; the others run alone."""
    r_qkv, r_gu = spare_columns(c, s)
    return set(QKV if r_qkv else ()) | ({"gate_proj", "up_proj"} if r_gu else set())


def dora_outputs(c: LlamaConfig, s: Setup, names: tuple[str, ...]) -> int:
    """Columns of the L(x) (N, out) that each DoRA layer among `names` saves for m's gradient (`peft.dora`): the sum
    of their out widths; 0 without DoRA."""
    if not s.dora:
        return 0
    shapes, r = projection_shapes(c), adapter_ranks(c, s)
    return sum(shapes[n][1] for n in names if r[n])


def dropout_masks(c: LlamaConfig, s: Setup, names: tuple[str, ...]) -> int:
    """Bytes per token of the bool keep-masks (N, in) that the adapted layers among `names` save with LoRA dropout on
    (`kernels.lora`: one mask per layer, 1 byte an element); 0 without dropout."""
    if not s.dropout:
        return 0
    shapes, r = projection_shapes(c), adapter_ranks(c, s)
    return sum(shapes[n][0] for n in names if r[n])


def adapter_casts(c: LlamaConfig, s: Setup, names: tuple[str, ...]) -> int:
    """Bytes of A and B in the model's dtype that the adapted layers among `names`, run one by one, save for backward
    (`kernels.lora`: cast once in forward and kept), r (in + out) e each; none in fp32, whose cast is the parameter."""
    if s.dtype_bytes >= 4:
        return 0
    shapes, r = projection_shapes(c), adapter_ranks(c, s)
    return sum(s.dtype_bytes * r[n] * (shapes[n][0] + shapes[n][1]) for n in names if r[n])


def dora_norm_bytes(c: LlamaConfig, s: Setup) -> int:
    """The working set of DoRA's weight norm ||W + s B A|| (`DoRALinear.weight_norm`), the largest over the DoRA
    layers: W + s B A in fp32 blocks of DORA_ROWS rows, three (the block of W cast to fp32, s B A, their sum; two for
    fp32 weights, whose cast is W itself), and an NF4 W dequantized whole first, out x in x e."""
    if not s.dora:
        return 0
    blocks = 3 if s.dtype_bytes < 4 else 2
    sizes = [
        blocks * 4 * min(o, DORA_ROWS) * i + (s.dtype_bytes * o * i if s.quantized else 0)
        for n, (i, o) in projection_shapes(c).items()
        if adapter_ranks(c, s)[n]
    ]
    return max(sizes, default=0)


def held_norm_bytes(c: LlamaConfig, s: Setup) -> int:
    """Every DoRA layer's norm n, (out,) fp32, that grpo's sampler keeps from its prefill to its last decode step
    (`peft.dora.norms_held`); 0 without DoRA."""
    return 4 * c.num_layers * dora_outputs(c, s, PROJECTIONS)
