"""What a run needs before its first step, loaded the same way by `tunelab train` and `tunelab check`.

`load_inputs` is the cheap part (model source, tokenizer, the data rendered and reported, as the run's task reads
it); `load_model` builds the model to train and finds (and by default repairs) the untrained embedding rows of the
tokens the data uses. Neither writes anything.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.config import DataConfig, DataSource, RunConfig
from tunelab.config.flags import CLI, Spelling
from tunelab.config.paths import function_file
from tunelab.data.loader import Datasets
from tunelab.errors import ConfigError, DataError, RunDirError
from tunelab.models.base_record import pinned_source
from tunelab.models.load import ModelSource, fingerprint, load_hf_config, load_tokenizer
from tunelab.models.untrained import UntrainedReport, every_token, find_untrained, repair_rows, token_counts
from tunelab.peft.save import continue_adapter
from tunelab.run_info import RunInfo
from tunelab.rundir import HEAD_TASKS, is_run_dir, read_info
from tunelab.tasks import get_task
from tunelab.tasks.head import HEAD
from tunelab.tasks.task import Task
from tunelab.training.build import BuiltModel, build_model, checkpoint_mode
from tunelab.training.initial_factors import KeptFactors


@dataclass
class Inputs:
    source: ModelSource
    tokenizer: Any
    data: Datasets


def load_inputs(
    cfg: RunConfig,
    task: Task | None = None,
    commit: str | None = None,
    weights: bool = True,
    spelling: Spelling = CLI,
) -> Inputs:
    """The data as `task` (default: the config's) builds it, over the model at the hub `commit` a resumed run recorded
    (None: model.revision, resolved to its commit now). `weights=False`: a local model folder may hold no weights yet
    (tunelab plan reads the model's config.json alone). `spelling`: how refusals name options and commands (the
    flags, or the Python calls), where the config's own name for them is not the caller's."""
    task = task or get_task(cfg.task, cfg, spelling)
    source = pinned_source(cfg.model.name, commit or cfg.model.revision, weights)
    if cfg.model.adapter:
        check_adapter_base(cfg.model.adapter, source)
    tokenizer = load_tokenizer(source, cfg.model.trust_remote_code, spelling)
    refuse_beyond_context(cfg, source, spelling)
    data = task.build_data(cfg, tokenizer, cfg.train.seed)
    refuse_unusable_eval(cfg.data, data)
    return Inputs(source, tokenizer, data)


def refuse_beyond_context(cfg: RunConfig, source: ModelSource, spelling: Spelling = CLI) -> None:
    """ConfigError when data.max_length is above the model's context window (its config's max_position_embeddings):
    text blocks and packed rows are that long, and so may a chat be, so training would put tokens at positions the
    model was never trained on (past a learned position table's end, an index error). A model whose config says
    nothing is not checked."""
    context = getattr(load_hf_config(source, cfg.model.trust_remote_code, spelling), "max_position_embeddings", None)
    if isinstance(context, int) and 0 < context < cfg.data.max_length:
        raise ConfigError(
            f"option 'data.max_length' is {cfg.data.max_length}, above the context window of model {cfg.model.name}: "
            f"{context} tokens (max_position_embeddings in its config), so rows that long would train positions the "
            f"model never saw. Set data.max_length to {context} or less (to train a longer context on purpose, give "
            "the model's config.json the longer max_position_embeddings with a rope scaling, rope_type linear)."
        )


def refuse_packing_off_the_fast_path(cfg: RunConfig, impl: str) -> None:
    """ConfigError for data.packing on the generic path (`impl`), whose attention does not keep a packed row's
    documents apart."""
    if cfg.data.packing and impl != "fast":
        raise ConfigError(
            "option 'data.packing' needs the fast path (a Llama-family model with model.impl auto or fast); "
            f"{cfg.model.name} runs on the generic path. Set data.packing to false."
        )


def check_adapter_base(adapter: str, source: ModelSource) -> None:
    """ConfigError when `adapter` is a run directory whose run recorded the fingerprint of its base's weights and
    model.name has other weights (same shapes or not): the adapter would go on training over a model it never saw.
    A run over a hub id is checked by the commit it recorded; a PEFT folder records neither and is not checked."""
    folder = Path(adapter).expanduser()
    if not is_run_dir(folder):
        return
    try:
        info = read_info(folder, require_finished=False)
    except RunDirError as exc:
        raise ConfigError(f"option 'model.adapter': {exc}") from None
    moved = info.base_source == "hub" and source.kind == "hub" and source.name == info.base_model
    if moved and info.base_revision and source.revision and source.revision != info.base_revision:
        raise ConfigError(
            f"option 'model.adapter': the adapter in {folder} was trained over {info.base_model} at commit "
            f"{info.base_revision}, but model.name {source.name} is at commit {source.revision} now (its branch moved "
            f"on, or model.revision names another). Set model.revision: {info.base_revision}, or start a new adapter."
        )
    now = fingerprint(source)
    if info.base_fingerprint and now and now != info.base_fingerprint:
        raise ConfigError(
            f"option 'model.adapter': the adapter in {folder} was trained over {info.base_model} (weights "
            f"fingerprint {info.base_fingerprint}), but model.name {source.name} holds other weights (fingerprint "
            f"{now}). Set model.name to the adapter's base, or start a new adapter."
        )


def refuse_unusable_eval(d: DataConfig, data: Datasets) -> None:
    """DataError when the eval files the config names (data.eval, a source's eval file) have no usable row (every
    row too long, or of a label the training rows lack): the run would go on without the eval loss, keep_best and the
    overfitting check its config asked for. A data.eval_fraction whose held-out rows are all unusable is said, with
    the split seed that drew them, not refused: data.split_seed (default: train.seed) chooses which rows it holds
    out, and another may hold out usable ones."""
    if data.eval:
        return
    files = ([d.eval] if d.eval else []) + [s.eval for s in d.train if isinstance(s, DataSource) and s.eval]
    files += [  # a source's eval_split: its rows are named as the split is (data/hub.py)
        f"{Path(s.path).expanduser() if s.path else s.hub}[{s.eval_split}]"
        for s in d.train
        if isinstance(s, DataSource) and s.eval_split
    ]
    report = data.report
    if files:
        read = sum(report.files[f].read for f in files if f in report.files)
        skipped = sum(report.files[f].skipped for f in files if f in report.files)
        reasons = [f"{reason} (e.g. {skip.locations[0]})" for reason, skip in report.skips_in(files).items()]
        why = f"; {skipped} skipped: {', '.join(reasons)}" if reasons else ""
        raise DataError(
            f"{', '.join(files)}: the eval split has no usable rows ({read} read{why}). Fix those rows "
            "(data.max_length and data.overlong apply to them too), or remove the eval option."
        )
    if d.eval_fraction and report.eval.examples:  # a lone .txt document holds nothing out: no note
        seed = f" (split seed {report.split_seed})" if report.split_seed is not None else ""
        print(
            f"note: every example data.eval_fraction {d.eval_fraction:g} held out{seed} is unusable (too long, or of "
            "a label the training rows lack), so this run has no eval loss, keep_best or overfitting check. Raise "
            "data.max_length, set data.overlong: truncate, give a data.eval file, or set data.split_seed to hold out "
            "other examples.",
            flush=True,
        )


def load_model(
    cfg: RunConfig,
    inputs: Inputs,
    impl: str | None = None,
    resumed: RunInfo | None = None,
    federation: bool = False,
    start: KeptFactors | None = None,
) -> tuple[BuiltModel, UntrainedReport]:
    """The model with the method applied, its untrained rows found and (model.fix_untrained_tokens) repaired.
    `impl` overrides model.impl (tunelab check builds the generic model to compare); `resumed`: the run.json of the
    run --resume continues (its dtype is kept, `build.kept_dtype`); `federation`: the rows of every token the
    tokenizer has, as a federation's server and clients repair them (tunelab check of a federated config), not only
    those of the tokens `inputs` use; `start`: the resumed run's kept A0, B0 (`training.initial_factors`)."""
    model_cfg = dataclasses.replace(cfg.model, impl=impl) if impl else cfg.model
    built = build_model(
        inputs.source, model_cfg, cfg.method, checkpoint_mode(cfg.train), resumed, start, fp8=cfg.train.fp8
    )
    refuse_packing_off_the_fast_path(cfg, built.impl)
    vocab = max(len(inputs.tokenizer), built.model.config.vocab_size)
    if federation:
        counts = every_token(inputs.tokenizer, vocab)
    else:
        counts = token_counts(inputs.data.train + inputs.data.eval, vocab)
    if cfg.model.adapter:  # its weights, and the base rows repaired under it are repaired (and recorded) again
        # a head saved with it (a classify or reward run's) is the task's to load, once it has made its head
        leave = (HEAD,) if cfg.task in HEAD_TASKS else ()
        inherited = continue_adapter(built.model, cfg.model.adapter, cfg.method, leave)
        counts[[i for i in inherited if i < vocab]] += 1
    report = UntrainedReport(find_untrained(built.model, counts, inputs.tokenizer))
    if report.tokens and cfg.model.fix_untrained_tokens:
        repair_rows(built.model, report.rows())
        report.repaired = True
    return built, report


def protected_paths(cfg: RunConfig, config_path: str | Path | None) -> dict[str, list[str]]:
    """The user's files a run directory must never hold (see training/outdir.py)."""
    model = Path(cfg.model.name).expanduser()
    rewards = [r for r in cfg.grpo.rewards if not isinstance(r, str)] if cfg.task == "grpo" else []
    functions = [cfg.data.transform, *(r.function for r in rewards if r.kind == "function")]
    return {
        "data file": cfg.data.local_paths(),
        "config file": [str(config_path)] if config_path else [],
        "eval questions file": [cfg.eval.questions] if cfg.eval.questions else [],
        "model": [str(model)] if model.exists() else [],
        "adapter the run starts from": [cfg.model.adapter] if cfg.model.adapter else [],
        "function file": [f for spec in functions if spec and (f := function_file(spec))],
        "reward model run": [r.run for r in rewards if r.kind == "model" and r.run],
    }
