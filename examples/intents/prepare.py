"""Build the intents example's train.jsonl and test.jsonl from CLINC150 (stdlib only, deterministic).

CLINC150 labels short assistant requests with one of 150 intents, or "oos" (out of scope). Its domains.json groups
the intents into 10 domains of 15; this script labels each request with its domain, keeps "oos" as an eleventh
label, and takes a small balanced subset:

    train.jsonl  --train-per-label rows of each label from the `train` / `oos_train` splits,
                 as {"question": request, "answer": label}  (the question_answer format: loss on the label only)
    test.jsonl   --test-per-label rows of each label from the `test` / `oos_test` splits,
                 as {"question": request, "label": label}   (`tunelab eval` scores label rows as classification)
    train_more.jsonl  --more-per-label further rows of each label from the training splits, the ones the same draw
                 takes after train.jsonl's (so train.jsonl + train_more.jsonl is the draw of 40 + 40 a label); the
                 head variant trains on both files, the generative one on train.jsonl

Within a domain the rows are drawn round-robin over its intents (in a seeded order), so every intent is represented
about equally. Test requests whose text also occurs in CLINC150's train split are skipped. The files are shuffled
with the same seed, so the output depends only on the arguments and the input files.

    python examples/intents/prepare.py [--data data_full.json] [--domains domains.json] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CLINC = REPO.parent / "shared" / "data" / "clinc150_oos"  # the shared data folder beside the repository
OOS = "oos"


class BadInput(Exception):
    """Input this script cannot use: the message says which file or option and why (exit status 2)."""


def domain_of(domains_path: Path) -> dict[str, str]:
    """intent -> domain, from domains.json ({domain: [intent, ...]}); every intent must belong to exactly one."""
    domains = json.loads(domains_path.read_text(encoding="utf-8"))
    mapping: dict[str, str] = {}
    for domain, intents in domains.items():
        for intent in intents:
            if intent in mapping:
                raise BadInput(f"{domains_path}: intent {intent!r} is in both {mapping[intent]!r} and {domain!r}")
            mapping[intent] = domain
    return mapping


def draw(
    pairs: list[list[str]], domain: dict[str, str], per_label: int, rng: random.Random, skip: set[str]
) -> list[tuple[str, str]]:
    """per_label (text, label) rows of each label, round-robin over the intents of each domain ("oos" is one intent)."""
    by_label: dict[str, dict[str, list[str]]] = {}  # label -> intent -> texts, in file order
    for text, intent in pairs:
        if text in skip:
            continue
        label = OOS if intent == OOS else domain[intent]
        by_label.setdefault(label, {}).setdefault(intent, []).append(text)
    rows = []
    for label in sorted(by_label):
        intents = sorted(by_label[label])
        rng.shuffle(intents)
        queues = {intent: rng.sample(by_label[label][intent], len(by_label[label][intent])) for intent in intents}
        taken: list[str] = []
        while len(taken) < per_label and any(queues.values()):
            for intent in intents:
                if queues[intent] and len(taken) < per_label:
                    taken.append(queues[intent].pop())
        if len(taken) < per_label:
            raise BadInput(
                f"label {label!r} has only {len(taken)} usable rows, fewer than the {per_label} asked for (lower --train-per-label, --more-per-label or --test-per-label)"
            )
        rows += [(text, label) for text in taken]
    rng.shuffle(rows)
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def prepare(
    data: Path,
    domains: Path,
    out: Path,
    train_per_label: int = 40,
    test_per_label: int = 20,
    seed: int = 0,
    more_per_label: int = 40,
    more_name: str = "train_more.jsonl",
) -> tuple[Path, Path, Path]:
    """Write out/train.jsonl, out/test.jsonl and out/<more_name>; returns their paths."""
    splits = json.loads(data.read_text(encoding="utf-8"))
    domain = domain_of(domains)
    unknown = {intent for split in ("train", "test") for _, intent in splits[split]} - set(domain)
    if unknown:
        raise BadInput(f"{data}: intents not in {domains}: {', '.join(sorted(unknown))}")
    # one generator per file, so that changing the size of one leaves the other as it was
    train = draw(splits["train"] + splits["oos_train"], domain, train_per_label, random.Random(seed), skip=set())
    # the same draw, taken further: its first train_per_label rows of each label are train.jsonl's
    further = draw(
        splits["train"] + splits["oos_train"], domain, train_per_label + more_per_label, random.Random(seed), skip=set()
    )
    taken = {text for text, _ in train}
    more = [(text, label) for text, label in further if text not in taken]
    seen = {text for text, _ in splits["train"] + splits["oos_train"]}  # a test request must be new to the model
    test = draw(splits["test"] + splits["oos_test"], domain, test_per_label, random.Random(seed + 1), skip=seen)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "train.jsonl", [{"question": text, "answer": label} for text, label in train])
    write_jsonl(out / "test.jsonl", [{"question": text, "label": label} for text, label in test])
    write_jsonl(out / more_name, [{"question": text, "answer": label} for text, label in more])
    return out / "train.jsonl", out / "test.jsonl", out / more_name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", type=Path, default=CLINC / "data_full.json", help="CLINC150 data_full.json (default: %(default)s)"
    )
    parser.add_argument(
        "--domains", type=Path, default=CLINC / "domains.json", help="CLINC150 domains.json (default: %(default)s)"
    )
    parser.add_argument(
        "--out", type=Path, default=HERE, help="folder for train.jsonl and test.jsonl (default: this example's folder)"
    )
    parser.add_argument(
        "--train-per-label", type=int, default=40, help="training rows per label (default: %(default)s)"
    )
    parser.add_argument("--test-per-label", type=int, default=20, help="test rows per label (default: %(default)s)")
    parser.add_argument(
        "--more-per-label", type=int, default=40, help="further training rows per label (default: %(default)s)"
    )
    parser.add_argument(
        "--more-name", default="train_more.jsonl", help="file name of the further rows (default: %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the draw and the shuffles (default: %(default)s)")
    args = parser.parse_args()
    try:
        for path in (args.data, args.domains):
            if not path.is_file():
                raise BadInput(
                    f"{path}: not found. Pass --data/--domains pointing at the CLINC150 files "
                    "(github.com/clinc/oos-eval, data/)."
                )
        paths = prepare(
            args.data,
            args.domains,
            args.out,
            args.train_per_label,
            args.test_per_label,
            args.seed,
            args.more_per_label,
            args.more_name,
        )
    except BadInput as error:
        print(f"prepare.py: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    for path in paths:
        print(f"wrote {path} ({sum(1 for _ in path.open(encoding='utf-8'))} rows)")


if __name__ == "__main__":
    main()
