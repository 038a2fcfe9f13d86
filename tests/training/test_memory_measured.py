"""The memory model against the peaks it was fitted to: 7B, 8B and 70B shapes on an H200 (torch 2.11, BENCHMARKS.md
2026-12-01), read from their records in benchmarks/results/. Whatever part is added must keep them.
"""

import dataclasses
import json
from pathlib import Path

from tunelab.models.llama_config import LlamaConfig
from tunelab.training.memory import GIB, Setup, estimate

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
LLAMA = dict(model_type="llama", hidden_size=4096, num_hidden_layers=32, num_attention_heads=32)
SHAPES = {  # as benchmarks/train_bench.py builds them
    "llama2-7b": LLAMA | dict(num_key_value_heads=32, intermediate_size=11008, vocab_size=32000),
    "llama3-8b": LLAMA | dict(num_key_value_heads=8, intermediate_size=14336, vocab_size=128256),
    "llama3-70b": dict(
        model_type="llama",
        hidden_size=8192,
        num_hidden_layers=80,
        num_attention_heads=64,
        num_key_value_heads=8,
        intermediate_size=28672,
        vocab_size=128256,
    ),
}


def measured_peaks() -> list[tuple[str, str, Setup, float]]:
    """(shape, what, setup, measured peak reserved GiB) of the H200 runs the model was fitted to (BENCHMARKS.md,
    2026-12-01): the 7B grid of benchmarks/plan_bench.py, and the 8B and 70B QLoRA steps after the head's chunk was
    sized to the vocabulary (train_bench.py, every layer recomputed, offloaded). All eager: two cuBLAS workspaces."""
    out = []
    for r in records("2026-12-01-h200-plan-predicted-vs-measured.jsonl"):
        if r["shape"] == "llama2-7b":  # its 8B rows ran with the head's chunk before it was sized to the vocabulary
            setup = Setup(quantized=r["method"] == "qlora", micro_batch=r["batch"], seq=r["seq"])
            setup = dataclasses.replace(setup, checkpointed=r["checkpointed"], offload=r["offload"])
            what = f"{r['method']} {r['seq']} x {r['batch']}, {r['checkpointed']} checkpointed, offload {r['offload']}"
            out.append((r["shape"], what, setup, r["measured_gib"]))
    for name in (
        "2026-12-01-h200-llama3-8b-qlora-head-chunk.jsonl",
        "2026-12-01-h200-llama3-70b-qlora-head-chunk.jsonl",
    ):
        for r in records(name):
            if r["config"].startswith("tunelab_qlora_nf4_offload"):
                layers = SHAPES[r["shape"]]["num_hidden_layers"]
                setup = Setup(quantized=True, micro_batch=r["batch"], seq=r["seq"], checkpointed=layers, offload=True)
                setup = dataclasses.replace(setup, optimizer=r["optimizer"])
                out.append((r["shape"], f"{r['config']} {r['optimizer']}", setup, r["train_peak_reserved_gib"]))
    return out


def records(name: str) -> list[dict]:
    return [json.loads(line) for line in (RESULTS / name).read_text().splitlines() if line.strip()]


def test_the_7b_8b_and_70b_peaks_stay_within_5_percent_of_their_measurements():
    """Counting the workspaces (64 MiB at these sizes) moved no calibrated peak away from its measurement."""
    ratios = {
        f"{shape} {what}": estimate(LlamaConfig.from_hf(SHAPES[shape]), setup).peak / GIB / measured
        for shape, what, setup, measured in measured_peaks()
    }
    assert len(ratios) == 18 + 1 + 2, sorted(ratios)  # the 7B grid, 8B, 70B with AdamW and adamw_8bit
    assert all(0.95 <= r <= 1.05 for r in ratios.values()), ratios
