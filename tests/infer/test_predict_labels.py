"""`tunelab predict`'s expected labels: a row's label written another way than the run's is read as the run's, as
`tunelab eval` reads it (`classify.label_key`)."""

import json

import tunelab.training.recipe as recipe
from tunelab.infer.predict import format_predictions, predict


def test_a_label_spelt_another_way_is_the_runs_label(tiny_model_dir, tmp_path, capsys):
    """A run trained on JSON labels 0 and 1 marked a CSV's `1.0` row ✗ (expected 1.0) where it predicted 1, and `POS`
    where it predicted pos, while eval counts both as right; the expected label is now the run's spelling, and a label
    the run never trained on stays as written."""
    rows = [{"prompt": f"{('great', 'awful')[i % 2]} number {i}", "label": i % 2} for i in range(16)]
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps(r) + "\n" for r in rows))
    over = {"task": "classify", "model.name": str(tiny_model_dir), "data.train": [str(labels)], "model.device": "cpu"}
    over |= {"data.max_length": 64, "method.r": 4, "train.micro_batch": 4, "train.max_steps": 1}
    run = recipe.train(None, over | {"output_dir": str(tmp_path / "run")}).run_dir
    new = tmp_path / "new.csv"
    new.write_text("prompt,label\ngreat number 3,1.0\nawful number 4,0.0\nfine number 5,7\ngreat number 6,\n")
    got = predict(run, data=new, device="cpu")
    assert [p.expected for p in got] == ["1", "0", "7", None]
    shown = format_predictions(got).splitlines()
    for p, line in zip(got[:2], shown):
        assert line.startswith(f"{p.label} ✓" if p.label == p.expected else f"{p.label} ✗ expected {p.expected}")
    assert shown[2].startswith(f"{got[2].label} ? 7 is not a label of the run") and "✗" not in shown[2]
    # a label the run never trained on is named, with its count, as eval counts the rows it skips for it
    note = capsys.readouterr().err
    assert "1 row gives a label the run never trained on: '7' (1) (its labels: 0, 1)" in note, note
