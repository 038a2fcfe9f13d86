"""The run directory: what `tunelab train` writes, and the one place that reads its description, `run.json`.

    config.yaml          the resolved config (its saved form; `tunelab train CONFIG --resume` compares against it)
    run.json             `RunInfo`: what was trained and how to open it; `finished` once the result is complete
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

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab import __version__
from tunelab.atomic import write_json
from tunelab.config import MethodConfig, ModelConfig, RunConfig, load_config
from tunelab.config.flags import CLI, Spelling
from tunelab.config.model import EMBEDDED
from tunelab.errors import ConfigError, RunDirError, article

RUN_FILE = "run.json"
CONFIG_FILE = "config.yaml"
ADAPTER_CONFIG_FILE = "adapter_config.json"  # PEFT's names (peft/save.py writes them)
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
MERGE_FILE = "tunelab_merge.json"  # what `tunelab merge` writes into its folder: where the merged model came from
ADAPTER_METHODS = ("lora", "dora")
WEIGHT_METHODS = ("full", "layers")


@dataclass
class RunInfo:
    """Everything a later command needs to know about a run without re-reading its config."""

    base_model: str
    """The model the run started from: an alias or hub id as the config named it, a local directory or .gguf file
    as its absolute path (`models.base_record.recorded_name`)."""
    method: str
    """lora | dora | full | layers: whether the result is an adapter or whole weights."""
    base_source: str = ""
    """What base_model names: alias, hub (a hub id, never a local folder of that name) or local (a directory or .gguf
    file); empty in runs written before it was recorded, whose base is read by its shape (`_typed_base`)."""
    base_revision: str = ""
    """A hub base's commit as it resolved when training started (else the model.revision pinned): later commands load
    those weights, not what the branch holds by then. Empty for other bases."""
    base_fingerprint: str = ""
    """`models.load.fingerprint` of the base's weight files when the run started (empty: a hub id, or a run written
    before it was kept): later commands refuse a base whose weights changed."""
    task: str = "sft"
    """What the model was trained to do: sft (generate answers), or a head on the body (classify, reward: a
    sequence-classification model, read by `tunelab predict` and `tunelab eval`, not by what generates text)."""
    template: str = "auto"
    """The prompt template the data was rendered with (its resolved name)."""
    system_prompt: str | None = None
    refusal: str | None = None
    impl: str = "generic"
    """fast (tunelab's Llama-family model) or generic (the transformers model)."""
    quantize_base: str = "none"
    """nf4 for QLoRA: the adapter was trained over the 4-bit base, and is evaluated over it by default."""
    init: str = "default"
    """An adapter run's method.init: default, or pissa / olora (peft/weight_init.py), whose saved adapter is a plain
    LoRA of rank 2 x method.r over the original base. default for full and layers runs, and in runs written before
    it was recorded."""
    rslora: bool = False
    """An adapter run's method.rslora: the adapter is scaled by alpha / sqrt(r), not alpha / r (false in runs written
    before it was recorded)."""
    dtype: str | None = None
    """The dtype the model trained in (float32, bfloat16, float16): a QLoRA base is quantized from it again when the
    run is opened. None in runs written before it was recorded."""
    trust_remote_code: bool = False
    """The model's own code ran in training, so opening the run needs it too."""
    fixed_untrained_tokens: dict[str, list[int]] = field(default_factory=dict)
    """{"embed_tokens": ids, "lm_head": ids}: base rows that were untrained and set to the mean of the trained rows
    before training (model.fix_untrained_tokens, models/untrained.py); opening an adapter run repeats it on its base."""
    data_sha256: str = ""
    """Digest of the tokenized training rows: --resume refuses data that changed since the run started."""
    eval_sha256: str = ""
    """Digest of the tokenized eval rows (empty: none, or a run written before it was recorded): --resume refuses
    eval data that changed, whose figures keep_best and the verdict would compare with the earlier ones."""
    data_files: dict[str, str] = field(default_factory=dict)
    """Per training file, a short digest of its tokenized rows: names the file when data_sha256 differs."""
    eval_files: dict[str, str] = field(default_factory=dict)
    """The same for the eval rows."""
    skipped_steps: int = 0
    """Optimizer steps whose update the non-finite guard skipped (training/guard.py)."""
    total_steps: int = 0
    finished: bool = False
    steps: int = 0
    final_loss: float | None = None
    eval_loss: float | None = None
    tokens: int = 0
    elapsed_s: float = 0.0
    end: dict[str, Any] = field(default_factory=dict)
    """Why training stopped, and after which step: {"reason": "finished" | "early_stopped" | "interrupted" |
    "non_finite" | "error", "step": N} (early_stopped: finished before its planned steps, extra.early_stop), with the signal of an interruption and the message of an error (training/progress.py `end_record`).
    Empty while the run trains, after a process killed outright, and in runs written before 2026-12-05."""
    tunelab_version: str = __version__
    extra: dict[str, Any] = field(default_factory=dict)
    """Facts particular to a task or feature, saved and read back as they are (keys unknown to this version too)."""
    file: Path | None = field(default=None, compare=False, repr=False, metadata={"saved": False})
    """The run.json it was read from (not saved): what an error about one of its values names."""
    base_problem: str = field(default="", compare=False, repr=False, metadata={"saved": False})
    """Why the base cannot be opened as the run trained over it (not saved): a base kept as typed by a run written
    before 2026-12-03 names no model from here (`_typed_base`), or an old adapter run's config.yaml, which says whether
    it was QLoRA, is gone (`_from_config`). The commands that load the base refuse with it (`models.base_record.run_base`);
    the others read the run."""

    @property
    def is_adapter(self) -> bool:
        return self.method in ADAPTER_METHODS

    @property
    def nf4_again(self) -> bool:
        """Whether the run's adapter belongs over its base quantized to NF4 again: QLoRA started as usual. A QPiSSA
        run (nf4 with init pissa or olora) saved a plain LoRA over the original 16-bit base (peft/weight_init.py),
        which it is opened, merged and exported over."""
        return self.is_adapter and self.quantize_base == "nf4" and self.init == "default"

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k in saved_fields()}

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str = RUN_FILE) -> RunInfo:
        """RunDirError naming `where` and the field when one is missing or not of its type and range: a run.json
        edited by hand or damaged (`"finished": "false"` counted as finished; a negative row id indexed from the
        end)."""
        known = saved_fields()
        missing = [name for name in ("base_model", "method") if name not in raw]
        if missing:
            raise RunDirError(f"{where}: not a complete run description ({', '.join(missing)} missing).")
        values = {k: v for k, v in raw.items() if k in known}
        for name, value in values.items():
            ok, expected = FIELD_CHECKS[known[name]]
            if name in FIELD_WORDS and value is not None and ok(value):  # null: a run from before it was recorded
                words = FIELD_WORDS[name]
                shown = ", ".join(w or '""' for w in words) + (" or null" if "None" in known[name] else "")
                ok, expected = (lambda v, words=words: v in words), f"one of {shown}"
            if not ok(value):
                raise RunDirError(
                    f"{where}: field '{name}' is {json.dumps(value)[:80]}, but must be {expected} (the file was edited "
                    "or damaged); put back the value tunelab wrote, or train the run again."
                )
        values["extra"] = dict(raw.get("extra") or {}) | {k: v for k, v in raw.items() if k not in known}
        return cls(**values, file=Path(where))


def hub_revision(info: RunInfo) -> str:
    """The commit a hub base was loaded at (empty for another base): what the adapter's PEFT config names as its
    base's `revision`."""
    return info.base_revision if info.base_source == "hub" else ""


def saved_fields() -> dict[str, str]:
    """{name: type as written} of the RunInfo fields that run.json holds."""
    return {f.name: f.type for f in dataclasses.fields(RunInfo) if f.metadata.get("saved", True)}


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _mapping(value: Any, item) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and item(v) for k, v in value.items())


FIELD_CHECKS = {  # a RunInfo field's type as written -> (the check of its run.json value, the words for it)
    "str": (lambda v: isinstance(v, str), "a string"),
    "str | None": (lambda v: v is None or isinstance(v, str), "a string or null"),
    "bool": (lambda v: isinstance(v, bool), "true or false (not a string)"),
    "int": (_count, "a whole number >= 0"),
    "float": (lambda v: _number(v) and v >= 0, "a number >= 0"),
    "float | None": (lambda v: v is None or _number(v), "a number or null"),
    "dict[str, str]": (lambda v: _mapping(v, lambda x: isinstance(x, str)), "an object of strings"),
    "dict[str, list[int]]": (
        lambda v: _mapping(v, lambda x: isinstance(x, list) and all(map(_count, x))),
        "an object of lists of whole numbers >= 0",
    ),
    "dict[str, Any]": (lambda v: isinstance(v, dict), "an object"),
}


# The fields that hold one of a few words, beyond their type: another (a typo, an edit) opened the run as something it
# is not ("task": "foo" as an sft run, "quantize_base": "NF4" over the 16-bit base it did not train over).
def _choices(section, name: str) -> tuple[str, ...]:
    """The allowed values of a config option, as its field declares them."""
    return next(f.metadata["choices"] for f in dataclasses.fields(section) if f.name == name)


FIELD_WORDS = {
    "task": _choices(RunConfig, "task"),
    "impl": tuple(c for c in _choices(ModelConfig, "impl") if c != "auto"),  # what "auto" resolved to
    "quantize_base": _choices(MethodConfig, "quantize_base"),
    "init": _choices(MethodConfig, "init"),
    "base_source": ("", "alias", "hub", "local"),  # models.load.ModelSource.kind; empty in runs from before
    "dtype": ("float32", "bfloat16", "float16"),  # the torch dtype trained in (training.build.SHORT), as written
}


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
    return write_json(run_file(run_dir), info.to_dict())


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
    if not (_count(done) and _count(rounds)) or done >= rounds:
        return None
    return done, rounds


STAGE_DIR = re.compile(r"stage-[1-9][0-9]*")  # training/stages.py: STAGE_PREFIX, MERGED


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


def run_stamp(run_dir: str | Path) -> tuple[int, int, int] | None:
    """Who the run is now: its run.json's inode, modification time and size (None without one). A run replaced by
    `train --overwrite` (or changed by --resume) has another."""
    try:
        st = run_file(run_dir).stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def check_same_run(run_dir: str | Path, stamp: tuple[int, int, int] | None, what: str) -> None:
    """RunDirError when the run is no longer the one `stamp` was taken of: `what` (compare, eval) ran on a model
    that is not the run's any more, and its result must not be saved into the run as if it were."""
    if run_stamp(run_dir) != stamp:
        raise RunDirError(
            f"{run_dir}: the run was replaced or changed while {what} ran (its {RUN_FILE} differs), so the answers are "
            f"of a model the run no longer holds; nothing was saved. Run {what} again."
        )


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
