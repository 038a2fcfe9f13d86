"""Rules that involve more than one option, or the environment: checked once all values are read, for the run and for
each of its stages (`check_consistency`, called by config/load.py).

A single value's type, choices and range are config/values.py's.
"""

from __future__ import annotations

import dataclasses
import re

from tunelab.config.data import DataConfig, DataSource
from tunelab.config.federated import NOT_READ
from tunelab.config.flags import PYTHON, Spelling
from tunelab.config.run import RunConfig, iter_options
from tunelab.config.tasks import PLACEHOLDER
from tunelab.config.train import check_repo_id, check_trackers, parse_size
from tunelab.config.values import value_hint
from tunelab.errors import ConfigError


def check_target_modules(targets: list[str]) -> None:
    """Layer names as other tools write them, refused before the model loads (which would only say that no layer of
    the model is called 'q_proj,v_proj'): several names in one text (PEFT's regular-expression string, or a comma list),
    and LLaMA-Factory's `all` or a spelling of all-linear."""
    for name in targets:
        if any(c in name for c in ",|*()[] \t"):
            names = re.findall(r"[\w-]+", name)
            raise ConfigError(
                f"option 'method.target_modules': entry {name!r} is not one layer name; write a list of names, "
                f"like [{', '.join(names) or 'q_proj, v_proj'}], or [all-linear]."
            )
        if name != "all-linear" and name.lower().replace("_", "-") in ("all", "all-linear", "all-linears", "linear"):
            raise ConfigError(
                f"option 'method.target_modules': entry {name!r} means all-linear here; write all-linear."
            )


def check_consistency(
    config: RunConfig, task_options: bool = True, spelling: Spelling = PYTHON, stages: list[dict] | None = None
) -> None:
    """Rules that involve more than one option, or the environment (a tracker's library must be installed).
    `task_options`: refuse an option of a task section that no task of the run reads, and a count that
    train.checkpointing false leaves unread (off for a run's saved config read back: the run trained so).
    `spelling`: how the commands a message gives are written (the CLI's, or the API's calls). `stages`: the options
    each stage sets over the run's, as it trains with them (config/load.py `stage_values`, which drops a stage's value
    for an option given as a flag); None: config.stages as written."""
    check_trackers(config.train.report_to)
    check_push_to(config, spelling, stages)
    check_target_modules(config.method.target_modules)
    if config.train.offload_activations is True and config.train.checkpointing is False:
        raise ConfigError(
            "option 'train.offload_activations' needs 'train.checkpointing: true' (it offloads the checkpointed layer inputs)."
        )
    if task_options and config.train.checkpoint_layers and config.train.checkpointing is False:  # dropped silently
        raise ConfigError(
            f"option 'train.checkpoint_layers' is {config.train.checkpoint_layers}, the layers to recompute, but "
            "'train.checkpointing' is false, which recomputes none; set checkpointing true (or auto), or drop "
            "checkpoint_layers."
        )
    if config.train.gpu_memory is not None:
        try:
            parse_size(config.train.gpu_memory)
        except ValueError as exc:
            raise ConfigError(f"option 'train.gpu_memory': {exc}.") from None
    if config.eval.refusal is not None and not config.eval.refusal.strip():
        raise ConfigError(
            "option 'eval.refusal' is empty: every answer would contain it. Give the refusal sentence, or null."
        )
    if task_options:
        check_task_options(config, stages)
        check_dpo_loss_options(config)
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
    check_early_stopping(config, task_options, stages)
    if config.data.eval and config.data.eval_fraction:
        raise ConfigError(
            "options 'data.eval' and 'data.eval_fraction' are both set; use one way to get an eval split."
        )
    _check_sources(config.data)
    if any(not name.strip() for name in config.data.fields):
        raise ConfigError(
            "option 'data.fields' has an empty field name; its keys are tunelab's fields (label, prompt, ...), its "
            "values your columns, e.g. {label: category}."
        )
    blank = next((name for name, column in config.data.fields.items() if not column.strip()), None)
    if blank is not None:  # a column of no name: the errors that follow would name '' or nothing at all
        raise ConfigError(
            f"option 'data.fields' maps {blank!r} to an empty column name; give the column of your file that holds "
            f"it (e.g. {{{blank}: my_column}}), or remove {blank!r} from data.fields."
        )
    if config.method.use_dora and config.method.name != "lora":
        name = config.method.name
        why = (
            "which is DoRA already; remove method.use_dora"
            if name == "dora"
            else "which trains the model's own weights and has no adapter to decompose; remove method.use_dora, or "
            "use method.name dora to train DoRA adapters"
        )
        raise ConfigError(f"option 'method.use_dora' is for method.name lora; method.name is {name}, {why}.")
    if config.model.adapter and not config.method.is_adapter and not config.stages:
        # was refused only once the model had loaded, as a method whose target_modules [] differed from the adapter's
        raise ConfigError(
            f"option 'model.adapter' is {config.model.adapter!r}, an adapter to train on, but method.name is "
            f"{config.method.name}, which trains the model's own weights and has no adapter. Use method.name lora or "
            "dora (the adapter's), or merge the adapter first (tunelab merge RUN --out DIR) and set model.name: DIR."
        )
    if config.train.loraplus_lr_ratio is not None and not config.method.is_adapter and not config.stages:
        # a staged run's stages are checked each with its own method (stage_config)
        raise ConfigError(
            f"option 'train.loraplus_lr_ratio' is {config.train.loraplus_lr_ratio:g}, LoRA+'s learning rate of the "
            f"adapters' B matrices over their A's; method.name is {config.method.name}, which trains the model's "
            "own weights and has no adapter. Remove train.loraplus_lr_ratio, or use method.name lora or dora."
        )
    if config.method.quantize_base != "none" and not config.method.is_adapter and not config.stages:
        # a staged run's stages are checked each with its own method (stage_config)
        raise ConfigError(quantize_needs_adapter(config.method.name))
    check_weight_init(config, stages)
    check_fp8(config)


def check_fp8(config: RunConfig) -> None:
    """train.fp8 where it cannot apply: it runs the products of an NF4 base (QLoRA) one projection at a time. (The
    GPU itself is checked once the model is built: `training.build.build_model`.) A staged run's stages are checked
    each with its own method (stage_config)."""
    t, m = config.train, config.method
    if not t.fp8 or config.stages:
        return
    why = None
    if m.quantize_base != "nf4":
        why = (
            f"method.quantize_base is {m.quantize_base}; it runs the products of a base quantized to NF4 (QLoRA). "
            "Set method.quantize_base: nf4"
        )
    elif m.dora:
        why = "DoRA rescales the base's rows by its magnitudes in its own node, which stays in 16 bits; use LoRA"
    elif t.sharding == "fsdp2":
        why = "train.sharding fsdp2 gathers each layer's NF4 state into a shared buffer; use train.sharding ddp"
    elif t.cuda_graphs is True:
        why = "its operands are allocated at each use, which train.cuda_graphs true does not capture; use auto"
    if why:
        raise ConfigError(f"option 'train.fp8' is true, but {why} (or remove train.fp8).")


def as_they_train(config: RunConfig, stages: list[dict] | None) -> list[dict]:
    """The options each stage sets over the run's, as it trains with them: `stages` (check_consistency's), or where
    None, config.stages as written."""
    return config.stages if stages is None else stages


def check_weight_init(config: RunConfig, stages: list[dict] | None = None) -> None:
    """method.init pissa or olora where its adapter would be wrong: beside a base that changes under it or an
    adapter that replaces its start (peft/weight_init.py says why each). `stages`: as check_consistency's."""
    m = config.method
    sets = as_they_train(config, stages)
    init = next((e["method.init"] for e in sets if e.get("method.init", "default") != "default"), m.init)
    if init == "default":
        return
    why = None
    if config.stages:
        why = (
            "a staged run (stages) hands each stage's adapter or merged weights to the next, which the "
            "residual base would not match; train the stages with method.init default"
        )
    elif not m.is_adapter:
        return  # unused_notes says that method full or layers does not read it
    elif config.train.sharding == "fsdp2":
        why = (
            "train.sharding fsdp2 shards A and B, which the whole starting factors A0, B0 each layer keeps for the "
            "saved adapter would not meet; use train.sharding ddp (or auto)"
        )
    elif config.model.adapter:
        why = "model.adapter continues a saved adapter, whose weights replace that start; remove one of them"
    elif config.federated.enabled:
        why = "a federation averages the clients' adapters, which assumes the default start; use method.init default"
    elif m.alpha == 0:
        why = "method.alpha 0 scales the adapter to nothing, so no part of the weight can be moved into it"
    if why:
        raise ConfigError(f"option 'method.init' is {init}, but {why}.")


def over_changed_weights(stages: list[tuple[object, object]]) -> str | None:
    """Where a staged run's last stage trains over weights that an earlier stage changed, given each stage's (method,
    continue) in order: `continue: merge` after an adapter stage, or any stage after a full or layers stage
    (training/stage_plan.py `plan_stages`; every later stage then trains over those weights too). Said as where it
    starts ("stage 2 starts from stage 1's adapter merged into the base (continue: merge)"); None where every stage
    continues the adapter before it, over the original base."""
    for k in range(2, len(stages) + 1):
        before, how = stages[k - 2][0], stages[k - 1][1]
        if before not in ("lora", "dora"):
            return f"stage {k} starts from the weights stage {k - 1} trained (method {before})"
        if how == "merge":
            return f"stage {k} starts from stage {k - 1}'s adapter merged into the base (continue: merge)"
    return None


def check_push_to(config: RunConfig, spelling: Spelling = PYTHON, stages: list[dict] | None = None) -> None:
    """train.push_to names a hub repository, OWNER/NAME, and the run's result is what tunelab push sends: an adapter
    (method lora or dora) of a task without a head, over the original base. A staged run pushes its result, its last
    stage's; each stage is read as it trains (`stages`: check_consistency's), so that what is accepted here is not
    refused by the push after training. The token and offline mode are the environment's, checked before training
    (export/push.py `check_push_to`). `spelling`: how the commands to do instead are given (the CLI's, or the API's
    calls)."""
    t = config.train
    if t.push_to is None:
        if t.push_private:
            raise ConfigError(
                "option 'train.push_private' is true, but 'train.push_to' is not set, so nothing is pushed; give the "
                "repository as train.push_to: OWNER/NAME, or drop push_private."
            )
        return
    check_repo_id(t.push_to, "option 'train.push_to'")
    sets = as_they_train(config, stages)
    last = sets[-1] if sets else {}
    method, task = last.get("method.name", config.method.name), last.get("task", config.task)
    whose = "the last stage's " if config.stages else ""
    named = f"option 'train.push_to' is {t.push_to!r}, but {whose}"
    instead = spelling.merge_then_push(config.output_dir, t.push_to)
    if task in ("classify", "reward"):
        raise ConfigError(
            f"{named}task is {task}: a head on the model's last token, which tunelab push does not push (it pushes "
            "the adapters of tasks sft, dpo and grpo). Remove train.push_to."
        )
    if method not in ("lora", "dora"):
        raise ConfigError(
            f"{named}method.name is {method}, which trains the model's own weights: there is no adapter to push. "
            "Remove train.push_to; after training, merge the run into a model folder with its chat template and "
            f"generation settings and push that: {instead}."
        )
    starts = [(s.get("method.name", config.method.name), e.get("continue")) for s, e in zip(sets, config.stages)]
    if where := over_changed_weights(starts):
        raise ConfigError(
            f"option 'train.push_to' is {t.push_to!r}, but the last stage trains its adapter over weights that "
            f"earlier stages changed ({where}), which the adapter does not hold: put on the original base, as its "
            "adapter_config.json tells PEFT's AutoPeftModelForCausalLM to, it would be another model than the one "
            f"trained. Remove train.push_to; after training, merge the run into a model folder and push that: {instead}."
        )


def check_early_stopping(config: RunConfig, task_options: bool = True, stages: list[dict] | None = None) -> None:
    """train.early_stopping_patience where it cannot work: without evaluations during training (train.eval_every 0),
    in a federation (its rounds are not the loop's steps) or in a staged run (a stage stopped early would hand a
    shorter stage to the next); min_delta without patience, which nothing reads. The eval split itself is checked
    once the data is read (training/early_stop.py `require_eval_split`): a source's own eval file gives one too.
    `stages`: as check_consistency's."""
    t = config.train
    staged = any("train.early_stopping_patience" in entry for entry in as_they_train(config, stages))
    if not (t.early_stopping_patience or staged):
        if task_options and t.early_stopping_min_delta:
            raise ConfigError(
                f"option 'train.early_stopping_min_delta' is {t.early_stopping_min_delta:g}, but "
                "'train.early_stopping_patience' is 0 (early stopping off), so nothing reads it; set a patience "
                "(e.g. 3) or drop min_delta."
            )
        return
    if config.federated.enabled:
        raise ConfigError(
            "option 'train.early_stopping_patience' is not supported in a federation (federated.clients or "
            "federated.split_file): its length is federated.rounds, and train.keep_best already keeps the round of "
            "the lowest eval loss. Remove it or set it to 0."
        )
    if config.stages:
        raise ConfigError(
            "option 'train.early_stopping_patience' is not supported in a staged run (stages): a stage stopped early "
            "would hand a shorter stage to the next. Remove it (from the stages too) or set it to 0; "
            "train.keep_best still keeps each stage's weights of the lowest eval loss."
        )
    if t.eval_every == 0:
        raise ConfigError(
            f"option 'train.early_stopping_patience' is {t.early_stopping_patience}, but 'train.eval_every' is 0 "
            "(evaluate only at the end), so no evaluation could stop the run; set train.eval_every to auto or N > 0."
        )


def quantize_needs_adapter(method: str) -> str:
    """The message for QLoRA's 4-bit base beside a method that trains the base's own weights (training/build.py
    refuses it too, for a model built outside a config)."""
    return (
        f"option 'method.quantize_base' is nf4 (QLoRA), which freezes the base in 4 bits; it needs method.name "
        f"lora or dora, not {method}."
    )


# The method: options that some methods only read (training/build.py's apply_method, training/auto.py's lr).
METHOD_OPTIONS = {
    "r": ("lora", "dora"),
    "alpha": ("lora", "dora"),
    "dropout": ("lora", "dora"),
    "target_modules": ("lora", "dora"),
    "rslora": ("lora", "dora"),
    "init": ("lora", "dora"),
    "use_dora": ("lora",),  # method dora is DoRA whatever it says (true beside it is refused: validate)
    "top_layers": ("layers",),
}


STAGED_RUN = "the staged run"  # the origin of `stages` in a stage's own config (load.stage_config)


def unused_notes(config: RunConfig, origins: dict[str, str], stages: list[dict] | None = None) -> list[str]:
    """A note for each option the user set (its origin is no default) that the run does not read: method.r beside
    method full, method.top_layers beside lora, eval.max_new_tokens of a classify run, data.split_seed without a split,
    train.epochs beside train.max_steps, train.offload_activations on model.device cpu. Not refused: a sweep shares its overrides across methods. A staged
    run's option is unused when no stage's method reads it; a stage's own option when its stage's method does not.
    In a stage's own config, the options it takes from the run were noted with the run's (method.r, read by a lora
    stage, is no news beside a full stage): only those the stage sets are. `stages`: as check_consistency's (a flag
    --method.name full over stages of lora makes their method.r unused)."""
    if origins.get("stages") == STAGED_RUN:  # a stage: the options it sets itself
        origins = {k: v if v.startswith("stage ") else "default" for k, v in origins.items()}
    notes, sets = [], as_they_train(config, stages)
    methods = {entry.get("method.name", config.method.name) for entry in sets} or {config.method.name}
    for key, readers in METHOD_OPTIONS.items():
        name = f"method.{key}"
        if origins.get(name, "default") != "default" and not methods & set(readers):
            value = getattr(config.method, key)
            notes.append(f"note: {name} ({value}) is not used by method {' or '.join(sorted(methods))}")
    for k, entry in enumerate(sets, 1):
        method = entry.get("method.name", config.method.name)
        for key, readers in METHOD_OPTIONS.items():
            if f"method.{key}" in entry and method not in readers:
                notes.append(f"note: stage {k}: method.{key} ({entry[f'method.{key}']}) is not used by method {method}")
    tasks = run_tasks(config, stages)
    if not tasks - {"classify", "reward"}:  # a head generates no text: no answer to limit or refuse
        for name in ("eval.max_new_tokens", "eval.refusal"):
            if origins.get(name, "default") != "default":
                value = getattr(config.eval, name.partition(".")[2])
                notes.append(
                    f"note: {name} ({value}) is not used by task {' or '.join(sorted(tasks))} (it generates no text)"
                )
    if not config.federated.enabled:  # tunelab train refuses a federation; a federated option alone it ignores
        for name, _, _ in iter_options():
            if name.startswith("federated.") and origins.get(name, "default") != "default":
                value = getattr(config.federated, name.partition(".")[2])
                notes.append(
                    f"note: {name} ({value}) is not used outside a federation (federated.clients or split_file)"
                )
    split = "data.split_seed"  # a staged or federated run may hold out a fraction where this config does not show it
    if origins.get(split, "default") != "default" and not config.data.eval_fraction:
        if not config.stages and not config.federated.enabled:
            notes.append(
                f"note: {split} ({config.data.split_seed}) is not used without data.eval_fraction (it seeds that split)"
            )
    epochs = "train.epochs"  # max_steps sets the run's length; epochs is then read by nothing
    if origins.get(epochs, "default") != "default" and config.train.max_steps is not None:
        if not config.stages and not config.federated.enabled:  # a stage or a federation says its own length
            notes.append(
                f"note: {epochs} ({config.train.epochs}) is not used beside train.max_steps "
                f"({config.train.max_steps}), which sets the run's length"
            )
    offload = "train.offload_activations"
    if origins.get(offload, "default") != "default" and config.train.offload_activations is True:
        if config.model.device == "cpu":  # it parks layer inputs in pinned host memory of a CUDA device
            notes.append(f"note: {offload} (True) is not used on model.device cpu (it offloads from a GPU)")
    return notes


def unread_options(config: RunConfig, stages: list[dict] | None = None) -> set[str]:
    """The options the run does not read whatever their values: the federated section outside a federation, a task
    section's options that no task of the run reads (dpo.* of an sft run), a method's options beside another method
    (method.r beside full), the answer's limits of a run that generates no text; in a federation, the options of
    tunelab train it does not read (federated.NOT_READ, which it refuses when set) and the federated.* options its
    other settings leave idle. The printed config leaves out those at their defaults (config/render.py);
    unused_notes names those the user set. `stages`: as check_consistency's."""
    tasks = run_tasks(config, stages)
    methods = {entry.get("method.name", config.method.name) for entry in as_they_train(config, stages)}
    methods = methods or {config.method.name}
    unread = set()
    for name, _, _ in iter_options():
        section, _, key = name.partition(".")
        if section == "federated" and not config.federated.enabled:
            unread.add(name)
        elif not read_by(name, tasks):
            unread.add(name)
        elif section == "method" and key in METHOD_OPTIONS and not methods & set(METHOD_OPTIONS[key]):
            unread.add(name)
    if not tasks - {"classify", "reward"}:
        unread |= {"eval.max_new_tokens", "eval.refusal"}
    if config.federated.enabled:
        unread |= NOT_READ.keys() | {f"federated.{key}" for key in config.federated.idle()}
    return unread


# The options of the task sections that serve some tasks only; every dpo.* option serves task dpo, every grpo.* grpo.
TASK_OPTIONS = {
    "classify.class_weights": ("classify",),
    "classify.label_weights": ("classify",),
    "classify.head_init": ("classify",),  # a reward head has no label words
    "classify.prompt_format": ("classify", "reward"),
    "classify.head_lr": ("classify", "reward"),
}


def serving_tasks(name: str) -> tuple[str, ...] | None:
    """The tasks that read option `name`, or None when every task may."""
    section = name.partition(".")[0]
    return ("dpo",) if section == "dpo" else ("grpo",) if section == "grpo" else TASK_OPTIONS.get(name)


def read_by(name: str, tasks: set[str]) -> bool:
    """Whether some task of `tasks` reads option `name`."""
    serves = serving_tasks(name)
    return serves is None or bool(tasks & set(serves))


def misplaced_option(name: str, tasks: set[str], where: str) -> ConfigError | None:
    """The error for option `name` set where no task of `tasks` reads it (`where` says which task the run has), or
    None when one does."""
    if read_by(name, tasks):
        return None
    serves = serving_tasks(name)
    plural = "s" if len(serves) > 1 else ""
    return ConfigError(
        f"option '{name}' is for task{plural} {' and '.join(serves)}; {where}. A run of another task would ignore it: "
        "remove it, or set it in the stage of that task."
    )


def option_default(f: dataclasses.Field):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def run_tasks(config: RunConfig, stages: list[dict] | None = None) -> set[str]:
    """The tasks a run trains: its stages' (a stage without `task` takes the run's), else its own. `stages`: as
    check_consistency's."""
    return {entry.get("task", config.task) for entry in as_they_train(config, stages)} or {config.task}


def check_task_options(config: RunConfig, stages: list[dict] | None = None) -> None:
    """An option of a task section that no task of the run reads (dpo.beta on an sft run) is refused, not ignored. A
    staged run's options serve every task among its stages (config/load.py's stage_config gives each stage those of
    its task), each as it trains (`stages`: as check_consistency's)."""
    tasks = run_tasks(config, stages)
    shown = ", ".join(sorted(tasks))
    where = f"the stages' tasks are {shown}" if config.stages else f"option 'task' is {config.task}"
    for name, f, _ in iter_options():
        if serving_tasks(name) is None:
            continue
        section, _, key = name.partition(".")
        if getattr(getattr(config, section), key) != option_default(f) and (
            error := misplaced_option(name, tasks, where)
        ):
            raise error


# The dpo options that some losses only read (tasks/dpo.py): ipo, orpo and kto smooth no labels, only simpo has a
# gamma, only kto weighs its rows by their label.
DPO_LOSS_OPTIONS = {
    "label_smoothing": ("sigmoid", "simpo"),
    "simpo_gamma": ("simpo",),
    "desirable_weight": ("kto",),
    "undesirable_weight": ("kto",),
}


def check_dpo_loss_options(config: RunConfig) -> None:
    """A dpo option that the run's dpo.loss does not read (label_smoothing with ipo) is refused, not ignored."""
    if config.task != "dpo":
        return
    defaults = {f.name: option_default(f) for f in dataclasses.fields(config.dpo)}
    for key, losses in DPO_LOSS_OPTIONS.items():
        if config.dpo.loss not in losses and getattr(config.dpo, key) != defaults[key]:
            raise ConfigError(
                f"option 'dpo.{key}' is read by dpo.loss {' and '.join(losses)}; dpo.loss is {config.dpo.loss}, "
                f"which would ignore it. Remove it, or set dpo.loss to {' or '.join(losses)}."
            )


def check_head_options(config: RunConfig) -> None:
    """classify.prompt_format holds {text} once."""
    c = config.classify
    if c.prompt_format is not None and c.prompt_format.count(PLACEHOLDER) != 1:
        found = "has no" if PLACEHOLDER not in c.prompt_format else "has more than one"
        raise ConfigError(
            f"option 'classify.prompt_format' is {c.prompt_format!r}: it {found} {PLACEHOLDER} placeholder; write it "
            f"once where the row's text goes, e.g. 'Request: {PLACEHOLDER}\\nDomain:'."
        )


def _check_sources(data: DataConfig) -> None:
    """Each mapping entry of data.train names one place to read (path or hub) and a positive weight."""
    formats = DataConfig.__dataclass_fields__["format"].metadata["choices"]
    delimiters = DataConfig.__dataclass_fields__["delimiter"].metadata["choices"]
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
            raise ConfigError(
                f"{where}: format is {source.format!r}; allowed values: {', '.join(formats)}."
                + value_hint("data.format", source.format, formats)
            )
        if source.delimiter is not None and source.delimiter not in delimiters:
            raise ConfigError(
                f"{where}: delimiter is {source.delimiter!r}; allowed values: {', '.join(delimiters)} (tab for a tab)."
            )
        if source.delimiter is not None and source.hub is not None:
            raise ConfigError(
                f"{where} ({source.hub}): delimiter separates the values of .csv files; a hub dataset's rows come "
                "through the datasets library. Remove it."
            )
        if source.eval_split is not None and source.eval is not None:
            raise ConfigError(
                f"{where} ({source.path or source.hub}): give one of eval (a file) and eval_split (a split of the "
                "same dataset) as the source's eval rows."
            )
        if source.eval_split is not None and source.eval_split == source.split:
            raise ConfigError(
                f"{where} ({source.path or source.hub}): eval_split is {source.eval_split!r}, the split the source "
                "trains on, so its eval loss would measure rows it trained on; name another split (e.g. validation)."
            )
        if source.eval_take is not None and source.eval_split is None:
            raise ConfigError(
                f"{where} ({source.path or source.hub}): eval_take limits the rows read of eval_split, which the "
                "source does not give; remove eval_take, or give eval_split (another split of the same dataset)."
            )
        if source.streaming and source.hub is None:
            raise ConfigError(f"{where}: streaming reads hub datasets; a local source ({source.path}) is read whole.")
