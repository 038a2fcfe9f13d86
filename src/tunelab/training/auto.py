"""Training options chosen from the data and the method: the `auto` values of `TrainConfig`.

Each rule is a small pure function that returns the value and the reason for it, in words a user can check.
They are applied to the options left at `auto` in two stages: `plan_from_data` (micro_batch -> epochs -> optimizer
steps -> warmup and eval cadence: the data alone, known before the data checks) and `AutoPlan.with_lr` (the model's
width and depth, known once it is loaded); `resolve_auto` does both. The result is a TrainConfig in which every value
is concrete; an explicit value always wins, and the rules that depend on it use it. A resumed run does not choose
again: it keeps the values it started with (training/resume.py, `kept_auto`), so a change of rules between
versions cannot change a run halfway.

Where the numbers come from (README, "Defaults that learn", has them with links and our own CPU sweeps):
- lr, LoRA: 5e-4 x (2000 / hidden size)^0.781, the fit of Thinking Machines' tinker-cookbook
  (`hyperparam_utils.get_lr`: a base of 5e-5 times their LoRA factor of 10, Llama-family exponent) over their LoRA
  sweeps. It gives 2.9e-4 at hidden size 4096 (7-8B), beside QLoRA's 2e-4 (7B/13B) and 1e-4 (33B/65B), torchtune's
  3e-4 for Llama-3.1-8B and the tinker-cookbook sweep's later 3e-4 for 8B and 70B; and 1.3e-3 at the embedded
  model's 576, where our sweeps found the small FAQ sets learn (README table).
  Scaled by 32 / alpha: the update of a LoRA pair grows as alpha x lr at the start of training (B starts at zero
  and Adam's steps are of size lr whatever the rank; "LoRA Without Regret" fixes alpha at 32 and finds the best
  lr independent of the rank), and 32 is the alpha the fit was made with and our default.
- lr, full: a tenth of LoRA's ("LoRA Without Regret": the best LoRA rate is about 10x full fine-tuning's; 2.9e-5 at
  4096 matches the 2e-5 of Alpaca and torchtune's full 8B configs).
- lr, layers (the top k of L layers trained whole): full fine-tuning's rate x L/k, within the LoRA range: the change
  that L layers share in full fine-tuning is carried by k, so each must move L/k times as far. Our sweep on
  lamp_support (top 2 of 30) found full's rate learned 11% of the held-out facts, L/k x it 69%, the best of four.
- lr, DoRA: LoRA's rate. On the company-FAQ example DoRA and LoRA scored the same at lr 2e-3 (README); its authors'
  runs use 1e-4 to 2e-4 where LoRA uses 3e-4 (NVlabs/DoRA, commonsense reasoning on LLaMA-7B, Llama-2-7B,
  Llama-3-8B), so a 7B model may want half; not measured here.
- lr, task dpo: a fortieth of the rule above, the ratio of the alignment-handbook's zephyr-7b recipes (QLoRA r=16
  alpha 16: SFT 2e-4, DPO 5e-6; full: SFT 2e-5, DPO 5e-7). A preference loss drives the two answers' log-ratio apart
  without bound, so at the SFT rate it runs away: on examples/concise_dpo with the other options auto (126 steps) the
  loss was 0.0000 by step 9 at the SFT rate, a tenth of it left 30% of the held-out answers on topic, a fortieth
  shortened 70% of them to 25 words or fewer with 70% on topic (README).
- lr, task dpo with dpo.loss orpo: a quarter of the rule above. ORPO has no SFT stage before it: its loss is the
  chosen answer's NLL, an SFT loss, plus beta times a bounded odds-ratio term, so it learns the answers from the base
  model and does not run away as DPO's log-ratio does. Its authors train Mistral-7B (full) at 5e-6 (xfactlab/orpo
  scripts/run_mistral_orpo_beta.sh; the alignment-handbook's mistral-capybara ORPO recipe too), a quarter of the
  2e-5 of full SFT at 7B and ten times DPO's 5e-7 (the zephyr recipes above). A fortieth left the example's orpo run
  (README: at 3e-4, a quarter of the SFT rule's rate on the embedded model, the log odds ratio still rose slowly)
  learning ten times slower. TRL's ORPOConfig default (1e-6) and LLaMA-Factory's DPO examples (orpo as one
  pref_loss at the DPO rate) are generic defaults, not rates tuned for ORPO.
- micro_batch: 8 (the effective batch of Unsloth's notebooks, 2 x 4, and of the LoRA paper's GPT-2 runs); for a
  small set the power of two <= examples / 32, so that an epoch still has 32 to 63 micro-batches. OpenAI's fine-tuning
  API sizes its batch at ~0.2% of the examples (1 for sets under 500), and LoRA loses more than full fine-tuning
  at large batch sizes ("LoRA Without Regret"). Rows are counted, not the answers a chat row holds: counting
  ferry_chat's 2.3 answers a conversation (micro-batch 1, 195 steps instead of 132) was no better on three seeds.
- micro_batch, task grpo: the rows a step trains on are its prompts_per_step x num_generations answers; up to 8 of
  them a forward (the rule above would count prompts: 1 for a set of under 64 prompts, 64 forwards a step).
- epochs: 3, as OpenAI's fine-tuning API, Alpaca and LLaMA-Factory's examples, unless that gives fewer than 100
  optimizer steps: then enough epochs for 100 steps, at most 10 (OpenAI's rule raises epochs until 100 examples
  are seen, up to 25; LIMA trained 1,000 examples for 15 epochs). A large set (3 epochs over 25,000 examples) gets
  25,000 / examples epochs, at least 1, as in OpenAI's rule.
- warmup_ratio: 5% of the steps (QLoRA and Alpaca warm up 3%, LLaMA-Factory 10%), at most 100 steps (torchtune's
  warmup for its 8B LoRA configs).
- eval_every: with an eval split, at most 10 evaluations a run (every ceil(steps / 10) steps and at the last step: 6 to
  10 of them past 10 steps, every step of a shorter run), so that keep_best and the verdict have a curve to read and
  a run of any length spends at most 10 passes over its eval split.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from tunelab.config import AUTO, GrpoConfig, MethodConfig, TrainConfig
from tunelab.errors import counted

LORA_LR_AT_2000 = 5e-4  # LoRA's best lr at hidden size 2000 (tinker-cookbook: 5e-5 x 10)
LR_EXPONENT = 0.781  # how the best lr falls with the hidden size (tinker-cookbook's Llama-family fit)
REFERENCE_ALPHA = 32.0  # the LoRA alpha the lr fit was made with
LORA_OVER_FULL = 10.0  # best LoRA lr / best full fine-tuning lr ("LoRA Without Regret")
LR_RANGE = (1e-5, 3e-3)  # the LoRA lr is kept in here: tiny test models would otherwise get huge rates
PREFERENCE_DIVISOR = 40.0  # task dpo: SFT's rate over this (alignment-handbook's zephyr-7b recipes: 2e-4 -> 5e-6)
ORPO_DIVISOR = 4.0  # dpo.loss orpo: SFT's rate over this (ORPO's authors: 5e-6 for Mistral-7B, full SFT's 2e-5 / 4)

MICRO_BATCH = 8
STEPS_PER_EPOCH = 32  # a small set's micro-batch is cut until an epoch has about this many steps
TARGET_EPOCHS = 3
MIN_STEPS = 100
MAX_EPOCHS = 10
MAX_EXAMPLES_SEEN = 25_000
WARMUP_RATIO = 0.05
MAX_WARMUP_STEPS = 100
EVALS_PER_RUN = 10


@dataclass
class Choice:
    value: Any
    reason: str


@dataclass
class AutoPlan:
    """The training options with every `auto` replaced, and why each was chosen."""

    train: TrainConfig
    chosen: dict[str, Choice]  # dotted option name -> choice; only the options that were auto
    total_steps: int
    kept: dict[str, Choice] = field(default_factory=dict)  # choices a resumed run keeps (plan_from_data)

    def with_lr(
        self, method: MethodConfig, shape: ModelShape, task: str = "sft", dpo_loss: str = "sigmoid"
    ) -> AutoPlan:
        """The plan with the learning rate chosen too (when it is `auto`): it needs the model's shape."""
        if self.train.lr != AUTO:
            return self
        choice = self.kept.get("train.lr") or loraplus_noted(
            auto_lr(method, shape, task, dpo_loss), self.train.loraplus_lr_ratio
        )
        train = dataclasses.replace(self.train, lr=choice.value)
        return AutoPlan(train, {"train.lr": choice} | self.chosen, self.total_steps, self.kept)

    def describe(self) -> str:
        if not self.chosen:
            return "auto values: none (every training option was given)"
        lines = ["auto values (chosen from the data and the model; set an option to override):"]
        for name, c in self.chosen.items():
            lines.append(f"  {name:<24} = {shown(c.value):<10} {c.reason}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, dict]:
        return {name: {"value": c.value, "reason": c.reason} for name, c in self.chosen.items()}


@dataclass
class ModelShape:
    hidden_size: int | None
    num_layers: int | None


def model_shape(hf_config) -> ModelShape:
    """Hidden size and number of decoder layers of a transformers config (its text part for multimodal configs);
    None for what it does not say."""
    text = hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else hf_config

    def positive(name: str) -> int | None:
        value = getattr(text, name, None)
        return value if isinstance(value, int) and value > 0 else None

    return ModelShape(positive("hidden_size"), positive("num_hidden_layers"))


def shown(value: Any) -> str:
    """An auto value as train and check print it: a float to 3 significant digits (3 epochs, not 3.0)."""
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def pow2_floor(x: float) -> int:
    return 1 << max(0, math.floor(math.log2(x))) if x >= 1 else 1


def auto_lr(method: MethodConfig, shape: ModelShape, task: str = "sft", dpo_loss: str = "sigmoid") -> Choice:
    """Peak learning rate from the method, the model's width and depth, (LoRA) alpha and the task (dpo_loss: task
    dpo's dpo.loss)."""
    choice = _sft_lr(method, shape)
    if task != "dpo":
        return choice
    if dpo_loss == "orpo":  # an SFT loss plus a bounded preference term, with no SFT stage before it
        return Choice(
            _round(choice.value / ORPO_DIVISOR),
            f"task dpo, loss orpo: SFT's rate / {ORPO_DIVISOR:g}, as ORPO's authors (it is SFT and preference in one "
            f"stage; dpo's / {PREFERENCE_DIVISOR:g} learns ten times slower) ({choice.reason})",
        )
    return Choice(
        _round(choice.value / PREFERENCE_DIVISOR), f"task dpo: SFT's rate / {PREFERENCE_DIVISOR:g} ({choice.reason})"
    )


def loraplus_noted(choice: Choice, ratio: float | None) -> Choice:
    """The auto rate's reason, saying what LoRA+ (train.loraplus_lr_ratio) makes of it for the B matrices: the rule
    was chosen for plain LoRA and is not lowered for it (README, LoRA+ measures what that costs)."""
    if not ratio:
        return choice
    b = f"{choice.value * ratio:.3g}"
    return Choice(choice.value, f"{choice.reason}; LoRA+ trains B at {ratio:g} x this rate ({b}), not lowered for it")


def _sft_lr(method: MethodConfig, shape: ModelShape) -> Choice:
    if shape.hidden_size is None:
        lora, width = LORA_LR_AT_2000, "hidden size unknown: the rate for width 2000"
    else:
        h = shape.hidden_size
        lora = LORA_LR_AT_2000 * (2000 / h) ** LR_EXPONENT
        width = f"hidden size {h}: 5e-4 x (2000/{h})^{LR_EXPONENT}"
    if method.is_adapter:  # LoRA and DoRA
        scale = REFERENCE_ALPHA / method.alpha if method.alpha > 0 else 1.0
        lr = _clamp(lora * scale)
        alpha = f" x 32/alpha {method.alpha:g}" if scale != 1.0 else ""
        clamp = " (kept within 1e-5..3e-3)" if lr != lora * scale else ""
        return Choice(_round(lr), f"{'DoRA' if method.dora else 'LoRA'}, {width}{alpha}{clamp}")
    full = _clamp(lora) / LORA_OVER_FULL
    if method.name == "full" or not shape.num_layers or method.top_layers >= shape.num_layers:
        return Choice(_round(full), f"full fine-tuning: a tenth of LoRA's rate ({width})")
    # k of L layers must carry the change that L layers share in full fine-tuning: each moves L/k times as far.
    depth = shape.num_layers / method.top_layers
    lr = _clamp(full * depth)
    return Choice(
        _round(lr),
        f"the top {method.top_layers} of {shape.num_layers} layers: a tenth of LoRA's rate x {shape.num_layers}/"
        f"{method.top_layers} ({width})",
    )


def _clamp(lr: float) -> float:
    return min(max(lr, LR_RANGE[0]), LR_RANGE[1])


def _round(lr: float) -> float:
    return float(f"{lr:.3g}")


def auto_micro_batch(examples: int) -> Choice:
    if examples >= MICRO_BATCH * STEPS_PER_EPOCH:
        return Choice(MICRO_BATCH, f"{examples} examples, at least {MICRO_BATCH * STEPS_PER_EPOCH}")
    mb = min(MICRO_BATCH, pow2_floor(examples / STEPS_PER_EPOCH))
    if examples < STEPS_PER_EPOCH:  # even one example a micro-batch leaves fewer than ~32 steps an epoch
        return Choice(
            mb,
            f"small set: {counted(examples, 'example')}, fewer than {STEPS_PER_EPOCH}: one a micro-batch, {examples} an epoch",
        )
    return Choice(
        mb,
        f"small set: the power of two <= {examples} examples / {STEPS_PER_EPOCH}, so that an epoch has at least "
        f"{STEPS_PER_EPOCH} micro-batches ({math.ceil(examples / mb)})",
    )


def auto_rollout_micro_batch(grpo: GrpoConfig) -> Choice:
    """Task grpo: the rows a step trains on are its answers, not its prompts."""
    rows = grpo.prompts_per_step * grpo.num_generations
    mb = min(MICRO_BATCH, rows)
    return Choice(
        mb, f"grpo: a step's {grpo.prompts_per_step} x {grpo.num_generations} = {rows} answers, {mb} a forward"
    )


def steps_per_epoch(examples: int, micro_batch: int, grad_accum: int) -> int:
    """Optimizer steps in one pass: ceil(examples / micro_batch) micro-batches, grad_accum of them a step."""
    return max(1, math.ceil(math.ceil(examples / micro_batch) / grad_accum))


def auto_epochs(examples: int, per_epoch: int) -> Choice:
    if per_epoch * TARGET_EPOCHS < MIN_STEPS:
        epochs = min(MAX_EPOCHS, math.ceil(MIN_STEPS / per_epoch))
        cap = f", at most {MAX_EPOCHS}" if epochs == MAX_EPOCHS else ""
        return Choice(
            float(epochs), f"{counted(per_epoch, 'step')} an epoch: enough epochs for {MIN_STEPS} optimizer steps{cap}"
        )
    if examples * TARGET_EPOCHS > MAX_EXAMPLES_SEEN:
        epochs = max(1, MAX_EXAMPLES_SEEN // examples)
        return Choice(float(epochs), f"large set: about {MAX_EXAMPLES_SEEN:,} examples seen ({examples:,} a pass)")
    return Choice(float(TARGET_EPOCHS), f"{per_epoch} steps an epoch, {per_epoch * TARGET_EPOCHS} in all")


def auto_warmup(total_steps: int) -> Choice:
    ratio = float(f"{min(WARMUP_RATIO, MAX_WARMUP_STEPS / total_steps):.4g}")
    steps = int(ratio * total_steps)  # as training counts them from the saved ratio (recipe.py)
    return Choice(ratio, f"{steps} of {counted(total_steps, 'step')}: 5%, at most {MAX_WARMUP_STEPS}")


def auto_eval_every(total_steps: int, has_eval: bool) -> Choice:
    if not has_eval:
        return Choice(0, "no eval split (data.eval or data.eval_fraction): nothing to evaluate")
    every = max(1, math.ceil(total_steps / EVALS_PER_RUN))
    # training also evaluates the last step when `every` does not divide the steps (recipe.py: final_eval)
    end = "" if total_steps % every == 0 else f", the last at step {total_steps}"
    return Choice(
        every, f"{counted(math.ceil(total_steps / every), 'evaluation')} in {counted(total_steps, 'step')}{end}"
    )


def plan_from_data(
    train: TrainConfig,
    examples: int,
    has_eval: bool,
    kept: dict[str, Choice] | None = None,
    grpo: GrpoConfig | None = None,
) -> AutoPlan:
    """The options that depend on the data alone, in dependency order: micro_batch -> epochs -> optimizer steps ->
    warmup and the eval cadence. `examples` is the number of training rows (after packing). `lr` stays `auto` until
    `AutoPlan.with_lr`, once the model is loaded; the data checks before that read the micro-batch. `kept`: values
    for options still `auto` that are not chosen again (a resumed run trains on with the values it started with).
    `grpo` (task grpo): the examples are prompts, a step takes grpo.prompts_per_step of them and trains on their
    prompts x num_generations answers, so the micro-batch and the steps an epoch are counted from those."""
    kept = kept or {}
    chosen: dict[str, Choice] = {}
    values: dict[str, Any] = {}

    def pick(name: str, rule) -> Any:
        current = getattr(train, name)
        if current != AUTO:
            return current
        choice = kept.get(f"train.{name}") or rule()
        chosen[f"train.{name}"] = choice
        values[name] = choice.value
        return choice.value

    if grpo is None:
        micro_batch = pick("micro_batch", lambda: auto_micro_batch(examples))
        per_epoch = steps_per_epoch(examples, micro_batch, train.grad_accum)
    else:
        pick("micro_batch", lambda: auto_rollout_micro_batch(grpo))
        per_epoch = max(1, math.ceil(examples / grpo.prompts_per_step))  # one step per prompts_per_step prompts
    if train.max_steps:  # max_steps rules; epochs is not read, but must be a number in the resolved config
        values["epochs"] = float(TARGET_EPOCHS) if train.epochs == AUTO else train.epochs
        total = train.max_steps
    else:
        epochs = pick("epochs", lambda: auto_epochs(examples, per_epoch))
        total = max(1, math.ceil(epochs * per_epoch))
    pick("warmup_ratio", lambda: auto_warmup(total))
    pick("eval_every", lambda: auto_eval_every(total, has_eval))
    return AutoPlan(dataclasses.replace(train, **values), chosen, total, kept)


def resolve_auto(
    train: TrainConfig,
    method: MethodConfig,
    examples: int,
    shape: ModelShape,
    has_eval: bool,
    kept: dict[str, Choice] | None = None,
) -> AutoPlan:
    """Replace every `auto` in `train`: `plan_from_data`, then the learning rate from the method and the model."""
    return plan_from_data(train, examples, has_eval, kept).with_lr(method, shape)


def trained_value(extra: dict, name: str, configured: Any) -> Any:
    """The value a run trained with: the configured one, or for `auto` the choice recorded in run.json's extra
    (`RunInfo.extra`); the rule's default when a run recorded none."""
    if configured != AUTO:
        return configured
    recorded = (extra.get("auto") or {}).get(name)
    if recorded is not None:
        return recorded["value"]
    return {"train.micro_batch": MICRO_BATCH, "train.epochs": float(TARGET_EPOCHS)}.get(name, configured)
