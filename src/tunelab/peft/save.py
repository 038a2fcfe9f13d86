"""Adapters on disk in PEFT's layout: `adapter_config.json` + `adapter_model.safetensors`.

Keys are `base_model.model.<module path>.lora_{A,B}.weight`, as `peft.PeftModel.from_pretrained` and vLLM expect, so
an adapter trained here loads there unchanged, and one trained there loads here. Whole modules trained beside the
adapters (PEFT's `modules_to_save`, e.g. the `score` head of a sequence classifier) are stored as
`base_model.model.<module path>.<parameter>`, which is where PEFT writes and reads them.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tunelab.errors import ModelError, RunDirError
from tunelab.models.load import materialize, resolve_source
from tunelab.peft.lora import attach_lora, lora_modules
from tunelab.rundir import ADAPTER_CONFIG_FILE as CONFIG_FILE
from tunelab.rundir import ADAPTER_WEIGHTS_FILE as WEIGHTS_FILE

PREFIX = "base_model.model."


def adapter_state_dict(model: nn.Module, modules_to_save: list[str] | tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    state = {}
    for name, m in lora_modules(model):
        state[f"{PREFIX}{name}.lora_A.weight"] = m.lora_A.weight.detach().contiguous().cpu()
        state[f"{PREFIX}{name}.lora_B.weight"] = m.lora_B.weight.detach().contiguous().cpu()
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
    return {
        "peft_type": "LORA",
        "task_type": task_type,
        "base_model_name_or_path": loadable_base(base_model),
        "r": first.r,
        "lora_alpha": first.alpha,
        "lora_dropout": dropout,
        "target_modules": sorted({name.rsplit(".", 1)[-1] for name, _ in lora_modules(model)}),
        "bias": "none",
        "fan_in_fan_out": False,
        "use_dora": False,
        "use_rslora": False,
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
) -> None:
    """task_type: PEFT's name for the model class the adapter goes on (CAUSAL_LM, SEQ_CLS); modules_to_save: whole
    modules of `model` saved beside the adapters (they train fully, e.g. a classification head)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(adapter_state_dict(model, modules_to_save), str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    config = adapter_config(model, base_model, task_type, modules_to_save)
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2))


def load_adapter(model: nn.Module, folder: str | Path) -> nn.Module:
    """Attach LoRA layers as the saved config describes and load their weights (strict: every key must match),
    and the weights of the config's modules_to_save that `model` has (PEFT lists defaults a model may lack)."""
    folder = Path(folder)
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise RunDirError(f"{folder}: no {CONFIG_FILE}, so it holds no adapter.")
    config = json.loads(config_path.read_text())
    if config.get("peft_type") != "LORA" or config.get("use_dora"):
        raise RunDirError(
            f"{config_path}: only plain LoRA adapters can be loaded (peft_type {config.get('peft_type')!r})."
        )
    attach_lora(
        model, list(config["target_modules"]), config["r"], config["lora_alpha"], config.get("lora_dropout", 0.0)
    )
    state = load_file(str(folder / WEIGHTS_FILE))
    # PEFT may store keys with or without the adapter name ("default"); accept both.
    state = {k.replace(".default.weight", ".weight"): v for k, v in state.items()}
    names = [n for n in config.get("modules_to_save") or [] if _has_module(model, n)]
    expected = adapter_state_dict(model, names)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise RunDirError(
            f"{folder / WEIGHTS_FILE}: adapter does not fit this model "
            f"(missing {missing[:3]}{'...' if len(missing) > 3 else ''}, unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''})."
        )
    for name, m in lora_modules(model):
        m.lora_A.weight.data.copy_(state[f"{PREFIX}{name}.lora_A.weight"])
        m.lora_B.weight.data.copy_(state[f"{PREFIX}{name}.lora_B.weight"])
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
