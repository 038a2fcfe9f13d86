"""The federated adapter beside centralized training on all the data and beside each client trained alone.

    python examples/federated_faq/benchmark.py [--out runs/federated_faq_benchmark] [--parts federated,centralized,client-1,...]
    python examples/federated_faq/benchmark.py --table          # the table of what --out holds

- federated: `tunelab federate config.yaml` (3 clients, one department each, FedAvg);
- centralized: `tunelab train` on all of faq_by_department.jsonl with the same model, LoRA, learning rate and
  schedule, for 3 epochs (as examples/company_faq trains);
- client-N: `tunelab train` on that client's shard only (the rows the federation gave it), for as many steps as it
  trained in the federation (rounds x local_steps).
Each model answers company_faq/heldout.jsonl (questions none of them saw), greedy, 48 new tokens, scored as
`tunelab compare` scores them (correct when the answer contains the expected text). The base model's score is the
same for every run, so only the tuned model answers here. Parts can run in separate processes; each writes
OUT/PART/heldout_scores.json.
"""

import argparse
import dataclasses
import json
import time
from pathlib import Path

import tunelab
from tunelab.config import FederatedConfig, ResolvedConfig, iter_options, load_config
from tunelab.data.sources import read_records
from tunelab.eval.metrics import correct as is_correct
from tunelab.eval.questions import read_questions
from tunelab.federated.shards import client_data
from tunelab.infer.generate import GenerationSettings, generate_answers

HERE = Path(__file__).parent
CONFIG = HERE / "config.yaml"
PARTS = ("federated", "centralized", "client-1", "client-2", "client-3")


def _resolved(config) -> ResolvedConfig:
    return ResolvedConfig(config, {name: "benchmark.py" for name, _, _ in iter_options()})


def heldout_scores(run_dir: Path, questions_path: str, max_new_tokens: int) -> dict:
    """Per kind: n and the fraction the tuned model gets right, as `tunelab compare` scores it."""
    run = tunelab.open_run(run_dir)
    questions = read_questions(questions_path)
    system = [{"role": "system", "content": run.system_prompt}] if run.system_prompt else []
    conversations = [system + [{"role": "user", "content": q.text}] for q in questions]
    answers = generate_answers(
        run.model, run.tokenizer, run.template, conversations, GenerationSettings(max_new_tokens=max_new_tokens)
    )
    scores: dict[str, dict] = {}
    for q, answer in zip(questions, answers):
        entry = scores.setdefault(q.kind, {"n": 0, "correct": 0})
        entry["n"] += 1
        entry["correct"] += is_correct(answer, q.expected)
    return scores


def run_part(part: str, out: Path) -> None:
    base = load_config(CONFIG).config
    f = base.federated
    run_dir = out / part
    tic = time.perf_counter()
    if part == "federated":
        overrides = {"output_dir": str(run_dir), "overwrite": True, "eval.questions": None}
        tunelab.federate(CONFIG, overrides)
        label, steps = "federated (3 clients, FedAvg)", f"{f.rounds} rounds x {f.local_steps} steps x 3 clients"
    else:
        if part == "centralized":
            files, train, label = [f.split_file], {"epochs": 3.0}, "centralized (all the data)"
        else:
            client = next(c for c in client_data(f, base.train.seed) if c.name == part)
            rows = client.shard.select(read_records([f.split_file]))
            shard = out / f"{part}.jsonl"
            shard.write_text("".join(json.dumps(r.row) + "\n" for r in rows))
            files, train = [str(shard)], {"max_steps": f.rounds * f.local_steps}
            label = f"{part} alone ({', '.join(sorted({r.row[f.split_column] for r in rows}))})"
        cfg = dataclasses.replace(
            base,
            output_dir=str(run_dir),
            overwrite=True,
            data=dataclasses.replace(base.data, train=files),
            train=dataclasses.replace(base.train, **train),
            eval=dataclasses.replace(base.eval, questions=None),
            federated=FederatedConfig(),
        )
        result = tunelab.train(_resolved(cfg))
        steps = f"{result.steps} steps"
    seconds = time.perf_counter() - tic
    scores = heldout_scores(run_dir, base.eval.questions, base.eval.max_new_tokens)
    record = {"part": part, "model": label, "steps": steps, "train_seconds": round(seconds), "scores": scores}
    (run_dir / "heldout_scores.json").write_text(json.dumps(record, indent=2))
    print(json.dumps(record), flush=True)


def table(out: Path) -> None:
    records = [
        json.loads((out / p / "heldout_scores.json").read_text())
        for p in PARTS
        if (out / p / "heldout_scores.json").is_file()
    ]
    central = next((r["scores"] for r in records if r["part"] == "centralized"), None)

    def pct(s: dict) -> str:
        return f"{100 * s['correct'] / s['n']:.1f}% ({s['correct']}/{s['n']})"

    print("| model | trained | facts correct | off-topic refused | all correct | facts vs centralized | time |")
    print("|---|---|---|---|---|---|---|")
    for r in records:
        s = r["scores"]
        total = {"n": sum(v["n"] for v in s.values()), "correct": sum(v["correct"] for v in s.values())}
        ratio = f"{100 * s['fact']['correct'] / central['fact']['correct']:.0f}%" if central else "-"
        print(
            f"| {r['model']} | {r['steps']} | {pct(s['fact'])} | {pct(s['off_topic'])} | {pct(total)} | {ratio} "
            f"| {r['train_seconds']} s |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/federated_faq_benchmark", help="folder for the runs and scores")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of: {', '.join(PARTS)}")
    parser.add_argument("--table", action="store_true", help="only print the table of the scores in --out")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.table:
        for part in args.parts.split(","):
            run_part(part.strip(), out)
    table(out)


if __name__ == "__main__":
    main()
