"""Whether an answer holds an expected text: the one matching rule of tunelab's scores and of grpo's rewards.

Text is compared after `normalize`: lower case, runs of whitespace as one space, and punctuation at the end stripped
("Dundee." equals "dundee"). `contains` asks for the expected text as a whole phrase of the answer: not a piece of a
longer word or number, so "649" is not found in "£1,649" nor "home" in "homework". Here, below the tasks and the
scores, so that a grpo reward and `tunelab eval` judge one answer alike.
"""

from __future__ import annotations

import re

_WORD = re.compile(r"\w+", re.UNICODE)


# What may end a sentence or close a quoted answer: stripped from the end. Not every punctuation character: "50%",
# "C#" and "B)" say something "50", "C" and "B" do not.
_SENTENCE_END = frozenset(".,;:!?…。！？、，；：\"'“”‘’«»「」『』 ")


def normalize(text: str) -> str:
    """Lower case, whitespace collapsed, sentence punctuation and closing quotes at the end removed."""
    text = re.sub(r"\s+", " ", text).strip().lower()
    end = len(text)
    while end and text[end - 1] in _SENTENCE_END:
        end -= 1
    return text[:end]


def exact_match(answer: str, expected: str) -> bool:
    return normalize(answer) == normalize(expected)


def _phrase(want: str) -> re.Pattern:
    """`want` as a whole phrase: where it starts (ends) with a word character, the answer must not continue the word
    there; where it starts (ends) with a digit, not the number either ("7.5" is not in "17.5", "649" not in "1,649",
    "27" not in "27.5")."""
    left = right = ""
    if _WORD.match(want[0]):
        left = r"(?<!\w)" + (r"(?<!\d[.,:])" if want[0].isdigit() else "")
    if _WORD.match(want[-1]):
        right = r"(?!\w)" + (r"(?![.,:]\d)" if want[-1].isdigit() else "")
    return re.compile(left + re.escape(want) + right)


def contains(answer: str, expected: str) -> bool:
    """The expected text appears in the answer as a whole phrase (both normalised; an empty expected text never
    matches). A bare substring test would count "£1,649" for "649" and "homework" for "home"."""
    want = normalize(expected)
    return bool(want) and _phrase(want).search(normalize(answer)) is not None
