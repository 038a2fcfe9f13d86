"""The planner's speed model (training/speed.py) against hand-computed figures on a tiny model."""

import dataclasses

import pytest

import tunelab.training.speed as speed
from tunelab.models.llama_config import LlamaConfig
from tunelab.training.memory_setup import Setup

from .test_memory_measured import SHAPES, records

# 2 layers, d 64, m 128, 4 heads of 16 (q 64), 2 kv heads (kv 32), vocab 256. One layer's projections:
# q 64 x 64 + k, v 64 x 32 each + o 64 x 64 + gate, up, down 64 x 128 each = 4,096 + 2 x 2,048 + 4,096 + 3 x 8,192
# = 36,864 weights.
TINY = LlamaConfig("llama", 256, 64, 128, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16)
LAYER_WEIGHTS = 36_864


@pytest.fixture
def no_host(monkeypatch):
    """The GPU's time alone: the tiny model's steps are otherwise all host time."""
    monkeypatch.setattr(speed, "HOST_S_PER_LAYER", 0.0)
    monkeypatch.setattr(speed, "HOST_S_PER_RECOMPUTE", 0.0)


def _flops_s(s: Setup) -> float:
    """full, micro-batch 1 x 32 tokens, nothing checkpointed: per token and layer the forward 2 x 36,864 + 2 x 32 x 64
    = 77,824 FLOPs and the backward (trained weights) 2 x 73,728 + 2 x 4,096 = 155,648; the head 3 x 2 x 256 x 64 =
    98,304: 32 x (2 x 233,472 + 98,304) = 18,087,936 FLOPs, at the 16-bit rate or the H200's fp32 share of it."""
    rate = speed.THROUGHPUT * (67 / 989 if s.dtype == "fp32" else 1.0)
    return 18_087_936 / rate


@pytest.mark.parametrize(("dtype", "bytes_moved"), [("bf16", 2), ("fp16", 2), ("fp32", 4)])
def test_the_weight_traffic_is_in_the_runs_dtype(no_host, dtype, bytes_moved):
    """The weight term counted 16-bit bytes for an fp32 run too. full fine-tuning copies no weight: each GEMM reads
    its weight as it is, 2 bytes a parameter and pass in 16 bits, 4 in fp32. Two layers, each passed over twice
    (forward, backward): 4 x 36,864 parameters x 2 or 4 bytes = 294,912 or 589,824 bytes at 4e12 bytes/s."""
    s = Setup(method="full", micro_batch=1, seq=32, dtype=dtype)
    traffic = 4 * LAYER_WEIGHTS * bytes_moved
    assert traffic == {2: 294_912, 4: 589_824}[bytes_moved]
    assert speed.step_time(TINY, s, 1, "NVIDIA H200") == pytest.approx(_flops_s(s) + traffic / 4e12, rel=1e-12)
    # a checkpointed layer passes over its weights once more, but for the down projection's (128 x 64 = 8,192), whose
    # GEMM the recomputation skips (it was charged the read all the same)
    ckpt = dataclasses.replace(s, checkpointed=1)
    more = speed.step_time(TINY, ckpt, 1, "NVIDIA H200") - speed.step_time(TINY, s, 1, "NVIDIA H200")
    recompute = 32 * (77_824 - 2 * 128 * 64) / (speed.THROUGHPUT * (67 / 989 if dtype == "fp32" else 1.0))
    assert more == pytest.approx(recompute + (LAYER_WEIGHTS - 8_192) * bytes_moved / 4e12, rel=1e-9)
    # with offload o_proj's (64 x 64) as well: its GEMM is skipped too (the midpoint is parked)
    offload = dataclasses.replace(ckpt, offload=True)
    more = speed.step_time(TINY, offload, 1, "NVIDIA H200") - speed.step_time(TINY, s, 1, "NVIDIA H200")
    recompute -= 32 * 2 * 64 * 64 / (speed.THROUGHPUT * (67 / 989 if dtype == "fp32" else 1.0))
    copies = 2 * max(
        0.0,
        2 * 32 * 64 * bytes_moved / speed.PCIE_BYTES_S
        - 32 * 77_824 / (speed.THROUGHPUT * (67 / 989 if dtype == "fp32" else 1.0)),
    )
    assert more == pytest.approx(recompute + (LAYER_WEIGHTS - 8_192 - 4_096) * bytes_moved / 4e12 + copies, rel=1e-9)


def test_grpo_fixed_log_probs_forward_by_hand(no_host):
    """The speed model left out the forward grpo runs over the sampled answers, before the step, for their reference
    log-probs. 8 answers of 40 tokens (prompt and answer) in micro-batches of 3 (3 of them), bf16: per token
    2 layers x (2 x 36,864 + 2 x 40 x 64) + 2 x 256 x 64 = 190,464 FLOPs, 8 x 40 of them at 540e12; each micro-batch
    passes over both layers' weights once. A new adapter's reference is the base, adapters off: no group forms, every
    weight read as it is, 36,864 x 2 bytes, 3 x 2 x 73,728 = 442,368 bytes at 4e12 (it was charged the adapted
    forward's copies). With the adapters on (a continued adapter's reference, the starting weights; the old policy's
    forward, with LoRA dropout): q/k/v and gate/up copied into their groups' stacked matrices, 24,576 x 5 bytes, o and
    down read as they are, 12,288 x 2, 3 x 2 x 147,456 = 884,736 bytes. None without a reference or samples."""
    s = Setup(method="lora", micro_batch=3, seq=40, sampled=8, sample_len=40, sample_prompt=8, fixed_forwards=1)
    flops = 8 * 40 * 190_464 / 540e12
    base, adapted = flops + 442_368 / 4e12, flops + 884_736 / 4e12
    assert speed.fixed_time(TINY, s, "NVIDIA H200") == pytest.approx(base, rel=1e-12)
    continued = dataclasses.replace(s, reference_copy=True)
    assert speed.fixed_time(TINY, continued, "NVIDIA H200") == pytest.approx(adapted, rel=1e-12)
    both = dataclasses.replace(s, fixed_forwards=2, dropout=True)  # the old policy's forward and the base's
    assert speed.fixed_time(TINY, both) == pytest.approx(adapted + base, rel=1e-12)
    assert speed.fixed_time(TINY, dataclasses.replace(s, fixed_forwards=0)) == 0.0
    assert speed.fixed_time(TINY, dataclasses.replace(s, sampled=0)) == 0.0
    # full fine-tuning's reference is its starting weights: a pass as its training forward's, 36,864 x 2 bytes
    full = dataclasses.replace(s, method="full", reference_copy=True)
    assert speed.fixed_time(TINY, full) == pytest.approx(base, rel=1e-12)


def test_grpo_fixed_log_probs_forward_in_fp8_by_hand(no_host):
    """With train.fp8 these forwards run the FP8 products the training forward runs, but were counted with the FP8
    weight bytes and bf16's GEMMs and no quantized rows. As above, QLoRA, a new adapter's reference (the base): per
    token 2 layers x (2 x 36,864 / FP8_GEMM_SPEEDUP + 2 x 40 x 64) + 2 x 256 x 64 FLOPs; each micro-batch's pass
    dequantizes each weight to FP8, 2.5 bytes, 3 x 2 x 92,160 = 552,960 bytes; each token's inputs quantized to rows,
    2 layers x 320 values (q/k/v 64 once, o 64, gate/up 64, down 128), 2 x 2 + 1 bytes a value. grpo's sampler stays
    timed as in bf16."""
    s = Setup(method="lora", quantized=True, rank=4, micro_batch=3, seq=40, sampled=8, sample_len=40, sample_prompt=8)
    s = dataclasses.replace(s, fixed_forwards=1, fp8=True)
    per_token = 2 * (2 * LAYER_WEIGHTS / speed.FP8_GEMM_SPEEDUP + 2 * 40 * 64) + 2 * 256 * 64
    rows = 8 * 40 * 2 * 320 * 5
    expected = 8 * 40 * per_token / 540e12 + (552_960 + rows) / 4e12
    assert speed.fixed_time(TINY, s, "NVIDIA H200") == pytest.approx(expected, rel=1e-12)
    bf16 = dataclasses.replace(s, fp8=False)
    assert speed.sample_time(TINY, s) == speed.sample_time(TINY, bf16)
    # at 7B, 64 answers of 384 tokens in micro-batches of 4: FP8's forwards are the faster (the tiny model's rows cost
    # more than its GEMMs save)
    seven_b = LlamaConfig.from_hf(SHAPES["llama2-7b"])
    big = dataclasses.replace(s, micro_batch=4, seq=384, sampled=64, sample_len=384, sample_prompt=128)
    assert speed.fixed_time(seven_b, big) < speed.fixed_time(seven_b, dataclasses.replace(big, fp8=False))


def test_the_fixed_log_probs_forward_of_a_small_model_is_host_bound():
    """3 micro-batches x 2 layers x a third of 6 ms of launches = 12 ms, more than the tiny model's GPU time."""
    s = Setup(method="lora", micro_batch=3, seq=40, sampled=8, sample_len=40, sample_prompt=8, fixed_forwards=1)
    assert speed.fixed_time(TINY, s) == pytest.approx(3 * 2 * 0.006 / 3, rel=1e-12)


def test_grpo_counts_a_forward_per_fixed_log_prob():
    """A reference forward when grpo.beta > 0 (the default 0.04), and one more for the old policy's log-probs when
    LoRA dropout makes the training forward differ from the sampling one; sft runs none."""
    from tunelab.config import RunConfig
    from tunelab.training.plan_setup import config_setup

    cfg = RunConfig(task="grpo")
    assert config_setup(cfg, 100, prompt=20).fixed_forwards == 1
    no_ref = dataclasses.replace(cfg, grpo=dataclasses.replace(cfg.grpo, beta=0.0))
    assert config_setup(no_ref, 100, prompt=20).fixed_forwards == 0
    dropout = dataclasses.replace(cfg, method=dataclasses.replace(cfg.method, dropout=0.1))
    assert config_setup(dropout, 100, prompt=20).fixed_forwards == 2
    assert config_setup(RunConfig(), 100).fixed_forwards == 0


def test_method_layers_runs_backward_through_its_trained_layers_only(no_host):
    """With method=layers (1 top layer of the tiny model's 2) the frozen layer below runs forward only, but the speed
    model counted a backward for every layer. Per token: 2 forwards of 77,824 + one trained backward of 155,648 + the
    head's forward and input gradient 2 x 2 x 256 x 64 = 65,536: 376,832, x 32 tokens; weights passed over 3 times
    (two forwards, one backward), 3 x 36,864 x 2 bytes (read as they are). Checkpointing the frozen layer recomputes
    nothing."""
    s = Setup(method="layers", top_layers=1, micro_batch=1, seq=32)
    expected = 32 * 376_832 / speed.THROUGHPUT + 3 * LAYER_WEIGHTS * 2 / 4e12
    assert speed.step_time(TINY, s, 1) == pytest.approx(expected, rel=1e-12)
    assert speed.step_time(TINY, dataclasses.replace(s, checkpointed=1), 1) == speed.step_time(TINY, s, 1)
    assert speed.step_time(TINY, dataclasses.replace(s, checkpointed=2), 1) > speed.step_time(TINY, s, 1)


def test_a_head_task_runs_no_lm_head(no_host):
    """classify and reward have no LM head: LoRA's 2 x 2 x 256 x 64 FLOPs a token of it (forward, input gradient)
    were counted all the same; 32 tokens of them here."""
    s = Setup(method="lora", micro_batch=1, seq=32)
    head = speed.step_time(TINY, s, 1) - speed.step_time(TINY, dataclasses.replace(s, lm_head=False), 1)
    assert head == pytest.approx(32 * 2 * 2 * 256 * 64 / speed.THROUGHPUT, rel=1e-9)


def test_dora_pays_for_its_norm_at_every_forward_and_for_g_l_x_on_every_token(no_host):
    """DoRA was timed as plain LoRA. Each forward of a layer computes ||W + s B A||: B A in fp32, 2 x 4 x 36,864 =
    294,912 FLOPs at the H200's fp32 share of the rate, and 34 bytes a weight over the fp32 blocks (36.5 over NF4,
    which dequantizes the whole weight first), 1,253,376 bytes a layer. Per token g L(x) and its backward move 8 x 2
    bytes per output column, 512 columns a layer (q 64, k, v 32, o 64, gate, up 128, down 64), 32 tokens."""
    lora = Setup(method="lora", rank=4, micro_batch=1, seq=32, grouped=False)  # one by one, as DoRA's layers run
    dora = dataclasses.replace(lora, dora=True)
    rate32 = speed.THROUGHPUT * 67 / 989
    norm = 294_912 / rate32 + 1_253_376 / 4e12  # one layer's norms, one forward
    tokens = 32 * 512 * 2 * 8 * 2 / 4e12  # two layers
    h200 = "NVIDIA H200"
    more = speed.step_time(TINY, dora, 1, h200) - speed.step_time(TINY, lora, 1, h200)
    assert more == pytest.approx(2 * norm + tokens, rel=1e-9)
    # both layers checkpointed: their norms again in the recomputation (one MLP chunk), and g L(x) forward again
    ckpt = [dataclasses.replace(s, checkpointed=2) for s in (lora, dora)]
    more = speed.step_time(TINY, ckpt[1], 1, h200) - speed.step_time(TINY, ckpt[0], 1, h200)
    # and the down projection's GEMM, 2 x 128 x 64 FLOPs a token, which a recomputed DoRA layer does not skip
    # and the down projection's GEMM, 2 x 128 x 64 FLOPs a token, and its weight's read, 8,192 x 2 bytes a layer
    down = 2 * 32 * 2 * 128 * 64 / speed.THROUGHPUT + 2 * 8_192 * 2 / 4e12
    assert more == pytest.approx(4 * norm + tokens + 32 * 512 * 2 * 2 * 2 / 4e12 + down, rel=1e-9)
    offload = [dataclasses.replace(s, offload=True) for s in ckpt]  # o_proj's GEMM too, 2 x 64 x 64
    more = speed.step_time(TINY, offload[1], 1, h200) - speed.step_time(TINY, offload[0], 1, h200)
    assert more == pytest.approx(
        4 * norm
        + tokens
        + 32 * 512 * 2 * 2 * 2 / 4e12
        + down
        + 2 * 32 * 2 * 64 * 64 / speed.THROUGHPUT
        + 2 * 4_096 * 2 / 4e12,
        rel=1e-6,
    )
    nf4 = [dataclasses.replace(s, quantized=True) for s in (lora, dora)]
    more = speed.step_time(TINY, nf4[1], 1, h200) - speed.step_time(TINY, nf4[0], 1, h200)
    assert more == pytest.approx(2 * (294_912 / rate32 + 36.5 * 36_864 / 4e12) + tokens, rel=1e-9)
    # grpo: the prefill computes every layer's norm and its 24 decode steps keep it (`peft.dora.norms_held`; they were
    # charged 25 times); the fixed forward once a micro-batch
    sampled = [
        dataclasses.replace(s, sampled=8, sample_len=40, sample_prompt=16, fixed_forwards=1) for s in (lora, dora)
    ]
    more = speed.sample_time(TINY, sampled[1], h200) - speed.sample_time(TINY, sampled[0], h200)
    assert more == pytest.approx(2 * norm, rel=1e-9)
    # the reference forward of a new adapter runs the base, adapters off: no norm (it was charged one a micro-batch)
    more = speed.fixed_time(TINY, sampled[1], h200) - speed.fixed_time(TINY, sampled[0], h200)
    assert more == 0.0
    # a continued adapter's reference, and the old policy's forward (LoRA dropout), run the adapters: every layer's
    # norm once for the 8 micro-batches of 1 answer (`peft.dora.norms_held`; it was charged once a micro-batch)
    for kind in ({"reference_copy": True}, {"dropout": True}):
        with_norms = [dataclasses.replace(s, **kind) for s in sampled]
        more = speed.fixed_time(TINY, with_norms[1], h200) - speed.fixed_time(TINY, with_norms[0], h200)
        assert more == pytest.approx(2 * norm, rel=1e-9)


def test_only_copied_weights_pay_for_the_copy(no_host):
    """Layers that run alone (DoRA, LoRA dropout, groups off) were charged for copying their weights into the grouped
    GEMM's stacked matrix, which only grouped ones build. bf16 LoRA, micro-batch 1 x 32, 4 passes (forward and
    backward of 2 layers): grouped, q/k/v and gate/up (24,576 weights) are copied, 5 bytes each, and o and down
    (12,288) read as they are, 2 bytes: 147,456 bytes a pass; alone, 36,864 x 2 = 73,728. Over NF4 every weight is
    dequantized into a copy, grouped or not: 36,864 x 5."""
    h200 = "NVIDIA H200"
    grouped = Setup(method="lora", micro_batch=1, seq=32)
    assert speed.pass_bytes(TINY, grouped) == 147_456
    for alone in (
        dataclasses.replace(grouped, grouped=False),
        dataclasses.replace(grouped, dropout=True),
        dataclasses.replace(grouped, dora=True),
    ):
        assert speed.pass_bytes(TINY, alone) == 73_728
    less = speed.step_time(TINY, grouped, 1, h200) - speed.step_time(
        TINY, dataclasses.replace(grouped, grouped=False), 1, h200
    )
    # the top layer's gate/up finds its stacked matrix still built in backward: read, not copied (16,384 x 3 less)
    assert less == pytest.approx((4 * (147_456 - 73_728) - 16_384 * 3) / 4e12, rel=1e-9)
    for s in (grouped, dataclasses.replace(grouped, dropout=True)):
        assert speed.pass_bytes(TINY, dataclasses.replace(s, quantized=True)) == LAYER_WEIGHTS * 5
    # grpo's fixed forwards run in eval mode: no dropout draws, so the groups form
    sampled = dict(sampled=8, sample_len=40, sample_prompt=8, fixed_forwards=1)
    with_dropout = dataclasses.replace(grouped, dropout=True, **sampled)  # the old policy's forward
    assert speed.fixed_time(TINY, with_dropout, h200) == speed.fixed_time(
        TINY, dataclasses.replace(grouped, reference_copy=True, **sampled), h200
    )


def test_a_stacked_matrix_still_built_is_read_not_copied_again(no_host):
    """Every pass over a grouped layer was charged a new copy of its weights into the stacked matrix, but the matrix is
    kept within a pass until another group needs the buffer (`peft.group.GroupWeights`). bf16 LoRA on TINY (2 layers;
    q/k/v 64 x 128 = 8,192 weights, gate/up 2 x 64 x 128 = 16,384), one micro-batch of 32 tokens. A pass copies a
    grouped weight (5 bytes) where it builds the matrix and reads it (2 bytes) where it finds it: 3 bytes less a
    weight. No checkpointing, 4 passes: the top layer's gate/up is reused in backward, 16,384 x 3 = 49,152 bytes.
    Both layers checkpointed, 6 passes: each layer's gate/up built once for its recomputation and backward, 2 x
    16,384 x 3 = 98,304 (the top layer's is not reused: its recomputed q/k/v took the buffer); one checkpointed: that
    one and the top layer's, 98,304 too; with offload also each checkpointed layer's q/k/v and the top layer's gate/up
    again, (2 x 8,192 + 3 x 16,384) x 3 = 196,608."""
    h200 = "NVIDIA H200"
    s = Setup(method="lora", micro_batch=1, seq=32)
    cases = [
        (s, {"qkv": (4, 4), "gate_up": (4, 3)}, 49_152),
        (dataclasses.replace(s, checkpointed=2), {"qkv": (6, 6), "gate_up": (6, 4)}, 98_304),
        (dataclasses.replace(s, checkpointed=1), {"qkv": (5, 5), "gate_up": (5, 3)}, 98_304),
        (dataclasses.replace(s, checkpointed=2, offload=True), {"qkv": (6, 4), "gate_up": (6, 3)}, 196_608),
    ]
    for setup, builds, saved in cases:
        assert speed.group_builds(TINY, setup) == builds
        assert speed.reused_group_bytes(TINY, setup) == saved
        passes = 4 + setup.checkpointed
        copied_every_pass = passes * speed.pass_bytes(TINY, setup) / 4e12
        alone = speed.step_time(TINY, dataclasses.replace(setup, grouped=False), 1, h200)
        alone -= passes * speed.pass_bytes(TINY, dataclasses.replace(setup, grouped=False)) / 4e12
        assert speed.step_time(TINY, setup, 1, h200) == pytest.approx(alone + copied_every_pass - saved / 4e12)
    assert speed.group_builds(TINY, dataclasses.replace(s, dora=True)) == {}  # no group forms
    assert speed.group_builds(TINY, dataclasses.replace(s, targets=("q_proj", "k_proj", "v_proj"))) == {"qkv": (4, 4)}


def _grouped_lora_model(monkeypatch):
    """A 3-layer decoder with LoRA on every projection, its groups forced to run as one GEMM on the CPU; its HF config,
    and the count of stacked-matrix builds by group size (3: q/k/v, 2: gate/up), counted as the code writes them."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from tunelab.models.hf_adapter import from_hf_model
    from tunelab.peft import group
    from tunelab.peft.lora import attach_lora

    torch.manual_seed(0)
    fields = dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4)
    hf_config = AutoConfig.for_model("llama", num_key_value_heads=2, max_position_embeddings=64, **fields)
    model = from_hf_model(AutoModelForCausalLM.from_config(hf_config).float())
    attach_lora(model, ["all-linear"], r=4, alpha=8)
    group.set_grouping(model, True)
    built = {3: 0, 2: 0}
    write = group._write_adapters

    def counted(w_all, width, out, members):
        built[len(members)] += 1
        write(w_all, width, out, members)

    monkeypatch.setattr(group, "_write_adapters", counted)
    return model, hf_config, built


@pytest.mark.parametrize("checkpointed", [0, 1, 3])
def test_the_stacked_matrix_is_built_as_often_as_the_speed_model_counts(checkpointed, monkeypatch):
    """The count `speed.group_builds` takes, against the real model's: a 3-layer decoder with LoRA on every projection,
    its groups forced to run as one GEMM on the CPU, one forward and backward, the stacked matrix builds counted."""
    import torch

    from tunelab.models.llama_config import LlamaConfig as Shape

    model, hf_config, built = _grouped_lora_model(monkeypatch)
    model.gradient_checkpointing, model.checkpoint_layers = checkpointed > 0, checkpointed
    ids = torch.randint(0, 300, (2, 16))
    model(ids, labels=ids)[0].backward()
    shape = Shape.from_hf(hf_config.to_dict())
    expected = speed.group_builds(shape, Setup(method="lora", rank=4, checkpointed=checkpointed))
    assert built == {3: expected["qkv"][1], 2: expected["gate_up"][1]}


def test_a_recomputation_that_skips_a_projection_s_gemm_does_not_dequantize_its_weight(monkeypatch):
    """What `step_time` leaves out of a recomputation's weight traffic, on the code: a LoRA layer over NF4 (and a bare
    NF4 layer) asked for its autograd node only (output=False, checkpointing's last projections) never dequantizes
    its weight in forward; backward does, once."""
    import torch

    import tunelab.quant.linear as linear
    from tunelab.peft.lora_linear import LoRALinear

    calls = []
    dequantize = linear.dequantize
    monkeypatch.setattr(linear, "dequantize", lambda *a, **k: calls.append(1) or dequantize(*a, **k))
    torch.manual_seed(0)
    for layer in (
        LoRALinear(linear.NF4Linear.from_linear(torch.nn.Linear(96, 64, bias=False).to(torch.bfloat16)), 4, 8.0),
        linear.NF4Linear.from_linear(torch.nn.Linear(96, 64, bias=False).to(torch.bfloat16)),
    ):
        x = torch.randn(5, 96, dtype=torch.bfloat16, requires_grad=True)
        calls.clear()
        y = layer.grad_only(x)
        assert calls == []
        y.backward(torch.ones_like(y))
        assert calls == [1]
        layer(x)
        assert calls == [1, 1]


def test_with_offload_the_stacked_matrix_is_built_as_often_as_the_speed_model_counts(monkeypatch):
    """`speed.group_builds` under offload, against the code: 3 checkpointed layers through `recomputed_layer` with a
    host store stand-in (offload itself needs CUDA), so that backward runs `_backward_from_mid` as on the GPU: the MLP
    from the parked midpoint, then attention recomputed and backpropagated at once. Builds counted as in the test
    above: q/k/v once in forward and once in backward a layer, gate/up likewise but for the top layer's backward."""
    import torch

    from tunelab.models.llama_config import LlamaConfig as Shape
    from tunelab.models.recompute import recomputed_layer

    class Store:  # `models.offload.HostActivations`' part the recomputation uses, in memory
        with_mid = True

        def __init__(self):
            self.kept, self.parked = {}, []

        def park(self, key, t):
            self.kept[key] = t.detach().clone()
            self.parked.append(key)

        def take(self, key):
            return self.kept.pop(key)

        def fetch(self, key):
            pass

    model, hf_config, built = _grouped_lora_model(monkeypatch)
    ids = torch.randint(0, 300, (2, 16))
    decoder, store = model.model, Store()
    decoder.passes.tick()  # as the model's forward does
    h, cos, sin = decoder._embed(ids, torch.arange(16)[None].expand(2, 16))
    for index, layer in enumerate(decoder.layers):
        h = recomputed_layer(layer, store, index, h, cos, sin, None, None, None)
    h.float().square().sum().backward()
    assert store.kept == {} and {(i, "h") for i in range(3)} <= set(store.parked)  # midpoints parked, taken back
    shape = Shape.from_hf(hf_config.to_dict())
    expected = speed.group_builds(shape, Setup(method="lora", rank=4, checkpointed=3, offload=True))
    assert built == {3: expected["qkv"][1], 2: expected["gate_up"][1]} == {3: 6, 2: 5}


def test_fp8_speeds_its_gemms_by_the_measured_factor_and_counts_its_own_traffic(no_host):
    """train.fp8, QLoRA r 4, micro-batch 1 x 32 tokens, nothing checkpointed. Per token and layer the projections'
    2 x 36,864 FLOPs run at 1 / FP8_GEMM_SPEEDUP of their bf16 time, forward and backward (input gradients only),
    attention 2 x 32 x 64 = 4,096 forward and twice that backward, the head 2 x 2 x 256 x 64 = 65,536. Each of the four
    passes over a layer dequantizes its weights to FP8, 2.5 bytes a parameter, and no stacked matrix is reused. Rows
    quantized per token: each forward the inputs q/k/v 64 (once for the three), o 64, gate/up 64, down 128 = 320, each
    backward every output gradient 64 + 32 + 32 + 64 + 128 + 128 + 64 = 512; 2 x 2 + 1 = 5 bytes a value."""
    s = Setup(method="lora", quantized=True, rank=4, micro_batch=1, seq=32, fp8=True)
    gemm = 2 * LAYER_WEIGHTS / speed.FP8_GEMM_SPEEDUP
    flops = 32 * (2 * ((gemm + 4_096) + (gemm + 2 * 4_096)) + 65_536)
    assert speed.pass_bytes(TINY, s) == 2.5 * LAYER_WEIGHTS and speed.group_builds(TINY, s) == {}
    assert speed.fp8_row_values(TINY, s, (2, 2, 0), ()) == 2 * 320 + 2 * 512
    traffic = 4 * 2.5 * LAYER_WEIGHTS + 32 * (2 * 320 + 2 * 512) * 5
    assert speed.step_time(TINY, s, 1) == pytest.approx(flops / speed.THROUGHPUT + traffic / speed.HBM_BYTES_S)
    # a recomputation quantizes the inputs of the products it runs: q/k/v, o, gate/up; down's GEMM is skipped
    assert speed.fp8_row_values(TINY, s, (0, 0, 1), ("down_proj",)) == 192
    # without an NF4 base train.fp8 changes nothing
    lora = Setup(method="lora", rank=4, micro_batch=1, seq=32)
    assert speed.step_time(TINY, dataclasses.replace(lora, fp8=True), 1) == speed.step_time(TINY, lora, 1)


# The FP8 records (speed.FP8_GEMM_SPEEDUP's comment): each FP8 run and the bf16 run of the same configuration in
# the same call, by these fields
FP8_RECORDS = ["2026-12-06-h100-llama2-7b-qlora-fp8.jsonl"]
FP8_RECORDS += [f"2026-12-06-h100-qlora-fp8-{name}.jsonl" for name in ("beside-unsloth", "one-buffer", "targets")]
SAME_RUN = ("shape", "seq", "micro_batch", "grad_accum", "checkpointing", "checkpoint_layers")


def fp8_pairs() -> list[tuple[str, LlamaConfig, Setup, int, float]]:
    """(what, shape, the bf16 setup, grad_accum, FP8 tokens/s over bf16's) of every FP8 run on record that has a bf16
    run of its configuration in its call (benchmarks/train_bench.py: LoRA r 16 on the seven projections, every layer
    checkpointed where checkpointing is on)."""
    out = []
    for name in FP8_RECORDS:
        runs = [r for r in records(name) if r["config"].startswith("tunelab_")]
        for r in (r for r in runs if r["fp8"]):
            bf16 = [b for b in runs if not b["fp8"] and all(b[k] == r[k] for k in SAME_RUN)]
            if not bf16:  # one-buffer's offloaded run, targets' planned 8B run: their bf16 runs were in other calls
                continue
            (b,) = bf16
            shape = LlamaConfig.from_hf(SHAPES[r["shape"]])
            setup = Setup(method="lora", quantized=True, rank=16, micro_batch=r["micro_batch"], seq=r["seq"])
            if r["checkpointing"]:
                setup = dataclasses.replace(
                    setup, checkpointed=shape.num_layers, offload=r["checkpointing"] == "offload"
                )
            out.append((f"{name} {r['config']}", shape, setup, r["grad_accum"], r["tokens_per_s"] / b["tokens_per_s"]))
    return out


def test_the_fp8_factor_is_the_least_squares_fit_of_the_runs_on_record(monkeypatch):
    """FP8_GEMM_SPEEDUP was fitted to one run (7B, every layer offloaded: 1.081x). Ten pairs of an FP8 and a bf16 run
    of one configuration in one H100 call are on record now (1.053-1.107x); the factor whose predicted ratios are
    nearest theirs (least squares) is the one the planner uses, within 0.005, and every predicted ratio is within 4.5%
    of its measurement."""
    pairs = fp8_pairs()
    assert len(pairs) == 10, [what for what, *_ in pairs]
    factor = speed.FP8_GEMM_SPEEDUP

    def ratios(g: float) -> list[float]:
        monkeypatch.setattr(speed, "FP8_GEMM_SPEEDUP", g)
        return [
            speed.step_time(c, s, a) / speed.step_time(c, dataclasses.replace(s, fp8=True), a)
            for _, c, s, a, _ in pairs
        ]

    def squared_error(g: float) -> float:
        return sum((r - m) ** 2 for r, (*_, m) in zip(ratios(g), pairs))

    low, high = 1.0, 1.55  # at most what the GEMMs alone reached (benchmarks/fp8_gemm.py); the error is unimodal in g
    for _ in range(60):  # ternary search
        a, b = low + (high - low) / 3, high - (high - low) / 3
        low, high = (low, b) if squared_error(a) < squared_error(b) else (a, high)
    assert low == pytest.approx(factor, abs=0.005)
    predicted = ratios(factor)
    assert all(abs(p / m - 1) < 0.045 for p, (*_, m) in zip(predicted, pairs)), list(zip(predicted, pairs))
