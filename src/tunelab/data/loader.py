"""The data pipeline in one call (`build_datasets`) and the rows of one epoch (`epoch_rows`; data/batches.py makes
their batches).

    files -> records -> [data.transform] -> examples -> [eval split] -> rendered rows (ids + labels) -> [packed rows]

The eval split is taken over examples, before rendering, by a shuffle seeded with data.split_seed (default: the
run's seed, as LLaMA-Factory and Axolotl seed theirs), so the same config and seed always hold out the same examples,
and a fixed data.split_seed holds out the same ones for runs of other seeds. A list of plain paths is one source,
read as one; mapping entries of data.train are sources of a mixture (data/mixture.py), each read, split (data.eval_fraction per source,
or its own eval file) and rendered on its own, and their eval rows give an eval loss per source. The training order
is drawn (a mixture) and shuffled per epoch, seeded by (seed, epoch): resuming at an epoch replays exactly the
batches it would have had (data/batches.py).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.config import DataConfig, DataSource
from tunelab.data.entries import (
    delimiter_option,
    eval_split_source,
    read_source,
    refuse_split_as_file,
    source_config,
    source_names,
)
from tunelab.data.formats import FIELDS_OPTION, Example, to_examples, trained_system
from tunelab.data.mixture import Mixture, SourceSpan, plan_mixture
from tunelab.data.packing import Packed, pack
from tunelab.data.render import IGNORE, Rendered, note_templated_texts, render_examples, special_texts
from tunelab.data.repeats import (
    note_conflicting,
    note_repeated_eval,
    note_repeated_source,
    note_repeated_train,
    note_trained_eval,
)
from tunelab.data.report import DataReport, Made, SourceStats, SplitStats, location
from tunelab.data.sources import Record, note_held_out_files, read_records
from tunelab.data.templates import Template, resolve_template
from tunelab.data.transform import apply_transform, load_transform
from tunelab.errors import ConfigError, DataError, counted


@dataclass
class Datasets:
    train: list[Rendered | Packed]
    eval: list[Rendered | Packed]
    template: Template
    report: DataReport
    examples: list[Example] = field(default_factory=list)  # the training examples before rendering (tunelab check)
    mixture: Mixture | None = None  # mapping sources in data.train: how each epoch draws from them
    eval_sets: dict[str, list[Rendered | Packed]] = field(default_factory=dict)  # eval rows per source (mixtures)
    facts: dict[str, Any] = field(default_factory=dict)  # what a task learnt from the data (e.g. its labels)


def epoch_rows(data: Datasets, seed: int, epoch: int) -> list[Rendered | Packed]:
    """The training rows of one epoch, before `make_batches` shuffles them: all rows once, or a mixture's draw."""
    return data.train if data.mixture is None else data.mixture.draw(data.train, seed, epoch)


def split_eval(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Hold out round(fraction * n) examples (at least 1 when fraction > 0), chosen by a shuffle seeded with seed.
    Both parts keep the file order. The rows data.transform made of one record (`report.Made`: the paths of one
    conversation tree, which share its first turns) are held out together, whole records until at least that many
    rows are, as Open-Assistant splits its trees: split apart, the eval loss would measure recall of turns trained on."""
    if fraction <= 0:
        return examples, []
    k = max(1, round(len(examples) * fraction))
    groups: dict[object, list[int]] = {}  # a record made into rows -> their indices; any other example alone
    for i, ex in enumerate(examples):
        line = getattr(ex, "line", None)
        groups.setdefault((ex.path, int(line)) if isinstance(line, Made) else i, []).append(i)
    order = list(groups.values())
    random.Random(seed).shuffle(order)  # each example its own group: the same draw as one example at a time
    held: set[int] = set()
    for group in order:
        if len(held) >= k:
            break
        held.update(group)
    if len(held) >= len(examples):
        files = list(dict.fromkeys(getattr(ex, "path", "") for ex in examples))
        where = f" of {', '.join(files[:3])}{', ...' if len(files) > 3 else ''}" if all(files) else ""
        whole = (
            " (a .txt file is one example, one document: put documents in a folder of .txt files or a .jsonl)"
            if any(f.lower().endswith(".txt") for f in files)
            else ""
        )
        made = (
            " (the rows data.transform made of one record are held out together)" if len(order) < len(examples) else ""
        )
        raise DataError(
            f"data.eval_fraction={fraction} holds out {len(held)} of {len(examples)} usable examples{where}{made} and "
            f"leaves none to train on{whole}; add data, lower data.eval_fraction, or give a separate data.eval file."
        )
    train = [ex for i, ex in enumerate(examples) if i not in held]
    return train, [ex for i, ex in enumerate(examples) if i in held]


def refuse_special_system(cfg: DataConfig, tokenizer) -> None:
    """ConfigError when data.system_prompt (or a source's system_prompt) holds the text of a special token: every
    chat it is added to would be skipped for it (render.special_text_in), and the rows would be blamed."""
    pattern = special_texts(tokenizer)
    options = [("option 'data.system_prompt'", cfg.system_prompt)] + [
        (f"option 'data.train', entry {i}: system_prompt", entry.system_prompt)
        for i, entry in enumerate(cfg.train, 1)
        if isinstance(entry, DataSource)
    ]
    for option, text in options:
        hit = pattern.search(text) if pattern is not None and text else None
        if hit:
            raise ConfigError(
                f"{option} holds the special token text {hit.group()!r}, which would be read as a control token (it "
                "would end or open a turn), so every chat it is added to would be skipped. Remove it or write it "
                "otherwise."
            )


def note_system_on_texts(
    system_prompt: str | None, texts: list, report: DataReport, option: str = "option 'data.system_prompt'"
) -> None:
    """A note in `report` when a system prompt (`option`) is set and some examples are texts (`texts`, each with
    `path` and `line`): it goes into chats only, since a text is read as it is, without the chat template. A note,
    not an error: one system prompt may serve a run's chats and its texts (a stage of documents, a mixture)."""
    if not trained_system(system_prompt) or not texts:
        return
    report.notes.append(
        f"{option} is not added to the {len(texts)} text examples (e.g. {location(texts[0].path, texts[0].line)}): a "
        "text is read as it is, without the chat template; the system prompt goes into chats only"
    )


def _nothing_usable(what: str, paths: list[str], report: DataReport, read: list[Record], overlong: str) -> DataError:
    """`read`: the records of `paths` (those of the other sources of a mixture are not counted), after data.transform;
    `overlong`: the run's data.overlong (truncate is not suggested where it is set already)."""
    if not read:
        dropped = next(
            (f" ({reason})" for reason in report.skips if reason.startswith("dropped by data.transform")), ""
        )
        return DataError(
            f"{', '.join(paths)}: no {what} examples: no records to read (an empty file, a header alone, an empty "
            f"array, or rows data.transform dropped{dropped}). Check the path, add rows, or fix the transform."
        )
    skips = report.skips_in(r.path for r in read)
    reasons = "; ".join(f"{s.count} {reason} (e.g. {s.locations[0]})" for reason, s in skips.items())
    why = f" Skipped: {reasons}." if reasons else ""
    truncate = "" if overlong == "truncate" else " / set data.overlong=truncate"
    return DataError(
        f"{', '.join(paths)}: no usable {what} examples ({len(read)} records read).{why} Fix the records, or raise "
        f"data.max_length{truncate} if they were too long."
    )


def _stats(rows: list[Rendered | Packed], examples: int, used: int) -> SplitStats:
    return SplitStats(
        examples=examples,
        used=used,
        rows=len(rows),
        tokens=sum(len(r.input_ids) for r in rows),
        loss_tokens=sum(sum(1 for label in r.labels if label != IGNORE) for r in rows),
    )


def build_datasets(
    cfg: DataConfig,
    tokenizer,
    seed: int,
    select: Callable[[list[Record]], list[Record]] | None = None,
    option: str | None = None,
) -> Datasets:
    """Read, convert, split, render and (optionally) pack the data of `cfg`; every skip is in the returned report.

    `select` keeps a subset of the training records before anything else sees them (a federated client's shard of
    a shared file); the report then describes that subset only. `option`: how errors name cfg.fields where another
    option than data.fields gave it (a federated client's own mapping)."""
    if not cfg.train:
        raise ConfigError(
            "option 'data.train' is empty; give one or more data files or folders (jsonl, json, csv, parquet, txt)."
        )
    report = DataReport(max_length=cfg.max_length, packed=cfg.packing)
    template = resolve_template(cfg.template, tokenizer)
    refuse_special_system(cfg, tokenizer)
    transform = load_transform(cfg.transform)
    if any(isinstance(entry, DataSource) for entry in cfg.train):
        if select is not None:
            raise ConfigError("option 'data.train': a federated client's shard is taken from plain files only.")
        return _mixture_datasets(cfg, tokenizer, seed, template, report, transform)
    records = apply_transform(read_records(cfg.train, cfg.delimiter, report), transform, cfg.transform, report)
    note_held_out_files(cfg.train, report)
    if select is not None:
        records = select(records)
    examples = to_examples(records, cfg.format, cfg.fields, cfg.system_prompt, report, option=option or FIELDS_OPTION)
    if not examples:
        raise _nothing_usable("training", cfg.train, report, records, cfg.overlong)
    if cfg.eval:
        held = apply_transform(read_records([cfg.eval], cfg.delimiter, report), transform, cfg.transform, report)
        note_trained_eval(held, {r.path for r in records}, report)
        eval_examples = to_examples(held, cfg.format, cfg.fields, cfg.system_prompt, report, lenient=True)
        if not eval_examples:
            raise _nothing_usable("eval", [cfg.eval], report, held, cfg.overlong)
        report.eval_source = "file"
    else:
        examples, eval_examples = split_eval(examples, cfg.eval_fraction, cfg.eval_split_seed(seed))
        report.eval_source = "fraction" if eval_examples else "none"
        report.split_seed = cfg.eval_split_seed(seed) if eval_examples else None
    note_repeated_train(examples, report)
    note_repeated_eval(examples, eval_examples, report)
    note_conflicting(examples + eval_examples, report)
    is_chat = any(ex.messages is not None for ex in examples + eval_examples)
    texts = [ex for ex in examples + eval_examples if ex.text is not None]
    note_system_on_texts(cfg.system_prompt, texts, report)
    note_templated_texts(texts, tokenizer, report)
    report.template = template.name if is_chat else "none (text only)"

    used = report.total_used
    train = render_examples(examples, tokenizer, template, cfg, report)
    if not train:
        raise _nothing_usable("training", cfg.train, report, records, cfg.overlong)
    used_train, used = report.total_used - used, report.total_used
    evals = render_examples(eval_examples, tokenizer, template, cfg, report, held=True)
    used_eval = report.total_used - used
    if cfg.packing:
        train, evals = pack(train, cfg.max_length), pack(evals, cfg.max_length)
    report.train = _stats(train, len(examples), used_train)
    report.eval = _stats(evals, len(eval_examples), used_eval)
    return Datasets(train, evals, template, report, examples)


def _mixture_datasets(cfg: DataConfig, tokenizer, seed: int, template: Template, report: DataReport, transform):
    """Each source read, split and rendered on its own; their rows side by side, one span each (data/mixture.py)."""
    train: list[Rendered] = []
    evals: list[Rendered | Packed] = []
    spans, eval_sets, all_examples, counts = [], {}, [], [0, 0, 0]  # used train, used eval, eval examples
    all_held: list[Example] = []
    unsplit: list[tuple[str, Example]] = []  # the sources of one example, which data.eval_fraction does not split
    trained, evaluated = set(), []  # the training records' files; each eval file's records
    chat = False
    texts: dict[str, tuple[str | None, list[Example]]] = {}  # the system prompt's option -> it, the text examples
    parts: list[_Part] = []
    for i, (entry, name) in enumerate(zip(cfg.train, source_names(cfg.train)), 1):
        source = entry if isinstance(entry, DataSource) else DataSource(path=entry)
        if any(p.name == name for p in parts) or name.startswith("stage-"):
            raise ConfigError(
                f"option 'data.train', entry {i}: the source name {name!r} is taken (or starts with 'stage-', which "
                "names the stages of a run); give the entry a name."
            )
        where = f"option 'data.train', entry {i}"
        own = source_config(cfg, source)
        records = apply_transform(read_source(source, cfg, where, report), transform, cfg.transform, report)
        trained |= {r.path for r in records}
        option = f"{where}, fields" if source.fields is not None else FIELDS_OPTION  # the mapping's own option
        examples = to_examples(records, own.format, own.fields, own.system_prompt, report, option=option)
        if not examples:
            raise _nothing_usable("training", [source.path or source.hub], report, records, own.overlong)
        if source.eval_split:
            held_records = apply_transform(
                read_source(
                    eval_split_source(source),
                    cfg,
                    f"{where}, eval_split",
                    report,
                    option="eval_split",
                ),
                transform,
                cfg.transform,
                report,
            )
            evaluated.append(held_records)
            held = to_examples(
                held_records, own.format, own.fields, own.system_prompt, report, option=option, lenient=True
            )
        elif source.eval:
            refuse_split_as_file(source, where)
            held_records = apply_transform(
                read_records([source.eval], own.delimiter, report, delimiter_option(source, where)),
                transform,
                cfg.transform,
                report,
            )
            evaluated.append(held_records)
            held = to_examples(
                held_records, own.format, own.fields, own.system_prompt, report, option=option, lenient=True
            )
        elif len(examples) > 1:  # one document (a .txt file) is not split: it trains whole, with no eval part
            examples, held = split_eval(examples, cfg.eval_fraction, cfg.eval_split_seed(seed))
            report.split_seed = cfg.eval_split_seed(seed) if held else report.split_seed
        else:
            held = []
        own_eval = bool(source.eval or source.eval_split)
        parts.append(_Part(source, name, where, own, records, examples, held, own_eval=own_eval))
    share_held_out(parts, report)
    for part in parts:
        source, name, where, own, examples, held = (
            part.source,
            part.name,
            part.where,
            part.own,
            part.examples,
            part.held,
        )
        if not held and not part.own_eval and len(examples) == 1 and cfg.eval_fraction > 0:
            unsplit.append((name, examples[0]))
        chat = chat or any(ex.messages is not None for ex in examples + held)
        option = f"{where}: system_prompt" if source.system_prompt is not None else "option 'data.system_prompt'"
        texts.setdefault(option, (own.system_prompt, []))[1].extend(ex for ex in examples + held if ex.text is not None)
        used = report.total_used
        rows = render_examples(examples, tokenizer, template, own, report)
        if not rows:
            raise _nothing_usable("training", [source.path or source.hub], report, part.records, own.overlong)
        counts[0] += report.total_used - used
        used = report.total_used
        held_rows = render_examples(held, tokenizer, template, own, report, held=True)
        counts[1] += report.total_used - used
        counts[2] += len(held)
        if cfg.packing:
            held_rows = pack(held_rows, cfg.max_length)
        if held_rows:
            eval_sets[name] = held_rows
        stats = _stats(rows, len(examples), 0)
        report.sources[name] = SourceStats(
            weight=source.weight,
            examples=len(examples),
            rows=len(rows),
            tokens=stats.tokens,
            loss_tokens=stats.loss_tokens,
            eval_rows=len(held_rows),
        )
        spans.append(SourceSpan(name, len(train), len(rows), stats.tokens, source.weight))
        train += rows
        evals += held_rows
        all_examples += examples
        all_held += held
    if cfg.eval:
        held_records = apply_transform(
            read_records([cfg.eval], cfg.delimiter, report), transform, cfg.transform, report
        )
        evaluated.append(held_records)
        held = _shared_eval(cfg, held_records, report)
        all_held += held
        texts.setdefault("option 'data.system_prompt'", (cfg.system_prompt, []))[1].extend(
            ex for ex in held if ex.text is not None
        )
        used = report.total_used
        rows = render_examples(held, tokenizer, template, cfg, report, held=True)
        counts[1] += report.total_used - used
        counts[2] += len(held)
        evals += pack(rows, cfg.max_length) if cfg.packing else rows
    for held_records in evaluated:
        note_trained_eval(held_records, trained, report)
    note_unsplit(unsplit, cfg.eval_fraction, report)
    note_repeated_train(all_examples, report)
    note_repeated_eval(all_examples, all_held, report)
    note_conflicting(all_examples + all_held, report)
    for option, (system_prompt, unsystemed) in texts.items():
        note_system_on_texts(system_prompt, unsystemed, report, option)
    note_templated_texts([ex for ex in all_examples + all_held if ex.text is not None], tokenizer, report)
    own_files = cfg.eval or any(isinstance(e, DataSource) and e.eval for e in cfg.train)
    own_splits = any(isinstance(e, DataSource) and e.eval_split for e in cfg.train)
    # a source's eval file and another's held-out fraction may both be there: the summary names the split's seed
    kinds = (("file", own_files), ("split", own_splits), ("fraction", report.split_seed is not None))
    kinds = [kind for kind, on in kinds if on]
    report.eval_source = " and ".join(kinds) or "none"
    report.template = template.name if chat else "none (text only)"
    mixture = plan_mixture(spans, cfg.mix_by, cfg.temperature, cfg.max_length if cfg.packing else None)
    report.mix_by = cfg.mix_by
    for span, share, k in zip(spans, mixture.shares, mixture.drawn):
        stats = report.sources[span.name]
        stats.share, stats.drawn_rows = share, k
        stats.drawn_tokens = round(k * span.tokens / span.rows)
        note_repeated_source(span.name, stats, cfg.mix_by, report)
    report.train = _stats(train, len(all_examples), counts[0])
    report.eval = _stats(evals, counts[2], counts[1])
    data = Datasets(train, evals, template, report, all_examples, mixture, eval_sets)
    if cfg.packing:  # the draw is memoized: the step count and the first epoch reuse it
        report.packed_epoch_rows = len(epoch_rows(data, seed, 0))
    return data


@dataclass
class _Part:
    """One source of a mixture, read and split, before rendering."""

    source: DataSource
    name: str
    where: str
    own: DataConfig
    records: list[Record]
    examples: list[Example]
    held: list[Example]
    own_eval: bool  # the source has its own eval file: its training rows are not a split


def share_held_out(parts: list[_Part], report: DataReport) -> None:
    """Sources that read the same file (other `take`s, fields or system prompts of it) hold out the same records:
    each split its own examples, so one trained on rows another held out, and that eval loss measured recall. A
    training example whose record (file and line) another source holds out moves to this source's eval rows, or,
    where the source has its own eval file, is skipped and counted; a note names the sources."""
    files: dict[str, Path] = {}

    def key(ex: Example) -> tuple[Path, int]:
        return files.setdefault(ex.path, Path(ex.path).resolve()), ex.line

    holder: dict[tuple[Path, int], str] = {}
    for part in parts:
        if not part.own_eval:
            for ex in part.held:
                holder.setdefault(key(ex), part.name)
    for part in parts:
        moved = [ex for ex in part.examples if holder.get(key(ex), part.name) != part.name]
        if not moved:
            continue
        gone = {id(ex) for ex in moved}
        part.examples = [ex for ex in part.examples if id(ex) not in gone]
        others = ", ".join(repr(name) for name in dict.fromkeys(holder[key(ex)] for ex in moved))
        if part.own_eval:
            for ex in moved:
                report.skip(f"held out for eval by source {others}, which reads the same file", ex.path, ex.line)
        else:
            part.held = sorted(part.held + moved, key=key)
        if not part.examples:
            raise DataError(
                f"{part.where} ({part.source.path or part.source.hub}): every training example is held out for eval by "
                f"source {others}, which reads the same file; give the sources other rows, or their own eval files."
            )
        fate = "are skipped" if part.own_eval else "are its eval rows too"
        report.notes.append(
            f"sources {part.name!r} and {others} read the same records (e.g. {location(moved[0].path, moved[0].line)}): "
            f"the {len(moved)} examples of {part.name!r} that {others} holds out for eval {fate}, so no source trains "
            "on another's eval rows"
        )


def note_unsplit(unsplit: list[tuple[str, Example]], fraction: float, report: DataReport) -> None:
    """A note in `report` naming the sources of a mixture that data.eval_fraction left without eval rows: a source of
    one example (a .txt file is one document) trains on it whole, since holding it out would leave it nothing."""
    if not unsplit:
        return
    names = ", ".join(f"{name} ({location(ex.path, ex.line)})" for name, ex in unsplit)
    report.notes.append(
        f"{counted(len(unsplit), 'source')} of one example {'has' if len(unsplit) == 1 else 'each have'} no eval "
        f"rows: data.eval_fraction={fraction} does not split "
        f"one example (a .txt file is one document), so it trains whole: {names}; give such a source its own `eval` "
        "file, or put its documents in a folder of .txt files or a .jsonl"
    )


def _shared_eval(cfg: DataConfig, records: list[Record], report: DataReport) -> list[Example]:
    """The examples of a mixture's data.eval: a file of no source, read with the top-level data.format, data.fields
    and data.system_prompt (the defaults of every source), not with a source's own. A file that these cannot read,
    where a source reads its columns its own way, says so and where a source's eval file goes."""
    own = [
        i
        for i, e in enumerate(cfg.train, 1)
        if isinstance(e, DataSource) and (e.fields not in (None, cfg.fields) or e.format not in (None, cfg.format))
    ]
    try:
        held = to_examples(records, cfg.format, cfg.fields, cfg.system_prompt, report, lenient=True)
    except DataError as exc:
        if not own:
            raise
        raise DataError(
            f"{exc} (data.eval of a mixture is a file of its own, read with the top-level data.format and data.fields, "
            f"not with those of a source such as option 'data.train', entry {own[0]}: set them for it, or give the "
            "file to that source as its `eval`.)"
        ) from None
    if not held:
        raise _nothing_usable("eval", [cfg.eval], report, records, cfg.overlong)
    return held
