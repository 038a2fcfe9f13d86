"""The first tokens of a huge text without tokenizing it whole: data.overlong=truncate keeps a row's first max_length
tokens, and a 7 MB row took most of a minute to tokenize before all but those were cut away.

The text is cut at a break `b` (an ASCII letter, digit or punctuation mark, then a space) and only `text[:b]` is
tokenized; its tokens are exactly the first tokens of the whole text when the tokenizer is one `cuttable` accepts:
- a byte-level BPE as `size_bound` proves it (no normalizer, no truncation, splitting pre-tokenizers only, no added
  token stripping whitespace) without BPE dropout, so each pre-tokenized word is encoded on its own, the same way
  wherever it stands;
- its pre-tokenizers are Digits, Punctuation (each splits by a character's class alone, so it never joins what lies
  either side of the break), ByteLevel, and Split with the regex of GPT-2, Llama 3 or Qwen2 (`KNOWN`, behavior
  isolated), one of those regexes applied. Each of their alternatives that can match a letter, a digit or a mark
  (a contraction, ` ?\\p{L}+`, `[^\\r\\n\\p{L}\\p{N}]?\\p{L}+`, ` ?\\p{N}+`, `\\p{N}{1,3}`, ` ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*`)
  holds no space after its first character, and each whitespace alternative stops at the non-space at b - 1: every
  match that starts before b ends by b and reads no character past b, where a space and the text's end both fail
  it. So the words before b are the same in `text[:b]` as in the text, b is a word boundary in both, and their
  tokens are the same;
- no added token holds a space, so none is matched across b (their leftmost-longest matching reads the same text
  before b either way).
A chat's answer spans are clipped at b; where no token straddles a span edge the text is tokenized whole, else piece by
piece (encode.py): the head is read the way the whole text would be where it has a straddling token of its own,
or where both ways agree on it, or no span edge lies past b; else, as for a text with no break past the start (one
giant word) or any other tokenizer, None: the caller tokenizes the text whole, as before.

The last tokens of a text come the same way from a tail `text[b:]` cut at a break (`trailing`), for texts without
spans: b is a word boundary of the whole text (above), and each stage reads the text from b on as it reads the tail.
The regexes have no lookbehind and no anchor, so a search that restarts at b, where the match of b - 1 ended, finds
the same words in both; Digits, Punctuation and ByteLevel split by the characters either side of a place alone (a
piece one of them runs across b, a mark merged with what follows, the regex stage splits at b again); an
added token matched in the whole text lies before b or after it, none holding the space at b, and the leftmost-longest
matches after b are those of the tail, a search from b finding them first (a single_word token reads the one
character before it, which the tail holds from b + 1 on); a ByteLevel prefix space is never added to a tail, which
starts with the space at b. So the tail's words are the whole text's words from b, each encoded alike, and the text's
tokens are those of `text[:b]` then those of the tail. A head and a tail, each within its half of the text, give the
first and last tokens of a text whose middle is never tokenized (`ends`): what classify and reward keep of an input
(tasks/head_fit.py).
"""

from __future__ import annotations

import functools
import json
import re

from tunelab.data.encode import _encode_pieces, encode
from tunelab.data.size_bound import _pre_tokenizers, size_bound, surely_longer

GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
QWEN2 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
KNOWN = {GPT2, LLAMA3, QWEN2}  # word regexes whose every match before a break ends by it (module docstring)
BREAK = re.compile(r"[A-Za-z0-9!-/:-@\[-`{-~] ")  # an ASCII letter, digit or mark, then a space: b is the space


def _splits_words(stage: dict) -> bool | None:
    """True: `stage` splits at every break by a KNOWN regex; False: it keeps every break's sides apart as they are
    (Digits, Punctuation, ByteLevel without its regex); None: not proven either way."""
    kind = stage.get("type")
    if kind in ("Digits", "Punctuation"):
        return False
    if kind == "ByteLevel":
        return bool(stage.get("use_regex", True))
    pattern = stage.get("pattern") or {}
    if (
        kind == "Split"
        and pattern.get("Regex") in KNOWN
        and str(stage.get("behavior", "")).lower() == "isolated"
        and not stage.get("invert")
    ):
        return True
    return None


@functools.lru_cache(maxsize=8)
def cuttable(tokenizer) -> bool:
    """Whether the first tokens of `tokenizer`'s texts can be read from a head cut at a break (module docstring)."""
    if size_bound(tokenizer) is None:
        return False
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    if (spec.get("model") or {}).get("dropout") or any(" " in t["content"] for t in spec.get("added_tokens") or []):
        return False
    stages = [_splits_words(s) for s in _pre_tokenizers(spec.get("pre_tokenizer"))]
    return None not in stages and any(stages)


def leading(
    tokenizer, text: str, count: int, spans: list[tuple[int, int]] = (), plain: bool = False
) -> tuple[list[int], list[bool], int] | None:
    """At least `count` first tokens of `text` and whether each lies in a span, exactly as `encode` gives them for the
    whole text, from a head of it cut at a break, and the head's length in characters (where the rest starts); None
    where that is not proven (module docstring) or the head would be over half the text (tokenizing it whole then
    costs at most twice as much)."""
    if not cuttable(tokenizer):
        return None
    size = 4 * count  # characters: a token averages about four of them in prose
    while 2 * size < len(text):
        hit = BREAK.search(text, size - 1)
        if hit is None or 2 * hit.end() > len(text):
            return None
        cut = hit.start() + 1
        clipped = [(s, min(e, cut)) for s, e in spans if s < cut]
        [found] = encode(tokenizer, [text[:cut]], [clipped], plain)
        unknown = any(cut <= edge < len(text) for span in spans for edge in span)  # a straddle past the head
        if unknown and found != _encode_pieces(tokenizer, text[:cut], clipped, plain):
            return None
        if len(found[0]) >= count:
            return *found, cut
        size = 2 * cut
    return None


def _break_before(text: str, end: int, floor: int) -> int | None:
    """The last break's space at or before `end` and after `floor` (None: none there), searched in windows that double
    backwards from `end`, so a break near it is found without scanning the text."""
    window = 256
    while True:
        start = max(floor, end - window)
        spaces = [hit.start() + 1 for hit in BREAK.finditer(text, start, end + 1)]
        if spaces:
            return spaces[-1]
        if start == floor:
            return None
        window *= 2


def trailing(tokenizer, text: str, count: int, plain: bool = False) -> tuple[list[int], int] | None:
    """At least `count` last tokens of `text`, exactly as `encode` gives them for the whole text, from a tail of it
    that starts at a break, and where the tail starts in characters; None where that is not proven (module
    docstring) or the tail would be over half the text."""
    if not cuttable(tokenizer):
        return None
    size = 4 * count  # characters: a token averages about four of them in prose
    while 2 * size < len(text):
        cut = _break_before(text, len(text) - size, len(text) // 2)
        if cut is None:
            return None
        [(found, _)] = encode(tokenizer, [text[cut:]], [[]], plain)
        if len(found) >= count:
            return found, cut
        size = 2 * (len(text) - cut)
    return None


def ends(
    tokenizer, text: str, first: int, last: int, plain: bool = False
) -> tuple[list[int], list[int], int, int] | None:
    """At least `first` first tokens and `last` last tokens of `text`, as `encode` gives them for the whole text, and
    where the head ends and the tail starts in characters (the middle between them is left untokenized): the head
    and the tail of `leading` and `trailing`, each within its half of the text, so none of their tokens is the
    other's. None where either is not proven."""
    head = leading(tokenizer, text, first, (), plain)
    tail = trailing(tokenizer, text, last, plain) if head is not None else None
    if tail is None:
        return None
    return head[0], tail[0], head[2], tail[1]


def encode_heads(
    tokenizer, texts: list[str], spans: list[list[tuple[int, int]]], limit: int | None, plain: bool = False
) -> list[tuple[list[int], list[bool], int | None]]:
    """`encode`'s (ids, inside) of each text and where its untokenized rest starts: a text over `limit` tokens by its
    size alone (data/size_bound.py) gets only its first `limit` + 1 or more tokens where `leading` can read them
    (the rest after the head's characters), the others all theirs (None); `limit` None: every text whole."""
    bound = size_bound(tokenizer) if limit is not None else None
    heads = [
        leading(tokenizer, text, limit + 1, sp, plain) if surely_longer(text, limit, bound) else None
        for text, sp in zip(texts, spans)
    ]
    whole = [(t, s) for t, s, h in zip(texts, spans, heads) if h is None]
    rest = iter(encode(tokenizer, [t for t, _ in whole], [s for _, s in whole], plain))
    return [(*next(rest), None) if h is None else h for h in heads]


def least_in_spans(text: str, spans: list[tuple[int, int]], start: int, tokenizer) -> int:
    """The fewest tokens the parts of `spans` from character `start` on can have (data/size_bound.py): the answer
    tokens of a text past its head, which `leading` left untokenized at a word boundary."""
    bound = size_bound(tokenizer)
    return sum(bound.least_tokens(text[max(s, start) : e]) for s, e in spans if e > start)
