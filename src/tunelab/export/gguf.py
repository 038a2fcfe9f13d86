"""Export a finished run as one GGUF file for llama.cpp, Ollama and LM Studio, plus an Ollama Modelfile and a model
card beside it (NAME.Modelfile and NAME.README.md for NAME.gguf).

The run is merged first (`tunelab.export.merge`), then written with the `gguf` package's GGUFWriter in the llama.cpp
architecture of its family: `llama` for Llama 2/3, Mistral and SmolLM2, `qwen2` for Qwen2/2.5 (q/k/v biases), `qwen3`
for Qwen3 (per-head q/k RMSNorm): hyper-parameters, the tokenizer (export/gguf_vocab.py), the chat template, and the
tensors under llama.cpp's names. k-quants (q4_k_m, q5_k_m, q6_k) are made from an f16 file by llama.cpp's own
quantizer (export/llama_cpp.py), which picks the per-tensor mix those names stand for.

What is unusual:
- For `llama`, q_proj and k_proj rows are permuted. Hugging Face stores each head's rotary pairs as two halves
  (rotate-half: dimension i pairs with i + d/2); llama.cpp's llama rotates adjacent rows (2i with 2i+1). Each head's
  (d, in) block is viewed as (2, d/2, in), the two axes swapped and flattened back, so row 2i is old row i and row
  2i+1 is old row i + d/2. transformers' GGUF reader applies the inverse when it loads the file. llama.cpp's qwen2
  and qwen3 rotate halves ("neox" order), so their rows are written as they are.
- Rotary scaling that only rescales frequencies (linear, llama3) is written as llama.cpp's `rope_freqs` tensor:
  per frequency, default inverse frequency / the model's, which llama.cpp divides its frequencies by.
- Quantized types (q8_0, q4_0) quantize 2-D weights only; norms and biases stay f32, as llama.cpp's converter does.
  q4_0 keeps the token embedding and output matrices at q8_0 (they are the most sensitive to rounding).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tunelab.atomic import check_can_write, require_space, write_text, writing
from tunelab.config.flags import PYTHON, Spelling
from tunelab.config.run import RunConfig
from tunelab.errors import ConfigError, ModelError, RunDirError
from tunelab.export.card import card_head, gguf_card, gguf_card_path, shared_name
from tunelab.export.check import GGUFCheck, check_export, check_path, format_check
from tunelab.export.check import check_questions as asked_questions
from tunelab.export.gguf_vocab import adds_special, gguf_package, gguf_vocab, source_pre_tokenizer, write_vocab
from tunelab.export.merge import MergedModel, check_output, check_run, merged_model, shapes_only
from tunelab.export.modelfile import (
    MODELFILE_HEAD,
    UNQUOTABLE,
    context_parameter,
    left_out,
    modelfile_path,
    modelfile_text,
    ollama_command,
    sampling_parameters,
)
from tunelab.rundir import read_config, saved_config, stage_dirs


@dataclass(frozen=True)
class Family:
    """How one Hugging Face model_type is written: llama.cpp's architecture name and what its layers carry."""

    arch: str
    permute_rotary: bool  # llama.cpp's llama rotates adjacent pairs (see the module docstring)
    qkv_bias: bool = False
    qk_norm: bool = False


FAMILIES = {
    "llama": Family("llama", permute_rotary=True),  # Llama 2/3/3.x, SmolLM2
    "mistral": Family("llama", permute_rotary=True),
    "qwen2": Family("qwen2", permute_rotary=False, qkv_bias=True),  # Qwen2, Qwen2.5
    "qwen3": Family("qwen3", permute_rotary=False, qk_norm=True),
}
FLOAT_QTYPES = ("f32", "f16", "bf16")
KQUANTS = {"q4_k_m": "MOSTLY_Q4_K_M", "q5_k_m": "MOSTLY_Q5_K_M", "q6_k": "MOSTLY_Q6_K"}  # made by llama.cpp
QTYPES = (*FLOAT_QTYPES, "q8_0", "q4_0", *KQUANTS)
# The sampling llama.cpp's tools (llama-cli, llama-server; since November 2025, ggml-org/llama.cpp#17120) take as
# their defaults from a GGUF, where no option (--temp ...) or request sets it; float32, as gguf-py's writer types
# them. Greedy with no repetition penalty: as tunelab evaluated the run and its Modelfile and merged folder answer.
SAMPLING_KEYS = {"general.sampling.temp": 0.0, "general.sampling.penalty_repeat": 1.0}
_FREQ_ONLY_ROPE = ("default", "linear", "llama3")  # rope types that change frequencies only (no attention scaling)

_LAYER_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


# ---------------------------------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class GGUFShape:
    """The hyper-parameters llama.cpp reads for the model's architecture, from a transformers config."""

    family: Family
    vocab_size: int
    hidden: int
    ffn: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    context: int
    rms_eps: float
    rope_theta: float
    rope_type: str
    tied: bool


def _rope_parameters(config) -> dict:
    """transformers 5 keeps rope settings in `rope_parameters`; 4.x in `rope_theta` + `rope_scaling`."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    if not params:
        params = dict(getattr(config, "rope_scaling", None) or {})
        params.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    params.setdefault("rope_type", params.get("type", "default"))
    return params


def gguf_shape(config) -> GGUFShape:
    """Check that llama.cpp's architecture for this family computes what this config does, and read its shape."""
    kind = getattr(config, "model_type", None)
    family = FAMILIES.get(kind)
    if family is None:
        raise ModelError(
            f"GGUF export supports the model types {', '.join(FAMILIES)} (Llama 2/3, Mistral, SmolLM2, Qwen2/2.5, "
            f"Qwen3); this model is {kind!r}. Use 'tunelab merge' and convert the merged directory with llama.cpp's "
            "convert_hf_to_gguf.py."
        )
    refusals = []
    if getattr(config, "hidden_act", "silu") != "silu":
        refusals.append(f"activation {config.hidden_act!r} (llama.cpp's {family.arch} uses silu)")
    if (kind != "qwen2" and getattr(config, "attention_bias", False)) or getattr(config, "mlp_bias", False):
        refusals.append("bias terms in attention or MLP")
    if getattr(config, "use_sliding_window", False):
        refusals.append("sliding-window attention")
    rope = _rope_parameters(config)
    if rope["rope_type"] not in _FREQ_ONLY_ROPE:
        refusals.append(f"rope scaling {rope['rope_type']!r} (supported: {', '.join(_FREQ_ONLY_ROPE)})")
    if refusals:
        raise ModelError(
            f"GGUF export: this {kind} model has {'; '.join(refusals)}, which the export does not write yet."
        )
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    context = config.max_position_embeddings
    window = getattr(config, "sliding_window", None) if kind == "mistral" else None
    if window and window < context:
        context = window  # llama.cpp's llama has no sliding window; within the window both attend to the same keys
    return GGUFShape(
        family=family,
        vocab_size=config.vocab_size,
        hidden=config.hidden_size,
        ffn=config.intermediate_size,
        layers=config.num_hidden_layers,
        heads=heads,
        kv_heads=getattr(config, "num_key_value_heads", None) or heads,
        head_dim=head_dim,
        context=context,
        rms_eps=config.rms_norm_eps,
        rope_theta=float(rope["rope_theta"]),
        rope_type=rope["rope_type"],
        tied=bool(getattr(config, "tie_word_embeddings", False)),
    )


def permute_rotary_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(n_heads * d, in) from rotate-half row order to llama.cpp's interleaved order; see the module docstring."""
    rows = w.shape[0]
    half = rows // n_heads // 2
    return w.reshape(n_heads, 2, half, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def rope_freq_factors(model: nn.Module, shape: GGUFShape) -> torch.Tensor | None:
    """(head_dim / 2,) factors llama.cpp divides each rotary frequency by, or None when they are all 1."""
    rotary = getattr(getattr(model, "model", model), "rotary_emb", None)
    if rotary is None or not hasattr(rotary, "inv_freq"):
        raise ModelError(
            "GGUF export: the model has no rotary embedding module (model.rotary_emb) to read frequencies from."
        )
    if float(getattr(rotary, "attention_scaling", 1.0)) != 1.0:
        raise ModelError(f"GGUF export: rope type {shape.rope_type!r} scales attention, which llama.cpp does not.")
    default = 1.0 / (shape.rope_theta ** (torch.arange(0, shape.head_dim, 2, dtype=torch.float64) / shape.head_dim))
    factors = (default / rotary.inv_freq.double()).float()
    return None if torch.allclose(factors, torch.ones_like(factors), rtol=1e-6, atol=0) else factors


def gguf_tensors(model: nn.Module, shape: GGUFShape) -> Iterator[tuple[str, torch.Tensor]]:
    """(llama.cpp name, fp32 tensor) for every weight and bias, q and k permuted where the family needs it;
    unknown tensors are an error."""
    arch = shape.family.arch
    for name, tensor in model.state_dict().items():
        t = tensor.detach().float()
        if name == "model.embed_tokens.weight":
            yield "token_embd.weight", t
        elif name == "model.norm.weight":
            yield "output_norm.weight", t
        elif name == "lm_head.weight":
            if not shape.tied:
                yield "output.weight", t
        elif name.startswith("model.layers.") and name.endswith((".weight", ".bias")):
            stem, _, kind = name[len("model.layers.") :].rpartition(".")
            index, _, rest = stem.partition(".")
            short = _LAYER_NAMES.get(rest)
            if short is None or (
                kind == "bias" and not (shape.family.qkv_bias and short in ("attn_q", "attn_k", "attn_v"))
            ):
                raise ModelError(f"GGUF export: the model has a tensor llama.cpp's {arch} does not know: {name}.")
            if shape.family.permute_rotary and short in ("attn_q", "attn_k"):
                t = permute_rotary_rows(t, shape.heads if short == "attn_q" else shape.kv_heads)
            yield f"blk.{index}.{short}.{kind}", t
        else:
            raise ModelError(f"GGUF export: the model has a tensor llama.cpp's {arch} does not know: {name}.")


def encode_tensor(name: str, t: torch.Tensor, qtype: str) -> tuple[np.ndarray, object]:
    """The array to write and its GGML type: 1-D tensors f32, 2-D ones in `qtype` (f16 where a row does not split
    into whole quantization blocks)."""
    gguf = gguf_package()
    T = gguf.GGMLQuantizationType
    data = t.numpy()
    if t.ndim == 1 or qtype == "f32":
        return data.astype(np.float32), T.F32
    if qtype == "f16":
        return data.astype(np.float16), T.F16
    target = {"bf16": T.BF16, "q8_0": T.Q8_0, "q4_0": T.Q4_0}[qtype]
    if qtype == "q4_0" and name in ("token_embd.weight", "output.weight"):
        target = T.Q8_0
    block, _ = gguf.GGML_QUANT_SIZES[target]
    if data.shape[-1] % block:
        return data.astype(np.float16), T.F16
    return gguf.quants.quantize(data, target), target


def written_bytes(model: nn.Module, shape: GGUFShape, qtype: str) -> int:
    """About how many bytes the export of `model` in `qtype` has on disk at once (no less): every tensor as
    encode_tensor stores it, plus its vocabulary (~128 bytes a token: the string, its type, score and merges). A
    k-quant is made from an f16 file that lies beside it until it is done; its tensors are counted at q6_k's size
    (the largest type the k-quant mixes use) where their rows split into 256-value blocks, else at q8_0's (the
    largest llama.cpp falls back to)."""
    gguf = gguf_package()
    if qtype in KQUANTS:
        return written_bytes(model, shape, "f16") + written_bytes(model, shape, "k")
    total = 128 * shape.vocab_size + 2**20
    for name, t in model.state_dict().items():
        n = t.numel()
        if name == "lm_head.weight" and shape.tied:
            continue
        if t.ndim == 1 or qtype == "f32":
            total += 4 * n
        elif qtype in ("f16", "bf16"):
            total += 2 * n
        elif qtype == "k":
            kind = gguf.GGMLQuantizationType.Q6_K if t.shape[-1] % 256 == 0 else gguf.GGMLQuantizationType.Q8_0
            block, size = gguf.GGML_QUANT_SIZES[kind]
            total += -(-n // block) * size
        else:
            kind = "q8_0" if qtype == "q8_0" or name in ("model.embed_tokens.weight", "lm_head.weight") else "q4_0"
            block, size = gguf.GGML_QUANT_SIZES[getattr(gguf.GGMLQuantizationType, kind.upper())]
            total += 2 * n if t.shape[-1] % block else n // block * size
    return total


# ---------------------------------------------------------------------------------------------------- the file


def write_gguf(merged: MergedModel, path: Path, qtype: str, name: str) -> None:
    """Write `merged` to `path` in a type this module writes itself (f32, f16, bf16, q8_0, q4_0). `path` should
    not be the final name if atomicity matters: see export_gguf."""
    gguf = gguf_package()
    model, tok = merged.model, merged.tokenizer
    shape = gguf_shape(model.config)
    vocab = gguf_vocab(tok, shape.vocab_size, source_pre_tokenizer(merged.info.base_model))
    w = gguf.GGUFWriter(path, shape.family.arch)
    file_type = {
        "f32": "ALL_F32",
        "f16": "MOSTLY_F16",
        "bf16": "MOSTLY_BF16",
        "q8_0": "MOSTLY_Q8_0",
        "q4_0": "MOSTLY_Q4_0",
    }[qtype]

    w.add_type("model")
    w.add_name(name)
    w.add_base_model_count(1)
    w.add_base_model_name(0, shared_name(str(merged.base_info.base_model)))  # a staged run's: stage 1's
    w.add_context_length(shape.context)
    w.add_embedding_length(shape.hidden)
    w.add_block_count(shape.layers)
    w.add_feed_forward_length(shape.ffn)
    w.add_head_count(shape.heads)
    w.add_head_count_kv(shape.kv_heads)
    w.add_rope_dimension_count(shape.head_dim)
    if shape.head_dim * shape.heads != shape.hidden or shape.family.arch == "qwen3":  # Qwen3 sets head_dim apart
        w.add_key_length(shape.head_dim)
        w.add_value_length(shape.head_dim)
    w.add_rope_freq_base(shape.rope_theta)
    w.add_layer_norm_rms_eps(shape.rms_eps)
    w.add_vocab_size(shape.vocab_size)
    w.add_file_type(getattr(gguf.LlamaFileType, file_type))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for key, value in SAMPLING_KEYS.items():  # by name: gguf before 0.18 has no add_sampling_* to write them
        w.add_float32(key, value)
    write_vocab(w, vocab, tok, list(merged.template.stop_token_ids))

    factors = rope_freq_factors(model, shape)
    if factors is not None:
        w.add_tensor("rope_freqs.weight", factors.numpy().astype(np.float32))
    for tensor_name, t in gguf_tensors(model, shape):
        data, raw = encode_tensor(tensor_name, t, qtype)
        w.add_tensor(tensor_name, data, raw_dtype=raw)  # quantized bytes: the writer derives the shape
    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
    finally:
        w.close()


def _last_config(run_dir: Path) -> RunConfig | None:
    """The config the run's result was trained with (a staged run's last stage's), whose sampling and sequence
    length the Modelfile writes; None, said on stderr, when it is gone or unreadable: the Modelfile then sets
    neither."""
    try:
        return saved_config(run_dir, "the sampling and context its Modelfile sets")
    except RunDirError as exc:
        print(f"{exc}\nThe Modelfile sets no sampling or num_ctx PARAMETER (Ollama's defaults apply).", file=sys.stderr)
        return None


def longest_trained(run_dir: Path, cfg: RunConfig | None) -> tuple[int, str] | None:
    """(the longest sequence the run's model trained on, the option that set it), for the Modelfile's num_ctx: the
    result's own data.max_length (cfg, the last stage's for a staged run), or an earlier stage's where that one is
    longer (a run that learned long documents, then short questions, is still asked about documents that long).
    None where cfg is (no config: the Modelfile sets no num_ctx); a stage whose config.yaml is gone or unreadable
    is passed over, as what was trained there cannot be read."""
    if cfg is None:
        return None
    longest = (cfg.data.max_length, "data.max_length")
    top = read_config(run_dir)
    for folder in stage_dirs(run_dir) if top is not None and top.stages else []:
        with suppress(RunDirError):
            stage = read_config(folder)
            if stage is not None and stage.data.max_length > longest[0]:
                longest = (stage.data.max_length, f"data.max_length of {folder.name}")
    return longest


def _head(path: Path, size: int) -> str:
    with suppress(OSError, UnicodeDecodeError), path.open(encoding="utf-8") as f:
        return f.read(size)
    return ""


def _written_by_export(target: Path, gguf: Path) -> bool:
    """Whether `target`, one of the files an export of `gguf` writes, is one an export wrote: the Modelfile by its
    first line, the card by its front matter, the verdict by its keys, and the GGUF file by the Modelfile of
    tunelab's beside it that names it (every export writes both)."""
    modelfile = modelfile_path(gguf)
    if target == modelfile:
        return _head(target, len(MODELFILE_HEAD)) == MODELFILE_HEAD
    if target == gguf_card_path(gguf):
        return _head(target, len(card_head("gguf"))) == card_head("gguf")
    if target == check_path(gguf):
        with suppress(OSError, ValueError):
            verdict = json.loads(target.read_text(encoding="utf-8"))
            return isinstance(verdict, dict) and {"gguf", "verdict"} <= verdict.keys()
        return False
    return _written_by_export(modelfile, gguf) and f"\nFROM ./{gguf.name}\n" in _head(modelfile, 4096)


def _not_an_export(gguf: Path, spelling: Spelling = PYTHON) -> Callable[[Path], str | None]:
    """Why the export of `gguf` never replaces an existing `target`, even with --overwrite: a folder (it writes a
    file there), or a file an earlier export did not write (the user's own Modelfile, card or GGUF of that name).
    `spelling`: how it names overwrite and the output (--overwrite and --gguf, or the arguments)."""
    forced, out_ = ("--overwrite", "--gguf name") if spelling.flags else ("overwrite=True", "out")

    def why(target: Path) -> str | None:
        if target.is_dir():
            return f"{target}: is a directory; the export writes a file there."
        modelfile = modelfile_path(gguf)
        if target == gguf and modelfile.is_file() and not _written_by_export(modelfile, gguf):
            target = modelfile  # the GGUF is told by its Modelfile: name the file that is not tunelab's
        if not _written_by_export(target, gguf):
            return (
                f"{target}: exists and was not written by tunelab export; {forced} replaces only the files an "
                f"earlier export of {gguf.name} wrote, never others. Move it, or choose another {out_}."
            )
        return None

    return why


def parse_qtype(qtype: str, spelling: Spelling = PYTHON) -> str:
    q = qtype.lower()
    if q not in QTYPES:
        given = "option '--type'" if spelling.flags else "argument 'qtype'"
        raise ConfigError(f"{given} is {qtype!r}; allowed values: {', '.join(QTYPES)}.")
    return q


DEFAULT_CHECK_QUESTIONS = 8  # questions the self-check asks both models


def unchecked_reason(check: bool | None, spelling: Spelling) -> str:
    """Why the self-check of an export did not run, as its card says it: skipped on request (`check` False), else
    llama.cpp's Python binding did not import (`check` None, which runs it where llama.cpp imports)."""
    if check is False:
        return f"it was skipped (`{'--no-check' if spelling.flags else 'check=False'}`)"
    from tunelab.export import llama_cpp

    return (
        "llama.cpp's Python binding (llama-cpp-python) did not import where the file was exported, so nothing was "
        f"checked; export again after installing it to check the file: {llama_cpp.INSTALL}"
    )


@dataclass(frozen=True)
class ExportResult:
    """What `export_gguf` wrote and what its self-check found. It is os.PathLike, the GGUF file's path: open(),
    Path(), os.fspath() and shutil take it as that path, and str() is the path."""

    path: Path  # the GGUF file
    qtype: str
    modelfile: Path  # NAME.Modelfile beside it (modelfile_path)
    card: Path  # NAME.README.md, the model card
    check: GGUFCheck | None  # the self-check, as NAME.check.json holds it; None: it did not run
    unchecked: str | None = None  # why it did not run (skipped on request, or llama.cpp does not import)

    @property
    def verdict(self) -> str | None:
        """The self-check's verdict: pass, warn or fail; None when it did not run."""
        return self.check.verdict if self.check else None

    @property
    def ollama_command(self) -> str:
        """`ollama create NAME -f NAME.Modelfile`, as `tunelab export` prints it."""
        return ollama_command(self.path)

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    def __str__(self) -> str:
        return str(self.path)


def export_gguf(
    run: str | Path,
    out: str | Path,
    qtype: str = "f16",
    overwrite: bool = False,
    check: bool | None = None,
    check_questions: int | None = None,
    show: bool = False,
    *,
    spelling: Spelling = PYTHON,
) -> ExportResult:
    """A GGUF file of the merged model (f32, f16, bf16, q8_0, q4_0, q4_k_m, q5_k_m, q6_k: QTYPES) and an Ollama
    `NAME.Modelfile` beside it (modelfile_path); both are written under temporary names and renamed into place. Then
    the model card `NAME.README.md` (export/card.py), with the self-check's verdict. Returns an ExportResult: the
    files, the self-check and its verdict; it is the GGUF path where a path is taken (os.PathLike).

    check: None runs the self-check (export/check.py) when llama.cpp imports, True requires it, False skips it; its
    verdict is written to NAME.check.json beside the file (and printed when `show`; a FAIL is said on stderr even
    without `show`). check_questions: how many questions the self-check asks both models (default 8); refused with
    check=False, which asks none. `spelling`: how refusals of the output name it and overwrite (tunelab export's
    --gguf and --overwrite, or the arguments)."""
    from tunelab.export import llama_cpp

    run_dir, out = Path(run), Path(out)
    qtype = parse_qtype(qtype, spelling)
    if check is False and check_questions is not None:  # the count would be dropped without a word
        raise ConfigError(
            f"{spelling.option('check_questions')} is {check_questions}, and "
            f"{'--no-check' if spelling.flags else 'check=False'} skips the self-check that asks them; give one or "
            "the other."
        )
    check_questions = DEFAULT_CHECK_QUESTIONS if check_questions is None else check_questions
    if check_questions < 1:  # 0 would check nothing and write a verdict all the same
        raise ConfigError(f"{spelling.option('check_questions')} is {check_questions}; give 1 or more.")
    out_ = "option '--gguf'" if spelling.flags else "argument 'out'"
    if out.suffix.lower() != ".gguf":  # model.GGUF too, as models/load.py reads it
        raise ConfigError(f"{out_}: {out} must be a file name ending in .gguf.")
    if not out.name.isprintable():  # Ollama's Modelfile ends FROM at a line break and drops what it cannot print
        raise ConfigError(
            f"{out_}: the file name {out.name!r} holds a line break, tab or other character that is "
            "not printed, which the Modelfile's FROM line cannot carry to Ollama; choose another name."
        )
    check_run(run_dir, spelling)
    if qtype in KQUANTS:
        llama_cpp.llama_cpp_module(f"the {qtype} export (llama.cpp's own quantizer makes k-quants)")
    if check:
        llama_cpp.llama_cpp_module(
            f"the export's self-check ({'--no-check' if spelling.flags else 'check=False'} skips it)"
        )
    run_check = llama_cpp.available() if check is None else check
    if run_check:  # a questions file the run names but that is gone stops the export here, before anything is written
        asked_questions(run_dir, check_questions)
    modelfile = modelfile_path(out)
    card = gguf_card_path(out)
    for target in (out, modelfile, check_path(out), card):
        check_output(target, run_dir, overwrite, "--gguf", never=_not_an_export(out, spelling), spelling=spelling)
    check_can_write(out)  # a read-only place: said before the merge and the conversion, not after them
    shapes = shapes_only(run_dir)
    if shapes is not None:  # an unsupported model, and a disk without room, before the merge
        shape = gguf_shape(shapes.config)
        require_space(out, written_bytes(shapes, shape, qtype), f"the {qtype} export")
    merged = merged_model(run_dir, torch.float32)  # export from fp32 so that every qtype rounds only once
    if shapes is None:  # transformers could not build it from its config: measured now
        shape = gguf_shape(merged.model.config)
        require_space(out, written_bytes(merged.model, shape, qtype), f"the {qtype} export")
    tok = merged.tokenizer
    adds_bos = adds_special(tok, tok.bos_token_id, first=True)
    cfg = _last_config(run_dir)
    sampling = sampling_parameters(cfg, merged.base_generation)
    context = context_parameter(longest_trained(run_dir, cfg), shape.context)
    modelfile_body = modelfile_text(
        out.name, merged.template, tok, merged.info.system_prompt, adds_bos, sampling, context
    )
    scratch = out.with_name(f".tmp-{out.name}-{os.getpid()}")
    scratch_f16 = out.with_name(f".tmp-f16-{out.name}-{os.getpid()}")
    scratch_mf = out.with_name(f".tmp-{modelfile.name}-{os.getpid()}")
    try:
        with writing(out):
            out.parent.mkdir(parents=True, exist_ok=True)
            if qtype in KQUANTS:
                write_gguf(merged, scratch_f16, "f16", name=run_dir.resolve().name)
                fallbacks = llama_cpp.quantize(scratch_f16, scratch, KQUANTS[qtype], out)
                if fallbacks:
                    print(fallbacks, flush=True)
            else:
                write_gguf(merged, scratch, qtype, name=run_dir.resolve().name)
            scratch_mf.write_text(modelfile_body)
            os.replace(scratch, out)
            os.replace(scratch_mf, modelfile)
            check_path(out).unlink(missing_ok=True)  # a verdict about the file just replaced (--overwrite) is void
            card.unlink(missing_ok=True)  # and so is its card, written again below
        for line in modelfile_body.splitlines():
            if line.startswith(UNQUOTABLE[:5]):  # '# No ': a TEMPLATE or SYSTEM the Modelfile cannot hold
                print(f"{modelfile}: {line[2:]}", flush=True)
    finally:
        for path in (scratch, scratch_f16, scratch_mf):
            with suppress(OSError):  # on a read-only filesystem there is nothing to remove, and removing fails
                path.unlink(missing_ok=True)
    result = check_export(merged, out, qtype, run_dir, check_questions) if run_check else None
    checked = format_check(result) if result else None  # the file by its name: the card lies beside it
    missing = left_out(modelfile_body)
    card_text = gguf_card(
        merged.info,
        out,
        qtype,
        modelfile,
        merged.base_generation,
        checked,
        missing,
        merged.start,
        unchecked_reason(check, spelling),
    )
    write_text(card, card_text)
    if result and show:
        print(format_check(result, out), flush=True)
    # skipped for want of llama.cpp: said, so that no one takes the file for checked
    elif not run_check and check is None and show:
        print(
            f"self-check of {out}: not run, as llama.cpp's Python binding does not import. Install it with: "
            f"{llama_cpp.INSTALL}; --no-check skips the check without this line.",
            flush=True,
        )
    elif result and result.verdict == "fail":  # the CLI exits 1 on it; a script that asked for quiet still hears of it
        print(f"export: the self-check of {out} FAILED; see {check_path(out)}.", file=sys.stderr, flush=True)
    return ExportResult(out, qtype, modelfile, card, result, None if run_check else unchecked_reason(check, spelling))
