"""What eval and predict say of a head run's inputs holding characters SmolLM2's tokenizer drops (it has no token for
U+0004 and no unknown token): they are scored without them, as training's data report says of its rows."""

import csv
import json

import pytest

import tunelab.training.recipe as recipe
from tunelab.eval.heads import evaluate_head_run, format_head_eval, head_eval_html
from tunelab.infer.predict import format_predictions, predict, save_predictions

from ..smollm2_vocab import smollm2_tiny_model_dir, smollm2_tiny_tokenizer  # noqa: F401 (SmolLM2's vocabulary)
from .head_setup import head_overrides, write_labels, write_pairs, write_rows


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):
    """A classify and a reward run on the tiny model."""
    folder = tmp_path_factory.mktemp("head-runs")
    data = {"classify": write_labels(folder), "reward": write_pairs(folder)}
    return {task: recipe.train(None, head_overrides(tiny_model_dir, folder, task, data[task])).run_dir for task in data}


def _line(where: str) -> str:
    return (
        "1 row holds characters the tokenizer drops, having no token for them (U+0004 x1): "
        f"first at {where}; they are scored without them"
    )


@pytest.mark.parametrize("task", ["classify", "reward"])
def test_head_eval_says_the_rows_it_scores_without_characters_the_tokenizer_drops(task, runs, tmp_path):
    """`tunelab eval` of a classify or reward run scored such a row without a word; eval.json now records them as
    `unread`, the printout and the report say them, and a file without them says nothing."""
    if task == "classify":
        rows = [{"prompt": "great number 1", "label": "pos"}, {"prompt": "awful\x04 number 2", "label": "neg"}]
    else:
        rows = [
            {"prompt": "Say something kind 1", "chosen": "You are great 1", "rejected": "Go away 1"},
            {"prompt": "Say something kind 2", "chosen": "You are\x04 great 2", "rejected": "Go away 2"},
        ]
    held = write_rows(tmp_path / "held.jsonl", rows)
    result = evaluate_head_run(runs[task], held, "cpu", save=False)
    assert result.unread == {"rows": 1, "chars": {"U+0004": 1}, "first": f"{held}:2", "held": 1, "effect": "scored"}
    assert f"  {_line(f'{held}:2')}" in format_head_eval(result).splitlines()
    assert f"<li>{_line(f'{held}:2')}</li>" in head_eval_html(result.to_dict())
    clean = evaluate_head_run(runs[task], write_rows(tmp_path / "clean.jsonl", rows[:1]), "cpu", save=False)
    assert clean.unread == {} and "tokenizer drops" not in format_head_eval(clean)
    assert "tokenizer drops" not in head_eval_html(clean.to_dict())


def test_predict_notes_the_inputs_it_scores_without_characters_the_tokenizer_drops(runs, tmp_path, capsys):
    """`tunelab predict` scored a text holding such a character without a word: it now says them on stderr as
    training does, and each prediction, the lines printed and the file it is saved to name the characters its input
    was scored without (a `dropped` column or key, there only where some input held any)."""
    data = write_rows(tmp_path / "new.jsonl", [{"prompt": "great number 1"}, {"prompt": "awful\x04\x04 number"}])
    predicted = predict(runs["classify"], data=data, texts=["fine\x04 day"], device="cpu")
    assert [p.dropped for p in predicted] == [None, {"U+0004": 2}, {"U+0004": 1}]
    note = (
        "note: 2 rows hold characters the tokenizer drops, having no token for them (U+0004 x3): "
        f"first at {data}:2; they are scored without them."
    )
    assert note in capsys.readouterr().err.splitlines()
    table = list(csv.DictReader(save_predictions(predicted, tmp_path / "p.csv", runs["classify"]).open()))
    assert [row["dropped"] for row in table] == ["", "U+0004 x2", "U+0004 x1"]
    lines = save_predictions(predicted, tmp_path / "p.jsonl", runs["classify"]).read_text().splitlines()
    assert [json.loads(line)["dropped"] for line in lines] == [None, {"U+0004": 2}, {"U+0004": 1}]
    shown = [line.rsplit("  ", 1)[1] for line in format_predictions(predicted).splitlines()]  # what the CLI prints
    assert shown == [f"({data}:1)", f"({data}:2; scored without U+0004 x2)", "(text 1; scored without U+0004 x1)"]
    rewarded = predict(runs["reward"], prompt="Say something kind", answers=["You are\x04 great"], device="cpu")
    assert rewarded[0].dropped == {"U+0004": 1}
    assert format_predictions(rewarded).endswith("  (answer 1; scored without U+0004 x1)")
    assert f"note: {_line('answer 1')}." in capsys.readouterr().err.splitlines()
    clean = predict(runs["classify"], texts=["great number 3"], device="cpu")
    assert clean[0].dropped is None and "tokenizer drops" not in capsys.readouterr().err
    assert format_predictions(clean).endswith("  (text 1)")
    assert "dropped" not in next(csv.DictReader(save_predictions(clean, tmp_path / "c.csv", runs["classify"]).open()))
    assert "dropped" not in json.loads(save_predictions(clean, tmp_path / "c.jsonl", runs["classify"]).read_text())
