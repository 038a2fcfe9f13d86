"""Train each example dataset with its config as it is (the model and the data, every training option left to the
defaults) and score the held-out questions, base model -> tuned model. Prints the table of README's "Defaults that
learn" and appends one JSON line per run to --out.

    python examples/defaults_check.py                              # all datasets, as in README
    python examples/defaults_check.py gadget_support --no-base     # one dataset, tuned answers only
    python examples/defaults_check.py company_faq --set train.lr=1e-3 --set train.epochs=5   # a sweep point

Each dataset folder holds `config.yaml` and `heldout.jsonl`: rows with `question` (one user turn) or `messages` (a
conversation ending with a user turn), `expected` (text a correct answer contains, case-insensitively) and `kind`.
Rows of kind `off_topic` expect the refusal sentence: their score is the refusal rate.

Timings: `train s` is the training loop's own elapsed time (run.json), `wall s` the whole `tunelab.train` call
(data, model load, training, saving). The load average is printed because the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import tunelab
from tunelab.data.sources import read_records
from tunelab.infer.compare import is_correct
from tunelab.infer.generate import GenerationSettings, generate_answers
from tunelab.infer.run import open_run

HERE = Path(__file__).resolve().parent
DEFAULT_DATASETS = ["lamp_support", "backup_cli", "ferry_chat", "company_faq"]


def heldout(folder: Path) -> list[dict]:
    rows = []
    for record in read_records([str(folder / "heldout.jsonl")]):
        row = record.row
        turns = row.get("messages") or [{"role": "user", "content": row["question"]}]
        rows.append({"messages": turns, "expected": row["expected"], "kind": row.get("kind", "fact")})
    return rows


def answers(model, run, rows: list[dict], max_new_tokens: int) -> list[str]:
    system = [{"role": "system", "content": run.system_prompt}] if run.system_prompt else []
    conversations = [system + r["messages"] for r in rows]
    settings = GenerationSettings(max_new_tokens=max_new_tokens)
    return generate_answers(model, run.tokenizer, run.template, conversations, settings)


def scores(rows: list[dict], replies: list[str]) -> dict[str, float]:
    """Share of correct answers per kind."""
    out = {}
    for kind in dict.fromkeys(r["kind"] for r in rows):
        pairs = [(r, a) for r, a in zip(rows, replies) if r["kind"] == kind]
        out[kind] = sum(is_correct(a, r["expected"]) for r, a in pairs) / len(pairs)
    return out


def check(name: str, sets: dict[str, str], runs: Path, with_base: bool, max_new_tokens: int) -> dict:
    folder = HERE / name
    run_dir = runs / name
    load_before = os.getloadavg()
    tic = time.perf_counter()
    tunelab.train(folder / "config.yaml", {"output_dir": str(run_dir), "overwrite": True, **sets})
    wall = time.perf_counter() - tic
    load_after = os.getloadavg()
    info = json.loads((run_dir / "run.json").read_text())
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    rows = heldout(folder)
    run = open_run(run_dir)
    tuned = answers(run.model, run, rows, max_new_tokens)
    result = {
        "dataset": name,
        "set": sets,
        "train_rows": json.loads((run_dir / "data_report.json").read_text())["train"]["used"],
        "steps": info["steps"],
        "auto": info.get("extra", {}).get("auto", {}),
        "train_s": info["elapsed_s"],
        "wall_s": round(wall, 1),
        "load": [round(x, 2) for x in load_before[:1] + load_after[:1]],
        "final_loss": info["final_loss"],
        "eval_loss": info["eval_loss"],
        "verdict": info.get("extra", {}).get("verdict"),
        "best": info.get("extra", {}).get("best"),
        "train_curve": [round(m["loss"], 4) for m in metrics if "loss" in m],
        "eval_curve": [[m["step"], round(m["eval_loss"], 4)] for m in metrics if "eval_loss" in m],
        "heldout": {k: len([r for r in rows if r["kind"] == k]) for k in dict.fromkeys(r["kind"] for r in rows)},
        "tuned": scores(rows, tuned),
        "tuned_answers": tuned,
    }
    if with_base:
        with run.base_model() as base:
            result["base"] = scores(rows, answers(base, run, rows, max_new_tokens))
    return result


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def table_row(r: dict) -> str:
    auto = r["auto"]
    lr = auto.get("train.lr", {}).get("value", r["set"].get("train.lr", "?"))
    cells = [r["dataset"], str(r["train_rows"]), str(r["steps"]), f"{lr:.2g}" if isinstance(lr, float) else str(lr)]
    cells += [f"{r['train_s']:.0f} s", f"{r['wall_s']:.0f} s", "{:.1f} -> {:.1f}".format(*r["load"])]
    for kind in ("fact", "off_topic"):
        if kind in r["tuned"]:
            base = _pct(r.get("base", {}).get(kind))
            cells.append(f"{base} -> {_pct(r['tuned'][kind])} (n={r['heldout'][kind]})")
        else:
            cells.append("-")
    return "| " + " | ".join(cells) + " |"


HEADER = (
    "| dataset | train rows | steps | lr | train s | wall s | load | held-out facts | held-out refusals |\n"
    "|---|---|---|---|---|---|---|---|---|"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("datasets", nargs="*", default=DEFAULT_DATASETS, help="example folders (default: all four)")
    parser.add_argument("--set", action="append", default=[], metavar="OPTION=VALUE", help="a training override")
    parser.add_argument("--runs", default="runs/defaults_check", help="where the run directories go")
    parser.add_argument("--out", default="runs/defaults_check/results.jsonl", help="JSON lines appended per run")
    parser.add_argument("--no-base", action="store_true", help="score the tuned model only")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    args = parser.parse_args()
    sets = dict(item.split("=", 1) for item in args.set)
    runs, out = Path(args.runs), Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = []
    for name in args.datasets:
        result = check(name, sets, runs, not args.no_base, args.max_new_tokens)
        with out.open("a") as f:
            f.write(json.dumps(result) + "\n")
        done.append(result)
        print(HEADER + "\n" + table_row(result), flush=True)
    print("\n" + HEADER)
    for r in done:
        print(table_row(r))


if __name__ == "__main__":
    main()
