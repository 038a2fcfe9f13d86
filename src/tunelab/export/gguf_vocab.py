"""The tokenizer of a GGUF file: what llama.cpp needs to split and join text exactly as the Hugging Face tokenizer
does, read from the tokenizer's own `tokenizer.json`.

Two kinds of vocabularies, as llama.cpp names them:
- `gpt2`: byte-level BPE (SmolLM, Llama 3, Qwen2/2.5/3, ...): tokens, merges, and the pre-tokenizer name
  (`tokenizer.ggml.pre`) llama.cpp selects its splitting regex by. The name is read from the base model's GGUF
  when the run started from one (chosen there by llama.cpp's own converter), else recognised from the tokenizer's
  pre-tokenizer structure; anything else is refused rather than silently split differently.
- `llama`: SentencePiece-style BPE with byte fallback (Llama 2, Mistral 7B): tokens with their scores. llama.cpp
  merges the adjacent pair whose joined piece has the highest score; Hugging Face merges the pair of lowest merge
  rank. Giving each piece the score -(rank of the merge that makes it) makes the two procedures pick the same
  pair at every step. Pieces `<0x00>`..`<0xFF>` are byte tokens.

The export's self-check (export/check.py) compares llama.cpp's split of the run's prompts with the tokenizer's,
so a vocabulary that slipped through these rules would still be caught.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from tunelab.errors import ModelError
from tunelab.models.gguf_split import read_gguf_string
from tunelab.models.load import resolve_source

# llama.cpp's regexes for Llama 3 and Qwen2 tokenizers, as those tokenizers' tokenizer.json write them.
LLAMA3_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
KNOWN_PRE = ("gpt-2", "smollm", "starcoder", "llama-bpe", "qwen2")
_BYTE_PIECE = re.compile(r"<0x[0-9A-F]{2}>")
SPIECE = "\u2581"  # SentencePiece's visible space


def gguf_package():
    """The `gguf` package (llama.cpp's reader and writer), imported on first use: a ModelError says how to install it."""
    try:
        import gguf
    except ImportError:
        raise ModelError("GGUF export needs the 'gguf' package. Install it with: pip install gguf") from None
    return gguf


@dataclass
class GGUFVocab:
    model: str  # llama.cpp's tokenizer.ggml.model: gpt2 or llama
    tokens: list[str]
    types: list[int]
    merges: list[str] = field(default_factory=list)  # gpt2 only
    pre: str | None = None  # gpt2 only
    scores: list[float] = field(default_factory=list)  # llama only
    add_space_prefix: bool = False


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
    normalizer = spec.get("normalizer")
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers") if pre.get("type") == "Sequence" else None
    split = steps[0] if steps and len(steps) == 2 else {}
    pattern = (split.get("pattern") or {}).get("Regex")
    regex_split = (
        split.get("type") == "Split"
        and split.get("behavior") == "Isolated"
        and not split.get("invert")
        and _is_byte_level(steps[1], use_regex=False)
    )
    if regex_split and pattern == QWEN2_SPLIT and normalizer in (None, {"type": "NFC"}):
        # Qwen's tokenizer NFC-normalizes first; llama.cpp does not, which differs only on text that is not already
        # in NFC (rare: decomposed accents). The self-check's prompts would show it.
        return None if spec["model"].get("ignore_merges") else "qwen2"
    if normalizer:
        return None
    if _is_byte_level(pre, use_regex=True):
        return "gpt-2"
    if not steps or len(steps) != 2:
        return None
    first, second = steps
    if first.get("type") == "Digits" and first.get("individual_digits") and _is_byte_level(second, use_regex=True):
        # llama.cpp splits digits then applies the GPT-2 regex for both; smollm also keeps spaces when decoding.
        return "starcoder" if clean_up_spaces else "smollm"
    if regex_split and pattern == LLAMA3_SPLIT and spec["model"].get("ignore_merges"):
        return "llama-bpe"
    return None


def source_pre_tokenizer(base_model: str) -> str | None:
    """tokenizer.ggml.pre of the base model's GGUF file, when the run started from one."""
    try:
        source = resolve_source(base_model)
    except ModelError:
        return None
    return read_gguf_string(Path(source.path) / source.gguf_file, "tokenizer.ggml.pre") if source.is_gguf else None


def _by_id(spec: dict, vocab_size: int, token_type) -> tuple[dict[int, str], dict[int, int]]:
    model = spec["model"]
    by_id = {i: tok for tok, i in model["vocab"].items()}
    types = {i: token_type.NORMAL for i in by_id}
    for added in spec.get("added_tokens", []):
        by_id[added["id"]] = added["content"]  # raw text: llama.cpp matches added tokens before splitting
        types[added["id"]] = token_type.CONTROL if added.get("special") else token_type.USER_DEFINED
    if max(by_id) >= vocab_size:
        raise ModelError(
            f"GGUF export: the tokenizer has token id {max(by_id)} but the model's embedding has only {vocab_size} rows."
        )
    return by_id, types


def _merge_list(model: dict) -> list[tuple[str, str]]:
    return [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model.get("merges", [])]


def _metaspace_prefix(spec: dict) -> bool | None:
    """Whether a SentencePiece-style tokenizer puts a space before the text (True/False), None if its structure is
    not one llama.cpp's `llama` tokenizer reproduces."""
    norm, pre = spec.get("normalizer") or {}, spec.get("pre_tokenizer") or {}
    steps = norm.get("normalizers", []) if norm.get("type") == "Sequence" else [norm] if norm else []
    kinds = [s.get("type") for s in steps]
    if pre.get("type") == "Metaspace" and not steps:  # transformers >= 4.38 style (legacy=False)
        if pre.get("replacement") != SPIECE or pre.get("split", False):
            return None
        return pre.get("prepend_scheme", "always") in ("first", "always")
    if not pre and kinds in (["Prepend", "Replace"], ["Replace"]):  # the older normalizer style
        replace = steps[-1]
        if (replace.get("pattern") or {}).get("String") != " " or replace.get("content") != SPIECE:
            return None
        return kinds[0] == "Prepend" and steps[0].get("prepend") == SPIECE
    return None


def gguf_vocab(tokenizer, vocab_size: int, pre: str | None = None) -> GGUFVocab:
    """Tokens in id order (padded to the embedding size with unused [PADi]) and what llama.cpp needs to use them."""
    gguf = gguf_package()
    T = gguf.TokenType
    spec = tokenizer_spec(tokenizer)
    model = spec["model"]
    if model.get("type") != "BPE":
        raise ModelError(
            f"GGUF export writes BPE tokenizers (byte-level like SmolLM, Llama 3 and Qwen, or SentencePiece-style "
            f"like Llama 2 and Mistral); this tokenizer is {model.get('type')}."
        )
    by_id, types = _by_id(spec, vocab_size, T)
    if model.get("byte_fallback"):
        prefix = _metaspace_prefix(spec)
        if prefix is None:
            raise ModelError(
                "GGUF export: this SentencePiece-style tokenizer's normalizer/pre-tokenizer "
                f"({json.dumps(spec.get('normalizer'))[:120]}; {json.dumps(spec.get('pre_tokenizer'))[:120]}) is not one "
                "llama.cpp's llama tokenizer reproduces (a visible-space replacement, optionally prefixed)."
            )
        rank = {a + b: i for i, (a, b) in enumerate(_merge_list(model))}
        scores = [0.0] * vocab_size
        for i, tok in by_id.items():
            if tok == model.get("unk_token"):
                types[i] = T.UNKNOWN
            elif types[i] == T.NORMAL:
                if _BYTE_PIECE.fullmatch(tok):
                    types[i] = T.BYTE
                scores[i] = -float(rank.get(tok, len(rank)))  # see the module docstring
        tokens = [by_id.get(i, f"[PAD{i}]") for i in range(vocab_size)]
        token_types = [int(types.get(i, T.UNUSED)) for i in range(vocab_size)]
        return GGUFVocab("llama", tokens, token_types, scores=scores, add_space_prefix=prefix)
    pre = pre or pre_tokenizer_name(spec, bool(getattr(tokenizer, "clean_up_tokenization_spaces", False)))
    if pre is None:
        raise ModelError(
            f"GGUF export: llama.cpp has no name this exporter knows for the tokenizer's pre-tokenizer "
            f"({json.dumps(spec.get('pre_tokenizer'))[:200]}); known: {', '.join(KNOWN_PRE)}."
        )
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(vocab_size)]
    token_types = [int(types.get(i, T.UNUSED)) for i in range(vocab_size)]
    merges = [" ".join(m) for m in _merge_list(model)]
    return GGUFVocab("gpt2", tokens, token_types, merges=merges, pre=pre)


def adds_special(tokenizer, token_id: int | None, first: bool) -> bool:
    """Whether the tokenizer puts this special token at the start (first) or end of plain text by itself."""
    if token_id is None:
        return False
    ids = tokenizer("a")["input_ids"]
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    return ids != bare and (ids[0] if first else ids[-1]) == token_id


def write_vocab(writer, vocab: GGUFVocab, tokenizer, turn_end: list[int]) -> None:
    """The tokenizer.* keys: vocabulary, special ids, BOS/EOS behaviour, chat template."""
    writer.add_tokenizer_model(vocab.model)
    if vocab.pre:
        writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    if vocab.merges:
        writer.add_token_merges(vocab.merges)
    if vocab.scores:
        writer.add_token_scores(vocab.scores)
    tok = tokenizer
    for add, token_id in (
        (writer.add_bos_token_id, tok.bos_token_id),
        (writer.add_eos_token_id, tok.eos_token_id),
        (writer.add_unk_token_id, tok.unk_token_id),
        (writer.add_pad_token_id, tok.pad_token_id),
    ):
        if token_id is not None:
            add(token_id)
    ends = [i for i in turn_end if i != tok.eos_token_id]
    if ends:
        writer.add_eot_token_id(ends[0])  # e.g. <|im_end|> when EOS is another token: llama.cpp stops on both
    writer.add_add_bos_token(adds_special(tok, tok.bos_token_id, first=True))
    writer.add_add_eos_token(adds_special(tok, tok.eos_token_id, first=False))
    writer.add_add_space_prefix(vocab.add_space_prefix)
    if isinstance(tok.chat_template, dict):  # templates by name: the default one, and tokenizer.chat_template.NAME
        writer.add_chat_template([{"name": n, "template": t} for n, t in tok.chat_template.items()])
    elif tok.chat_template:
        writer.add_chat_template(tok.chat_template)
