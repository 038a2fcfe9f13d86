"""The planner with train.fp8: its peaks count FP8's buffers (`training.memory_fp8`), its speeds the FP8 GEMMs by the
factor fitted to the FP8 runs on record, which the plan says; `tunelab plan` shows both for a 7B shape without a GPU."""

import dataclasses
import json
import shutil

from tunelab.cli import main
from tunelab.training.memory import GIB, estimate
from tunelab.training.plan import plan

from .test_plan import LLAMA2_7B, QLORA
from .test_plan_cli import _config

FP8 = dataclasses.replace(QLORA, fp8=True)


def test_the_choice_counts_fp8s_memory_and_says_what_its_speeds_rest_on():
    # the least memory of 7B QLoRA (micro-batch 1, every layer checkpointed and offloaded): 4.92 GiB in bf16, which
    # keeps a 16-bit dequantization buffer and the stacked group matrix; FP8 keeps neither, 4.81 GiB
    budget = int(4.87 * GIB)
    bf16 = plan(LLAMA2_7B, QLORA, budget, global_batch=4)
    assert bf16.chosen is None and bf16.notes == []
    fp8 = plan(LLAMA2_7B, FP8, budget, global_batch=4)
    chosen = fp8.chosen
    assert chosen is not None and (chosen.candidate.checkpointed, chosen.candidate.offload) == (32, True)
    setup = dataclasses.replace(FP8, micro_batch=chosen.candidate.micro_batch, checkpointed=32, offload=True)
    assert chosen.peak == estimate(LLAMA2_7B, setup).peak
    parts = chosen.estimate.components()
    assert "fp8: weight scales" in parts and "scratch: nf4 dequantization" not in parts
    assert (
        len(fp8.notes) == 1
        and "estimated from ten H100 runs beside bf16 ones (BENCHMARKS.md 2026-12-06" in fp8.notes[0]
    )
    # the same candidate is faster in FP8 where the GPU binds (micro-batch 1 is host-bound in both: the same speed)
    roomy = {s.candidate: s.tokens_per_s for s in plan(LLAMA2_7B, QLORA, 80 * GIB, 4).candidates}
    for s in plan(LLAMA2_7B, FP8, 80 * GIB, 4).candidates:
        assert s.tokens_per_s > roomy[s.candidate] or (
            s.candidate.micro_batch == 1 and s.tokens_per_s == roomy[s.candidate]
        )


def test_tunelab_plan_shows_fp8s_memory_for_a_7b_shape(tiny_overrides, tiny_model_dir, tmp_path, capsys):
    """A model folder with a 7B config.json and no weights, planned on this machine (no GPU) for 24 GiB."""
    folder = tmp_path / "7b"
    shutil.copytree(tiny_model_dir, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    hf = json.loads((folder / "config.json").read_text())
    hf |= dict(
        hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
        intermediate_size=11008, head_dim=128,
    )  # fmt: skip
    (folder / "config.json").write_text(json.dumps(hf))
    qlora = tiny_overrides | {"model.name": str(folder), "method.quantize_base": "nf4", "method.dropout": 0.0}
    outs = {}
    for fp8 in (False, True):
        config = _config(tmp_path, qlora | {"train.fp8": fp8})
        assert main(["plan", config, "--gpu-memory", "6GiB"]) == 0
        outs[fp8] = capsys.readouterr().out
    assert "model: 32 layers, hidden 4096" in outs[True]
    assert "fp8: weight scales" in outs[True] and "scratch: nf4 dequantization" not in outs[True]
    assert "scratch: nf4 dequantization" in outs[False] and "fp8:" not in outs[False]
    assert "train.fp8: the tokens/s take the base GEMMs 1.13x faster" in outs[True]
    assert "estimated from ten H100 runs beside bf16 ones" in outs[True]


def test_a_grpo_plan_says_its_sampling_is_timed_as_in_bf16():
    """grpo's sampler runs FP8 products too but is timed as bf16's (decoding in FP8 was never measured): the plan's
    note said only that the GEMMs are faster, while the sampling, most of a grpo step, took the same time either way."""
    grpo = dataclasses.replace(FP8, seq=384, sampled=64, sample_prompt=128, sample_len=384, fixed_forwards=1)
    said = plan(LLAMA2_7B, grpo, 24 * GIB, global_batch=64)
    assert len(said.notes) == 1 and "grpo's sampling runs FP8 products too but is timed as in bf16" in said.notes[0]
    assert said.chosen.sample_s == plan(LLAMA2_7B, dataclasses.replace(grpo, fp8=False), 24 * GIB, 64).chosen.sample_s
    assert "grpo's sampling" not in plan(LLAMA2_7B, FP8, 24 * GIB, global_batch=4).notes[0]
