"""The one scorer of tunelab's answers: exact match, contains, ROUGE-L, refusals, and label tasks.

`tunelab compare`, `tunelab eval` and the comparison after training all judge answers here (`correct` is the verdict
both print), so one answer gets one verdict whichever command produced it. It needs nothing else of tunelab but
`data.match` (the matching rule, shared with grpo's rewards), so whatever produces answers can score them here without
an import running up the layers.

Text answers are compared after `normalize`: lower case, runs of whitespace as one space, and sentence punctuation and
closing quotes at the end stripped ("Dundee." equals "dundee"; "50%" does not equal "50"). `contains` asks for the expected text as a whole phrase of the answer: not a
piece of a longer word or number, so "649" is not found in "£1,649" nor "home" in "homework".

ROUGE-L F1 comes from Google's `rouge-score` package, the reference implementation. Its default tokenizer keeps only
[a-z0-9] and so scores every non-ASCII answer 0; we give it a Unicode word tokenizer instead (lower-cased `\\w+` runs).

Label tasks (classification by generation): the generated answer is mapped to one of the task's labels
(`predict_label`; a label after a negation, "not refund", is not named), then accuracy, per-class precision/recall/F1 and a confusion table are computed. An answer that
names no label is predicted as `NO_LABEL`; it counts against recall of the true class and is its own confusion column.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from tunelab.data.match import contains, exact_match, normalize

NO_LABEL = "(no label)"
_WORD = re.compile(r"\w+", re.UNICODE)


def refused(answer: str, refusal: str) -> bool:
    """The answer contains the refusal sentence."""
    return contains(answer, refusal)


def correct(answer: str, expected: str, labels: list[str] | None = None) -> bool:
    """The verdict on one answer: for a label question (`labels`: its task's labels) the label the answer names is
    the expected one; otherwise the answer contains the expected text."""
    if labels is not None:
        return predict_label(answer, labels) == expected
    return contains(answer, expected)


class _WordTokenizer:
    """Lower-cased Unicode word runs, the tokenizer interface rouge-score expects (`tokenize(text) -> list[str]`)."""

    def tokenize(self, text: str) -> list[str]:
        return _WORD.findall(text.lower())


def rouge_l(answers: list[str], expected: list[str]) -> list[float]:
    """ROUGE-L F1 (longest common subsequence of words) of each answer against its expected text, in [0, 1]."""
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        from tunelab.errors import TunelabError

        raise TunelabError(
            "ROUGE-L needs the 'rouge-score' package. Install it with: pip install rouge-score"
        ) from None
    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_WordTokenizer())
    return [
        scorer.score(target, prediction)["rougeL"].fmeasure
        for prediction, target in zip(answers, expected, strict=True)
    ]


@dataclass
class TextScores:
    """Means over n answers; exact_match over those whose expected text is a whole answer (None when none is);
    refusal_rate is None when no refusal sentence is known."""

    n: int
    exact_match: float | None
    contains: float
    rouge_l: float
    refusal_rate: float | None = None


def text_scores(
    answers: list[str], expected: list[str], refusal: str | None = None, whole: list[bool] | None = None
) -> TextScores:
    """`whole[i]`: expected[i] is a whole answer, so exact match can mean something (default: all are). A text the
    answer should contain ("Dundee" for "We are based in Dundee.") would score 0% exact match by construction."""
    n = len(answers)
    if n == 0 or n != len(expected):
        raise ValueError(f"need as many answers as expected texts, at least one (got {n} and {len(expected)})")
    rouge = rouge_l(answers, expected)
    whole = whole if whole is not None else [True] * n
    pairs = [(a, e) for a, e, w in zip(answers, expected, whole, strict=True) if w]
    return TextScores(
        n=n,
        exact_match=sum(exact_match(a, e) for a, e in pairs) / len(pairs) if pairs else None,
        contains=sum(map(contains, answers, expected)) / n,
        rouge_l=sum(rouge) / n,
        refusal_rate=sum(refused(a, refusal) for a in answers) / n if refusal else None,
    )


# Words that deny a label named just after them ("not refund", "isn't billing", "no spam", "non-refund"); any word
# ending in n't too
_NEGATIONS = frozenset({"not", "no", "never", "neither", "nor", "without", "non", "cannot"})
_CONTRAST = frozenset({"but", "rather", "instead"})  # a negation before one of these does not reach past it
_CLAUSE_END = re.compile(r"[.,;:!?()\[\]\n]")
NEGATION_WINDOW = 3  # words before a mention that may deny it


def _denied(text: str, start: int) -> bool:
    """The label mention at `start` is denied: one of the NEGATION_WINDOW words before it, in its clause (after the
    last punctuation or "but"), is a negation."""
    clause = _CLAUSE_END.split(text[:start])[-1]
    words = re.findall(r"[\w']+", clause.replace("\u2019", "'"))
    turns = [i for i, w in enumerate(words) if w in _CONTRAST]  # "not billing but refund": refund is not denied
    words = words[turns[-1] + 1 if turns else 0 :][-NEGATION_WINDOW:]
    return any(w in _NEGATIONS or w.endswith("n't") for w in words)


def predict_label(answer: str, labels: list[str]) -> str:
    """The label an answer gives: the label it equals (normalised), else the label named earliest in it as whole
    words (the longer one on a tie, so "very positive" wins over "positive"), else NO_LABEL. A mention denied by a
    negation among the three words before it in its clause ("not refund", "it isn't a billing question", "non-spam";
    the clause ends at punctuation and at "but") names no label: "not refund" is not the answer "refund"."""
    text = normalize(answer)
    for label in labels:
        if normalize(label) == text:
            return label
    best: tuple[int, int, str] | None = None  # (start, -length, label): the smallest wins
    for label in labels:
        want = normalize(label)
        if not want:
            continue
        mentions = re.finditer(rf"(?<!\w){re.escape(want)}(?!\w)", text)
        found = next((m for m in mentions if not _denied(text, m.start())), None)
        if found and (best is None or (found.start(), -len(want)) < best[:2]):
            best = (found.start(), -len(want), label)
    return best[2] if best else NO_LABEL


UNDEFINED_RULE = (
    "n/a: undefined, as no answer predicted the class (precision) or no row has it (recall); macro F1 averages the "
    "classes of the rows or the answers, one with no prediction or no row at F1 0 (scikit-learn's zero_division=0)"
)


@dataclass
class ClassScores:
    precision: float | None  # of the answers predicted as this class, the share that truly are (None: none predicted)
    recall: float | None  # of the rows of this class, the share predicted as it (None: no row of this class)
    f1: float | None  # 2 tp / (support + predicted): 0 when one of the two is 0; None when both are
    support: int  # rows whose expected label is this class
    predicted: int  # answers predicted as this class


@dataclass
class LabelScores:
    labels: list[str]
    n: int
    accuracy: float
    macro_f1: float  # unweighted mean of the per-class F1 over the classes in the rows or the answers
    per_class: dict[str, ClassScores] = field(default_factory=dict)
    confusion: dict[str, dict[str, int]] = field(default_factory=dict)  # expected -> predicted -> count (non-zero only)

    def to_dict(self) -> dict:
        return asdict(self)


def label_scores(expected: list[str], predicted: list[str], labels: list[str] | None = None) -> LabelScores:
    """Accuracy, per-class precision/recall/F1 and the confusion counts of predicted labels against expected ones."""
    if not expected or len(expected) != len(predicted):
        raise ValueError(
            f"need as many predictions as expected labels, at least one (got {len(predicted)} and {len(expected)})"
        )
    labels = list(labels) if labels is not None else list(dict.fromkeys(expected))
    confusion: dict[str, dict[str, int]] = {}
    for want, got in zip(expected, predicted):
        row = confusion.setdefault(want, {})
        row[got] = row.get(got, 0) + 1
    per_class = {}
    for label in labels:
        tp = confusion.get(label, {}).get(label, 0)
        support = sum(confusion.get(label, {}).values())
        n_predicted = sum(row.get(label, 0) for row in confusion.values())
        # undefined (None, shown n/a), not 0: a class never predicted has no precision, one with no rows no recall
        precision = tp / n_predicted if n_predicted else None
        recall = tp / support if support else None
        f1 = 2 * tp / (support + n_predicted) if support + n_predicted else None
        per_class[label] = ClassScores(precision, recall, f1, support, n_predicted)
    correct = sum(want == got for want, got in zip(expected, predicted))
    # macro F1 over the classes the rows have or the answers name (as scikit-learn's f1_score without `labels`): a
    # label of the run absent from both has no F1 at all. A class with rows but no prediction (or predictions but no
    # rows) counts with F1 0, as scikit-learn's zero_division=0 counts its undefined precision (recall).
    present = [c.f1 for c in per_class.values() if c.f1 is not None]
    return LabelScores(
        labels=labels,
        n=len(expected),
        accuracy=correct / len(expected),
        macro_f1=sum(present) / len(present) if present else 0.0,
        per_class=per_class,
        confusion=confusion,
    )
