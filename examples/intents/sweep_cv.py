"""Choose the head variant's settings by 5-fold cross-validation on train.jsonl alone (test.jsonl is never read).

Each setting trains five times, each time on four fifths of the 440 training rows (seeded split, the same folds for
every setting) with the fifth as its eval split, and is scored by its accuracy over all 440 held-out predictions
(88 a fold): a setting's figure rests on 440 rows instead of the 44 of `eval_fraction: 0.1`. Prints one JSON line per
fold and a table of the settings, best first.

    python examples/intents/sweep_cv.py                              # every setting, one process
    python examples/intents/sweep_cv.py --worker 0 --workers 4       # a quarter of the (setting, fold) runs
    python examples/intents/sweep_cv.py --table --out runs/intents_cv/results.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from tunelab.api import train

HERE = Path(__file__).resolve().parent
FOLDS = 5

# The shipped prompt with the label set named before the request, so that the position the head reads has seen them.
LABELS_PROMPT = (
    "Domains: banking, credit cards, kitchen and dining, home, auto and commute, travel, utility, work, small talk, "
    "meta, or out of scope.\nRequest: {text}\nDomain:"
)

# name -> overrides of config_head.yaml (each changes one thing, or two that belong together)
SETTINGS: dict[str, dict] = {
    "shipped": {},  # config_head.yaml's options on the fold's rows alone, without train_more.jsonl
    "epochs 10": {"train.epochs": 10},
    "epochs 3": {"train.epochs": 3},
    "lr 1e-3": {"train.lr": 1e-3},
    "lr 4e-3": {"train.lr": 4e-3},
    "micro-batch 8": {"train.micro_batch": 8},
    "r 64": {"method.r": 64},
    "dropout 0.1": {"method.dropout": 0.1},
    "head_lr 2e-3": {"classify.head_lr": 2e-3},
    "label_words": {"classify.head_init": "label_words"},
    "full lr 1e-4": {"method.name": "full", "train.lr": 1e-4},
    "full lr 3e-5": {"method.name": "full", "train.lr": 3e-5},
    "full lr 3e-5 epochs 10": {"method.name": "full", "train.lr": 3e-5, "train.epochs": 10},
    "plain text": {"classify.prompt_format": None},
    "labels in the prompt": {"classify.prompt_format": LABELS_PROMPT},
    "labels in the prompt, label_words": {"classify.prompt_format": LABELS_PROMPT, "classify.head_init": "label_words"},
    "weight decay 0.1": {"train.weight_decay": 0.1},
    "epochs 7": {"train.epochs": 7},
    # More rows: "+rows" names a file of further CLINC150 training rows in --rows-dir, added to the training part of
    # every fold and never scored, so the held-out folds stay those of train.jsonl. train_more.jsonl is prepare.py's
    # (40 a label); train_more60.jsonl comes from `prepare.py --more-per-label 60 --more-name train_more60.jsonl`.
    "80 a label, 3 epochs": {"+rows": "train_more.jsonl", "train.epochs": 3},
    "80 a label, 5 epochs": {"+rows": "train_more.jsonl"},
    "100 a label, 3 epochs": {"+rows": "train_more60.jsonl", "train.epochs": 3},
}


def folds(rows: list[str], seed: int = 0) -> list[list[str]]:
    """FOLDS seeded parts of the rows, each label spread evenly over them (rows sorted by label, then dealt)."""
    order = list(rows)
    random.Random(seed).shuffle(order)
    order.sort(key=lambda line: json.loads(line)["answer"])  # stable: shuffled within each label
    return [order[i::FOLDS] for i in range(FOLDS)]


def run_one(
    name: str, fold: int, parts: list[list[str]], work: Path, max_steps: int | None = None, rows_dir: Path = HERE
) -> dict:
    folder = work / f"{name.replace(' ', '_').replace(',', '')}_fold{fold}"
    folder.mkdir(parents=True, exist_ok=True)
    setting = dict(SETTINGS[name])
    more = (rows_dir / setting.pop("+rows")).read_text() if "+rows" in setting else ""
    (folder / "train.jsonl").write_text("".join(r for i, p in enumerate(parts) if i != fold for r in p) + more)
    (folder / "eval.jsonl").write_text("".join(parts[fold]))
    overrides = {
        "data.train": [str(folder / "train.jsonl")],
        "data.eval": str(folder / "eval.jsonl"),
        "data.eval_fraction": 0.0,
        "train.eval_every": 0,  # one eval, at the end
        "train.save_every": 0,
        "train.keep_best": False,  # the last step's weights, scored once
        "output_dir": str(folder / "run"),
        "overwrite": True,
    } | setting
    if max_steps:
        overrides["train.max_steps"] = max_steps  # a smoke test of the script, not a measurement
    start = time.perf_counter()
    result = train(HERE / "config_head.yaml", overrides, check=False)
    metrics = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    last = [m for m in metrics if "eval_accuracy" in m][-1]
    return {
        "setting": name,
        "overrides": SETTINGS[name],
        "fold": fold,
        "eval_rows": len(parts[fold]),
        "eval_accuracy": last["eval_accuracy"],
        "eval_macro_f1": last["eval_macro_f1"],
        "eval_loss": last["eval_loss"],
        "steps": result.steps,
        "seconds": round(time.perf_counter() - start, 1),
    }


def table(path: Path) -> str:
    records = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    by: dict[tuple[str, str], list[dict]] = {}  # (setting, where it ran): a setting's name may have meant another
    for r in records:  # config then ("shipped"), and the same setting gives other figures on a CPU than on a GPU
        by.setdefault((r["setting"], r.get("device", "gpu bf16")), []).append(r)
    lines = ["| setting | device | folds | cv accuracy | per fold | mean eval loss |", "|---|---|---|---|---|---|"]
    scored = []
    for (name, device), rs in by.items():
        rs.sort(key=lambda r: r["fold"])
        rows = sum(r["eval_rows"] for r in rs)
        acc = sum(r["eval_accuracy"] * r["eval_rows"] for r in rs) / rows
        loss = sum(r["eval_loss"] for r in rs) / len(rs)
        per = " / ".join(f"{100 * r['eval_accuracy']:.1f}" for r in rs)
        scored.append((acc, f"| {name} | {device} | {len(rs)} | {100 * acc:.1f}% (n={rows}) | {per} | {loss:.3f} |"))
    return "\n".join(lines + [line for _, line in sorted(scored, reverse=True)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings", nargs="*", default=list(SETTINGS), help="names from SETTINGS (default: all)")
    ap.add_argument("--worker", type=int, default=0)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--work", default="runs/intents_cv", help="where fold files and runs go")
    ap.add_argument("--out", default="runs/intents_cv/results.jsonl")
    ap.add_argument("--table", action="store_true", help="print the table of --out and exit")
    ap.add_argument("--max-steps", type=int, default=None, help="cut each run short (to try the script)")
    ap.add_argument("--rows-dir", type=Path, default=HERE, help="where a setting's +rows files are (default: here)")
    args = ap.parse_args()
    out = Path(args.out)
    if args.table:
        print(table(out))
        return
    unknown = [s for s in args.settings if s not in SETTINGS]
    if unknown:
        ap.error(f"unknown settings {unknown}; choose from {list(SETTINGS)}")
    parts = folds((HERE / "train.jsonl").read_text().splitlines(keepends=True))
    jobs = [(name, fold) for name in args.settings for fold in range(FOLDS)]
    out.parent.mkdir(parents=True, exist_ok=True)
    for name, fold in jobs[args.worker :: args.workers]:
        record = run_one(name, fold, parts, Path(args.work) / f"w{args.worker}", args.max_steps, args.rows_dir)
        with out.open("a") as f:
            f.write(json.dumps(record) + "\n")
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
