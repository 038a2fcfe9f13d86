"""Records from the Hugging Face `datasets` library: hub ids, `save_to_disk` folders and .arrow files.

Each row becomes a `Record` like a row of a local file, so formats, column mapping (`data.fields`) and the report
work unchanged. Where a row came from is named `ID[split]` (or `FOLDER[split]`, `FILE.arrow`) and its 0-based index,
shown as `acme/faq[train][12]` (`report.location`).

A hub id is read with `datasets.load_dataset`: from the network when there is one, from the library's cache when
there is none (set HF_HUB_OFFLINE=1 to skip the network and its retries). An id that is neither cached nor reachable
is a `DataError` naming it. `streaming: true` reads rows as they arrive (no download of the whole set, no Arrow
copy in the cache) and, with `take: N`, stops after N rows (of the eval_split too, or its own `eval_take`): the way to
use the head of a set too large to download.
The rows read are rendered up front like any other source's, so the epoch's order stays a function of the seed.

The library is an optional extra (`pip install 'tunelab[datasets]'`); it is imported only when a source needs it.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from pathlib import Path

from tunelab.config import DataSource
from tunelab.data.report import Index
from tunelab.data.sources import Record
from tunelab.errors import DataError

DEFAULT_SPLIT = DataSource.__dataclass_fields__["split"].default
INSTALL = "pip install 'tunelab[datasets]' (or pip install datasets)"


def is_datasets_path(path: str) -> bool:
    """A local path that only the datasets library reads: an .arrow file or a `save_to_disk` folder."""
    p = Path(path).expanduser()
    if p.is_file():
        return p.suffix == ".arrow"
    return p.is_dir() and any((p / name).is_file() for name in ("dataset_dict.json", "state.json"))


def _library(what: str):
    if importlib.util.find_spec("datasets") is None:
        raise DataError(f"{what}: reading it needs the datasets library; install it with: {INSTALL}.")
    import datasets

    return datasets


def _rows(label: str, rows: Iterable[dict], take: int | None) -> list[Record]:
    records = []
    for index, row in enumerate(rows):
        if take is not None and index >= take:
            break
        records.append(Record(label, Index(index), dict(row)))
    return records


def _remove(option: str) -> str:
    """What to do instead of asking a set of one split for `option` (split, or a source's eval_split)."""
    if option == "split":
        return "remove split to read all of its rows."
    return "remove eval_split, and hold out some of its rows with data.eval_fraction instead."


def _split(datasets, dataset, split: str, where: str, option: str = "split"):
    """The split of a DatasetDict; a Dataset (one set of rows, no splits) as it is, unless another split than the
    default is asked for: it was read whole, labelled with the split asked for. `option`: the source's key that
    asked for the split (split, or eval_split), named in messages."""
    if isinstance(dataset, datasets.DatasetDict):
        if split not in dataset:
            sliced = " (a slice such as train[:100] is read as split: train with take: 100)" if "[" in split else ""
            raise DataError(
                f"{where}: has no split {split!r}; its splits are {', '.join(dataset.keys())}. Set {option}{sliced}."
            )
        return dataset[split]
    if split != DEFAULT_SPLIT:
        raise DataError(
            f"{where}: holds one dataset without splits (saved from a Dataset, not a DatasetDict), so {option} "
            f"{split!r} cannot be read from it; {_remove(option)}"
        )
    return dataset


def read_local(source: DataSource, where: str, option: str = "split") -> list[Record]:
    """An .arrow file or a save_to_disk folder. `option`: the key that asked for `source.split` (split, or the
    source's eval_split), named in messages."""
    datasets = _library(f"{where} ({source.path})")
    path = Path(source.path).expanduser()
    if source.config:
        raise DataError(
            f"{where}: {path} was saved by the datasets library, with no configurations to choose from (config "
            f"{source.config!r} names one of a hub dataset); remove config."
        )
    try:
        if path.is_file() and source.split != DEFAULT_SPLIT:
            raise DataError(
                f"{where}: {path} is an .arrow file, which holds the rows of one split, so {option} {source.split!r} "
                f"cannot be read from it; {_remove(option)}"
            )
        if path.is_file():
            dataset, label = datasets.Dataset.from_file(str(path)), str(path)
        else:
            loaded = datasets.load_from_disk(str(path))
            dataset = _split(datasets, loaded, source.split, f"{where}: {path}", option)
            label = f"{path}[{source.split}]" if isinstance(loaded, datasets.DatasetDict) else str(path)
    except DataError:
        raise
    except Exception as exc:  # the library raises many types for a damaged or foreign folder
        raise DataError(
            f"{where}: {path} cannot be read by the datasets library ({type(exc).__name__}: {exc})."
        ) from None
    return _rows(label, dataset, source.take)


def read_hub(source: DataSource, where: str) -> list[Record]:
    """A dataset id on the hub, from the network or the local cache; streamed when source.streaming. A local file or
    folder is refused: the library would read it with its own rules (a .txt file's every line a row, rows named by
    index), not as the files of a `path:` source are read."""
    local = Path(source.hub).expanduser()
    if local.exists():
        raise DataError(
            f"{where}: hub is {source.hub!r}, a local {'folder' if local.is_dir() else 'file'}, not a dataset id on "
            f"the hub; give it as path: {source.hub} (the datasets library would read it by its own rules: a .txt "
            "file line by line, a document a line)."
        )
    datasets = _library(f"{where} ({source.hub})")
    builders = getattr(getattr(datasets, "packaged_modules", None), "_PACKAGED_DATASETS_MODULES", {})
    if source.hub in builders:  # without data_files, the builder reads the matching files of the working directory
        raise DataError(
            f"{where}: hub is {source.hub!r}, the datasets library's reader of {source.hub} files, not a dataset id; "
            "with no files named it would read those of the working directory. Give your files as path: (tunelab "
            "reads .jsonl, .json, .csv, .parquet and .txt itself), or a dataset id as org/name."
        )
    name = source.hub + (f", config {source.config}" if source.config else "") + f", split {source.split}"
    try:
        dataset = datasets.load_dataset(source.hub, name=source.config, split=source.split, streaming=source.streaming)
    except (ConnectionError, FileNotFoundError) as exc:
        offline = " (HF_HUB_OFFLINE is set)" if datasets.config.HF_HUB_OFFLINE else ""
        raise DataError(
            f"{where}: the dataset {source.hub!r} ({name}) is neither in the local cache "
            f"({datasets.config.HF_DATASETS_CACHE}) nor reachable on the hub{offline}: {exc}. Load it once with a "
            "network (or copy the cache), check the id, or give a local file as path."
        ) from None
    except ValueError as exc:  # a split or config the dataset does not have, among others
        sliced = (  # load_dataset reads a slice of a split, but not of a stream
            " (a stream is read from its start: a slice such as train[:100] is split: train with take: 100)"
            if source.streaming and "[" in source.split
            else ""
        )
        raise DataError(f"{where}: the dataset {source.hub!r} ({name}) cannot be read: {exc}{sliced}") from None
    label = f"{source.hub}[{source.split}]"
    try:
        return _rows(label, dataset, source.take)
    except (ConnectionError, OSError) as exc:  # a stream that broke off
        raise DataError(f"{where}: reading {source.hub!r} ({name}) stopped: {exc}.") from None
