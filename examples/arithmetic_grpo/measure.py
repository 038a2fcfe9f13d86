"""Greedy mean reward of the arithmetic_grpo prompts held out from training, for the base model or a finished run:
the task's own eval (tasks/grpo.py), run on its own.

    python examples/arithmetic_grpo/measure.py examples/arithmetic_grpo/config.yaml            # the base model
    python examples/arithmetic_grpo/measure.py examples/arithmetic_grpo/config.yaml RUN_DIR    # base + its adapter

Prints the mean total reward and each function's mean (format, correct) over data.eval's prompts as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

from tunelab.config import load_config
from tunelab.tasks import get_task
from tunelab.training.prepare import load_inputs, load_model


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Greedy mean reward of the arithmetic_grpo held-out prompts (data.eval), for the base model or a "
        "finished run; prints one JSON line: the mean total reward and each reward function's mean.",
    )
    parser.add_argument("config", help="the example's config, e.g. examples/arithmetic_grpo/config.yaml")
    parser.add_argument(
        "run_dir", nargs="?", default=None, help="a finished run whose adapter goes over the base (default: the base)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    config, run_dir = args.config, args.run_dir
    cfg = load_config(config, {"model.adapter": run_dir} if run_dir else {}).config
    task = get_task("grpo", cfg)
    inputs = load_inputs(cfg, task)
    built, _ = load_model(cfg, inputs)
    task.prepare(built, inputs.data, cfg)
    batches = task.make_batches(inputs.data.eval, 1, inputs.tokenizer.pad_token_id, shuffle=False, seed=0, epoch=0)
    tic = time.perf_counter()
    result = task.evaluate(built.model, batches)
    result = {"model": run_dir or cfg.model.name, "prompts": len(inputs.data.eval)} | result
    print(json.dumps(result | {"seconds": round(time.perf_counter() - tic, 1)}))


if __name__ == "__main__":
    main()
