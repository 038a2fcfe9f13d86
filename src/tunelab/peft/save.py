"""Adapters on disk in PEFT's layout: `adapter_config.json` + `adapter_model.safetensors`.

Keys are `base_model.model.<module path>.lora_{A,B}.weight`, as `peft.PeftModel.from_pretrained` and vLLM expect, so
an adapter trained here loads there unchanged, and one trained there loads here. Whole modules trained beside the
adapters (PEFT's `modules_to_save`, e.g. the `score` head of a sequence classifier) are stored as
`base_model.model.<module path>.<parameter>`, which is where PEFT writes and reads them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tunelab.errors import ConfigError, ModelError, RunDirError
from tunelab.models.converted import COMPLETE, record_named_by
from tunelab.models.load import materialize, resolve_source
from tunelab.peft.dora import DoRALinear
from tunelab.peft.lora import attach_lora, lora_modules
from tunelab.peft.weight_init import as_plain_lora, plain_rank_alpha, starts_from_weight
from tunelab.rundir import ADAPTER_CONFIG_FILE as CONFIG_FILE
from tunelab.rundir import ADAPTER_WEIGHTS_FILE as WEIGHTS_FILE
from tunelab.rundir import is_run_dir, read_info, read_json_object

PREFIX = "base_model.model."


def _adapter_tensors(name: str, m: nn.Module) -> dict[str, torch.Tensor]:
    """PEFT's keys of one layer: lora_A/B weights, and DoRA's magnitude under `lora_magnitude_vector`."""
    tensors = {f"{PREFIX}{name}.lora_A.weight": m.lora_A.weight, f"{PREFIX}{name}.lora_B.weight": m.lora_B.weight}
    if isinstance(m, DoRALinear):
        tensors[f"{PREFIX}{name}.lora_magnitude_vector"] = m.lora_magnitude_vector
    return tensors


def adapter_state_dict(
    model: nn.Module, modules_to_save: list[str] | tuple[str, ...] = (), weights: dict[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """PEFT's keys of the LoRA (DoRA) layers, and the whole state of each module in `modules_to_save` (a head).
    `weights`: the adapters' whole tensors by parameter name, where `model` holds only shards of them (FSDP2)."""
    state = {}
    for name, m in lora_modules(model):
        tensors = _adapter_tensors(name, m)
        if weights is not None:  # PEFT's key "<PREFIX><name>.lora_A.weight" is the parameter "<name>.lora_A.weight"
            if starts_from_weight(m):  # method.init pissa/olora refuses FSDP2 (config/validate.py)
                raise ValueError("an adapter started from its weight is saved from whole weights, not shards")
            tensors = {k: weights[k.removeprefix(PREFIX)] for k in tensors}
        elif starts_from_weight(m):  # the rank-2r LoRA over the original base (peft/weight_init.py)
            a, b = as_plain_lora(m)
            tensors |= {f"{PREFIX}{name}.lora_A.weight": a, f"{PREFIX}{name}.lora_B.weight": b}
        state |= {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    for name in modules_to_save:
        for key, value in model.get_submodule(name).state_dict().items():
            state[f"{PREFIX}{name}.{key}"] = value.detach().contiguous().cpu()
    return state


def loadable_base(name: str) -> str:
    """The base as other tools can load it (`peft.AutoPeftModelForCausalLM` reads `base_model_name_or_path`): a
    hub id as it is, a directory as its absolute path, a GGUF file or tunelab's alias as the safetensors copy
    tunelab converted it to (in its cache; `tunelab cache` shows it). The run's own name stays in run.json."""
    try:
        source = resolve_source(name)
        return materialize(source) if source.is_gguf else source.path
    except ModelError:
        return name


def adapter_config(
    model: nn.Module, base_model: str, task_type: str = "CAUSAL_LM", modules_to_save: list[str] | tuple[str, ...] = ()
) -> dict:
    layers = [m for _, m in lora_modules(model)]
    first = layers[0]
    dropout = first.dropout.p if isinstance(first.dropout, nn.Dropout) else 0.0
    r, alpha = (
        plain_rank_alpha(first.r, first.alpha, first.rslora) if starts_from_weight(first) else (first.r, first.alpha)
    )
    return {
        "peft_type": "LORA",
        "task_type": task_type,
        "base_model_name_or_path": loadable_base(base_model),
        "r": r,
        "lora_alpha": alpha,
        "lora_dropout": dropout,
        "target_modules": sorted({name.rsplit(".", 1)[-1] for name, _ in lora_modules(model)}),
        "bias": "none",
        "fan_in_fan_out": False,
        "use_dora": isinstance(first, DoRALinear),
        "use_rslora": first.rslora,
        "init_lora_weights": True,
        "modules_to_save": list(modules_to_save) or None,
        "inference_mode": True,
    }


def save_adapter(
    model: nn.Module,
    folder: str | Path,
    base_model: str,
    task_type: str = "CAUSAL_LM",
    modules_to_save: list[str] | tuple[str, ...] = (),
    weights: dict[str, torch.Tensor] | None = None,
) -> None:
    """task_type: PEFT's name for the model class the adapter goes on (CAUSAL_LM, SEQ_CLS); modules_to_save: whole
    modules of `model` saved beside the adapters (they train fully, e.g. a classification head); weights: see
    `adapter_state_dict`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = adapter_state_dict(model, modules_to_save, weights)
    save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    config = adapter_config(model, base_model, task_type, modules_to_save)
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    named = Path(config["base_model_name_or_path"])
    if named.is_absolute() and (named / COMPLETE).is_file():  # tunelab's converted copy of a GGUF base
        record_named_by(named, folder)


def record_base_revision(folder: str | Path, revision: str) -> None:
    """Write a hub base's commit (run.json's base_revision) into the adapter_config.json in `folder` as PEFT's
    `revision` (the base model version PEFT's AutoPeftModel* loads), so plain PEFT opens the adapter over the weights
    it trained over, not what the hub id's branch holds later. Nothing without an adapter or a revision."""
    path = Path(folder) / CONFIG_FILE
    if revision and path.is_file():
        path.write_text(json.dumps(json.loads(path.read_text()) | {"revision": revision}, indent=2))


def read_adapter_config(folder: str | Path) -> dict:
    """adapter_config.json of `folder`; RunDirError unless it is a LoRA (or DoRA) adapter tunelab can load."""
    folder = Path(folder)
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise RunDirError(f"{folder}: no {CONFIG_FILE}, so it holds no adapter.")
    config = read_json_object(config_path, "the adapter cannot be loaded")
    if config.get("peft_type") != "LORA":
        raise RunDirError(
            f"{config_path}: only LoRA and DoRA adapters can be loaded (peft_type {config.get('peft_type')!r})."
        )
    _check_lora_fields(config, config_path)
    return config


def _check_lora_fields(config: dict, path: Path) -> None:
    """RunDirError naming the field of adapter_config.json that loading reads and cannot use: r (a whole number >= 1),
    lora_alpha (a number), target_modules (a list of module names; PEFT's regular-expression string form is not
    read), lora_dropout (a number in [0, 1)), rank_pattern and alpha_pattern (empty: one r and lora_alpha for every
    layer)."""

    def number(value) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)

    problems = {
        "r": None
        if isinstance(config.get("r"), int) and not isinstance(config["r"], bool) and config["r"] >= 1
        else "a whole number >= 1",
        "lora_alpha": None if number(config.get("lora_alpha")) else "a number",
        "lora_dropout": None
        if number(config.get("lora_dropout", 0.0)) and 0 <= config.get("lora_dropout", 0.0) < 1
        else "a number from 0 up to 1",
    }
    targets = config.get("target_modules")
    if isinstance(targets, str):
        problems["target_modules"] = (
            "a list of module names (this adapter gives one text, PEFT's form for a regular expression or "
            "'all-linear', which tunelab does not read: list the names it matches, e.g. [q_proj, v_proj])"
        )
    elif not (isinstance(targets, list) and targets and all(isinstance(t, str) and t.strip() for t in targets)):
        problems["target_modules"] = "a non-empty list of module names"
    for field in ("rank_pattern", "alpha_pattern"):  # PEFT's per-layer r and lora_alpha; {} (or none) by default
        if config.get(field):
            problems[field] = (
                "empty: tunelab gives every layer the adapter's one r and lora_alpha, and per-layer values would be "
                "loaded at another rank (refused) or, for lora_alpha, scaled wrong without a word"
            )
    for field, wanted in problems.items():
        if wanted is not None:
            got = f"{config[field]!r}" if field in config else "missing"
            raise RunDirError(f"{path}: field '{field}' must be {wanted}; it is {got}.")


def load_adapter(model: nn.Module, folder: str | Path) -> nn.Module:
    """Attach LoRA (DoRA) layers as the saved config describes and load their weights (strict: every key must
    match)."""
    config = read_adapter_config(folder)
    attach_lora(
        model,
        list(config["target_modules"]),
        config["r"],
        config["lora_alpha"],
        config.get("lora_dropout", 0.0),
        dora=bool(config.get("use_dora")),
        rslora=bool(config.get("use_rslora")),
    )
    return load_adapter_weights(model, folder)


def continue_adapter(model: nn.Module, folder: str | Path, method, leave: tuple[str, ...] = ()) -> list[int]:
    """Load the adapter of `folder` (a run directory or a PEFT adapter folder) into the layers `method` (a
    config.MethodConfig) attached, to train on from there; ConfigError when its settings differ. `leave`: saved
    modules (a head) that the caller loads itself once it has made them. Returns the base rows that were repaired
    under it (`run.json`'s fixed_untrained_tokens: repair them again)."""
    folder = Path(folder).expanduser()
    try:
        config = read_adapter_config(folder)
    except RunDirError as exc:
        raise ConfigError(f"option 'model.adapter': {exc}") from None
    saved = {
        "method.r": config["r"],
        "method.alpha": float(config["lora_alpha"]),
        "method.target_modules": sorted(config["target_modules"]),
        "DoRA": bool(config.get("use_dora")),
        "method.rslora": bool(config.get("use_rslora")),
    }
    targets = sorted({name.rsplit(".", 1)[-1] for name, _ in lora_modules(model)})
    wanted = {
        "method.r": method.r,
        "method.alpha": float(method.alpha),
        "method.target_modules": targets,
        "DoRA": method.dora,
        "method.rslora": method.rslora,
    }
    differ = [f"{k} {wanted[k]!r} (the adapter's: {saved[k]!r})" for k in saved if saved[k] != wanted[k]]
    if differ:
        raise ConfigError(
            f"option 'model.adapter': training continues the adapter in {folder}, but this config's method differs "
            f"from it: {'; '.join(differ)}. Use the adapter's settings, or start a new adapter (in a staged run: "
            "continue: merge)."
        )
    try:
        load_adapter_weights(model, folder, leave)
    except RunDirError as exc:
        raise ConfigError(f"option 'model.adapter': {exc}") from None
    if not is_run_dir(folder):
        return []
    rows = read_info(folder, require_finished=False).fixed_untrained_tokens
    return sorted({i for ids in rows.values() for i in ids})


def read_weights(path: Path, what: str) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors; RunDirError naming the file when it cannot be read (truncated, not
    safetensors) or holds a NaN or inf, which no file tunelab writes ever does."""
    try:
        state = load_file(str(path))
    except Exception as exc:  # safetensors raises its own SafetensorError, OSError, ValueError for damaged files
        raise RunDirError(f"{path}: the {what} cannot be read ({exc}); the file is damaged or incomplete.") from None
    bad = next((k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())), None)
    if bad is not None:
        raise RunDirError(f"{path}: the {what} holds NaN or inf values (first: {bad}); the file is damaged.")
    return state


def saved_tensors(folder: str | Path) -> dict[str, torch.Tensor]:
    """The adapter's tensors by PEFT's key, with or without the adapter name ("default"), which PEFT may write."""
    state = read_weights(Path(folder) / WEIGHTS_FILE, "adapter")
    return {
        k.replace(".default.weight", ".weight").replace(".lora_magnitude_vector.weight", ".lora_magnitude_vector"): v
        for k, v in state.items()
    }


def saved_module(folder: str | Path, name: str) -> dict[str, torch.Tensor] | None:
    """The state of the whole module `name` saved beside the adapter (modules_to_save, e.g. a classifier's head), or
    None when the adapter holds none."""
    start = f"{PREFIX}{name}."
    state = {k.removeprefix(start): v for k, v in saved_tensors(folder).items() if k.startswith(start)}
    return state or None


def load_adapter_weights(model: nn.Module, folder: str | Path, leave: tuple[str, ...] = ()) -> nn.Module:
    """Copy the saved adapter of `folder` into the LoRA layers already attached to `model` (strict: every key must
    match, and so must the shapes), but the saved modules named in `leave`."""
    folder = Path(folder)
    state = {k: v for k, v in saved_tensors(folder).items() if not any(k.startswith(f"{PREFIX}{n}.") for n in leave)}
    # modules_to_save (a head) as far as `model` has them: PEFT lists defaults a model may lack
    saved = read_adapter_config(folder).get("modules_to_save") or []
    names = [n for n in saved if _has_module(model, n) and n not in leave]
    expected = adapter_state_dict(model, names)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    lacked = [n for n in saved if any(k.startswith(f"{PREFIX}{n}.") for k in unexpected)]
    if lacked and not missing and all(any(k.startswith(f"{PREFIX}{n}.") for n in lacked) for k in unexpected):
        raise RunDirError(
            f"{folder}: the adapter was saved with {', '.join(lacked)} (modules_to_save: a classifier's or reward "
            "model's head), which this model lacks: only a run of the same task (classify or reward) can continue it. "
            "Set task to the adapter's, or start a new adapter."
        )
    if missing or unexpected:
        raise RunDirError(
            f"{folder / WEIGHTS_FILE}: adapter does not fit this model "
            f"(missing {missing[:3]}{'...' if len(missing) > 3 else ''}, unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''})."
        )
    for name, m in lora_modules(model):
        for key, param in _adapter_tensors(name, m).items():
            if param.shape != state[key].shape:
                raise RunDirError(
                    f"{folder / WEIGHTS_FILE}: {key} has shape {tuple(state[key].shape)}, the model's layer "
                    f"{tuple(param.shape)} (another rank or model)."
                )
            param.data.copy_(state[key])
    for name in names:
        module = model.get_submodule(name)
        module.load_state_dict({key: state[f"{PREFIX}{name}.{key}"] for key in module.state_dict()})
    return model


def _has_module(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
    except AttributeError:
        return False
    return True
