"""Head runs end to end on the tiny model: what they save loads in plain transformers + PEFT with the logits tunelab
computes, a resumed run ends where an uninterrupted one does, and the CLI trains, predicts and evaluates them."""

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import tunelab.training.recipe as recipe
from tunelab.cli import main
from tunelab.data.report import DataReport
from tunelab.eval.heads import evaluate_head_run
from tunelab.infer.predict import head_outputs, open_head_run, predict, text_input
from tunelab.tasks.head_data import pad_rows, render
from tunelab.tasks.head_run import scored_input
from tunelab.tasks.reward import read_scored


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture
def label_file(tmp_path):
    words = {"pos": "great lovely fine", "neg": "awful bad sad", "neu": "table chair door"}
    rows = [
        {"prompt": f"{words[lab].split()[i % 3]} number {i}", "label": lab}
        for i in range(24)
        for lab in [("pos", "neg", "neu")[i % 3]]
    ]
    return _write(tmp_path / "labels.jsonl", rows)


@pytest.fixture
def pair_file(tmp_path):
    rows = [
        {"prompt": f"Say something kind {i}", "chosen": f"You are great {i}", "rejected": f"Go away {i}"}
        for i in range(16)
    ]
    return _write(tmp_path / "pairs.jsonl", rows)


def _overrides(tiny_model_dir, tmp_path, task, data, **more):
    return {
        "task": task,
        "model.name": str(tiny_model_dir),
        "data.train": [data],
        "data.max_length": 64,
        "method.r": 4,
        "train.micro_batch": 4,
        "train.lr": 5e-3,
        "train.max_steps": 3,
        "output_dir": str(tmp_path / f"run-{task}"),
    } | more


def _tunelab_and_hf_logits(run_dir, texts):
    run = open_head_run(run_dir, device="cpu")
    inputs = [text_input(run, t) for t in texts]
    ours, _ = head_outputs(run.model, run, inputs)
    ids = render(inputs, run.tokenizer, run.template)
    batch = pad_rows(ids, run.tokenizer.pad_token_id)
    return run, ours, batch


@pytest.mark.parametrize("task, impl", [("classify", "fast"), ("reward", "generic")])
def test_lora_head_loads_in_transformers_and_peft_with_identical_logits(
    task, impl, tiny_model_dir, tmp_path, label_file, pair_file
):
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForSequenceClassification

    data = label_file if task == "classify" else pair_file
    result = recipe.train(None, _overrides(tiny_model_dir, tmp_path, task, data, **{"model.impl": impl}))
    run_dir = result.run_dir
    saved = load_file(run_dir / "adapter_model.safetensors")
    assert "base_model.model.score.weight" in saved
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in saved.items())  # the adapters trained
    adapter = json.loads((run_dir / "adapter_config.json").read_text())
    assert adapter["task_type"] == "SEQ_CLS" and adapter["modules_to_save"] == ["score"]

    config = AutoConfig.from_pretrained(run_dir)  # the run's config.json: labels and pad token
    # fp32, as open_head_run on the CPU computes (a run trained on a GPU saves bf16 as its config's dtype)
    hf = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, config=config, dtype=torch.float32)
    hf = PeftModel.from_pretrained(hf, run_dir).eval()
    run, ours, batch = _tunelab_and_hf_logits(run_dir, ["great number 1", "sad", "door number twelve and more"])
    with torch.no_grad():
        theirs = hf(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert ours.shape == (3, 3 if task == "classify" else 1)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    if task == "classify":
        assert config.id2label == {0: "neg", 1: "neu", 2: "pos"} and run.labels == ["neg", "neu", "pos"]


def test_full_weights_load_as_a_transformers_classifier(tiny_model_dir, tmp_path, label_file):
    from transformers import AutoModelForSequenceClassification

    over = _overrides(
        tiny_model_dir, tmp_path, "classify", label_file, **{"method.name": "layers", "method.top_layers": 1}
    )
    run_dir = recipe.train(None, over).run_dir
    hf = AutoModelForSequenceClassification.from_pretrained(run_dir, dtype=torch.float32).eval()
    _, ours, batch = _tunelab_and_hf_logits(run_dir, ["lovely number 3", "chair"])
    with torch.no_grad():
        theirs = hf(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def test_damaged_full_weights_are_named_not_a_traceback(tiny_model_dir, tmp_path, label_file, capsys):
    over = _overrides(
        tiny_model_dir, tmp_path, "classify", label_file, **{"method.name": "layers", "method.top_layers": 1}
    )
    weights = recipe.train(None, over).run_dir / "model.safetensors"
    with weights.open("r+b") as f:
        f.truncate(weights.stat().st_size // 2)  # a copy cut short
    assert main(["predict", str(weights.parent), "--text", "chair", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert f"its weights ({weights}) are damaged (Error while deserializing header" in err
    assert "Train the run again" in err and "Traceback" not in err


@pytest.mark.parametrize("task", ["classify", "reward"])
def test_resume_equals_uninterrupted(task, tiny_model_dir, tmp_path, straight_and_resumed, label_file, pair_file):
    data = label_file if task == "classify" else pair_file
    common = _overrides(tiny_model_dir, tmp_path, task, data, **{"train.max_steps": 5, "train.save_every": 2})
    common |= {"method.dropout": 0.1, "data.eval_fraction": 0.25, "train.eval_every": 2}
    straight, resumed = straight_and_resumed(common, 4)  # dies in step 4, after the checkpoint of step 2

    a, b = (load_file(r.run_dir / "adapter_model.safetensors") for r in (straight, resumed))
    assert a.keys() == b.keys() and "base_model.model.score.weight" in a
    for key in a:
        assert torch.equal(a[key], b[key]), key
    timing = ("tokens_per_s", "elapsed_s")  # wall-clock figures, the only ones allowed to differ
    records = [
        [
            {k: v for k, v in json.loads(line).items() if k not in timing}
            for line in (r.run_dir / "metrics.jsonl").read_text().splitlines()
        ]
        for r in (straight, resumed)
    ]
    assert records[0] == records[1]
    assert any("eval_accuracy" in r for r in records[0]) and any("accuracy" in r for r in records[0])


def test_qlora_classifier_trains_and_predicts(tiny_model_dir, tmp_path, label_file):
    over = _overrides(
        tiny_model_dir, tmp_path, "classify", label_file, **{"method.quantize_base": "nf4", "train.max_steps": 2}
    )
    run_dir = recipe.train(None, over).run_dir
    run = open_head_run(run_dir, device="cpu")
    from tunelab.quant.linear import NF4Linear

    assert any(isinstance(m, NF4Linear) for m in run.model.modules())  # evaluated over the 4-bit base it trained on
    from tunelab.api import predict

    (p,) = predict(run_dir, texts=["awful number 4"], device="cpu")
    assert p.label in ("neg", "neu", "pos") and sum(p.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    # rows to predict may leave their label blank (a CSV's empty cell, a null): they were refused as "empty"
    blank = tmp_path / "blank.csv"
    blank.write_text("prompt,label\nawful number 4,\ngreat number 7,pos\nfine number 2, \n")  # as trained: prompts
    predicted = predict(run_dir, data=str(blank), device="cpu")
    assert [p.expected for p in predicted] == [None, "pos", None]
    # an empty text crashed in a reshape; an empty file was told to "give --data"
    from tunelab.errors import ConfigError, DataError

    with pytest.raises(ConfigError, match=r"argument 'texts' \(TEXT or --text\), item 2, is empty"):
        predict(run_dir, texts=["awful number 4", ""], device="cpu")
    with pytest.raises(
        ConfigError, match=r"argument 'texts' \(TEXT or --text\), item 1, must be a text, got a NoneType"
    ):
        predict(run_dir, texts=[None], device="cpu")
    (tmp_path / "none.csv").write_text("text,label\n")
    with pytest.raises(DataError, match=r"none\.csv: the file holds no rows to predict"):
        predict(run_dir, data=str(tmp_path / "none.csv"), device="cpu")


def test_classify_and_reward_through_the_cli(tiny_model_dir, tmp_path, label_file, pair_file, capsys, cli_flags):
    over = _overrides(
        tiny_model_dir, tmp_path, "classify", label_file, **{"data.eval_fraction": 0.25, "data.split_seed": 5}
    )
    assert main(["train", *cli_flags(over)]) == 0
    printed = capsys.readouterr().out
    assert (
        "head: 3 labels on the last real token (chat input)" in printed and "eval (fraction, split seed 5)" in printed
    )
    assert "eval loss " in printed and "accuracy" in printed
    run = tmp_path / "run-classify"
    info = json.loads((run / "run.json").read_text())
    assert info["task"] == "classify" and info["extra"]["labels"] == ["neg", "neu", "pos"]
    assert info["extra"]["split_seed"] == 5  # the held-out rows are those of any run with data.split_seed 5

    out = tmp_path / "pred.csv"
    assert (
        main(
            [
                "predict",
                str(run),
                "--text",
                "great number 7",
                "--data",
                label_file,
                "--out",
                str(out),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "(text 1)" in printed and "labels.jsonl:1)" in printed
    lines = out.read_text().splitlines()
    assert lines[0] == "where,input,label,p_neg,p_neu,p_pos,expected" and len(lines) == 1 + 24 + 1
    # --overwrite replaced the input data, or the run's own files, with predictions
    data_before, metrics_before = Path(label_file).read_text(), (run / "metrics.jsonl").read_text()
    for target in (label_file, str(run / "metrics.jsonl")):
        args = ["predict", str(run), "--data", label_file, "--out", target, "--overwrite", "--device", "cpu"]
        assert main(args) == 2
    assert "is this command's input" in capsys.readouterr().err
    assert Path(label_file).read_text() == data_before and (run / "metrics.jsonl").read_text() == metrics_before
    assert main(["eval", str(run), "--data", label_file, "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "majority class" in printed and "confusion" in printed and "macro F1" in printed
    saved = json.loads((run / "eval.json").read_text())
    assert (
        saved["task"] == "classify"
        and saved["tuned"]["n"] == 24
        and saved["baseline"]["accuracy"] == pytest.approx(1 / 3)
    )
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    assert "Confusion matrix" in page and "Per class (tuned)" in page
    # eval rows that give the label as `expected` (what eval reads of an sft run): told what eval of a classifier
    # reads, not that "every training row needs a label" (the run's training data is not what was given)
    as_expected = _write(tmp_path / "expected.jsonl", [{"prompt": "great number 7", "expected": "pos"}])
    assert main(["eval", str(run), "--data", as_expected, "--no-save", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "expected.jsonl:1: field 'label' is missing; tunelab eval of a classify run" in err
    assert "name that column 'label'" in err and "training row" not in err and "Traceback" not in err
    # the run read prompts (chats, rendered with the template): a `text` row was scored as raw text, a form the head
    # never read, and its label differed from the same words given as a prompt or with --text, without a word
    as_text = _write(tmp_path / "as_text.jsonl", [{"text": "great number 7", "label": "pos"}])
    for command in (["predict", str(run), "--data", as_text], ["eval", str(run), "--data", as_text, "--no-save"]):
        assert main([*command, "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert "as_text.jsonl:1: the row gives a text ('text' column), but the run read only chats in training" in err
    # nothing to predict: a classify run is not told of --prompt with --answer, which score a reward run's answers
    assert main(["predict", str(run), "--device", "cpu"]) == 2
    assert (
        'nothing to predict: give --data FILE or texts (tunelab predict RUN "TEXT" ..., or --text TEXT) (in Python: '
        "data= or texts=)." in capsys.readouterr().err
    )

    over = _overrides(tiny_model_dir, tmp_path, "reward", pair_file, **{"method.name": "full"})
    assert main(["train", *cli_flags(over)]) == 0
    run = tmp_path / "run-reward"
    assert (
        main(
            [
                "predict",
                str(run),
                "--prompt",
                "Say something kind",
                "--answer",
                "You are great",
                "--answer",
                "Go away",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "(answer 1)" in printed and "(answer 2)" in printed
    assert main(["eval", str(run), "--data", pair_file, "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "pairwise accuracy" in printed and "untrained head" in printed
    texts = _write(tmp_path / "text_pairs.jsonl", [{"chosen": "You are great", "rejected": "Go away"}])
    assert main(["eval", str(run), "--data", texts, "--no-save", "--device", "cpu"]) == 2
    assert "text_pairs.jsonl:1: the row gives whole texts" in capsys.readouterr().err
    # a head run generates no text: the generative commands say so and exit 2
    assert main(["generate", str(run), "--prompt", "hi"]) == 2
    assert "tunelab predict" in capsys.readouterr().err


@pytest.mark.parametrize("task", ["classify", "reward"])
def test_non_finite_head_steps_stop_the_run_naming_the_rows(task, tiny_model_dir, tmp_path, label_file, pair_file, monkeypatch):  # fmt: skip
    """The guard of train_step holds for every task: NaN losses are skipped, and max_bad_steps of them stop the run
    with the rows of the first bad step (the head batches carry their file:line) and nothing written."""
    import dataclasses

    from tunelab.errors import TrainingStopped
    from tunelab.tasks import TASKS

    real = TASKS[task]

    def poisoned(model, batch):
        loss, metrics = real.loss(model, batch)
        return loss * float("nan"), metrics

    monkeypatch.setitem(TASKS, task, dataclasses.replace(real, loss=poisoned))
    data = label_file if task == "classify" else pair_file
    with pytest.raises(TrainingStopped, match=r"steps 1-3.*(labels|pairs)\.jsonl:\d+"):
        recipe.train(None, _overrides(tiny_model_dir, tmp_path, task, data, **{"train.max_steps": 5}))
    run_dir = tmp_path / f"run-{task}"
    assert not (run_dir / "adapter_model.safetensors").exists()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("skipped") for r in records] == [True] * 3 and "accuracy" not in records[0]


def test_head_eval_of_a_run_replaced_meanwhile_saves_nothing(tiny_model_dir, tmp_path, label_file, monkeypatch):
    """`train --overwrite` replaced a classify run while eval scored it: eval.json then held the old model's scores as
    the new run's (the eval of runs that generate text already refused that)."""
    import tunelab.eval.heads as heads
    from tunelab.errors import RunDirError

    run = recipe.train(None, _overrides(tiny_model_dir, tmp_path, "classify", label_file)).run_dir
    real = heads.head_outputs

    def replacing(*args, **kwargs):
        info = json.loads((run / "run.json").read_text())
        (run / "run.json").write_text(json.dumps(info | {"note": "another run"}))  # what a new run writes there
        return real(*args, **kwargs)

    monkeypatch.setattr(heads, "head_outputs", replacing)
    with pytest.raises(RunDirError, match="the run was replaced or changed while eval ran"):
        heads.evaluate_head_run(run, label_file, "cpu")
    assert not (run / "eval.json").exists()


def test_bad_classify_input_exits_2_with_file_and_line(tiny_model_dir, tmp_path, capsys, cli_flags):
    bad = _write(tmp_path / "bad.jsonl", [{"text": "a", "label": "x"}, {"text": "b"}])
    assert main(["train", *cli_flags(_overrides(tiny_model_dir, tmp_path, "classify", bad))]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "bad.jsonl:2: field 'label' is missing" in err


def test_model_adapter_of_a_classify_run(tiny_model_dir, tmp_path, label_file):
    """A classify run's adapter holds the head (score.weight): a classify run of the same labels trains it on; an sft
    run, which has no head, and a classify run of other labels are refused by name (they said 'adapter does not fit
    this model', unexpected score.weight)."""
    from tunelab.errors import ConfigError

    first = recipe.train(None, _overrides(tiny_model_dir, tmp_path, "classify", label_file)).run_dir
    again = _overrides(tiny_model_dir, tmp_path, "classify", label_file, **{"model.adapter": str(first)})
    again |= {"train.lr": 0.0, "classify.head_lr": 0.0, "output_dir": str(tmp_path / "again")}
    run_dir = recipe.train(None, again).run_dir
    before, after = (load_file(d / "adapter_model.safetensors") for d in (first, run_dir))
    assert all(torch.equal(before[k], after[k]) for k in before)  # lr 0: the head and the adapter as they were
    sft = _overrides(tiny_model_dir, tmp_path, "sft", label_file, **{"model.adapter": str(first)})
    sft |= {"data.train": [_write(tmp_path / "qa.jsonl", [{"question": f"Q {i}?", "answer": f"A {i}."} for i in range(8)])]}  # fmt: skip
    with pytest.raises(ConfigError, match=r"saved with score .* only a run of the same task \(classify or reward\)"):
        recipe.train(None, sft | {"output_dir": str(tmp_path / "sft")})
    other = _write(tmp_path / "other.jsonl", [{"text": f"row {i}", "label": "ab"[i % 2]} for i in range(8)])
    with pytest.raises(ConfigError, match=r"has the labels \['neg', 'neu', 'pos'\], but this run's head has \['a', 'b'\]"):  # fmt: skip
        recipe.train(None, again | {"data.train": [other], "output_dir": str(tmp_path / "other")})


def test_a_dora_classifier_saves_an_adapter_and_predicts(tiny_model_dir, tmp_path, label_file):
    """method.name dora saved the whole model as model.safetensors (only 'lora' counted as an adapter), which no
    command could open: predict said the adapter was incomplete."""
    from tunelab.api import predict

    run_dir = recipe.train(None, _overrides(tiny_model_dir, tmp_path, "classify", label_file, **{"method.name": "dora"})).run_dir  # fmt: skip
    assert not (run_dir / "model.safetensors").exists()
    saved = load_file(run_dir / "adapter_model.safetensors")
    assert "base_model.model.score.weight" in saved and any(k.endswith("lora_magnitude_vector") for k in saved)
    (p,) = predict(run_dir, texts=["awful number 4"], device="cpu")
    assert p.label in ("neg", "neu", "pos")


def test_eval_reads_a_label_written_another_way_as_the_runs(tiny_model_dir, tmp_path, capsys, cli_flags):
    """A CSV's 1.0 for the run's 1 (pandas writes a float column so), or 'Spam' for 'spam', was scored as a label the
    run never trained on: every such row an error. A row of a label the run never trained on was scored as an error
    by `tunelab eval` while training's eval skipped it: one file, two accuracies. Both skip it now, and agree."""
    rows = [{"prompt": f"{('awful', 'great')[i % 2]} number {i}", "label": i % 2} for i in range(16)]
    data = _write(tmp_path / "numbers.jsonl", rows)
    test = tmp_path / "test.csv"
    test.write_text("prompt,label\ngreat number 1,1.0\nawful number 2,0.0\ngreat number 3,1.0\nfine number 4,2.0\n")
    over = _overrides(tiny_model_dir, tmp_path, "classify", data, **{"data.eval": str(test), "train.eval_every": 3})
    assert main(["train", *cli_flags(over)]) == 0
    run = tmp_path / "run-classify"
    assert json.loads((run / "run.json").read_text())["extra"]["labels"] == ["0", "1"]
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in logged if "eval_accuracy" in r][-1]
    capsys.readouterr()
    assert main(["eval", str(run), "--data", str(test), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "read as its: 1.0 as 1 (2), 0.0 as 0 (1)" in printed
    assert f"skipped 1: label not among the training labels ('2.0') ({test}:5)" in printed
    assert "a row whose label the run never trained on is skipped, as training's eval skips it" in printed
    saved = json.loads((run / "eval.json").read_text())
    assert saved["respelt"] == {"1.0": {"label": "1", "rows": 2}, "0.0": {"label": "0", "rows": 1}}
    assert saved["skipped"]["label not among the training labels ('2.0')"]["count"] == 1
    assert saved["rows_read"] == 3 and {r["expected"] for r in saved["rows"]} == {"0", "1"}
    assert saved["tuned"]["accuracy"] == pytest.approx(trained["eval_accuracy"])
    assert saved["tuned"]["eval_loss"] == pytest.approx(trained["eval_loss"], rel=1e-4)


def test_eval_of_a_class_weighted_run_reports_the_loss_training_logged(tiny_model_dir, tmp_path, capsys, cli_flags):
    """With class or label weights training logs (and keep_best reads) the weighted cross-entropy as eval_loss, while
    `tunelab eval` reported the plain one under the same name: two numbers for one file. Its eval_loss is now the
    weighted one, as logged, and the plain one is there under its own name; both printouts say which is which."""
    rows = [{"prompt": f"{('awful', 'great')[i % 2]} number {i}", "label": ("neg", "pos")[i % 2]} for i in range(16)]
    data, held = _write(tmp_path / "l.jsonl", rows[:12]), _write(tmp_path / "e.jsonl", rows[12:])
    over = _overrides(tiny_model_dir, tmp_path, "classify", data, **{"data.eval": held, "model.device": "cpu"})
    over |= {"classify.label_weights": {"pos": 3.0}}
    capsys.readouterr()
    assert main(["train", *cli_flags(over)]) == 0
    assert "eval loss (class-weighted) " in capsys.readouterr().out
    run = tmp_path / "run-classify"
    logged = json.loads((run / "run.json").read_text())["eval_loss"]
    assert main(["eval", str(run), "--data", held, "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    tuned = json.loads((run / "eval.json").read_text())["tuned"]
    assert tuned["eval_loss"] == pytest.approx(logged, rel=1e-4)
    assert tuned["eval_loss_unweighted"] != pytest.approx(tuned["eval_loss"], rel=1e-3)
    assert re.search(rf"eval loss \(class-weighted\) +- +{tuned['eval_loss']:.4f}\n", printed)
    assert re.search(rf"eval loss \(unweighted\) +- +{tuned['eval_loss_unweighted']:.4f}\n", printed)


def test_a_head_run_without_its_config_yaml_says_it_is_missing(tiny_model_dir, tmp_path, label_file, capsys):
    run = recipe.train(None, _overrides(tiny_model_dir, tmp_path, "classify", label_file)).run_dir
    (run / "config.yaml").unlink()
    assert main(["predict", str(run), "--text", "great", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert f"{run / 'config.yaml'}: the run's config.yaml is missing" in err and "Traceback" not in err


def test_a_full_reward_run_whose_base_is_gone_is_refused_before_scoring(
    tiny_model_dir, tmp_path, pair_file, capsys, monkeypatch
):
    """The untrained-head baseline of a full reward run loads the base after every pair was scored by the tuned
    model; a base that is gone is now said first."""
    import shutil

    import tunelab.eval.heads as heads

    base = shutil.copytree(tiny_model_dir, tmp_path / "base")
    overrides = _overrides(base, tmp_path, "reward", pair_file, **{"method.name": "full", "train.max_steps": 1})
    run = recipe.train(None, overrides).run_dir
    shutil.rmtree(base)
    calls, real = [], heads.head_outputs
    monkeypatch.setattr(heads, "head_outputs", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert main(["eval", str(run), "--data", pair_file, "--no-save", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "not there any more" in err and "Traceback" not in err and calls == []


@pytest.mark.parametrize("task", ["classify", "reward"])
def test_a_rows_scores_do_not_depend_on_its_batch(task, tiny_model_dir, tmp_path, label_file, pair_file):
    """predict and eval of a trained head: each row scored alone, or right-padded among rows of other lengths, gets
    the same logits and the same eval figures (the head reads the last real token, whatever the padding)."""
    from tunelab.tasks import classify, reward

    data = label_file if task == "classify" else pair_file
    result = recipe.train(None, _overrides(tiny_model_dir, tmp_path, task, data))
    run = open_head_run(result.run_dir, device="cpu")
    texts = ["great", "door number twelve and more words than the others", "sad number 3", "fine fine fine"]
    inputs = [text_input(run, t) for t in texts]
    together, _ = head_outputs(run.model, run, inputs, batch_size=len(texts))
    alone, _ = head_outputs(run.model, run, inputs, batch_size=1)
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)

    ids = render(inputs, run.tokenizer, run.template)
    pad = run.tokenizer.pad_token_id
    if task == "classify":
        rows = [classify.LabelledRow(r, k % 3, 1.0, "x", k) for k, r in enumerate(ids)]
        evaluate, batches = classify.evaluate, classify.make_batches
    else:
        rows = [reward.PairRow(ids[k], ids[-1 - k], "x", k) for k in range(len(ids))]
        evaluate, batches = reward.evaluate, reward.make_batches
    one = evaluate(run.model, batches(rows, len(rows), pad, shuffle=False, seed=0, epoch=0))
    each = evaluate(run.model, batches(rows, 1, pad, shuffle=False, seed=0, epoch=0))
    assert one.keys() == each.keys() and one["eval_loss"] > 0
    assert one == pytest.approx(each, rel=1e-5, abs=1e-6)


def test_a_reward_run_whose_answers_end_with_the_pad_token_scores_alike_in_transformers(tiny_model_dir, tmp_path):
    """The tiny tokenizer pads with its EOS, which ends every answer of the llama2 template: transformers pooled at
    the token before it, and the reward model loaded there scored otherwise than tunelab. The run saves another pad."""
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForSequenceClassification

    rows = [{"prompt": f"Say something kind {i}", "chosen": f"You are great {i}", "rejected": f"Go away {i}"} for i in range(16)]  # fmt: skip
    data = _write(tmp_path / "pairs.jsonl", rows)
    run_dir = recipe.train(
        None, _overrides(tiny_model_dir, tmp_path, "reward", data, **{"data.template": "llama2"})
    ).run_dir
    run = open_head_run(run_dir, device="cpu")
    inputs = [
        scored_input(run, "Say something kind", "You are great"),
        scored_input(run, "Say it 2", "Go away now please"),
    ]
    ours, _ = head_outputs(run.model, run, inputs)
    ids = render(inputs, run.tokenizer, run.template)
    assert all(row[-1] == run.tokenizer.eos_token_id for row in ids)  # the answers end with EOS
    assert run.tokenizer.pad_token_id != run.tokenizer.eos_token_id
    batch = pad_rows(ids, run.tokenizer.pad_token_id)
    config = AutoConfig.from_pretrained(run_dir)
    assert config.pad_token_id == run.tokenizer.pad_token_id
    hf = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, config=config, dtype=torch.float32)
    hf = PeftModel.from_pretrained(hf, run_dir).eval()
    with torch.no_grad():
        theirs = hf(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("task", ["classify", "reward"])
def test_eval_skips_the_rows_training_drops_as_too_long(task, tiny_model_dir, tmp_path, label_file, pair_file, capsys):
    """Training's eval dropped the rows longer than max_length (data.overlong=drop) while `tunelab eval` cut and
    scored them: the same file gave two accuracies. Both now skip them, with training's reason."""
    long = " ".join(["great lovely fine"] * 30)
    if task == "classify":
        rows = [{"prompt": long, "label": "neg"}, {"prompt": "great number 1", "label": "pos"}]
        rows += [{"prompt": "awful number 2", "label": "neg"}, {"prompt": long + " 2", "label": "neu"}]
    else:
        rows = [{"prompt": "Say something kind 1", "chosen": long, "rejected": "Go away 1"}]
        rows += [
            {"prompt": f"Say something kind {i}", "chosen": f"You are great {i}", "rejected": "Go"} for i in (2, 3)
        ]
    held = _write(tmp_path / "held.jsonl", rows)
    train = label_file if task == "classify" else pair_file
    run = recipe.train(None, _overrides(tiny_model_dir, tmp_path, task, train, **{"data.eval": held})).run_dir
    report = json.loads((run / "data_report.json").read_text())
    trained = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in trained if "eval_accuracy" in r][-1]["eval_accuracy"]
    capsys.readouterr()
    assert main(["eval", str(run), "--data", held, "--device", "cpu", "--no-save"]) == 0
    printed = capsys.readouterr().out
    reason = "longer than max_length (64 tokens; data.overlong=drop)"
    assert report["skips"][reason]["count"] == (2 if task == "classify" else 1)
    assert f"skipped {report['skips'][reason]['count']}: {reason} ({held}:1" in printed
    result = evaluate_head_run(run, held, "cpu", save=False)
    assert result.rows_read == 2 and result.tuned["accuracy"] == pytest.approx(trained)


def test_a_head_runs_csv_file_is_split_by_its_data_delimiter(tiny_model_dir, tmp_path):
    """A classify run trained on .csv rows split at | (data.delimiter), whose header splits at a comma as well, read
    its eval file so; `tunelab eval` split the same file at the comma detection chose, and refused it."""
    rows = [(("neg", "pos")[i % 2], f"{('awful', 'great')[i % 2]}, number {i}, said") for i in range(16)]
    train, held = tmp_path / "l.csv", tmp_path / "e.csv"
    train.write_text("label|prompt, as said\n" + "".join(f"{lab}|{p}\n" for lab, p in rows[:12]))
    held.write_text("label|prompt, as said\n" + "".join(f"{lab}|{p}\n" for lab, p in rows[12:]))
    over = _overrides(tiny_model_dir, tmp_path, "classify", str(train), **{"data.eval": str(held)})
    over |= {"data.delimiter": "|", "data.fields": {"prompt": "prompt, as said"}, "model.device": "cpu"}
    run = recipe.train(None, over).run_dir
    logged = json.loads((run / "run.json").read_text())["eval_loss"]
    result = evaluate_head_run(run, str(held), "cpu", save=False)
    assert result.rows_read == 4 and result.tuned["eval_loss"] == pytest.approx(logged, rel=1e-4)


def test_predict_splits_a_csv_file_by_the_runs_data_delimiter(tiny_model_dir, tmp_path):
    """`tunelab predict --data FILE.csv` detected the separator of the file on its own, where training and `eval`
    split the run's .csv rows at data.delimiter: a file of the run's own form was split at the comma of its header
    and refused. predict reads it as training did now, for a classify run's rows and a reward run's answers."""
    rows = [(("neg", "pos")[i % 2], f"{('awful', 'great')[i % 2]}, number {i}, said") for i in range(16)]
    train, new = tmp_path / "l.csv", tmp_path / "new.csv"
    train.write_text("label|prompt, as said\n" + "".join(f"{lab}|{p}\n" for lab, p in rows[:12]))
    new.write_text("prompt, as said\n" + "".join(f"{p}\n" for _, p in rows[12:]))
    over = _overrides(tiny_model_dir, tmp_path, "classify", str(train))
    over |= {"data.delimiter": "|", "data.fields": {"prompt": "prompt, as said"}, "model.device": "cpu"}
    run = recipe.train(None, over).run_dir
    predicted = predict(run, data=str(new), device="cpu")
    assert [p.where for p in predicted] == [f"{new}:{line}" for line in range(2, 6)]
    answers = tmp_path / "answers.csv"
    answers.write_text("prompt|answer\nHi, there|Hello, you\n")
    scored = read_scored([str(answers)], {}, None, DataReport(), "|")
    assert [x.messages[-1]["content"] for x, _, _ in scored] == ["Hello, you"]


def test_predict_refuses_an_input_whose_start_fills_max_length(tiny_model_dir, tmp_path, label_file):
    """Training skips a row whose start (system prompt, template header) fills max_length; predict scored its last
    tokens, a form the head never read. It is now refused by name."""
    from tunelab.errors import DataError
    from tunelab.infer.predict import predict

    run = recipe.train(None, _overrides(tiny_model_dir, tmp_path, "classify", label_file)).run_dir
    rows = [{"prompt": "great number 1"}, {"prompt": "awful number 2", "system": " ".join(["table chair door"] * 30)}]
    data = _write(tmp_path / "new.jsonl", rows)
    with pytest.raises(DataError, match=r"new.jsonl:2: cannot be scored: its start \(BOS, system prompt, template header: \d+ tokens\) leaves no room"):  # fmt: skip
        predict(run, data=data, device="cpu")
    assert len(predict(run, data=_write(tmp_path / "ok.jsonl", rows[:1]), device="cpu")) == 1


def test_reward_eval_skips_pairs_whose_sides_are_the_same_once_cut(tiny_model_dir, tmp_path, pair_file):
    """With data.overlong=truncate, reward training skips a pair whose sides differ only in the part the cut takes
    away; `tunelab eval` scored it, a margin of 0 counted wrong. It is skipped alike now, with training's reason."""
    filler = " ".join(["great lovely fine"] * 30)
    rows = [{"prompt": "Say something kind 1", "chosen": f"Yes {filler}", "rejected": f"No {filler}"}]
    rows += [{"prompt": f"Say something kind {i}", "chosen": f"You are great {i}", "rejected": "Go"} for i in (2, 3)]
    held = _write(tmp_path / "held.jsonl", rows)
    over = {"data.eval": held, "data.overlong": "truncate"}
    run = recipe.train(None, _overrides(tiny_model_dir, tmp_path, "reward", pair_file, **over)).run_dir
    reason = "chosen and rejected are the same in their 64 kept tokens"
    assert json.loads((run / "data_report.json").read_text())["skips"][reason]["locations"] == [f"{held}:1"]
    result = evaluate_head_run(run, held, "cpu", save=False)
    assert result.rows_read == 2 and result.skipped[reason]["locations"] == [f"{held}:1"]


def test_a_reward_model_refuses_an_answer_whose_prompt_start_fills_max_length(tiny_model_dir, tmp_path, pair_file):
    """A reward model scoring sampled answers (grpo) scored the last tokens of a prompt whose system message alone
    filled max_length, which training never read; it now says which answer it cannot score."""
    from tunelab.errors import DataError
    from tunelab.tasks.head_run import load_reward_model

    run = recipe.train(None, _overrides(tiny_model_dir, tmp_path, "reward", pair_file)).run_dir
    reward = load_reward_model(run, device="cpu")
    system = {"role": "system", "content": " ".join(["table chair door"] * 30)}
    assert len(reward(["Say something kind 1"], ["You are great"])) == 1
    with pytest.raises(DataError, match=rf"reward model {run}, answer 2 of 2 scored: cannot be scored: its start"):
        reward(["Say something kind 1", [system, {"role": "user", "content": "hi"}]], ["You are great", "Go"])


def test_predict_says_a_txt_file_of_several_lines_is_one_input(tiny_model_dir, tmp_path, capsys):
    """A .txt file is one text record, as in training: `tunelab predict --data messages.txt` with one message a line
    gave one prediction for the whole file, and --out one row, without a word."""
    from tunelab.infer.predict import predict

    rows = [{"text": f"{('awful', 'great')[i % 2]} number {i}", "label": ("neg", "pos")[i % 2]} for i in range(12)]
    run = recipe.train(
        None, _overrides(tiny_model_dir, tmp_path, "classify", _write(tmp_path / "t.jsonl", rows))
    ).run_dir
    capsys.readouterr()
    several, one = tmp_path / "messages.txt", tmp_path / "letter.txt"
    several.write_text("great number 1\n\nawful number 2\nfine number 3\n")
    one.write_text("great number 1\n")
    assert len(predict(run, data=str(several), device="cpu")) == 1
    assert f"note: {several} is one input of 3 lines: a .txt file is one text" in capsys.readouterr().err
    assert len(predict(run, data=str(one), device="cpu")) == 1
    assert "note:" not in capsys.readouterr().err
