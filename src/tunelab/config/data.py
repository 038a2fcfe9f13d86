"""The data: section (DataConfig): what to train on and how its records become examples; an entry of data.train written
as a mapping is a DataSource, read by config/values.py as a record of its own."""

from __future__ import annotations

from dataclasses import dataclass

from tunelab.config.options import opt


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
    system_prompt: str | None = opt(
        None, 'system message for this source\'s examples (default: data.system_prompt; "" for none)'
    )
    eval: str | None = opt(None, "a separate eval file for this source (eval loss per source)")
    eval_split: str | None = opt(
        None, "hub and save_to_disk datasets: another split of the same dataset read as this source's eval rows"
    )
    eval_take: int | None = opt(
        None, "read only the first N rows of eval_split (default: take; with streaming: the rows fetched)", min=1
    )
    delimiter: str | None = opt(
        None, "field separator of this source's .csv files and eval file: auto , ; tab | (default: data.delimiter)"
    )
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
    split_seed: int | None = opt(
        None,
        "seed of the data.eval_fraction split (default: train.seed); fix it to compare runs of other seeds on the "
        "same held-out examples",
    )

    def eval_split_seed(self, seed: int) -> int:
        """The seed data.eval_fraction's shuffle uses: data.split_seed, else the run's `seed` (train.seed)."""
        return seed if self.split_seed is None else self.split_seed

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
    system_prompt: str | None = opt(
        None,
        "system message added to every example that has none; in the flag, \\n is a newline, \\t a tab, \\\\ a "
        "backslash",
    )
    max_length: int = opt(512, "maximum tokens per example (text is cut into blocks of this length)", min=8)
    overlong: str = opt(
        "drop",
        "what to do with chats, preference pairs, head inputs and grpo prompts longer than max_length",
        choices=("drop", "truncate"),
    )
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
        "a function applied to every record before its format is read (every task; a grpo reward function receives "
        "the row it returned): module:function or file.py:function; it takes the row (a dict) and returns a dict, "
        "or None to drop the row",
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
