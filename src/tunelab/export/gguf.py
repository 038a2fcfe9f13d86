"""Export a finished run as one GGUF file for llama.cpp, Ollama and LM Studio, plus an Ollama Modelfile beside it.

The run is merged first (`tunelab.export.merge`), then written with the `gguf` package's GGUFWriter in llama.cpp's
"llama" architecture (Llama and Mistral checkpoints): hyper-parameters, the tokenizer (GPT-2-style byte-level BPE:
tokens, types, merges, special ids, and the pre-tokenizer name llama.cpp selects its splitting regex by), the chat
template, and the tensors under llama.cpp's names.

What is unusual:
- q_proj and k_proj rows are permuted. Hugging Face stores each head's rotary pairs as two halves (rotate-half:
  dimension i pairs with i + d/2); llama.cpp rotates adjacent rows (2i with 2i+1). Each head's (d, in) block is
  viewed as (2, d/2, in), the two axes swapped and flattened back, so row 2i is old row i and row 2i+1 is old row
  i + d/2. transformers' GGUF reader applies the inverse when it loads the file.
- Rotary scaling that only rescales frequencies (linear, llama3) is written as llama.cpp's `rope_freqs` tensor:
  per frequency, default inverse frequency / the model's, which llama.cpp divides its frequencies by.
- The pre-tokenizer name is read from the base model's GGUF when the run started from one (that name was chosen by
  llama.cpp's converter from the original tokenizer; transformers' GGUF reader rebuilds a plainer one), else it is
  recognised from the tokenizer's pre-tokenizer structure; anything else is refused rather than silently split
  differently.
- Quantized types (q8_0, q4_0) quantize 2-D weights only; norms stay f32, as llama.cpp's converter does. q4_0 keeps
  the token embedding and output matrices at q8_0 (they are the most sensitive to rounding).
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tunelab.errors import ConfigError, ModelError, RunDirError
from tunelab.export.merge import MergedModel, check_output, check_run, merged_model
from tunelab.export.modelfile import MODELFILE, modelfile_text
from tunelab.models.load import resolve_source

LLAMA_MODEL_TYPES = ("llama", "mistral")
QTYPES = ("f32", "f16", "bf16", "q8_0", "q4_0")
_FREQ_ONLY_ROPE = ("default", "linear", "llama3")  # rope types that change frequencies only (no attention scaling)

# llama.cpp's regex for Llama 3 tokenizers, as Llama 3's tokenizer.json writes it.
LLAMA3_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"

_LAYER_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


def _gguf():
    try:
        import gguf
    except ImportError:
        raise ModelError("GGUF export needs the 'gguf' package. Install it with: pip install gguf") from None
    return gguf


# ---------------------------------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class LlamaShape:
    """The hyper-parameters llama.cpp's llama architecture reads, from a transformers config."""

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


def llama_shape(config) -> LlamaShape:
    """Check that llama.cpp's llama architecture computes what this config does, and read its shape."""
    kind = getattr(config, "model_type", None)
    if kind not in LLAMA_MODEL_TYPES:
        raise ModelError(
            f"GGUF export supports Llama-family models ({', '.join(LLAMA_MODEL_TYPES)}) so far; this model is {kind!r}. "
            "Use 'tunelab merge' and convert the merged directory with llama.cpp's convert_hf_to_gguf.py."
        )
    refusals = []
    if getattr(config, "hidden_act", "silu") != "silu":
        refusals.append(f"activation {config.hidden_act!r} (llama.cpp's llama uses silu)")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        refusals.append("bias terms in attention or MLP")
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
    window = getattr(config, "sliding_window", None)
    if window and window < context:
        context = window  # llama.cpp's llama has no sliding window; within the window both attend to the same keys
    return LlamaShape(
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


def rope_freq_factors(model: nn.Module, shape: LlamaShape) -> torch.Tensor | None:
    """(head_dim / 2,) factors llama.cpp divides each rotary frequency by, or None when they are all 1."""
    rotary = getattr(getattr(model, "model", model), "rotary_emb", None)
    if rotary is None or not hasattr(rotary, "inv_freq"):
        raise ModelError(
            "GGUF export: the model has no rotary embedding module (model.rotary_emb) to read frequencies from."
        )
    if float(getattr(rotary, "attention_scaling", 1.0)) != 1.0:
        raise ModelError(
            f"GGUF export: rope type {shape.rope_type!r} scales attention, which llama.cpp's llama does not."
        )
    default = 1.0 / (shape.rope_theta ** (torch.arange(0, shape.head_dim, 2, dtype=torch.float64) / shape.head_dim))
    factors = (default / rotary.inv_freq.double()).float()
    return None if torch.allclose(factors, torch.ones_like(factors), rtol=1e-6, atol=0) else factors


def gguf_tensors(model: nn.Module, shape: LlamaShape) -> Iterator[tuple[str, torch.Tensor]]:
    """(llama.cpp name, fp32 tensor) for every weight, q and k permuted; unknown weights are an error."""
    for name, tensor in model.state_dict().items():
        t = tensor.detach().float()
        if name == "model.embed_tokens.weight":
            yield "token_embd.weight", t
        elif name == "model.norm.weight":
            yield "output_norm.weight", t
        elif name == "lm_head.weight":
            if not shape.tied:
                yield "output.weight", t
        elif name.startswith("model.layers.") and name.endswith(".weight"):
            index, _, rest = name[len("model.layers.") : -len(".weight")].partition(".")
            short = _LAYER_NAMES.get(rest)
            if short is None:
                raise ModelError(f"GGUF export: the model has a weight llama.cpp's llama does not know: {name}.")
            if short == "attn_q":
                t = permute_rotary_rows(t, shape.heads)
            elif short == "attn_k":
                t = permute_rotary_rows(t, shape.kv_heads)
            yield f"blk.{index}.{short}.weight", t
        else:
            raise ModelError(f"GGUF export: the model has a weight llama.cpp's llama does not know: {name}.")


def encode_tensor(name: str, t: torch.Tensor, qtype: str) -> tuple[np.ndarray, object]:
    """The array to write and its GGML type: 1-D tensors f32, 2-D ones in `qtype` (f16 where a row does not split
    into whole quantization blocks)."""
    gguf = _gguf()
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


# ------------------------------------------------------------------------------------------------ the tokenizer


@dataclass
class GGUFVocab:
    tokens: list[str]
    types: list[int]
    merges: list[str]
    pre: str


def tokenizer_spec(tokenizer) -> dict:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ModelError("GGUF export needs a fast (tokenizers-backed) tokenizer; this one has no tokenizer.json.")
    return json.loads(backend.to_str())


def _is_byte_level(node: dict | None, use_regex: bool) -> bool:
    return (
        bool(node)
        and node.get("type") == "ByteLevel"
        and bool(node.get("use_regex", True)) == use_regex
        and not node.get("add_prefix_space")
    )


def pre_tokenizer_name(spec: dict, clean_up_spaces: bool = False) -> str | None:
    """llama.cpp's name for this byte-level BPE pre-tokenizer, recognised by structure; None if not recognised."""
    if spec.get("normalizer"):
        return None
    pre = spec.get("pre_tokenizer") or {}
    if _is_byte_level(pre, use_regex=True):
        return "gpt-2"
    steps = pre.get("pretokenizers") if pre.get("type") == "Sequence" else None
    if not steps or len(steps) != 2:
        return None
    first, second = steps
    if first.get("type") == "Digits" and first.get("individual_digits") and _is_byte_level(second, use_regex=True):
        # llama.cpp splits digits then applies the GPT-2 regex for both; smollm also keeps spaces when decoding.
        return "starcoder" if clean_up_spaces else "smollm"
    pattern = (first.get("pattern") or {}).get("Regex")
    if (
        first.get("type") == "Split"
        and pattern == LLAMA3_SPLIT
        and first.get("behavior") == "Isolated"
        and not first.get("invert")
        and _is_byte_level(second, use_regex=False)
        and spec["model"].get("ignore_merges")
    ):
        return "llama-bpe"
    return None


def source_pre_tokenizer(base_model: str) -> str | None:
    """tokenizer.ggml.pre of the base model's GGUF file, when the run started from one."""
    try:
        source = resolve_source(base_model)
    except ModelError:
        return None
    return read_gguf_string(Path(source.path) / source.gguf_file, "tokenizer.ggml.pre") if source.is_gguf else None


_SCALAR_FORMATS = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}  # GGUFValueType
_STRING, _ARRAY = 8, 9


def read_gguf_string(path: Path, key: str) -> str | None:
    """One string value from a GGUF header, skipping the others without decoding them (GGUFReader parses every
    token string first: seconds for a 49k vocabulary)."""
    with open(path, "rb") as f:
        data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        if data[:4] != b"GGUF" or struct.unpack_from("<I", data, 4)[0] < 2:
            return None
        (n_kv,) = struct.unpack_from("<Q", data, 16)
        pos = 24

        def skip(kind: int, pos: int) -> int:
            if kind == _STRING:
                return pos + 8 + struct.unpack_from("<Q", data, pos)[0]
            if kind == _ARRAY:
                item, count = struct.unpack_from("<IQ", data, pos)
                pos += 12
                if item in _SCALAR_FORMATS:
                    return pos + count * struct.calcsize(_SCALAR_FORMATS[item])
                for _ in range(count):
                    pos = skip(item, pos)
                return pos
            return pos + struct.calcsize(_SCALAR_FORMATS[kind])

        for _ in range(n_kv):
            (length,) = struct.unpack_from("<Q", data, pos)
            name = data[pos + 8 : pos + 8 + length].decode()
            (kind,) = struct.unpack_from("<I", data, pos + 8 + length)
            pos += 12 + length
            if name == key and kind == _STRING:
                (size,) = struct.unpack_from("<Q", data, pos)
                return data[pos + 8 : pos + 8 + size].decode()
            pos = skip(kind, pos)
        return None
    finally:
        data.close()


def gguf_vocab(tokenizer, vocab_size: int, pre: str | None = None) -> GGUFVocab:
    """Tokens in id order (padded to the embedding size with unused [PADi]), their types, merges, pre-tokenizer."""
    gguf = _gguf()
    spec = tokenizer_spec(tokenizer)
    model = spec["model"]
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise ModelError(
            f"GGUF export writes byte-level BPE tokenizers (GPT-2 style: SmolLM, Llama 3, ...) so far; this tokenizer is "
            f"{model.get('type')}{' with byte fallback (SentencePiece style)' if model.get('byte_fallback') else ''}."
        )
    pre = pre or pre_tokenizer_name(spec, bool(getattr(tokenizer, "clean_up_tokenization_spaces", False)))
    if pre is None:
        raise ModelError(
            f"GGUF export: llama.cpp has no name this exporter knows for the tokenizer's pre-tokenizer "
            f"({json.dumps(spec.get('pre_tokenizer'))[:200]}); known: gpt-2, smollm, starcoder, llama-bpe."
        )
    by_id = {i: tok for tok, i in model["vocab"].items()}
    types = {i: gguf.TokenType.NORMAL for i in by_id}
    for added in spec.get("added_tokens", []):
        by_id[added["id"]] = added["content"]  # raw text: llama.cpp matches added tokens before byte-level splitting
        types[added["id"]] = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
    if max(by_id) >= vocab_size:
        raise ModelError(
            f"GGUF export: the tokenizer has token id {max(by_id)} but the model's embedding has only {vocab_size} rows."
        )
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(vocab_size)]
    token_types = [int(types.get(i, gguf.TokenType.UNUSED)) for i in range(vocab_size)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return GGUFVocab(tokens, token_types, merges, pre)


def _adds(tokenizer, token_id: int | None, first: bool) -> bool:
    """Whether the tokenizer puts this special token at the start (first) or end of plain text by itself."""
    if token_id is None:
        return False
    ids = tokenizer("a")["input_ids"]
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    return ids != bare and (ids[0] if first else ids[-1]) == token_id


# ---------------------------------------------------------------------------------------------------- the file


def write_gguf(merged: MergedModel, path: Path, qtype: str, name: str) -> None:
    """Write `merged` to `path` (which must not be the final name if atomicity matters: see export_gguf)."""
    gguf = _gguf()
    model, tok = merged.model, merged.tokenizer
    shape = llama_shape(model.config)
    vocab = gguf_vocab(tok, shape.vocab_size, source_pre_tokenizer(merged.info.base_model))
    w = gguf.GGUFWriter(path, "llama")
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
    w.add_base_model_name(0, str(merged.info.base_model))
    w.add_context_length(shape.context)
    w.add_embedding_length(shape.hidden)
    w.add_block_count(shape.layers)
    w.add_feed_forward_length(shape.ffn)
    w.add_head_count(shape.heads)
    w.add_head_count_kv(shape.kv_heads)
    w.add_rope_dimension_count(shape.head_dim)
    if shape.head_dim * shape.heads != shape.hidden:
        w.add_key_length(shape.head_dim)
        w.add_value_length(shape.head_dim)
    w.add_rope_freq_base(shape.rope_theta)
    w.add_layer_norm_rms_eps(shape.rms_eps)
    w.add_vocab_size(shape.vocab_size)
    w.add_file_type(getattr(gguf.LlamaFileType, file_type))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)

    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(vocab.pre)
    w.add_token_list(vocab.tokens)
    w.add_token_types(vocab.types)
    w.add_token_merges(vocab.merges)
    for add, token_id in (
        (w.add_bos_token_id, tok.bos_token_id),
        (w.add_eos_token_id, tok.eos_token_id),
        (w.add_unk_token_id, tok.unk_token_id),
        (w.add_pad_token_id, tok.pad_token_id),
    ):
        if token_id is not None:
            add(token_id)
    turn_end = [i for i in merged.template.stop_token_ids if i != tok.eos_token_id]
    if turn_end:
        w.add_eot_token_id(turn_end[0])  # e.g. <|im_end|> when EOS is another token: llama.cpp stops on both
    w.add_add_bos_token(_adds(tok, tok.bos_token_id, first=True))
    w.add_add_eos_token(_adds(tok, tok.eos_token_id, first=False))
    w.add_add_space_prefix(False)
    if tok.chat_template:
        w.add_chat_template(tok.chat_template)

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


def export_gguf(run_dir: str | Path, out_path: str | Path, qtype: str = "f16", overwrite: bool = False) -> Path:
    """Merge the run and write it as a GGUF file (qtype f32, f16, bf16, q8_0 or q4_0), with an Ollama `Modelfile`
    in the same folder. Both are written under temporary names and renamed into place. Returns the GGUF path."""
    run_dir, out = Path(run_dir), Path(out_path)
    if qtype not in QTYPES:
        raise ConfigError(f"option 'qtype' is {qtype!r}; allowed values: {', '.join(QTYPES)}.")
    if out.suffix != ".gguf":
        raise ConfigError(f"option 'out': {out} must be a file name ending in .gguf.")
    check_run(run_dir)
    modelfile = out.with_name(MODELFILE)
    for target in (out, modelfile):
        check_output(target, run_dir, overwrite)
        if target.is_dir():
            raise RunDirError(f"{target}: is a directory; the export writes a file there.")
    merged = merged_model(run_dir, torch.float32)  # export from fp32 so that every qtype rounds only once
    llama_shape(merged.model.config)  # refuse unsupported models before writing anything
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = out.with_name(f".tmp-{out.name}-{os.getpid()}")
    scratch_mf = out.with_name(f".tmp-{MODELFILE}-{os.getpid()}")
    try:
        write_gguf(merged, scratch, qtype, name=run_dir.resolve().name)
        scratch_mf.write_text(modelfile_text(out.name, merged.template, merged.tokenizer, merged.info.system_prompt))
        os.replace(scratch, out)
        os.replace(scratch_mf, modelfile)
    finally:
        scratch.unlink(missing_ok=True)
        scratch_mf.unlink(missing_ok=True)
    return out
