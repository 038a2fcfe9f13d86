"""`tunelab predict`'s texts and --data rows in the order they were given."""

import json

import tunelab.training.recipe as recipe
from tunelab.cli import main, texts_before_data


def test_texts_given_before_data_are_predicted_first(tiny_model_dir, tmp_path, capsys):
    """`predict RUN "text" --data FILE` printed the text after the file's rows, whatever the order given."""
    rows = [{"prompt": f"{('great', 'awful')[i % 2]} number {i}", "label": ("pos", "neg")[i % 2]} for i in range(24)]
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps(r) + "\n" for r in rows))
    new = tmp_path / "new.jsonl"
    new.write_text(json.dumps({"prompt": "great news"}) + "\n")
    over = {"task": "classify", "model.name": str(tiny_model_dir), "data.train": [str(labels)], "model.device": "cpu"}
    over |= {"data.max_length": 64, "method.r": 4, "train.micro_batch": 4, "train.max_steps": 1}
    run = recipe.train(None, over | {"output_dir": str(tmp_path / "run")}).run_dir
    capsys.readouterr()

    def wheres(*args):
        assert main(["predict", str(run), *args, "--device", "cpu"]) == 0
        return [line.rsplit("(", 1)[1].rstrip(")") for line in capsys.readouterr().out.splitlines()]

    assert wheres("a text", "--data", str(new)) == ["text 1", f"{new}:1"]
    assert wheres("--text", "a text", "--data", str(new)) == ["text 1", f"{new}:1"]
    assert wheres("--data", str(new), "--text", "a text") == [f"{new}:1", "text 1"]
    # a TEXT after --data (the README's "texts before or after the options") was printed first all the same
    assert wheres("--data", str(new), "a text") == [f"{new}:1", "text 1"]


def test_the_order_is_read_from_the_command_line():
    assert texts_before_data(["predict", "r", "hi", "--data", "f"])
    assert texts_before_data(["predict", "r", "--text=hi", "--data", "f"])
    assert not texts_before_data(["predict", "r", "--data=f", "--text", "hi"])
    assert not texts_before_data(["predict", "r", "--data", "f"])
    # a TEXT after --data, or after another option's value, is read where it stands; an option's value is no TEXT
    assert not texts_before_data(["predict", "r", "--data", "f", "hi"])
    assert not texts_before_data(["predict", "r", "--dat", "f", "hi"])  # argparse's abbreviation of --data
    assert texts_before_data(["predict", "r", "--device", "cpu", "hi", "--data", "f"])
    assert texts_before_data(["predict", "r", "--overwrite", "hi", "--data", "f"])
    assert not texts_before_data(["predict", "r", "--out", "p.csv", "--data", "f", "hi"])
