"""data.transform in the readers of classify, reward, dpo and grpo (`tasks/head_data.counted_records`): the rows of
the training and eval files go through the user's function before their fields are read, as sft's do; a list of rows
makes several items of one record, each named by its row; a function that raises or returns something else than
rows stops the run naming the file and line. A grpo reward function receives the row the function returned."""

import json
import re
from types import SimpleNamespace

import pytest

from tunelab.config import DataConfig, RewardSpec, load_config
from tunelab.errors import DataError
from tunelab.tasks import rewards
from tunelab.tasks.classify import CLASSIFY, read_labelled
from tunelab.tasks.grpo import _samples
from tunelab.tasks.preference_data import build_preferences
from tunelab.tasks.prompt_data import build_prompts
from tunelab.tasks.reward import REWARD

BUILD = {
    "dpo": build_preferences,
    "reward": REWARD.build_data,
    "classify": CLASSIFY.build_data,
    "grpo": lambda cfg, tokenizer, seed: build_prompts(cfg, tokenizer, seed, ["expected"]),
}

SHAPING = '''
def nli(row):
    """GLUE's MNLI-style rows: two sentences, one input; the label numbers as words."""
    text = row.pop("premise") + "\\n" + row.pop("hypothesis")
    return {"text": text, "label": ["entailment", "neutral", "contradiction"][row["label"]]}


def ranked(row):
    """A question with its answers best first: one pair of each answer with the next, [] without two."""
    answers = row["answers"]
    return [
        {"prompt": row["question"], "chosen": better, "rejected": worse}
        for better, worse in zip(answers, answers[1:])
    ]


def fails(row):
    if row.get("bad"):
        raise KeyError("answers")
    return row


def number(row):
    return 3


def sums(row):
    """Sums under the user's own column names: a prompt and its expected answer of each pair of numbers."""
    return [{"prompt": f"What is {a} + {b}?", "Expected": a + b, "level": row["level"]} for a, b in row["pairs"]]


def checks(prompt, answer, row):
    """1 when the row is the one sums returned (its column Expected named as read, and as sums wrote it) and the
    answer is its sum."""
    named = sorted(row) == ["Expected", "expected", "level", "prompt"] and prompt == row["prompt"]
    return float(named and answer == str(row["expected"]))
'''


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _shaping(tmp_path, name: str) -> str:
    (tmp_path / "shaping.py").write_text(SHAPING)
    return f"{tmp_path / 'shaping.py'}:{name}"


def _build(task, tokenizer, train, **over):
    cfg = load_config(None, {"task": task, "data.train": [train], "data.max_length": 128} | over).config
    return BUILD[task](cfg, tokenizer, 0)


def _nli(i: int) -> dict:
    return {"premise": f"A man plays guitar {i}.", "hypothesis": f"Someone plays music {i}.", "label": i % 3}


def test_a_classify_run_reads_its_training_and_eval_rows_through_the_transform(smollm2_tokenizer, tmp_path):
    """A classify run refused data.transform, so an NLI file (premise and hypothesis, numbered labels) had to be
    rewritten first; the function now makes each row's one input and its label, in the eval file too."""
    train = _write(tmp_path / "train.jsonl", [_nli(i) for i in range(6)])
    held = _write(tmp_path / "dev.jsonl", [_nli(i) for i in range(6, 9)])
    data = _build("classify", smollm2_tokenizer, train, **{"data.transform": _shaping(tmp_path, "nli"),
                                                          "data.eval": held})  # fmt: skip
    texts = [smollm2_tokenizer.decode(row.input_ids) for row in data.train]
    assert texts == [f"A man plays guitar {i}.\nSomeone plays music {i}." for i in range(6)]
    assert [smollm2_tokenizer.decode(row.input_ids) for row in data.eval] == [
        f"A man plays guitar {i}.\nSomeone plays music {i}." for i in range(6, 9)
    ]
    assert data.facts["labels"] == ["contradiction", "entailment", "neutral"]
    assert not [n for n in data.report.notes if "premise" in n or "hypothesis" in n]  # popped: nothing left unread


@pytest.mark.parametrize("task", ["dpo", "reward"])
def test_a_ranked_answers_row_becomes_pairs_named_by_their_row(task, smollm2_tokenizer, tmp_path):
    """Preference rows that rank several answers of one question (not chosen and rejected columns): the function
    makes a pair of each answer with the next; a row of one answer is dropped ([]), and counted."""
    rows = [
        {"question": f"What is {i} + {i}?", "answers": [f"{2 * i}.", f"About {2 * i}.", "No idea."]} for i in range(4)
    ]
    rows.append({"question": "What is 9 + 9?", "answers": ["18."]})
    rows.append({"question": "Same?", "answers": ["Yes.", "Maybe.", "Maybe."]})  # its 2nd pair's sides are equal
    train = _write(tmp_path / "t.jsonl", rows)
    data = _build(task, smollm2_tokenizer, train, **{"data.transform": _shaping(tmp_path, "ranked"),
                                                    "data.eval_fraction": 0})  # fmt: skip
    assert len(data.train) == 9
    second = smollm2_tokenizer.decode(data.train[1].chosen_ids)
    assert "What is 0 + 0?" in second and "About 0." in second and "No idea." not in second
    summary = data.report.summary()
    assert "data: 1 file, 11 records (10 of them made by data.transform of 5 records)" in summary
    assert f"dropped by data.transform {_shaping(tmp_path, 'ranked')} ({train}:5)" in summary
    assert f"chosen and rejected are the same ({train}:6 (data.transform's row 2 of 2))" in summary
    held = _build(task, smollm2_tokenizer, train, **{"data.transform": _shaping(tmp_path, "ranked"),
                                                    "data.eval_fraction": 0.25})  # fmt: skip
    asked = [  # the question of each pair, by split: the pairs of one row are held out together, as sft's rows are
        {re.search(r"What is \d \+ \d\?|Same\?", smollm2_tokenizer.decode(row.chosen_ids))[0] for row in rows}
        for rows in (held.train, held.eval)
    ]
    assert asked[1] and not asked[0] & asked[1] and len(held.train) + len(held.eval) == 9


def test_a_grpo_reward_function_receives_the_row_the_transform_returned(smollm2_tokenizer, tmp_path):
    """grpo refused data.transform, so prompts and expected answers under other names had to be rewritten by hand;
    the function now builds them, in the eval file too, and the row each reward receives is the one it returned."""
    train = _write(tmp_path / "t.jsonl", [{"pairs": [[i, 1], [i, 2]], "level": "easy"} for i in range(3)])
    held = _write(tmp_path / "e.jsonl", [{"pairs": [[7, 7]], "level": "hard"}])
    data = _build("grpo", smollm2_tokenizer, train, **{"data.transform": _shaping(tmp_path, "sums"), "data.eval": held})
    assert [row.prompt for row in data.train] == [f"What is {i} + {b}?" for i in range(3) for b in (1, 2)]
    assert [row.row for row in data.eval] == [{"prompt": "What is 7 + 7?", "expected": 14, "level": "hard"}]
    assert "What is 7 + 7?<|im_end|>" in smollm2_tokenizer.decode(data.eval[0].prompt_ids)
    answers = [smollm2_tokenizer.encode(text) for text in ("1", "2", "3")]
    samples = _samples(data.train[:3], answers, set(), smollm2_tokenizer, 1)
    assert samples[1].where == f"{train}:1 (data.transform's row 2 of 2)"
    (spec,) = rewards.specs([RewardSpec(kind="function", function=_shaping(tmp_path, "checks"))])
    values, failures = rewards.score([rewards.build(spec)], samples)
    assert values[:, 0].tolist() == [1.0, 1.0, 0.0] and not failures  # 1 + 1 is 2, not 3


@pytest.mark.parametrize("task", ["classify", "dpo", "reward", "grpo"])
def test_a_transform_that_raises_or_returns_no_rows_is_named_with_file_and_line(task, smollm2_tokenizer, tmp_path):
    good = {"classify": {"text": "Hi.", "label": "a"}, "dpo": {"prompt": "Hi?", "chosen": "Hello.", "rejected": "No."}}
    good["grpo"] = {"prompt": "Hi?", "expected": "Hello"}
    rows = [good.get(task, good["dpo"])] * 3
    train = _write(tmp_path / "t.jsonl", [*rows, {**rows[0], "bad": True}])
    with pytest.raises(
        DataError, match=rf"^{train}:4: data\.transform \S+:fails raised KeyError: 'answers' on this row"
    ):
        _build(task, smollm2_tokenizer, train, **{"data.transform": _shaping(tmp_path, "fails")})
    with pytest.raises(DataError, match=rf"^{train}:1: data\.transform \S+:number returned an int; it must return"):
        _build(task, smollm2_tokenizer, train, **{"data.transform": _shaping(tmp_path, "number")})


def test_tunelab_eval_reads_a_classify_file_through_the_runs_transform(tmp_path):
    """`tunelab eval RUN --data FILE` reads the file as training read its eval file: through the run's transform."""
    from tunelab.eval.heads import _read

    held = _write(tmp_path / "dev.jsonl", [_nli(i) for i in range(2)])
    run = SimpleNamespace(data=DataConfig(train=[held], transform=_shaping(tmp_path, "nli")))
    items, wheres, _ = _read(run, held, read_labelled)
    assert [(item.input.text, item.label) for item in items] == [
        ("A man plays guitar 0.\nSomeone plays music 0.", "entailment"),
        ("A man plays guitar 1.\nSomeone plays music 1.", "neutral"),
    ]
    assert wheres == [f"{held}:1", f"{held}:2"]


def test_a_classify_run_scores_and_predicts_its_files_through_its_transform(tiny_model_dir, tmp_path, capsys):
    """`tunelab eval RUN --data FILE` and `tunelab predict RUN --data FILE` read NLI rows as the run trained on them:
    through the data.transform its config.yaml keeps (rows to predict come without a label: the function lets them)."""
    import tunelab.training.recipe as recipe
    from tunelab.cli import main

    (tmp_path / "pairs.py").write_text(
        "def join(row):\n    label = row.get('label')\n"
        "    return {'text': row.pop('premise') + ' / ' + row.pop('hypothesis'), 'label': label}\n"
    )
    train = _write(tmp_path / "train.jsonl", [_nli(i) for i in range(12)])
    dev = _write(tmp_path / "dev.jsonl", [_nli(i) for i in range(12, 15)])
    new = _write(tmp_path / "new.jsonl", [{"premise": "A cat sleeps.", "hypothesis": "An animal rests."}])
    over = {"task": "classify", "model.name": str(tiny_model_dir), "data.train": [train], "model.device": "cpu"}
    over |= {"data.max_length": 64, "method.r": 4, "train.micro_batch": 4, "train.max_steps": 1}
    over |= {"data.transform": f"{tmp_path / 'pairs.py'}:join", "output_dir": str(tmp_path / "run")}
    run = str(recipe.train(None, over).run_dir)
    capsys.readouterr()
    assert main(["eval", run, "--data", dev, "--device", "cpu"]) == 0
    assert f"on {dev}: 3 rows scored" in capsys.readouterr().out
    assert main(["predict", run, "--data", new, "--device", "cpu"]) == 0
    assert f"({new}:1)" in capsys.readouterr().out


def test_a_reward_runs_training_file_given_to_predict_is_refused_for_eval(tiny_model_dir, tmp_path, capsys):
    """A reward run's data.transform shapes its pairs and predict reads single answers without it, so `tunelab predict
    RUN --data TRAIN` read the raw rows (a question and ranked answers) and said they held nothing to score, with no
    word of the transform or of pairs. The run's own training file is now refused naming `tunelab eval`, which reads it
    through the transform, while a file of answers is scored."""
    import tunelab.training.recipe as recipe
    from tunelab.cli import main

    train = _write(tmp_path / "ranked.jsonl", [{"question": f"Q{i}?", "answers": [f"a{i}", f"b{i}"]} for i in range(8)])
    new = _write(tmp_path / "new.jsonl", [{"prompt": "Q1?", "answer": "a1"}])
    over = {"task": "reward", "model.name": str(tiny_model_dir), "data.train": [train], "model.device": "cpu"}
    over |= {"data.max_length": 64, "method.r": 4, "train.micro_batch": 4, "train.max_steps": 1}
    over |= {"data.transform": _shaping(tmp_path, "ranked"), "output_dir": str(tmp_path / "run")}
    run = str(recipe.train(None, over).run_dir)
    capsys.readouterr()
    assert main(["predict", run, "--data", train, "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert f"{train} is the run's training file (data.train)" in err and f"tunelab eval {run} --data {train}" in err
    assert main(["predict", run, "--data", new, "--device", "cpu"]) == 0
    assert f"({new}:1)" in capsys.readouterr().out
    assert main(["eval", run, "--data", train, "--device", "cpu"]) == 0  # the pairs, through the transform
    # another file of the training files' form is told that the transform is not applied to predict's rows
    held = _write(tmp_path / "held.jsonl", [{"question": "Q9?", "answers": ["a9", "b9"]}])
    assert main(["predict", run, "--data", held, "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert f"{held}:1: nothing to score" in err and "The run's data.transform " in err and "is not applied" in err
    assert f"scored as pairs by 'tunelab eval {run} --data {held}'" in err  # the run and the file, as given
