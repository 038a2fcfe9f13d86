"""The entries of data.train as sources: the name each goes by, the data options its rows are read with, and its
records (a hub dataset, a `save_to_disk` folder or .arrow file, or files and folders), read no further than a
caller needs. `loader.build_datasets` reads them all; `training_examples` reads the first rows of each, for a caller
that needs a few examples of a large set (the export's self-check), and `tunelab eval` reads a source's file with
its options (`source_config`)."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

from tunelab.config import DataConfig, DataSource
from tunelab.data.formats import Example, to_examples
from tunelab.data.hub import DEFAULT_SPLIT, is_datasets_path, read_hub, read_local
from tunelab.data.report import DataReport
from tunelab.data.sources import Record, iter_records, note_held_out_files
from tunelab.data.transform import apply_transform, load_transform
from tunelab.errors import ConfigError


def source_name(source: DataSource, index: int) -> str:
    """A source's name in reports and metric names: its name, else its file's or dataset's name."""
    name = source.name or (source.hub if source.hub else Path(source.path).name) or f"source-{index}"
    return "".join(c if c.isalnum() or c in "._-/" else "_" for c in name)


def source_names(train: list[str | DataSource]) -> list[str]:
    """The name of each entry of data.train (`source_name`). Sources that would share one are told apart: files of
    one name by the folders above them (`snips/train.jsonl`, `faq/train.jsonl`), sources of one dataset that read
    other splits or configs of it (train and validation as two sources) by those (`org/set-validation`)."""
    sources = [entry if isinstance(entry, DataSource) else DataSource(path=entry) for entry in train]
    base = [source_name(source, i) for i, source in enumerate(sources, 1)]
    names = list(base)
    for i, source in enumerate(sources):
        kin = [s for s, n in zip(sources, base) if n == base[i] and not s.name]
        if source.name or len(kin) < 2:
            continue
        folders = {Path(s.path).parent for s in kin if s.path and not s.hub}
        if source.path and len(folders) > 1:  # snips/train.jsonl and faq/train.jsonl: named by their folders too
            names[i] = source_name(dataclasses.replace(source, name=_distinct_path(source.path, kin)), i + 1)
            continue
        own = [
            value
            for key, value in (("config", source.config), ("split", source.split))
            if value and len({getattr(s, key) for s in kin}) > 1
        ]
        names[i] = source_name(dataclasses.replace(source, name="-".join([base[i], *own])), i + 1)
    return names


def _distinct_path(path: str, kin: list[DataSource]) -> str:
    """The shortest tail of `path` (its name with the folders above it) that no other of `kin` ends with."""
    parts = Path(path).parts
    others = [Path(s.path).parts for s in kin if s.path and Path(s.path) != Path(path)]
    for k in range(2, len(parts) + 1):
        if all(other[-k:] != parts[-k:] for other in others):
            return "/".join(parts[-k:])
    return path


def source_config(cfg: DataConfig, source: DataSource) -> DataConfig:
    """The data options a source's rows (its training rows and its eval file) are read and rendered with: its own
    format, fields, system prompt and .csv delimiter, where it sets them, else the top-level ones."""
    return dataclasses.replace(
        cfg,
        delimiter=source.delimiter or cfg.delimiter,
        format=source.format or cfg.format,
        fields=source.fields if source.fields is not None else cfg.fields,
        system_prompt=source.system_prompt if source.system_prompt is not None else cfg.system_prompt,
    )


def training_examples(cfg: DataConfig, rows: int | None = None) -> list[Example]:
    """The training examples of `cfg` as `build_datasets` reads them, before the eval split and rendering: the files
    split by data.delimiter, every row through data.transform, each source of a mixture read (its `take`) and
    converted with its own options (`source_config`). `rows`: only the first this many records of each source (of
    the files of a plain list, together) go through data.transform and are converted, for a caller that needs a
    few examples of a large set. Skipped rows are left out; `build_datasets` reports them."""
    report, transform = DataReport(), load_transform(cfg.transform)
    if not any(isinstance(entry, DataSource) for entry in cfg.train):
        records = list(itertools.islice(iter_records(cfg.train, cfg.delimiter, report), rows))  # read no further
        records = apply_transform(records, transform, cfg.transform, report)
        return to_examples(records, cfg.format, cfg.fields, cfg.system_prompt, report)
    examples: list[Example] = []
    for i, entry in enumerate(cfg.train, 1):
        source = entry if isinstance(entry, DataSource) else DataSource(path=entry)
        own, where = source_config(cfg, source), f"option 'data.train', entry {i}"
        records = apply_transform(read_source(source, cfg, where, report, rows), transform, cfg.transform, report)
        examples += to_examples(records, own.format, own.fields, own.system_prompt, report)
    return examples


def eval_split_source(source: DataSource) -> DataSource:
    """The source that reads `source`'s eval_split: that split, no further than its eval_take, else its take (a
    stream of a large set read for its head stops there for its eval rows too, rather than fetching the whole
    validation split)."""
    take = source.eval_take if source.eval_take is not None else source.take
    return dataclasses.replace(source, split=source.eval_split, take=take)


def refuse_split_as_file(source: DataSource, where: str) -> None:
    """ConfigError for a datasets-library source whose `eval` names no file: a split of the same dataset (eval:
    validation) was read as a missing file, with advice about data.train's paths."""
    if (source.hub or is_datasets_path(source.path)) and not Path(source.eval).exists():
        split = Path(source.eval).name
        raise ConfigError(
            f"{where} ({source.path or source.hub}): eval is {source.eval!r}, which names no file; a source's eval "
            f"is a file of rows. To hold out a split of the same dataset, give eval_split: {split} instead."
        )


def read_source(
    source: DataSource,
    cfg: DataConfig,
    where: str,
    report: DataReport | None = None,
    rows: int | None = None,
    option: str = "split",
) -> list[Record]:
    """The records of one source: a hub dataset, a datasets folder or .arrow file, or files and folders. Only its
    first `take` (and `rows`) records are read: a .jsonl, .csv or parquet file is read no further. `option`: the key that
    asked for `source.split` (split, or the source's eval_split), named in messages."""
    limit = min((n for n in (source.take, rows) if n is not None), default=None)
    if source.hub:
        return read_hub(dataclasses.replace(source, take=limit), where)
    if is_datasets_path(source.path):
        return read_local(dataclasses.replace(source, take=limit), where, option)
    if source.split != DEFAULT_SPLIT or source.config or source.eval_split:
        asked = f"split {source.split!r}" if not source.config else f"config {source.config!r}"
        asked = f"eval_split {source.eval_split!r}" if source.eval_split and not source.config else asked
        raise ConfigError(
            f"{where} ({source.path}): {asked} is read from a hub dataset or a save_to_disk folder; the rows of "
            "files are read whole. Remove it, or give each split's rows in a file of their own."
        )
    records = iter_records([source.path], source.delimiter or cfg.delimiter, report, delimiter_option(source, where))
    records = list(itertools.islice(records, limit))
    if report is not None:
        note_held_out_files([source.path], report)
    return records


def delimiter_option(source: DataSource, where: str) -> str:
    """The option that sets the separator of a source's .csv files: its own delimiter, else data.delimiter."""
    return f"{where}: delimiter" if source.delimiter else "data.delimiter"
