"""Train each example dataset with its config as it is (the model and the data; the training options left to auto
in the three small sets and in company_faq) and score its held-out questions, base model -> tuned model. Prints the
table of README's "Defaults that learn" and appends one JSON line per run to --out.

    python examples/defaults_check.py                              # the four sets, as in README
    python examples/defaults_check.py lamp_support                 # one set
    python examples/defaults_check.py company_faq --set train.lr=1e-3 --set train.epochs=5   # a sweep point
    python examples/defaults_check.py ferry_chat --seeds 42 1 2    # one set at three seeds (42 is the default)

The held-out questions are scored by the comparison `tunelab train` runs after training when `eval.questions` is
set (eval/compare.py: greedy answers; right when the answer contains the row's `expected` text as a whole phrase),
so the numbers are those `tunelab compare` and `make demo` print. A set whose config names no `eval.questions` gets
its `heldout.jsonl` as an override; nothing else is changed. Rows of kind `off_topic` expect the refusal sentence:
their score is the refusal rate.

Timings, each for the whole training call (data, model load, the loop, saving; not answering the questions):
`cpu s` is this process's CPU time over it (user + system, all threads), which other jobs on the machine do not
stretch; `wall s` its wall time, which they do; `load` the 1-minute load average (os.getloadavg) at its start and
end, so that a reader can tell how shared the cores were. `train s` is the training loop's own wall time (run.json
`elapsed_s`). The number of threads torch used is recorded too.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

import torch

from tunelab.config import load_config
from tunelab.eval.compare import compare_after_training
from tunelab.training.recipe import train

HERE = Path(__file__).resolve().parent
DEFAULT_DATASETS = ["lamp_support", "backup_cli", "ferry_chat", "company_faq"]


def _cpu_s() -> float:
    """CPU seconds this process has used, all threads: unlike wall time, not stretched by other jobs."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def check(name: str, sets: dict[str, str], runs: Path) -> dict:
    folder = HERE / name
    run_dir = runs / name
    overrides = {"output_dir": str(run_dir), "overwrite": True}
    if not load_config(folder / "config.yaml").config.eval.questions:
        overrides["eval.questions"] = str(folder / "heldout.jsonl")
    resolved = load_config(folder / "config.yaml", overrides | sets)
    load_before, cpu_before, wall_before = os.getloadavg(), _cpu_s(), time.perf_counter()
    result = train(resolved)
    wall, cpu = time.perf_counter() - wall_before, _cpu_s() - cpu_before
    load_after = os.getloadavg()
    compare_after_training(run_dir, resolved.config)  # what tunelab.train runs next, and make demo prints
    info = json.loads((run_dir / "run.json").read_text())
    compared = json.loads((run_dir / "compare.json").read_text())
    chosen = {k: v["value"] for k, v in result.auto.items()}
    trained = load_config(run_dir / "config.yaml").config.train
    return {
        "dataset": name,
        "seed": resolved.config.train.seed,
        "set": sets,
        "train_rows": json.loads((run_dir / "data_report.json").read_text())["train"]["used"],
        "steps": result.steps,
        "lr": chosen.get("train.lr", trained.lr),
        "micro_batch": chosen.get("train.micro_batch", trained.micro_batch),
        "epochs": chosen.get("train.epochs", trained.epochs),
        "auto": result.auto,
        "train_s": info["elapsed_s"],
        "train_cpu_s": round(cpu, 1),
        "train_wall_s": round(wall, 1),
        "load": [round(load_before[0], 2), round(load_after[0], 2)],
        "load_avg_before": [round(x, 2) for x in load_before],  # 1, 5 and 15 minutes
        "load_avg_after": [round(x, 2) for x in load_after],
        "threads": torch.get_num_threads(),
        "final_loss": info["final_loss"],
        "eval_loss": info["eval_loss"],
        "best": info["extra"].get("best"),
        "verdict": info["extra"]["verdict"]["text"],
        "scores": compared["scores"],
        "answers": [{k: r[k] for k in ("question", "expected", "kind", "tuned", "tuned_ok")} for r in compared["rows"]],
    }


def _score(r: dict, kind: str) -> str:
    s = r["scores"].get(kind)
    if s is None:
        return "-"
    return f"{100 * s['base']:.1f}% -> **{100 * s['tuned']:.1f}%** (n={s['n']})"


def _num(value) -> str:
    return f"{value:.3g}" if isinstance(value, int | float) else str(value)


def table_row(r: dict) -> str:
    steps = f"{r['steps']} ({_num(r['micro_batch'])} x {_num(r['epochs'])} epochs)"
    cells = [r["dataset"], str(r["seed"]), str(r["train_rows"]), steps, _num(r["lr"])]
    cells += [f"{r['train_cpu_s']:.0f} s", f"{r['train_wall_s']:.0f} s", "{:.1f} -> {:.1f}".format(*r["load"])]
    cells += [_score(r, "fact"), _score(r, "off_topic"), r["verdict"].split(":")[0]]
    return "| " + " | ".join(cells) + " |"


HEADER = (
    "| dataset | seed | train rows | steps (micro-batch x epochs) | lr | cpu s | wall s | load | held-out facts | "
    "held-out refusals | verdict |\n|---|---|---|---|---|---|---|---|---|---|---|"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("datasets", nargs="*", default=DEFAULT_DATASETS, help="example folders (default: all four)")
    parser.add_argument("--set", action="append", default=[], metavar="OPTION=VALUE", help="a training override")
    parser.add_argument(
        "--seeds", nargs="+", type=int, default=[], metavar="SEED", help="train each set once per seed (train.seed)"
    )
    parser.add_argument("--runs", default="runs/defaults_check", help="where the run directories go")
    parser.add_argument("--out", default="runs/defaults_check/results.jsonl", help="JSON lines appended per run")
    args = parser.parse_args()
    sets = dict(item.split("=", 1) for item in args.set)
    runs, out = Path(args.runs), Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = []
    seeds = [{"train.seed": str(seed)} for seed in args.seeds] or [{}]
    for name, seed in [(name, seed) for name in args.datasets for seed in seeds]:
        result = check(name, sets | seed, runs)
        with out.open("a") as f:
            f.write(json.dumps(result) + "\n")
        done.append(result)
        print(HEADER + "\n" + table_row(result), flush=True)
    print("\n" + HEADER)
    for r in done:
        print(table_row(r))


if __name__ == "__main__":
    main()
