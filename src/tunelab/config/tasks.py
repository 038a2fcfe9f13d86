"""The sections of the tasks other than sft: classify: (also read by task reward: the head's input and learning rate),
dpo:, and grpo: with its reward functions (RewardSpec, an entry of grpo.rewards written as a mapping)."""

from __future__ import annotations

from dataclasses import dataclass

from tunelab.config.options import opt


@dataclass
class ClassifyConfig:
    class_weights: str = opt(
        "none",
        "task classify: weigh each row's loss by its class; balanced gives class c the weight rows / (classes x rows of c)",
        choices=("none", "balanced"),
    )
    label_weights: dict[str, str] = opt(
        {}, "task classify: loss weight per label, e.g. {spam: 3.0}; it replaces class_weights for the labels it names"
    )
    prompt_format: str | None = opt(
        None,
        "tasks classify and reward: read each text input as this text, its {text} replaced by the row's text, e.g. "
        "'Request: {text}\\nDomain:' (the head reads the last token: a closing cue makes it one that sums up the text); "
        "kept with the run, so predict and eval read alike; in the flag, \\n is a newline, \\t a tab, \\\\ a backslash",
    )
    head_lr: float | None = opt(
        None, "tasks classify and reward: the head's learning rate (default: train.lr, as the adapters')", min=0.0
    )
    head_init: str = opt(
        "random",
        "task classify: the head's first weights: random, or label_words (label k's row is the mean of the LM head's "
        "rows of the label's tokens, _ read as a space: the head starts as the model's own scores of the label words)",
        choices=("random", "label_words"),
    )


PLACEHOLDER = "{text}"  # where classify.prompt_format puts the row's text


@dataclass
class DpoConfig:
    loss: str = opt(
        "sigmoid",
        "task dpo: the preference loss: sigmoid (DPO), ipo (IPO, per-token log ratios), simpo (SimPO, no reference), "
        "orpo (ORPO: the chosen answer's NLL plus an odds-ratio term, no reference and no SFT stage first), kto (KTO: "
        "unpaired rows of prompt, completion and a true/false label, README: KTO)",
        choices=("sigmoid", "ipo", "simpo", "orpo", "kto"),
    )
    beta: float = opt(
        0.1,
        "task dpo: how far the policy may move from the reference (larger: stays closer); simpo uses ~2; orpo: the "
        "weight lambda of the odds-ratio term beside the NLL (TRL's ORPOConfig.beta, whose default 0.1 this keeps); kto: "
        "the scale of the log ratio inside its sigmoid (TRL's KTOConfig default 0.1 too)",
        min=0.0,
    )
    label_smoothing: float = opt(
        0.0, "task dpo: assumed share of pairs whose preference is wrong (sigmoid and simpo losses)", min=0.0, max=0.5
    )
    simpo_gamma: float = opt(0.5, "task dpo, loss simpo: the target reward margin gamma", min=0.0)
    desirable_weight: float = opt(
        1.0,
        "task dpo, loss kto: the loss weight lambda_D of a row labelled true (desirable); keep desirable_weight x "
        "desirable rows / (undesirable_weight x undesirable rows) within 1 to 4/3 (the KTO paper's advice)",
        min=0.0,
    )
    undesirable_weight: float = opt(
        1.0, "task dpo, loss kto: the loss weight lambda_U of a row labelled false (undesirable)", min=0.0
    )


@dataclass
class RewardSpec:
    """One reward function of task grpo, written as a mapping in grpo.rewards (or just its kind, e.g. `contains`)."""

    kind: str = opt(
        "contains",
        "contains (the answer holds the row's expected text), equals (the answer, or the pattern's first group, equals it once normalised), regex (1 when pattern matches the answer), length (minus the share of answer tokens beyond max_tokens), function (module:function), model (a task: reward run)",
        choices=("contains", "equals", "regex", "length", "function", "model"),
    )
    weight: float = opt(1.0, "the reward's weight in the total (the weighted sum)", min=-1e6, max=1e6)
    name: str | None = opt(
        None, "its name in metrics and messages (default: the kind, or the function's name; numbered when repeated)"
    )
    column: str = opt("expected", "contains and equals: the row's column holding the expected answer")
    pattern: str | None = opt(
        None, "regex: the pattern an answer must match (re.search); equals: a pattern whose first group is compared"
    )
    max_tokens: int = opt(
        64, "length: answers up to this many tokens get 0, longer ones -(tokens - max_tokens) / max_tokens", min=1
    )
    function: str | None = opt(
        None,
        "function: module:function, importable, called as f(prompt, answer, row) -> float (prompt: what the model was asked)",
    )
    run: str | None = opt(None, "model: the run directory of a finished `task: reward` run")


@dataclass
class GrpoConfig:
    num_generations: int = opt(
        4, "task grpo: answers sampled per prompt (the group G its advantages are relative to)", min=2
    )
    prompts_per_step: int = opt(
        4,
        "task grpo: prompts per optimizer step; the step trains on prompts x num_generations answers in micro-batches of train.micro_batch rows",
        min=1,
    )
    max_new_tokens: int = opt(64, "task grpo: the longest answer sampled (and answered greedily on eval)", min=1)
    temperature: float = opt(1.0, "task grpo: sampling temperature of the rollouts", min=0.01)
    top_p: float = opt(
        1.0,
        "task grpo: nucleus sampling of the rollouts: keep the smallest set of tokens of this mass; it shapes the "
        "sampling only: the loss scores each answer token under the whole softmax(logits / temperature), as TRL does",
        min=0.01,
        max=1.0,
    )
    beta: float = opt(
        0.04,
        "task grpo: weight of the KL term to the reference: the base (the adapter off), or for full, layers and a "
        "continued adapter the starting weights; 0: no reference at all",
        min=0.0,
    )
    epsilon: float = opt(0.2, "task grpo: clip the probability ratio to [1 - epsilon, 1 + epsilon]", min=0.0)
    rewards: list[str | RewardSpec] = opt(
        ["contains"],
        "task grpo: reward functions, summed with their weights: kinds or mappings {kind, weight, name, column, pattern, max_tokens, function, run} (README: GRPO)",
    )
    on_reward_error: str = opt(
        "stop",
        "task grpo: a reward function that raises or returns a non-number: stop the run (exit 2), or skip the prompt's group, counted in metrics",
        choices=("stop", "skip"),
    )
