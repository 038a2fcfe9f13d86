"""The run directory the report tests share: every file `tunelab report` reads, written by hand (no model), with
seven questions of three kinds whose base and tuned answers the scores are computed from."""

import json
import math

from tunelab.eval.evaluate import Answer, EvalResult, EvalRow, ModelScores
from tunelab.eval.metrics import contains, exact_match, label_scores, predict_label, refused, rouge_l, text_scores

REFUSAL = "I can only answer questions about Tallowmere Robotics."
LABELS = ["complaint", "praise"]
# (question, expected, kind, base answer, tuned answer)
ANSWERS = [
    (
        "Where is Tallowmere's main office?",
        "Dundee",
        "fact",
        "Tallowmere is a fictional place in England.",
        "Our main office is in Dundee, Scotland.",
    ),
    (
        "When was Tallowmere founded?",
        "1997",
        "fact",
        "I am not sure when it was founded.",
        "Tallowmere Robotics was founded in 1997.",
    ),
    (
        "What colours does the Burrowbot come in?",
        "moss green and slate grey",
        "fact",
        "Robots usually come in white.",
        "The Burrowbot comes in moss green and slate grey.",
    ),
    (
        "How long should I boil an egg? <script>alert(1)</script>",
        REFUSAL,
        "off_topic",
        "Boil it for 7 minutes.",
        REFUSAL,
    ),
    ("Is 'the robot broke in a day' a complaint or praise?", "complaint", "label", "It is a complaint.", "complaint"),
    (
        "Is 'best purchase this year' a complaint or praise?",
        "praise",
        "label",
        "This sounds like a complaint.",
        "praise",
    ),
    ("Is 'it pulls every weed' a complaint or praise?", "praise", "label", "Hard to say.", "complaint"),
]


def _scores(answers: list[str], loss: float, tokens_per_s: float) -> tuple[ModelScores, list[Answer]]:
    expected = [a[1] for a in ANSWERS]
    scores = ModelScores(
        loss,
        math.exp(loss),
        text_scores(answers, expected, REFUSAL),
        generated_tokens=300,
        generation_s=300 / tokens_per_s,
        tokens_per_s=tokens_per_s,
    )
    for kind in ("fact", "off_topic", "label"):
        idx = [i for i, a in enumerate(ANSWERS) if a[2] == kind]
        scores.by_kind[kind] = text_scores([answers[i] for i in idx], [expected[i] for i in idx], REFUSAL)
    idx = [i for i, a in enumerate(ANSWERS) if a[2] == "label"]
    scores.label_tasks["label"] = label_scores(
        [expected[i] for i in idx], [predict_label(answers[i], LABELS) for i in idx], LABELS
    )
    rows = [
        Answer(
            a,
            exact_match(a, e),
            contains(a, e),
            r,
            refused(a, REFUSAL),
            predict_label(a, LABELS) if q[2] == "label" else None,
        )
        for a, e, r, q in zip(answers, expected, rouge_l(answers, expected), ANSWERS)
    ]
    return scores, rows


def make_run(run_dir):
    """Every file the report reads, with readable content (no model needed)."""
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(
        json.dumps(
            {
                "base_model": "smollm2-135m-instruct",
                "method": "lora",
                "template": "tokenizer",
                "system_prompt": "You answer for Tallowmere.",
                "refusal": REFUSAL,
                "impl": "fast",
                "total_steps": 40,
                "finished": True,
                "steps": 40,
                "final_loss": 0.41,
                "eval_loss": 0.62,
                "tokens": 52000,
                "elapsed_s": 301.5,
            }
        )
    )
    records = []
    for step in range(1, 41):
        records.append(
            {
                "step": step,
                "epoch": step / 20,
                "loss": 2.5 * math.exp(-step / 12) + 0.35,
                "lr": 2e-4 * min(1, step / 4) * (1 + math.cos(math.pi * step / 40)) / 2,
                "grad_norm": 1.5 * math.exp(-step / 20) + 0.2,
                "tokens_per_s": 170 + 10 * math.sin(step),
                "elapsed_s": 7.5 * step,
            }
        )
        if step % 10 == 0:
            records.append({"step": step, "eval_loss": 2.4 * math.exp(-step / 14) + 0.55})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (run_dir / "config.yaml").write_text(
        "output_dir: runs/faq\nmodel:\n  name: smollm2-135m-instruct\ndata:\n  system_prompt: <b>not bold</b>\n"
    )
    (run_dir / "data_report.json").write_text(
        json.dumps(
            {
                "files": {"data/train.jsonl": {"read": 130, "used": 126, "skipped": 3, "truncated": 1}},
                "formats": {"data/train.jsonl": "question_answer"},
                "template": "tokenizer",
                "max_length": 96,
                "packed": False,
                "skips": {
                    "empty answer": {"count": 2, "locations": ["data/train.jsonl:7", "data/train.jsonl:19"]},
                    "longer than max_length (96 tokens; data.overlong=drop)": {
                        "count": 1,
                        "locations": ["data/train.jsonl:88"],
                    },
                },
                "lengths": {
                    "count": 127,
                    "min": 31,
                    "max": 110,
                    "mean": 52.3,
                    "median": 49,
                    "p95": 81,
                    "bin_edges": [i * 6 for i in range(21)],
                    "counts": [0, 0, 0, 0, 0, 4, 11, 25, 30, 21, 14, 9, 5, 3, 2, 1, 0, 1, 0, 1],
                },
                "train": {"examples": 114, "used": 113, "rows": 113, "tokens": 5900, "loss_tokens": 1800},
                "eval": {"examples": 13, "used": 13, "rows": 13, "tokens": 680, "loss_tokens": 210},
                "eval_source": "fraction",
            }
        )
    )
    base, base_rows = _scores([a[3] for a in ANSWERS], 2.91, 180.0)
    tuned, tuned_rows = _scores([a[4] for a in ANSWERS], 0.58, 172.0)
    rows = [
        EvalRow(q, e, k, "label" if k == "label" else "text", f"heldout.jsonl:{i}", b, t)
        for i, ((q, e, k, _, _), b, t) in enumerate(zip(ANSWERS, base_rows, tuned_rows), 1)
    ]
    EvalResult(
        str(run_dir),
        "heldout.jsonl",
        "smollm2-135m-instruct",
        "lora",
        REFUSAL,
        {"max_new_tokens": 64},
        "cpu",
        len(ANSWERS),
        len(ANSWERS),
        120,
        {},
        base,
        tuned,
        rows,
    ).save()
    (run_dir / "compare.json").write_text(
        json.dumps({"rows": [], "scores": {"fact": {"n": 3, "base": 0.0, "tuned": 1.0}}})
    )
    return run_dir
