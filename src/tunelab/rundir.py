"""The run directory: what `tunelab train` writes, and the one place that reads its description, `run.json`.

    config.yaml          the resolved config (its saved form; `tunelab train CONFIG --resume` compares against it)
    run.json             `RunInfo` (run_info.py): what was trained and how to open it; `finished` once the result
                         is complete
    data_report.json     what happened to every record (data/report.py)
    metrics.jsonl        one record per logged step and per eval
    adapter_config.json  + adapter_model.safetensors: the result of an adapter method (PEFT's layout), or
    config.json          + model.safetensors: the result of full or layer-wise training (a Hugging Face directory)
    checkpoints/         step-N/ folders for --resume

Every command that opens a finished run (compare, chat, generate, eval, report, merge, export) goes through
`read_info` and `check_result`, so "is this a run, did it finish, is its result there" is answered once. `run.json`
doubles as the marker that tunelab wrote the folder: a folder without it is never treated as a run.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from tunelab.atomic import write_json, write_text
from tunelab.config import RunConfig, load_config
from tunelab.config.flags import CLI, Spelling
from tunelab.config.model import EMBEDDED
from tunelab.config_digest import FIELD, check_config, yaml_digest
from tunelab.errors import ConfigError, RunDirError, article
from tunelab.run_info import ADAPTER_METHODS, RUN_FILE, WEIGHT_METHODS, RunInfo, is_count

CONFIG_FILE = "config.yaml"
ADAPTER_CONFIG_FILE = "adapter_config.json"  # PEFT's names (peft/save.py writes them)
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
MERGE_FILE = "tunelab_merge.json"  # what `tunelab merge` writes into its folder: where the merged model came from


def run_file(run_dir: str | Path) -> Path:
    return Path(run_dir) / RUN_FILE


def is_run_dir(path: str | Path) -> bool:
    """True when `path` is a folder that tunelab wrote as a run directory: it holds a run.json that describes a run
    (a JSON object with its base model and method). Any other file of that name is not proof: --overwrite would
    delete what is beside it."""
    file = run_file(path)
    if not file.is_file():
        return False
    try:
        raw = read_json_object(file, "not a run")
    except (OSError, RunDirError):
        return False
    return all(isinstance(raw.get(key), str) for key in ("base_model", "method"))


def write_info(run_dir: str | Path, info: RunInfo) -> Path:
    """run.json, with the digest of the config.yaml beside it now (config_digest.py)."""
    return write_json(run_file(run_dir), info.to_dict() | {FIELD: yaml_digest(Path(run_dir) / CONFIG_FILE)})


def update_run_json(run_dir: str | Path, fields: dict[str, Any]) -> None:
    """run.json as it stands, with `fields` set in it; nothing without a readable run.json (a run whose run.json is
    written later records them then)."""
    try:
        raw = json.loads(run_file(run_dir).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if isinstance(raw, dict):
        write_json(run_file(run_dir), raw | fields)


def write_config(run_dir: str | Path, text: str) -> None:
    """config.yaml, its digest recorded in the run.json beside it (config_digest.py), where there is one yet."""
    write_text(Path(run_dir) / CONFIG_FILE, text)
    update_run_json(run_dir, {FIELD: yaml_digest(Path(run_dir) / CONFIG_FILE)})


def record_result(run_dir: str | Path, files: dict[str, Any]) -> None:
    """run.json with `files` recorded as the run's result (RunInfo.result_files), before a save moves them into place:
    killed between the move and the run's next write_info, the run still knows them for its own."""
    update_run_json(run_dir, {"result_files": files})


def read_json_object(path: Path, consequence: str) -> dict:
    """A JSON file holding an object; RunDirError naming the file and `consequence` when it is damaged."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunDirError(f"{path}: damaged ({exc}); {consequence}.") from None
    if not isinstance(raw, dict):
        raise RunDirError(f"{path}: damaged (expected a JSON object); {consequence}.")
    return raw


def read_info(run_dir: str | Path, require_finished: bool = True, spelling: Spelling = CLI) -> RunInfo:
    """The run's RunInfo; RunDirError when the folder is missing, is no run directory, or (by default) the run did
    not finish. `spelling`: how that error names train's resume and merge (`tunelab train CONFIG --resume`, or
    tunelab.train(CONFIG, resume=True) for a Python caller)."""
    run_dir = Path(run_dir)
    # run.json, the adapter or a merged model's weights given for the folder: "no such run directory" misled
    if run_dir.is_file():
        raise RunDirError(
            f"{run_dir}: is a file, not a run directory; give the folder that holds the run's {RUN_FILE}."
        )
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir}: no such run directory.")
    path = run_file(run_dir)
    if not path.is_file():
        if (run_dir / MERGE_FILE).is_file():  # it holds a plain model: what merge made of a run
            raise RunDirError(
                f"{run_dir}: a model {_merge(spelling)} wrote ({MERGE_FILE} names the run it came from), not a run "
                "directory; give that run, or train from this folder (model.name) or load it with transformers."
            )
        raise RunDirError(f"{run_dir}: not a tunelab run directory (no {RUN_FILE}).")
    raw = read_json_object(path, "the run directory cannot be opened")
    info = RunInfo.from_dict(raw, str(path))
    if not {"quantize_base", "trust_remote_code"} <= raw.keys():  # a run written before run.json recorded them
        _from_config(info, raw, run_dir)
    info.base_model = _moved_stage_base(info.base_model, run_dir)
    _typed_base(info, run_dir)
    stopped = federation_stopped(info.extra)
    if stopped:  # a federation stopped early wrote finished: true after every round before 2026-12-05
        info.finished = False
    # a federation saves its global adapter after every round: the run opens while later rounds are still to run
    if require_finished and not info.finished and not stopped:
        raise RunDirError(f"{run_dir}: the run did not finish{_unfinished(info, spelling)}")
    return info


def _merge(spelling: Spelling) -> str:
    return "'tunelab merge'" if spelling.flags else "tunelab.merge()"


def _resume_run(spelling: Spelling) -> str:
    """The call that continues a stopped run, as the caller makes it."""
    return "'tunelab train CONFIG --resume'" if spelling.flags else "tunelab.train(CONFIG, resume=True)"


def _unfinished(info: RunInfo, spelling: Spelling) -> str:
    """Why the run has no result yet and what to do, from run.json's `end`."""
    end, resume = info.end, f"; resume it with {_resume_run(spelling)} first."
    step = end.get("step", info.steps)
    if end.get("reason") == "interrupted":
        return f" (interrupted after step {step}){resume}"
    if end.get("reason") == "non_finite":
        return f": {non_finite_stop(info, spelling)}."
    if end.get("reason") == "error":
        return f" (an error stopped it after step {step}: {end.get('error', '?')}){resume}"
    return (
        f" (it is still training, or stopped at step {info.steps}); once it has stopped, resume it with "
        f"{_resume_run(spelling)}."
    )


def non_finite_stop(info: RunInfo, spelling: Spelling = CLI) -> str:
    """For a run the non-finite guard stopped (run.json's `end`), at which step, and why resuming it as it is would
    stop again; empty for another run. What `--resume` (train and check) says first, and why a command refuses it;
    `spelling`: how it names overwrite."""
    end = info.end
    if end.get("reason") != "non_finite":
        return ""
    return (
        f"the non-finite guard stopped the run at step {end.get('step', info.steps)} (NaN or inf losses); a resume "
        "continues from its last checkpoint with the same settings, so it would stop again: train it again with a "
        f"lower train.lr in a new run ({spelling.overwrite}, or another output_dir)"
    )


def resume_warning(run_dir: str | Path, spelling: Spelling = CLI) -> str:
    """What `--resume` of `run_dir` warns before anything loads: a run the non-finite guard stopped would stop again
    (`non_finite_stop`). Empty otherwise, and when run.json cannot be read (the resume's own checks say so)."""
    try:
        info = read_info(run_dir, require_finished=False)
    except (OSError, RunDirError):
        return ""
    stop = non_finite_stop(info, spelling)
    return f"{run_dir}: {stop}." if stop else ""


def federation_stopped(extra: dict[str, Any]) -> tuple[int, int] | None:
    """(rounds done, rounds asked) of a federation whose run.json (`extra`) records fewer rounds done than asked:
    stopped early, or still running; None for a complete federation or another run."""
    federated = extra.get("federated")
    if not isinstance(federated, dict):
        return None
    done, rounds = federated.get("rounds_done"), federated.get("rounds")
    if not (is_count(done) and is_count(rounds)) or done >= rounds:
        return None
    return done, rounds


STAGE_DIR = re.compile(r"stage-[1-9][0-9]*")  # config/load.py STAGE_PREFIX, training/stage_plan.py MERGED


def _moved_stage_base(base_model: str, run_dir: Path) -> str:
    """A staged run's later stages (and the run itself, which describes its last stage) name their base by its
    absolute path inside the run: stage-K, or stage-K/merged after continue: merge. A staged run moved or copied to
    another folder keeps the old path, which is gone or another run's: resolve it to the same place inside this run
    (`run_dir` is the run, or one of its stages)."""
    old = Path(base_model)
    if not old.is_absolute():
        return base_model
    parts = old.parts
    tail = parts[-1:] if parts[-1:] and STAGE_DIR.fullmatch(parts[-1]) else ()
    if not tail and len(parts) >= 2 and parts[-1] == "merged" and STAGE_DIR.fullmatch(parts[-2]):
        tail = parts[-2:]
    if not tail:
        return base_model
    for root in (run_dir, run_dir.parent):
        here = root.joinpath(*tail).absolute()
        if here == old:
            return base_model  # not moved
        if here.is_dir() and _is_staged(root):
            return str(here)
    return base_model


def _typed_base(info: RunInfo, run_dir: Path) -> None:
    """A run written before 2026-12-03 records a local base as it was typed, relative to the folder training ran in,
    which a later command need not run in: from another folder the name meant another model, or none. That folder is
    the run directory less its config's output_dir when that was relative (runs/a trained in ~/proj is ~/proj/runs/a),
    and a base found there is set to its absolute path. Otherwise `base_problem` says where it is missing when the
    name is a path (./m, m.gguf, a/b/c), or when a folder of that name is here although training's folder is known (it
    would be another model); a name that may be a hub id (org/name) is left to be one."""
    base = info.base_model
    if info.base_source or not base or base in EMBEDDED or Path(base).expanduser().is_absolute():
        return  # base_source: a run that recorded what its base is (a local one by its absolute path)
    root = _training_folder(run_dir)
    if root is not None and (root / base).exists():
        info.base_model = str((root / base).resolve())
        return
    here = Path(base).expanduser().absolute()
    pathlike = base.startswith((".", "~")) or base.lower().endswith(".gguf") or base.count("/") > 1 or "\\" in base
    if here.exists() and root is None:
        return  # nothing tells another folder: this one, as before
    if not here.exists() and not pathlike:
        return
    field_is = f"{info.file or run_file(run_dir)}: field 'base_model' is {json.dumps(base)}"
    if root is not None:
        info.base_problem = (
            f"{field_is}, a path relative to {root}, where training ran (runs written before 2026-12-03 kept the base "
            f"as typed), but {root / base} does not exist"
            + (f"; {here} is here, but it may be another model" if here.exists() else "")
            + ". Put the base back there, or write its absolute path into base_model"
            + ("." if pathlike else " (a hub id is opened from a folder that holds no folder of its name).")
        )
    else:
        info.base_problem = (
            f"{field_is}, a path relative to the folder training ran in (runs written before 2026-12-03 kept the base "
            f"as typed), which the run does not record (its output_dir was absolute), and {here} does not exist. Run "
            "the command from that folder, or write the base's absolute path into base_model."
        )


def _training_folder(run_dir: Path) -> Path | None:
    """The folder `tunelab train` ran in: the run directory less its config's relative output_dir; None when the
    config is missing or unreadable, its output_dir was absolute, or the run directory's path does not end with it
    (the run was moved or renamed)."""
    try:
        config = read_config(run_dir)
    except RunDirError:
        return None
    out = Path(os.path.normpath(config.output_dir)) if config is not None else None
    if out is None or out.is_absolute() or ".." in out.parts or out == Path("."):
        return None
    for here in (Path(os.path.abspath(run_dir)), run_dir.resolve()):
        if here.parts[-len(out.parts) :] == out.parts:
            return Path(*here.parts[: -len(out.parts)])
    return None


def _is_staged(root: Path) -> bool:
    try:
        raw = read_json_object(run_file(root), "not a run")
    except (OSError, RunDirError):
        return False
    return isinstance(raw.get("extra"), dict) and "stages" in raw["extra"]


def _from_config(info: RunInfo, raw: dict, run_dir: Path) -> None:
    """Fill in what run.json began to record on 2026-12-01 from the run's config.yaml, which has always held it: a
    QLoRA run written before then was otherwise opened over the 16-bit base (the default 'none'), not over the NF4
    base it trained on. Without a readable config.yaml an adapter run's base is refused (`base_problem`): which base
    the adapter learned to correct is not known."""
    why = f"its {CONFIG_FILE} is missing"
    try:
        config = read_config(run_dir)
    except RunDirError as exc:
        config, why = None, str(exc)
    if config is None:
        if "quantize_base" not in raw and info.is_adapter:
            info.base_problem = (
                f"{info.file}: records no 'quantize_base' (a run written before 2026-12-01), and {why}: it alone says "
                "whether the adapter trained over an NF4 (QLoRA) base or the 16-bit one. Put config.yaml back, or add "
                '"quantize_base": "nf4" or "none" to run.json.'
            )
        return
    if "quantize_base" not in raw:
        info.quantize_base = config.method.quantize_base
    if "trust_remote_code" not in raw:
        info.trust_remote_code = config.model.trust_remote_code


def check_result(run_dir: str | Path, info: RunInfo) -> None:
    """RunDirError unless the run's result is present: the adapter files for an adapter method, else the weights."""
    run_dir = Path(run_dir)
    if info.is_adapter:
        missing = [name for name in (ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE) if not (run_dir / name).is_file()]
        if missing:
            raise RunDirError(
                f"{run_dir}: the run was trained with {info.method} but its adapter is incomplete "
                f"({', '.join(missing)} missing)."
            )
    elif info.method in WEIGHT_METHODS:
        if not (run_dir / "config.json").is_file() or not any(run_dir.glob("*.safetensors")):
            raise RunDirError(
                f"{run_dir}: the run trained weights (method {info.method}) but holds no config.json and "
                "*.safetensors weights."
            )
    else:
        allowed = ", ".join(ADAPTER_METHODS + WEIGHT_METHODS)
        raise RunDirError(f"{run_file(run_dir)}: unknown method {info.method!r}; expected one of {allowed}.")


HEAD_TASKS = ("classify", "reward")  # tasks/: a head instead of the LM head, so no text generation


def open_info(run_dir: str | Path, heads: bool = False, spelling: Spelling = CLI) -> RunInfo:
    """read_info + check_result: a finished run whose result is there. A run with a head (classify, reward) only
    when `heads`: the commands that generate text, merge or export cannot use one. `spelling`: as read_info's."""
    info = read_info(run_dir, spelling=spelling)
    if info.task in HEAD_TASKS and not heads:
        uses = "'tunelab predict' or 'tunelab eval'" if spelling.flags else "tunelab.predict() or tunelab.evaluate()"
        raise RunDirError(
            f"{run_dir}: {article(info.task)} run (a head on the model's last token, saved as a sequence-classification "
            "model): it does not generate text, and merging or exporting it to GGUF is not supported. Use "
            f"{uses} with it; transformers loads it with AutoModelForSequenceClassification."
        )
    check_result(run_dir, info)
    return info


def start_info(run_dir: str | Path, info: RunInfo) -> RunInfo:
    """The run whose base is the model this run started from: stage 1 of a staged run (whose run.json describes its
    last stage, over the previous stage's merged model or weights after continue: merge or a full stage), else the
    run itself. compare, chat and eval put that model beside the tuned one as "base"; merge and export name its base
    in the model card."""
    folder = start_dir(run_dir, info)
    return info if folder is None else read_info(folder)


def start_dir(run_dir: str | Path, info: RunInfo) -> Path | None:
    """The folder of `start_info`'s run: stage 1's of a staged run (run.json's extra.stages[0].dir); None for a run
    of one stage, which is its own start."""
    stages = info.extra.get("stages")
    first = stages[0] if isinstance(stages, list) and stages else None
    if isinstance(first, dict) and isinstance(first.get("dir"), str):
        return Path(run_dir) / first["dir"]
    return None


def read_config(run_dir: str | Path) -> RunConfig | None:
    """The run's saved config (config.yaml); None when the run directory holds none (written by an older version or
    by hand); RunDirError when it cannot be read."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        return None
    check_config(path, run_file(run_dir))  # cut short at a line end, it would parse, its lost options at defaults
    try:
        return load_config(path, saved=True).config
    except ConfigError as exc:
        raise RunDirError(f"{path}: the run's saved config cannot be read ({exc}).") from None


def saved_config(run_dir: str | Path, needed_for: str) -> RunConfig:
    """The config the run's result was trained with, which a command needs `needed_for` (what it reads there): its
    config.yaml, or for a staged run the last stage's (the top one holds the stages, not the settings of the stage
    whose result the run holds). RunDirError naming the file when it is missing: run.json does not hold those
    settings, and defaults in their place would ask and score in another format than the run trained on."""
    config = read_config(run_dir)
    if config is None:
        raise RunDirError(
            f"{Path(run_dir) / CONFIG_FILE}: the run's config.yaml is missing; it alone records {needed_for}. Put it "
            "back (training saved it there; a copy of the run has it), or train the run again."
        )
    if not config.stages:
        return config
    stages = stage_dirs(run_dir)
    if not stages:
        raise RunDirError(f"{run_file(run_dir)}: a staged run whose stages are not recorded (extra.stages[].dir).")
    return saved_config(stages[-1], needed_for)


def saved_config_file(run_dir: str | Path) -> Path:
    """The config.yaml that `saved_config` reads: the run's, or for a staged run its last stage's."""
    config = read_config(run_dir)
    stages = stage_dirs(run_dir) if config is not None and config.stages else []
    return saved_config_file(stages[-1]) if stages else Path(run_dir) / CONFIG_FILE


def stage_dirs(run_dir: str | Path) -> list[Path]:
    """The stage folders a finished staged run records (run.json's extra.stages[].dir), in order; empty for another
    run, or a staged run that has not finished."""
    try:
        stages = read_info(run_dir, require_finished=False).extra.get("stages")
    except (OSError, RunDirError):
        return []
    if not isinstance(stages, list) or not stages:
        return []
    names = [s.get("dir") if isinstance(s, dict) else None for s in stages]
    if not all(isinstance(n, str) and n and Path(n).name == n for n in names):
        return []
    return [Path(run_dir) / n for n in names]


def run_configs(run_dir: Path) -> list[RunConfig]:
    """The run's saved config and, for a staged run, each stage's: every one names files and models the run read.
    RunDirError when one cannot be read."""
    config = read_config(run_dir)
    if config is None:
        return []
    stages = [read_config(d) for d in stage_dirs(run_dir)] if config.stages else []
    return [config] + [c for c in stages if c is not None]
