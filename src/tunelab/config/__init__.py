"""Typed configuration: one dataclass per concern, YAML as their saved form, `--section.key value` as the override.

Every field carries a one-line help text (it feeds `tunelab train --help`) and, where it has them, its allowed
values or range. `load_config` records where each resolved value came from (default, the YAML file, or a flag) so the
run can print and save it.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import importlib.util
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from tunelab.errors import ConfigError

AUTO = "auto"
Auto = Literal["auto"]
"""An option typed `float | Auto` takes a number or `auto`: chosen at start from the data and the model
(training/auto.py holds the rules); the chosen value and its reason are printed and saved in run.json."""


def opt(default: Any, help: str, *, choices: tuple | None = None, min: float | None = None, max: float | None = None):
    """A config field with its help text and constraints; mutable defaults are copied per instance."""
    meta = {"help": help, "choices": choices, "min": min, "max": max}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ModelConfig:
    name: str = opt(
        "smollm2-135m-instruct", "hub id, local Hugging Face directory, .gguf file, or the alias smollm2-135m-instruct"
    )
    dtype: str = opt(
        "auto", "weight and compute dtype (auto: bf16 on CUDA, fp32 on CPU)", choices=("auto", "fp32", "bf16", "fp16")
    )
    device: str = opt("auto", "where to train (auto: CUDA when present, else CPU)", choices=("auto", "cpu", "cuda"))
    impl: str = opt(
        "auto",
        "model code: our fast Llama-family path, the generic transformers one, or auto",
        choices=("auto", "fast", "generic"),
    )
    trust_remote_code: bool = opt(False, "run code shipped with a hub model (only if you trust its author)")
    adapter: str | None = opt(
        None,
        "start from this adapter (a run directory or a folder in PEFT's layout) instead of a fresh one; method.r, "
        "alpha, target_modules and DoRA must match it",
    )
    fix_untrained_tokens: bool = opt(
        True,
        "set embedding (and untied LM-head) rows that were never trained, for tokens the data uses, to the mean of the trained rows (recorded in run.json and repeated at inference)",
    )


@dataclass
class DataSource:
    """One entry of data.train written as a mapping: a file, folder or hub dataset with its own weight and reading
    options (data/mixture.py draws the epoch from the sources; data/hub.py reads those of the `datasets` library)."""

    path: str | None = opt(None, "a data file or folder, a `save_to_disk` folder or an .arrow file")
    hub: str | None = opt(None, "a dataset id on the Hugging Face hub (org/name), read through the datasets library")
    split: str = opt("train", "hub and save_to_disk datasets: the split to read")
    config: str | None = opt(None, "hub datasets: the configuration (subset) name")
    streaming: bool = opt(False, "hub datasets: read the rows as they arrive instead of downloading the set first")
    take: int | None = opt(None, "read only the first N rows of the source (with streaming: the rows fetched)", min=1)
    weight: float | None = opt(
        None, "the source's share of each epoch, relative to the other sources' weights (data.mix_by counts it)"
    )
    format: str | None = opt(None, "record format of this source (default: data.format)")
    fields: dict[str, str] | None = opt(None, "column mapping of this source (default: data.fields)")
    system_prompt: str | None = opt(None, "system message for this source's examples (default: data.system_prompt)")
    eval: str | None = opt(None, "a separate eval file for this source (eval loss per source)")
    name: str | None = opt(None, "the source's name in reports and metrics (default: the file or hub id)")


@dataclass
class DataConfig:
    train: list[str | DataSource] = opt(
        [],
        "training files (jsonl, json, csv, parquet, txt) or folders of them; an entry may be a mapping {path or hub, "
        "weight, format, fields, system_prompt, split, config, eval, ...} (README: Mixtures)",
    )
    eval: str | None = opt(None, "a separate eval file; otherwise eval_fraction of train is held out")
    eval_fraction: float = opt(0.0, "fraction of training examples held out for eval loss", min=0.0, max=0.5)
    format: str = opt(
        "auto",
        "record format (auto: detected from the fields)",
        choices=("auto", "prompt_completion", "question_answer", "alpaca", "messages", "sharegpt", "text"),
    )
    fields: dict[str, str] = opt(
        {}, "map format fields to your column names, e.g. {prompt: question, completion: answer}"
    )
    template: str = opt(
        "auto",
        "prompt template (auto: the tokenizer's chat template, else chatml)",
        choices=("auto", "tokenizer", "chatml", "llama2", "alpaca"),
    )
    system_prompt: str | None = opt(None, "system message added to every example that has none")
    max_length: int = opt(512, "maximum tokens per example (text is cut into blocks of this length)", min=8)
    overlong: str = opt("drop", "what to do with chat examples longer than max_length", choices=("drop", "truncate"))
    train_on_prompt: bool = opt(False, "also compute the loss on prompt tokens (default: answers only)")
    packing: bool = opt(
        False, "pack several examples into each row of max_length tokens, without attention across them"
    )
    shuffle: bool = opt(True, "shuffle the training examples each epoch (seeded)")
    mix_by: str = opt(
        "examples",
        "what data.train weights count: the share of examples, or of tokens, each source gets in an epoch",
        choices=("examples", "tokens"),
    )
    temperature: float = opt(
        1.0,
        "mixture temperature T: source i gets a share proportional to weight_i^(1/T) (its size when no source has a "
        "weight); T > 1 flattens the mixture towards uniform",
        min=0.01,
    )
    transform: str | None = opt(
        None,
        "a function applied to every record before its format is read: module:function or file.py:function; it takes "
        "the row (a dict) and returns a dict, or None to drop the row",
    )

    def local_paths(self) -> list[str]:
        """Every local file or folder the data options name (train entries, their eval files, data.eval)."""
        paths = []
        for entry in self.train:
            paths += [entry] if isinstance(entry, str) else [p for p in (entry.path, entry.eval) if p]
        return paths + ([self.eval] if self.eval else [])

    delimiter: str = opt(
        "auto",
        "field separator of .csv files (auto: detected from the header line among , ; tab |; .tsv files always use tab)",
        choices=("auto", ",", ";", "tab", "|"),
    )


@dataclass
class MethodConfig:
    name: str = opt(
        "lora",
        "what to train: LoRA adapters, DoRA adapters (LoRA with a learned magnitude per output row), all weights, "
        "or only the top decoder layers",
        choices=("lora", "dora", "full", "layers"),
    )
    use_dora: bool = opt(False, "with name lora: train DoRA adapters (the same as name dora)")
    rslora: bool = opt(False, "rank-stabilised LoRA: scale the update by alpha / sqrt(r) instead of alpha / r")
    r: int = opt(16, "LoRA rank", min=1)
    alpha: float = opt(32.0, "LoRA alpha; the update is scaled by alpha / r", min=0.0)
    dropout: float = opt(0.0, "dropout on the LoRA input", min=0.0, max=0.9)
    target_modules: list[str] = opt(
        ["all-linear"], "linear layers that get adapters (names like q_proj, or all-linear)"
    )
    top_layers: int = opt(2, "for method=layers: how many of the last decoder layers to train", min=1)
    quantize_base: str = opt(
        "none",
        "QLoRA: keep the frozen base linear layers in 4-bit NF4 with double quantization (bitsandbytes' format); needs name lora",
        choices=("none", "nf4"),
    )

    @property
    def is_adapter(self) -> bool:
        """LoRA or DoRA: the result is an adapter over the frozen base."""
        return self.name in ("lora", "dora")

    @property
    def dora(self) -> bool:
        return self.name == "dora" or (self.name == "lora" and self.use_dora)


@dataclass
class TrainConfig:
    epochs: float | Auto = opt(
        "auto",
        "passes over the training data (ignored when max_steps is set); auto: 3, more for a small set to reach 100 optimizer steps (at most 10), fewer for a large one (about 25,000 examples seen)",
        min=0.0,
    )
    max_steps: int | None = opt(None, "optimizer steps to run; overrides epochs", min=1)
    micro_batch: int | Auto = opt(
        "auto",
        "examples per forward pass; auto: 8, or for a small set the power of two <= examples / 32 (at least 1)",
        min=1,
    )
    grad_accum: int = opt(1, "micro-batches per optimizer step", min=1)
    lr: float | Auto = opt(
        "auto",
        "peak learning rate; auto: LoRA 5e-4 x (2000 / hidden size)^0.78 x 32 / alpha (1.3e-3 at hidden 576, 2.9e-4 at 4096), full a tenth of LoRA's, layers full's x layers / top_layers",
        min=0.0,
    )
    warmup_ratio: float | Auto = opt(
        "auto",
        "fraction of steps spent warming the learning rate up linearly from 0; auto: 0.05, at most 100 steps",
        min=0.0,
        max=1.0,
    )
    scheduler: str = opt("cosine", "learning-rate schedule after warmup", choices=("constant", "linear", "cosine"))
    weight_decay: float = opt(0.0, "AdamW weight decay (not applied to norms and biases)", min=0.0)
    optimizer: str = opt(
        "adamw",
        "adamw keeps its two moments in fp32 (8 bytes per trainable parameter); adamw_8bit in block-wise 8-bit codes (2.03 bytes; tensors under 4096 values stay fp32): 0.30 -> 0.08 GiB for r=16 LoRA on all linears of a 7B model",
        choices=("adamw", "adamw_8bit"),
    )
    max_grad_norm: float = opt(1.0, "clip the gradient norm to this (0 disables clipping)", min=0.0)
    group_by_length: bool = opt(
        False,
        "put rows of similar length into the same micro-batch (less padding; the order stays seeded per epoch)",
    )
    seed: int = opt(42, "seed for initialisation, shuffling and dropout")
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
        "GPU memory the auto values must fit, like 24GiB or 80GB (default: 0.92 of the GPU's memory)",
    )
    cuda_graphs: bool | Auto = opt(
        "auto",
        "replay each micro-batch's forward and backward from a CUDA graph: one launch instead of thousands, 1.6-1.8x faster at micro-batch 1 on a 7B model; needs the fast path on one CUDA device, task sft, no packing, no LoRA dropout or NEFTune noise, no activation offload; auto: on where it applies",
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


@dataclass
class EvalConfig:
    questions: str | None = opt(
        None, "file of questions (with an optional expected column) answered by base and tuned model after training"
    )
    refusal: str | None = opt(None, "the fixed refusal sentence; answers containing it count as refusals")
    max_new_tokens: int = opt(64, "tokens to generate per answer", min=1)


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
        "kept with the run, so predict and eval read alike",
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


@dataclass
class DpoConfig:
    loss: str = opt(
        "sigmoid",
        "task dpo: the preference loss: sigmoid (DPO), ipo (IPO, per-token log ratios), simpo (SimPO, no reference)",
        choices=("sigmoid", "ipo", "simpo"),
    )
    beta: float = opt(
        0.1, "task dpo: how far the policy may move from the reference (larger: stays closer); simpo uses ~2", min=0.0
    )
    label_smoothing: float = opt(
        0.0, "task dpo: assumed share of pairs whose preference is wrong (sigmoid and simpo losses)", min=0.0, max=0.5
    )
    simpo_gamma: float = opt(0.5, "task dpo, loss simpo: the target reward margin gamma", min=0.0)


@dataclass
class RewardSpec:
    """One reward function of task grpo, written as a mapping in grpo.rewards (or just its kind, e.g. `contains`)."""

    kind: str = opt(
        "contains",
        "contains (the answer holds the row's expected text), equals (the answer, or the pattern's first group, equals it once normalised), regex (1 when pattern matches the answer), length (minus the share of answer tokens beyond max_tokens), function (module:function), model (a task: reward run)",
        choices=("contains", "equals", "regex", "length", "function", "model"),
    )
    weight: float = opt(1.0, "the reward's weight in the total (the weighted sum)")
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
        "function: module:function, importable, called as f(prompt, answer, row) -> float (prompt as the row gives it)",
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
        "task grpo: nucleus sampling of the rollouts: keep the smallest set of tokens of this mass",
        min=0.01,
        max=1.0,
    )
    beta: float = opt(
        0.04, "task grpo: weight of the KL term to the base (the adapter off); 0: no reference at all", min=0.0
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


@dataclass
class FederatedConfig:
    clients: list[str] = opt(
        [],
        "each client's own data, one entry per client: a file or a folder of files (the entry's name names the client)",
    )
    split_file: str | None = opt(
        None, "instead of clients: one file split into num_clients shards, one per client (for simulations)"
    )
    num_clients: int = opt(2, "with split_file: how many clients (shards)", min=1)
    split: str = opt(
        "iid",
        "with split_file: iid (a seeded shuffle dealt out in turn) or column (every row with one value of split_column goes to one client: non-IID)",
        choices=("iid", "column"),
    )
    split_column: str | None = opt(None, "with split: column, the column whose values decide the client")
    rounds: int = opt(3, "federated rounds: clients train, the server averages their adapters", min=1)
    local_steps: int = opt(
        10, "optimizer steps each client trains per round (train.micro_batch x train.grad_accum rows each)", min=1
    )
    fraction: float = opt(
        1.0, "fraction of the clients asked to train each round (never fewer than min_clients)", min=0.0, max=1.0
    )
    min_clients: int = opt(
        2,
        "a round's average is applied only when at least this many clients return an update; otherwise it is skipped and reported",
        min=1,
    )
    strategy: str = opt(
        "fedavg",
        "fedavg: mean of the client adapters weighted by their examples; fedprox: the same, with a proximal term on each client",
        choices=("fedavg", "fedprox"),
    )
    proximal_mu: float = opt(
        0.01, "fedprox: mu of the term (mu/2)||w - w_global||^2 added to each client's loss", min=0.0
    )
    dp: bool = opt(
        False,
        "differential privacy: each client clips its update, the server adds Gaussian noise to the mean, clients are weighted equally, and the epsilon spent is reported",
    )
    dp_clipping_norm: float = opt(1.0, "dp: L2 bound on each client's adapter update", min=0.0)
    dp_noise_multiplier: float = opt(1.0, "dp: noise standard deviation as a multiple of the clipping norm", min=0.0)
    dp_delta: float = opt(1e-5, "dp: the delta at which the epsilon is reported", min=0.0, max=1.0)
    client_cpus: int = opt(
        1, "simulation: CPU cores reserved per client; clients train side by side when the cores allow", min=1
    )
    round_timeout: float = opt(3600.0, "seconds the server waits for the clients of a round", min=1.0)


@dataclass
class RunConfig:
    output_dir: str = opt("runs/run", "run directory for the adapter or weights, checkpoints, metrics and plots")
    overwrite: bool = opt(False, "replace an existing run directory")
    task: str = opt(
        "sft",
        "what to train: generate answers (sft), a label per text with a head on the last token (classify), a "
        "scalar reward from preference pairs (reward), prefer chosen over rejected answers (dpo), or learn from rewards "
        "of sampled answers (grpo)",
        choices=("sft", "classify", "reward", "dpo", "grpo"),
    )
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    classify: ClassifyConfig = field(default_factory=ClassifyConfig)
    dpo: DpoConfig = field(default_factory=DpoConfig)
    grpo: GrpoConfig = field(default_factory=GrpoConfig)
    federated: FederatedConfig = field(default_factory=FederatedConfig)
    stages: list[dict[str, Any]] = opt(
        [],
        "train in stages, one after another in output_dir (stage-1/, ...): each entry a partial config (sections as "
        "above) plus continue: adapter | merge, applied over the rest of this config (README: Stages)",
    )


def _sections() -> dict[str, type]:
    hints = typing.get_type_hints(RunConfig)
    return {name: hint for name, hint in hints.items() if dataclasses.is_dataclass(hint)}


def section_names() -> tuple[str, ...]:
    """The names of the config's sections (model, data, ...), in declaration order."""
    return tuple(_sections())


def iter_options() -> list[tuple[str, dataclasses.Field, Any]]:
    """Every option as (dotted name, field, type hint), in declaration order: top-level first, then per section."""
    options = []
    top_hints = typing.get_type_hints(RunConfig)
    sections = _sections()
    for f in dataclasses.fields(RunConfig):
        if f.name not in sections:
            options.append((f.name, f, top_hints[f.name]))
    for name, cls in sections.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            options.append((f"{name}.{f.name}", f, hints[f.name]))
    return options


def auto_options() -> list[str]:
    """Dotted names of the options that take `auto` (typed `... | Auto`)."""
    return [name for name, _, hint in iter_options() if Auto in typing.get_args(hint)]


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) is Literal:
        return " or ".join(repr(v) for v in typing.get_args(hint))
    return str(hint).replace("typing.", "") if not isinstance(hint, type) else hint.__name__


def _coerce(name: str, value: Any, hint: Any, where: str) -> Any:
    """Check `value` against the type hint, converting where it is unambiguous (int -> float, scalar -> list)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for kind in inner:  # a mapping where the union allows a record (an entry of data.train)
            if dataclasses.is_dataclass(kind) and isinstance(value, (dict, kind)):
                return _record(name, value, kind, where)
        for arm in inner:  # the first type that takes the value: `float | Auto` reads 1e-4 as float, "auto" as Auto
            try:
                return _coerce(name, value, arm, where)
            except ConfigError:
                pass
        names = " or ".join(_type_name(a) for a in inner)
        raise ConfigError(f"{where}: option '{name}' must be {names}, got {value!r} ({type(value).__name__}).")
    if origin is Literal:
        if value in typing.get_args(hint):
            return value
        raise ConfigError(f"{where}: option '{name}' must be {_type_name(hint)}, got {value!r}.")
    if origin is list:
        (item,) = typing.get_args(hint)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{where}: option '{name}' must be a list of {_type_name(item)}, got {value!r}.")
        return [_coerce(name, v, item, where) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: option '{name}' must be a mapping like {{key: value}}, got {value!r}.")
        keep = typing.get_args(hint)[1:] == (Any,)  # dict[str, Any]: values are checked by whoever reads them
        return {str(k): (v if keep else str(v)) for k, v in value.items()}
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    raise ConfigError(f"{where}: option '{name}' must be {_type_name(hint)}, got {value!r} ({type(value).__name__}).")


def _record(name: str, value: Any, kind: type, where: str) -> Any:
    """A mapping -> an instance of the dataclass `kind`, each key checked like an option ('data.train[].weight')."""
    if isinstance(value, kind):
        return value
    fields = {f.name: f for f in dataclasses.fields(kind)}
    hints = typing.get_type_hints(kind)
    values = {}
    for key, item in value.items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=2)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(
                f"{where}: option '{name}': an entry has the unknown key '{key}'.{hint} Its keys are "
                f"{', '.join(fields)}."
            )
        item = _coerce(f"{name}[].{key}", item, hints[key], where)
        _check_constraints(f"{name}[].{key}", item, fields[key], where)
        values[key] = item
    return kind(**values)


def _check_constraints(name: str, value: Any, f: dataclasses.Field, where: str) -> None:
    meta = f.metadata
    values = value if isinstance(value, list) else [value]
    for v in values:
        if v is None:
            continue
        if meta.get("choices") and v not in meta["choices"]:
            allowed = ", ".join(map(str, meta["choices"]))
            raise ConfigError(f"{where}: option '{name}' is {v!r}; allowed values: {allowed}.")
        if meta.get("min") is not None and isinstance(v, (int, float)) and v < meta["min"]:
            raise ConfigError(f"{where}: option '{name}' is {v}; it must be >= {meta['min']}.")
        if meta.get("max") is not None and isinstance(v, (int, float)) and v > meta["max"]:
            raise ConfigError(f"{where}: option '{name}' is {v}; it must be <= {meta['max']}.")


# Names other tools (transformers' TrainingArguments, axolotl, torchtune, PEFT) use for our options: a typo suggestion
# by meaning, where spelling alone would point elsewhere (learning_rate is closer to warmup_ratio than to lr).
ALIASES = {
    "learning_rate": "train.lr",
    "num_train_epochs": "train.epochs",
    "num_epochs": "train.epochs",
    "batch_size": "train.micro_batch",
    "per_device_train_batch_size": "train.micro_batch",
    "micro_batch_size": "train.micro_batch",
    "train_batch_size": "train.micro_batch",
    "gradient_accumulation_steps": "train.grad_accum",
    "gradient_accumulation": "train.grad_accum",
    "warmup_steps": "train.warmup_ratio",
    "warmup": "train.warmup_ratio",
    "lr_scheduler_type": "train.scheduler",
    "lr_scheduler": "train.scheduler",
    "optim": "train.optimizer",
    "grad_clip": "train.max_grad_norm",
    "clip_grad_norm": "train.max_grad_norm",
    "gradient_clipping": "train.max_grad_norm",
    "eval_steps": "train.eval_every",
    "save_steps": "train.save_every",
    "save_total_limit": "train.keep_checkpoints",
    "logging_steps": "train.log_every",
    "gradient_checkpointing": "train.checkpointing",
    "activation_checkpointing": "train.checkpointing",
    "lora_r": "method.r",
    "rank": "method.r",
    "lora_rank": "method.r",
    "lora_alpha": "method.alpha",
    "lora_dropout": "method.dropout",
    "lora_target_modules": "method.target_modules",
    "load_in_4bit": "method.quantize_base",
    "qlora": "method.quantize_base",
    "model_name_or_path": "model.name",
    "base_model": "model.name",
    "model_name": "model.name",
    "model_id": "model.name",
    "torch_dtype": "model.dtype",
    "bf16": "model.dtype",
    "fp16": "model.dtype",
    "dataset": "data.train",
    "datasets": "data.train",
    "train_file": "data.train",
    "data_path": "data.train",
    "dataset_path": "data.train",
    "eval_file": "data.eval",
    "validation_file": "data.eval",
    "val_set_size": "data.eval_fraction",
    "validation_split": "data.eval_fraction",
    "test_size": "data.eval_fraction",
    "max_seq_length": "data.max_length",
    "max_seq_len": "data.max_length",
    "sequence_len": "data.max_length",
    "seq_len": "data.max_length",
    "cutoff_len": "data.max_length",
    "model_max_length": "data.max_length",
    "chat_template": "data.template",
    "prompt_template": "data.template",
    "system_message": "data.system_prompt",
    "sample_packing": "data.packing",
    "train_on_inputs": "data.train_on_prompt",
    "separator": "data.delimiter",
    "sep": "data.delimiter",
    "out_dir": "output_dir",
    "output_path": "output_dir",
    "overwrite_output_dir": "overwrite",
}


def suggest(name: str) -> list[str]:
    """Up to three options the user may have meant by `name`: by known alias, then by the last part of the name
    (the right key in the wrong section), then by spelling of the last part, then by spelling of the whole name."""
    options = [n for n, _, _ in iter_options()]
    last = name.rpartition(".")[2].lower().replace("-", "_")
    found = [ALIASES[last]] if last in ALIASES else []
    found += [o for o in options if o.rpartition(".")[2] == last]
    if found:  # the meaning is known: spelling neighbours would only distract
        return [o for o in dict.fromkeys(found) if o != name][:3]
    lasts = sorted({o.rpartition(".")[2] for o in options})
    for close in difflib.get_close_matches(last, lasts, n=3, cutoff=0.7):
        found += [o for o in options if o.rpartition(".")[2] == close]
    found += difflib.get_close_matches(name, options, n=3)
    return [o for o in dict.fromkeys(found) if o != name][:3]


def unknown_option(name: str, where: str, flag: bool = False) -> ConfigError:
    close = [f"--{o}" if flag else o for o in suggest(name)]
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return ConfigError(f"{where}: unknown option '{name}'.{hint} Run 'tunelab train --help' for the list.")


def _flatten(raw: dict, where: str) -> dict[str, Any]:
    """YAML mapping -> {'train.lr': 1e-4, ...}. Section mappings are flattened one level; dict-valued fields stay whole."""
    sections = _sections()
    flat = {}
    for key, value in raw.items():
        if key in sections:
            if value is None:
                continue
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: section '{key}' must be a mapping of options, got {value!r}.")
            for sub, v in value.items():
                flat[f"{key}.{sub}"] = v
        else:
            flat[str(key)] = value
    return flat


@dataclass
class ResolvedConfig:
    """The config and, for each dotted option, where its value came from ('default', a file, or a flag)."""

    config: RunConfig
    origins: dict[str, str]


def load_config(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None, base_dir: str | Path | None = None
) -> ResolvedConfig:
    """Defaults <- YAML file <- overrides ({'train.lr': '1e-4'} as typed on the command line, or Python values).

    Relative data/eval paths in a YAML file are resolved against the file's folder, so a config runs from anywhere.
    """
    options = {name: (f, hint) for name, f, hint in iter_options()}
    values: dict[str, Any] = {}
    origins = {name: "default" for name in options}
    layers: list[tuple[str, dict[str, Any], Path | None]] = []
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found.")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f", line {mark.line + 1}" if mark else ""
            raise ConfigError(f"{path}{line}: not valid YAML ({getattr(exc, 'problem', exc)}).") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the config must be a mapping of sections (model:, data:, train:, ...).")
        layers.append((str(path), _flatten(raw, str(path)), path.parent))
    if overrides:
        flags = {}
        for name, value in overrides.items():
            if isinstance(value, str):
                try:
                    parsed = yaml.safe_load(value) if value.strip() else value
                except yaml.YAMLError:
                    parsed = value
                # A text option keeps its text when YAML would make a mapping or list of it ('Q: {text} A:')
                text = name in options and options[name][1] in (str, str | None)
                value = value if text and isinstance(parsed, dict | list) else parsed
            flags[name] = value
        layers.append(("flag", flags, Path(base_dir) if base_dir else None))
    for source, flat, folder in layers:
        for name, value in flat.items():
            where = f"--{name}" if source == "flag" else source
            values[name] = _option_value(name, value, options, where, folder if source != "flag" else None)
            origins[name] = where if source == "flag" else source
    config = RunConfig()
    _set_values(config, values)
    _check_consistency(config)
    return ResolvedConfig(config, origins)


def _option_value(name: str, value: Any, options: dict, where: str, folder: Path | None) -> Any:
    """One option's value checked against its type and constraints, paths resolved against `folder` (a YAML file's)."""
    if name not in options:
        raise unknown_option(name, where)
    f, hint = options[name]
    value = _coerce(name, value, hint, where)
    _check_constraints(name, value, f, where)
    if folder is not None and name == "data.transform" and value is not None:
        file, _, function = value.rpartition(":")
        if file.endswith(".py"):  # file.py:function, relative to the YAML file; module:function stays as it is
            value = f"{_resolve_paths(file, folder)}:{function}"
    elif folder is not None and name == "grpo.rewards":  # a function's file.py and a reward run, as data.transform
        value = [_reward_paths(entry, folder) for entry in value]
    elif folder is not None and name in _PATH_OPTIONS:
        value = _resolve_paths(value, folder)
    if name == "stages":
        value = [_stage_entry(entry, f"{where}: stage {k}", options, folder) for k, entry in enumerate(value, 1)]
    return value


def _set_values(config: RunConfig, values: dict[str, Any]) -> None:
    for name, value in values.items():
        section, _, key = name.rpartition(".")
        target = getattr(config, section) if section else config
        setattr(target, key, value)


# What a stage may set besides options, and the options it may not (they belong to the whole run).
STAGE_KEYS = {"continue": ("adapter", "merge"), "name": None}
NOT_PER_STAGE = ("output_dir", "overwrite", "stages")


def _stage_entry(raw: Any, where: str, options: dict, folder: Path | None) -> dict[str, Any]:
    """A stage as written (sections, or dotted names) -> {dotted option: checked value, continue, name}."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: a stage must be a mapping of options (data:, method:, train:, ...), got {raw!r}.")
    entry: dict[str, Any] = {}
    for name, value in _flatten(raw, where).items():
        if name in STAGE_KEYS:
            allowed = STAGE_KEYS[name]
            if allowed and value not in allowed:
                raise ConfigError(f"{where}: '{name}' is {value!r}; allowed values: {', '.join(allowed)}.")
            entry[name] = str(value)
        elif name in NOT_PER_STAGE:
            raise ConfigError(f"{where}: '{name}' belongs to the whole run; set it outside stages:.")
        else:
            entry[name] = _option_value(name, value, options, where, folder)
    return entry


def stage_config(resolved: ResolvedConfig, index: int, output_dir: str) -> ResolvedConfig:
    """Stage `index` (0-based) of a staged run as a run config of its own: the run's config without its stages,
    overlaid with the stage's options; written to `output_dir`."""
    config = copy.deepcopy(resolved.config)
    config.stages, config.output_dir, config.overwrite = [], output_dir, False
    entry = resolved.config.stages[index]
    values = {k: copy.deepcopy(v) for k, v in entry.items() if k not in STAGE_KEYS}
    _set_values(config, values)
    origins = dict(resolved.origins) | {name: f"stage {index + 1}" for name in values}
    origins |= {"stages": "the staged run", "output_dir": "the staged run"}
    try:
        _check_consistency(config)
    except ConfigError as exc:
        raise ConfigError(f"stage {index + 1}: {exc}") from None
    return ResolvedConfig(config, origins)


def _reward_paths(entry: str | RewardSpec, folder: Path) -> str | RewardSpec:
    if not isinstance(entry, RewardSpec):
        return entry
    function = entry.function
    if function and function.rpartition(":")[0].endswith(".py"):
        file, _, name = function.rpartition(":")
        function = f"{_resolve_paths(file, folder)}:{name}"
    return dataclasses.replace(entry, function=function, run=_resolve_paths(entry.run, folder))


_PATH_OPTIONS = {
    "data.train",
    "data.eval",
    "eval.questions",
    "model.adapter",
    "federated.clients",
    "federated.split_file",
}


def _resolve_paths(value: Any, folder: Path) -> Any:
    if value is None:
        return None
    if isinstance(value, list):
        return [_resolve_paths(v, folder) for v in value]
    if isinstance(value, DataSource):
        return dataclasses.replace(
            value, path=_resolve_paths(value.path, folder), eval=_resolve_paths(value.eval, folder)
        )
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else (folder / p))


# Experiment trackers of train.report_to: name -> (module that must import, how to install it). training/tracking.py
# writes to them; their names and install hints sit here, beside the option they validate.
TRACKERS = {
    "tensorboard": ("tensorboard", "pip install 'tunelab[tensorboard]'   (or: pip install tensorboard)"),
    "mlflow": ("mlflow", "pip install 'tunelab[mlflow]'   (or: pip install mlflow-skinny sqlalchemy alembic)"),
    "wandb": ("wandb", "pip install 'tunelab[wandb]'   (or: pip install wandb)"),
    "trackio": ("trackio", "pip install 'tunelab[trackio]'   (or: pip install trackio)"),
}


def check_trackers(names: list[str]) -> None:
    """ConfigError for an unknown tracker or one whose library is not installed (found without importing it)."""
    for name in names:
        if name not in TRACKERS:
            raise ConfigError(f"option 'train.report_to' has {name!r}; allowed values: {', '.join(TRACKERS)}.")
        module, install = TRACKERS[name]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(
                f"option 'train.report_to' has {name!r}, but its library is not installed. Install it with: {install}"
            )


def _check_consistency(config: RunConfig) -> None:
    """Rules that involve more than one option, or the environment (a tracker's library must be installed)."""
    check_trackers(config.train.report_to)
    if config.train.offload_activations is True and config.train.checkpointing is False:
        raise ConfigError(
            "option 'train.offload_activations' needs 'train.checkpointing: true' (it offloads the checkpointed layer inputs)."
        )
    if config.train.gpu_memory is not None:
        try:
            parse_size(config.train.gpu_memory)
        except ValueError as exc:
            raise ConfigError(f"option 'train.gpu_memory': {exc}.") from None
    check_head_options(config)
    if config.task == "dpo" and config.dpo.beta <= 0:
        raise ConfigError("option 'dpo.beta' must be > 0 (it scales the log ratios, and ipo divides by it).")
    if config.task == "grpo" and config.train.grad_accum != 1:
        raise ConfigError(
            "option 'train.grad_accum' must be 1 with task grpo: a step trains on grpo.prompts_per_step prompts x "
            "grpo.num_generations answers, in micro-batches of train.micro_batch rows. Set the prompts per step instead."
        )
    if config.train.neftune_alpha and config.task != "sft":
        raise ConfigError(
            f"option 'train.neftune_alpha' adds noise to the embeddings of task sft; option 'task' is {config.task}. "
            "Remove it or set it to 0."
        )
    if config.data.eval and config.data.eval_fraction:
        raise ConfigError(
            "options 'data.eval' and 'data.eval_fraction' are both set; use one way to get an eval split."
        )
    _check_sources(config.data)
    if config.method.use_dora and config.method.name != "lora":
        raise ConfigError(f"option 'method.use_dora' is for method.name lora; method.name is {config.method.name}.")


PLACEHOLDER = "{text}"  # where classify.prompt_format puts the row's text


def check_head_options(config: RunConfig) -> None:
    """classify.prompt_format holds {text} once; it and classify.head_lr are for the head tasks only, head_init for
    classify."""
    c = config.classify
    for name, value in (("prompt_format", c.prompt_format), ("head_lr", c.head_lr)):
        if value is not None and config.task not in ("classify", "reward"):
            raise ConfigError(
                f"option 'classify.{name}' is for tasks classify and reward; option 'task' is {config.task}. Remove it."
            )
    if c.head_init != "random" and config.task != "classify":
        raise ConfigError(
            f"option 'classify.head_init' {c.head_init} is for task classify (a reward head has no label words); "
            f"option 'task' is {config.task}. Remove it."
        )
    if c.prompt_format is not None and c.prompt_format.count(PLACEHOLDER) != 1:
        found = "has no" if PLACEHOLDER not in c.prompt_format else "has more than one"
        raise ConfigError(
            f"option 'classify.prompt_format' is {c.prompt_format!r}: it {found} {PLACEHOLDER} placeholder; write it "
            f"once where the row's text goes, e.g. 'Request: {PLACEHOLDER}\\nDomain:'."
        )


def _check_sources(data: DataConfig) -> None:
    """Each mapping entry of data.train names one place to read (path or hub) and a positive weight."""
    formats = DataConfig.__dataclass_fields__["format"].metadata["choices"]
    for i, source in enumerate(data.train, 1):
        if not isinstance(source, DataSource):
            continue
        where = f"option 'data.train', entry {i}"
        if (source.path is None) == (source.hub is None):
            raise ConfigError(f"{where}: give exactly one of 'path' (a file or folder) and 'hub' (a dataset id).")
        if source.weight is not None and not source.weight > 0:
            raise ConfigError(
                f"{where} ({source.path or source.hub}): weight is {source.weight}; a weight is a positive number (the "
                "source's share of each epoch relative to the others'). Remove the source instead of weighing it 0."
            )
        if source.format is not None and source.format not in formats:
            raise ConfigError(f"{where}: format is {source.format!r}; allowed values: {', '.join(formats)}.")
        if source.streaming and source.hub is None:
            raise ConfigError(f"{where}: streaming reads hub datasets; a local source ({source.path}) is read whole.")


def parse_size(text: str) -> int:
    """'24GiB', '80GB', '1.5 TiB', '512MiB' or a number of bytes -> bytes. GB and GiB both read as powers of 1024,
    as GPU makers quote memory. ValueError for anything else."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(I?B)?\s*", str(text), re.IGNORECASE)
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"{text!r} is not a size like 24GiB, 80GB or 512MiB")
    return int(float(match.group(1)) * 1024 ** "_KMGT".index(match.group(2).upper() or "_"))


def to_dict(config: RunConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


# Options that say what to do with this invocation, not what the run is: never saved with the run's config.
ACTION_OPTIONS = ("overwrite",)


def dump_yaml(config: RunConfig) -> str:
    """The config's saved form (config.yaml of a run): every option but the ACTION_OPTIONS."""
    values = {k: v for k, v in to_dict(config).items() if k not in ACTION_OPTIONS}
    return yaml.safe_dump(values, sort_keys=False, allow_unicode=True)


def describe(resolved: ResolvedConfig) -> str:
    """The resolved config, one option a line, with where each value came from."""
    lines = []
    for name, _, _ in iter_options():
        section, _, key = name.rpartition(".")
        target = getattr(resolved.config, section) if section else resolved.config
        lines.append(f"  {name:<24} = {getattr(target, key)!r:<40} ({resolved.origins[name]})")
    return "\n".join(lines)
