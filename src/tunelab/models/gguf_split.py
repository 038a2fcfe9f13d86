"""How a GGUF file's byte-level BPE tokenizer splits text before its merges: llama.cpp's pre-tokenizer for the
file's `tokenizer.ggml.pre`, rebuilt as a `tokenizers` pre-tokenizer for the tokenizer transformers converts.

A GGUF file carries no tokenizer.json: llama.cpp picks its splitting regexes by the name in `tokenizer.ggml.pre`
(src/llama-vocab.cpp, `llm_tokenizer_bpe`: one list of regexes per LLAMA_VOCAB_PRE_TYPE_*, applied in turn, each
keeping what it matches and what lies between as pieces). transformers' conversion knows only some names and gives
every other one GPT-2's split: SmolLM2's 'smollm' (each digit on its own, then GPT-2's regex) lost its digit step,
so whitespace before a digit ('\\n\\n1.') parted otherwise than in SmolLM2's own tokenizer and in llama.cpp.

`pre_tokenizer_for(name)` gives the split of each name below, checked against llama.cpp's tokenize
(tests/models/test_gguf_split.py): a Split step per regex of llama.cpp's list, in its order (DeepSeek's, Falcon's and
BLOOM's names among those of several; kimi-k2's hand-written split as one regex), then the byte-level step. llama.cpp's
Llama 3, Tekken, youtu, minicpm5 and granite-embed-multi-97m names also take a whole word found in the vocabulary
without merging (`ignore_merges`). A name not listed is left as transformers converted it, with a warning naming it
(`split_warning`): text may split otherwise than in llama.cpp there. Among those: tiny_aya and cohere2moe, whose first
regex, \\d{1,3}(?=(?:\\d{3})*\\b), llama.cpp's std::regex reads otherwise than a regex engine does (in 'a  99 x' it
leaves 99 with the spaces before it, where the regex parts them; yet it parts '1234 ' as 1|234), which no regex tried
here follows; and the names whose vocabulary is not byte-level (gemma4, whitespace). A file naming none gets 'default''s
split, as llama.cpp gives it, and a warning.

Decoding is left as transformers converted it, without clean-up (`clean_up_tokenization_spaces` False) for every
name. llama.cpp's `clean_spaces` (on for a byte-level vocabulary unless its name turns it off: falcon, bloom, gpt-2,
llama-bpe on; deepseek-*, qwen2, smollm off; src/llama-vocab.cpp, `llama_vocab::impl::load`) takes the space out of
" ." " ," " ?" " !" " 's" ... only in `llama_detokenize`; the text llama-server generates is the tokens' pieces
joined (tools/server/server-context.cpp, `process_token`: `generated_text += token_str`), which is what the
converted tokenizer's `decode` gives.
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
# llama.cpp's forms of Tekken's and GPT-4o's tokenizer.json regexes (src/llama-vocab.cpp, `llm_tokenizer_bpe`): a letter
# not a-z for [\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}], one not A-Z for [\p{Ll}\p{Lm}\p{Lo}\p{M}], so a combining mark (Devanagari's,
# Khmer's vowel signs) is a piece of its own there, not part of the word; and contractions spelled out in cases.
_LLAMA_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_NOT_LOWER, _NOT_UPPER = r"((?=[\p{L}])([^a-z]))", r"((?=[\p{L}])([^A-Z]))"
TEKKEN_SPLIT = (
    rf"[^\r\n\p{{L}}\p{{N}}]?{_NOT_LOWER}*{_NOT_UPPER}+|[^\r\n\p{{L}}\p{{N}}]?{_NOT_LOWER}+{_NOT_UPPER}*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
GPT4O_SPLIT = (
    rf"[^\r\n\p{{L}}\p{{N}}]?{_NOT_LOWER}*{_NOT_UPPER}+{_LLAMA_CONTRACTIONS}?"
    rf"|[^\r\n\p{{L}}\p{{N}}]?{_NOT_LOWER}+{_NOT_UPPER}*{_LLAMA_CONTRACTIONS}?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
DIGITS = "digits"  # each digit alone, then GPT-2's regex: tokenizers' Digits step, as SmolLM2's tokenizer.json has it

# The names transformers does not know, most of them split by several regexes, each splitting every piece the ones
# before it left (llama.cpp's src/unicode.cpp, `unicode_regex_split`: a regex's matches and what lies between them
# become pieces, and the next regex runs on each piece alone). llama.cpp runs them with std::regex, which reads some of
# them otherwise than tokenizers' Oniguruma would, so they are written here for what llama.cpp does:
# - a regex with a \p{..} class runs on a copy of the text with each non-ASCII character collapsed to one byte for its
#   category, so \p{Lu}, \p{Ll}, \p{Lt}, \p{Lm} and \p{Lo} all mean any letter;
# - one without runs on code points with every non-ASCII whitespace turned into '\v', so a literal range never holds
#   one (deepseek-llm's U+3000-U+3002 starts with one): hence `&&\S`; its `$` is the end of the piece (Oniguruma's `$`
#   is an end of line: \z), and its \d is ASCII.
_HAN = (
    "[\u4e00-\u9fff\u3400-\u4dbf\U00020000-\U0002a6df\U0002a700-\U0002b73f\U0002b740-\U0002b81f\U0002b820-\U0002ceaf"
    "\U0002ceb0-\U0002ebef\uf900-\ufaff\U0002f800-\U0002fa1f]"
)
_CJK = "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+"
_DEEPSEEK_CJK = "[[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]&&\\S]+"
_DEEPSEEK_LETTERS = (  # a run of letters of the scripts that have case, as llama.cpp lists them for deepseek-llm
    r"\s?["
    "A-Za-z\u00b5\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af"
    "\u0370-\u0373\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-\u03f5"
    "\u03f7-\u0481\u048a-\u052f\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba"
    "\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45"
    "\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe"
    "\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc"
    "\u2102\u2107\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139"
    "\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3"
    "\ua640-\ua66d\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06"
    "\ufb13-\ufb17\uff21-\uff3a\uff41-\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3"
    "\U000104d8-\U000104fb\U00010c80-\U00010cb2\U00010cc0-\U00010cf2\U000118a0-\U000118df"
    "\U0001e900-\U0001e943"
    "]+"
)
_DEEPSEEK3_WORDS = r"[!-/:-@\[-`{-~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+"
_BLOOM = r" ?[^(\s|.,!?" "\u2026\u3002\uff0c\u3001\u0964\u06d4\u060c" ")]+"
_QWEN2_LLAMA = (
    _LLAMA_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_STEPS = {  # llama.cpp's regex list for each LLAMA_VOCAB_PRE_TYPE_* (src/llama-vocab.cpp, `llm_tokenizer_bpe`)
    "deepseek-llm": (
        r"[\r\n]",
        _DEEPSEEK_LETTERS,
        r"\s?[[!-/:-~" "\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002" r"]&&\S]+",
        r"\s+\z",
        _DEEPSEEK_CJK,
        r"\p{N}+",
    ),
    "deepseek-coder": (r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", _DEEPSEEK_CJK, r"\p{N}"),
    "deepseek-v3": (
        r"\p{N}{1,3}",
        _CJK,
        _DEEPSEEK3_WORDS + r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ),
    "spark2_5": (r"\p{N}{1,3}", _CJK, _DEEPSEEK3_WORDS + r"|[\r\n]|\s+(?!\S)|\s+", r"\p{N}"),
    "youtu": (
        "[\uac00-\ud7a3\u3131-\u318e]+"
        "|[\uff01\u2026\u201c\u201d\u2018\u2019\u2014\uff1a\uff1b\uff0c\u3001-\u303f\ufe30-\ufe4f]+"
        "|[\u3105-\u312f]+|" + _CJK,
        r"[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+" + _LLAMA_CONTRACTIONS + r"?|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+"
        r"|\s+(?!\S)|\s+",
    ),
    "falcon": (r"[\p{P}$+<=>^~|`]+", GPT2_SPLIT, r"[0-9][0-9][0-9]"),
    "bloom": (_BLOOM,),
    "viking": (_BLOOM, r"\p{N}"),
    "chameleon": (
        r"<sentinel:[0-9]+>",
        r"(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z",
        r"([\t\n]|    |  )",
        r"\p{N}",
        r"[\p{P}!-/:-@\[-`{-~]",
        GPT2_SPLIT,
    ),
    "superbpe": (r"\p{N}+", r"(?=(?:[0-9]{3})+(?![0-9]))"),  # parts before each 3 digits from the end
    "laguna": (r"[^\n]+|[\n]+", _QWEN2_LLAMA),
    "minicpm5": (
        r"\p{N}{1,3}",
        _LLAMA_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ),
    "afmoe": (
        # its digit grouping keeps the text before a run of digits with the run's first group
        r"\P{N}*\p{N}{1,3}(?=(?:\p{N}{3})*(?!\p{N}))",
        # CJK, kana, Thai, Lao, Khmer, Myanmar, Hangul; the third range starts at U+8C48 in llama.cpp's source
        "[\u4e00-\u9fff\u3400-\u4dbf\u8c48-\ufaff\u3040-\u309f\u30a0-\u30ff\uff65-\uff9f\u2f00-\u2fdf"
        "\u0e40-\u0e7f\u0e80-\u0eff\u1780-\u17ff\u1000-\u109f\uaa60-\uaa7f\ua9e0-\ua9ff\uac00-\ud7af\u1100-\u11ff]+",
        _DEEPSEEK3_WORDS + r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ),
    "default": (r"[\p{P}$+<=>^~|]+", GPT2_SPLIT, r"\p{N}+", r"[0-9][0-9][0-9]"),
    # and names of one regex that transformers does not know
    "jais-2": (
        _LLAMA_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
        r"|\s{512}(?!\S)|\s{256}(?!\S)|\s{128}(?!\S)|\s{64}(?!\S)|\s{32}(?!\S)|\s{16}(?!\S)|\s{8}(?!\S)|\s{4}(?!\S)"
        r"|\s{1,2}(?!\S)|\s{1}",
    ),
    "bailingmoe": (
        r"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]"
        r"|\s+(?!\S)|\s+",
    ),
    "exaone-moe": (
        _LLAMA_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?(?:\p{L}\p{M}*(?: \p{L}\p{M}*)*)+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]?"
        r"|\s*[\r\n]|\s+(?!\S)|\s+",
    ),
    "granite-embed-multi-97m": (  # GPT-4o's, a combining mark counted with the letters
        r"[^\r\n\p{L}\p{N}]?((?=[\p{L}\p{M}])([^a-z]))*((?=[\p{L}\p{M}])([^A-Z]))+" + _LLAMA_CONTRACTIONS + r"?"
        r"|[^\r\n\p{L}\p{N}]?((?=[\p{L}\p{M}])([^a-z]))+((?=[\p{L}\p{M}])([^A-Z]))*" + _LLAMA_CONTRACTIONS + r"?"
        r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ),
    # llama.cpp splits kimi-k2 by hand-written code (unicode.cpp, `unicode_regex_split_custom_kimi_k2`): a run of Han
    # (its `unicode_cpt_is_han` ranges) apart, then Llama 3's regex with Han taken out of the letters and no
    # contraction of its own
    "kimi-k2": (
        _HAN + r"+|[^\r\n\p{L}\p{N}]?[\p{L}&&[^" + _HAN[1:-1] + r"]]+" + _LLAMA_CONTRACTIONS + r"?"
        r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ),
}

# tokenizer.ggml.pre -> (the regexes in turn, ignore_merges), grouped as llama.cpp's llama_vocab::impl::load maps the
# names
_GROUPS = {
    ((GPT2_SPLIT,), False): (
        "gpt-2 phi-2 jina-es jina-de gigachat jina-v2-es jina-v2-de a.x-4.0 mellum modern-bert jina-v1-en "
        "jina-v2-code roberta-bpe mpt olmo jais exaone4 trillion granite-docling"
    ),
    ((DIGITS,), False): "starcoder refact command-r smollm codeshell exaone minerva-7b mellum2",
    ((LLAMA3_SPLIT,), True): "llama3 llama-v3 llama-bpe falcon3 falcon-h1 pixtral midm-2.0 lfm2 jina-v5-nano",
    ((LLAMA3_SPLIT,), False): "dbrx smaug-bpe glm4 chatglm-bpe",
    ((QWEN2_SPLIT,), False): "qwen2 deepseek-r1-qwen kormo f2llmv2 megrez stablelm2 hunyuan solar-open grok-2",
    ((QWEN35_SPLIT,), False): "qwen35",
    ((SEED_CODER_SPLIT,), False): "seed-coder",
    ((UFAKZEKA_SPLIT,), False): "ufakzeka",
    ((TEKKEN_SPLIT,), True): "tekken",
    ((GPT4O_SPLIT,), False): "gpt-4o llama4 kanana2 talkie minimax-m2",
    (_STEPS["deepseek-llm"], False): "deepseek-llm",
    (_STEPS["deepseek-coder"], False): "deepseek-coder",
    (_STEPS["deepseek-v3"], False): "deepseek-v3 hunyuan-dense joyai-llm hy_v4",
    (_STEPS["spark2_5"], False): "spark2_5",
    (_STEPS["youtu"], True): "youtu",
    (_STEPS["falcon"], False): "falcon",
    (_STEPS["bloom"], False): "poro-chat bloom gpt3-finnish",
    (_STEPS["viking"], False): "viking",
    (_STEPS["chameleon"], False): "chameleon",
    (_STEPS["superbpe"], False): "superbpe",
    (_STEPS["laguna"], False): "laguna",
    (_STEPS["minicpm5"], True): "minicpm5",
    (_STEPS["afmoe"], False): "afmoe",
    (_STEPS["default"], False): "default",
    (_STEPS["jais-2"], False): "jais-2",
    (_STEPS["bailingmoe"], False): "bailingmoe bailingmoe2 llada-moe",
    (_STEPS["exaone-moe"], False): "exaone-moe",
    (_STEPS["granite-embed-multi-97m"], True): "granite-embed-multi-97m",
    (_STEPS["kimi-k2"], False): "kimi-k2",
}
SPLITS: dict[str, tuple[tuple[str, ...], bool]] = {
    name: group for group, names in _GROUPS.items() for name in names.split()
}

# the names a GGUF copy's tokenizer splits as llama.cpp does since conversion 4 (models/converted.CONVERSION): those of
# _STEPS, and Tekken's and GPT-4o's, which split combining marks as llama.cpp does since then; the other names of
# SPLITS since conversion 3
SPLIT_SINCE_4 = frozenset(
    name
    for name, (steps, _) in SPLITS.items()
    if steps in _STEPS.values() or steps in ((TEKKEN_SPLIT,), (GPT4O_SPLIT,))
)


def pre_tokenizer_for(name: str):
    """The `tokenizers` pre-tokenizer llama.cpp's `name` splits as, and whether whole words in the vocabulary skip
    the merges; None for a name not in SPLITS."""
    from tokenizers import Regex, pre_tokenizers

    if name not in SPLITS:
        return None
    steps, ignore_merges = SPLITS[name]
    if steps == (GPT2_SPLIT,):
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True), ignore_merges
    if steps == (DIGITS,):
        steps = [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
        return pre_tokenizers.Sequence(steps), ignore_merges
    splits = [pre_tokenizers.Split(Regex(step), behavior="isolated") for step in steps]  # in llama.cpp's order
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    return pre_tokenizers.Sequence([*splits, byte_level]), ignore_merges


def split_warning(file: Path, name: str | None) -> str:
    """The warning for a byte-level GGUF tokenizer whose split tunelab does not rebuild, or that names none (empty
    for a name in SPLITS)."""
    if name in SPLITS:
        return ""
    if not name:
        return (
            f"{file}: it names no pre-tokenizer (tokenizer.ggml.pre); the tokenizer splits text by llama.cpp's "
            "'default' regexes, as llama.cpp does for such a file, which may not be how the model's own tokenizer split "
            "the text it was trained on."
        )
    return (
        f"{file}: tokenizer.ggml.pre is {name!r}, whose split tunelab does not know; the tokenizer splits text as "
        f"transformers converted it, which may differ from llama.cpp's (known: {', '.join(sorted(SPLITS))})."
    )


def set_gguf_split(tokenizer, file: Path) -> str:
    """Give `tokenizer`, converted by transformers from the GGUF `file`, the split llama.cpp uses for the file's
    tokenizer.ggml.pre (a byte-level BPE vocabulary only: a SentencePiece one has no pre-tokenizer; 'default' for a
    file naming none, as llama.cpp's llama_vocab::impl::load takes). Returns a warning to show when the name is not
    one tunelab rebuilds or is missing, else ''."""
    if read_gguf_string(file, "tokenizer.ggml.model") != "gpt2":
        return ""
    name = read_gguf_string(file, "tokenizer.ggml.pre")
    found = pre_tokenizer_for(name or "default")
    if found is not None:
        backend = tokenizer.backend_tokenizer
        backend.pre_tokenizer, backend.model.ignore_merges = found
    return split_warning(file, name)


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
