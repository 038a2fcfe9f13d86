"""The auto rules on synthetic dataset sizes, methods and model widths: the values chosen, and that explicit values
win. The numbers asserted are the rules' own (training/auto.py states them and where they come from)."""

import dataclasses

import pytest

from tunelab.config import GrpoConfig, MethodConfig, RunConfig, TrainConfig, load_config
from tunelab.errors import ConfigError
from tunelab.training.auto import ModelShape, auto_lr, model_shape, plan_from_data, resolve_auto
from tunelab.training.plan import longest_row

ALL_AUTO = {name: "auto" for name in ("lr", "epochs", "micro_batch", "warmup_ratio", "eval_every")}


def _plan(examples, method="lora", hidden=576, has_eval=False, **train):
    config = TrainConfig(**(ALL_AUTO | train))
    return resolve_auto(config, MethodConfig(name=method), examples, ModelShape(hidden, 30), has_eval)


def test_defaults_are_auto_and_explicit_values_parse():
    cfg = load_config(None).config.train
    assert (cfg.lr, cfg.epochs, cfg.micro_batch, cfg.warmup_ratio, cfg.eval_every) == ("auto",) * 5
    cfg = load_config(None, {"train.lr": "3e-4", "train.micro_batch": "4", "train.epochs": "auto"}).config.train
    assert (cfg.lr, cfg.micro_batch, cfg.epochs) == (3e-4, 4, "auto")
    with pytest.raises(ConfigError, match="'train.epochs' must be float or 'auto', got 'lots'"):
        load_config(None, {"train.epochs": "lots"})


@pytest.mark.parametrize(
    "method, hidden, layers, expected",
    [
        ("lora", 576, 30, 1.32e-3),  # the embedded SmolLM2-135M
        ("lora", 2048, 16, 4.91e-4),  # 1B class
        ("lora", 4096, 32, 2.86e-4),  # 7-8B class (Llama-2-7B, Llama-3-8B; Qwen2.5-7B's 3584 gets 3.15e-4)
        ("lora", 8192, 80, 1.67e-4),  # 70B class
        ("full", 576, 30, 1.32e-4),
        ("full", 4096, 32, 2.86e-5),
        ("layers", 576, 30, 1.98e-3),  # top 2 of 30: full's rate x 15
        ("layers", 4096, 32, 4.58e-4),  # top 2 of 32: x 16
        ("layers", 576, None, 1.32e-4),  # depth unknown: full's rate
        ("lora", None, None, 5e-4),  # no hidden size in the config: the rate at width 2000
        ("lora", 64, 2, 3e-3),  # a tiny test model: kept at the top of the range
    ],
)
def test_lr_by_method_width_and_depth(method, hidden, layers, expected):
    choice = auto_lr(MethodConfig(name=method), ModelShape(hidden, layers))
    assert choice.value == pytest.approx(expected, rel=0.01)
    assert choice.reason.startswith("LoRA") == (method == "lora")


def test_layers_lr_follows_the_share_of_layers_trained():
    shape = ModelShape(576, 30)
    two, six = (auto_lr(MethodConfig(name="layers", top_layers=k), shape) for k in (2, 6))
    assert two.value == pytest.approx(3 * six.value, rel=0.01) and "top 6 of 30" in six.reason
    assert (
        auto_lr(MethodConfig(name="layers", top_layers=30), shape).value
        == auto_lr(MethodConfig(name="full"), shape).value
    )
    assert auto_lr(MethodConfig(name="layers", top_layers=1), ModelShape(64, 30)).value == 3e-3  # capped


def test_dpo_takes_a_fortieth_of_the_sft_rate_after_its_range():
    for method, shape in ((MethodConfig(), ModelShape(4096, 32)), (MethodConfig(name="full"), ModelShape(576, 30))):
        sft, dpo = auto_lr(method, shape), auto_lr(method, shape, "dpo")
        assert dpo.value == pytest.approx(sft.value / 40, rel=0.01) and dpo.reason.startswith(
            "task dpo: SFT's rate / 40"
        )
    assert auto_lr(MethodConfig(), ModelShape(4096, 32), "dpo").value == pytest.approx(
        7.15e-6, rel=0.01
    )  # 2.86e-4 / 40: not floored
    assert auto_lr(MethodConfig(), ModelShape(576, 30), "grpo") == auto_lr(MethodConfig(), ModelShape(576, 30))


def test_lora_lr_scales_with_alpha():
    base = auto_lr(MethodConfig(alpha=32), ModelShape(4096, 32)).value
    assert auto_lr(MethodConfig(r=8, alpha=16), ModelShape(4096, 32)).value == pytest.approx(2 * base, rel=0.01)
    assert auto_lr(MethodConfig(r=64, alpha=128), ModelShape(4096, 32)).value == pytest.approx(base / 4, rel=0.01)
    assert "32/alpha 16" in auto_lr(MethodConfig(r=8, alpha=16), ModelShape(4096, 32)).reason


@pytest.mark.parametrize(
    "examples, micro_batch, epochs, steps",
    [
        (20, 1, 5.0, 100),  # tiny: batch 1, 20 steps an epoch, 5 epochs to reach 100 steps
        (64, 2, 4.0, 128),  # 32 steps an epoch: 3 epochs would be 96 < 100
        (120, 2, 3.0, 180),
        (184, 4, 3.0, 138),
        (300, 8, 3.0, 114),  # 300 >= 8 x 32: the full micro-batch; 38 steps an epoch
        (8, 1, 10.0, 80),  # 8 steps an epoch would need 13 epochs for 100 steps: capped at 10
        (5_000, 8, 3.0, 1875),
        (12_000, 8, 2.0, 3000),  # 3 x 12,000 > 25,000 examples seen: 25,000 // 12,000 = 2 epochs
        (100_000, 8, 1.0, 12500),
    ],
)
def test_batch_epochs_and_steps_by_dataset_size(examples, micro_batch, epochs, steps):
    plan = _plan(examples)
    assert (plan.train.micro_batch, plan.train.epochs, plan.total_steps) == (micro_batch, epochs, steps)
    assert set(plan.chosen) == {
        "train.lr",
        "train.micro_batch",
        "train.epochs",
        "train.warmup_ratio",
        "train.eval_every",
    }


def test_the_micro_batch_of_a_set_under_32_examples_does_not_claim_32_steps_an_epoch():
    """A set of 8 examples was told its micro-batch of 1 gave '~32 steps an epoch', beside '8 steps an epoch'."""
    reason = _plan(8).chosen["train.micro_batch"].reason
    assert reason == "small set: 8 examples, fewer than 32: one a micro-batch, 8 an epoch"
    assert "so that an epoch has at least 32 micro-batches (60)" in _plan(120).chosen["train.micro_batch"].reason


def test_the_micro_batch_of_a_small_set_says_the_micro_batches_it_gives():
    """185 examples were told their micro-batch of 4 gave '~32 steps an epoch', beside '47 steps an epoch'."""
    plan = _plan(185)
    assert plan.chosen["train.micro_batch"].reason == (
        "small set: the power of two <= 185 examples / 32, so that an epoch has at least 32 micro-batches (47)"
    )
    assert plan.chosen["train.epochs"].reason.startswith("47 steps an epoch")


def test_warmup_is_five_percent_at_most_100_steps():
    assert _plan(184).train.warmup_ratio == 0.05  # 6 of 138 steps
    long = _plan(100_000)  # 12,500 steps
    assert long.train.warmup_ratio == pytest.approx(100 / 12_500)
    assert int(long.train.warmup_ratio * long.total_steps) == 100
    from tunelab.training.auto import auto_warmup

    # the saved ratio is rounded to 4 digits: 100 / 2002 -> 0.04995, which training turns into 99 steps (it said 100)
    for total in (2002, 2004, 12_345, 184):
        choice = auto_warmup(total)
        assert choice.reason.startswith(f"{int(choice.value * total)} of {total} steps")


def test_eval_cadence_needs_an_eval_split():
    assert _plan(184).train.eval_every == 0
    assert _plan(184, has_eval=True).train.eval_every == 14  # ceil(138 / 10)
    from tunelab.training.auto import auto_eval_every

    # every 14: at 14, 28, ..., 126 and at the end, as training evaluates (it said 9, leaving out the last)
    assert auto_eval_every(138, True).reason == "10 evaluations in 138 steps, the last at step 138"
    assert auto_eval_every(140, True).reason == "10 evaluations in 140 steps"  # every 14 ends on 140
    assert auto_eval_every(2, True).reason == "2 evaluations in 2 steps"  # said 10
    assert auto_eval_every(1, True).reason == "1 evaluation in 1 step"  # said "1 evaluations in 1 steps"


def test_the_auto_eval_cadence_runs_at_most_10_evaluations_whatever_the_runs_length():
    """auto picks an interval of 1 for a run of 10 steps or fewer, evaluating every step, which is at most 10
    evaluations. Over every length to 5,000 steps, the evaluations training runs (the loop at each multiple of the
    interval, training/loop.py; then the end's where the interval does not divide it, training/finish.py) number at
    most EVALS_PER_RUN, at least 6 past EVALS_PER_RUN steps, and as many as the reason says."""
    from tunelab.training.auto import EVALS_PER_RUN, auto_eval_every

    for total in range(1, 5_001):
        choice = auto_eval_every(total, True)
        every = choice.value
        evaluated = [step for step in range(1, total + 1) if step % every == 0]
        evaluated += [total] if total % every else []
        assert len(evaluated) <= EVALS_PER_RUN and (total <= EVALS_PER_RUN or len(evaluated) >= 6), (total, every)
        assert every == 1 or total > EVALS_PER_RUN, (total, every)
        assert choice.reason.startswith(f"{len(evaluated)} evaluation"), (total, choice.reason)


def test_a_set_of_one_example_is_told_in_the_singular():
    """A one-row set was told "small set: 1 examples" and "1 steps an epoch"."""
    plan = _plan(1)
    assert plan.chosen["train.micro_batch"].reason.startswith("small set: 1 example, fewer than 32")
    assert plan.chosen["train.epochs"].reason.startswith("1 step an epoch: ")


def test_explicit_values_win_and_feed_the_rules():
    plan = _plan(184, lr=1e-4, micro_batch=8, warmup_ratio=0.0)
    assert (plan.train.lr, plan.train.micro_batch, plan.train.warmup_ratio) == (1e-4, 8, 0.0)
    assert plan.train.epochs == 5.0  # 23 steps an epoch at the given micro-batch 8: 5 epochs for 100 steps
    assert set(plan.chosen) == {"train.epochs", "train.eval_every"}
    plan = _plan(184, grad_accum=2)  # 46 micro-batches of 4 -> 23 steps an epoch
    assert (plan.train.micro_batch, plan.train.epochs, plan.total_steps) == (4, 5.0, 115)


def test_max_steps_replaces_the_epochs_rule():
    plan = _plan(184, max_steps=20)
    assert plan.total_steps == 20 and "train.epochs" not in plan.chosen
    assert int(plan.train.warmup_ratio * 20) == 1


def test_nothing_auto_says_so():
    fixed = dict(lr=1e-4, micro_batch=4, epochs=2.0, warmup_ratio=0.1, eval_every=0)
    plan = _plan(184, **fixed)
    assert plan.chosen == {} and "none" in plan.describe()
    assert dataclasses.asdict(plan.train) == dataclasses.asdict(TrainConfig(**fixed))


def test_describe_and_record_name_each_choice_with_its_reason():
    plan = _plan(64, has_eval=True)
    text = plan.describe()
    for name in plan.chosen:
        assert name in text
    assert "small set" in text and "100 optimizer steps" in text
    record = plan.to_dict()
    assert record["train.micro_batch"] == {"value": 2, "reason": plan.chosen["train.micro_batch"].reason}


def test_model_shape_reads_text_configs():
    from transformers import LlamaConfig

    assert model_shape(LlamaConfig(hidden_size=576, num_hidden_layers=30)) == ModelShape(576, 30)

    class NoShape:
        pass

    assert model_shape(NoShape()) == ModelShape(None, None)


def test_grpo_counts_a_steps_answers_for_the_micro_batch_and_its_prompts_for_the_epochs():
    grpo = GrpoConfig(prompts_per_step=8, num_generations=8)
    plan = plan_from_data(TrainConfig(), 40, False, grpo=grpo)  # 40 prompts: 5 steps an epoch
    assert plan.train.micro_batch == 8 and "8 x 8 = 64 answers" in plan.chosen["train.micro_batch"].reason
    assert plan.train.epochs == 10 and "5 steps an epoch" in plan.chosen["train.epochs"].reason  # 100 steps, capped
    small = plan_from_data(TrainConfig(), 40, False, grpo=GrpoConfig(prompts_per_step=2, num_generations=3))
    assert small.train.micro_batch == 6  # all of a step's answers in one forward
    assert plan_from_data(TrainConfig(), 40, False).train.micro_batch == 1  # the sft rule counts rows


def test_a_grpo_row_is_its_prompt_and_answer_for_the_memory_planner():
    class Row:
        input_ids = [0] * 100

    sft = RunConfig()
    grpo = dataclasses.replace(sft, task="grpo", grpo=GrpoConfig(max_new_tokens=256))
    assert longest_row(sft, [Row()]) == 100
    assert longest_row(grpo, [Row()]) == 356
    short = dataclasses.replace(grpo, data=dataclasses.replace(grpo.data, max_length=300))
    assert longest_row(short, [Row()]) == 300  # the rollout cuts the answer at data.max_length


def test_orpo_takes_a_quarter_of_the_sft_rate_not_dpos_fortieth():
    """ORPO is SFT and preference in one stage (its loss is the chosen answer's NLL plus a bounded term): its authors
    train at a quarter of full SFT's rate, where DPO after SFT takes a fortieth."""
    for method, shape in ((MethodConfig(), ModelShape(4096, 32)), (MethodConfig(name="full"), ModelShape(576, 30))):
        sft, orpo = auto_lr(method, shape), auto_lr(method, shape, "dpo", "orpo")
        assert orpo.value == pytest.approx(sft.value / 4, rel=0.01)
        assert orpo.reason.startswith("task dpo, loss orpo: SFT's rate / 4, as ORPO's authors")
        assert auto_lr(method, shape, "dpo", "sigmoid") == auto_lr(method, shape, "dpo")  # dpo keeps its fortieth
    assert auto_lr(MethodConfig(), ModelShape(576, 30), "sft", "orpo") == auto_lr(MethodConfig(), ModelShape(576, 30))


def test_the_auto_rate_says_what_loraplus_makes_of_it_for_b():
    """The rule is LoRA's and is not lowered for LoRA+: its reason says B's rate, ratio x the rate chosen."""
    plain = _plan(184)
    plus = _plan(184, loraplus_lr_ratio=16.0)
    lr = plus.chosen["train.lr"]
    assert lr.value == plain.chosen["train.lr"].value  # the same rate: the rule is unchanged
    assert lr.reason.startswith(plain.chosen["train.lr"].reason + "; ")
    assert f"LoRA+ trains B at 16 x this rate ({lr.value * 16:.3g})" in lr.reason
    assert "LoRA+" not in plain.chosen["train.lr"].reason
    assert "LoRA+ trains B at 16" in plus.describe()
