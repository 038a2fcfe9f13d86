"""The one place that talks to llama.cpp (through llama-cpp-python): its quantizer for k-quants, and loading an
exported file for the export's self-check.

llama-cpp-python is optional (`pip install 'tunelab[gguf-check]'`): it compiles llama.cpp for minutes when no wheel
fits, and only k-quant exports and the self-check need it. A native build crashed at the first token on some CPUs,
hence the GGML_NATIVE=OFF in the install hint.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

from tunelab.errors import ModelError

INSTALL = "CMAKE_ARGS='-DGGML_NATIVE=OFF' pip install llama-cpp-python   (or: pip install 'tunelab[gguf-check]')"
_LOGGER = "llama-cpp-python"  # the logging.Logger llama-cpp-python routes llama.cpp's own messages through


def available() -> bool:
    """Whether llama-cpp-python imports (it may be installed but broken: then it is treated as absent)."""
    try:
        import llama_cpp  # noqa: F401
    except (ImportError, OSError):
        return False
    return True


def llama_cpp_module(why: str):
    """llama_cpp, or a ModelError saying what needed it and how to install it."""
    try:
        import llama_cpp
    except (ImportError, OSError) as exc:
        raise ModelError(
            f"{why} needs llama.cpp's Python binding, which does not import ({exc}). Install it with: {INSTALL}"
        ) from None
    return llama_cpp


@contextmanager
def quiet():
    """llama.cpp prints every tensor it touches; keep its errors only, for the duration of one call."""
    logger = logging.getLogger(_LOGGER)
    before = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(before)


def threads() -> int:
    """Half the cores: llama.cpp's threads spin at every barrier, and on a shared machine more threads than free
    cores made a short evaluation many times slower."""
    return max(1, (os.cpu_count() or 2) // 2)


@contextmanager
def collected(lines: list[str]):
    """llama.cpp's log lines into `lines` for the duration of one call, not onto stderr (llama-cpp-python's filter
    reads llama.cpp's warning level as an error and prints every one); its own callback is set again after."""
    import llama_cpp

    @llama_cpp.llama_log_callback
    def collect(level, text, user_data):
        lines.append(text.decode("utf-8", "replace"))

    llama_cpp.llama_log_set(collect, ctypes.c_void_p(0))
    try:
        yield
    finally:
        from llama_cpp import _logger

        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))


def fallback_note(log: str, qtype: str) -> str | None:
    """One line for llama.cpp's per-tensor fallbacks (a line each in its log: a tensor whose rows do not split into
    the 256-value super-blocks of k-quants is stored in another type), or None when there were none."""
    types = re.findall(r"falling back to\s+(\S+)", log)
    if not types:
        return None
    total = re.search(r"(\d+) of (\d+) tensor\(s\) required fallback", log)
    of = f" of {total.group(2)}" if total else ""
    counts = ", ".join(f"{t} {n}" for t, n in Counter(types).most_common())
    return (
        f"{qtype}: llama.cpp stored {len(types)}{of} tensors in other types ({counts}): their rows do not split into "
        "the 256-value blocks k-quants need (hidden sizes that are not a multiple of 256)"
    )


def quantize(src: Path, dst: Path, ftype_name: str, target: Path | None = None) -> str | None:
    """llama.cpp's `llama_model_quantize` from an f16/f32 GGUF `src` to `dst` in `ftype_name` (e.g. MOSTLY_Q4_K_M),
    with llama.cpp's own per-tensor choices (which tensors get more bits, fallbacks for rows that do not split into
    256-value super-blocks). Returns a line about the fallbacks (`fallback_note`), which llama.cpp printed one per
    tensor (180 lines for SmolLM2-135M). `target`: the file the user asked for, which a failure names (`src` and
    `dst` may be scratch files, gone by the time the message is read)."""
    qtype = ftype_name.removeprefix("MOSTLY_").lower()
    lc = llama_cpp_module(f"the {qtype} export")
    params = lc.llama_model_quantize_default_params()
    params.ftype = getattr(lc, f"LLAMA_FTYPE_{ftype_name}")
    params.nthread = os.cpu_count() or 1
    lines: list[str] = []
    with collected(lines):
        status = lc.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if status != 0:
        said = "".join(line for line in lines if "error" in line.lower()).strip()[-500:]
        raise ModelError(
            f"llama.cpp's quantizer failed making {target or dst} ({qtype}) from its f16 file (status {status}"
            f"{': ' + said if said else ''}); nothing was written. The f16 export (--type f16) may still work."
        )
    return fallback_note("".join(lines), qtype)


def load(path: Path, n_ctx: int = 1024):
    """The exported file as a llama_cpp.Llama with logits for every position (for teacher-forced comparison)."""
    lc = llama_cpp_module("checking the export")
    with quiet():
        try:
            return lc.Llama(
                model_path=str(path),
                n_ctx=n_ctx,
                logits_all=True,
                verbose=False,
                seed=0,
                n_threads=threads(),
                n_threads_batch=threads(),
            )
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"{path}: llama.cpp could not load the exported file ({exc}).") from None


def is_end_of_generation(llm, token_id: int) -> bool:
    """Whether llama.cpp stops generating at this token (its EOS, EOT, and the end-of-turn tokens it recognises)."""
    import llama_cpp

    return bool(llama_cpp.llama_vocab_is_eog(llama_cpp.llama_model_get_vocab(llm.model), token_id))
