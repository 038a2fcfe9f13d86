"""What a layer of each kind saves for backward and holds while it runs (DoRA, LoRA dropout, q/k/v run apart, q/k
norms, packed rows), measured on the layer and against the memory model, on the tiny Llama of `memory_tiny`."""

import dataclasses

import pytest

import tunelab.training.memory as memory
import tunelab.training.memory_setup as memory_setup
from tunelab.models.llama_config import LlamaConfig
from tunelab.training.memory import (
    attention_saved,
    estimate,
    mlp_saved,
    scratch_bytes,
    training_state_bytes,
)
from tunelab.training.memory_setup import Setup

from .memory_tiny import LORA, TINY, TINY_HF

DORA = Setup(method="lora", rank=4, micro_batch=2, seq=24, dora=True)


def test_dora_trains_a_magnitude_per_output_row():
    """DoRA was planned as plain LoRA: its magnitude vectors (out,) fp32, their gradients and AdamW moments were left
    out. Per layer q 64 + k 32 + v 32 + o 64 + gate 96 + up 96 + down 64 = 448 values beside LoRA's 3712."""
    parts = training_state_bytes(TINY, DORA)
    values = 3 * (3712 + 448)
    assert parts["adapters (fp32)"] == 4 * values
    assert parts["adapters: gradients"] == 4 * values
    assert parts["optimizer (adamw)"] == 8 * values


def test_dora_layers_run_one_by_one_and_save_their_unscaled_outputs():
    """DoRA layers are never grouped (`peft.group`): no stacked matrix, every NF4 weight dequantized into the
    workspace; each saves x A^T (N, r) and L(x) (N, out) for m's gradient; q and k are freed by rope, v stays."""
    parts = scratch_bytes(TINY, DORA)
    assert "scratch: stacked group weight" not in parts
    q = scratch_bytes(TINY, dataclasses.replace(DORA, quantized=True))
    assert q["scratch: nf4 dequantization"] == 2 * 6144  # gate, up, down 64 x 96: the largest, grouped or not
    # attention: x 64 + normed 64 + three x A^T 12 + v 32 + L of q, k, v 128 + rope's q, k 96 + attention out 64
    # + o's x A^T 4 and L 64, bf16; rstd, logsumexp; every layer's A and B in bf16 (3584 bytes; 3840 in the MLP)
    assert attention_saved(TINY, DORA, 48) == 2 * 48 * (64 + 76 + 160 + 96 + 64 + 68) + 4 * 48 + 4 * 48 * 4 + 3584
    # MLP: h 64 + normed 64 + two x A^T 8 + gate, up 192 + act 96 + down's x A^T 4 + L of gate, up, down 256
    assert mlp_saved(TINY, DORA, 48) == 2 * 48 * (64 + 72 + 192 + 96 + 260) + 4 * 48 + 3840
    # against grouped LoRA (43456 + 42560 a layer): kv + d and 2m + d columns more, and every layer's A and B in
    # bf16 (q, o 2 x 4 x 128 bytes, k, v 2 x 4 x 96, gate, up, down 2 x 4 x 160), not o's and down's alone
    assert attention_saved(TINY, DORA, 48) - 43456 == 2 * 48 * (32 + 64) + 3584 - 1024
    assert mlp_saved(TINY, DORA, 48) - 42560 == 2 * 48 * (192 + 64) + 3840 - 1280


def test_dora_s_weight_norm_and_backward_transients():
    """The norm ||W + s B A|| of each DoRA layer's forward works in fp32 blocks of 2048 rows: the widest layer here
    (gate, up 96 x 64 and down 64 x 96: 6144 values) takes 3 x 4 x 6144 = 73728 bytes, over NF4 its whole W dequantized
    to bf16 first (2 x 6144 more), in fp32 two blocks (the cast is W itself). Backward of y = g L(x) holds dy g and
    dy * L(x), 2 x N x 96 x 2 bytes beside LoRA's d act and two (N, d) gradients."""
    assert memory_setup.dora_norm_bytes(TINY, DORA) == 73728
    assert memory_setup.dora_norm_bytes(TINY, dataclasses.replace(DORA, quantized=True)) == 73728 + 12288
    assert memory_setup.dora_norm_bytes(TINY, dataclasses.replace(DORA, dtype="fp32")) == 2 * 4 * 6144
    assert memory_setup.dora_norm_bytes(TINY, LORA) == 0
    e = estimate(TINY, DORA)
    saved = 3 * (memory.attention_saved(TINY, DORA, 48) + mlp_saved(TINY, DORA, 48))
    assert e.saved == {"activations: kept layers": saved, "activations: checkpointed inputs": 0}
    # the norm (73728) outweighs the head's 57216 and the backward's 2 x 48 x (96 + 128) + 2 x 2 x 48 x 96 = 39936
    assert e.peak_phase == "forward"
    assert e.transient == {"forward: DoRA weight norm ||W + s B A|| of one layer": 73728}
    ckpt = estimate(TINY, dataclasses.replace(DORA, checkpointed=3))
    plain = estimate(TINY, dataclasses.replace(DORA, checkpointed=3, dora=False))
    recompute = "recomputation: one layer and its gradients"
    assert ckpt.peak_phase == "recomputation"
    assert ckpt.transient[recompute] - plain.transient[recompute] == 73728 + 2 * 48 * (96 + 256) + 2560 + 2560


def test_dora_s_rows_per_norm_block_are_the_layer_s():
    from tunelab.peft import dora

    assert memory_setup.DORA_ROWS == dora._ROWS


def test_a_dora_config_is_planned_as_dora():
    from tunelab.config import RunConfig
    from tunelab.training.plan_setup import config_setup

    cfg = RunConfig()
    for method, use_dora, expected in (("dora", False, True), ("lora", True, True), ("lora", False, False)):
        run = dataclasses.replace(cfg, method=dataclasses.replace(cfg.method, name=method, use_dora=use_dora))
        assert config_setup(run, 64).dora is expected


@pytest.mark.parametrize("r", [3, 8])
def test_dora_saves_per_token_what_the_model_counts(r):
    """What one DoRA layer over an NF4 base (the fused path, as on CUDA) saves for backward, counted through autograd's
    saved-tensor hooks: per token beside its input x, x A^T (r) and L(x) (out) in x's dtype, as `dora_outputs`
    and the ranks count. Taken as the slope between two token counts, so that A, B and g (no token dimension) drop
    out."""
    import torch

    from tunelab.peft.dora import DoRALinear
    from tunelab.quant.linear import NF4Linear

    torch.manual_seed(0)
    base = NF4Linear.from_linear(torch.nn.Linear(64, 96, bias=False).to(torch.bfloat16))
    layer = DoRALinear(base, r=r, alpha=2.0 * r).train()

    per_token = (_saved_bytes(layer, 80) - _saved_bytes(layer, 16)) / 64
    s = Setup(method="lora", rank=r, targets=("gate_proj",), dora=True)
    assert per_token == 2 * (r + memory_setup.dora_outputs(TINY, s, ("gate_proj",)))  # gate_proj: 64 -> 96


def test_ungrouped_q_k_v_keep_only_v_of_their_outputs():
    """q/k/v run one by one (full, layers, LoRA on some of them, DoRA) left their three outputs counted as the grouped
    GEMM's one buffer, which v keeps whole; apart, rope saves only cos and sin, so q and k are freed and v alone
    stays: N kv e, not N (q + 2kv) e. Checked on the model's own layer (the CPU's ops save no more of them than the
    GPU kernels): of q_proj's, k_proj's and v_proj's outputs, autograd saves v's only. LoRA on q and v only: no
    group, their two x A^T (N, 4) saved."""
    import torch

    from tunelab.models.llama import LlamaForCausalLM

    torch.manual_seed(0)
    # 4 kv heads: the CPU's attention repeats grouped k/v into copies, the GPU's takes them as they are
    model = LlamaForCausalLM(LlamaConfig.from_hf(dict(TINY_HF, num_key_value_heads=4))).train()
    attn = model.model.layers[0].self_attn
    outputs: dict[str, torch.Tensor] = {}  # held, so that no later tensor reuses their memory (and its address)
    for name in ("q_proj", "k_proj", "v_proj"):
        getattr(attn, name).register_forward_hook(lambda _m, _i, out, name=name: outputs.__setitem__(name, out))
    saved: set[int] = set()

    def pack(t):
        saved.add(t.untyped_storage().data_ptr())
        return t

    ids = torch.randint(0, 200, (2, 24))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(ids, labels=ids).loss_sum
    assert {name for name, out in outputs.items() if out.untyped_storage().data_ptr() in saved} == {"v_proj"}
    del loss
    full = Setup(method="full", micro_batch=2, seq=24)
    assert attention_saved(TINY, full, 48) == 2 * 48 * (64 + 64 + 32 + 96 + 64) + 4 * 48 * 5
    some = Setup(method="lora", rank=4, targets=("q_proj", "v_proj"), micro_batch=2, seq=24)
    # and their A and B in bf16, 2 x 4 x (64 + 64) and 2 x 4 x (64 + 32)
    assert attention_saved(TINY, some, 48) == 2 * 48 * (64 + 64 + 8 + 32 + 96 + 64) + 4 * 48 * 5 + 1792
    grouped = attention_saved(TINY, LORA, 48)  # all three adapted: one buffer, kept whole
    assert grouped == 2 * 48 * (64 + 76 + 128 + 96 + 64 + 4) + 4 * 48 * 5 + 1024


def test_lora_dropout_saves_a_keep_mask_per_layer_and_runs_ungrouped():
    """method.dropout > 0 was planned as no dropout: grouped q/k/v and gate/up, no masks, the recomputed MLP in
    chunks. With it each adapted layer saves its bool keep-mask (N, in), 1 byte an element (q, k, v, gate, up 64,
    o 64, down 96 columns), the groups run one by one (v alone of q/k/v's outputs), and a checkpointed layer's MLP is
    recomputed over all its tokens at once, its dropout masks drawn over the whole tensor."""
    drop = dataclasses.replace(LORA, dropout=True)
    assert "scratch: stacked group weight" not in scratch_bytes(TINY, drop)
    masks = 48 * (3 * 64 + 64)
    casts = 3584  # every layer's A and B in bf16, all ungrouped
    assert attention_saved(TINY, drop, 48) == 2 * 48 * (64 + 76 + 32 + 96 + 64 + 4) + 4 * 48 * 5 + masks + casts
    assert mlp_saved(TINY, drop, 48) == 2 * 48 * (64 + 72 + 192 + 96 + 4) + 4 * 48 + 48 * (64 + 64 + 96) + 3840
    # recomputed, and its backward (below) 2 x 2 x 8192 x 96 bytes more
    long = Setup(method="lora", rank=4, micro_batch=1, seq=8192, checkpointed=3)
    for s, chunk, more in ((long, 4096, 0), (dataclasses.replace(long, dropout=True), 8192, 2 * 2 * 8192 * 96)):
        e = estimate(TINY, s)
        expected = attention_saved(TINY, s, 8192) + mlp_saved(TINY, s, chunk) + 2 * chunk * 96 + 3 * 2 * 8192 * 64
        assert e.transient["recomputation: one layer and its gradients"] == expected + more
    # a kept layer's backward: d act and two (N, d) gradients, and dropout's two (N, in) of down_proj's input, 96
    # (a head task: no (N, V) logits to outweigh it)
    kept = estimate(TINY, dataclasses.replace(drop, lm_head=False))
    phase = "backward: a kept layer's gradients"
    assert kept.peak_phase == "backward of a kept layer"
    assert kept.transient == {phase: 2 * 48 * (96 + 2 * 64) + 2 * 2 * 48 * 96}
    from tunelab.config import RunConfig
    from tunelab.training.plan_setup import config_setup

    cfg = RunConfig()
    on = dataclasses.replace(cfg, method=dataclasses.replace(cfg.method, dropout=0.05))
    assert (config_setup(on, 64).dropout, config_setup(cfg, 64).dropout) == (True, False)


def test_lora_dropout_saves_per_token_what_the_model_counts():
    """One LoRA layer over NF4 (the fused node, as on CUDA) with dropout on saves per token, beside x, its x A^T
    (r values of 2 bytes) and a bool keep-mask of its input's width (`dropout_masks`), counted through autograd's
    saved-tensor hooks as in the DoRA test above."""
    import torch

    from tunelab.peft.lora_linear import LoRALinear
    from tunelab.quant.linear import NF4Linear

    torch.manual_seed(0)
    base = NF4Linear.from_linear(torch.nn.Linear(96, 64, bias=False).to(torch.bfloat16))  # down_proj's shape
    layer = LoRALinear(base, r=4, alpha=8.0, dropout=0.1).train()

    per_token = (_saved_bytes(layer, 80) - _saved_bytes(layer, 16)) / 64
    s = Setup(method="lora", rank=4, targets=("down_proj",), dropout=True)
    assert per_token == 2 * 4 + memory_setup.dropout_masks(TINY, s, ("down_proj",)) == 2 * 4 + 96


def _saved_bytes(layer, tokens: int) -> int:
    """Bytes of the distinct storages a LoRA (DoRA) layer's forward on (tokens, in) bf16 inputs saves for backward,
    through autograd's saved-tensor hooks, its input x left out."""
    import torch

    x = torch.randn(tokens, layer.in_features, dtype=torch.bfloat16, requires_grad=True)
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() != x.untyped_storage().data_ptr():
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = layer(x)
    del y
    return sum(seen.values())


def test_a_lora_layer_run_alone_keeps_its_a_and_b_in_the_model_s_dtype():
    """A LoRA layer run one by one (o_proj and down_proj always; q/k/v and gate/up when not grouped) casts A and B to
    x's dtype once in forward and keeps them for backward, r (in + out) e bytes that the model left out (at rank 64
    on a 7B model, about 90 MiB with o_proj and down_proj alone). Counted here on one down_proj-shaped layer over NF4 (the
    fused node, as on CUDA): beside x only x A^T (16 tokens x 4 x 2 bytes) and the two casts."""
    import torch

    from tunelab.peft.lora_linear import LoRALinear
    from tunelab.quant.linear import NF4Linear

    torch.manual_seed(0)
    layer = LoRALinear(NF4Linear.from_linear(torch.nn.Linear(96, 64, bias=False).to(torch.bfloat16)), 4, 8.0).train()
    down = Setup(method="lora", rank=4, targets=("down_proj",))
    assert memory_setup.adapter_casts(TINY, down, ("down_proj",)) == 2 * 4 * (96 + 64)
    assert _saved_bytes(layer, 16) == 2 * 16 * 4 + memory_setup.adapter_casts(TINY, down, ("down_proj",))
    assert memory_setup.adapter_casts(TINY, dataclasses.replace(down, dtype="fp32"), ("down_proj",)) == 0


def test_grpo_s_sampler_computes_dora_s_norm_beside_its_kv_cache():
    """grpo's sampler runs DoRA layers as training does (`models.decode` through the projection slots): its prefill
    computes a layer's weight norm beside the KV cache, and every layer's norm is kept for the decode steps
    (`peft.dora.norms_held`): 3 layers x (q 64 + k 32 + v 32 + o 64 + gate 96 + up 96 + down 64 = 448 rows) x 4."""
    s = dataclasses.replace(DORA, sampled=4, sample_len=40, sample_prompt=16)
    sampling = estimate(TINY, dataclasses.replace(s, micro_batch=1, seq=4))  # a step too small to outweigh it
    assert sampling.peak_phase == "sampling"
    assert sampling.transient["grpo sampler: DoRA weight norm of one layer"] == 73728
    assert sampling.transient["grpo sampler: DoRA norms kept (fp32)"] == 3 * 448 * 4
    lora = estimate(TINY, dataclasses.replace(s, micro_batch=1, seq=4, dora=False))
    assert "grpo sampler: DoRA weight norm of one layer" not in lora.transient
    assert "grpo sampler: DoRA norms kept (fp32)" not in lora.transient


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_dora_s_weight_norm_peaks_where_the_model_says(dtype):
    """The peak of `DoRALinear.weight_norm` over a 16-bit and an fp32 base, measured by the CPU allocator through
    torch's profiler (each op's own allocations at its start, the frees between ops as they happen), against
    `dora_norm_bytes`: three fp32 blocks of 2048 rows x 96 (two in fp32), within the (out,) norms the blocks leave.
    A gate_proj of 96 -> 5000: three blocks, the last one short. (An NF4 base dequantizes on the CPU through fp32
    temporaries that the GPU's kernel does not make, so it is not measured here.)"""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from tunelab.peft.dora import DoRALinear

    torch.manual_seed(0)
    torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    layer = DoRALinear(torch.nn.Linear(96, 5000, bias=False).to(torch_dtype), r=4, alpha=8.0)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        layer.weight_norm()
    live = peak = 0
    for event in sorted(prof.events(), key=lambda ev: ev.time_range.start):
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    shape = LlamaConfig.from_hf(dict(TINY_HF, hidden_size=96, intermediate_size=5000))
    s = Setup(method="lora", rank=4, targets=("gate_proj",), dora=True, dtype=dtype)
    predicted = memory_setup.dora_norm_bytes(shape, s)
    assert predicted == (3 if dtype == "bf16" else 2) * 4 * 2048 * 96
    assert predicted <= peak <= predicted + 3 * 4 * 5000


def test_qwen3_s_q_k_norms_save_their_rstd_and_copies_of_a_grouped_q_and_k():
    """Qwen3's per-head q/k RMSNorms were left out of the saved activations. Each saves its input and one fp32 rstd
    per head and token: 4 x 48 x (4 + 2) = 1,152 bytes for 48 tokens of TINY (4 heads, 2 kv heads of 16). Run one by
    one, q and k are the projections' own outputs, kept (and counted) whole: v's 32 columns become q + 2kv = 128.
    Grouped, q and k are row-strided views of the group's (N, q + 2kv) buffer, which the norm copies to rows
    (`kernels.rms_norm._rows`, checked below; the kernel's own saves: the triton test below) and saves beside it: 2 x 48 x (64 + 32) = 9,216 bytes more."""
    import torch

    qwen3 = dataclasses.replace(TINY, qk_norm=True)
    grouped = 2 * 48 * (64 + 76 + 128 + 96 + 64 + 4) + 4 * 48 * 5 + 1024  # TINY's, as test_saved_activations_...
    assert attention_saved(TINY, LORA, 48) == grouped
    assert attention_saved(qwen3, LORA, 48) == grouped + 1_152 + 9_216
    full = Setup(method="full", micro_batch=2, seq=24)
    assert attention_saved(TINY, full, 48) == 2 * 48 * (64 + 64 + 32 + 96 + 64) + 4 * 48 * 5
    assert attention_saved(qwen3, full, 48) == 2 * 48 * (64 + 64 + 128 + 96 + 64) + 4 * 48 * 5 + 1_152
    # a kept layer saves it: the estimate's activations grow by 3 layers x (that) at 48 tokens
    more = (
        estimate(qwen3, LORA).saved["activations: kept layers"] - estimate(TINY, LORA).saved["activations: kept layers"]
    )
    assert more == 3 * (1_152 + 9_216)
    # the norm's input as the kernel takes it, (N H, D) rows (`_rows`: x.reshape(-1, D), contiguous): a grouped q
    # (B, T, H, D), a view of the (B, T, q + 2kv) buffer, cannot be seen as rows and is copied; a q of its own is not
    buffer = torch.zeros(2, 24, 128, dtype=torch.bfloat16)
    q = buffer[..., :64].view(2, 24, 4, 16)
    assert q.reshape(-1, 16).untyped_storage().data_ptr() != buffer.untyped_storage().data_ptr()
    own = torch.zeros(2, 24, 64, dtype=torch.bfloat16).view(2, 24, 4, 16)
    assert own.reshape(-1, 16).untyped_storage().data_ptr() == own.untyped_storage().data_ptr()


@pytest.mark.triton
def test_the_q_norm_kernel_saves_a_copy_of_a_grouped_q_and_its_rstd():
    """The fast path's RMSNorm on a row-strided q, as `LlamaAttention.to_heads` hands it over from the group's buffer:
    what autograd saves is a (N H, D) copy of q and (N H,) fp32 rstd beside the weight, as `qk_norm_saved` counts."""
    import torch

    from tunelab.kernels.rms_norm import rms_norm

    device = "cuda" if torch.cuda.is_available() else "cpu"  # the CPU under TRITON_INTERPRET=1 (the mark's rule)
    buffer = torch.randn(2, 24, 128, dtype=torch.bfloat16, device=device, requires_grad=True)
    weight = torch.ones(16, dtype=torch.bfloat16, device=device, requires_grad=True)
    q = buffer[..., :64].view(2, 24, 4, 16)
    seen: dict[int, int] = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = rms_norm(q, weight, 1e-6)
    del y
    seen.pop(weight.untyped_storage().data_ptr())
    assert buffer.untyped_storage().data_ptr() not in seen
    assert sorted(seen.values()) == sorted([48 * 4 * 4, 2 * 48 * 64])  # rstd 4 bytes a head and token; q's copy


def test_packed_rows_on_the_reference_attention_save_its_dense_mask_and_repeated_k_v():
    """Packed rows whose attention varlen_attn does not take (fp32, or a head_dim not a multiple of 8 or over 256) run
    the reference's masked SDPA (`kernels.attention`), whose saved (N, N) additive mask and repeated k and v the
    model left out. TINY in fp32, one packed row of 48 tokens: the mask 48 x 48 x 4 = 9,216 bytes; with 4 heads over 2
    kv heads, k and v repeated to every head, 2 x 48 x 64 x 4 = 24,576, saved instead of rope's k and the group's
    buffer (which v kept), 48 x (32 + 128) x 4 = 30,720. In bf16 with head_dim 16 varlen_attn runs: nothing changes;
    with head_dim 12 it does not. The reference's saves are checked on its own code below."""
    import torch

    from tunelab.kernels import reference

    fp32 = dataclasses.replace(LORA, dtype="fp32")
    packed = dataclasses.replace(fp32, packed=True)
    assert memory.dense_attention(TINY, packed) and not memory.dense_attention(TINY, fp32)
    assert attention_saved(TINY, packed, 48) == attention_saved(TINY, fp32, 48) + 9_216 + 24_576 - 30_720
    bf16 = dataclasses.replace(LORA, packed=True)
    assert not memory.dense_attention(TINY, bf16)
    assert attention_saved(TINY, bf16, 48) == attention_saved(TINY, LORA, 48)
    odd = dataclasses.replace(TINY, head_dim=12)
    assert memory.dense_attention(odd, bf16)
    # without grouped-query heads k and v go in as they are: only the mask, 48 x 48 x 4
    mha = dataclasses.replace(TINY, num_kv_heads=4)
    assert attention_saved(mha, packed, 48) == attention_saved(mha, fp32, 48) + 9_216
    # the reference on one packed row of 48 tokens (two documents), 4 heads over 2 kv heads of 16, fp32
    q = torch.randn(1, 48, 4, 16, requires_grad=True)
    k, v = (torch.randn(1, 48, 2, 16, requires_grad=True) for _ in range(2))
    seen: dict[int, tuple] = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = (tuple(t.shape), t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = reference.attention(q, k, v, cu_seqlens=torch.tensor([0, 20, 48], dtype=torch.int32))
    mine = {t.untyped_storage().data_ptr() for t in (q, k, v, out)}
    others = sorted(nbytes for ptr, (shape, nbytes) in seen.items() if ptr not in mine and len(shape) == 4)
    assert k.untyped_storage().data_ptr() not in seen and v.untyped_storage().data_ptr() not in seen
    assert others == [9_216, 48 * 64 * 4, 48 * 64 * 4]  # the mask; k and v repeated to 4 heads
