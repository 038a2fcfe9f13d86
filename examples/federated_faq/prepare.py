"""Build this example's data from examples/company_faq: the FAQ split by department, and the server's eval set.

    faq_by_department.jsonl  company_faq/train.jsonl less the server's rows, each with a `department` column:
                             company (7 facts), support (7 facts) or product (6 facts); the off-topic questions
                             (answered with the refusal) are dealt to the three departments in turn
    server_eval.jsonl        what the server evaluates the global adapter on each round: one phrasing of every
                             fact and every tenth off-topic question, taken out of the training rows

`federated.split: column` on `department` gives each of the three clients one department: each holds facts the
others never see. Run: python examples/federated_faq/prepare.py (the outputs are committed; this regenerates them).
"""

import json
from pathlib import Path

HERE = Path(__file__).parent
SOURCE = HERE.parent / "company_faq" / "train.jsonl"
REFUSAL = "I'm sorry, I can only answer questions about Tallowmere Robotics."
# Each fact's answer sentence (company_faq/facts.md) contains its key string; the key decides the department.
DEPARTMENTS = {
    "company": ["1997", "Dundee", "Quarrel Lane", "Ottilie Varga", "Achterberg", "83 employees", "more evenings"],
    "support": ["help@tallowmere", "01632 960418", "7:30am", "27 months", "45 days", "6 to 9 working days", "cheques"],
    "product": ["flagship product", "649", "7.5 hours", "11 kg", "moss green", "Rootmap"],
}


def department(answer: str) -> str:
    found = [name for name, keys in DEPARTMENTS.items() for key in keys if key in answer]
    if len(found) != 1:
        raise SystemExit(f"cannot place answer {answer!r} in one department (matches: {found})")
    return found[0]


def main() -> None:
    rows = [json.loads(line) for line in SOURCE.read_text(encoding="utf-8").splitlines() if line.strip()]
    train, server, seen, off_topic = [], [], set(), 0
    for row in rows:
        if row["answer"] == REFUSAL:
            name = ("company", "support", "product")[off_topic % 3]
            to_server = off_topic % 10 == 9
            off_topic += 1
        else:
            name = department(row["answer"])
            to_server = row["answer"] not in seen  # the first phrasing of each fact
            seen.add(row["answer"])
        if to_server:
            server.append({"question": row["question"], "answer": row["answer"]})
        else:
            train.append({"question": row["question"], "answer": row["answer"], "department": name})
    for path, items in ((HERE / "faq_by_department.jsonl", train), (HERE / "server_eval.jsonl", server)):
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in items), encoding="utf-8")
        print(f"{path.name}: {len(items)} rows")


if __name__ == "__main__":
    main()
