"""The planner's choice: the fastest candidate whose predicted peak fits, the user's options kept, a clear refusal
when nothing fits, and a measured step moving the choice."""

import dataclasses

import pytest

from tunelab.models.llama_config import LlamaConfig
from tunelab.training.memory import GIB, estimate
from tunelab.training.memory_setup import Setup
from tunelab.training.plan import BudgetError, Fixed, calibrate, candidates, plan, require_fit
from tunelab.training.speed import step_time

LLAMA2_7B = LlamaConfig.from_hf(
    dict(
        model_type="llama",
        hidden_size=4096,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        intermediate_size=11008,
        vocab_size=32000,
        max_position_embeddings=4096,
    )
)
QLORA = Setup(method="lora", quantized=True, rank=16, seq=2048)


def test_a_large_budget_keeps_every_activation_at_the_largest_micro_batch():
    result = plan(LLAMA2_7B, QLORA, 80 * GIB, global_batch=4)
    c = result.chosen.candidate
    assert (c.micro_batch, c.grad_accum, c.checkpointed, c.offload) == (4, 1, 0, False)


def test_a_tight_budget_checkpoints_only_as_many_layers_as_it_must():
    budget = 20 * GIB
    result = plan(LLAMA2_7B, QLORA, budget, global_batch=4)
    chosen = result.chosen
    assert chosen.peak <= budget
    assert 0 < chosen.candidate.checkpointed < 32  # selective
    # one layer fewer checkpointed (same micro-batch and offload) would not fit
    fewer = dataclasses.replace(
        QLORA,
        micro_batch=chosen.candidate.micro_batch,
        checkpointed=chosen.candidate.checkpointed - 1,
        offload=chosen.candidate.offload,
    )
    assert estimate(LLAMA2_7B, fewer).peak > budget
    # nothing predicted faster fits
    assert all(s.peak > budget for s in result.candidates if s.step_s < chosen.step_s)
    assert "->" in result.table() and "fits" in result.reason


def test_recomputation_costs_time_and_small_micro_batches_are_cpu_bound():
    base = dataclasses.replace(QLORA, micro_batch=4)
    assert step_time(LLAMA2_7B, dataclasses.replace(base, checkpointed=32), 1) > step_time(LLAMA2_7B, base, 1)
    one = dataclasses.replace(QLORA, micro_batch=1, checkpointed=32)
    assert 4 * step_time(LLAMA2_7B, one, 1) > step_time(LLAMA2_7B, dataclasses.replace(one, micro_batch=4), 1)


def test_explicit_options_win():
    result = plan(LLAMA2_7B, QLORA, 80 * GIB, 4, Fixed(micro_batch=2, checkpointing=True, offload=False))
    c = result.chosen.candidate
    assert (c.micro_batch, c.grad_accum, c.checkpointed, c.offload) == (2, 2, 32, False)
    c = plan(LLAMA2_7B, QLORA, 80 * GIB, 4, Fixed(checkpoint_layers=5)).chosen.candidate
    assert c.checkpointed == 5


@pytest.mark.parametrize("budget", [80 * GIB, 12 * GIB])
def test_method_layers_plans_no_checkpointing_or_offload_of_its_frozen_layers(budget):
    """The frozen layers below method layers' trained ones save nothing for backward, so checkpointing or offloading
    them changes nothing, yet the table listed "checkpointing 1/32 layers, offload" rows; candidates differ now."""
    setup = Setup(method="layers", top_layers=4, seq=2048)
    result = plan(LLAMA2_7B, setup, budget, global_batch=8)
    shown = [s.candidate for s in result.candidates]
    assert shown and all(c.checkpointed == 0 or c.checkpointed > 28 for c in shown), result.table()
    assert all(c.checkpointed > 28 for c in shown if c.offload), result.table()
    assert "checkpointing 1/32 layers" not in result.table()
    assert any(c.offload for c in shown)  # offloading the trained layers' inputs is still a candidate
    every = candidates(32, 8, Fixed(), cuda=True, frozen=28)
    assert {c.checkpointed for c in every} == {0, 29, 30, 31, 32} and all(
        c.checkpointed > 28 for c in every if c.offload
    )


def test_a_budget_below_the_minimum_names_it_and_its_largest_part():
    result = plan(LLAMA2_7B, dataclasses.replace(QLORA, quantized=False), 8 * GIB, global_batch=4)
    assert result.chosen is None
    assert result.smallest.candidate.micro_batch == 1 and result.smallest.candidate.checkpointed == 32
    with pytest.raises(BudgetError) as err:
        require_fit(result, "option 'train.gpu_memory'")
    message = str(err.value)
    assert "no configuration fits 8.00 GiB" in message and "weights: decoder (bf16)" in message
    assert f"{result.smallest.peak / GIB:.2f} GiB" in message
    assert "method.quantize_base nf4" in message and "adamw_8bit" in message and "adamw_torch" not in message


@pytest.mark.parametrize(
    ("setup", "given", "not_given"),
    [
        (QLORA, ["data.max_length", "adamw_8bit"], ["quantize_base", "adamw_torch", "method.name"]),
        (
            dataclasses.replace(QLORA, quantized=False, optimizer="adamw_8bit"),
            ["quantize_base nf4"],
            ["train.optimizer"],
        ),
        (Setup(method="full"), ["method.name lora", "adamw_8bit", "adamw_torch"], ["quantize_base"]),
        (Setup(method="full", shards=2), ["adamw_torch"], ["adamw_8bit"]),
        (Setup(method="layers", top_layers=8), ["fewer method.top_layers"], ["method.name"]),
    ],
)
def test_a_budget_below_the_minimum_advises_only_what_the_run_has_not_taken(setup, given, not_given):
    """The refusal always advised method.quantize_base nf4 and train.optimizer adamw_8bit, also to a QLoRA run whose
    NF4 weights were its largest part, and to an fsdp2 run that refuses adamw_8bit; it now names only what would
    change something for the run planned."""
    result = plan(LLAMA2_7B, setup, 1 * GIB, global_batch=4, ranks=setup.shards)
    with pytest.raises(BudgetError) as err:
        require_fit(result, "budget")
    advice = str(err.value).split("lower what dominates it")[1]
    assert all(g in advice for g in given) and not any(n in advice for n in not_given), advice


def test_a_measured_step_moves_the_choice():
    budget = 24 * GIB
    first = plan(LLAMA2_7B, QLORA, budget, global_batch=4)
    # the GPU measured 30% more than predicted for the chosen configuration
    measured = first.chosen.estimate.static_bytes + int(1.3 * first.chosen.estimate.dynamic_bytes)
    scale = calibrate(first.chosen.estimate, measured).activation_scale
    second = plan(LLAMA2_7B, QLORA, budget, global_batch=4, calibration=scale)
    assert second.chosen.peak <= budget
    assert second.chosen.candidate.checkpointed > first.chosen.candidate.checkpointed or (
        second.chosen.candidate.micro_batch < first.chosen.candidate.micro_batch
    )


def test_no_offload_off_cuda():
    result = plan(LLAMA2_7B, QLORA, 24 * GIB, 4, cuda=False)
    assert not any(s.candidate.offload for s in result.candidates)


def _built(tmp_config):
    import torch

    from tunelab.models.llama import LlamaForCausalLM
    from tunelab.training.build import BuiltModel

    hf = dict(model_type="llama", hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=2, vocab_size=200, max_position_embeddings=128)  # fmt: skip
    model = LlamaForCausalLM(LlamaConfig.from_hf(hf))
    return BuiltModel(model, "fast", hf, torch.device("cpu"), torch.bfloat16, 0, 0)  # as on a GPU with bf16


def _auto(**train):
    from tunelab.config import MethodConfig, RunConfig, TrainConfig
    from tunelab.training.auto import plan_from_data

    cfg = RunConfig(train=TrainConfig(**train), method=MethodConfig(r=4))
    return cfg, plan_from_data(cfg.train, 1000, False)


def test_auto_values_on_the_cpu_turn_checkpointing_off_and_say_why():
    from tunelab.training.plan import plan_memory

    cfg, auto = _auto()
    built = _built(None)
    out, result = plan_memory(auto, cfg, built, seq=24)
    assert result is None
    assert out.train.checkpointing is False and out.train.offload_activations is False
    assert "budget" in out.chosen["train.checkpointing"].reason
    assert built.model.gradient_checkpointing is False


def test_auto_values_with_a_budget_checkpoint_only_what_must_be_and_apply_it_to_the_model():
    from tunelab.training.plan import plan_memory

    # Between the all-checkpointed minimum and the no-checkpointing peak of the tiny model at 8 x 64 tokens
    cfg, auto = _auto(micro_batch=8, gpu_memory="2.2MiB")
    built = _built(None)
    out, result = plan_memory(auto, cfg, built, seq=64)
    assert result is not None and result.chosen.peak <= 2.2 * 1024**2
    k = result.chosen.candidate.checkpointed
    assert 0 < k < 3 and out.train.checkpointing is True and out.train.checkpoint_layers == k
    assert built.model.gradient_checkpointing is True and built.model.checkpoint_layers == k
    assert out.train.micro_batch == 8  # explicit: kept


def test_an_auto_micro_batch_shrinks_when_memory_binds_and_grad_accum_keeps_the_batch():
    from tunelab.training.plan import plan_memory

    cfg, auto = _auto(checkpointing=False, gpu_memory="1.5MiB")
    assert auto.train.micro_batch == 8
    out, result = plan_memory(auto, cfg, _built(None), seq=64)
    assert out.train.micro_batch < 8 and out.train.micro_batch * out.train.grad_accum == 8
    assert "does not fit" in out.chosen["train.micro_batch"].reason


def test_grpo_is_planned_over_the_steps_answers_and_keeps_grad_accum_1():
    """grpo's step trains on prompts_per_step x num_generations answers (here 4 x 4) in micro-batches, with
    train.grad_accum 1; the planner took micro_batch x grad_accum (8 x 1) as the step's rows, so it predicted one
    micro-batch's training for the step, and where memory bound it set grad_accum 4 beside micro_batch 2, which makes
    a grpo step sample four times the prompts. The step's 16 answers are planned, in 8 micro-batches of 2, and
    grad_accum stays 1."""
    from tunelab.config import MethodConfig, RunConfig, TrainConfig
    from tunelab.training.auto import plan_from_data
    from tunelab.training.plan import plan_memory

    cfg = RunConfig(task="grpo", train=TrainConfig(checkpointing=False, gpu_memory="1.4MiB"), method=MethodConfig(r=4))
    auto = plan_from_data(cfg.train, 1000, False, grpo=cfg.grpo)
    assert auto.train.micro_batch == 8
    out, result = plan_memory(auto, cfg, _built(None), seq=64, prompt=16)
    chosen = result.chosen.candidate
    assert (out.train.micro_batch, out.train.grad_accum) == (2, 1)
    assert (chosen.micro_batch, chosen.grad_accum) == (2, 8)
    assert result.chosen.tokens_per_s == pytest.approx(16 * 64 / result.chosen.step_s)
    assert "micro_batch 2 (8 a step), no checkpointing" in result.table()
    assert out.chosen["train.micro_batch"].reason == "memory: 8 does not fit; the step's answers in 8 micro-batches"
    # with room, the auto micro_batch stays: it is cut where memory binds, never raised past it
    roomy = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, gpu_memory="1GiB"))
    auto = plan_from_data(roomy.train, 1000, False, grpo=cfg.grpo)
    out, result = plan_memory(auto, roomy, _built(None), seq=64, prompt=16)
    assert out.train.micro_batch == 8 and result.chosen.candidate.micro_batch == 8
    assert not out.chosen["train.micro_batch"].reason.startswith("memory")
    assert max(s.candidate.micro_batch for s in result.candidates) == 8


def test_an_auto_micro_batch_is_never_raised_past_its_value():
    """With grad_accum 4 beside an auto micro_batch of 8, the planner weighed micro-batches up to the 32 rows of the
    step and, where 32 was fastest, train set it, saying "memory: 8 does not fit"."""
    from tunelab.training.plan import plan_memory

    cfg, auto = _auto(grad_accum=4, checkpointing=False, gpu_memory="1GiB")
    out, result = plan_memory(auto, cfg, _built(None), seq=64)
    assert (out.train.micro_batch, out.train.grad_accum) == (8, 4)
    assert out.chosen["train.micro_batch"].reason == "1000 examples, at least 256"  # the data's choice, kept
    assert max(s.candidate.micro_batch for s in result.candidates) == 8


def test_auto_below_the_minimum_refuses():
    from tunelab.training.plan import plan_memory

    cfg, auto = _auto(gpu_memory="100KiB")
    with pytest.raises(BudgetError, match="train.gpu_memory"):
        plan_memory(auto, cfg, _built(None), seq=64)


def test_with_room_for_every_activation_a_smaller_micro_batch_beats_recomputation():
    # Measured on an H200 (BENCHMARKS.md, planner speed model): 7B QLoRA at micro-batch 2 without checkpointing ran
    # 17,109 tokens/s in 23.1 GiB; micro-batch 4 needs half its layers recomputed to fit 24 GiB.
    result = plan(LLAMA2_7B, QLORA, 24 * GIB, global_batch=4)
    c = result.chosen.candidate
    assert (c.micro_batch, c.grad_accum, c.checkpointed) == (2, 2, 0)


def test_graphs_make_small_micro_batches_gpu_bound():
    # With CUDA graphs the host no longer binds micro-batch 1 (BENCHMARKS.md: 124 ms a step measured, 122 predicted),
    # so at 16 GiB micro-batch 1 without recomputation beats micro-batch 2 with half the layers recomputed.
    graphed = dataclasses.replace(QLORA, graphs=True)
    c = plan(LLAMA2_7B, graphed, 16 * GIB, global_batch=4).chosen.candidate
    assert (c.micro_batch, c.checkpointed) == (1, 0)
    eager = plan(LLAMA2_7B, QLORA, 16 * GIB, global_batch=4).chosen.candidate
    assert eager.micro_batch == 2 and eager.checkpointed > 0
    one = dataclasses.replace(graphed, micro_batch=1)
    assert step_time(LLAMA2_7B, one, 1) < step_time(LLAMA2_7B, dataclasses.replace(one, graphs=False), 1)
    # offload waits on host copies: no graphs there
    off = dataclasses.replace(one, checkpointed=32, offload=True)
    assert step_time(LLAMA2_7B, off, 1) == step_time(LLAMA2_7B, dataclasses.replace(off, graphs=False), 1)


def test_the_planner_counts_graphs_only_where_train_replays_them():
    """plan and train's planner timed a run of several processes, or one with NEFTune, as replayed from CUDA
    graphs, which train turns off there: its tokens/s were those of a graphed run, and it favoured small
    micro-batches for a host time the run then paid."""
    from tunelab.config import RunConfig
    from tunelab.training.plan_setup import config_setup

    cfg = RunConfig()
    cfg = dataclasses.replace(cfg, method=dataclasses.replace(cfg.method, dropout=0.0))
    assert config_setup(cfg, 64).graphs
    assert not config_setup(cfg, 64, world=2).graphs  # several processes synchronise inside backward
    neftune = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, neftune_alpha=5.0))
    assert not config_setup(neftune, 64).graphs
    packed = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, packing=True))
    assert not config_setup(packed, 64).graphs


def test_the_table_marks_the_choice_when_host_bound_candidates_tie():
    """For a small model every candidate of a micro-batch is host-bound, so their step times tie: the choice broke
    the tie by fewer recomputed layers, the table by the smaller peak, and showed a row that was not chosen and no
    mark at all (`tunelab plan` on the embedded model at 24 GiB)."""
    small = LlamaConfig.from_hf(
        dict(
            model_type="llama",
            hidden_size=576,
            num_hidden_layers=30,
            num_attention_heads=9,
            num_key_value_heads=3,
            intermediate_size=1536,
            vocab_size=49152,
            max_position_embeddings=8192,
        )
    )
    setup = dataclasses.replace(QLORA, quantized=False, seq=64, graphs=True)  # replayed: host time per micro-batch only
    result = plan(small, setup, 24 * GIB, global_batch=4)
    assert result.chosen.candidate.checkpointed == 0
    assert [s.candidate for s in result.candidates].count(result.chosen.candidate) == 1
    assert sum(line.lstrip().startswith("->") for line in result.table().splitlines()) == 1


def test_more_checkpoint_layers_than_the_model_has_are_refused(tiny_overrides):
    """checkpoint_layers 99 on a 2-layer model was cut to 2 without a word (method.top_layers 99 was refused)."""
    from tunelab.errors import ConfigError
    from tunelab.training.recipe import train

    with pytest.raises(ConfigError, match="option 'train.checkpoint_layers' is 99, but the model has 2 layers"):
        train(None, tiny_overrides | {"train.checkpointing": True, "train.checkpoint_layers": 99, "train.max_steps": 1})


def test_layers_to_recompute_on_the_generic_path_are_refused():
    """train.checkpoint_layers 1 with checkpointing true on the generic path (transformers' model) recomputed every
    layer, the count dropped without a word: its checkpointing is all layers or none."""
    import torch

    from tunelab.errors import ConfigError
    from tunelab.training.build import BuiltModel
    from tunelab.training.plan import plan_memory

    class Generic:
        enabled = False

        def gradient_checkpointing_enable(self, **kwargs):
            self.enabled = True

    hf = dict(model_type="llama", num_hidden_layers=3)
    built = BuiltModel(Generic(), "generic", hf, torch.device("cpu"), torch.float32, 0, 0)
    cfg, auto = _auto(checkpointing=True, checkpoint_layers=1)
    with pytest.raises(ConfigError, match=r"'train.checkpoint_layers' is 1, .* trains on the generic path"):
        plan_memory(auto, cfg, built, seq=24)
    cfg, auto = _auto(checkpointing=True)
    plan_memory(auto, cfg, built, seq=24)
    assert built.model.enabled  # all layers, as asked


def test_train_under_fsdp2_plans_each_ranks_share_and_the_ranks_share_the_micro_batches():
    """train --nproc 4 with fsdp2 planned each GPU as holding the whole model: a budget that fits each rank's
    quarter of the weights and training state was refused."""
    from tunelab.config import MethodConfig, RunConfig, TrainConfig
    from tunelab.training.auto import plan_from_data
    from tunelab.training.plan import plan_memory

    train = TrainConfig(gpu_memory="1.2MiB", checkpointing=False, offload_activations=False)
    cfg = RunConfig(train=train, method=MethodConfig(name="full"))
    with pytest.raises(BudgetError, match="no configuration fits 1.2 MiB"):
        plan_memory(plan_from_data(cfg.train, 1000, False), cfg, _built(None), seq=64)
    out, result = plan_memory(plan_from_data(cfg.train, 1000, False), cfg, _built(None), 64, 4, "fsdp2")
    assert (
        result.chosen.peak <= 1.2 * 2**20
        and "fsdp2: gathered weights (root, two layers)" in result.chosen.estimate.static
    )
    assert out.train.micro_batch * out.train.grad_accum == 8  # the batch kept
    with pytest.raises(BudgetError, match="no configuration fits 1.2 MiB"):  # ddp: every rank holds it all
        plan_memory(plan_from_data(cfg.train, 1000, False), cfg, _built(None), 64, 4, "ddp")


def test_the_ranks_share_a_steps_micro_batches():
    one = plan(LLAMA2_7B, QLORA, 80 * GIB, global_batch=8, fixed=Fixed(micro_batch=2))
    four = plan(LLAMA2_7B, QLORA, 80 * GIB, global_batch=8, fixed=Fixed(micro_batch=2), ranks=4)
    assert four.chosen.step_s == pytest.approx(one.chosen.step_s / 4)  # 4 micro-batches: one on each rank


def test_train_notes_a_gpu_shared_with_other_processes(monkeypatch):
    import types

    import torch

    from tunelab.training.build import BuiltModel
    from tunelab.training.plan import plan_memory

    mib = 2**20
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: types.SimpleNamespace(
        total_memory=100 * mib, name="Test GPU", major=9, minor=0))  # fmt: skip
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1 * mib, 100 * mib))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 2 * mib)  # the loaded model's
    cfg, auto = _auto(micro_batch=8, gpu_memory="90MiB")  # the tiny model and two 32 MiB cuBLAS workspaces fit
    cpu = _built(None)
    built = BuiltModel(cpu.model, "fast", cpu.hf_config, torch.device("cuda", 0), torch.float32, 0, 0)
    result = plan_memory(auto, cfg, built, seq=64)[1]
    assert result.notes == [
        "note: the budget 90.0 MiB is more than the 3.0 MiB of GPU memory this process can have now: other processes "
        "hold 97.0 MiB of its 100.0 MiB, and a run started now may run out of it."
    ]


def test_the_breakdown_keeps_its_sizes_in_one_column():
    """A part's name longer than the column (fsdp2's optimizer step) pushed its size out of line with the others."""
    full = Setup(method="full", seq=16, shards=2)  # short rows: the peak is at the optimizer step
    text = plan(LLAMA2_7B, full, 80 * GIB, global_batch=4, ranks=2).breakdown()
    sizes = text.splitlines()[1:]
    assert any("optimizer step: fp32 copies of one chunk of trained shards (1/2)" in line for line in sizes), text
    assert len({line.index(" GiB") for line in sizes}) == 1, text


def test_the_plan_counts_the_weights_and_activations_in_the_dtype_the_model_trains_in(monkeypatch):
    """A full run in fp32 (auto on a GPU without bf16) was planned as if its weights were bf16: 2 bytes a weight
    short, and its activations half their size."""
    import torch

    from tunelab.config import MethodConfig
    from tunelab.training.plan import plan_memory
    from tunelab.training.plan_report import planned_dtype

    cfg, auto = _auto(micro_batch=8, gpu_memory="1GiB")
    cfg = dataclasses.replace(cfg, method=MethodConfig(name="full"))
    bf16 = plan_memory(auto, cfg, _built(None), seq=64)[1].chosen.estimate
    fp32 = plan_memory(auto, cfg, dataclasses.replace(_built(None), dtype=torch.float32), seq=64)[1].chosen.estimate
    assert fp32.static["weights: decoder (fp32)"] == 2 * bf16.static["weights: decoder (bf16)"]
    assert fp32.saved["activations: kept layers"] > 1.9 * bf16.saved["activations: kept layers"]  # rstd: fp32 in both
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    assert planned_dtype(cfg, torch.device("cuda")) == torch.float32  # what train picks there
    assert planned_dtype(dataclasses.replace(cfg, method=MethodConfig()), torch.device("cuda")) == torch.float16
    assert planned_dtype(cfg, None) == torch.bfloat16  # planned for another machine


@pytest.mark.parametrize(
    ("gpu", "fp32_tflops", "bf16_tflops"),
    [("NVIDIA H100 80GB HBM3", 67, 989), ("Tesla T4", 8.1, 65), ("NVIDIA A100-SXM4-80GB", 19.5, 312), (None, 67, 989)],
)
def test_an_fp32_run_is_predicted_at_the_gpus_fp32_matmul_rate(monkeypatch, gpu, fp32_tflops, bf16_tflops):
    """The speed model counted every matmul at the 16-bit rate, so `tunelab plan` showed an fp32 run (full on a T4,
    model.dtype fp32) 8-15x faster than it trains. GPU-bound (no weight traffic, no host time), its step now takes
    the datasheets' bf16 / fp32 TFLOP/s ratio longer; the tokens/s the table shows fall alike."""
    import tunelab.training.speed as speed

    monkeypatch.setattr(speed, "HBM_BYTES_S", float("inf"))  # no time for weight traffic
    monkeypatch.setattr(speed, "HOST_S_PER_LAYER", 0.0)
    monkeypatch.setattr(speed, "HOST_S_PER_RECOMPUTE", 0.0)
    bf16 = Setup(method="full", micro_batch=4, seq=1024)
    fp32 = dataclasses.replace(bf16, dtype="fp32")
    ratio = step_time(LLAMA2_7B, fp32, 1, gpu) / step_time(LLAMA2_7B, bf16, 1, gpu)
    assert ratio == pytest.approx(bf16_tflops / fp32_tflops, rel=1e-9)
    fixed = Fixed(micro_batch=4, checkpointing=False, offload=False)
    fast, slow = (plan(LLAMA2_7B, s, 400 * GIB, 4, fixed, gpu_name=gpu).chosen for s in (bf16, fp32))
    assert fast.tokens_per_s / slow.tokens_per_s == pytest.approx(bf16_tflops / fp32_tflops, rel=1e-9)


def test_grpo_counts_the_samplers_kv_cache_by_hand():
    """The memory model left out the KV cache grpo's sampler fills before each step, so a grpo run with many long
    answers was planned to fit and ran out of memory while sampling. Llama-2-7B (32 layers, 32 kv heads of 128),
    bf16, 4 prompts x 8 answers of a 200-token prompt + 256 new tokens: 2 x 32 layers x 32 answers x 32 heads x 456
    x 128 x 2 bytes = 7,650,410,496 bytes, alive while no activation is; the peak when it is the largest phase."""
    from tunelab.config import RunConfig
    from tunelab.training.plan_setup import config_setup

    cfg = RunConfig(task="grpo")
    cfg = dataclasses.replace(cfg, grpo=dataclasses.replace(cfg.grpo, prompts_per_step=4, num_generations=8))
    cfg = dataclasses.replace(cfg, grpo=dataclasses.replace(cfg.grpo, max_new_tokens=256))
    setup = config_setup(cfg, 456, prompt=200)
    assert (setup.sampled, setup.sample_len, setup.sample_prompt) == (32, 456, 200)
    assert config_setup(cfg, 456, world=3, prompt=200).sampled == 11  # each rank samples its ceil(32 / 3)
    assert config_setup(RunConfig(), 456, prompt=200).sampled == 0  # sft samples nothing
    est = estimate(LLAMA2_7B, dataclasses.replace(setup, method="lora", quantized=True, micro_batch=1))
    cache = 2 * 32 * 32 * 32 * 456 * 128 * 2
    assert cache == 7_650_410_496
    prefill = est.transient["grpo sampler: prefill of 32 prompts x 200 tokens"]  # its own test below
    assert est.peak_phase == "sampling" and est.transient == {
        "grpo sampler: KV cache of 32 answers x 456 tokens": cache,
        "grpo sampler: prefill of 32 prompts x 200 tokens": prefill,
    }
    assert est.saved == {} and est.peak == est.static_bytes + cache + prefill
    unsampled = estimate(LLAMA2_7B, dataclasses.replace(setup, method="lora", quantized=True, sampled=0))
    assert unsampled.peak < est.peak and unsampled.peak_phase != "sampling"


def test_grpo_counts_the_samplers_prefill_beside_its_kv_cache_by_hand():
    """The sampling phase counted the KV cache alone, though the prefill runs every layer over all the step's
    prompts at once beside it (its head on the last position only: no (B, T, V) logits). Llama-2-7B, bf16, 32
    prompts of 200 tokens (P = 6,400): the cache's mask 32 x 200^2 = 1,280,000; rope 2 x 6,400 x 128 x 2 =
    3,276,800; the MLP, the largest, 2 x 6,400 x (3 x 4096 + 3 x 11008) = 579,993,600 (the attention
    2 x 6,400 x 3 x 8192 + 32 x 200^2 x 3 = 318,412,800; o_proj 2 x 6,400 x (3 x 4096 + 3 x 4096 + 2 x 4096) =
    419,430,400)."""
    from tunelab.training.memory import sampler_prefill_bytes

    setup = Setup(method="lora", sampled=32, sample_len=456, sample_prompt=200)
    assert sampler_prefill_bytes(LLAMA2_7B, setup) == 1_280_000 + 3_276_800 + 579_993_600 == 584_550_400


def test_a_long_prompt_with_grouped_query_heads_makes_the_prefills_attention_mask_its_largest_part():
    """Eight query heads a key head, 2 prompts of 1,000 tokens (P = 2,000), d 64, m 128, head_dim 8, bf16: the
    attention's masks, 2 x 8 x 1000^2 x (1 bool + 2 bf16) = 48,000,000, outgrow the MLP's 2 x 2,000 x (192 + 384) =
    2,304,000. Total: the cache's mask 2,000,000 + rope 2 x 2,000 x 8 x 2 = 64,000 + the attention
    2 x 2,000 x (128 + 128 + 16) + 48,000,000 = 49,088,000."""
    from tunelab.training.memory import sampler_prefill_bytes

    c = LlamaConfig("llama", 256, 64, 128, num_layers=2, num_heads=8, num_kv_heads=1, head_dim=8)
    setup = Setup(sampled=2, sample_len=1010, sample_prompt=1000)
    assert sampler_prefill_bytes(c, setup) == 2_000_000 + 64_000 + 49_088_000


def test_grpo_sampling_time_by_hand():
    """The speed model predicted grpo's training step alone, though the sampler first decodes every answer one token
    at a time. Llama-2-7B, bf16 LoRA, 16 answers of 128 new tokens after 128-token prompts, on an H200. A decode step
    reads the weights, 32 x 202,375,168 x 2 + 32,000 x 4,096 x 2 (head) = 13,214,154,752 bytes, and the KV cache,
    2 x 32 x 16 x 32 x 256 x 128 x 2 = 2,147,483,648, at 4e12 bytes/s (its 16 x (32 x (2 x 202,375,168 + 4 x 256 x
    4,096) + 2 x 2 x 131,072,000) FLOPs take less at 540e12), plus 32 layers x 0.28 ms. The prefill: 16 x 128 tokens
    x 32 layers x (2 x 202,375,168 + 2 x 128 x 4,096) FLOPs and 16 head rows x 2 x 131,072,000, and one weight pass."""
    from tunelab.training.speed import sample_time

    setup = Setup(method="lora", sampled=16, sample_len=256, sample_prompt=128)
    weights = 32 * 202_375_168 * 2 + 32_000 * 4_096 * 2
    assert weights == 13_214_154_752
    decode = (weights + 2_147_483_648) / 4e12 + 32 * 0.00028
    prefill = (16 * 128 * 32 * (2 * 202_375_168 + 2 * 128 * 4_096) + 16 * 2 * 131_072_000) / 540e12 + weights / 4e12
    assert sample_time(LLAMA2_7B, setup, "NVIDIA H200") == pytest.approx(prefill + 128 * decode, rel=1e-12)
    assert sample_time(LLAMA2_7B, setup, "NVIDIA H200") == pytest.approx(1.691, abs=1e-3)  # 1.49 s measured
    # An H100 SXM reads at 3.35/4.8 of the H200's rate (datasheets); the sft setup samples nothing.
    h100 = prefill - weights / 4e12 + weights / (4e12 * 3.35 / 4.8) + 128 * (decode - 32 * 0.00028) * 4.8 / 3.35
    assert sample_time(LLAMA2_7B, setup, "NVIDIA H100 80GB HBM3") == pytest.approx(h100 + 128 * 32 * 0.00028)
    assert sample_time(LLAMA2_7B, Setup(method="lora"), "NVIDIA H200") == 0.0


def test_grpo_plan_counts_the_sampling_in_the_step_and_says_so():
    """`tunelab plan` showed a grpo run's tokens/s as if the step were its training alone; the sampling is now part
    of the predicted step, the tokens/s are of the whole step, and a line under the table says how much of it."""
    from tunelab.training.speed import fixed_time, sample_time

    trained = Setup(method="lora", quantized=True, seq=384)
    sampled = dataclasses.replace(trained, sampled=64, sample_len=384, sample_prompt=128)
    fixed = Fixed(micro_batch=4, checkpointing=False, offload=False)
    alone, grpo = (plan(LLAMA2_7B, s, 140 * GIB, 16, fixed, gpu_name="NVIDIA H200") for s in (trained, sampled))
    sampling = sample_time(LLAMA2_7B, dataclasses.replace(sampled, micro_batch=4), "NVIDIA H200")
    assert grpo.chosen.sample_s == pytest.approx(sampling) and sampling > 4
    assert grpo.chosen.step_s == pytest.approx(alone.chosen.step_s + sampling)
    assert grpo.chosen.tokens_per_s == pytest.approx(4 * 384 * 4 / grpo.chosen.step_s)
    assert f"grpo's sampling takes {sampling:.2f} s of its {grpo.chosen.step_s:.2f} s" in grpo.table()
    assert "sampling" not in alone.table()
    # with a reference (grpo.beta > 0) the answers go through the model once more before the step, and the line says so
    referenced = dataclasses.replace(sampled, fixed_forwards=1)
    ref = plan(LLAMA2_7B, referenced, 140 * GIB, 16, fixed, gpu_name="NVIDIA H200").chosen
    forward = fixed_time(LLAMA2_7B, dataclasses.replace(referenced, micro_batch=4), "NVIDIA H200")
    assert ref.fixed_s == pytest.approx(forward) and forward > 0.1
    assert ref.step_s == pytest.approx(grpo.chosen.step_s + forward)
    assert (
        f"and the forwards for the answers' fixed log-probs {forward:.2f} s of its {ref.step_s:.2f} s"
        in plan(LLAMA2_7B, referenced, 140 * GIB, 16, fixed, gpu_name="NVIDIA H200").table()
    )


def test_method_dora_is_planned_as_an_adapter_not_as_full_fine_tuning():
    """method.name dora fell to the memory model's full fine-tuning branch: every weight trained, with AdamW state
    for all of them, so a 7B DoRA run was refused for 89 GiB (62 of them optimizer state) it does not need. It is
    planned as the adapter it is, as lora with use_dora is."""
    from tunelab.config import RunConfig
    from tunelab.training.memory import training_state_bytes
    from tunelab.training.plan_setup import config_setup

    cfg = RunConfig()
    dora = dataclasses.replace(cfg, method=dataclasses.replace(cfg.method, name="dora"))
    use_dora = dataclasses.replace(cfg, method=dataclasses.replace(cfg.method, use_dora=True))
    assert config_setup(dora, 2048) == config_setup(use_dora, 2048)
    assert config_setup(dora, 2048) == dataclasses.replace(config_setup(cfg, 2048), dora=True)  # and DoRA's costs
    assert config_setup(dora, 2048).method == "lora"
    state = training_state_bytes(LLAMA2_7B, config_setup(dora, 2048))
    assert state["optimizer (adamw)"] < 0.5 * GIB


def test_a_packed_fp32_run_is_planned_with_the_reference_attention_s_dense_masks():
    """data.packing reached no part of the plan, so a packed fp32 run (the reference's masked attention, one (N, N)
    mask a layer) was planned as a padded one: 7B shapes, full in fp32, one row of 4096 tokens, every layer kept,
    each saves its 4096 x 4096 x 4-byte mask, 64 MiB, 2 GiB over 32 layers."""
    import torch

    from tunelab.config import RunConfig
    from tunelab.training.plan_setup import config_setup

    cfg = RunConfig()
    packed = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, packing=True))
    assert config_setup(packed, 4096).packed and not config_setup(cfg, 4096).packed
    full = dataclasses.replace(config_setup(cfg, 4096, dtype=torch.float32), method="full")
    kept = [
        estimate(LLAMA2_7B, s).saved["activations: kept layers"] for s in (full, dataclasses.replace(full, packed=True))
    ]
    assert kept[1] - kept[0] == 32 * 4096 * 4096 * 4  # Llama-2-7B has as many kv heads as heads: no repeats
