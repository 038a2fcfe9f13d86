"""train.fp8 in the memory model (`training.memory_fp8`), part by part against sizes worked out by hand for the tiny
Llama of `memory_tiny` as QLoRA: L = 3, d = 64, q = 64, kv = 32, m = 96, r = 4 on the seven projections, N = 48
tokens, bf16 (e = 2). Its FP8 bases, (in, O): q/k/v stacked (64, 128), o_proj (64, 64), gate/up stacked (64, 192),
down_proj (96, 64).
"""

import dataclasses

from tunelab.training import memory_fp8
from tunelab.training.memory import attention_saved, estimate, mlp_saved, scratch_bytes
from tunelab.training.memory_setup import Setup

from .memory_tiny import TINY

QLORA = Setup(method="lora", quantized=True, rank=4, micro_batch=2, seq=24)
FP8 = dataclasses.replace(QLORA, fp8=True)
SCALES = 3 * 4 * ((1 + 64 + 128) + (1 + 64 + 64) + (1 + 64 + 192) + (1 + 96 + 64))  # 8880: 4 (1 + O + in) a base
QKV_CASTS = 2 * 12 * (64 + 128)  # A_cat (12, 64) and the block-diagonal B (128, 12), bf16
GATE_UP_CASTS = 2 * 8 * (64 + 192)  # A_cat (8, 64) and B (192, 8)
LAST_ROWS = 48 * (96 + 4)  # the top down_proj's input in FP8 and its fp32 row scales
OPERANDS = 48 * (192 + 4)  # gate/up's backward: its output gradient's rows (the transposed weight is in the buffer)
BUFFER = 64 * 192  # the FP8 weight buffer: the largest base, gate/up's


def test_fp8_keeps_its_weight_scales_and_buffer_instead_of_the_bf16_buffers():
    want = {"fp8: weight scales": SCALES, "fp8: weight buffer": BUFFER, "rope tables": 2 * 48 * 16 * 2}
    assert scratch_bytes(TINY, FP8) == want
    bf16 = scratch_bytes(TINY, QLORA)
    assert bf16["scratch: stacked group weight"] == 2 * 14400 and bf16["scratch: nf4 dequantization"] == 2 * 6144


def test_a_layer_saves_the_fp8_groups_adapter_casts_and_nothing_in_fp8():
    # the norm's output and x A^T are two tensors now, as many bytes as the bf16 group's one with spare columns
    assert attention_saved(TINY, FP8, 48) == attention_saved(TINY, QLORA, 48) + QKV_CASTS
    assert mlp_saved(TINY, FP8, 48) == mlp_saved(TINY, QLORA, 48) + GATE_UP_CASTS


def test_without_groups_every_projection_is_a_base_of_its_own():
    some = dataclasses.replace(FP8, targets=("q_proj", "v_proj", "o_proj", "down_proj"))
    assert memory_fp8.bases(TINY, some) == {
        ("q_proj",): (64, 64), ("k_proj",): (64, 32), ("v_proj",): (64, 32), ("o_proj",): (64, 64),
        ("gate_proj",): (64, 96), ("up_proj",): (64, 96), ("down_proj",): (96, 64),
    }  # fmt: skip
    assert memory_fp8.scale_bytes(TINY, some) == 3 * 4 * (129 + 97 + 97 + 129 + 161 + 161 + 161)
    assert memory_fp8.group_casts(TINY, some, ("q_proj", "k_proj", "v_proj")) == 0


def test_a_backwards_fp8_operands_are_the_widest_bases():
    # q/k/v 48 x 132 = 6336, o 48 x 68 = 3264, gate/up 48 x 196 = 9408, down 48 x 68 = 3264
    assert memory_fp8.grad_operands(TINY, FP8, 48) == OPERANDS == 9408
    # over a 16-token MLP chunk gate/up's is 16 x 196 = 3136, q/k/v's over all 48 tokens 6336
    assert memory_fp8.grad_operands(TINY, FP8, 48, 16) == 6336


def test_the_head_holds_the_last_inputs_rows():
    bf16, fp8 = estimate(TINY, QLORA), estimate(TINY, FP8)
    assert bf16.peak_phase == fp8.peak_phase == "head"
    assert fp8.transient == bf16.transient | {"fp8: the last input's rows in FP8": LAST_ROWS}
    assert sum(fp8.saved.values()) == sum(bf16.saved.values()) + 3 * (QKV_CASTS + GATE_UP_CASTS)
    assert fp8.peak == bf16.peak - 2 * 14400 - 2 * 6144 + SCALES + BUFFER + LAST_ROWS + 3 * (QKV_CASTS + GATE_UP_CASTS)


def test_a_recomputation_holds_its_own_rows_and_a_backwards_operands():
    bf16 = estimate(TINY, dataclasses.replace(QLORA, checkpointed=3))
    fp8 = estimate(TINY, dataclasses.replace(FP8, checkpointed=3))
    assert bf16.peak_phase == fp8.peak_phase == "recomputation"
    name = "recomputation: one layer and its gradients"
    assert fp8.transient == {
        name: bf16.transient[name] + QKV_CASTS + GATE_UP_CASTS,  # the recomputed layer's saved set
        "fp8: the last input's rows in FP8": 48 * (64 + 4),  # q/k/v's input (N, d), o_proj's (N, q): 64 both
        "fp8: a backward's FP8 operands": OPERANDS,  # its MLP in one chunk: 48 tokens < 4096
    }


def test_a_kept_layers_backward_counts_the_rows_and_the_operands():
    # with a 16-token vocabulary the head's logits are small: a kept layer's backward is the peak
    e = estimate(dataclasses.replace(TINY, vocab_size=16), FP8)
    n = 48
    assert e.peak_phase == "backward of a kept layer"
    assert e.transient == {
        "backward: a kept layer's gradients": 2 * n * (96 + 2 * 64),
        "fp8: the last input's rows in FP8": n * (96 + 4),
        "fp8: a backward's FP8 operands": n * (192 + 4),
    }


def test_fp8_counts_nothing_without_an_nf4_base():
    lora = Setup(method="lora", rank=4, micro_batch=2, seq=24)
    assert estimate(TINY, dataclasses.replace(lora, fp8=True)) == estimate(TINY, lora)


def test_grpos_sampling_holds_its_prefills_last_rows():
    # 8 answers sampled at once over 10-token prompts: the prefill's down_proj input, 80 rows of m = 96 and a scale
    grpo = dataclasses.replace(FP8, sampled=8, sample_prompt=10, sample_len=20)
    assert memory_fp8.phase_parts(TINY, grpo, 48, 48)["sampling"] == {memory_fp8.ROWS: 80 * (96 + 4)}
