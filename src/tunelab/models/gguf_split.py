"""How a GGUF file's byte-level BPE tokenizer splits text before its merges: llama.cpp's pre-tokenizer for the
file's `tokenizer.ggml.pre`, rebuilt as a `tokenizers` pre-tokenizer for the tokenizer transformers converts.

A GGUF file carries no tokenizer.json: llama.cpp picks its splitting regexes by the name in `tokenizer.ggml.pre`
(src/llama-vocab.cpp, `llm_tokenizer_bpe`: one list of regexes per LLAMA_VOCAB_PRE_TYPE_*, applied in turn, each
keeping what it matches and what lies between as pieces). transformers' conversion knows only some names and gives
every other one GPT-2's split: SmolLM2's 'smollm' (each digit on its own, then GPT-2's regex) lost its digit step,
so whitespace before a digit ('\\n\\n1.') parted otherwise than in SmolLM2's own tokenizer and in llama.cpp.

`pre_tokenizer_for(name)` gives the split of each name below, checked against llama.cpp's tokenize
(tests/models/test_gguf_split.py); llama.cpp's Llama 3 and Tekken names also take a whole word found in the
vocabulary without merging (`ignore_merges`). A name not listed is left as transformers converted it, with a
warning naming it (`split_warning`): text may split otherwise than in llama.cpp there.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path

# GPT-2's regex, as tokenizers' ByteLevel pre-tokenizer applies it (llama.cpp's lacks the final \s+, which the
# pieces between matches give back).
GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
# llama.cpp writes (?i:'s|...) as (?:'[sS]|...) for its own regex engine; tokenizers reads the original.
_CONTRACTIONS = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)"
LLAMA3_SPLIT = (
    _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
QWEN35_SPLIT = (
    _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SEED_CODER_SPLIT = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+"
UFAKZEKA_SPLIT = r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_UPPER, _LOWER = r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]", r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]"
TEKKEN_SPLIT = (
    rf"[^\r\n\p{{L}}\p{{N}}]?{_UPPER}*{_LOWER}+|[^\r\n\p{{L}}\p{{N}}]?{_UPPER}+{_LOWER}*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
GPT4O_SPLIT = (
    rf"[^\r\n\p{{L}}\p{{N}}]?{_UPPER}*{_LOWER}+{_CONTRACTIONS}?|[^\r\n\p{{L}}\p{{N}}]?{_UPPER}+{_LOWER}*{_CONTRACTIONS}?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
DIGITS = "digits"  # each digit alone, then GPT-2's regex: tokenizers' Digits step, as SmolLM2's tokenizer.json has it

# tokenizer.ggml.pre -> (the split, ignore_merges), grouped as llama.cpp's llama_vocab::impl::load maps the names
_GROUPS = {
    (GPT2_SPLIT, False): (
        "gpt-2 phi-2 jina-es jina-de gigachat jina-v2-es jina-v2-de a.x-4.0 mellum modern-bert jina-v1-en "
        "jina-v2-code roberta-bpe mpt olmo jais exaone4 trillion granite-docling"
    ),
    (DIGITS, False): "starcoder refact command-r smollm codeshell exaone minerva-7b mellum2",
    (LLAMA3_SPLIT, True): "llama3 llama-v3 llama-bpe falcon3 falcon-h1 pixtral midm-2.0 lfm2 jina-v5-nano",
    (LLAMA3_SPLIT, False): "dbrx smaug-bpe glm4 chatglm-bpe",
    (QWEN2_SPLIT, False): "qwen2 deepseek-r1-qwen kormo f2llmv2 megrez stablelm2 hunyuan solar-open grok-2",
    (QWEN35_SPLIT, False): "qwen35",
    (SEED_CODER_SPLIT, False): "seed-coder",
    (UFAKZEKA_SPLIT, False): "ufakzeka",
    (TEKKEN_SPLIT, True): "tekken",
    (GPT4O_SPLIT, False): "gpt-4o llama4 kanana2 talkie minimax-m2",
}
SPLITS: dict[str, tuple[str, bool]] = {name: group for group, names in _GROUPS.items() for name in names.split()}


def pre_tokenizer_for(name: str):
    """The `tokenizers` pre-tokenizer llama.cpp's `name` splits as, and whether whole words in the vocabulary skip
    the merges; None for a name not in SPLITS."""
    from tokenizers import Regex, pre_tokenizers

    if name not in SPLITS:
        return None
    split, ignore_merges = SPLITS[name]
    if split == GPT2_SPLIT:
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True), ignore_merges
    if split == DIGITS:
        steps = [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
        return pre_tokenizers.Sequence(steps), ignore_merges
    steps = [
        pre_tokenizers.Split(Regex(split), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ]
    return pre_tokenizers.Sequence(steps), ignore_merges


def split_warning(file: Path, name: str | None) -> str:
    """The warning for a byte-level GGUF tokenizer whose split tunelab does not rebuild (empty when it does)."""
    if name in SPLITS:
        return ""
    said = f"tokenizer.ggml.pre is {name!r}" if name else "it names no pre-tokenizer (tokenizer.ggml.pre)"
    return (
        f"{file}: {said}, whose split tunelab does not know; the tokenizer splits text as transformers converted it, "
        f"which may differ from llama.cpp's (known: {', '.join(sorted(SPLITS))})."
    )


def set_gguf_split(tokenizer, file: Path) -> str:
    """Give `tokenizer`, converted by transformers from the GGUF `file`, the split llama.cpp uses for the file's
    tokenizer.ggml.pre (a byte-level BPE vocabulary only: a SentencePiece one has no pre-tokenizer). Returns a
    warning to show when the name is not one tunelab rebuilds, else ''."""
    if read_gguf_string(file, "tokenizer.ggml.model") != "gpt2":
        return ""
    name = read_gguf_string(file, "tokenizer.ggml.pre")
    found = pre_tokenizer_for(name) if name else None
    if found is None:
        return split_warning(file, name)
    backend = tokenizer.backend_tokenizer
    backend.pre_tokenizer, backend.model.ignore_merges = found
    return ""


_SCALAR_FORMATS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9  # GGUFValueType


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
