"""Head runs end to end on the tiny model: what they save loads in plain transformers + PEFT with the logits tunelab
computes, a resumed run ends where an uninterrupted one does, and the CLI trains, predicts and evaluates them."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import tunelab
import tunelab.training.recipe as recipe
from tunelab.cli import main
from tunelab.errors import TunelabError
from tunelab.infer.predict import head_outputs, open_head_run, text_input
from tunelab.tasks.head_data import pad_rows, render
from tunelab.tasks.head_run import scored_input

from .head_setup import head_overrides, write_labels, write_pairs, write_rows


@pytest.fixture
def label_file(tmp_path):
    return write_labels(tmp_path)


@pytest.fixture
def pair_file(tmp_path):
    return write_pairs(tmp_path)


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
    result = recipe.train(None, head_overrides(tiny_model_dir, tmp_path, task, data, **{"model.impl": impl}))
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

    over = head_overrides(
        tiny_model_dir, tmp_path, "classify", label_file, **{"method.name": "layers", "method.top_layers": 1}
    )
    run_dir = recipe.train(None, over).run_dir
    hf = AutoModelForSequenceClassification.from_pretrained(run_dir, dtype=torch.float32).eval()
    _, ours, batch = _tunelab_and_hf_logits(run_dir, ["lovely number 3", "chair"])
    with torch.no_grad():
        theirs = hf(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def test_damaged_full_weights_are_named_not_a_traceback(tiny_model_dir, tmp_path, label_file, capsys):
    over = head_overrides(
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
    common = head_overrides(tiny_model_dir, tmp_path, task, data, **{"train.max_steps": 5, "train.save_every": 2})
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
    over = head_overrides(
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

    with pytest.raises(ConfigError, match=r"argument 'texts', item 2, is empty"):
        predict(run_dir, texts=["awful number 4", ""], device="cpu")
    with pytest.raises(ConfigError, match=r"argument 'texts', item 1, must be a text, got a NoneType"):
        predict(run_dir, texts=[None], device="cpu")
    (tmp_path / "none.csv").write_text("text,label\n")
    with pytest.raises(DataError, match=r"none\.csv: the file holds no rows to predict"):
        predict(run_dir, data=str(tmp_path / "none.csv"), device="cpu")


def test_classify_and_reward_through_the_cli(tiny_model_dir, tmp_path, label_file, pair_file, capsys, cli_flags):
    over = head_overrides(
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
    as_expected = write_rows(tmp_path / "expected.jsonl", [{"prompt": "great number 7", "expected": "pos"}])
    assert main(["eval", str(run), "--data", as_expected, "--no-save", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "expected.jsonl:1: field 'label' is missing; tunelab eval of a classify run" in err
    assert "name that column 'label'" in err and "training row" not in err and "Traceback" not in err
    # the run read prompts (chats, rendered with the template): a `text` row was scored as raw text, a form the head
    # never read, and its label differed from the same words given as a prompt or with --text, without a word
    as_text = write_rows(tmp_path / "as_text.jsonl", [{"text": "great number 7", "label": "pos"}])
    for command in (["predict", str(run), "--data", as_text], ["eval", str(run), "--data", as_text, "--no-save"]):
        assert main([*command, "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert "as_text.jsonl:1: the row gives a text ('text' column), but the run read only chats in training" in err
    # nothing to predict: a classify run is not told of --prompt with --answer, which score a reward run's answers
    assert main(["predict", str(run), "--device", "cpu"]) == 2
    assert (
        f'nothing to predict: give --data FILE or texts (tunelab predict {run} "TEXT" ..., or --text TEXT).\n'
        in capsys.readouterr().err
    )
    # answers to a prompt score a reward run; each caller is told of its own way to give a classify run texts
    assert main(["predict", str(run), "--prompt", "p", "--answer", "a", "--device", "cpu"]) == 2
    said = "score answers with a reward run; this is a classify run: give it texts"
    assert f"--prompt and --answer {said} (--text).\n" in capsys.readouterr().err
    with pytest.raises(TunelabError) as caught:
        tunelab.predict(run, prompt="p", answers=["a"], device="cpu")
    assert str(caught.value) == f"prompt= and answers= {said} (texts=)."

    over = head_overrides(tiny_model_dir, tmp_path, "reward", pair_file, **{"method.name": "full"})
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
    # a text to a reward run of chats was scored as a prompt's user turn without an answer, a form it never read
    assert main(["predict", str(run), "--text", "You are great", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "--text gives a reward run a text to score, but this run was trained on chats" in err
    assert "Give the prompt with --prompt and its answers with --answer." in err
    assert main(["eval", str(run), "--data", pair_file, "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "pairwise accuracy" in printed and "untrained head" in printed
    texts = write_rows(tmp_path / "text_pairs.jsonl", [{"chosen": "You are great", "rejected": "Go away"}])
    assert main(["eval", str(run), "--data", texts, "--no-save", "--device", "cpu"]) == 2
    assert "text_pairs.jsonl:1: the row gives whole texts" in capsys.readouterr().err
    # a head run generates no text: the generative commands say so and exit 2
    assert main(["generate", str(run), "--prompt", "hi"]) == 2
    assert "tunelab predict" in capsys.readouterr().err
    # nor is it merged or exported: refused before anything is written, saying what loads it instead
    out = tmp_path / "exported"
    for args in (
        ["merge", str(run), "--out", str(out / "merged")],
        ["export", str(run), "--gguf", str(out / "m.gguf")],
    ):
        assert main(args) == 2
        assert "merging or exporting it to GGUF is not supported" in capsys.readouterr().err
    assert not out.exists()


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
        recipe.train(None, head_overrides(tiny_model_dir, tmp_path, task, data, **{"train.max_steps": 5}))
    run_dir = tmp_path / f"run-{task}"
    assert not (run_dir / "adapter_model.safetensors").exists()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("skipped") for r in records] == [True] * 3 and "accuracy" not in records[0]


def test_bad_classify_input_exits_2_with_file_and_line(tiny_model_dir, tmp_path, capsys, cli_flags):
    bad = write_rows(tmp_path / "bad.jsonl", [{"text": "a", "label": "x"}, {"text": "b"}])
    assert main(["train", *cli_flags(head_overrides(tiny_model_dir, tmp_path, "classify", bad))]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "bad.jsonl:2: field 'label' is missing" in err


def test_model_adapter_of_a_classify_run(tiny_model_dir, tmp_path, label_file):
    """A classify run's adapter holds the head (score.weight): a classify run of the same labels trains it on; an sft
    run, which has no head, and a classify run of other labels are refused by name (they said 'adapter does not fit
    this model', unexpected score.weight)."""
    from tunelab.errors import ConfigError

    first = recipe.train(None, head_overrides(tiny_model_dir, tmp_path, "classify", label_file)).run_dir
    again = head_overrides(tiny_model_dir, tmp_path, "classify", label_file, **{"model.adapter": str(first)})
    again |= {"train.lr": 0.0, "classify.head_lr": 0.0, "output_dir": str(tmp_path / "again")}
    run_dir = recipe.train(None, again).run_dir
    before, after = (load_file(d / "adapter_model.safetensors") for d in (first, run_dir))
    assert all(torch.equal(before[k], after[k]) for k in before)  # lr 0: the head and the adapter as they were
    sft = head_overrides(tiny_model_dir, tmp_path, "sft", label_file, **{"model.adapter": str(first)})
    sft |= {"data.train": [write_rows(tmp_path / "qa.jsonl", [{"question": f"Q {i}?", "answer": f"A {i}."} for i in range(8)])]}  # fmt: skip
    with pytest.raises(ConfigError, match=r"saved with score .* only a run of the same task \(classify or reward\)"):
        recipe.train(None, sft | {"output_dir": str(tmp_path / "sft")})
    other = write_rows(tmp_path / "other.jsonl", [{"text": f"row {i}", "label": "ab"[i % 2]} for i in range(8)])
    with pytest.raises(ConfigError, match=r"has the labels \['neg', 'neu', 'pos'\], but this run's head has \['a', 'b'\]"):  # fmt: skip
        recipe.train(None, again | {"data.train": [other], "output_dir": str(tmp_path / "other")})


def test_a_dora_classifier_saves_an_adapter_and_predicts(tiny_model_dir, tmp_path, label_file):
    """method.name dora saved the whole model as model.safetensors (only 'lora' counted as an adapter), which no
    command could open: predict said the adapter was incomplete."""
    from tunelab.api import predict

    run_dir = recipe.train(None, head_overrides(tiny_model_dir, tmp_path, "classify", label_file, **{"method.name": "dora"})).run_dir  # fmt: skip
    assert not (run_dir / "model.safetensors").exists()
    saved = load_file(run_dir / "adapter_model.safetensors")
    assert "base_model.model.score.weight" in saved and any(k.endswith("lora_magnitude_vector") for k in saved)
    (p,) = predict(run_dir, texts=["awful number 4"], device="cpu")
    assert p.label in ("neg", "neu", "pos")


def test_a_full_reward_run_whose_base_is_gone_is_refused_before_scoring(
    tiny_model_dir, tmp_path, pair_file, capsys, monkeypatch
):
    """The untrained-head baseline of a full reward run loads the base after every pair was scored by the tuned
    model; a base that is gone is now said first."""
    import shutil

    import tunelab.eval.heads as heads

    base = shutil.copytree(tiny_model_dir, tmp_path / "base")
    overrides = head_overrides(base, tmp_path, "reward", pair_file, **{"method.name": "full", "train.max_steps": 1})
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
    result = recipe.train(None, head_overrides(tiny_model_dir, tmp_path, task, data))
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
    data = write_rows(tmp_path / "pairs.jsonl", rows)
    run_dir = recipe.train(
        None, head_overrides(tiny_model_dir, tmp_path, "reward", data, **{"data.template": "llama2"})
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
