"""method.init pissa or olora: the starting factors A0, B0 each adapted layer took from its weight (peft/weight_init.py),
kept beside the checkpoints so that --resume rebuilds the base the run trains over from them, not from a second SVD
(QR).

    checkpoints/initial_factors.safetensors    "<layer>.A0" (r, in) and "<layer>.B0" (out, r), fp32, per adapted layer

A factorisation repeats bit for bit only on the same machine and library build: another LAPACK, cuSOLVER or torch
may flip the signs of a pair of singular vectors or round their last bits otherwise, and then the residual base
W - s B0 A0 (for QPiSSA its NF4 quantization) and the B0, A0 of the saved rank-2r adapter differ from those the
checkpoint's A and B trained beside, silently. The factors are rank r, as small as the adapter; the residual (or its
NF4 state) would be as large as the targeted weights, and `weight_init.principal_part` rebuilds it from them with the
same bits anywhere. Its quantization to NF4 is then the one every QLoRA resume repeats on its base.

They are written once, as the run starts (`factors_to_keep`, `write_factors`), their sha256 recorded in run.json
(extra.initial_factors_sha256: a resume knows the run kept them), and go with the step checkpoints they serve
(`checkpoint.delete_checkpoints` removes the folder). Whatever rebuilds the model of an unfinished run from its
checkpoint reads them (`kept_factors`): --resume, `tunelab check --resume` (checks/run.py), and predict or eval of an
unfinished classify or reward run (tasks/head_run.py). Each refuses (exit 2, naming the file) when the file of a run
that recorded them is missing, damaged, or holds other layers or shapes than the model adapts. A run written before
they were kept factorises again, as it did, and says so; its next resume keeps its factors from then on. A finished
run needs none: its saved adapter is a plain LoRA over the original base (`peft.save`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from tunelab.atomic import write_bytes, writing
from tunelab.config import MethodConfig
from tunelab.config.flags import CLI, Spelling
from tunelab.errors import RunDirError
from tunelab.peft.lora_linear import LoRALinear
from tunelab.run_info import RUN_FILE, RunInfo

FILE = "initial_factors.safetensors"
RECORD = "initial_factors_sha256"  # run.json's extra: the sha256 of the file, written as the run starts


def factors_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints" / FILE


def factors_to_keep(layers: dict[str, LoRALinear], before: RunInfo | None, info: RunInfo) -> bytes | None:
    """The file to write (`write_factors`) for the layers that started from their weight ({name: layer}, as
    `attach_lora` named them), its sha256 recorded in `info.extra`; None where there is nothing to write: no such
    layer, or the run --resume continues (`before`) kept its own (whose record `info` carries on)."""
    if not layers:
        return None
    if before is not None and RECORD in before.extra:
        info.extra[RECORD] = before.extra[RECORD]
        return None
    tensors = {}
    for name, layer in layers.items():
        tensors[f"{name}.A0"] = layer.initial_A.detach().contiguous().cpu()
        tensors[f"{name}.B0"] = layer.initial_B.detach().contiguous().cpu()
    data = save(tensors, metadata={"format": "pt"})
    info.extra[RECORD] = hashlib.sha256(data).hexdigest()
    return data


def write_factors(run_dir: Path, data: bytes) -> None:
    path = factors_path(run_dir)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(path, data)


@dataclass
class KeptFactors:
    """A resumed run's kept factors: called as `attach_lora`'s `start`, it gives each adapted layer its (A0, B0)."""

    path: Path
    tensors: dict[str, torch.Tensor]
    init: str

    def __call__(self, name: str, layer: LoRALinear) -> tuple[torch.Tensor, torch.Tensor]:
        a0, b0 = self.tensors.get(f"{name}.A0"), self.tensors.get(f"{name}.B0")
        if a0 is None or b0 is None:
            raise RunDirError(
                f"{self.path}: holds no starting factors ({name}.A0, {name}.B0) of the adapted layer {name}, so the "
                f"base it trained over cannot be rebuilt; this file is not the run's (method.init {self.init}). "
                "Put the run's file back, or train the run again."
            )
        want = {"A0": (layer.r, layer.in_features), "B0": (layer.out_features, layer.r)}
        for what, tensor in (("A0", a0), ("B0", b0)):
            if tuple(tensor.shape) != want[what] or tensor.dtype != torch.float32:
                raise RunDirError(
                    f"{self.path}: {name}.{what} is {_shape(tensor)}, but the layer takes fp32 {want[what]} (method.r "
                    f"{layer.r}, a weight of {layer.out_features} x {layer.in_features}); this file is not the run's. "
                    "Put the run's file back, or train the run again."
                )
        return a0, b0

    def check_covers(self, names: list[str]) -> None:
        """RunDirError when the file holds factors of a layer that is not among the adapted `names`."""
        other = sorted({key.rsplit(".", 1)[0] for key in self.tensors} - set(names))
        if other:
            raise RunDirError(
                f"{self.path}: holds starting factors of {other[0]}, which this run does not adapt "
                f"({len(names)} layers are); this file is not the run's. Put the run's file back, or train the run again."
            )


def _shape(tensor: torch.Tensor) -> str:
    return f"{str(tensor.dtype).removeprefix('torch.')} {tuple(tensor.shape)}"


def kept_factors(
    before: RunInfo | None,
    method: MethodConfig,
    spelling: Spelling = CLI,
    reader: str | None = None,
    say: Callable[[str], None] | None = None,
) -> KeptFactors | None:
    """For --resume of a method.init pissa or olora run (`before`: its run.json), the factors it kept, read and
    checked against their recorded sha256; None for a new run, another init, or a run that kept none (written before
    they were: a note says that it factorises again). `reader`: what else rebuilds the run's model from them, as its
    messages name it ("scoring its checkpoint": tasks/head_run.py); None: --resume, and `tunelab check --resume`,
    which says what the resume will do. `say`: where the note goes (default: stdout)."""
    if before is None or not method.is_adapter or method.init == "default":
        return None
    recorded = before.extra.get(RECORD)
    path = factors_path(before.file.parent)  # read_info names the run.json it read
    reads = reader or spelling.resume
    if recorded is None:
        older = (
            f"the run kept no starting factors of its adapters (method.init {method.init}; it started before tunelab "
            f"kept them in {path}), so the base is factorised again: the same residual bit for bit only on the "
            "machine and library build the run started on."
        )
        (say or _print)(
            f"resume: {older} This resume keeps its factors for the next."
            if reader is None
            else f"note: {reader}: {older}"
        )
        return None
    again = f"Put the file back, or train the run again ({spelling.overwrite})"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise RunDirError(
            f"{path}: missing. The run (method.init {method.init}) kept the starting factors A0, B0 of its adapters "
            f"there, its {RUN_FILE} records their sha256, and {reads} rebuilds the base it trains over from "
            "them: factorising the base again gives the same factors only on the machine and library build the run "
            f"started on. {again}."
        ) from None
    except OSError as exc:
        raise RunDirError(f"{path}: cannot be read ({exc.strerror or exc}); {reads} needs it.") from None
    if hashlib.sha256(data).hexdigest() != recorded:
        raise RunDirError(
            f"{path}: damaged (its sha256 is not the one {RUN_FILE} records), so the base the run trains over cannot "
            f"be rebuilt from it. {again}."
        )
    try:
        tensors = load(data)
    except SafetensorError as exc:
        raise RunDirError(f"{path}: damaged ({exc}). {again}.") from None
    return KeptFactors(path, tensors, method.init)


def _print(text: str) -> None:
    print(text, flush=True)
