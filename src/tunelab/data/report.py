"""What happened to the user's data: records read, examples used, everything skipped and why, and token lengths.

Every record that does not become training data is counted here under a reason, with the first few `file:line`
locations, so nothing is dropped silently. `summary()` is printed when training starts; `to_dict()` is saved as
`data_report.json` in the run directory and feeds the HTML report (the histogram is plain edges + counts).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field

from tunelab.errors import counted

MAX_LOCATIONS = 5  # locations kept per skip reason; the count is always complete
HISTOGRAM_BINS = 20
PROMPTS = "prompts"  # the format of grpo's rows (tasks/prompt_data.py): prompts, whose answers are sampled


class Line(int):
    """A record's 1-based line in a file that `location` would otherwise take for an array by its name: a .json file
    that holds JSON lines (read as the datasets library reads it). Its row 2 is `file:2`, not item `file[2]`."""


class Index(int):
    """A record's 0-based index in a set that `location` would otherwise take for a line-based file by its name: a
    save_to_disk folder of one Dataset, named by its folder. Its first row is `folder[0]`, not line `folder:0`."""


class Made(int):
    """The line or index of a record that data.transform turned into several rows, equal to it (the rows of one
    record are one record to the checks that compare records), with which of those rows this one is: row 2 of the 5
    made of line 3 is `file:3 (data.transform's row 2 of 5)`. `record` keeps the record's own line (a Line, an
    Index) for `location`."""

    def __new__(cls, record: int, row: int = 1, rows: int = 1):
        made = super().__new__(cls, record)
        made.record, made.row, made.rows = record, row, rows
        return made


MADE = re.compile(r" \(data\.transform's row \d+ of \d+\)$")  # what `location` adds for a Made line


def location(path: str, line: int) -> str:
    """`file:line` for line-based files (jsonl, csv, txt), `file[index]` for array-like ones (json array, parquet);
    a row data.transform made of a record (`Made`) adds which of its rows it is."""
    if isinstance(line, Made):
        return f"{location(path, line.record)} (data.transform's row {line.row} of {line.rows})"
    array = path.lower().endswith((".json", ".json.gz", ".parquet", ".arrow", "]"))  # "]": a datasets split
    if isinstance(line, Index) or (array and not isinstance(line, Line)):
        return f"{path}[{line}]"
    return f"{path}:{line}"


def location_path(where: str) -> str:
    """The file of a `location` string: `file:line` or `file[index]`, with or without a Made row's suffix."""
    where = MADE.sub("", where)
    if where.endswith("]") and "[" in where:
        return where[: where.rindex("[")]
    return where[: where.rindex(":")] if ":" in where else where


@dataclass
class FileCounts:
    read: int = 0  # records (rows, lines, array items, documents) read from the file
    used: int = 0  # records that ended up in a training or eval row
    skipped: int = 0  # records not used, for any reason (see DataReport.skips)
    truncated: int = 0  # chat examples cut to max_length and kept


@dataclass
class Skip:
    count: int = 0
    locations: list[str] = field(default_factory=list)


# What a task does with its rows that hold characters the tokenizer drops (`Unread.effect`): the clause said of
# its training rows, and the word for its eval rows (None: the clause holds for them too)
EFFECTS = {
    "trained": ("they are trained on without them", "evaluated"),  # sft chats and texts, dpo, kto and reward rows
    "sampled": ("the model generates its answers from these prompts without them", None),  # grpo's prompts
    "scored": ("they are scored and trained on without them", "scored"),  # classify's inputs, read by its head
    "answered": ("they are answered without them", None),  # compare's questions
}


def char_names(chars: list[str]) -> dict[str, int]:
    """{"U+0004": how many times} of `chars`, in order of first appearance."""
    names: dict[str, int] = {}
    for c in chars:
        name = f"U+{ord(c):04X}"
        names[name] = names.get(name, 0) + 1
    return names


@dataclass
class Unread:
    """Rows whose text holds characters the tokenizer drops (no token of their own, no unknown token): read without
    them (data/size_bound.py's `unreadable`), which `effect` (a key of EFFECTS) says for the task that read them."""

    rows: int = 0
    chars: dict[str, int] = field(default_factory=dict)  # "U+0004" -> how many times, over all those rows
    first: str = ""  # the first such row's location
    held: int = 0  # of the rows, those held out for eval (data.eval, data.eval_fraction)
    effect: str = "trained"

    @classmethod
    def saved(cls, d: dict) -> Unread:
        """The Unread that a saved report (data_report.json, eval.json) records as `d`: the keys of an older one
        take their defaults."""
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})

    def line(self) -> str:
        """The summary's line on them ('' where there are none)."""
        if not self.rows:
            return ""
        chars = sorted(self.chars.items(), key=lambda item: -item[1])
        more = ", ..." if len(chars) > MAX_LOCATIONS else ""
        held = ", ".join(f"{c} x{n}" for c, n in chars[:MAX_LOCATIONS]) + more
        hold = "holds" if self.rows == 1 else "hold"
        return (
            f"  {counted(self.rows, 'row')} {hold} characters the tokenizer drops, having no token for them ({held}): "
            f"first at {self.first}; {self.effect_clause()}"
        )

    def effect_clause(self) -> str:
        """What the task does with these rows without those characters, its eval rows said apart."""
        trained, evaluated = EFFECTS.get(self.effect, EFFECTS["trained"])
        if evaluated is None or not self.held:
            return trained
        if self.held >= self.rows:
            return f"they are {evaluated} without them"
        them = "the eval row among them is" if self.held == 1 else f"the {self.held} eval rows among them are"
        return f"{trained} ({them} {evaluated} without them)"


@dataclass
class LengthStats:
    """Token lengths of examples as rendered, before any truncation or drop (what max_length is chosen against).
    `at_least` of them are lower bounds: examples too long by their size alone, dropped untokenized
    (data/size_bound.py) or cut after tokenizing only their head (data/leading.py)."""

    count: int = 0
    min: int = 0
    max: int = 0
    mean: float = 0.0
    median: int = 0
    p95: int = 0
    bin_edges: list[int] = field(default_factory=list)  # HISTOGRAM_BINS + 1 edges; bin i is [edges[i], edges[i+1])
    counts: list[int] = field(default_factory=list)
    at_least: int = 0  # lengths that are lower bounds (never tokenized whole)

    def bounds_note(self, unit: str, limit: str = "it") -> str:
        """What a line of these lengths adds where `at_least` of them are lower bounds ('' where none is): `unit`
        names what one length is of, `limit` max_length."""
        if not self.at_least:
            return ""
        they = "it" if self.at_least == 1 else "they"
        return f"{counted(self.at_least, unit)} over {limit} by size alone, not tokenized whole: counted at the fewest tokens {they} can have"

    @classmethod
    def of(cls, lengths: list[int]) -> LengthStats:
        if not lengths:
            return cls()
        ordered = sorted(lengths)
        n = len(ordered)
        width = max(1, math.ceil((ordered[-1] + 1) / HISTOGRAM_BINS))
        edges = [i * width for i in range(HISTOGRAM_BINS + 1)]
        counts = [0] * HISTOGRAM_BINS
        for length in ordered:
            counts[min(length // width, HISTOGRAM_BINS - 1)] += 1
        return cls(
            count=n,
            min=ordered[0],
            max=ordered[-1],
            mean=sum(ordered) / n,
            median=ordered[n // 2],
            p95=ordered[min(n - 1, math.ceil(0.95 * n) - 1)],
            bin_edges=edges,
            counts=counts,
        )


@dataclass
class SplitStats:
    examples: int = 0  # chat examples or text documents in this split
    used: int = 0  # of those, the ones in a row (the rest were dropped as too long; see skips)
    rows: int = 0  # rows the model sees (after text blocking and packing)
    tokens: int = 0  # real tokens over all rows
    loss_tokens: int = 0  # tokens with a label (label != -100)


@dataclass
class SourceStats:
    """One source of a mixture (data/mixture.py): what it holds and what each epoch draws from it."""

    weight: float | None = None  # as configured (None: none given)
    share: float = 0.0  # of each epoch, in data.mix_by units
    examples: int = 0  # training examples (chat) or documents (text)
    rows: int = 0  # rows before packing
    tokens: int = 0
    loss_tokens: int = 0
    drawn_rows: int = 0  # rows per epoch (repeats counted)
    drawn_tokens: int = 0  # tokens per epoch, expected
    eval_rows: int = 0

    @property
    def repeats(self) -> float:
        """How many times each epoch draws each of its rows, on average (below 1: a subset)."""
        return self.drawn_rows / self.rows if self.rows else 0.0


@dataclass
class DataReport:
    """Counts gathered while reading, converting, rendering and packing; one instance per `build_datasets` call."""

    files: dict[str, FileCounts] = field(default_factory=dict)
    formats: dict[str, str] = field(default_factory=dict)  # file -> detected or forced format
    template: str = ""
    max_length: int = 0
    skips: dict[str, Skip] = field(default_factory=dict)  # reason -> count and first locations
    text_blocks: int = 0  # blocks of max_length tokens cut from text documents
    packed: bool = False
    lengths: LengthStats = field(default_factory=LengthStats)
    train: SplitStats = field(default_factory=SplitStats)
    eval: SplitStats = field(default_factory=SplitStats)
    eval_source: str = "none"  # "none", "file", "fraction", or (a mixture) "file and fraction"
    split_seed: int | None = None  # the seed of data.eval_fraction's split (data.split_seed, else train.seed)
    sources: dict[str, SourceStats] = field(default_factory=dict)  # a mixture's sources, by name
    packed_epoch_rows: int = 0  # a packed mixture: the rows epoch 0's draw packs into (what a step count is made of)
    mix_by: str = ""  # what the mixture's weights count ("examples" or "tokens"); "" without a mixture
    notes: list[str] = field(default_factory=list)  # what is worth knowing but skips no record (files not read)
    pairs: bool = False  # examples are preference pairs (dpo, reward): two rows each, lengths those of the sides
    truncated_at: list[str] = field(default_factory=list)  # the first MAX_LOCATIONS examples cut to max_length
    made_from: int = 0  # records that data.transform turned into several rows (a list of rows)
    made_rows: int = 0  # the rows it made of them, counted among the records read
    unread: Unread = field(default_factory=Unread)  # rows holding characters the tokenizer drops
    _lengths: list[int] = field(default_factory=list, repr=False)  # raw lengths behind `lengths`; not saved
    _file_skips: dict[str, dict[str, Skip]] = field(default_factory=dict, repr=False)  # file -> reason; not saved

    def file(self, path: str) -> FileCounts:
        return self.files.setdefault(path, FileCounts())

    def read(self, path: str, n: int = 1) -> None:
        self.file(path).read += n

    def used(self, path: str, n: int = 1) -> None:
        self.file(path).used += n

    def skip(self, reason: str, path: str, line: int) -> None:
        """Record that the record at path:line is not used, and why."""
        self.file(path).skipped += 1
        for entry in (
            self.skips.setdefault(reason, Skip()),
            self._file_skips.setdefault(path, {}).setdefault(reason, Skip()),
        ):
            entry.count += 1
            if len(entry.locations) < MAX_LOCATIONS:
                entry.locations.append(location(path, line))

    def skips_in(self, paths) -> dict[str, Skip]:
        """The skips of the records of `paths` only, by reason (`skips` counts those of every file read): what one
        source of a mixture, or an eval file, lost."""
        out: dict[str, Skip] = {}
        for path in dict.fromkeys(paths):
            for reason, skip in self._file_skips.get(path, {}).items():
                entry = out.setdefault(reason, Skip())
                entry.count += skip.count
                entry.locations += skip.locations[: MAX_LOCATIONS - len(entry.locations)]
        return out

    def add_lengths(self, lengths: list[int], at_least: int = 0) -> None:
        """Token lengths of rendered examples (chat) or documents (text), before truncation or drop; `at_least` of
        them are lower bounds (examples too long by their size alone, not tokenized whole)."""
        self._lengths.extend(lengths)
        at_least += self.lengths.at_least
        self.lengths = LengthStats.of(self._lengths)
        self.lengths.at_least = at_least

    def dropped_chars(self, where: str, chars: list[str], held: bool = False) -> None:
        """Record that the row at `where` (its `location`) holds `chars`, which the tokenizer drops; `held`: an eval
        row."""
        if not self.unread.rows:
            self.unread.first = where
        self.unread.rows += 1
        self.unread.held += held
        for name, n in char_names(chars).items():
            self.unread.chars[name] = self.unread.chars.get(name, 0) + n

    def truncated(self, path: str, line: int) -> None:
        """Record that the example at path:line was cut to max_length and kept."""
        self.file(path).truncated += 1
        if len(self.truncated_at) < MAX_LOCATIONS:
            self.truncated_at.append(location(path, line))

    @property
    def total_read(self) -> int:
        return sum(f.read for f in self.files.values())

    @property
    def total_used(self) -> int:
        return sum(f.used for f in self.files.values())

    @property
    def total_skipped(self) -> int:
        return sum(s.count for s in self.skips.values())

    @property
    def total_truncated(self) -> int:
        return sum(f.truncated for f in self.files.values())

    @property
    def prompts_only(self) -> bool:
        """Every file was read as prompts (task grpo): the loss is on sampled answers, not on these tokens."""
        return bool(self.formats) and set(self.formats.values()) == {PROMPTS}

    def summary(self) -> str:
        """A few lines for the start of training."""
        formats = ", ".join(sorted(set(self.formats.values()))) or "none"
        # a pair is two rows, its chosen and its rejected side; their tokens and lengths are counted per side
        example, sides, per = (
            ("pair", " (chosen and rejected sides)", "side") if self.pairs else ("example", "", "example")
        )
        loss = (  # grpo's rows are prompts: none of their tokens has a label, and "0 with loss" read as a fault
            "prompts: the loss is on the answers sampled from them"
            if self.prompts_only
            else f"{self.train.loss_tokens:,} with loss"
        )
        lines = [
            f"data: {counted(len(self.files), 'file')}, {counted(self.total_read, 'record')}{self._made()}, format {formats}, template {self.template or 'none'}",
            f"  train: {counted(self.train.examples, example)}, {self.train.used} used -> {counted(self.train.rows, 'row')}{sides}, {self.train.tokens:,} tokens ({loss})",
        ]
        if self.eval_source != "none":
            source = self.eval_source + (f", split seed {self.split_seed}" if self.split_seed is not None else "")
            lines.append(
                f"  eval ({source}): {counted(self.eval.examples, example)}, {self.eval.used} used -> {counted(self.eval.rows, 'row')}{sides}, {self.eval.tokens:,} tokens"
            )
        if self.sources:
            lines.append(f"  mixture ({self.mix_by}): per source, rows and tokens held, then drawn each epoch")
            for name, src in self.sources.items():
                weight = f"weight {src.weight:g}, " if src.weight is not None else ""
                evals = f", eval {counted(src.eval_rows, 'row')}" if src.eval_rows else ""
                each = f" (each {src.repeats:.1f} times)" if src.repeats > 1 else ""
                lines.append(
                    f"    {name}: {weight}share {100 * src.share:.1f}%: {counted(src.examples, 'example')} -> "
                    f"{counted(src.rows, 'row')}, {src.tokens:,} tokens; drawn {counted(src.drawn_rows, 'row')}{each}, "
                    f"~{src.drawn_tokens:,} tokens{evals}"
                )
            if self.packed_epoch_rows:  # the train line counts rows before the draw, which is packed each epoch
                lines.append(f"    each epoch's draw is packed: epoch 0 trains on {self.packed_epoch_rows} packed rows")
        if self.lengths.count:
            s = self.lengths
            bounded = f"; {s.bounds_note(per)}" if s.at_least else ""
            lines.append(
                f"  tokens per {per}: min {s.min}, median {s.median}, p95 {s.p95}, max {s.max} (max_length {self.max_length}{bounded})"
            )
        if self.text_blocks:
            lines.append(f"  text: {self.text_blocks} blocks of {self.max_length} tokens")
        return "\n".join(lines + self.losses())

    def _made(self) -> str:
        """What `summary` says of the rows data.transform made of records that it turned into several rows."""
        if not self.made_from:
            return ""
        return f" ({self.made_rows:,} of them made by data.transform of {counted(self.made_from, 'record')})"

    def losses(self) -> list[str]:
        """The lines of `summary` that say what of the data is not trained on as written: rows truncated, records
        skipped (with why and where), and notes."""
        lines = []
        if self.total_truncated:
            more = ", ..." if self.total_truncated > len(self.truncated_at) else ""
            lines.append(f"  truncated to max_length: {self.total_truncated} ({', '.join(self.truncated_at)}{more})")
        for reason, entry in self.skips.items():
            more = ", ..." if entry.count > len(entry.locations) else ""
            lines.append(f"  skipped {entry.count}: {reason} ({', '.join(entry.locations)}{more})")
        lines += [line for line in [self.unread.line()] if line]
        return lines + [f"  note: {note}" for note in self.notes]

    def split_facts(self) -> dict:
        """What run.json records of a data.eval_fraction split: the seed that chose its held-out examples."""
        return {"split_seed": self.split_seed} if self.split_seed is not None else {}

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        del out["_lengths"], out["_file_skips"]
        out["total_read"] = self.total_read
        out["total_used"] = self.total_used
        out["total_skipped"] = self.total_skipped
        out["total_truncated"] = self.total_truncated
        return out
