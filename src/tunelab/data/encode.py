"""Texts -> token ids, with per token whether it lies in one of the text's char spans (a chat's answers): the one
tokenizer call every task's rows go through (render.py explains the spans and why a token straddling an edge makes
the text tokenized piece by piece).
"""

from __future__ import annotations

_BATCH = 512  # texts per tokenizer call: the fast tokenizer works through a batch in parallel


def _in_span(a: int, b: int, spans: list[tuple[int, int]]) -> bool:
    # a token [a, b) counts when it overlaps a span; zero-width tokens count when they sit inside one
    return any((a < e and b > s) or (a == b and s <= a < e) for s, e in spans)


def _encode_pieces(tokenizer, text: str, spans: list[tuple[int, int]], plain: bool = False):
    """Tokenize the text piece by piece, cut at span edges: for tokenizers without offset mappings, and for texts
    where a token straddles an edge."""
    cuts = sorted({0, len(text), *(p for span in spans for p in span)})
    ids, inside = [], []
    for a, b in zip(cuts, cuts[1:]):
        piece = tokenizer(text[a:b], add_special_tokens=False, split_special_tokens=plain)["input_ids"]
        ids += piece
        inside += [_in_span(a, b, spans)] * len(piece)
    return ids, inside


def _straddles(offsets, spans: list[tuple[int, int]]) -> bool:
    return any(a < edge < b for a, b in offsets for span in spans for edge in span)


def encode(
    tokenizer, texts: list[str], spans: list[list[tuple[int, int]]], plain: bool = False
) -> list[tuple[list[int], list[bool]]]:
    """Token ids of each text and, per token, whether it lies in one of that text's spans. `plain`: special-token
    text in the texts stays characters (texts of the data alone, no template markers)."""
    out = []
    for i in range(0, len(texts), _BATCH):
        chunk, chunk_spans = texts[i : i + _BATCH], spans[i : i + _BATCH]
        try:
            enc = tokenizer(chunk, add_special_tokens=False, return_offsets_mapping=True, split_special_tokens=plain)
        except (NotImplementedError, ValueError, TypeError):
            out += [_encode_pieces(tokenizer, t, s, plain) for t, s in zip(chunk, chunk_spans)]
            continue
        for text, ids, offsets, sp in zip(chunk, enc["input_ids"], enc["offset_mapping"], chunk_spans):
            if _straddles(offsets, sp):
                out.append(_encode_pieces(tokenizer, text, sp, plain))
            else:
                out.append((list(ids), [_in_span(a, b, sp) for a, b in offsets]))
    return out
