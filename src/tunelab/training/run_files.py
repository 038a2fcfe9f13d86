"""What tunelab writes into a run directory, by name, and what else is there (`foreign_entries`).

`train --overwrite` replaces a run directory whole, so a file or folder of the user's in it (notes, a data file put
there) would go with the run: `plan_output_dir` refuses while `foreign_entries` finds one. Each name or pattern below
says which module writes it. A writer's name missing here makes --overwrite refuse a run it could replace (the tests
train, compare, evaluate and report a tiny run and find nothing foreign, and check each writer's constant against
these names); a pattern wider than the writers' names would let a file of the user's go with the run.

A file of no such name is the run's own too when it is exactly what the run's last save left there: run.json's
`result_files` records the size and modification time of each file the save moved to the top (training/result.py),
and a file of the same name, size and modification time is that file (a move keeps both). A remote-code tokenizer's
Python files (models/tokenizer_files.py tokenizer_code), whose names are the model's, are known this way; a .py file
the record lacks, or one changed since, is the user's. A run saved before the record (2026-12-06) knows none. At a
staged run's top, a stage's recorded file published there (a hard link, or a copy keeping size and modification
time: training/publish.py) is the run's own the same way.
"""

from __future__ import annotations

import json
from fnmatch import fnmatchcase
from pathlib import Path

from tunelab.models.tokenizer_files import TOKENIZER_ENTRIES
from tunelab.rundir import STAGE_DIR, run_file

RESULT_ENTRIES = (
    # the run's data report (training/recipe.py; a staged run's is its last stage's, published with its result)
    "data_report.json",
    # the result (training/result.py save_final, training/publish.py): PEFT's adapter (peft/save.py) or a
    # Hugging Face model (training/build.py, tasks/head.py; transformers' save_pretrained may shard it) ...
    "adapter_config.json",
    "adapter_model.safetensors",
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model-*-of-*.safetensors",
    "model.safetensors.index.json",
    # ... and its tokenizer (tasks/task.py save_tokenizer: transformers' save_pretrained, whose files depend on the
    # tokenizer's class and transformers' version: models/tokenizer_files.py)
    *TOKENIZER_ENTRIES,
)
RUN_ENTRIES = (
    # training/recipe.py (federated/server.py for a federation): the run's description and config (its data report
    # and result: RESULT_ENTRIES)
    "run.json",
    "config.yaml",
    # training/metrics.py: METRICS_FILE, PLOT_FILE
    "metrics.jsonl",
    "loss.png",
    # training/tracking.py: TRACKER_RUNS, TensorBoard's events, MLflow's SQLite store (and its journal), W&B offline
    "trackers.json",
    "tensorboard",
    "mlflow.db",
    "mlflow.db-*",
    "wandb",
    # training/checkpoint.py, training/best.py, federated/checkpoints.py: step-N, best.safetensors, round-N
    "checkpoints",
    # federated/history.py: STATE_FILE, PLOT_FILE
    "federated.json",
    "federated.png",
    *RESULT_ENTRIES,
    # eval/compare.py COMPARE_FILE, eval/evaluate.py and eval/heads.py EVAL_FILE, eval/report.py REPORT_FILE
    "compare.json",
    "eval.json",
    "report.html",
    # training/outdir.py LOCK_FILE; a write cut short: atomic.py temporary_sibling, training/result.py's staging
    ".tunelab.lock",
    ".tmp-*",
)
STAGE_ENTRIES = ("merged",)  # training/stage_plan.py MERGED: a stage's result merged into its base (continue: merge)
CHECKPOINT_ENTRIES = ("step-*", "round-*", "best.safetensors", ".tmp-*")  # what checkpoints/ holds (see above)


def written(name: str, patterns: tuple[str, ...]) -> bool:
    """Whether an entry called `name` is one tunelab writes, by `patterns` (RUN_ENTRIES, CHECKPOINT_ENTRIES)."""
    return any(fnmatchcase(name, pattern) for pattern in patterns)


def file_record(path: Path) -> dict[str, int] | None:
    """{"bytes", "mtime_ns"} of a plain file (not a link), as run.json's `result_files` records it; None otherwise."""
    if path.is_symlink() or not path.is_file():
        return None
    stat = path.stat()
    return {"bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def recorded_results(run_dir: Path) -> dict:
    """run.json's `result_files` in `run_dir` as it stands ({name: {"bytes", "mtime_ns"}}); {} where run.json is
    missing or unreadable, or records none."""
    try:
        raw = json.loads(run_file(run_dir).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    files = raw.get("result_files") if isinstance(raw, dict) else None
    return files if isinstance(files, dict) else {}


def foreign_entries(run_dir: Path, stage: bool = False) -> list[str]:
    """The files and folders in `run_dir` that tunelab did not write there, as paths relative to it (a folder with a
    trailing /), sorted: those at its top (less the files its last save left, as run.json records them: the module
    docstring), in its checkpoints/ folder, and in its stage-K folders (each a run directory of its own, whose
    contents are read the same way). `stage`: run_dir is a stage's folder."""
    entries = sorted(run_dir.iterdir())
    stages = [e for e in entries if e.is_dir() and not e.is_symlink() and STAGE_DIR.fullmatch(e.name)]
    saved = [recorded_results(folder) for folder in (run_dir, *stages)]  # a stage's files: published at the top
    found = []
    for entry in entries:
        name = entry.name
        if entry.is_dir() and not entry.is_symlink() and STAGE_DIR.fullmatch(name):
            found += [f"{name}/{inner}" for inner in foreign_entries(entry, stage=True)]
        elif name == "checkpoints" and entry.is_dir() and not entry.is_symlink():
            found += [f"{name}/{_shown(e)}" for e in sorted(entry.iterdir()) if not written(e.name, CHECKPOINT_ENTRIES)]
        elif not written(name, RUN_ENTRIES + (STAGE_ENTRIES if stage else ())):
            record = file_record(entry)
            if record is None or all(files.get(name) != record for files in saved):
                found.append(_shown(entry))
    return found


def _shown(entry: Path) -> str:
    return entry.name + ("/" if entry.is_dir() and not entry.is_symlink() else "")


def listed(entries: list[str], most: int = 5) -> str:
    """How many `entries` there are and up to `most` of them, for a message: "2 files or folders (a, b/)"."""
    what = "file or folder" if len(entries) == 1 else "files or folders"
    more = f", and {len(entries) - most} more" if len(entries) > most else ""
    return f"{len(entries)} {what} ({', '.join(entries[:most])}{more})"
