"""A classify or reward run loaded once (`tunelab.open_head_run`) and passed as `run`: predict, evaluate and
load_reward_model score with it, not loading the model again."""

import json

import pytest

import tunelab
import tunelab.tasks.head_run as head_run
import tunelab.training.recipe as recipe
from tunelab.errors import ConfigError, RunDirError, TunelabError


@pytest.fixture(scope="module")
def classify_run(tiny_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("classify")
    rows = [{"prompt": f"{('great', 'awful')[i % 2]} number {i}", "label": ("pos", "neg")[i % 2]} for i in range(24)]
    labels = folder / "labels.jsonl"
    labels.write_text("".join(json.dumps(r) + "\n" for r in rows))
    over = {"task": "classify", "model.name": str(tiny_model_dir), "data.train": [str(labels)], "model.device": "cpu"}
    over |= {"data.max_length": 64, "method.r": 4, "train.micro_batch": 4, "train.max_steps": 1}
    return recipe.train(None, over | {"output_dir": str(folder / "run")}).run_dir


def test_predictions_of_a_run_opened_once_share_one_load(classify_run, tmp_path, monkeypatch):
    """tunelab.predict(run_dir, texts=...) loaded the model at every call: a script predicting batch after batch
    spent most of its time loading. The run opened once is taken as `run`, and gives what its folder gives."""
    loads = []
    load = head_run.load_head_model
    monkeypatch.setattr(head_run, "load_head_model", lambda *args: loads.append(args[0]) or load(*args))
    run = tunelab.open_head_run(classify_run, device="cpu")
    first = tunelab.predict(run, texts=["great news"])
    second = tunelab.predict(run, texts=["awful news", "great"], out=tmp_path / "p.jsonl")
    assert len(loads) == 1 and [p.where for p in first + second] == ["text 1", "text 1", "text 2"]
    assert len((tmp_path / "p.jsonl").read_text().splitlines()) == 2
    held = tmp_path / "held.jsonl"
    held.write_text(
        "".join(
            json.dumps({"prompt": f"{w} {i}", "label": lab}) + "\n"
            for i, (w, lab) in enumerate([("great", "pos"), ("awful", "neg"), ("great", "pos")])
        )
    )
    scored = tunelab.evaluate(run, held, save=False)
    assert len(loads) == 1 and scored.rows_read == 3 and scored.run_dir == str(classify_run)
    assert scored.tuned == tunelab.evaluate(classify_run, held, save=False, device="cpu").tuned
    again = tunelab.predict(classify_run, texts=["awful news", "great"], device="cpu")
    assert len(loads) == 3
    for ours, theirs in zip(second, again, strict=True):
        assert ours.label == theirs.label and ours.probabilities == pytest.approx(theirs.probabilities)
    with pytest.raises(TunelabError, match=r"^argument 'device' is cuda:1, but "):  # no such GPU, or not the run's
        tunelab.predict(run, texts=["x"], device="cuda:1")
    with pytest.raises(ConfigError, match=r"generate\(\): argument 'run' must be str \| Path \| LoadedRun, got a "):
        tunelab.generate(run, "hi")
    with pytest.raises(RunDirError, match="classify run, not a reward model"):
        tunelab.load_reward_model(run)
    assert len(loads) == 3
