"""The planner's speed model (training/speed.py) against hand-computed figures on a tiny model."""

import dataclasses

import pytest

import tunelab.training.speed as speed
from tunelab.models.llama_config import LlamaConfig
from tunelab.training.memory import Setup

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


@pytest.mark.parametrize(("dtype", "bytes_moved"), [("bf16", 5), ("fp16", 5), ("fp32", 10)])
def test_the_weight_traffic_is_in_the_runs_dtype(no_host, dtype, bytes_moved):
    """The weight-copy term counted 16-bit copies (5 bytes a parameter and pass) for an fp32 run too, whose copies
    are fp32: 10 bytes. Two layers, each passed over twice (forward, backward): 4 x 36,864 parameters x 5 or 10
    bytes = 737,280 or 1,474,560 bytes at 4e12 bytes/s."""
    s = Setup(method="full", micro_batch=1, seq=32, dtype=dtype)
    traffic = 4 * LAYER_WEIGHTS * bytes_moved
    assert traffic == {5: 737_280, 10: 1_474_560}[bytes_moved]
    assert speed.step_time(TINY, s, 1, "NVIDIA H200") == pytest.approx(_flops_s(s) + traffic / 4e12, rel=1e-12)
    # a checkpointed layer passes over its weights once more
    ckpt = dataclasses.replace(s, checkpointed=1)
    more = speed.step_time(TINY, ckpt, 1, "NVIDIA H200") - speed.step_time(TINY, s, 1, "NVIDIA H200")
    recompute = 32 * (77_824 - 2 * 128 * 64) / (speed.THROUGHPUT * (67 / 989 if dtype == "fp32" else 1.0))
    assert more == pytest.approx(recompute + LAYER_WEIGHTS * bytes_moved / 4e12, rel=1e-9)
