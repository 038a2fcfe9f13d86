"""Rules that involve more than one option, or the environment: checked once all values are read, for the run and for
each of its stages (`check_consistency`, called by config/load.py).

A single value's type, choices and range are config/values.py's.
"""

from __future__ import annotations

from tunelab.config.data import DataConfig, DataSource
from tunelab.config.run import RunConfig
from tunelab.config.tasks import PLACEHOLDER
from tunelab.config.train import check_trackers, parse_size
from tunelab.errors import ConfigError


def check_consistency(config: RunConfig) -> None:
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
