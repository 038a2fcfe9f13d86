"""A lower bound on a text's token count from its size alone, so a row far over max_length is known to be without
tokenizing it (a 6 MB row took a minute of tokenizing before it was dropped as too long).

The bound: no token stands for more than B bytes of text, so a text of N UTF-8 bytes that the tokenizer reads has at
least ceil(N / B) tokens, and more than max_length of them once N > max_length * B. It holds for a byte-level BPE
tokenizer whose every step keeps the bytes it reads (`size_bound` checks each):
- no normalizer (NFC and the like can merge characters) and no truncation set on the backend;
- pre-tokenizers that only split (ByteLevel, Digits, Split and Punctuation not `removed`), ByteLevel among them, so
  the model reads each piece as its bytes, one alphabet character per byte;
- a BPE model with no subword prefix or suffix, whose tokens are strings of byte characters (a token of k characters
  stands for k bytes) and that has a token for every continuation byte (80 to BF) of UTF-8;
- added tokens that strip no whitespace around them (an `rstrip` token could swallow any run of spaces): one stands
  for its content's bytes.
A byte with no token of its own and no unknown token is dropped: SmolLM2 has none for the control characters 04, 06,
13, 14, 16 and 1D (a text of them has no token at all) nor for the lead bytes F1 and F2, so the characters holding
such a byte are not counted in N. Each byte counted is covered by exactly one token of at most B bytes: B is the
longest of the vocabulary's tokens and added tokens' contents. Any other tokenizer has no bound (None), and every
row is tokenized.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass

SPLITTING = {"ByteLevel", "Digits", "Split", "Punctuation", "Sequence"}  # pre-tokenizers that keep every character
UTF8_BYTES = [*range(0xC0), *range(0xC2, 0xF5)]  # the bytes UTF-8 text can hold


@dataclass(frozen=True)
class SizeBound:
    """What a text's size says of its token count (see the module docstring)."""

    most: int  # the most bytes one token stands for
    dropped: re.Pattern | None  # runs of characters holding a byte the tokenizer drops (None: it drops none)

    def least_tokens(self, text: str) -> int:
        """The fewest tokens `text` can have."""
        size = len(text.encode("utf-8", "surrogatepass"))
        if self.dropped is not None:
            size -= sum(len(run.group().encode("utf-8", "surrogatepass")) for run in self.dropped.finditer(text))
        return -(-size // self.most)


def _pre_tokenizers(spec: dict | None) -> list[dict]:
    """The pre-tokenizers of a backend's `pre_tokenizer` entry, a Sequence unrolled."""
    if spec is None:
        return []
    if spec.get("type") == "Sequence":
        return [p for inner in spec.get("pretokenizers", []) for p in _pre_tokenizers(inner)]
    return [spec]


def _holding(byte: int) -> tuple[int, int] | None:
    """The code points (first, last) whose UTF-8 form holds `byte` (a single byte or a lead byte; a few of them
    unencodable, which only makes the range wider than needed), None for a continuation byte (most characters)."""
    if byte < 0x80:
        return byte, byte
    for lead, bits, shift in ((0xF0, 0x07, 18), (0xE0, 0x0F, 12), (0xC0, 0x1F, 6)):
        if byte >= lead:
            first = (byte & bits) << shift
            return first, min(first + (1 << shift) - 1, 0x10FFFF)
    return None


def _dropped(missing: list[int]) -> re.Pattern | None | bool:
    """A pattern of runs of the characters holding one of the `missing` bytes (None: no byte is missing); False when
    a continuation byte is missing, which leaves no useful bound."""
    ranges = [_holding(b) for b in missing]
    if any(r is None for r in ranges):
        return False
    if not ranges:
        return None
    return re.compile("[" + "".join(f"{re.escape(chr(a))}-{re.escape(chr(b))}" for a, b in ranges) + "]+")


@functools.lru_cache(maxsize=8)
def size_bound(tokenizer) -> SizeBound | None:
    """The bound of `tokenizer` (see the module docstring), or None where it is not proven for it (a slow
    tokenizer, a normalizer, a WordPiece or SentencePiece model, ...). Read once per tokenizer from its backend's
    serialised form."""
    try:
        from transformers.convert_slow_tokenizer import bytes_to_unicode  # ByteLevel's byte -> character map
    except ImportError:  # a transformers without it: no bound, every row is tokenized
        return None
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    spec = json.loads(backend.to_str())
    model, added = spec.get("model") or {}, spec.get("added_tokens") or []
    pieces = _pre_tokenizers(spec.get("pre_tokenizer"))
    if (
        spec.get("normalizer") is not None
        or spec.get("truncation") is not None
        or model.get("type") != "BPE"
        or model.get("continuing_subword_prefix")
        or model.get("end_of_word_suffix")
        or not any(p.get("type") == "ByteLevel" for p in pieces)
        or any(p.get("type") not in SPLITTING or str(p.get("behavior", "")).lower() == "removed" for p in pieces)
        or any(token.get("lstrip") or token.get("rstrip") for token in added)
    ):
        return None
    vocab, chars = model.get("vocab") or {}, bytes_to_unicode()
    alphabet = set(chars.values())
    if any(not alphabet.issuperset(token) for token in vocab):
        return None
    dropped = _dropped([b for b in UTF8_BYTES if chars[b] not in vocab])
    if dropped is False:
        return None
    return SizeBound(max(max(map(len, vocab)), max((len(t["content"].encode()) for t in added), default=0)), dropped)


@dataclass(frozen=True)
class Unreadable:
    """The bytes a tokenizer drops: ones with no token of their own where it has no unknown token (see the module
    docstring), and a test for the characters of a text that hold one."""

    missing: bytes
    runs: re.Pattern | None  # runs of characters holding a missing byte (None: a continuation byte is missing)

    def chars_in(self, text: str) -> list[str]:
        """The characters of `text` that the tokenizer drops, in order (most texts: none, found by one search)."""
        if self.runs is not None:
            return [c for run in self.runs.finditer(text) for c in run.group()]
        if not set(self.missing) & set(text.encode("utf-8", "surrogatepass")):
            return []
        return [c for c in text if set(self.missing) & set(c.encode("utf-8", "surrogatepass"))]


@functools.lru_cache(maxsize=8)
def unreadable(tokenizer) -> Unreadable | None:
    """What `tokenizer` drops of a text, read once from its backend's serialised form: None where it drops nothing
    that this can tell (an unknown token or byte fallback stands for what it has no token for; not a byte-level
    BPE; a slow tokenizer)."""
    try:
        from transformers.convert_slow_tokenizer import bytes_to_unicode
    except ImportError:
        return None
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    spec = json.loads(backend.to_str())
    model = spec.get("model") or {}
    if (
        model.get("type") != "BPE"
        or model.get("unk_token") is not None
        or model.get("byte_fallback")
        or not any(p.get("type") == "ByteLevel" for p in _pre_tokenizers(spec.get("pre_tokenizer")))
    ):
        return None
    vocab, chars = model.get("vocab") or {}, bytes_to_unicode()
    missing = [b for b in UTF8_BYTES if chars[b] not in vocab]
    if not missing:
        return None
    runs = _dropped(missing)
    return Unreadable(bytes(missing), runs or None)


def surely_longer(text: str, limit: int, bound: SizeBound | None) -> bool:
    """Whether `text` has more than `limit` tokens by its size alone (`bound`: `size_bound`'s; None: never)."""
    if bound is None or 4 * len(text) <= limit * bound.most:  # a character is at most 4 bytes
        return False
    return bound.least_tokens(text) > limit
