"""Merge a finished run into one plain Hugging Face model directory that any transformers-based tool loads.

For a LoRA run every adapter is folded into its base weight, W' = W + (alpha / r) B A, computed in fp32 and rounded
once to the output dtype; for full and layer-wise runs the weights are already whole and are only re-saved. The
directory gets the chat template the run was trained with: the tokenizer's own, or the Jinja of the named template
(`Template.jinja`), which writes exactly what training wrote (the run's system prompt included, where a conversation
has no system message), so `apply_chat_template` on the merged model prompts it the way it learned, and a
generation_config that answers as tunelab evaluated the run (greedy, stopping at its end-of-turn tokens:
`answer_as_evaluated`), so a plain `model.generate()` gives the answers the run was judged by.

The fold is `peft.lora.merge_lora`, the one merge (each layer's `merged_weight`: LoRA's W + s B A, DoRA's
m (W + s B A) / n; an NF4 base dequantized to fp32 first, as training saw it). A
QLoRA run is opened over the NF4 base it was trained on (infer/run.py) and each base weight is dequantized there, so
the adapter is added to the weight it learned to correct, not to the 16-bit weight that was quantized. The merge then
measures what it changed: the merged model and the model it came from (adapter over the trained base) read one probe
prompt, and the largest difference of their logits is reported (`MergeCheck`) and saved in tunelab_merge.json.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from contextlib import suppress
from dataclasses import asdict, dataclass, replace
from fnmatch import fnmatch
from pathlib import Path

import torch
from safetensors import SafetensorError
from torch import nn
from transformers import GenerationConfig

from tunelab.atomic import check_can_write, require_space, scratch_folder, write_failed, write_json
from tunelab.config.flags import CLI, PYTHON, Spelling
from tunelab.data.render import render_prompt
from tunelab.data.templates import Template, trained_chat_template
from tunelab.errors import ConfigError, RunDirError
from tunelab.export.card import CARD, base_sampling, model_card
from tunelab.infer.run import open_run
from tunelab.models.base_record import run_base
from tunelab.models.load import load_hf_config, resolve_source
from tunelab.models.quiet import quiet_progress
from tunelab.peft.lora import merge_lora
from tunelab.places import data_of, models_of
from tunelab.run_info import RUN_FILE, RunInfo
from tunelab.rundir import MERGE_FILE, is_run_dir, open_info, start_dir
from tunelab.training.guard import first_non_finite

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class MergeCheck:
    """The merged model beside the model it was merged from (the adapter over the base it was trained on), on one
    probe prompt: how far their logits are apart."""

    base: str  # what the adapter sat on before the merge: "nf4" (dequantized for the merge) or the weights' dtype
    tokens: int  # positions of the probe
    max_abs_logit_diff: float
    same_next_token: float  # share of positions whose most likely next token agrees

    def describe(self) -> str:
        return (
            f"merge check on a {self.tokens}-token probe: logits of the merged model and of the adapter over the "
            f"{self.base} base differ by at most {self.max_abs_logit_diff:.3g}; same next token at "
            f"{100 * self.same_next_token:.1f}% of positions"
        )


@dataclass
class MergedModel:
    """A run's model with no adapter modules left, ready to save or convert."""

    model: nn.Module  # a plain transformers *ForCausalLM
    tokenizer: object  # carries `chat_template` = the template the run was trained with
    info: RunInfo
    template: Template
    dtype: torch.dtype
    check: MergeCheck | None = None  # None for full and layer-wise runs (nothing was folded)
    # the base's generation_config before `answer_as_evaluated` made it greedy (its sampling, for the card and the
    # Modelfile's comment); None when the model has none
    base_generation: GenerationConfig | None = None
    # stage 1's run of a staged run (`rundir.start_info`), whose base the merged weights descend from, whatever the
    # last stage trained over (stage-1/merged after continue: merge); None for a run of one stage
    start: RunInfo | None = None

    @property
    def base_info(self) -> RunInfo:
        """The run whose base the merged model is a fine-tune of: the cards and the GGUF file name its base."""
        return self.start or self.info


def check_run(run_dir: str | Path, spelling: Spelling = CLI) -> RunInfo:
    """The RunInfo of a finished run whose result (adapter or weights) is present; RunDirError otherwise, naming
    train's resume as `spelling` does."""
    return open_info(run_dir, spelling=spelling)


def parse_dtype(dtype: str | torch.dtype | None, spelling: Spelling = PYTHON) -> torch.dtype | None:
    """The torch dtype a merge writes, from its name; a name it does not know is refused as the caller gave it."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ConfigError(f"{spelling.option('dtype')} is {dtype!r}; allowed values: {', '.join(DTYPES)}.")
    return DTYPES[dtype]


def _result_config(run_dir: str | Path, info: RunInfo):
    """The transformers config of the run's result: its base's for an adapter run, its own for full weights."""
    source = run_base(info) if info.is_adapter else resolve_source(str(run_dir))
    return load_hf_config(source, info.trust_remote_code)


def stored_dtype(run_dir: str | Path, info: RunInfo) -> torch.dtype:
    """The dtype the weights were saved in (the base model's for a LoRA run); fp32 when the config does not say."""
    config = _result_config(run_dir, info)
    value = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(value, str):
        value = getattr(torch, value, None)
    return value if value in DTYPES.values() else torch.float32


def _probe(run) -> torch.Tensor:
    """(1, T) token ids of a short prompt in the run's template: the input the merge check reads."""
    system = [{"role": "system", "content": run.system_prompt}] if run.system_prompt else []
    messages = system + [{"role": "user", "content": "Hello! What can you tell me about yourself?"}]
    return torch.tensor([render_prompt(messages, run.tokenizer, run.template)])


@torch.no_grad()
def merged_model(run_dir: str | Path, dtype: str | torch.dtype | None = None) -> MergedModel:
    """Load a finished run on the CPU and fold its adapter in; `dtype` None keeps the dtype the weights were saved in.
    A QLoRA run is loaded over its NF4 base (quantized from the dtype it trained in) and dequantized by the fold."""
    info = check_run(run_dir)
    load_dtype = stored_dtype(run_dir, info)  # fold at the stored precision, round once at the end
    out_dtype = parse_dtype(dtype) or load_dtype
    qlora = info.nf4_again
    name = "auto" if qlora else next(k for k, v in DTYPES.items() if v == load_dtype)
    run = open_run(run_dir, device="cpu", dtype=name)
    check = None
    probe = _probe(run) if info.is_adapter else None
    before = run.model(probe).logits.float() if probe is not None else None  # the adapter over its trained base
    model = merge_lora(run.model, out_dtype).to(out_dtype).eval()
    bad = first_non_finite(model.state_dict().items())  # the weights of a full run, or rounding to fp16 (65504 max)
    if bad is not None:
        raise RunDirError(
            f"{run_dir}: the merged weights hold NaN or inf values (first: {bad}), so nothing is written; the run's "
            "weights are damaged" + (", or too large for fp16 (try bf16)." if out_dtype == torch.float16 else ".")
        )
    if probe is not None:
        after = model(probe).logits.float()
        base = "nf4" if qlora else str(run.dtype).removeprefix("torch.")
        check = MergeCheck(
            base,
            probe.shape[1],
            (after - before).abs().max().item(),
            (after.argmax(-1) == before.argmax(-1)).float().mean().item(),
        )
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = True  # training switches the KV cache off; inference wants it
    tokenizer = run.tokenizer
    # the template training wrote, with the run's system prompt where a conversation brings none: what the merged
    # folder's tokenizer and the GGUF file's tokenizer.chat_template (llama.cpp, LM Studio) prompt with
    tokenizer.chat_template = trained_chat_template(run.template, tokenizer, run.system_prompt)
    gen = getattr(model, "generation_config", None)
    base_generation = copy.deepcopy(gen)
    if gen is not None:
        answer_as_evaluated(gen, list(run.template.stop_token_ids), tokenizer.pad_token_id)
    # a blank system prompt is none, as training added none: the Modelfile's SYSTEM and the self-check read it here
    info = replace(run.info, system_prompt=run.system_prompt)
    return MergedModel(model, tokenizer, info, run.template, out_dtype, check, base_generation, run.start)


def answer_as_evaluated(gen: GenerationConfig, stops: list[int], pad: int | None) -> None:
    """Make `gen` (the merged model's generation_config) decode as tunelab's eval, chat, generate and serve did by
    default: greedily, with no repetition penalty, top-k or the other settings they replace or do not apply
    (infer/generate.py's REPLACED and NOT_APPLIED), stopping at the run's end-of-turn tokens. The base's values
    (Qwen's do_sample with temperature 0.7, top_p 0.8, ...) would make a plain `model.generate()` sample instead;
    a call that passes its own (do_sample=True, temperature=...) still does."""
    default = GenerationConfig()  # every setting at the value that changes nothing (do_sample False, no min_p...)
    for name in base_sampling(gen):
        setattr(gen, name, getattr(default, name))
    if stops:
        gen.eos_token_id = stops[0] if len(stops) == 1 else stops  # so generate() stops where the run learned to
        gen.pad_token_id = pad


def check_output(
    out: Path,
    run_dir: Path,
    overwrite: bool,
    option: str = "--out",
    never: Callable[[Path], str | None] | None = None,
    spelling: Spelling = CLI,
) -> None:
    """Refuse to write into or over the run itself, another run directory or the base model the run trained over
    (even with overwrite: the run could never be opened as it trained again, and `train --overwrite` of a run
    refuses while it holds what tunelab did not write there), or over something that exists (unless overwrite). `option` names the output in
    the messages; `never` says why an existing `out` is of a kind the command does not replace even with overwrite
    (None where it would), asked before --overwrite is suggested. `spelling`: how the caller names them, `option`
    and --overwrite, or the Python arguments out and overwrite=True."""
    named = f"{option} {out}" if spelling.flags else f"argument 'out' ({out})"
    forced = "--overwrite" if spelling.flags else "overwrite=True"
    retrain = "'tunelab train --overwrite'" if spelling.flags else f"tunelab.train() with {spelling.overwrite}"
    # what a file tunelab did not write does to a run directory's replacement (`training.run_files`)
    stops = f"where a file tunelab did not write stops {retrain} (refused, naming it) until it is moved out"
    above = next((f for f in out.parents if f.exists()), None)  # a file where a folder of the path should be
    if above is not None and not above.is_dir():
        raise RunDirError(f"{named}: {above} is a file, not a folder, so nothing can be written under it.")
    out_r, run_r = out.resolve(), run_dir.resolve()
    if run_r.is_relative_to(out_r):
        raise RunDirError(f"{named}: the output would replace the run directory {run_dir}; choose another output path.")
    if out_r.is_relative_to(run_r):
        raise RunDirError(
            f"{named}: is inside the run directory {run_dir}, whose files the run's commands read and {stops}; "
            "write it outside the run (e.g. beside it)."
        )
    holder = next((f for f in (out_r, *out_r.parents) if is_run_dir(f)), None)
    if holder is not None:  # another run's folder: its train --overwrite would stop at the output
        raise RunDirError(
            f"{named}: is {'' if holder == out_r else 'inside '}the run directory {holder} (it holds tunelab's "
            f"{RUN_FILE}), {stops.replace(retrain, f'{retrain} of that run')}; write it outside every run "
            "directory (e.g. beside them)."
        )
    for what, model in models_of(run_dir):  # the base, every stage's, the adapter a config started from
        if model.is_relative_to(out_r):
            raise RunDirError(
                f"{named}: the output would replace {model}, {what}, which the run needs as it was (its "
                "adapter and every later command of the run open it); choose another output path."
            )
        if model.is_dir() and out_r.is_relative_to(model):
            raise RunDirError(
                f"{named}: is inside {model}, the folder of {what}, which the run needs as it was; write it elsewhere."
            )
    for what, data in data_of(run_dir):  # as eval and predict refuse: the next training would read it as data
        if out_r == data or out_r.is_relative_to(data):
            raise RunDirError(
                f"{named}: is where {what} of the run's config reads its data, so the next training would "
                f"read it as data (or lose it); {forced} never replaces data. Write it elsewhere."
            )
        if data.is_relative_to(out_r):
            raise RunDirError(
                f"{named}: the output would replace {data}, {what} of the run's config; choose another output path."
            )
    if out.exists() and not (out.is_file() or out.is_dir()):  # replaced whole: /dev/null would become a model
        raise RunDirError(
            f"{named}: is not a regular file or folder (a device, pipe or socket), which the output would "
            "replace; choose another output path."
        )
    refusal = never(out) if never is not None and out.exists() else None
    if refusal:
        raise RunDirError(refusal)
    if out.is_file() or (out.is_dir() and any(out.iterdir())):
        if not overwrite:
            raise RunDirError(
                f"{named}: exists and is not empty. Pass {forced} to replace it, or choose another output path."
            )


def provenance(merged: MergedModel, run_dir: Path, out: Path) -> dict:
    """What MERGE_FILE records of where the merged model came from. The run is named relative to the merged folder
    (`run_dir`, as "../runs/a": right again when both are moved or copied together) and by its absolute path when
    merged (`run_dir_at_merge`: right when the merged folder alone moves); the base as the run's run.json records it
    (an alias or hub id as written, a local base by its absolute path; base_source and a hub id's commit,
    base_revision, where it records them), not as this machine resolved it for the
    merge (a moved staged run's own stage folder, an old run's base found beside it). A staged run's base is stage
    1's, which the merged weights are a fine-tune of; `last_stage_base` names what the last stage trained over (as
    its run.json records it: stage-1/merged after continue: merge, a stage's folder after a full stage)."""
    keys = ("method", "quantize_base", "template", "system_prompt")
    recorded = _base_recorded(run_dir)
    first = start_dir(run_dir, merged.info)
    stages = {} if first is None else _base_recorded(first) | {"last_stage_base": recorded.get("base_model")}
    run, target = run_dir.resolve(), out.resolve()
    return (
        (stages or recorded)
        | {k: getattr(merged.info, k) for k in keys}
        | {"run_dir": os.path.relpath(run, target), "run_dir_at_merge": str(run)}
        | {"check": asdict(merged.check) if merged.check else None}
    )


def _base_recorded(run_dir: Path) -> dict:
    """base_model, base_source and base_revision as the run.json of `run_dir` records them (those it records)."""
    recorded = json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8"))
    return {key: recorded[key] for key in ("base_model", "base_source", "base_revision") if key in recorded}


def shapes_only(run_dir: str | Path) -> nn.Module | None:
    """The run's merged model as shapes alone, on the meta device (no weights read, no memory taken): what the merge
    and the export measure their output by before the minutes a merge takes. None for a model transformers cannot
    build from its config alone (then the merged model itself is measured, after the merge)."""
    from transformers import AutoModelForCausalLM

    info = check_run(run_dir)
    config = _result_config(run_dir, info)
    try:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config, trust_remote_code=info.trust_remote_code)
    except (ValueError, KeyError, TypeError, ImportError, NotImplementedError, RuntimeError):
        return None


def saved_bytes(model: nn.Module, dtype: torch.dtype) -> int:
    """About how many bytes the merged folder of `model` in `dtype` takes: each weight once (a tied one is one
    parameter) and the buffers saved with them, plus the tokenizer's files (~256 bytes a token of the vocabulary:
    tokenizer.json's tokens and merges) and the small JSON files. `model` may be `shapes_only`'s."""

    def size(t: torch.Tensor) -> int:
        return t.numel() * (dtype.itemsize if t.is_floating_point() else t.element_size())

    saved = model.state_dict().keys()
    tensors = [*model.parameters(), *(b for name, b in model.named_buffers() if name in saved)]
    return sum(size(t) for t in tensors) + 256 * model.config.vocab_size + 2**20


# What a merge written before MERGE_FILE listed its files holds: transformers' weights, configs and tokenizer files
_MERGE_PATTERNS = ("*.safetensors", "*.json", "*.jinja", "tokenizer.model", "merges.txt", "vocab.txt", CARD)


def _not_written_by_merge(out: Path) -> list[str]:
    """The entries of the earlier merge folder `out` that the merge did not write (a GGUF converted into it, notes):
    those its MERGE_FILE does not list, or for a merge that listed none, those no merge writes."""
    listed = None
    with suppress(OSError, ValueError):
        recorded = json.loads((out / MERGE_FILE).read_text(encoding="utf-8"))
        listed = recorded.get("files") if isinstance(recorded, dict) else None
    if not isinstance(listed, list):
        listed = None
    entries = sorted(out.iterdir())
    if listed is not None:
        return [e.name for e in entries if e.name not in listed or not e.is_file()]
    return [e.name for e in entries if not e.is_file() or not any(fnmatch(e.name, p) for p in _MERGE_PATTERNS)]


def _not_a_merge(out: Path, spelling: Spelling = PYTHON) -> str | None:
    """Why the merge never replaces `out`, even with --overwrite; None for an earlier merge (all of whose files the
    merge wrote) or an empty folder. `spelling`: how it names overwrite (--overwrite, or overwrite=True)."""
    forced = "--overwrite" if spelling.flags else "overwrite=True"
    if out.is_file():
        return f"{out}: is a file; the merge writes a folder there. Choose a folder name."
    if out.is_dir() and any(out.iterdir()) and not (out / MERGE_FILE).is_file():
        return (
            f"{out}: holds files that are not a merged model tunelab wrote (no {MERGE_FILE}); {forced} replaces "
            "only an earlier merge, never other folders. Choose a new or empty folder."
        )
    foreign = _not_written_by_merge(out) if out.is_dir() and any(out.iterdir()) else []
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        return (
            f"{out}: an earlier merge, but it also holds what the merge did not write ({shown}), which {forced} "
            "would delete with the folder; move them out of it, or choose a new folder."
        )
    return None


def merge_run(
    run_dir: str | Path,
    out_dir: str | Path,
    overwrite: bool = False,
    dtype: str | torch.dtype | None = None,
    show: bool = False,
    spelling: Spelling = PYTHON,
) -> Path:
    """Write the run's model as one Hugging Face directory (safetensors, config, generation config, tokenizer with
    chat template) that `AutoModelForCausalLM.from_pretrained(out_dir)` loads. Returns out_dir.

    dtype: fp32, bf16 or fp16; None keeps the dtype the weights were saved in. Written to a scratch folder beside
    out_dir and renamed into place, so out_dir is never left half written; files and folders get the permissions
    the user's umask gives (not the 0700/0600 of temporary files). `show` prints the merge check (`MergeCheck`).
    `spelling`: how refusals name out and overwrite (tunelab merge's --out and --overwrite, or the arguments)."""
    run_dir, out = Path(run_dir), Path(out_dir)
    check_run(run_dir, spelling)
    if out.name in ("", ".."):  # '.', '..': the folder itself, whose scratch folder is built beside it
        out = out.resolve()
    here, target = Path.cwd().resolve(), out.resolve()
    if here.is_relative_to(target):
        out_, example = ("--out", "--out merged") if spelling.flags else ("out", "out='merged'")
        raise RunDirError(
            f"{out_dir}: is the folder this command runs in{'' if here == target else ', or holds it'}; "
            f"the merge puts a new folder in place of its {out_}, which would pull the folder from under this shell. "
            f"Name a new folder (e.g. {example})."
        )
    check_output(out, run_dir, overwrite, never=lambda o: _not_a_merge(o, spelling), spelling=spelling)
    check_can_write(out)  # a read-only place: said before the merge, not after it
    out_dtype = parse_dtype(dtype, spelling) or stored_dtype(run_dir, check_run(run_dir))
    shapes = shapes_only(run_dir)
    if shapes is not None:  # a full disk, said before the merge
        require_space(out, saved_bytes(shapes, out_dtype), "the merged model")
    merged = merged_model(run_dir, out_dtype)
    if shapes is None:
        require_space(out, saved_bytes(merged.model, out_dtype), "the merged model")
    with scratch_folder(out) as scratch, quiet_progress():
        try:
            merged.model.save_pretrained(scratch, safe_serialization=True)
        except SafetensorError as exc:  # a full disk, said by safetensors' writer, which raises no OSError
            raise write_failed(out, OSError(str(exc))) from None
        merged.tokenizer.save_pretrained(scratch)
        check = merged.check.describe() if merged.check else None
        (scratch / CARD).write_text(
            model_card(merged.info, out.resolve().name, merged.base_generation, check, merged.start), encoding="utf-8"
        )
        written = sorted([*(p.name for p in scratch.iterdir()), MERGE_FILE])  # what a later --overwrite may replace
        write_json(scratch / MERGE_FILE, provenance(merged, run_dir, out) | {"files": written})
    if show and merged.check:
        print(merged.check.describe())
    return out
