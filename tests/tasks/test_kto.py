"""Task dpo with loss kto: the loss against hand computations (z0's clamping and detaching, the two weights), the
unpaired rows (labels read, mismatched sides, the balance note), the bad rows named, a CLI run whose loss falls with
its metrics and eval, exact resume, the Python API on LoRA, DoRA, QLoRA and full, tunelab check, and the same scores
on the fast and the generic path."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from tunelab.api import train
from tunelab.cli import main
from tunelab.config import MethodConfig, ModelConfig, load_config
from tunelab.config.load import stage_config
from tunelab.data.render import IGNORE
from tunelab.errors import DataError
from tunelab.models.load import load_tokenizer, resolve_source
from tunelab.tasks import dpo
from tunelab.tasks.kto import kto_scores, metric_sums
from tunelab.tasks.kto_data import build_feedback
from tunelab.training.build import build_model
from tunelab.training.step import train_step
from tunelab.training.verdict import high_loss, judge_metrics

from ..smollm2_vocab import smollm2_tiny_model_dir, smollm2_tiny_tokenizer  # noqa: F401 (SmolLM2's vocabulary)


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture
def feedback_file(tmp_path):
    """Box questions: the right code is desirable, 'No idea.' undesirable, alternating."""
    rows = [
        {
            "prompt": f"What is the code of box {i}?",
            "completion": f"Box {i} has code {1000 + 37 * i}." if i % 2 == 0 else "No idea.",
            "label": i % 2 == 0,
        }
        for i in range(16)
    ]
    return _write(tmp_path / "feedback.jsonl", rows)


def _sigmoid(x):
    return 1 / (1 + math.exp(-x))


# Three rows: policy and reference summed log p, the rows' own completions first, then their mismatched ones.
POLICY = torch.tensor([-10.0, -20.0, -15.0, -30.0, -31.0, -29.0])
DESIRABLE = torch.tensor([True, False, True])


def test_kto_loss_by_hand_with_a_positive_kl_estimate():
    reference = torch.tensor([-12.0, -19.0, -15.0, -31.0, -33.0, -29.0])
    s = kto_scores(POLICY, reference, DESIRABLE, 0.5, 2.0, 3.0)
    z0 = (1 + 2 + 0) / 3  # mean of the mismatched rows' log ratios: positive, kept
    assert s.z0.item() == pytest.approx(z0)
    r = [2.0, -1.0, 0.0]
    want = [2.0 * (1 - _sigmoid(0.5 * (r[0] - z0))), 3.0 * (1 - _sigmoid(0.5 * (z0 - r[1]))), 0]
    want[2] = 2.0 * (1 - _sigmoid(0.5 * (r[2] - z0)))
    assert s.loss.tolist() == pytest.approx(want, rel=1e-6)
    assert s.reward.tolist() == pytest.approx([0.5 * x for x in r])
    sums = metric_sums(s)
    assert sums["kl"].item() == pytest.approx(3 * z0)  # divided by the step's rows: z0
    assert sums["desirable_reward"].item() == pytest.approx(0.5 * (2.0 + 0.0))
    assert sums["undesirable_reward"].item() == pytest.approx(-0.5)
    assert sums["accuracy"].item() == 2.0  # rows 0 and 1 are on their side of z0, row 2 (r 0 < z0) is not


def test_rewards_by_label_are_each_labels_mean_over_the_step_and_the_eval_split(tiny_model_dir, feedback_file):
    """Two micro-batches of 3 rows, labels 1+2 desirable: the logged rewards are means over each label's rows of the
    whole step (not sums over all 6 rows); eval the same."""
    cfg = _config(tiny_model_dir, feedback_file, **{"data.max_length": 64})
    data = build_feedback(cfg, load_tokenizer(resolve_source(str(tiny_model_dir))), 0)
    rows = [data.train[0], data.train[1], data.train[3], data.train[5], data.train[7], data.train[2]]
    for k, row in enumerate(rows):  # a reference that differs from the policy, unlike for each row
        row.reference = (-40.0 - 3 * k, -45.0 + k)
    batches = [dpo.collate(rows[:3], data.facts["pad_id"]), dpo.collate(rows[3:], data.facts["pad_id"])]
    assert [b["desirable"].tolist() for b in batches] == [[True, False, False], [False, False, True]]
    built = build_model(resolve_source(str(tiny_model_dir)), ModelConfig(device="cpu"), MethodConfig())
    rewards = torch.cat([dpo.scores(built.model, b, cfg.dpo).reward for b in batches]).detach()
    desirable = torch.cat([b["desirable"] for b in batches])
    want = {
        "desirable_reward": rewards[desirable].mean().item(),
        "undesirable_reward": rewards[~desirable].mean().item(),
    }
    task = dpo.make_task(cfg.dpo)
    got = task.evaluate(built.model, batches)
    assert got["eval_desirable_reward"] == pytest.approx(want["desirable_reward"], rel=1e-4)
    assert got["eval_undesirable_reward"] == pytest.approx(want["undesirable_reward"], rel=1e-4)
    assert not any(":" in name for name in got)  # the counts divide, they are not logged
    optimizer = torch.optim.SGD([p for p in built.model.parameters() if p.requires_grad], lr=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    stats = train_step(built.model, batches, optimizer, scheduler, 1.0, task)
    assert stats["metrics"]["desirable_reward"] == pytest.approx(want["desirable_reward"], rel=1e-4)
    assert stats["metrics"]["undesirable_reward"] == pytest.approx(want["undesirable_reward"], rel=1e-4)
    assert set(stats["metrics"]) == {"kl", "desirable_reward", "undesirable_reward", "accuracy"}
    only_bad = [dpo.collate(rows[1:3], data.facts["pad_id"])]
    only_bad = train_step(built.model, only_bad, optimizer, scheduler, 1.0, task)
    assert "desirable_reward" not in only_bad["metrics"]  # no desirable row: no mean, rather than a 0


def test_kto_clamps_a_negative_kl_estimate_at_zero_and_trains_nothing_through_it():
    reference = torch.tensor([-12.0, -19.0, -15.0, -28.0, -30.0, -27.0])  # mismatched log ratios -2, -1, -2
    policy = POLICY.clone().requires_grad_()
    s = kto_scores(policy, reference, DESIRABLE, 0.5, 1.0, 1.0)
    assert s.z0.item() == 0.0
    want = [1 - _sigmoid(0.5 * 2.0), 1 - _sigmoid(0.5 * 1.0), 1 - _sigmoid(0.0)]
    assert s.loss.tolist() == pytest.approx(want, rel=1e-6)
    s.loss.sum().backward()
    assert policy.grad[3:].abs().sum().item() == 0.0  # z0 is detached: the mismatched rows take no gradient
    # d/dr w (1 - sigmoid(beta r)) = -w beta sigmoid' ; undesirable: +w beta sigmoid'
    grads = [-0.5 * _sigmoid(1.0) * (1 - _sigmoid(1.0)), 0.5 * _sigmoid(0.5) * (1 - _sigmoid(0.5)), -0.5 * 0.25]
    assert policy.grad[:3].tolist() == pytest.approx(grads, rel=1e-5)


def test_kto_weights_scale_only_their_own_rows():
    reference = POLICY.clone()
    one = kto_scores(POLICY, reference, DESIRABLE, 0.1, 1.0, 1.0).loss
    weighted = kto_scores(POLICY, reference, DESIRABLE, 0.1, 1.5, 4.0).loss
    assert one.tolist() == pytest.approx([0.5, 0.5, 0.5])  # policy == reference: r = z0 = 0
    assert weighted.tolist() == pytest.approx([0.75, 2.0, 0.75])


def _config(model_dir, data, **extra):
    return load_config(
        None, {"task": "dpo", "dpo.loss": "kto", "model.name": str(model_dir), "data.train": [data]} | extra
    ).config


def test_the_verdict_judges_kto_on_its_own_scale():
    """kto's loss starts at half the rows' mean weight: a run settled at 0.3 (from 0.5) has moved little on kto's
    scale, where the pair losses' ln 2 / 2 would call it fine; with weights of 0.5 a run that learned nothing sits at
    0.25."""
    assert high_loss("dpo", kto_weight=1.0) == pytest.approx(0.25)
    records = [{"step": s, "loss": 0.3 + 0.2 * 0.8**s} for s in range(1, 41)]  # 0.46 -> 0.30 a row
    pairs = judge_metrics(records, 10, 4.0, 1e-4, task="dpo")
    kto = judge_metrics(records, 10, 4.0, 1e-4, task="dpo", kto_weight=1.0)
    assert pairs.kind == "fine" and kto.kind == "underfit", (pairs.text, kto.text)
    assert "kto's scale" in kto.text and "0.5 before training" in kto.text and "high: 0.250" in kto.text
    flat = [{"step": s, "loss": 0.25} for s in range(1, 41)]  # weights 0.5: no row moved from where it started
    assert judge_metrics(flat, 10, 4.0, 1e-4, task="dpo", kto_weight=0.5).kind == "underfit"
    assert judge_metrics(flat, 10, 4.0, 1e-4, task="dpo").kind == "fine"


def test_rows_take_the_previous_rows_completion_as_their_mismatched_side(tiny_model_dir, feedback_file):
    cfg = _config(tiny_model_dir, feedback_file, **{"data.max_length": 64})
    tokenizer = load_tokenizer(resolve_source(str(tiny_model_dir)))
    data = build_feedback(cfg, tokenizer, 0)
    rows = data.train
    assert [r.desirable for r in rows] == [i % 2 == 0 for i in range(16)]

    def answer(ids, labels):
        return tokenizer.decode([t for t, lab in zip(ids, labels) if lab != IGNORE])

    for k, row in enumerate(rows):
        before = rows[k - 1]
        assert answer(row.rejected_ids, row.rejected_labels) == answer(before.chosen_ids, before.chosen_labels)
        start = next(i for i, t in enumerate(row.chosen_labels) if t != IGNORE)
        assert row.rejected_ids[:start] == row.chosen_ids[:start]  # the row's own prompt
    assert not any("desirable" in n for n in data.report.notes)  # 8 and 8: a ratio of 1


def test_a_prompts_rows_side_by_side_take_another_prompts_completion(tiny_model_dir, tmp_path):
    """Paired feedback written row by row (a prompt's good answer, then its bad one): the row before a bad answer is
    the good answer to the same prompt, which would not be a mismatched pair; the nearest other prompt's is taken."""
    rows = [
        {"prompt": f"q{i}", "completion": f"{side} {i}", "label": side == "good"}
        for i in range(3)
        for side in ("good", "bad")
    ]
    cfg = _config(tiny_model_dir, _write(tmp_path / "f.jsonl", rows))
    tokenizer = load_tokenizer(resolve_source(str(tiny_model_dir)))
    data = build_feedback(cfg, tokenizer, 0)

    def answer(ids, labels):
        return tokenizer.decode([t for t, lab in zip(ids, labels) if lab != IGNORE], skip_special_tokens=True).strip()

    got = [answer(r.rejected_ids, r.rejected_labels) for r in data.train]
    assert got == ["bad 2", "bad 2", "bad 0", "bad 0", "bad 1", "bad 1"]


def test_labels_are_read_in_their_spellings_and_imbalance_is_noted(tiny_model_dir, tmp_path):
    labels = ["TRUE", "no", 1, 0, "Yes", "1", True, "false", "true", "true"]
    rows = [{"Prompt": f"q{i}", "Completion": f"a{i}", "Label": lab} for i, lab in enumerate(labels)]
    path = _write(tmp_path / "f.jsonl", rows)
    data = build_feedback(_config(tiny_model_dir, path), load_tokenizer(resolve_source(str(tiny_model_dir))), 0)
    assert [r.desirable for r in data.train] == [True, False, True, False, True, True, True, False, True, True]
    note = next(n for n in data.report.notes if "KTO paper" in n)
    assert "7 desirable and 3 undesirable" in note and "2.33" in note and "undesirable_weight 2.33" in note

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"prompt": ["q0", "q1", "q2"], "completion": ["a", "b", "c"], "label": [True, False, None]})
    pq.write_table(table, tmp_path / "f.parquet")
    parquet = _config(tiny_model_dir, str(tmp_path / "f.parquet"))
    with pytest.raises(DataError, match=r"f.parquet\[2\]: field 'label' is missing"):
        build_feedback(parquet, load_tokenizer(resolve_source(str(tiny_model_dir))), 0)
    pq.write_table(table.slice(0, 2), tmp_path / "f.parquet")
    data = build_feedback(parquet, load_tokenizer(resolve_source(str(tiny_model_dir))), 0)
    assert [r.desirable for r in data.train] == [True, False]

    one_class = _write(
        tmp_path / "one.jsonl", [{"prompt": f"q{i}", "completion": "a", "label": True} for i in range(3)]
    )
    data = build_feedback(_config(tiny_model_dir, one_class), load_tokenizer(resolve_source(str(tiny_model_dir))), 0)
    assert any(n.startswith("all 3 training rows are desirable") for n in data.report.notes)


def test_a_row_whose_prompt_fills_max_length_is_refused_with_truncate_and_dropped_with_drop(tiny_model_dir, tmp_path):
    rows = [{"prompt": "word " * 100, "completion": "Yes.", "label": True}]
    rows += [{"prompt": f"q{i}", "completion": f"a{i}", "label": i % 2 == 0} for i in range(4)]
    path = _write(tmp_path / "f.jsonl", rows)
    tokenizer = load_tokenizer(resolve_source(str(tiny_model_dir)))
    short = {"data.max_length": 64, "data.eval_fraction": 0.0}
    with pytest.raises(
        DataError, match=r"f\.jsonl:1: the prompt is \d+ tokens, which leaves no room for the completion"
    ):
        build_feedback(_config(tiny_model_dir, path, **short, **{"data.overlong": "truncate"}), tokenizer, 0)
    data = build_feedback(_config(tiny_model_dir, path, **short, **{"data.overlong": "drop"}), tokenizer, 0)
    assert data.report.skips["longer than max_length (64 tokens; data.overlong=drop)"].locations == [f"{path}:1"]
    assert len(data.train) == 4


def test_a_completion_labelled_both_ways_is_noted_with_its_rows(tiny_model_dir, tmp_path):
    """Rows 1 and 2 give one prompt and completion both labels, rows 3 and 5 another; row 4 answers row 1's prompt
    otherwise (no conflict). Noted, counted, with the first two rows; the data still loads."""
    rows = [
        {"prompt": "Capital of France?", "completion": "Paris.", "label": True},
        {"prompt": "Capital of France?", "completion": "Paris.", "label": "no"},
        {"prompt": "Two plus two?", "completion": "Four.", "label": 1},
        {"prompt": "Capital of France?", "completion": "Lyon.", "label": False},
        {"prompt": "Two plus two?", "completion": "Four.", "label": False},
        {"prompt": "Colour of the sky?", "completion": "Blue.", "label": True},
    ]
    path = _write(tmp_path / "f.jsonl", rows)
    tokenizer = load_tokenizer(resolve_source(str(tiny_model_dir)))
    data = build_feedback(_config(tiny_model_dir, path, **{"data.max_length": 64}), tokenizer, 0)
    assert len(data.train) == 6
    (note,) = [n for n in data.report.notes if "labels the other way" in n]
    assert note.startswith("4 of the 6 feedback rows") and "2 completions" in note, note
    assert f"{path}:1 labels it desirable, {path}:2 undesirable, ..." in note, note
    clean = _write(tmp_path / "clean.jsonl", [r for k, r in enumerate(rows) if k not in (1, 4)])
    data = build_feedback(_config(tiny_model_dir, clean, **{"data.max_length": 64}), tokenizer, 0)
    assert not any("labels the other way" in n for n in data.report.notes)


def test_bad_rows_exit_2_naming_file_line_and_field(tiny_model_dir, tmp_path, feedback_file, capsys):
    base = ["train", "--task", "dpo", "--dpo.loss", "kto", "--model.name", str(tiny_model_dir)]
    base += ["--output_dir", str(tmp_path / "r")]
    good = {"prompt": "a", "completion": "b", "label": True}
    for name, row, says in [
        ("maybe", {"prompt": "a", "completion": "b", "label": "maybe"}, "field 'label' is 'maybe'"),
        ("two", {"prompt": "a", "completion": "b", "label": 2}, "field 'label' is 2"),
        ("unlabelled", {"prompt": "a", "completion": "b"}, "field 'label' is missing"),
        ("nocompletion", {"prompt": "a", "label": False}, "field 'completion' is missing"),
        ("noprompt", {"completion": "b", "label": False}, "no prompt"),
    ]:
        bad = _write(tmp_path / f"{name}.jsonl", [good, row])
        assert main([*base, "--data.train", bad]) == 2
        err = capsys.readouterr().err
        assert f"{name}.jsonl:2: {says}" in err and "Traceback" not in err, err

    csv = tmp_path / "bad.csv"
    csv.write_text("prompt,completion,label\na,b,true\nc,d,sometimes\n")
    assert main([*base, "--data.train", str(csv)]) == 2
    assert "bad.csv:3: field 'label' is 'sometimes'" in capsys.readouterr().err
    csv.write_text("prompt,completion,label\na,b,true\nc,d,\n")  # an empty cell: no label given
    assert main([*base, "--data.train", str(csv)]) == 2
    assert "bad.csv:3: field 'label' is missing" in capsys.readouterr().err

    empty = _write(tmp_path / "empty.jsonl", [good, {"prompt": "c", "completion": " ", "label": False}, good])
    cfg = _config(tiny_model_dir, empty)
    data = build_feedback(cfg, load_tokenizer(resolve_source(str(tiny_model_dir))), 0)
    assert len(data.train) == 2 and data.report.skips["empty completion"].count == 1

    assert main([*base, "--data.train", feedback_file, "--dpo.label_smoothing", "0.1"]) == 2
    assert "dpo.loss is kto" in capsys.readouterr().err
    sigmoid = ["train", "--task", "dpo", "--model.name", str(tiny_model_dir), "--data.train", feedback_file]
    assert main([*sigmoid, "--dpo.desirable_weight", "2", "--output_dir", str(tmp_path / "s")]) == 2
    assert "option 'dpo.desirable_weight' is read by dpo.loss kto" in capsys.readouterr().err


def test_scores_alike_on_the_fast_and_the_generic_path(tiny_model_dir, feedback_file):
    cfg = _config(tiny_model_dir, feedback_file, **{"data.max_length": 64})
    data = build_feedback(cfg, load_tokenizer(resolve_source(str(tiny_model_dir))), 0)
    rows = data.train[:4]
    for k, row in enumerate(rows):  # a reference that differs from the policy
        row.reference = (-40.0 - k, -45.0 + k)
    batch = dpo.collate(rows, data.facts["pad_id"])
    assert batch["desirable"].tolist() == [True, False, True, False]
    got = []
    for impl in ("fast", "generic"):
        built = build_model(resolve_source(str(tiny_model_dir)), ModelConfig(impl=impl, device="cpu"), MethodConfig())
        built.model.eval()
        s = dpo.scores(built.model, batch, cfg.dpo)
        got.append(torch.cat([s.loss, s.reward, s.z0.reshape(1)]).detach())
    assert torch.allclose(got[0], got[1], rtol=1e-4, atol=1e-5)


def _overrides(model_dir, tmp_path, data, **extra):
    return {
        "task": "dpo",
        "dpo.loss": "kto",
        "model.name": str(model_dir),
        "data.train": [data],
        "data.max_length": 64,
        "method.r": 4,
        "train.micro_batch": 4,
        "train.lr": 1e-3,
        "train.max_steps": 3,
        "output_dir": str(tmp_path / "run"),
    } | extra


def test_cli_run_learns_and_reports_its_metrics(tiny_model_dir, tmp_path, feedback_file, capsys):
    run = tmp_path / "run"
    args = ["train", "--task", "dpo", "--dpo.loss", "kto", "--model.name", str(tiny_model_dir)]
    args += ["--data.train", feedback_file, "--data.eval_fraction", "0.25", "--data.max_length", "64"]
    args += ["--method.r", "8", "--train.micro_batch", "4", "--train.max_steps", "12", "--train.lr", "1e-2"]
    args += ["--train.log_every", "1", "--train.eval_every", "6", "--output_dir", str(run)]
    assert main(args) == 0
    assert "dpo: reference log-probs of 16 rows (the base, adapters off)" in capsys.readouterr().out
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert steps[0]["loss"] == pytest.approx(0.5, abs=1e-5)  # policy == reference at step 1: 1 - sigmoid(0)
    assert steps[0]["kl"] == pytest.approx(0.0, abs=1e-5)
    assert {"kl", "desirable_reward", "undesirable_reward", "accuracy"} <= set(steps[1])
    first, last = (sum(r["loss"] for r in part) / 3 for part in (steps[:3], steps[-3:]))
    assert last < first - 0.1, (first, last)
    assert steps[-1]["desirable_reward"] > 0 > steps[-1]["undesirable_reward"]
    evals = [r for r in records if "eval_loss" in r]
    assert {"eval_kl", "eval_desirable_reward", "eval_undesirable_reward", "eval_accuracy"} <= set(evals[-1])
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"]
    assert "lora_A" in next(iter(load_file(run / "adapter_model.safetensors")))
    info = json.loads((run / "run.json").read_text())
    assert info["extra"]["kto_weight"] == 1.0  # the default weights: the verdict reads kto's loss on its own scale
    verdict = info["extra"]["verdict"]  # 4 passes, the loss still near 0.36: high on kto's scale (0.25 and above)
    assert verdict["kind"] == "underfit" and "kto's scale" in verdict["text"] and "(high: 0.250" in verdict["text"]
    assert main(["report", str(run)]) == 0
    html = (run / "report.html").read_text()
    assert "KTO: z0, the KL" in html and "KTO: the mean rewards of desirable" in html


def test_resume_equals_uninterrupted(tiny_model_dir, tmp_path, straight_and_resumed, feedback_file):
    common = _overrides(tiny_model_dir, tmp_path, feedback_file, **{"train.max_steps": 4, "train.save_every": 2})
    common |= {"data.eval_fraction": 0.25, "train.eval_every": 2, "method.dropout": 0.1, "train.micro_batch": 2}
    straight, resumed = straight_and_resumed(common, 3)
    a, b = (load_file(r.run_dir / "adapter_model.safetensors") for r in (straight, resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    timing = ("tokens_per_s", "elapsed_s")
    records = [
        [{k: v for k, v in json.loads(x).items() if k not in timing} for x in (r.run_dir / "metrics.jsonl").open()]
        for r in (straight, resumed)
    ]
    assert records[0] == records[1] and any("eval_kl" in r for r in records[0])


def test_resume_refuses_a_row_whose_label_changed(tiny_model_dir, tmp_path, crash_at, feedback_file):
    from tunelab.training import recipe
    from tunelab.training.resume import DataChanged

    overrides = _overrides(tiny_model_dir, tmp_path, feedback_file, **{"train.max_steps": 4, "train.save_every": 2})
    with crash_at(3):
        recipe.train(None, overrides)
    rows = [json.loads(line) for line in open(feedback_file)]
    rows[5]["label"] = not rows[5]["label"]  # same prompt and completion: the same tokens, another label
    _write(tmp_path / "feedback.jsonl", rows)
    with pytest.raises(DataChanged, match="feedback.jsonl"):
        recipe.train(None, overrides, resume=True)


@pytest.mark.parametrize("method, quantize", [("lora", "none"), ("dora", "none"), ("lora", "nf4"), ("full", "none")])
def test_api_runs_on_every_method(tiny_model_dir, tmp_path, feedback_file, method, quantize):
    overrides = _overrides(tiny_model_dir, tmp_path, feedback_file, **{"method.name": method})
    overrides |= {"method.quantize_base": quantize, "train.max_steps": 2}
    if method == "full":
        overrides.pop("method.r")
    train(None, overrides)
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert steps[0]["loss"] == pytest.approx(0.5, abs=1e-4) and all(math.isfinite(r["loss"]) for r in steps)


def test_check_takes_a_first_kto_step(tiny_model_dir, tmp_path, feedback_file, capsys):
    args = ["check", "--task", "dpo", "--dpo.loss", "kto", "--model.name", str(tiny_model_dir)]
    args += ["--data.train", feedback_file, "--data.max_length", "64", "--train.micro_batch", "4"]
    args += ["--output_dir", str(tmp_path / "run")]
    assert main(args) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if "forward/backward (dpo)" in x)
    assert line.lstrip().startswith("[PASS]") and "half the rows' mean weight" in line
    assert float(line.split("loss ")[1].split(",")[0]) == pytest.approx(0.5, abs=1e-4)
    rows = next(x for x in out.splitlines() if "feedback rows" in x and "[" in x)
    assert "16 training rows used (8 desirable, 8 undesirable); none skipped" in rows
    assert "completion 'No idea." in out and "(undesirable)" in out and "for z0" in out

    # weights 3 and 1 over a micro-batch of desirable and undesirable rows: the start is their mean over 2, not 0.5
    assert main([*args, "--dpo.desirable_weight", "3"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "forward/backward (dpo)" in x)
    loss = float(line.split("loss ")[1].split(",")[0])
    assert line.lstrip().startswith("[PASS]") and 0.5 < loss < 1.5, line


def test_a_dpo_stage_takes_loss_kto_with_its_weights():
    kto = {"loss": "kto", "desirable_weight": 1.33}
    stages = [{"train": {"lr": 1e-3}}, {"task": "dpo", "dpo": kto, "data": {"train": ["f.jsonl"]}}]
    resolved = load_config(None, {"stages": stages})
    sft, pref = (stage_config(resolved, k, f"runs/s{k}").config for k in (0, 1))
    assert (sft.dpo.loss, pref.task, pref.dpo.loss) == ("sigmoid", "dpo", "kto")
    assert (pref.dpo.desirable_weight, pref.dpo.undesirable_weight) == (1.33, 1.0)
