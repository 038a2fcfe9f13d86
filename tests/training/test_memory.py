"""The memory model's arithmetic, part by part, against sizes worked out by hand for a tiny Llama.

Tiny model: L = 3, d = 64, 4 heads x 16 (q = 64), 2 kv heads (kv = 32), m = 96, V = 200, untied. LoRA r = 4 on the
seven projections, micro_batch 2 x seq 24: N = 48 tokens. Every expected number below is written out from the
shapes, not computed by the code under test.
"""

import dataclasses

import pytest

import tunelab.training.memory as memory
from tunelab.models.llama_config import LlamaConfig
from tunelab.training.memory import (
    Setup,
    adamw8bit_bytes,
    attention_saved,
    estimate,
    gib,
    mlp_saved,
    nf4_bytes,
    optimizer_step_bytes,
    parse_size,
    scratch_bytes,
    training_state_bytes,
    weight_bytes,
)
from tunelab.training.plan import calibrate

TINY_HF = dict(
    model_type="llama",
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=200,
    rms_norm_eps=1e-5,
    max_position_embeddings=128,
)
TINY = LlamaConfig.from_hf(TINY_HF)
LORA = Setup(method="lora", rank=4, micro_batch=2, seq=24)


def test_bf16_weights():
    # per layer: q 64x64 + k 64x32 + v 64x32 + o 64x64 + gate, up, down 64x96 = 30720 weights, x 2 bytes,
    # + two norms of 64 x 2 bytes = 61696; three layers
    parts = weight_bytes(TINY, LORA)
    assert parts["weights: decoder (bf16)"] == 3 * (30720 * 2 + 256)
    # embedding and head 200 x 64 x 2 each, final norm 64 x 2
    assert parts["weights: embedding + head + norm"] == 2 * 25600 + 128


def test_nf4_weights_carry_their_absmaxes_and_tables():
    # 4096 weights: 2048 bytes of codes, 64 blocks -> 64 absmax bytes, one fp32 absmax2, fp32 offset, 1088 of tables
    assert nf4_bytes(4096) == 2048 + 64 + 4 + 4 + 1088
    # 6144 weights: 3072 + 96 + 4 (96 blocks: one absmax2 block) + 4 + 1088
    assert nf4_bytes(6144) == 3072 + 96 + 4 + 4 + 1088
    parts = weight_bytes(TINY, Setup(quantized=True))
    per_layer = 2 * nf4_bytes(4096) + 2 * nf4_bytes(2048) + 3 * nf4_bytes(6144) + 256
    assert parts["weights: decoder (nf4)"] == 3 * per_layer


def test_adapters_gradients_and_optimizer_state():
    # r (in + out) per projection: q 4x128, k 4x96, v 4x96, o 4x128, gate/up/down 4x160 = 3712 a layer, fp32
    params = 3 * 3712
    parts = training_state_bytes(TINY, LORA)
    assert parts["adapters (fp32)"] == 4 * params
    assert parts["adapters: gradients"] == 4 * params
    assert parts["optimizer (adamw)"] == 8 * params
    # every tiny adapter tensor is under 4096 values: adamw_8bit keeps them in fp32 too
    eight = training_state_bytes(TINY, Setup(rank=4, optimizer="adamw_8bit"))
    assert eight["optimizer (adamw_8bit)"] == 8 * params
    # a large tensor: 2 bytes a value + two fp32 absmaxes per 256 block
    assert adamw8bit_bytes(5000) == 10000 + 8 * 20


def test_full_fine_tuning_keeps_fp32_moments_and_a_bf16_compensation():
    parts = training_state_bytes(TINY, Setup(method="full"))
    weights = 3 * (30720 + 128) + 2 * 12800 + 64
    assert parts["trained weights: gradients"] == 2 * weights
    assert parts["optimizer (adamw)"] == (4 + 4 + 2) * weights  # m, v in fp32; the compensation in bf16
    # adamw_8bit: the compensation beside 8-bit moments (the embedding and head, 12800 values, and gate/up/down, 6144)
    # and fp32 ones (the rest: q/o 4096 values is 8-bit too, k/v 2048 and the norms are not)
    eight = training_state_bytes(TINY, Setup(method="full", optimizer="adamw_8bit"))
    small = 3 * (2 * 2048 + 128) + 64
    large = [12800] * 2 + [6144, 6144, 6144, 4096, 4096] * 3
    assert small + sum(large) == weights
    assert eight["optimizer (adamw_8bit)"] == sum(adamw8bit_bytes(n) for n in large) + 8 * small + 2 * weights
    assert "adapters (fp32)" not in parts


def test_adamw_torch_keeps_bf16_moments_and_no_compensation():
    """train.optimizer adamw_torch (torch's AdamW as it is): 2 + 2 bytes a bf16 weight, not 10, and no fp32 copies in
    its step (fused); fp32 adapters 8 bytes, as adamw."""
    weights = 3 * (30720 + 128) + 2 * 12800 + 64
    plain = Setup(method="full", micro_batch=2, seq=24, optimizer="adamw_torch")
    assert training_state_bytes(TINY, plain)["optimizer (adamw_torch)"] == 4 * weights
    assert optimizer_step_bytes(TINY, plain) == 0 < optimizer_step_bytes(TINY, Setup(method="full"))
    lora = training_state_bytes(TINY, Setup(rank=4, optimizer="adamw_torch"))
    assert lora["optimizer (adamw_torch)"] == training_state_bytes(TINY, Setup(rank=4))["optimizer (adamw)"]
    saved = estimate(TINY, dataclasses.replace(plain, optimizer="adamw")).peak - estimate(TINY, plain).peak
    assert saved >= 6 * weights


def test_fsdp2_shards_weights_and_training_state_and_gathers_the_root_and_two_layers():
    """Under train.sharding fsdp2 every rank held, in the model, the whole model's weights, gradients and optimizer
    state. Full fine-tuning of TINY over 2 ranks, by hand (the unsharded figures are those of the tests above):"""
    e = estimate(TINY, Setup(method="full", micro_batch=2, seq=24, shards=2))
    # decoder 3 x 61696 = 185088 bf16 -> 92544 a rank; embedding + head + norm 51328 -> 25664
    assert e.static["weights: decoder (bf16), 1/2 (fsdp2)"] == 92544
    assert e.static["weights: embedding + head + norm, 1/2 (fsdp2)"] == 25664
    # gradients 2 x 118208 values -> 118208 bytes a rank; AdamW's fp32 m and v and the bf16 compensation:
    # 10 x 118208 -> 591040
    assert e.static["trained weights: gradients, 1/2 (fsdp2)"] == 118208
    assert e.static["optimizer (adamw), 1/2 (fsdp2)"] == 591040
    # gathered whole: the root 51328 and two layers of 61696; their gradients the same sizes (bf16 weights)
    assert e.static["fsdp2: gathered weights (root, two layers)"] == 51328 + 2 * 61696
    assert e.static["fsdp2: unsharded grads (root, two layers)"] == 51328 + 2 * 61696
    assert "weights: decoder (bf16)" not in e.static
    whole = estimate(TINY, Setup(method="full", micro_batch=2, seq=24))
    # both peak at the optimizer step: fp32 copies of the whole model's 118208 trained values, or of a rank's half
    assert whole.peak_phase == e.peak_phase == "optimizer step"
    assert whole.peak - e.peak == (185088 + 51328 + 236416 + 1182080) - (
        92544 + 25664 + 118208 + 591040 + 2 * 174720
    ) + 12 * (118208 - 59104)
    # LoRA over 3 ranks: adapters, their gradients and moments cut to a third (ceil); no root gradients, two layers'
    # adapter gradients (3712 fp32 values a layer)
    lora = estimate(TINY, Setup(method="lora", rank=4, micro_batch=2, seq=24, shards=3)).static
    assert lora["adapters (fp32), 1/3 (fsdp2)"] == 4 * 3712
    assert lora["optimizer (adamw), 1/3 (fsdp2)"] == 8 * 3712
    assert lora["fsdp2: unsharded grads (root, two layers)"] == 2 * 4 * 3712
    assert lora["weights: decoder (bf16), 1/3 (fsdp2)"] == -(-185088 // 3)


def test_the_optimizer_step_of_bf16_weights_needs_three_fp32_copies_of_a_foreach_chunk(monkeypatch):
    # the top layer's tensors, 30720 + 2 x 64 = 30848 values, one foreach chunk (under 2^25 values): the gradients'
    # fp32 copies, denom and the working weights, 4 + 4 + 4 bytes each
    e = estimate(TINY, Setup(method="layers", top_layers=1, micro_batch=1, seq=4))
    assert e.peak_phase == "optimizer step"
    assert e.transient == {"optimizer step: fp32 copies of one chunk of trained tensors": 12 * 30848}
    assert e.saved == {}
    # full fine-tuning: all 118208 trained values in one chunk; with chunks of 10,000 values the embedding (and the
    # untied head), 200 x 64 = 12800 values, is a chunk alone and the largest
    assert optimizer_step_bytes(TINY, Setup(method="full")) == 12 * 118208
    assert optimizer_step_bytes(TINY, Setup(method="full", shards=4)) == 12 * 29552  # each rank its quarter
    monkeypatch.setattr(memory, "FOREACH_VALUES", 10000)
    assert optimizer_step_bytes(TINY, Setup(method="full")) == 12 * 12800
    assert optimizer_step_bytes(TINY, LORA) == 0  # the fused AdamW of fp32 adapters: no copies
    assert optimizer_step_bytes(TINY, Setup(method="full", optimizer="adamw_8bit")) == 0  # the 8-bit kernel


def test_the_optimizer_step_under_fsdp2_copies_a_rank_s_share_of_a_chunk():
    """Under train.sharding fsdp2 each rank steps its own shards; the model counted the whole tensors, S times the
    step's copies."""
    # full over 2 ranks: the 118208 trained values, one chunk, 59104 a rank, 12 bytes each
    assert optimizer_step_bytes(TINY, Setup(method="full", shards=2)) == 12 * 59104
    # the top layer over 3 ranks: its 30848 values, ceil(30848 / 3) = 10283 a rank
    e = estimate(TINY, Setup(method="layers", top_layers=1, micro_batch=1, seq=4, shards=3))
    assert optimizer_step_bytes(TINY, Setup(method="layers", top_layers=1, shards=3)) == 12 * 10283
    assert e.peak_phase == "optimizer step"
    assert e.transient == {"optimizer step: fp32 copies of one chunk of trained shards (1/3)": 12 * 10283}


def test_scratch_buffers():
    parts = scratch_bytes(TINY, LORA)
    # stacked (O + R)(in + R): qkv (128 + 12)(64 + 12) = 10640, gate/up (192 + 8)(64 + 8) = 14400: the larger, bf16
    assert parts["scratch: stacked group weight"] == 2 * 14400
    assert parts["rope tables"] == 2 * 48 * 16 * 2  # cos and sin, (N, head_dim) bf16
    assert "scratch: nf4 dequantization" not in parts and "offload: landing buffers" not in parts
    q = scratch_bytes(TINY, Setup(quantized=True, rank=4, micro_batch=2, seq=24, checkpointed=3, offload=True))
    assert q["scratch: nf4 dequantization"] == 2 * 6144  # down_proj 96 x 64, the largest ungrouped one
    assert q["offload: landing buffers"] == 2 * 48 * 64 * 2


def test_saved_activations_of_one_layer():
    # attention: x 64 + normed with spare 64 + 12 + qkv 128 + rope q, k 96 + attention out 64 + o's xA 4, bf16;
    # rstd 4 bytes a token; logsumexp 4 bytes a token and head; o's A and B in bf16, 2 x 4 x (64 + 64)
    assert attention_saved(TINY, LORA, 48) == 2 * 48 * (64 + 76 + 128 + 96 + 64 + 4) + 4 * 48 + 4 * 48 * 4 + 1024
    # MLP: h 64 + normed 64 + 8 + gate|up 192 + act 96 + down's xA 4, bf16; rstd; down's A and B, 2 x 4 x (96 + 64)
    assert mlp_saved(TINY, LORA, 48) == 2 * 48 * (64 + 72 + 192 + 96 + 4) + 4 * 48 + 1280
    # without grouping there are no spare columns, but each layer saves its own x A^T (three of 4 columns); q and k
    # are separate outputs that rope frees, v alone stays (32 columns); each keeps its A and B in bf16 (q, o
    # 2 x 4 x 128 bytes, k, v 2 x 4 x 96)
    plain = Setup(method="lora", rank=4, grouped=False)
    assert attention_saved(TINY, plain, 48) == 2 * 48 * (64 + 76 + 32 + 96 + 64 + 4) + 4 * 48 * 5 + 3584


def test_peak_without_checkpointing_is_at_the_head():
    e = estimate(TINY, LORA)
    layer = 43456 + 42560
    assert e.saved == {"activations: kept layers": 3 * layer, "activations: checkpointed inputs": 0}
    # final norm input, its output, grad_hidden (N, d) bf16 + rstd + two logits chunks (N, V) + fp32 losses
    assert e.transient == {
        "head: logits chunk, hidden and its gradient": 3 * 2 * 48 * 64 + 192 + 2 * 2 * 48 * 200 + 192
    }
    assert e.peak_phase == "head"
    assert e.peak == e.static_bytes + 3 * layer + 38016 + 2 * 48 * 200


def test_head_logits_chunk_follows_the_vocabulary():
    # V 131072 = 2^17: a chunk of 2^27 / 2^17 = 1024 tokens, so 2 x 1024 x V bf16 logits however many tokens a step has
    big = LlamaConfig.from_hf(
        dict(
            model_type="llama", hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=131072, rms_norm_eps=1e-5, max_position_embeddings=8192,
        )
    )  # fmt: skip
    n = 4 * 2048
    e = estimate(big, Setup(method="lora", rank=4, micro_batch=4, seq=2048))
    head = 3 * 2 * n * 64 + 4 * n + 2 * 2 * 1024 * 131072 + 4 * n
    assert e.transient == {"head: logits chunk, hidden and its gradient": head}


def test_peak_with_every_layer_checkpointed_is_the_recomputation():
    e = estimate(TINY, Setup(method="lora", rank=4, micro_batch=2, seq=24, checkpointed=3))
    assert e.peak_phase == "recomputation"
    inputs = 3 * 2 * 48 * 64
    # one layer's attention half and MLP (one chunk: all 48 tokens), d act, three (N, d) gradients
    recompute = 43456 + 42560 + 2 * 48 * 96 + 3 * 2 * 48 * 64
    assert e.saved == {"activations: checkpointed inputs": inputs}
    assert e.peak == e.static_bytes + inputs + recompute
    off = estimate(TINY, Setup(method="lora", rank=4, micro_batch=2, seq=24, checkpointed=3, offload=True))
    assert off.saved == {"activations: checkpointed inputs": 0}
    assert off.static["offload: landing buffers"] == 2 * 48 * 64 * 2


def test_selective_checkpointing_sits_between():
    peaks = [estimate(TINY, Setup(method="lora", rank=4, micro_batch=2, seq=24, checkpointed=k)).peak for k in range(4)]
    assert peaks[0] > peaks[1] > peaks[2] > peaks[3]
    # one layer fewer kept, one input kept instead
    assert peaks[0] - peaks[1] == 43456 + 42560 - 2 * 48 * 64


def test_layers_method_saves_only_the_trained_top_layers():
    # adamw_8bit: no fp32 copies in the optimizer step, which would be the peak of so small a batch
    e = estimate(TINY, Setup(method="layers", top_layers=1, micro_batch=2, seq=24, optimizer="adamw_8bit"))
    assert (
        e.saved["activations: kept layers"]
        == 2 * 48 * (64 + 64 + 32 + 96 + 64) + 4 * 48 * 5 + 2 * 48 * (64 + 64 + 192 + 96) + 4 * 48
    )


def test_calibration_scales_the_dynamic_parts_only():
    e = estimate(TINY, LORA)
    measured = e.static_bytes + int(1.1 * e.dynamic_bytes)
    cal = calibrate(e, measured)
    assert cal.activation_scale == pytest.approx(1.1, rel=1e-5)  # int() rounds the measured bytes
    again = estimate(TINY, LORA, cal.activation_scale)
    assert again.peak == pytest.approx(measured, abs=2)
    assert calibrate(e, e.static_bytes + 10 * e.dynamic_bytes).activation_scale == 3.0  # clamped, and noted


@pytest.mark.parametrize(
    "text, value",
    [("24GiB", 24 * 1024**3), ("80GB", 80 * 1024**3), ("1.5 TiB", int(1.5 * 1024**4)), ("512MiB", 512 * 1024**2),
     ("1000B", 1000), ("8g", 8 * 1024**3)],
)  # fmt: skip
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["0", "0GiB", "0.0 MB"])
def test_a_size_of_zero_is_refused_as_no_memory(text):
    """0 was told to write 0GiB, which was then refused as "not a size"; zero in any spelling is no memory."""
    with pytest.raises(ValueError, match="is no memory at all; give what the run may use, like 24GiB"):
        parse_size(text)


def test_sizes_are_shown_in_mib_below_a_tenth_of_a_gib():
    assert [gib(24 * 2**30), gib(2**30 / 10), gib(37 * 2**20)] == ["24.00 GiB", "0.10 GiB", "37.0 MiB"]


@pytest.mark.parametrize("text", ["", "GiB", "24 parsecs", "-3GiB", "0GB", "24", "0.5B", "0.0001KiB"])  # 24: 24 bytes
def test_parse_size_rejects(text):
    """0.5B was read as a budget of 0 bytes, which nothing fits ("no configuration fits 0.0 MiB")."""
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize(
    "text, spellings",
    [("24Gb", "24GiB, 24GB or 24G"), ("24gb", "24GiB, 24GB or 24G"), ("24gib", "24GiB, 24GB or 24G"),
     ("512 Mib", "512MiB, 512MB or 512M"), ("1000b", "1000B")],
)  # fmt: skip
def test_a_lowercase_b_is_refused_as_bits(text, spellings):
    """24Gb (gigabits) was read as 24 GiB: the unit matched ignoring case."""
    with pytest.raises(ValueError, match=f"lowercase b, which reads as bits; write bytes like {spellings}$"):
        parse_size(text)


def test_ddp_counts_its_gradient_buckets():
    """DDP on several ranks keeps its gradient buckets beside the gradients (gradient_as_bucket_view off): a second
    copy of every trainable gradient, which the model left out. By hand: full fine-tuning of TINY, 118208 bf16
    values; LoRA, 3 x 3712 fp32 values."""
    full = estimate(TINY, Setup(method="full", micro_batch=2, seq=24, ddp=True))
    assert full.static["ddp: gradient buckets"] == 2 * 118208
    assert full.peak - estimate(TINY, Setup(method="full", micro_batch=2, seq=24)).peak == 2 * 118208
    assert (
        estimate(TINY, Setup(rank=4, micro_batch=2, seq=24, ddp=True)).static["ddp: gradient buckets"] == 4 * 3 * 3712
    )


def test_fp32_weights_and_activations_take_four_bytes_and_keep_no_compensation():
    """What model.dtype auto picks for full/layers on a GPU without bf16 (or model.dtype fp32): every weight and
    activation 4 bytes, and torch's fused AdamW (no bf16 compensation, no fp32 working copies)."""
    full = Setup(method="full", micro_batch=2, seq=24, dtype="fp32")
    parts = weight_bytes(TINY, full)
    assert parts["weights: decoder (fp32)"] == 3 * (30720 * 4 + 128 * 4)
    assert parts["weights: embedding + head + norm"] == 2 * 12800 * 4 + 64 * 4
    state = training_state_bytes(TINY, full)
    assert state["trained weights: gradients"] == 4 * 118208  # fp32 gradients of 118208 weights
    assert state["optimizer (adamw)"] == 8 * 118208  # m and v, no compensation
    assert optimizer_step_bytes(TINY, full) == 0
    lora32 = Setup(method="lora", rank=4, micro_batch=2, seq=24, dtype="fp32")
    assert attention_saved(TINY, lora32, 48) == 4 * 48 * (64 + 76 + 128 + 96 + 64 + 4) + 4 * 48 + 4 * 48 * 4
    assert mlp_saved(TINY, lora32, 48) == 4 * 48 * (64 + 72 + 192 + 96 + 4) + 4 * 48
    assert scratch_bytes(TINY, lora32)["rope tables"] == 2 * 48 * 16 * 4
    assert estimate(TINY, lora32).transient == {
        "head: logits chunk, hidden and its gradient": 3 * 4 * 48 * 64 + 192 + 2 * 4 * 48 * 200 + 192
    }


def test_fp16_weights_take_two_bytes_beside_fp32_adapters():
    fp16 = Setup(method="lora", rank=4, micro_batch=2, seq=24, dtype="fp16")
    assert weight_bytes(TINY, fp16)["weights: decoder (fp16)"] == 3 * (30720 * 2 + 256)
    assert training_state_bytes(TINY, fp16)["adapters (fp32)"] == 4 * 3 * 3712
    assert estimate(TINY, fp16).peak == estimate(TINY, LORA).peak  # the same bytes as bf16


def test_the_optimizer_help_says_what_a_bf16_weight_costs_as_the_memory_model_counts_it():
    """train.optimizer's help gave 8 bytes (adamw) and 2.03 (adamw_8bit) per trainable parameter, but a bf16 weight of
    method full or layers keeps a 2-byte Kahan compensation beside its moments; the help now says so, in the numbers
    the planner counts."""
    import dataclasses

    from tunelab.config import TrainConfig

    help_text = next(f for f in dataclasses.fields(TrainConfig) if f.name == "optimizer").metadata["help"]
    n = 2**20  # one large bf16 weight matrix
    for kind in ("adamw", "adamw_8bit"):
        per_weight = (memory.adamw8bit_bytes(n) if kind == "adamw_8bit" else 8 * n) + 2 * n  # moments + compensation
        assert f"{per_weight / n:.3g} for a bf16 weight" in help_text, (kind, per_weight / n)
    full = Setup(method="full", micro_batch=2, seq=24)  # the model counts that compensation: 8 + 2 bytes a weight
    assert training_state_bytes(TINY, full)["optimizer (adamw)"] == 10 * 118208


def test_grpo_counts_the_starting_copy_its_reference_keeps():
    """grpo with beta > 0 over full fine-tuning keeps the trained weights as they start, a copy on the GPU, for the
    reference's log-probs; the memory model left it out. It is every trainable tensor once more: for the tiny model in
    full, 2 x 118,208 bytes; a new adapter's reference is the base with the adapter off, no copy, but a continued one's
    is its starting adapter."""
    from tunelab.config import ModelConfig, RunConfig
    from tunelab.training.plan_setup import config_setup

    cfg = RunConfig(task="grpo")
    full = dataclasses.replace(cfg, method=dataclasses.replace(cfg.method, name="full"))
    assert config_setup(full, 64, prompt=16).reference_copy
    assert not config_setup(cfg, 64, prompt=16).reference_copy  # a new adapter: the base, adapter off
    continued = dataclasses.replace(cfg, model=ModelConfig(adapter="runs/stage1"))
    assert config_setup(continued, 64, prompt=16).reference_copy
    no_ref = dataclasses.replace(full, grpo=dataclasses.replace(cfg.grpo, beta=0.0))
    assert not config_setup(no_ref, 64, prompt=16).reference_copy
    assert not config_setup(dataclasses.replace(full, task="sft"), 64).reference_copy
    s = Setup(method="full", micro_batch=2, seq=24, reference_copy=True)
    copy = estimate(TINY, s).static["grpo reference: the trained tensors' starting copy"]
    assert copy == 2 * 118_208
    assert estimate(TINY, s).peak - estimate(TINY, dataclasses.replace(s, reference_copy=False)).peak == copy


def test_checkpointing_a_frozen_layer_below_the_trained_ones_saves_nothing():
    """method=layers trains the top layers; checkpointing recomputes the lowest k, which below every trained layer
    keep nothing anyway. The model took checkpointing the tiny model's lowest layer (frozen, below its top 2) as
    checkpointing one of the trained ones, predicting its activations gone, a peak the run exceeds. Only the
    checkpointed layers among the trained ones count: of 3 layers, the lowest 1 none, the lowest 2 one."""
    from tunelab.training.memory import layer_saved, recomputed_layers

    s = Setup(method="layers", top_layers=2, micro_batch=2, seq=24, optimizer="adamw_8bit")  # the peak at the head
    assert [recomputed_layers(TINY, dataclasses.replace(s, checkpointed=k)) for k in range(4)] == [0, 0, 1, 2]
    one = estimate(TINY, dataclasses.replace(s, checkpointed=1))
    assert (
        one.saved
        == estimate(TINY, s).saved
        == {
            "activations: kept layers": 2 * layer_saved(TINY, s, 48),
            "activations: checkpointed inputs": 0,
        }
    )
    two = estimate(TINY, dataclasses.replace(s, checkpointed=2))
    assert two.saved == {"activations: kept layers": layer_saved(TINY, s, 48), "activations: checkpointed inputs": 6144}
    full = Setup(micro_batch=2, seq=24, checkpointed=2)
    assert recomputed_layers(TINY, full) == 2  # lora and full: every layer saves, every checkpointed one counts


def test_a_head_task_is_planned_without_the_lm_head_it_drops():
    """classify and reward replace the LM head by a (K, d) head on each row's last token (`tasks.head.attach_head`),
    but the memory model counted the LM head's weights, its (chunk, V) logits and, in full fine-tuning, its gradient
    and AdamW state. The tiny model (untied, V 200, d 64) in full bf16: the root's weights 2 x 200 x 64 + 2 x 64 =
    25,728 bytes, not 51,328, and 12,800 trained values fewer (2 bytes of gradient, 10 of optimizer state each)."""
    from tunelab.config import RunConfig
    from tunelab.training.memory import root_weight_bytes
    from tunelab.training.plan_setup import config_setup

    lm = Setup(method="full", micro_batch=2, seq=24)
    head = dataclasses.replace(lm, lm_head=False)
    assert (root_weight_bytes(TINY, head), root_weight_bytes(TINY, lm)) == (25_728, 51_328)
    state, lm_state = training_state_bytes(TINY, head), training_state_bytes(TINY, lm)
    assert lm_state["trained weights: gradients"] - state["trained weights: gradients"] == 2 * 12_800
    assert lm_state["optimizer (adamw)"] - state["optimizer (adamw)"] == 10 * 12_800
    lora = Setup(rank=4, micro_batch=2, seq=24, lm_head=False)
    assert estimate(TINY, lora).peak < estimate(TINY, dataclasses.replace(lora, lm_head=True)).peak
    assert [config_setup(RunConfig(task=t), 24).lm_head for t in ("sft", "classify", "reward", "dpo")] == [
        True,
        False,
        False,
        True,
    ]


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
    assert memory.dora_norm_bytes(TINY, DORA) == 73728
    assert memory.dora_norm_bytes(TINY, dataclasses.replace(DORA, quantized=True)) == 73728 + 12288
    assert memory.dora_norm_bytes(TINY, dataclasses.replace(DORA, dtype="fp32")) == 2 * 4 * 6144
    assert memory.dora_norm_bytes(TINY, LORA) == 0
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

    assert memory.DORA_ROWS == dora._ROWS


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
    assert per_token == 2 * (r + memory.dora_outputs(TINY, s, ("gate_proj",)))  # gate_proj: 64 -> 96


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
    assert per_token == 2 * 4 + memory.dropout_masks(TINY, s, ("down_proj",)) == 2 * 4 + 96


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
    assert memory.adapter_casts(TINY, down, ("down_proj",)) == 2 * 4 * (96 + 64)
    assert _saved_bytes(layer, 16) == 2 * 16 * 4 + memory.adapter_casts(TINY, down, ("down_proj",))
    assert memory.adapter_casts(TINY, dataclasses.replace(down, dtype="fp32"), ("down_proj",)) == 0


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
    predicted = memory.dora_norm_bytes(shape, s)
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


def test_first_step_peak_counts_no_garbage_of_earlier_work(monkeypatch):
    """Tensors held by unreachable cycles of an earlier run in the process are freed before the first step's peak
    is reset, so the planner's calibration does not read them as the step's activations."""
    import gc
    import weakref

    import torch

    from tunelab.training import loop

    for name in ("synchronize", "empty_cache", "reset_peak_memory_stats"):
        monkeypatch.setattr(torch.cuda, name, lambda *a, **k: None)

    class Leftover:
        pass

    leftover = Leftover()
    leftover.me, leftover.tensor = leftover, torch.zeros(4)
    gone = weakref.ref(leftover)
    del leftover
    gc.disable()  # only the step's own collection may free the cycle
    try:
        loop._peak_from_here(torch.device("cuda"))
    finally:
        gc.enable()
    assert gone() is None
