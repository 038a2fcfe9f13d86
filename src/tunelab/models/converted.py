"""A GGUF file's converted copy on disk: where copies live (`cache_root`), the key that names one (`gguf_key`), the
mark written last into a whole one (COMPLETE, `finish_conversion`), the file it was made from (`conversion_source`),
what is wrong with one that is not whole (`conversion_problem`) and the adapters that name it as their base
(`record_named_by`, `adapters_naming`). models/load.py converts; conversion_cache.py lists and clears the copies."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from tunelab.atomic import write_json

# 4: also for the names whose llama.cpp split is several regexes or one transformers does not know
# (gguf_split.SPLIT_SINCE_4: deepseek, falcon, bloom, kimi-k2, ...; 3 kept transformers' split for them), and Tekken's and GPT-4o's as llama.cpp reads them (3 joined a
# combining mark to its word); 3: the tokenizer splits as llama.cpp does for the file's
# tokenizer.ggml.pre (models/gguf_split.py; 2 kept transformers' split, GPT-2's for SmolLM2's 'smollm'); 2: a tied
# embedding under model.embed_tokens.weight (1 kept it as lm_head.weight only)
CONVERSION = 4


def cache_root() -> Path:
    """$TUNELAB_CACHE (by default ~/.cache/tunelab) as an absolute path: runs record folders under it as their base,
    and a relative one would name another folder wherever the run is opened."""
    return Path(os.environ.get("TUNELAB_CACHE") or Path.home() / ".cache" / "tunelab").expanduser().resolve()


WHOLE_BELOW = 16 * 2**20  # a smaller file is hashed whole
HEAD, TAIL = 8 * 2**20, 2**20  # a larger one by its first 8 MiB (the GGUF header, metadata, vocabulary and tensor
SAMPLES, SAMPLE = 64, 64 * 2**10  # table), its last MiB and 64 pieces of 64 KiB spread evenly between: ~13 MiB in all


def content_fingerprint(file: Path) -> str:
    """A sha256 of the file's size and content: all of it below WHOLE_BELOW, else its head, its tail and SAMPLES
    pieces spread over its tensors (~13 MiB read however large the file: milliseconds, not the minute that hashing
    gigabytes takes). A file replaced by another of the same size and modification time (`cp -p`, `rsync -t`) gets
    another fingerprint unless the two differ only between the pieces read, which a model with other weights does
    not."""
    size = file.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with file.open("rb") as f:
        if size < WHOLE_BELOW:
            digest.update(f.read())
            return digest.hexdigest()
        digest.update(f.read(HEAD))
        step = (size - HEAD - TAIL) // (SAMPLES + 1)
        for i in range(1, SAMPLES + 1):
            f.seek(HEAD + i * step)
            digest.update(f.read(SAMPLE))
        f.seek(size - TAIL)
        digest.update(f.read(TAIL))
    return digest.hexdigest()


def gguf_key(file: Path) -> str:
    """The 16 hex digits that name a GGUF file's converted copy: its path and content (content_fingerprint), so a
    file changed or replaced gets a new copy even at the same size and modification time, and one touched or
    downloaded again unchanged keeps its copy. CONVERSION names the layout written: a new one converts again rather
    than read an older copy."""
    key = f"{file.resolve()}|{content_fingerprint(file)}|{CONVERSION}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def mtime_key(file: Path) -> str:
    """The key tunelab named copies by until 2026-12-05: the file's path, size and modification time. A copy so
    named for a file of that size and time is a copy of the same file, under an older name (conversion 2, the one
    written then)."""
    stat = file.stat()
    key = f"{file.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|2"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


COMPLETE = "tunelab-conversion.json"  # written last into a converted folder: the name and size of every other file


def finish_conversion(folder: Path, source_file: Path | None = None, fingerprint: str = "") -> None:
    """Mark a converted folder as whole by writing COMPLETE after every other file, listing each with its size, and
    the GGUF file it was converted from (`tunelab cache` tells by it a copy whose file is gone or changed since) with
    the fingerprint a run records of it (models/load.fingerprint: `converted_copy` finds the copy by it once the file
    is gone)."""
    files = {f.name: f.stat().st_size for f in sorted(folder.iterdir()) if f.is_file() and f.name != COMPLETE}
    mark = {"conversion": CONVERSION, "files": files}
    if source_file is not None:
        mark["source"] = str(source_file.resolve())
    if fingerprint:
        mark["fingerprint"] = fingerprint
    write_json(folder / COMPLETE, mark)


def converted_copies(source_file: Path) -> list[tuple[Path, str]]:
    """The whole converted copies in the cache made from the GGUF file at `source_file` (by the path COMPLETE
    records), each with the fingerprint of the file it recorded ('' for a copy made before fingerprints were kept)."""
    root = cache_root() / "gguf"
    found = []
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if folder.is_symlink() or conversion_source(folder) != source_file or conversion_problem(folder) is not None:
            continue
        try:
            recorded = json.loads((folder / COMPLETE).read_text()).get("fingerprint")
        except (OSError, ValueError, AttributeError):
            continue
        found.append((folder, recorded if isinstance(recorded, str) else ""))
    return found


def conversion_source(folder: Path) -> Path | None:
    """The GGUF file a converted folder was made from, as COMPLETE records it (None for a folder converted before it
    was recorded, or whose COMPLETE cannot be read)."""
    try:
        source = json.loads((folder / COMPLETE).read_text()).get("source")
    except (OSError, ValueError, AttributeError):
        return None
    return Path(source) if isinstance(source, str) and source else None


def conversion_made(folder: Path) -> int | None:
    """The CONVERSION a converted folder was written with, as COMPLETE records it (None when it cannot be read)."""
    try:
        made = json.loads((folder / COMPLETE).read_text()).get("conversion")
    except (OSError, ValueError, AttributeError):
        return None
    return made if type(made) is int else None


def _whole_safetensors(file: Path) -> bool:
    """The file is as long as its own header says: 8 bytes giving the header's length, the JSON header, then the
    tensors' data up to the largest end offset."""
    size = file.stat().st_size
    try:
        with file.open("rb") as f:
            length = int.from_bytes(f.read(8), "little")
            if length > size:
                return False
            header = json.loads(f.read(length))
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    except (ValueError, KeyError, TypeError, IndexError, AttributeError):
        return False
    return size == 8 + length + end


def _unmarked_problem(folder: Path) -> str | None:
    """A folder converted before COMPLETE was written: whole when its weights, config and tokenizer config are there
    and the weights are as long as their header says (a damaged copy is converted again; a whole one is kept)."""
    for name in ("model.safetensors", "config.json", "tokenizer_config.json"):
        if not (folder / name).is_file():
            return f"{name} is missing"
    if not _whole_safetensors(folder / "model.safetensors"):
        return "model.safetensors is not as long as its header says"
    return None


def conversion_problem(folder: Path) -> str | None:
    """What is wrong with a converted folder, or None when it is whole: every file COMPLETE lists is there at the size
    it was written (a folder whose weights were deleted or cut short since is not)."""
    if not (folder / COMPLETE).is_file():
        return _unmarked_problem(folder)
    try:
        files = json.loads((folder / COMPLETE).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"{COMPLETE} cannot be read"
    if not isinstance(files, dict) or not all(isinstance(n, str) and type(z) is int for n, z in files.items()):
        return f"{COMPLETE} does not list its files with their sizes"
    for name, size in files.items():
        file = folder / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != size:
            return f"{name} has {file.stat().st_size:,} bytes, not the {size:,} written"
    return None


NAMED_BY = "tunelab-named-by"  # in a copy: one record per folder whose adapters name the copy as their base


def record_named_by(copy: Path, adapter_folder: Path) -> None:
    """Note in the copy `copy` that an adapter saved into `adapter_folder` names it as its base
    (adapter_config.json's base_model_name_or_path): the folder above it is recorded (the run directory whose result
    is staged in it, then moved into the run directory: training/result.py), so that `tunelab cache prune` keeps the
    copy while an adapter there still names it. A copy that cannot be written to (a shared, read-only cache) keeps no note."""
    above = str(adapter_folder.resolve().parent)
    record = copy / NAMED_BY / f"{hashlib.sha256(above.encode()).hexdigest()[:16]}.json"
    if record.is_file():
        return
    try:
        record.parent.mkdir(exist_ok=True)
        write_json(record, {"folder": above})
    except OSError:
        pass


def adapters_naming(copy: Path) -> list[Path]:
    """The adapter_config.json files, in the folders recorded in `copy` (record_named_by), that still name it as
    their base. Only the folder itself is read (a run directory that was `.` must not walk the whole tree)."""
    found = []
    for record in sorted((copy / NAMED_BY).glob("*.json")):
        try:
            folder = Path(json.loads(record.read_text())["folder"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        config = folder / "adapter_config.json"  # the result moved in from its staging folder (training/result.py)
        try:
            named = json.loads(config.read_text()).get("base_model_name_or_path")
        except (OSError, ValueError, AttributeError):
            continue
        if named == str(copy):
            found.append(config)
    return found
