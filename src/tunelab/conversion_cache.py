"""The GGUF conversion cache: see it and clear it (`tunelab cache`).

A GGUF base model (the embedded one included) is converted once to a safetensors directory, about 517 MB for the
135M model in fp32, under `cache_root()/gguf/` (`~/.cache/tunelab`, or $TUNELAB_CACHE). Clearing it costs one
conversion (~25 s for the 135M model) at the next use. Only folders that look like tunelab's conversions (one with
the file a finished conversion writes last, one named as conversions are with a config.json, an unfinished `.tmp-`
folder, or an old conversion that a process killed while replacing it left as `.old-NAME-PID`: atomic.replace_folder)
are listed and removed, so pointing $TUNELAB_CACHE at a folder holding other things never deletes them. A conversion
whose files were since deleted or cut short is listed as incomplete; the next use converts it again.

A conversion is named by its GGUF file's path and a fingerprint of its content (converted.gguf_key), so a file changed
or replaced by another (even of the same size and modification time) gets a new copy and the old one is never used
again: such a copy, and one whose file is gone, is listed as stale (by the file recorded in its COMPLETE mark; copies made before it was recorded cannot be
told) and `tunelab cache prune` removes those alone.

Adapters of runs on a GGUF base name the converted folder as their base for other tools
(`peft.AutoPeftModelForCausalLM`); after clearing, the next tunelab command that loads the model recreates it. A stale
copy cannot be made again under its name (its file is gone, holds other weights now, or was named by an older
tunelab: mtime_key), so prune keeps one that an adapter recorded in it still names (models/converted.record_named_by);
adapters saved before such records were kept are not known, and removal_note says what removing their base means
for them.
"""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from tunelab.atomic import ASIDE_PREFIX
from tunelab.errors import ConfigError, WriteFailed
from tunelab.models.converted import (
    COMPLETE,
    CONVERSION,
    adapters_naming,
    cache_root,
    conversion_made,
    conversion_problem,
    conversion_source,
    gguf_key,
    mtime_key,
)


@dataclass
class CacheEntry:
    name: str
    path: Path
    size_bytes: int
    modified: float  # seconds since the epoch
    complete: bool  # False for a conversion that was interrupted (a .tmp- folder), set aside while being replaced (an
    # .old- folder, never used again) or damaged since (see problem)
    problem: str | None = None  # what is wrong with a finished conversion that is no longer whole
    stale: str | None = None  # why no load uses this copy again: its GGUF file is gone, or changed since
    named_by: list[Path] = field(default_factory=list)  # of a stale copy: the adapter configs that still name it


def gguf_cache_dir() -> Path:
    return cache_root() / "gguf"


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


_CONVERTED_NAME = re.compile(r".+-[0-9a-f]{16}")  # the GGUF file's stem and 16 hex digits of its key (load.py)
_SET_ASIDE = re.compile(rf"{re.escape(ASIDE_PREFIX)}{_CONVERTED_NAME.pattern}-[0-9]+")  # and the PID of its replacer


def _is_ours(folder: Path) -> bool:
    if folder.name.startswith(".tmp-") or _SET_ASIDE.fullmatch(folder.name) or (folder / COMPLETE).is_file():
        return True
    return _CONVERTED_NAME.fullmatch(folder.name) is not None and (folder / "config.json").is_file()


def _stale(folder: Path) -> str | None:
    """Why the GGUF file the folder was converted from no longer leads to it, or None (also when unrecorded)."""
    source = conversion_source(folder)
    if source is None:
        return None
    if not source.is_file():
        return f"its GGUF file {source} is gone"
    try:
        key, older = gguf_key(source), mtime_key(source)
    except OSError:
        return None
    current = f"{folder.name[: -len(key)]}{key}"
    if folder.name.endswith(f"-{older}"):
        return f"an older tunelab named this copy of {source}, which is unchanged; its copy is now named {current}"
    if not folder.name.endswith(f"-{key}"):
        if (made := conversion_made(folder)) is not None and made < CONVERSION:
            return f"an older tunelab converted {source} into this copy (conversion {made}); its copy is now {current}"
        return f"its GGUF file {source} changed or was replaced since; a newer copy is used"
    return None


def _entry(folder: Path) -> CacheEntry:
    leftover = folder.name.startswith(".tmp-") or _SET_ASIDE.fullmatch(folder.name) is not None
    problem = None if leftover else conversion_problem(folder)
    stale = None if leftover else _stale(folder)
    complete = not leftover and not problem
    named_by = adapters_naming(folder) if stale else []
    return CacheEntry(folder.name, folder, _size(folder), folder.stat().st_mtime, complete, problem, stale, named_by)


def cache_entries() -> list[CacheEntry]:
    """Every converted model in the cache, largest first."""
    root = gguf_cache_dir()
    if not root.is_dir():
        return []
    entries = [_entry(f) for f in root.iterdir() if f.is_dir() and not f.is_symlink() and _is_ours(f)]
    return sorted(entries, key=lambda e: -e.size_bytes)


def clear_cache(names: list[str] | None = None) -> list[CacheEntry]:
    """Remove the named entries (all when None; an empty list names none; a name given twice is removed once);
    returns what was removed. An unknown name is a ConfigError; an entry that cannot be removed a WriteFailed naming
    it and what was removed before it."""
    entries = cache_entries()
    if names is not None:
        by_name = {e.name: e for e in entries}
        unknown = [n for n in names if n not in by_name]
        if unknown:
            listed = ", ".join(by_name) or "none"
            raise ConfigError(f"no cache entry named {', '.join(unknown)}; entries: {listed}.")
        entries = [by_name[n] for n in dict.fromkeys(names)]  # a name given twice is removed once
    for done, entry in enumerate(entries):
        try:
            shutil.rmtree(entry.path)
        except OSError as exc:
            removed = ", ".join(e.name for e in entries[:done]) or "nothing"
            raise WriteFailed(
                f"tunelab cache clear: {entry.path} could not be removed ({exc.strerror or exc}); removed before it: "
                f"{removed}."
            ) from None
    return entries


def prune_cache() -> list[CacheEntry]:
    """Remove the stale entries (CacheEntry.stale: their GGUF file is gone or changed since) that no recorded adapter
    still names as its base (CacheEntry.named_by); returns those removed. The stale ones left are the kept ones."""
    stale = [e.name for e in cache_entries() if e.stale and not e.named_by]
    return clear_cache(stale) if stale else []


def removal_note(removed: list[CacheEntry], kept: list[CacheEntry] = ()) -> str:
    """What `tunelab cache prune` and `clear` say beside the names they removed: each stale copy prune kept and the
    adapter that names it; each stale copy clear removed although an adapter names it (it cannot be converted again);
    and, after removing a stale copy, what an adapter that names it (one saved before tunelab recorded them) now
    meets and how to load it."""

    def adapters(e: CacheEntry) -> str:
        more = len(e.named_by) - 1
        return f"the adapter in {e.named_by[0].parent}" + (f" and {more} more name" if more else " names")

    lines = [
        f"kept {e.name} (stale): {adapters(e)} it as base (adapter_config.json base_model_name_or_path); `tunelab "
        "cache clear NAME` removes it all the same"
        for e in kept
    ]
    lines += [
        f"removed {e.name} (stale), which cannot be converted again: {adapters(e)} it as base (adapter_config.json "
        "base_model_name_or_path)"
        for e in removed
        if e.stale and e.named_by
    ]
    if any(e.stale for e in removed):
        lines.append(
            "An adapter that still names a removed copy as its base (adapter_config.json base_model_name_or_path; "
            "older runs did not record theirs) no longer loads with peft's AutoPeftModelForCausalLM "
            '("Repo id must be in the form ..."). tunelab commands open such a run from its run.json while its GGUF '
            "file is the one trained on. For PEFT, where an older tunelab named the copy (its file unchanged), write "
            "the copy now used (`tunelab cache` lists it) as base_model_name_or_path; where the file changed or is "
            "gone, load the base it trained on yourself and pass it to PeftModel.from_pretrained(base, RUN_DIR)."
        )
    return "\n".join(lines)


def format_removed(removed: list[CacheEntry], pruned: bool = False, kept: list[CacheEntry] = ()) -> str:
    """What `tunelab cache clear` (or `prune`, `pruned`) prints: the entries removed and the space freed, then the
    `removal_note` of those removed and the stale ones `kept`."""
    freed = sum(e.size_bytes for e in removed) / 1e6
    names = ", ".join(e.name for e in removed) or ("nothing stale" if pruned else "nothing to remove")
    line = f"removed {len(removed)} entr{'y' if len(removed) == 1 else 'ies'} ({freed:.1f} MB): {names}"
    note = removal_note(removed, kept)
    return f"{line}\n{note}" if note else line


def _human(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


def format_entries(entries: list[CacheEntry]) -> str:
    """What `tunelab cache` prints: where the cache is, then each entry's size, date, name and state."""
    lines = [f"GGUF conversion cache: {gguf_cache_dir()}  (moved by $TUNELAB_CACHE)"]
    for e in entries:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.modified))
        state = ""
        if e.name.startswith(".tmp-"):
            state = "  (unfinished conversion)"
        elif _SET_ASIDE.fullmatch(e.name):
            state = "  (an old conversion left aside by an interrupted replacement; never used again)"
        elif e.problem:
            state = f"  (incomplete: {e.problem}; converted again at next use)"
        if e.stale:
            state = f"  (stale: {e.stale}; tunelab cache prune removes it)"
            if e.named_by:
                state = (
                    f"  (stale: {e.stale}; kept by tunelab cache prune: the adapter in {e.named_by[0].parent} names it)"
                )
        lines.append(f"  {_human(e.size_bytes):>9}  {when}  {e.name}{state}")
    total = sum(e.size_bytes for e in entries)
    lines.append(
        f"  {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}, {_human(total)} in all" if entries else "  empty"
    )
    stale = [e for e in entries if e.stale and not e.named_by]
    if stale:
        freed = _human(sum(e.size_bytes for e in stale))
        lines.append(f"  {len(stale)} stale ({freed}): `tunelab cache prune` removes them")
    return "\n".join(lines)
