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
    attention_saved,
    estimate,
    gib,
    mlp_saved,
    optimizer_step_bytes,
    parse_size,
    scratch_bytes,
    training_state_bytes,
    weight_bytes,
)
from tunelab.training.memory_setup import Setup, adamw8bit_bytes, nf4_bytes
from tunelab.training.plan import calibrate

from .memory_tiny import LORA, TINY, TINY_HF


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
        per_weight = (adamw8bit_bytes(n) if kind == "adamw_8bit" else 8 * n) + 2 * n  # moments + compensation
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


def test_pissa_counts_the_starting_factors_each_layer_keeps():
    """method.init pissa (olora alike) keeps each adapted layer's A0 (r, in) and B0 (out, r) in fp32 beside the
    adapter the whole run long (`peft.weight_init`); the memory model left them out. For the tiny model with r 4 on
    the seven projections: r (in + out) per layer = 4 x (128 + 96 + 96 + 128 + 160 + 160 + 160) = 3712 values,
    x 4 bytes x 3 layers = 44,544 bytes; none with the default init or for method full."""
    from tunelab.config import RunConfig
    from tunelab.training.plan_setup import config_setup

    cfg = RunConfig()
    pissa = dataclasses.replace(cfg, method=dataclasses.replace(cfg.method, init="pissa"))
    assert config_setup(pissa, 64).initial_copy
    assert not config_setup(cfg, 64).initial_copy
    full = dataclasses.replace(pissa, method=dataclasses.replace(pissa.method, name="full"))
    assert not config_setup(full, 64).initial_copy
    s = dataclasses.replace(LORA, initial_copy=True)
    kept = estimate(TINY, s).static["adapters' starting A0, B0 (fp32, method.init)"]
    assert kept == 3 * 4 * 3712
    assert estimate(TINY, s).peak - estimate(TINY, LORA).peak == kept
    dora = dataclasses.replace(s, dora=True)  # DoRA's magnitude is not part of the start kept
    assert estimate(TINY, dora).static["adapters' starting A0, B0 (fp32, method.init)"] == kept


def test_qpissa_counts_the_factorisation_at_build_as_a_peak_of_its_own():
    """QPiSSA (method.init pissa or olora over an NF4 base) factorises each adapted weight on the GPU in fp32 before
    its residual is quantized; the memory model counted nothing of it. At the widest tiny weight (gate/up/down,
    64 x 96, k = 64): the weight in fp32 and the SVD's copy of it 8 x 6144 = 49,152 bytes, U and V^T 4 x 64 x (64 + 96)
    = 40,960: 90,112. Beside it the NF4 decoder 3 x (2 x 3208 + 2 x 2152 + 3 x 4264 + 256) = 71,304, the adapters and
    their A0, B0, 44,544 each; no gradient, optimizer state, embedding or head yet."""
    from tunelab.training.plan import calibrate

    qpissa = dataclasses.replace(LORA, quantized=True, initial_copy=True)
    e = estimate(TINY, qpissa)
    assert e.build == {
        "weights: decoder (nf4)": 71304,
        "adapters (fp32)": 44544,
        "adapters' starting A0, B0 (fp32, method.init)": 44544,
        "build: widest adapted weight factorised (fp32, SVD/QR)": 90112,
    }
    assert e.build_peak == 250504 < e.step_peak == e.peak  # the step holds more here: its peak stays the peak
    for plain in (LORA, dataclasses.replace(LORA, quantized=True), dataclasses.replace(LORA, initial_copy=True)):
        assert estimate(TINY, plain).build == {}  # QLoRA, and pissa over 16-bit weights, factorise no fp32 copy
    # one layer of 64 -> 4096 -> 64, a vocabulary of 8 and one token: the build is the peak, and the largest part
    wide = LlamaConfig.from_hf(TINY_HF | dict(intermediate_size=4096, num_hidden_layers=1, vocab_size=8))
    one = dataclasses.replace(qpissa, micro_batch=1, seq=1, blas_workspace=0)
    e = estimate(wide, one)
    # 8 x 64 x 4096 + 4 x 64 x (64 + 4096)
    assert e.build["build: widest adapted weight factorised (fp32, SVD/QR)"] == 2097152 + 1064960
    assert e.peak == e.build_peak > e.step_peak
    assert e.dominant() == ("build: widest adapted weight factorised (fp32, SVD/QR)", 3162112)
    # a measured first step is the step's alone: the build's peak is over before it
    assert calibrate(e, e.step_peak).activation_scale == pytest.approx(1.0, abs=1e-6)
    # the planner fits the larger peak: a budget the step fits but the build does not fits nothing, naming the build
    from tunelab.training.plan import BudgetError, plan, require_fit

    refused = plan(wide, one, (e.step_peak + e.build_peak) // 2, 1, cuda=False)
    assert refused.chosen is None and "build: widest adapted weight factorised" in refused.reason
    with pytest.raises(BudgetError, match="method.init default for the build's fp32 factorisation"):
        require_fit(refused, "budget")
    shown = plan(wide, one, e.build_peak, 1, cuda=False)
    assert shown.chosen is not None and "while the model is built (each adapted weight" in shown.breakdown()
    assert "the peak):" in shown.breakdown()
