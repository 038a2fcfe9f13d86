"""The train: section (TrainConfig: the loop, its schedule, checkpoints, memory and trackers) and the eval: section
(EvalConfig: the questions answered after training).

Two values of train: options need more than their type to be valid, and their readers sit here beside the options:
the trackers of train.report_to (their libraries and install hints) and the sizes of train.gpu_memory (`parse_size`,
which the memory planner reads as well).
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass

from tunelab.config.options import Auto, opt
from tunelab.errors import ConfigError


@dataclass
class TrainConfig:
    epochs: float | Auto = opt(
        "auto",
        "passes over the training data (ignored when max_steps is set); auto: 3, more for a small set to reach 100 optimizer steps (at most 10), fewer for a large one (about 25,000 examples seen)",
        min=0.01,
    )
    max_steps: int | None = opt(None, "optimizer steps to run; overrides epochs", min=1)
    micro_batch: int | Auto = opt(
        "auto",
        "examples per forward pass; auto: 8, or for a small set the power of two <= examples / 32 (at least 1); task grpo: a step's prompts x num_generations answers, at most 8",
        min=1,
    )
    grad_accum: int = opt(1, "micro-batches per optimizer step", min=1)
    lr: float | Auto = opt(
        "auto",
        "peak learning rate; auto: LoRA 5e-4 x (2000 / hidden size)^0.78 x 32 / alpha (1.3e-3 at hidden 576, 2.9e-4 at 4096), full a tenth of LoRA's, layers full's x layers / top_layers; task dpo a fortieth of that, a quarter with dpo.loss orpo",
        min=0.0,
    )
    warmup_ratio: float | Auto = opt(
        "auto",
        "fraction of steps spent warming the learning rate up linearly from 0; auto: 0.05, at most 100 steps",
        min=0.0,
        max=1.0,
    )
    scheduler: str = opt("cosine", "learning-rate schedule after warmup", choices=("constant", "linear", "cosine"))
    loraplus_lr_ratio: float | None = opt(
        None,
        "LoRA+ (Hayou et al. 2024): train each adapter's B matrix at train.lr x this ratio, its A at train.lr (the paper suggests 16); DoRA's magnitude stays at train.lr (it starts at the base's row norms, not at zero like B, and LoRA+'s analysis is of the product BA), a head at classify.head_lr; every group follows the schedule. Named as in PEFT, LLaMA-Factory and Axolotl, under train: beside the lr it multiplies. Methods lora and dora only (default: off)",
        min=1.0,
    )
    weight_decay: float = opt(0.0, "AdamW weight decay (not applied to norms and biases)", min=0.0)
    optimizer: str = opt(
        "adamw",
        "adamw keeps its two moments in fp32 (8 bytes per trainable parameter; 10 for a bf16 weight of method full or layers, whose Kahan compensation keeps the small updates bf16 would round away); adamw_8bit in block-wise 8-bit codes (2.03 bytes, 4.03 for a bf16 weight; tensors under 4096 values stay fp32): 0.30 -> 0.08 GiB for r=16 LoRA on all linears of a 7B model; adamw_torch is torch's AdamW as it is, moments in the weights' dtype and no compensation (4 bytes for a bf16 weight: less memory, but most of its small updates round away; the same as adamw for LoRA's fp32 adapters)",
        choices=("adamw", "adamw_8bit", "adamw_torch"),
    )
    max_grad_norm: float = opt(1.0, "clip the gradient norm to this (0 disables clipping)", min=0.0)
    group_by_length: bool = opt(
        False,
        "put rows of similar length into the same micro-batch (less padding; the order stays seeded per epoch)",
    )
    seed: int = opt(42, "seed for initialisation, shuffling and dropout", min=0, max=2**63 - 1)
    neftune_alpha: float = opt(
        0.0,
        "NEFTune: uniform noise of scale alpha / sqrt(length x hidden size) on the input embeddings of each training forward (the paper uses 5 to 15; 0: off); task sft",
        min=0.0,
    )
    eval_every: int | Auto = opt(
        "auto",
        "evaluate every N optimizer steps (0: only at the end); auto: 10 times a run when there is an eval split",
        min=0,
    )
    keep_best: bool = opt(
        True, "with an eval split, save the weights of the lowest eval loss as the result (not those of the last step)"
    )
    early_stopping_patience: int = opt(
        0,
        "stop the run after N evaluations in a row (every train.eval_every steps) whose eval loss is not a new best by more than early_stopping_min_delta (0: off); needs an eval split (data.eval or data.eval_fraction); the result is then keep_best's weights, or the last step's with keep_best off; tasks sft, classify, reward, dpo, grpo (its held-out reward); not in staged or federated runs",
        min=0,
    )
    early_stopping_min_delta: float = opt(
        0.0,
        "with early_stopping_patience: an evaluation counts as a new best only when its eval loss is lower than the last best by more than this (grpo: its held-out reward higher, on the rewards' scale)",
        min=0.0,
    )
    save_every: int = opt(
        0,
        "write a checkpoint for --resume every N optimizer steps (0: none, except when interrupted with Ctrl-C; the result is saved at the end either way)",
        min=0,
    )
    keep_checkpoints: int = opt(2, "how many step checkpoints to keep while training (the newest)", min=1)
    keep_checkpoints_after_finish: bool = opt(
        False, "keep the step checkpoints once the run has finished (default: delete them; the result stays)"
    )
    max_bad_steps: int = opt(
        3,
        "stop the run (exit code 3) after this many optimizer steps in a row whose loss or gradient norm is NaN/inf; each such step's update is skipped",
        min=1,
    )
    log_every: int = opt(1, "append metrics every N optimizer steps", min=1)
    checkpointing: bool | Auto = opt(
        "auto",
        "recompute decoder layers in backward instead of keeping their activations (less memory; a recomputed layer runs forward twice); auto: the memory planner keeps as many layers' activations as train.gpu_memory allows (tunelab plan shows it; off on the CPU)",
    )
    checkpoint_layers: int | None = opt(
        None,
        "with checkpointing: recompute only the lowest N decoder layers and keep the others' activations (default: all; chosen by the planner when checkpointing is auto)",
        min=0,
    )
    offload_activations: bool | Auto = opt(
        "auto",
        "with checkpointing on CUDA: keep the checkpointed layer inputs in pinned CPU memory until backward; auto: where the planner finds it fits or pays",
    )
    gpu_memory: str | None = opt(
        None,
        "GPU memory the auto values must fit, like 24GiB, 80GB or 80G (24Gb, bits, is refused; default: 0.92 of the GPU's memory)",
    )
    cuda_graphs: bool | Auto = opt(
        "auto",
        "replay each micro-batch's forward and backward from a CUDA graph: one launch instead of thousands, 1.6-1.8x faster at micro-batch 1 on a 7B model; needs the fast path on one CUDA device, task sft, no packing, no LoRA dropout or NEFTune noise, no activation offload; auto: on where it applies",
    )
    fp8: bool = opt(
        False,
        "QLoRA on a GPU with FP8 tensor cores (H100, H200, L4, RTX 40xx): the frozen NF4 base's two products (forward, input gradient) run in FP8 e4m3 with a scale per token row and one per weight; adapters, norms, attention, loss and optimizer stay as they are. Faster base GEMMs, each product within a few percent of bf16's; needs method.quantize_base nf4",
    )
    sharding: str = opt(
        "auto",
        "with several processes (torchrun, --nproc): ddp keeps the whole model on every rank and sums the gradients; fsdp2 shards weights, gradients and optimizer state across ranks (full, layers, and QLoRA: its NF4 base too); auto is fsdp2 for method full, ddp otherwise",
        choices=("auto", "ddp", "fsdp2"),
    )
    report_to: list[str] = opt(
        [],
        "experiment trackers that also get every metrics record (each needs its library: pip install 'tunelab[NAME]')",
        choices=("tensorboard", "mlflow", "wandb", "trackio"),
    )
    push_to: str | None = opt(
        None,
        "a Hugging Face Hub model repository, OWNER/NAME, that the run pushes its adapter, tokenizer and model card to when it has finished with a finite adapter (as tunelab push RUN --repo OWNER/NAME; the token and offline mode are checked before training); methods lora and dora, tasks sft, dpo, grpo (default: none)",
    )
    push_private: bool = opt(
        False, "with train.push_to: create the repository private (an existing public one is refused, nothing pushed)"
    )


# Experiment trackers of train.report_to: name -> (module that must import, how to install it). training/tracking.py
# writes to them; their names and install hints sit here, beside the option they validate.
TRACKERS = {
    "tensorboard": ("tensorboard", "pip install 'tunelab[tensorboard]'   (or: pip install tensorboard)"),
    "mlflow": ("mlflow", "pip install 'tunelab[mlflow]'   (or: pip install mlflow-skinny sqlalchemy alembic)"),
    "wandb": ("wandb", "pip install 'tunelab[wandb]'   (or: pip install wandb)"),
    "trackio": ("trackio", "pip install 'tunelab[trackio]'   (or: pip install trackio)"),
}


def check_trackers(names: list[str]) -> None:
    """ConfigError for an unknown tracker, one named twice (it would log every record twice) or one whose library is
    not installed (found without importing it)."""
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ConfigError(
            f"option 'train.report_to' names {twice[0]!r} more than once ([{', '.join(names)}]); list each tracker once."
        )
    for name in names:
        if name not in TRACKERS:
            raise ConfigError(f"option 'train.report_to' has {name!r}; allowed values: {', '.join(TRACKERS)}.")
        module, install = TRACKERS[name]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(
                f"option 'train.report_to' has {name!r}, but its library is not installed. Install it with: {install}"
            )


def check_repo_id(repo: str, named: str) -> str:
    """`repo` if it is a hub model repository id, OWNER/NAME, as huggingface_hub spells them; ConfigError opening with
    `named` (the option, as the caller spells it) otherwise."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if repo.count("/") != 1 or not all(repo.split("/")):
        raise ConfigError(
            f"{named} is {repo!r}; give the repository as OWNER/NAME (your user name or an organization, then the "
            "model's name, e.g. alice/my-model)."
        )
    try:
        validate_repo_id(repo)
    except HFValidationError as exc:
        raise ConfigError(f"{named} is {repo!r}: {exc}") from None
    return repo


def parse_size(text: str) -> int:
    """'24GiB', '80GB', '1.5 TiB', '512MiB' or '1000B' -> bytes. GB and GiB both read as powers of 1024, as GPU makers
    quote memory; the prefix's case does not matter (8g), the B's does: 24Gb or 24gib (a lowercase b, bits) is refused.
    ValueError for anything else, a number without its unit too (24 would be 24 bytes, not 24 GiB)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(I?B)?\s*", str(text), re.IGNORECASE)
    if match and match.group(3) and match.group(3).endswith("b"):
        number, prefix = match.group(1), match.group(2).upper()
        spellings = f"{number}{prefix}iB, {number}{prefix}B or {number}{prefix}" if prefix else f"{number}B"
        raise ValueError(f"{text!r} has a lowercase b, which reads as bits; write bytes like {spellings}")
    if match and float(match.group(1)) == 0:
        raise ValueError(f"{text!r} is no memory at all; give what the run may use, like 24GiB")
    if match and not (match.group(2) or match.group(3)):
        raise ValueError(
            f"{text!r} has no unit; write it like {str(text).strip()}GiB (or {str(text).strip()}B for bytes)"
        )
    size = int(float(match.group(1)) * 1024 ** "_KMGT".index(match.group(2).upper() or "_")) if match else 0
    if size < 1:  # 0.5B too: a budget of 0 bytes, which nothing fits
        raise ValueError(f"{text!r} is not a size like 24GiB, 80GB or 512MiB")
    return size


@dataclass
class EvalConfig:
    questions: str | None = opt(
        None, "file of questions (with an optional expected column) answered by base and tuned model after training"
    )
    refusal: str | None = opt(None, "the fixed refusal sentence; answers containing it count as refusals")
    max_new_tokens: int = opt(64, "tokens to generate per answer", min=1)
