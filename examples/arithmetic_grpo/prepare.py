"""Make the arithmetic prompts of examples/arithmetic_grpo: two-digit additions and subtractions, each with the
expected result. Deterministic (a seeded stdlib RNG), no downloads.

    python examples/arithmetic_grpo/prepare.py        # writes train.jsonl (400 prompts) and heldout.jsonl (50)

Each prompt asks for the reply as one line, the equation and its result ("40 + 85 = 125"); the rewards check that
form, the result, and how near a wrong result is. (Numbers in words, e.g. "forty-two", were tried first: the base
model's sampled answers never got one right nor wrote the asked-for form, so no answer scored above another.)
The held-out prompts are problems that never occur in train.jsonl.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

ASK = "What is {a} {op} {b}? Reply with one line: the equation and its result, like 12 + 7 = 19."


def problem(rng: random.Random) -> tuple[int, str, int]:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    op = rng.choice("+-")
    if op == "-" and b > a:
        a, b = b, a  # no negative results
    return a, op, b


def row(a: int, op: str, b: int) -> dict:
    return {"prompt": ASK.format(a=a, op=op, b=b), "expected": str(a + b if op == "+" else a - b)}


def main() -> None:
    rng = random.Random(14)
    seen, train, held = set(), [], []
    while len(train) + len(held) < 450:
        a, op, b = problem(rng)
        if (a, op, b) in seen:
            continue
        seen.add((a, op, b))
        (held if len(held) < 50 else train).append(row(a, op, b))
    here = Path(__file__).parent
    for name, rows in (("train.jsonl", train), ("heldout.jsonl", held)):
        (here / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"{here / name}: {len(rows)} prompts")


if __name__ == "__main__":
    main()
