"""The defaults on a real small set: examples/backup_cli trained with its config as shipped (the model and the data,
every training option auto) answers at least 80% of its held-out instructions on the embedded model. The other sets
and their timings are in README ("Defaults that learn"), measured by examples/defaults_check.py.

It trains 128 steps of the embedded model, about 200 s of a two-core machine, a fifth of the whole suite: `make test`
skips it and `make test-heldout` runs it."""

import json
from pathlib import Path

import pytest

import tunelab
from tunelab.eval.metrics import correct
from tunelab.eval.questions import read_questions
from tunelab.infer.generate import GenerationSettings, generate_answers
from tunelab.infer.run import open_run

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "backup_cli"


@pytest.mark.slow
@pytest.mark.heldout
def test_backup_cli_learns_with_the_defaults(tmp_path):
    result = tunelab.train(EXAMPLE / "config.yaml", {"output_dir": str(tmp_path / "run")})
    # 64 rows: micro-batch 2 (the power of two <= 64 / 32), 32 steps an epoch, 4 epochs for at least 100 steps
    assert result.auto["train.micro_batch"]["value"] == 2 and result.steps == 128
    run = open_run(result.run_dir)
    questions = read_questions(EXAMPLE / "heldout.jsonl", need_expected=True)
    settings = GenerationSettings(max_new_tokens=48)  # greedy, as the comparison after training
    answers, _ = generate_answers(run.model, run.tokenizer, run.template, [q.prompt for q in questions], settings)
    right = [correct(a, q.expected) for q, a in zip(questions, answers)]
    misses = [(q.text, q.expected, a) for q, a, ok in zip(questions, answers, right) if not ok]
    assert sum(right) / len(right) >= 0.8, json.dumps(misses, indent=1)
