"""--resume: continue a run exactly where it stopped, or refuse and say what differs.

The config given to --resume is compared with the run's saved config.yaml, option by option, once that file is found
to be the one run.json records (config_digest.py: one cut short or edited is refused, as every command refuses it):

- options that only say how the run is watched, saved or held in memory (eval/save/log intervals, checkpoints kept,
  the experiment trackers, activation checkpointing, the questions asked at the end, ...) may change; the change is
  printed; so may train.keep_best (which weights are saved at the end), train.cuda_graphs (graphed steps equal eager
  ones bit for bit) and train.sharding (a checkpoint loads under either, as on another rank count);
- train.max_steps and train.epochs may change (to no fewer steps than the checkpoint has done): the run continues
  to the new length, with the learning-rate schedule recomputed for it from the checkpoint on; this is said (a
  federation passes its own length option, federated.rounds: federated/resume.py). The warmup keeps the number of
  steps the run started with (`kept_warmup`): train.warmup_ratio of the new length would warm up again, or stretch a
  warmup the run already took, and the steps already trained would not be those of the new schedule;
- every other change (the model, the data, the method, the optimizer and its schedule, the seed) would make the
  resumed run a different run, so it is refused with the list of differences (exit code 2).

Options left at `auto` compare by the value the run trained with: run.json records the values auto chose
(`extra.auto`), a resumed run keeps them (`kept_auto`), and `auto` given to --resume means "as the run started".
So `auto` against the number it chose is no change, in either direction; another number is.

The data is compared by content too: run.json records digests of the tokenized training and eval rows. So data.train
and data.eval are compared by what they give, not where they are (`CONTENT`): a data file moved or renamed, its
content unchanged, resumes with a note, and the rows, read after the config, must then give the run's digest.

The run continues from the newest checkpoint that verifies (`resume_checkpoint`, which names the damaged ones it
passes over), at the position that checkpoint saved (`load_position`).
"""

from __future__ import annotations

import hashlib
from array import array
from pathlib import Path
from typing import Any

import yaml

from tunelab.config import ACTION_OPTIONS, AUTO, RunConfig, auto_options, iter_options, section_names, to_dict
from tunelab.config.flags import CLI, Spelling
from tunelab.config.paths import PATH_OPTIONS
from tunelab.config.validate import read_by, run_tasks
from tunelab.config_digest import check_config
from tunelab.data.packing import Packed
from tunelab.data.report import location_path
from tunelab.errors import ConfigError, RunDirError, counted
from tunelab.models.converted import CONVERSION
from tunelab.models.gguf_split import SPLIT_SINCE_4, SPLITS, read_gguf_string
from tunelab.run_info import RunInfo
from tunelab.rundir import CONFIG_FILE, read_info, run_file
from tunelab.training.auto import Choice
from tunelab.training.checkpoint import intact_checkpoint
from tunelab.training.distributed import Ranks
from tunelab.training.sharded_checkpoint import load as load_checkpoint

ALLOWED = {
    "output_dir",
    "model.device",
    "train.eval_every",
    "train.save_every",
    "train.keep_checkpoints",
    "train.keep_checkpoints_after_finish",
    "train.log_every",
    "train.checkpointing",
    "train.checkpoint_layers",
    "train.offload_activations",
    "train.gpu_memory",
    "train.max_bad_steps",
    "train.report_to",
    "train.push_to",
    "train.push_private",
    "train.keep_best",
    "train.early_stopping_patience",
    "train.early_stopping_min_delta",
    "train.cuda_graphs",
    "train.sharding",
    "eval.questions",
    "eval.refusal",
    "eval.max_new_tokens",
    "federated.client_cpus",
    "federated.round_timeout",
    *ACTION_OPTIONS,
}
LENGTH = {"train.max_steps", "train.epochs"}
# The data options compared by the tokenized rows they give (run.json's digest of them), not by their paths.
CONTENT = {"data.train": "data_sha256", "data.eval": "eval_sha256"}
KEPT = "as the run chose at its start: "


def _flat(values: dict) -> dict[str, Any]:
    flat, sections = {}, set(section_names())
    for key, value in values.items():
        if isinstance(value, dict) and key in sections:
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


def _same(name: str, old: Any, new: Any) -> bool:
    if old == new:
        return True
    local = name == "model.name" and all(isinstance(v, str) and Path(v).exists() for v in (old, new))
    if (name in PATH_OPTIONS or local) and old is not None and new is not None:
        olds, news = (v if isinstance(v, list) else [v] for v in (old, new))
        return len(olds) == len(news) and all(
            Path(a).resolve() == Path(b).resolve() if isinstance(a, str) and isinstance(b, str) else a == b
            for a, b in zip(olds, news)
        )
    return False


def _unplaced(entry: Any) -> Any:
    """A data entry with where its files are left out (whether it has one kept): a data.train source's mapping
    compared apart from its path and eval file."""
    if isinstance(entry, str):
        return "a path"
    if isinstance(entry, dict):
        return {k: (v is not None) if k in ("path", "eval") else v for k, v in entry.items()}
    return entry


def _moved(old: Any, new: Any) -> bool:
    """Do two values of a data option differ only in the paths of their files?"""
    olds, news = (v if isinstance(v, list) else [v] for v in (old, new))
    return len(olds) == len(news) and all(_unplaced(a) == _unplaced(b) for a, b in zip(olds, news))


def _renamed(name: str, old: Any, new: Any, by_content: set[str] = frozenset()) -> bool:
    """Do two `stages` lists differ only in their stages' name: (and, for the data options of `by_content`, in the
    paths of their files)? A name labels a stage in the reports (and two of one name are refused, config/load.py), so
    renaming one changes nothing that is trained; a stage's moved data is compared by its rows, stage by stage
    (training/stage_resume.py)."""
    if name != "stages" or not (isinstance(old, list) and isinstance(new, list)) or len(old) != len(new):
        return False
    if not all(isinstance(stage, dict) for stage in old + new):
        return False
    for a, b in zip(old, new):
        keys = (a.keys() | b.keys()) - {"name"}
        if not all(a.get(k) == b.get(k) or (k in by_content and _moved(a.get(k), b.get(k))) for k in keys):
            return False
    return True


def _stage_moves(old: list, new: list) -> str:
    """What differs between two `stages` lists that differ only in names and data paths (`_renamed`), stage by stage:
    'stage 1: data.train: [...] -> [...]', rather than both whole lists."""
    lines = []
    for k, (a, b) in enumerate(zip(old, new), 1):
        for key in sorted((a.keys() | b.keys()) - {"name"}):
            if a.get(key) != b.get(key):
                lines.append(f"stage {k}: {key}: {a.get(key)!r} -> {b.get(key)!r}")
    return "; ".join(lines)


def config_changes(
    saved: dict,
    cfg: RunConfig,
    chosen: dict | None = None,
    length: set[str] = LENGTH,
    unread: set[str] = frozenset(),
    by_content: set[str] = frozenset(),
) -> tuple[list[str], list[str]]:
    """(refused, allowed): one 'option: old -> new' line per difference between the saved and the new config.
    chosen: run.json's `extra.auto` ({option: {value, reason}}), what the run's `auto` options became; length: the
    options that set how long the run trains (allowed to change); unread: options the run does not read (not
    compared: a config saved before they were refused may hold them); by_content: data options whose paths may
    change, their rows compared by digest once read."""
    current = _flat(to_dict(cfg))
    defaults = _flat(to_dict(RunConfig()))
    saved = _flat(saved)
    chosen = chosen or {}
    takes_auto = set(auto_options())
    tasks = run_tasks(cfg)
    refused, allowed = [], []
    for name, _, _ in iter_options():
        if not read_by(name, tasks) or name in unread:
            continue  # an option no task of the run reads (kept in a config saved before such were refused)
        old = saved.get(name, defaults[name])  # an option newer than the run: it ran with the default
        new = current[name]
        shown = repr(old)
        if name in takes_auto:
            if old == AUTO and name in chosen:
                old = chosen[name]["value"]  # what the run trained with
                shown = f"auto ({old!r})"
            if new == AUTO:
                new = old  # on resume, auto keeps what the run trained with (kept_auto)
        if _same(name, old, new):
            continue
        line = f"{name}: {shown} -> {new!r}"
        moved = name in by_content and _moved(old, new)
        renamed = _renamed(name, old, new, by_content)
        (allowed if name in ALLOWED | length or moved or renamed else refused).append(line)
    return refused, allowed


def _saved_config(run_dir: Path) -> dict:
    """The run's config.yaml as saved; RunDirError when it is not the one run.json records (`check_config`): cut short
    at a line end it still parses, and the options it lost would be compared (and kept) as their defaults."""
    path = Path(run_dir) / CONFIG_FILE
    check_config(path, run_file(run_dir))
    try:
        saved = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise RunDirError(
            f"{path}: the run's saved config cannot be read ({exc}), so a resume cannot check it."
        ) from None
    if not isinstance(saved, dict):
        raise RunDirError(f"{path}: the run's saved config is damaged, so a resume cannot check it.")
    return saved


def _chosen(run_dir: Path) -> dict:
    """run.json's record of the values auto chose when the run started ({option: {value, reason}})."""
    return read_info(run_dir, require_finished=False).extra.get("auto") or {}


def kept_auto(run_dir: Path, cfg: RunConfig) -> dict[str, Choice]:
    """For each option `auto` in `cfg`, the value the run trained with and where it comes from: the value auto chose
    when the run started (run.json), or the number its config gave. A resumed run keeps these rather than choosing
    again, so that it ends where an uninterrupted run would."""
    saved, chosen = _flat(_saved_config(run_dir)), _chosen(run_dir)
    current = _flat(to_dict(cfg))
    kept = {}
    for name in auto_options():
        if current[name] != AUTO:
            continue
        old = saved.get(name, AUTO)
        if old == AUTO and name in chosen:
            reason = chosen[name]["reason"].removeprefix(KEPT)  # a run resumed before says it already
            kept[name] = Choice(chosen[name]["value"], f"{KEPT}{reason}")
        elif old != AUTO:
            kept[name] = Choice(old, f"as the run's {CONFIG_FILE} gave it")
    return kept


def flags_over_stages(saved: dict, flagged: set[str], length: set[str] = LENGTH) -> dict:
    """A staged run's saved config as a resume that gives the options `flagged` as flags compares it: where a resume
    may change the option (ALLOWED, `length`), the flag wins over the saved stages' own value, as it wins over the
    stages it trains (config/load.py `stage_values`), so that the change is the run's option's, said once (a longer
    --train.max_steps applies to the stages still to train), not each stage's, refused."""
    stages, drop = saved.get("stages"), flagged & (ALLOWED | length)
    if not drop or not isinstance(stages, list):
        return saved
    return saved | {
        "stages": [{k: v for k, v in e.items() if k not in drop} if isinstance(e, dict) else e for e in stages]
    }


def check_resume_config(
    run_dir: Path,
    cfg: RunConfig,
    length: set[str] = LENGTH,
    unread: set[str] = frozenset(),
    by_content: set[str] = frozenset(),
    spelling: Spelling = CLI,
    flagged: set[str] = frozenset(),
) -> list[str]:
    """ConfigError listing the changes that break exactness; otherwise the notes to print about allowed ones.
    length: the options that set how long the run trains (train's, or a federation's federated.rounds); unread:
    options the run does not read, not compared; by_content: the data options (of `CONTENT`) whose files may have
    moved, for a caller that then compares their rows with the run's digest (`check_same_data`). Those the run
    recorded no digest for are compared by path. `spelling`: how the caller names resume and overwrite. `flagged`:
    a staged run's options given as flags over its stages (`flags_over_stages`)."""
    path = Path(run_dir) / CONFIG_FILE
    info = read_info(run_dir, require_finished=False)
    digested = {name for name in by_content if getattr(info, CONTENT[name], "")}
    if cfg.stages:  # each stage's run.json holds its digests, and each stage compares its own rows
        digested = set(by_content)
    saved = flags_over_stages(_saved_config(run_dir), flagged, length)
    refused, allowed = config_changes(saved, cfg, _chosen(run_dir), length, unread, digested)
    if refused:
        raise ConfigError(
            f"{run_dir}: {spelling.resume} continues the run with the config it started with, and these options differ "
            f"from {path}: {'; '.join(refused)}. They change what is trained, so the result would be neither the old "
            f"run nor a new one. Put them back to resume, or start a new run (another output_dir, or "
            f"{spelling.overwrite})."
        )
    notes = []
    for line in allowed:
        name = line.split(":")[0]
        if name == "train.epochs" and cfg.train.max_steps:
            notes.append(f"resume: {line}; no change: train.max_steps ({cfg.train.max_steps}) sets the length")
        elif name in length:
            notes.append(
                f"resume: {line}; the run continues to the new length, its learning-rate schedule recomputed"
                + _kept_cadence(run_dir, cfg)
            )
        elif name == "model.device":
            notes.append(f"resume: {line} (allowed: the remaining steps run there, not bit-identical to staying put)")
        elif name == "train.eval_every" and cfg.train.keep_best:
            notes.append(
                f"resume: {line} (allowed: it changes when the run is evaluated, not what it learns; with "
                "train.keep_best those evaluations choose the step saved as the result)"
            )
        elif name == "train.keep_best":
            notes.append(
                f"resume: {line} (allowed: it changes which weights are saved as the result, not what the run learns"
                + ("; it chooses among the evaluations from this resume on)" if cfg.train.keep_best else ")")
            )
        elif name.startswith("train.early_stopping_"):
            notes.append(
                f"resume: {line} (allowed: it changes when the run stops, not what each step learns; "
                + (
                    "early stopping is off from here)"
                    if not cfg.train.early_stopping_patience
                    else "the count of evaluations without a new best goes on from the checkpoint's, or starts at "
                    "this resume where the checkpoint holds none)"
                )
            )
        elif name == "train.cuda_graphs":
            notes.append(
                f"resume: {line} (allowed: graphed steps give the losses and gradients of eager ones, bit for bit)"
            )
        elif name == "train.sharding":
            notes.append(
                f"resume: {line} (allowed: the checkpoint loads under either; the steps are the same within float "
                "rounding, as on another rank count; train.keep_best runs under ddp only)"
            )
        elif name in digested:
            notes.append(
                f"resume: {line} (allowed: the data is compared by content, not by path; the run continues only if its "
                "tokenized rows are those it started with)"
            )
        elif name == "stages" and (moves := _stage_moves(saved.get("stages"), to_dict(cfg).get("stages"))):
            notes.append(
                f"resume: {moves} (allowed: the stages' data is compared by content, not by path; each stage goes on "
                "only if its tokenized rows are those it started with)"
            )
        elif name == "stages":
            notes.append(f"resume: {line} (allowed: only the stages' names differ, which label them in the reports)")
        elif name.startswith("federated."):
            notes.append(f"resume: {line} (allowed: it changes how the federation is run, not what it learns)")
        else:
            notes.append(f"resume: {line} (allowed: it changes how the run is watched or saved, not what it learns)")
    return notes


def _kept_cadence(run_dir: Path, cfg: RunConfig) -> str:
    """What a new length leaves of an `auto` eval cadence: the interval chosen for the run's first length stays (a
    resume does not choose again), so the evaluations before and after the resume lie on one grid."""
    every = kept_auto(run_dir, cfg).get("train.eval_every")
    if every is None or not every.value:
        return ""
    return (
        f"; train.eval_every stays {every.value}, as auto chose it when the run started (give train.eval_every to "
        "evaluate at another interval)"
    )


WARMUP = "warmup_steps"  # run.json's extra: the warmup the run started with, in optimizer steps


def kept_warmup(run_dir: Path, ratio: float, total_steps: int) -> tuple[int, str]:
    """(warmup steps, note) for a resumed run of `total_steps`: the warmup steps the run started with (run.json's
    extra.warmup_steps; for a run that recorded none, `ratio` of the length it recorded), and a note when
    `ratio` of the new length would have given another number."""
    info = read_info(run_dir, require_finished=False)
    new = int(ratio * total_steps)
    kept = info.extra.get(WARMUP)
    if kept is None:
        kept = int(ratio * info.total_steps) if info.total_steps else new
    kept = int(kept)
    if kept == new:
        return kept, ""
    after = "the decay after it is recomputed for the new length"
    if kept >= total_steps:  # lr_factor of the last step, (total_steps) / (kept + 1): still warming up
        after = (
            f"it is as long as the new length or longer, so the rate ends the run still warming up, at "
            f"{total_steps / (kept + 1):.0%} of train.lr, and never decays (ask for more than {counted(kept, 'step')} "
            "for a decay)"
        )
    return kept, (
        f"resume: the warmup stays {counted(kept, 'step')}, as the run started with them (train.warmup_ratio {ratio:g} "
        f"of the new {total_steps} steps would be {new}, and would change the rate of steps already trained); {after}"
    )


def check_more_steps(run_dir: Path, total_steps: int, step: int, spelling: Spelling = CLI) -> None:
    """ConfigError when the run is finished and its checkpoint (at `step`) leaves none of this config's steps to
    train: --resume would only save the result again (and lose the final figures)."""
    info = read_info(run_dir, require_finished=False)
    if info.finished and step >= total_steps:
        score = "tunelab compare or tunelab eval" if spelling.flags else "tunelab.compare() or tunelab.evaluate()"
        raise ConfigError(
            f"{run_dir}: the run is finished ({info.steps} steps) and this config asks for {total_steps}, so "
            f"{spelling.resume} has nothing to continue. To train on from its last checkpoint, ask for more steps "
            f"(train.max_steps or train.epochs); to score it, use {score}; to train it again from the start, drop "
            f"{spelling.resume} and give {spelling.overwrite}."
        )


def data_digest(rows: list) -> str:
    """sha256 over the token ids and labels of the training rows, in order."""
    h = hashlib.sha256()
    for row in rows:
        h.update(array("q", row.input_ids).tobytes())
        h.update(array("q", row.labels).tobytes())
    return h.hexdigest()


def _pieces(row) -> list[tuple[str, list[int], list[int]]]:
    """(file, token ids, labels) of each example in a row: a packed row's documents each with its own file."""
    if isinstance(row, Packed):
        out, start = [], 0
        for where, length in zip(row.sources, row.doc_lengths):
            end = start + length
            out.append((location_path(where), row.input_ids[start:end], row.labels[start:end]))
            start = end
        return out
    return [(row.path, row.input_ids, row.labels)]


def file_digests(rows: list) -> dict[str, str]:
    """Per data file, a short sha256 over the token ids and labels of its examples in the order trained: what names
    the file that changed when the whole digest (data_digest) differs."""
    hashes: dict[str, Any] = {}
    for row in rows:
        for path, ids, labels in _pieces(row):
            h = hashes.setdefault(path, hashlib.sha256())
            h.update(array("q", ids).tobytes())
            h.update(array("q", labels).tobytes())
    return {path: h.hexdigest()[:16] for path, h in sorted(hashes.items())}


def what_changed(recorded: dict[str, str], now: dict[str, str]) -> str:
    """The files whose rows differ, in words; empty when the run recorded none (written before they were). A file
    read now under another path that gives the rows a recorded one gave is that file moved, and not named; one of the
    same file name but other rows is that file moved and changed."""
    if not recorded:
        return ""
    gone = {p: d for p, d in recorded.items() if p not in now}
    new = {p: d for p, d in now.items() if p not in recorded}
    for path, digest in list(new.items()):  # moved, rows unchanged
        same = next((old for old, d in gone.items() if d == digest), None)
        if same is not None:
            del new[path], gone[same]
    changed = [f"{p} changed" for p in now if p in recorded and recorded[p] != now[p]]
    for path in list(new):  # moved and changed: the same file name
        old = next((o for o in gone if Path(o).name == Path(path).name), None)
        if old is not None:
            changed.append(f"{path} changed (read from {old} before)")
            del new[path], gone[old]
    if not (changed or new or gone):
        return "every file gives the rows it gave, in another order"
    if changed and len(changed) == len(now) == len(recorded) > 1:
        return "every file's rows differ (the tokenizer or the template changed, or every file did)"
    parts = changed + [f"{p} is new" for p in new] + [f"{p} is no longer read" for p in gone]
    return "; ".join(parts)


class DataChanged(ConfigError):
    """The data a resumed run (or stage) reads gives other tokenized rows than those it trained on."""


GGUF_SPLIT = "gguf_conversion"  # run.json extra: the CONVERSION of the GGUF base's copy whose tokenizer it trained with


def gguf_split_facts(source) -> dict:
    """What run.json records of a GGUF base's conversion (models/converted.CONVERSION): a later tunelab that splits
    its text otherwise can say so on --resume (`split_changed`)."""
    return {GGUF_SPLIT: CONVERSION} if source.is_gguf else {}


def split_changed(before: RunInfo, source, spelling: Spelling = CLI) -> str:
    """For a run on a GGUF base that started before tunelab gave such a base's tokenizer llama.cpp's split for its
    tokenizer.ggml.pre (conversion 3, or 4 for the names of gguf_split.SPLIT_SINCE_4), a sentence saying that this
    may be why its rows differ; else ''."""
    if not source.is_gguf:
        return ""
    pre = read_gguf_string(Path(source.path) / source.gguf_file, "tokenizer.ggml.pre") or "default"  # as llama.cpp
    since = 4 if pre in SPLIT_SINCE_4 else 3
    if pre not in SPLITS or before.extra.get(GGUF_SPLIT, 2) >= since:
        return ""
    which = (
        "its regexes as llama.cpp reads them, so some text"
        if since == 4
        else "for SmolLM2 each digit alone, so text with a digit after whitespace, '\\n\\n1.',"
    )
    return (
        "the run started before tunelab gave a GGUF base's tokenizer the split llama.cpp uses for it "
        f"(tokenizer.ggml.pre {pre!r}: {which} gives other tokens now). With the data unchanged, the run "
        f"cannot resume with this tunelab: train it again with {spelling.overwrite} (its finished result, if any, keeps its own "
        "tokenizer and still opens as trained)"
    )


def check_same_data(
    run_dir: Path,
    recorded: str,
    digest: str,
    what: str = "training",
    files: tuple[dict[str, str], dict[str, str]] = ({}, {}),
    tokenizer: str = "",
    spelling: Spelling = CLI,
) -> None:
    """`what`: training or eval (data.eval, data.eval_fraction's split); `files`: the run's and today's file_digests;
    `tokenizer`: why the tokenizer may split otherwise than when the run started (`split_changed`), or ''."""
    if recorded and recorded != digest:
        which = what_changed(*files)
        if tokenizer:
            which = (f"{which}; or " if which else "") + tokenizer
        raise DataChanged(
            f"{run_dir}: {spelling.resume} needs the {what} data the run started with, but the tokenized {what} rows "
            "differ"
            + (f": {which}" if which else " (a data file, the tokenizer or the template changed)")
            + ". Restore the data, or start a new run."
        )


def resume_checkpoint(run_dir: Path, spelling: Spelling = CLI) -> Path:
    """The newest intact checkpoint, saying which newer ones are damaged; RunDirError when there is none."""
    checkpoint, notes = intact_checkpoint(run_dir)
    for note in notes:
        print(note, flush=True)
    if checkpoint is None:
        if notes:
            why = "every checkpoint in checkpoints/ is damaged"
        elif read_info(run_dir, require_finished=False).finished:
            why = (
                "the run finished, and its step checkpoints were deleted at the end or never written "
                "(train.keep_checkpoints_after_finish, train.save_every)"
            )
        else:
            why = "it has no checkpoint yet (train.save_every writes them)"
        raise RunDirError(
            f"{run_dir}: nothing to resume from: {why}. To start the run again, drop {spelling.resume} and give "
            f"{spelling.overwrite} ({spelling.resume} alone continues from a checkpoint and never replaces the run)."
        )
    return checkpoint


def load_position(checkpoint: Path, model, optimizer, total_steps: int, ranks: Ranks) -> dict:
    """Load the checkpoint into the model and optimizer and return the position it saved; ConfigError when that is
    past the steps this config asks for."""
    position = load_checkpoint(checkpoint, model, optimizer, ranks)
    if position["step"] > total_steps:
        raise ConfigError(
            f"{checkpoint}: the checkpoint is at step {position['step']}, past the {total_steps} steps this config "
            "asks for (train.max_steps / train.epochs); ask for at least as many steps to resume."
        )
    print(f"resuming from {checkpoint} (step {position['step']} of {total_steps})", flush=True)
    return position
