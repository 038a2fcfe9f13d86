"""The federated adapter beside centralized training on all the data and beside each client trained alone.

    python examples/federated_faq/benchmark.py [--out runs/federated_faq_benchmark]

1. federated: `tunelab federate config.yaml` (3 clients, one department each, FedAvg);
2. centralized: `tunelab train` on all of faq_by_department.jsonl with the same model, LoRA, learning rate and
   schedule, for 3 epochs (as examples/company_faq trains);
3. each client alone: `tunelab train` on that client's shard only (the same rows the federation gave it), for as
   many steps as it trained in the federation (rounds x local_steps).
Every model answers company_faq/heldout.jsonl (questions none of them saw), scored as `tunelab compare` scores:
correct when the answer contains the expected text. Prints a table and writes results.json; takes about an hour
on a 2-core CPU.
"""

import argparse
import dataclasses
import json
import time
from pathlib import Path

import tunelab
from tunelab.config import FederatedConfig, ResolvedConfig, iter_options, load_config
from tunelab.data.sources import read_records
from tunelab.federated.shards import client_data

HERE = Path(__file__).parent
CONFIG = HERE / "config.yaml"


def _resolved(config) -> ResolvedConfig:
    return ResolvedConfig(config, {name: "benchmark.py" for name, _, _ in iter_options()})


def _scores(run_dir: Path) -> dict:
    scores = json.loads((run_dir / "compare.json").read_text())["scores"]
    return {kind: {"n": s["n"], "tuned": s["tuned"], "base": s["base"]} for kind, s in scores.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/federated_faq_benchmark", help="folder for the runs and results.json")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = load_config(CONFIG).config
    f = base.federated
    results = []

    tic = time.perf_counter()
    fed_dir = out / "federated"
    tunelab.federate(CONFIG, {"output_dir": str(fed_dir), "overwrite": True})
    results.append(
        {"model": "federated (3 clients, FedAvg)", "run": str(fed_dir), "seconds": time.perf_counter() - tic}
    )

    def train_alone(name: str, files: list[str], overrides: dict) -> dict:
        run_dir = out / name
        cfg = dataclasses.replace(
            base,
            output_dir=str(run_dir),
            overwrite=True,
            data=dataclasses.replace(base.data, train=files),
            train=dataclasses.replace(base.train, **overrides),
            federated=FederatedConfig(),
        )
        tic = time.perf_counter()
        result = tunelab.train(_resolved(cfg))
        return {"run": str(run_dir), "steps": result.steps, "seconds": time.perf_counter() - tic}

    results.append({"model": "centralized (all data)"} | train_alone("centralized", [f.split_file], {"epochs": 3.0}))
    records = read_records([f.split_file])
    for client in client_data(f, base.train.seed):
        shard = out / f"{client.name}.jsonl"
        shard.write_text("".join(json.dumps(r.row) + "\n" for r in client.shard.select(records)))
        departments = sorted({r.row[f.split_column] for r in client.shard.select(records)})
        results.append(
            {"model": f"{client.name} alone ({', '.join(departments)})"}
            | train_alone(client.name, [str(shard)], {"max_steps": f.rounds * f.local_steps})
        )

    for row in results:
        row["scores"] = _scores(Path(row["run"]))
    central = next(r for r in results if r["model"].startswith("centralized"))["scores"]
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"\n{'model':<40} {'facts':>14} {'off-topic':>14} {'all':>14} {'vs centralized':>15} {'time':>8}")
    for row in results:
        s = row["scores"]
        n_all = s["fact"]["n"] + s["off_topic"]["n"]
        all_ok = (s["fact"]["tuned"] * s["fact"]["n"] + s["off_topic"]["tuned"] * s["off_topic"]["n"]) / n_all
        c_all = (
            central["fact"]["tuned"] * s["fact"]["n"] + central["off_topic"]["tuned"] * s["off_topic"]["n"]
        ) / n_all
        cells = [
            f"{100 * s[k]['tuned']:5.1f}% ({round(s[k]['tuned'] * s[k]['n'])}/{s[k]['n']})"
            for k in ("fact", "off_topic")
        ]
        print(
            f"{row['model']:<40} {cells[0]:>14} {cells[1]:>14} {100 * all_ok:13.1f}% "
            f"{100 * s['fact']['tuned'] / max(central['fact']['tuned'], 1e-9):6.1f}% facts {row['seconds']:7.0f}s"
        )
        row["all"], row["all_centralized"] = all_ok, c_all


if __name__ == "__main__":
    main()
