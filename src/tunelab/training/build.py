"""Build the model to train: load it (`models.load`), pick the implementation (our decoder, `models.llama`, or the
transformers model), then apply the method: quantize the frozen base (`quant.linear`) and attach adapters
(`peft.lora`), or unfreeze all or the top layers.

This is the one place where those layers meet for training. It sits above them (the import rule in
docs/architecture.md): the decoder itself knows nothing of adapters, freezing or precision.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from tunelab.config import MethodConfig, ModelConfig, TrainConfig
from tunelab.config.validate import quantize_needs_adapter
from tunelab.errors import ConfigError, RunDirError
from tunelab.kernels import select as select_ops
from tunelab.models.base_record import run_base
from tunelab.models.hf_adapter import from_hf_model
from tunelab.models.llama import unsupported_reason
from tunelab.models.load import ModelSource, load_hf_model, native_bf16, pick_device, pick_dtype
from tunelab.models.quiet import quiet_progress
from tunelab.models.untrained import embedding_matrices, repair_rows
from tunelab.peft.lora import attach_lora, linear_names
from tunelab.peft.lora_linear import LoRALinear
from tunelab.quant.fp8 import unsupported_reason as fp8_unsupported
from tunelab.quant.linear import NF4Linear, quantize_model_, use_fp8_
from tunelab.quant.nf4_ops import DequantWorkspace
from tunelab.run_info import RUN_FILE, RunInfo
from tunelab.training.initial_factors import KeptFactors


@dataclass
class BuiltModel:
    model: nn.Module
    impl: str  # "fast" (our Llama-family code) or "generic" (the transformers model)
    hf_config: object  # the transformers config, saved beside full weights
    device: torch.device
    dtype: torch.dtype
    trainable: int
    total: int
    dtype_note: str = ""  # why model.dtype auto chose what it did, where that is not the usual bf16 (CUDA) / fp32 (CPU)
    # method.init pissa/olora: the adapted layers by the names attach_lora gave them, whose A0, B0 the run keeps
    started: dict[str, LoRALinear] = field(default_factory=dict)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The stack of decoder blocks: the `layers` of the model's own decoder (`get_decoder()`, as transformers' models
    and ours give it; the first module from the top that has one, so a classifier's body serves), else the longest
    nn.ModuleList in the model (which may be another list, such as a vision tower's blocks, in a model without it)."""
    for module in model.modules():
        get = getattr(module, "get_decoder", None)
        try:
            layers = getattr(get(), "layers", None) if callable(get) else None
        except (AttributeError, ValueError, NotImplementedError):  # transformers raises for models without a rule
            continue
        if isinstance(layers, nn.ModuleList) and len(layers):
            return layers
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
    if not lists:
        raise ConfigError("option 'method.name' is layers, but this model has no list of decoder layers.")
    return max(lists, key=len)


def apply_method(
    model: nn.Module, method: MethodConfig, device: torch.device | None = None, start: KeptFactors | None = None
) -> dict[str, LoRALinear]:
    """Apply the method to `model` in place. `start`: a resumed run's kept A0, B0 (method.init pissa or olora), taken
    instead of factorising the weights again. Returns the layers that started from their weight, by name."""
    nf4 = method.quantize_base == "nf4"
    workspace = DequantWorkspace() if nf4 else None  # the one every NF4 layer dequantizes into
    if nf4:
        if not method.is_adapter:
            raise ConfigError(quantize_needs_adapter(method.name))
        # layer by layer, before the adapters wrap the layers; with method.init pissa or olora (QPiSSA), the adapted
        # layers are left 16-bit: attach_lora factorises each W first and quantizes its residual (peft.weight_init)
        started = linear_names(model, method.target_modules) if method.init != "default" else []
        quantize_model_(model, device=device, workspace=workspace, keep=started)
    if method.is_adapter:
        names = attach_lora(
            model,
            method.target_modules,
            method.r,
            method.alpha,
            method.dropout,
            dora=method.dora,
            rslora=method.rslora,
            init=method.init,
            nf4=nf4,
            device=device,
            workspace=workspace,
            start=start,
        )
        if start is not None:
            start.check_covers(names)
        return {name: model.get_submodule(name) for name in names} if method.init != "default" else {}
    if method.name == "full":
        for p in model.parameters():
            p.requires_grad_(True)
    elif method.name == "layers":
        layers = decoder_layers(model)
        if method.top_layers > len(layers):
            raise ConfigError(
                f"option 'method.top_layers' is {method.top_layers}, but the model has {len(layers)} layers."
            )
        for p in model.parameters():
            p.requires_grad_(False)
        for layer in layers[len(layers) - method.top_layers :]:
            for p in layer.parameters():
                p.requires_grad_(True)
    return {}


def checkpoint_mode(train: TrainConfig) -> bool | str:
    """What `build_model` takes from the config: False, True or "offload"; `auto` values start off (the memory
    planner, training/plan.py, turns them on once the model is built)."""
    if train.checkpointing is not True:
        return False
    return "offload" if train.offload_activations is True else True


def build_model(
    source: ModelSource,
    model_cfg: ModelConfig,
    method: MethodConfig,
    checkpointing: bool | str = False,
    resumed: RunInfo | None = None,
    start: KeptFactors | None = None,
    fp8: bool = False,
) -> BuiltModel:
    """checkpointing: False, True, or "offload" (checkpointed layer inputs kept in CPU memory; fast path on CUDA).
    resumed: the run.json of the run --resume continues, whose dtype an `auto` model.dtype keeps (`kept_dtype`);
    start: its kept A0, B0 (method.init pissa or olora, `training.initial_factors`); fp8: the NF4 base's products in
    FP8 (train.fp8, `quant.fp8`), a ConfigError where this device has no FP8 GEMMs."""
    device = pick_device(model_cfg.device)
    if fp8 and (why := fp8_unsupported(device)):
        raise ConfigError(f"option 'train.fp8' is true, but {why}. Remove train.fp8 (or set it false).")
    dtype, note = training_dtype(model_cfg.dtype, device, method)
    if resumed is not None:
        dtype, note = kept_dtype(resumed, model_cfg.dtype, dtype, note)
    if method.name in ("full", "layers") and dtype == torch.float16:
        raise ConfigError(
            f"option 'model.dtype' is fp16, which trains adapters only (method.name lora or dora, QLoRA too: their "
            f"weights are fp32 and the loss is scaled); method.name {method.name} would update fp16 weights, where "
            "small updates round to nothing. Use bf16 or fp32."
        )
    # QLoRA loads the 16-bit model into CPU memory and quantizes it onto the device one layer at a time.
    quantize = method.quantize_base != "none"
    model = load_hf_model(source, dtype, torch.device("cpu") if quantize else device, model_cfg.trust_remote_code)
    hf_config = model.config
    impl = pick_impl(model_cfg.impl, hf_config)
    if impl == "fast":
        model = from_hf_model(model, select_ops("auto"))
        if not quantize:
            model = model.to(device)
        model.gradient_checkpointing = checkpointing
    else:
        hf_config.use_cache = False  # no KV cache while training
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    started = apply_method(model, method, device, start)
    if fp8:
        use_fp8_(model)
    model.to(device)  # what quantization left behind (embeddings, norms, head)
    model.train()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    total += sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, NF4Linear))  # buffers
    return BuiltModel(model, impl, hf_config, device, dtype, trainable, total, note, started)


def training_dtype(dtype: str, device: torch.device, method: MethodConfig) -> tuple[torch.dtype, str]:
    """model.dtype for training, and a note when auto meets a CUDA GPU without native bf16 (T4, V100): adapters
    train in fp16 with the loss scale (training/loss_scale.py), full and layers in fp32 (fp16 weights would round
    small updates away). bf16 asked for on such a GPU is kept, with a note saying what auto would pick."""
    if dtype not in ("auto", "bf16") or device.type != "cuda" or native_bf16():
        return pick_dtype(dtype, device), ""
    why = "this GPU has no native bf16 (before Ampere: T4, V100), which it would only emulate, slowly"
    if dtype == "bf16":
        instead = "fp16 (with loss scaling)" if method.is_adapter else "fp32"
        return torch.bfloat16, f"note: model.dtype is bf16, but {why}; auto would pick {instead}"
    if method.is_adapter:
        return torch.float16, f"model.dtype auto: fp16 with dynamic loss scaling, since {why}"
    return torch.float32, (
        f"model.dtype auto: fp32, since {why}, and fp16 cannot train method.name {method.name} (fp16 weights round "
        "small updates away)"
    )


SHORT = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def kept_dtype(info: RunInfo, asked: str, picked: torch.dtype, note: str) -> tuple[torch.dtype, str]:
    """(dtype, note) for a resumed run: `auto` keeps the dtype the run trained in (run.json's dtype) where auto picks
    another on this machine (a run started in bf16 on an A100 and resumed on a T4, or the reverse): its checkpoint's
    weights, optimizer state and loss scale continue exactly only in that dtype. `picked`, `note`: what
    `training_dtype` chose; kept as they are for an explicit model.dtype (the config comparison holds it) or a run
    that recorded none."""
    if asked != "auto" or info.dtype is None:
        return picked, note
    trained = {str(d).removeprefix("torch."): d for d in SHORT}[info.dtype]  # reading run.json refused any other
    if trained == picked:
        return picked, note
    return trained, (
        f"resume: model.dtype auto keeps {SHORT[trained]}, the dtype the run trained in (on this machine auto picks "
        f"{SHORT[picked]}): the checkpoint continues exactly only in its own dtype. To train in {SHORT[picked]}, "
        "start a new run with model.dtype " + SHORT[picked]
    )


def run_dtype(info: RunInfo, dtype: str, device: torch.device, quantize: bool) -> torch.dtype:
    """The dtype to open a finished run in: `dtype` as `pick_dtype` reads it, except that auto, for a base quantized
    again (`quantize`: QLoRA), is the dtype the run trained in, since NF4 is quantized from that dtype as in training."""
    if dtype == "auto" and quantize and info.dtype:
        return getattr(torch, info.dtype)
    return pick_dtype(dtype, device)


def check_trained_base(info: RunInfo) -> None:
    """ModelError now when the base `trained_base` would load is gone or its weights changed (`run_base`): a full or
    layers run is opened without it, and a command that puts the base beside it (eval, compare) must learn that
    before answering with the tuned model, not after."""
    run_base(info)


def trained_base(info: RunInfo, dtype: torch.dtype, device: torch.device, quantize: bool) -> nn.Module:
    """The base model an adapter run trained over, as it trained: the embedding rows training repaired repaired again
    (`models.untrained`) and, with `quantize` (QLoRA), loaded in host memory and quantized onto `device` one layer at
    a time as `build_model` does (the modules that stay 16-bit are left there for the caller to move)."""
    source = run_base(info)
    model = load_hf_model(source, dtype, torch.device("cpu") if quantize else device, info.trust_remote_code)
    _check_rows(model, info)
    repair_rows(model, info.fixed_untrained_tokens)
    if quantize:
        quantize_model_(model, device=device)
    return model


def _check_rows(model: nn.Module, info: RunInfo) -> None:
    """RunDirError naming run.json when a repaired row it lists is not a row of the base (an edited or damaged file,
    or another base under the same name)."""
    matrices = embedding_matrices(model)
    for name, ids in info.fixed_untrained_tokens.items():
        rows = matrices[name].shape[0] if name in matrices else None
        beyond = [i for i in ids if rows is not None and i >= rows]
        if beyond:
            raise RunDirError(
                f"{info.file or RUN_FILE}: field 'fixed_untrained_tokens' lists row {beyond[0]} of {name}, but the "
                f"base model {info.base_model} has {rows} rows (the file was edited or damaged); put back the value "
                "tunelab wrote, or train the run again."
            )


def pick_impl(requested: str, hf_config) -> str:
    """'fast' for the Llama family (unless the user asks for generic), 'generic' for everything else."""
    reason = unsupported_reason(hf_config)
    if requested == "fast" and reason:
        raise ConfigError(
            f"option 'model.impl' is fast, but this model cannot use the fast path: {reason}. Use auto or generic."
        )
    if requested == "generic" or reason:
        return "generic"
    return "fast"


def save_full_weights(built: BuiltModel, folder: Path, weights: dict[str, torch.Tensor] | None = None) -> None:
    """All weights as a Hugging Face directory (config.json + model.safetensors) that transformers loads. `weights`:
    the whole state dict when the model holds only a shard of it (FSDP2)."""
    if built.impl == "generic":
        with quiet_progress():
            built.model.save_pretrained(folder, state_dict=weights, safe_serialization=True)
        return
    folder.mkdir(parents=True, exist_ok=True)
    weights = built.model.state_dict() if weights is None else weights
    state = {k: v.detach().contiguous().cpu() for k, v in weights.items()}
    if getattr(built.hf_config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)  # shared with the embedding; transformers re-ties it
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    built.hf_config.save_pretrained(folder)
