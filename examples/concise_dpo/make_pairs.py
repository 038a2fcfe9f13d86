"""Write pairs.jsonl and heldout.jsonl for examples/concise_dpo from the Alpaca sample in shared/data.

The behaviour taught is brevity: for an open question, a one-sentence answer of at most LIMIT words is preferred to a
long one. Both answers come from the same Alpaca output: `chosen` is its first sentence (kept only when it is a whole
sentence of 6..LIMIT words), `rejected` is the whole output (kept only when it runs past 45 words; cut at the last
sentence end within 120 words so the pair fits in max_length). The chosen answer is a prefix of the rejected one, so
the pair differs only in where the answer stops: end after one sentence, or go on.

Rows with an `input`, instructions asking for a long text (an essay, a list, ...), outputs with lists or code are
skipped (their first sentence is not an
answer). The usable rows are split by a hash of the instruction: HELDOUT_EVERY-th share to heldout.jsonl (questions
in no pair, with the first sentence as `reference` for the quality guard in measure.py), the rest to pairs.jsonl,
at most N_PAIRS. Stdlib only, deterministic:  python examples/concise_dpo/make_pairs.py
"""

import hashlib
import json
import re
from pathlib import Path

HERE = Path(__file__).parent
LIMIT = 25  # words in the wanted answer
N_PAIRS = 160
N_HELDOUT = 30
HELDOUT_EVERY = 4  # about one usable row in four goes to the held-out side

# instructions that ask for a long text: one sentence would not be an answer to them
ASKS_LONG = re.compile(
    r"\b(paragraph|essay|story|poem|article|list|letter|blog|speech|script|outline|steps?|describe in detail)\b", re.I
)
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def _source() -> Path:
    # the worktree sits beside shared/ (../shared/data), the main checkout too: look upwards for it
    for parent in HERE.resolve().parents:
        candidate = parent / "shared" / "data" / "llamafactory_alpaca_en_demo" / "alpaca_en_demo.json"
        if candidate.exists():
            return candidate
    raise SystemExit(f"alpaca_en_demo.json not found above {HERE} (expected shared/data/llamafactory_alpaca_en_demo)")


def _words(text: str) -> int:
    return len(text.split())


def _usable(row: dict) -> tuple[str, str, str] | None:
    """(question, first sentence, long answer) or None when the row does not make a clean pair."""
    question, output = row["instruction"].strip(), row["output"].strip()
    if row.get("input", "").strip() or ASKS_LONG.search(question) or any(c in output for c in "`*#|[]{}<>"):
        return None
    if re.search(r"^\s*(\d+[.)]|-|•)", output, re.MULTILINE):  # a list: its first sentence is a heading
        return None
    sentences = SENTENCE_END.split(" ".join(output.split()))
    first = sentences[0].strip()
    if not (6 <= _words(first) <= LIMIT) or first[-1] not in ".!?" or _words(output) <= 45 or len(sentences) < 2:
        return None
    long, count = [], 0
    for s in sentences:  # whole sentences up to 120 words
        if count + _words(s) > 120 and long:
            break
        long.append(s.strip())
        count += _words(s)
    rejected = " ".join(long)
    if _words(rejected) <= 45:
        return None
    return question, first, rejected


def _bucket(question: str) -> int:
    return int(hashlib.sha256(question.encode("utf-8")).hexdigest(), 16) % HELDOUT_EVERY


def write(out_dir: Path) -> tuple[int, int]:
    """Write pairs.jsonl and heldout.jsonl into out_dir; returns their row counts."""
    rows = json.loads(_source().read_text(encoding="utf-8"))
    seen, pairs, heldout = set(), [], []
    for row in rows:
        made = _usable(row)
        if made is None or made[0].lower() in seen:
            continue
        question, first, rejected = made
        seen.add(question.lower())
        if _bucket(question) == 0:
            if len(heldout) < N_HELDOUT:
                heldout.append({"question": question, "reference": first})
        elif len(pairs) < N_PAIRS:
            pairs.append({"prompt": question, "chosen": first, "rejected": rejected})
    for name, items in (("pairs.jsonl", pairs), ("heldout.jsonl", heldout)):
        with (out_dir / name).open("w", encoding="utf-8", newline="\n") as out:
            for item in items:
                out.write(json.dumps(item, ensure_ascii=False) + "\n")
    return len(pairs), len(heldout)


def main() -> None:
    n_pairs, n_heldout = write(HERE)
    print(f"{n_pairs} pairs, {n_heldout} held-out questions")


if __name__ == "__main__":
    main()
