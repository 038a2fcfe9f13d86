"""Score the length of the answers in a run's compare.json (written by `eval.questions` at the end of training, or by
`tunelab compare`): base beside tuned on the held-out questions.

- words: mean answer length in words, and the share of answers within LIMIT words (the behaviour taught);
- quality guard, so that shorter is not emptier: the share of answers that are non-empty and on topic (they share a
  content word with the question or with the reference first sentence in heldout.jsonl), and the mean share of the
  reference sentence's content words the answer contains.

Usage:  python examples/concise_dpo/measure.py [RUN_DIR]   (default runs/concise_dpo)
"""

import argparse
import json
import re
from pathlib import Path

HERE = Path(__file__).parent
LIMIT = 25  # words, as in make_pairs.py
STOP = set(
    "the a an and or of to in on for with is are was were be been it its this that these those as at by from what which"
    " who how why when where can could would should will do does did you your i we they he she them their our there"
    " than then so if not no yes about into more most some any all one each give name explain make".split()
)


def content_words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z]+", text.lower()) if len(w) >= 4 and w not in STOP}


def score(answers: list[str], questions: list[str], references: list[str]) -> dict:
    words = [len(a.split()) for a in answers]
    on_topic = [
        bool(a.strip()) and bool(content_words(a) & (content_words(q) | content_words(r)))
        for a, q, r in zip(answers, questions, references)
    ]
    recall = [
        len(content_words(a) & content_words(r)) / max(1, len(content_words(r))) for a, r in zip(answers, references)
    ]
    n = len(answers)
    return {
        "mean_words": sum(words) / n,
        "within_limit": sum(w <= LIMIT for w in words) / n,
        "on_topic": sum(on_topic) / n,
        "reference_recall": sum(recall) / n,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Mean answer length of base and tuned answers in a run's compare.json (written by eval.questions "
        "or `tunelab compare`), with a quality guard (non-empty and on topic; reference content words found).",
    )
    parser.add_argument(
        "run_dir",
        nargs="?",
        default="runs/concise_dpo",
        help="the run holding compare.json (default: runs/concise_dpo)",
    )
    run_dir = Path(parser.parse_args(argv).run_dir)
    if not (run_dir / "compare.json").is_file():
        parser.error(
            f"{run_dir / 'compare.json'} not found: train examples/concise_dpo/config.yaml (its eval.questions write it) "
            "or run `tunelab compare` on the run, then give the run's folder"
        )
    compared = json.loads((run_dir / "compare.json").read_text(encoding="utf-8"))
    references = {}
    for line in (HERE / "heldout.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        references[row["question"]] = row["reference"]
    rows = [r for r in compared["rows"] if r["question"] in references]
    questions = [r["question"] for r in rows]
    refs = [references[q] for q in questions]
    base = score([r["base"] for r in rows], questions, refs)
    tuned = score([r["tuned"] for r in rows], questions, refs)
    print(f"{len(rows)} held-out questions, max_new_tokens {compared['settings'].get('max_new_tokens')}")
    print(f"| held-out (n={len(rows)}) | base | tuned |")
    print("|---|---:|---:|")
    print(f"| mean answer length, words | {base['mean_words']:.1f} | {tuned['mean_words']:.1f} |")
    print(f"| answers within {LIMIT} words | {100 * base['within_limit']:.1f}% | {100 * tuned['within_limit']:.1f}% |")
    print(f"| non-empty and on topic | {100 * base['on_topic']:.1f}% | {100 * tuned['on_topic']:.1f}% |")
    print(
        f"| reference content words found (mean) | {100 * base['reference_recall']:.1f}% "
        f"| {100 * tuned['reference_recall']:.1f}% |"
    )


if __name__ == "__main__":
    main()
