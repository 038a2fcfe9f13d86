"""`RunInfo`: what run.json holds of a run (its fields, each with what it means), and the checks of each field's
value as read back, so that a run.json edited by hand or damaged is refused by name (`RunInfo.from_dict`). Reading
and opening a run directory is rundir.py's.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab import __version__
from tunelab.config import MethodConfig, ModelConfig, RunConfig
from tunelab.errors import RunDirError

RUN_FILE = "run.json"
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
    file); empty in runs written before it was recorded, whose base is read by its shape (`rundir._typed_base`)."""
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
    config_digest: dict[str, Any] = field(default_factory=dict)
    """{"sha256", "bytes"} of the run directory's config.yaml when this was written (config_digest.py): commands
    reading the config refuse one that differs. Empty in runs written before 2026-12-06."""
    result_files: dict[str, Any] = field(default_factory=dict)
    """{name: {"bytes", "mtime_ns"}} of the result's files at the run directory's top as its save left them
    (training/result.py): a file of a result's name that differs is not the run's, and no save replaces it. Empty
    before the first save, and in runs written before 2026-12-06 (a finished one takes the files there as its own)."""
    tunelab_version: str = __version__
    extra: dict[str, Any] = field(default_factory=dict)
    """Facts particular to a task or feature, saved and read back as they are (keys unknown to this version too)."""
    file: Path | None = field(default=None, compare=False, repr=False, metadata={"saved": False})
    """The run.json it was read from (not saved): what an error about one of its values names."""
    base_problem: str = field(default="", compare=False, repr=False, metadata={"saved": False})
    """Why the base cannot be opened as the run trained over it (not saved): a base kept as typed by a run written
    before 2026-12-03 names no model from here (`rundir._typed_base`), or an old adapter run's config.yaml, which says
    whether it was QLoRA, is gone (`rundir._from_config`). The commands that load the base refuse with it (`models.base_record.run_base`);
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


def is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _mapping(value: Any, item) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and item(v) for k, v in value.items())


FIELD_CHECKS = {  # a RunInfo field's type as written -> (the check of its run.json value, the words for it)
    "str": (lambda v: isinstance(v, str), "a string"),
    "str | None": (lambda v: v is None or isinstance(v, str), "a string or null"),
    "bool": (lambda v: isinstance(v, bool), "true or false (not a string)"),
    "int": (is_count, "a whole number >= 0"),
    "float": (lambda v: _number(v) and v >= 0, "a number >= 0"),
    "float | None": (lambda v: v is None or _number(v), "a number or null"),
    "dict[str, str]": (lambda v: _mapping(v, lambda x: isinstance(x, str)), "an object of strings"),
    "dict[str, list[int]]": (
        lambda v: _mapping(v, lambda x: isinstance(x, list) and all(map(is_count, x))),
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
