"""`tunelab check` on classify and reward data: a good file passes with its labels, lengths and head input shown;
each bad input is refused with its file:line and exit 2; counted skips (chosen = rejected, unseen eval labels) are
warnings with where they are."""

import json

import pytest

import tunelab
from tunelab.cli import main
from tunelab.training.recipe import train

from ..smollm2_vocab import smollm2_tiny_model_dir, smollm2_tiny_tokenizer  # noqa: F401 (SmolLM2's vocabulary)


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _labels(n: int = 12) -> list[dict]:
    return [{"text": f"row {i} is {lab}", "label": lab} for i in range(n) for lab in [("pos", "neg", "neu")[i % 3]]]


def _over(tiny_model_dir, tmp_path, task, data, **more):
    return {
        "task": task,
        "model.name": str(tiny_model_dir),
        "data.train": [data],
        "data.max_length": 64,
        "train.micro_batch": 4,
        "output_dir": str(tmp_path / "run"),
    } | more


def test_a_good_label_file_passes_with_labels_lengths_and_the_head_input(tiny_model_dir, tmp_path, capsys, cli_flags):
    data = _write(tmp_path / "labels.jsonl", _labels())
    page = tmp_path / "page.html"
    over = _over(tiny_model_dir, tmp_path, "classify", data, **{"classify.prompt_format": "Says: {text} =>"})
    assert main(["check", *cli_flags(over), "--html", str(page)]) == 0
    out = capsys.readouterr().out
    assert "[INFO] labels: 3 labels in the training rows" in out and "neg: 4 rows" in out and "pos: 4 rows" in out
    assert "[PASS] lengths: tokens per input: min " in out and "(data.max_length 64); none over it" in out
    assert "[INFO] head input: classify.prompt_format 'Says: {text} =>'" in out
    assert f"{data}:1: 'Says: row 0 is pos =>' -> pos" in out  # the preview, formatted as the head reads it
    assert "[PASS] forward/backward (head): first micro-batch: loss " in out and "near ln 3 = 1.099" in out
    assert out.rstrip().splitlines()[-1].startswith("check: PASSED")
    assert "Says: row 0 is pos" in page.read_text() and not (tmp_path / "run").exists()
    # the rows as the head reads them stand under the examples' heading, which stood empty above the data summary
    html = page.read_text()
    assert "Examples as the task reads them</h2><pre>preview of the first 3 training rows" in html
    assert "loss tokens highlighted" not in html


def test_overlong_rows_and_unseen_eval_labels_are_warnings_with_where(tiny_model_dir, tmp_path, capsys, cli_flags):
    rows = _labels()
    rows[4]["text"] = " ".join(["word"] * 80)
    data = _write(tmp_path / "labels.jsonl", rows)
    held = _write(tmp_path / "held.jsonl", [{"text": "new", "label": "other"}, {"text": "fine", "label": "pos"}])
    over = _over(tiny_model_dir, tmp_path, "classify", data, **{"data.eval": held, "data.eval_fraction": 0.0})
    assert main(["check", *cli_flags(over), "--data-only"]) == 0
    out = capsys.readouterr().out
    assert "[WARN] lengths:" in out and f"dropped (data.overlong drop): 1 ({data}:5)" in out
    assert "[WARN] eval labels: 1 eval row has a label the training rows do not" in out and f"{held}:1" in out


def test_an_imbalanced_label_set_is_a_warning(tiny_model_dir, tmp_path, capsys, cli_flags):
    rows = [{"text": f"a {i}", "label": "big"} for i in range(22)] + [{"text": "b 1", "label": "small"}] * 2
    data = _write(tmp_path / "labels.jsonl", rows)
    over = _over(tiny_model_dir, tmp_path, "classify", data, **{"data.eval_fraction": 0.0})
    assert main(["check", *cli_flags(over), "--data-only"]) == 0
    out = capsys.readouterr().out
    assert "[WARN] class balance: big has 22 rows, small 2" in out
    # no eval split: 'every eval row's label is among the training labels' passed a check of no rows
    assert "[INFO] eval labels: no eval split (data.eval or data.eval_fraction): not checked" in out
    assert "every eval row's label" not in out


@pytest.mark.parametrize(
    "rows, message",
    [
        ([{"text": "a", "label": "x"}, {"text": "b"}], r"labels.jsonl:2: field 'label' is missing"),
        ([{"text": "a", "label": "x"}, {"text": "b", "label": "  "}], r"labels.jsonl:2: field 'label' is empty"),
        ([{"text": "a", "label": "x"}, {"text": "b", "label": None}], r"labels.jsonl:2: field 'label' must be a label"),
        (
            [{"text": "a", "label": "x"}, {"text": "b", "label": "x"}],
            r"only the label 'x'; a classifier needs at least",
        ),
        ([{"text": "a", "label": "x"}, {"label": "y"}], r"labels.jsonl:2: the row has no input to classify"),
    ],
    ids=["missing label", "empty label", "null label", "one class", "no input"],
)
def test_bad_label_data_is_bad_input_with_exit_2(rows, message, tiny_model_dir, tmp_path, capsys, cli_flags):
    data = _write(tmp_path / "labels.jsonl", rows)
    over = _over(tiny_model_dir, tmp_path, "classify", data, **{"data.eval_fraction": 0.0})
    assert main(["check", *cli_flags(over), "--data-only"]) == 2
    err = capsys.readouterr().err
    assert pytest.importorskip("re").search(message, err), err
    assert "Traceback" not in err


def test_pairs_with_chosen_equal_to_rejected_are_counted_with_where(tiny_model_dir, tmp_path, capsys, cli_flags):
    rows = [{"prompt": f"q {i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(6)]
    rows[2]["rejected"] = rows[2]["chosen"]
    rows[4]["chosen"] = " "
    data = _write(tmp_path / "pairs.jsonl", rows)
    over = _over(tiny_model_dir, tmp_path, "reward", data, **{"data.eval_fraction": 0.0})
    assert main(["check", *cli_flags(over)]) == 0
    out = capsys.readouterr().out
    assert "[WARN] pairs: 4 pairs used; 2 skipped" in out
    assert f"chosen = rejected: 1 ({data}:3)" in out and f"an empty side: 1 ({data}:5)" in out
    assert "[PASS] forward/backward (head)" in out


def test_a_pair_row_without_rejected_is_bad_input(tiny_model_dir, tmp_path, capsys, cli_flags):
    data = _write(tmp_path / "pairs.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}, {"chosen": "a"}])
    over = _over(tiny_model_dir, tmp_path, "reward", data, **{"data.eval_fraction": 0.0})
    assert main(["check", *cli_flags(over), "--data-only"]) == 2
    assert f"{data}:2: 1 field missing (rejected)" in capsys.readouterr().err


def test_a_prompt_format_on_chat_rows_is_bad_input(tiny_model_dir, tmp_path, capsys, cli_flags):
    data = _write(tmp_path / "labels.jsonl", [{"prompt": "a", "label": "x"}, {"prompt": "b", "label": "y"}])
    over = _over(tiny_model_dir, tmp_path, "classify", data, **{"classify.prompt_format": "Q: {text} A:"})
    assert main(["check", *cli_flags(over), "--data-only"]) == 2
    assert "option 'classify.prompt_format' formats text inputs" in capsys.readouterr().err


def test_dpo_pairs_are_checked_and_the_first_loss_is_ln2_with_the_policy_its_reference(
    tiny_model_dir, tmp_path, capsys, cli_flags
):
    rows = [
        {"prompt": f"What is the code of box {i}?", "chosen": f"Box {i} has code {1000 + i}.", "rejected": "No."}
        for i in range(8)
    ]
    rows[3]["rejected"] = rows[3]["chosen"]
    data = _write(tmp_path / "pairs.jsonl", rows)
    over = _over(tiny_model_dir, tmp_path, "dpo", data, **{"method.r": 4, "data.eval_fraction": 0.0})
    assert main(["check", *cli_flags(over)]) == 0
    out = capsys.readouterr().out
    assert "training rows as dpo scores them:" in out
    # the prompt once, then the two answers: whole sides would read alike up to the answers that differ
    preview = out[out.index(f"{data}:1: ") :].splitlines()[:3]
    assert preview[0].startswith(f"{data}:1: prompt   '") and "What is the code of box 0?" in preview[0]
    assert preview[1].strip().startswith("chosen   'Box 0 has code 1000.") and "box 0?" not in preview[1]
    assert preview[2].strip().startswith("rejected 'No.")
    assert "[WARN] pairs: 7 pairs used; 1 skipped" in out and f"chosen = rejected: 1 ({data}:4)" in out
    assert "[PASS] lengths: tokens per side (chosen or rejected)" in out
    assert "[PASS] forward/backward (dpo): first micro-batch: loss 0.6931, gradients finite" in out
    assert out.rstrip().splitlines()[-1].startswith("check: PASSED") and not (tmp_path / "run").exists()


def test_resume_with_changed_label_data_fails_as_for_sft(tiny_model_dir, tmp_path):
    data = _write(tmp_path / "labels.jsonl", _labels())
    over = _over(tiny_model_dir, tmp_path, "classify", data, **{"train.max_steps": 1, "train.save_every": 1})
    train(None, over | {"train.keep_checkpoints_after_finish": True})
    same = tunelab.check(None, over, resume=True, model=False)
    assert {i.name: i.status for i in same.items}.get("resume data") is None  # the rows the run started with
    _write(tmp_path / "labels.jsonl", _labels()[:-1] + [{"text": "row 11 is new", "label": "neu"}])
    changed = tunelab.check(None, over, resume=True, model=False)
    item = next(i for i in changed.items if i.name == "resume data")
    assert item.status == "fail" and f"{data} changed" in item.summary


def test_dpo_pairs_cut_to_max_length_are_said_to_keep_their_first_tokens(tiny_model_dir, tmp_path, capsys, cli_flags):
    """dpo cuts an overlong pair to its first data.max_length tokens (the prompt and the start of the answers), but
    the check said the pairs were cut to their last ones, as the heads cut their inputs."""
    rows = [{"prompt": f"What is {i} + {i}?", "chosen": f"{2 * i}.", "rejected": "No idea."} for i in range(6)]
    rows[2]["chosen"] = " ".join(["word"] * 80)
    data = _write(tmp_path / "pairs.jsonl", rows)
    over = _over(tiny_model_dir, tmp_path, "dpo", data, **{"data.overlong": "truncate", "data.eval_fraction": 0.0})
    assert main(["check", *cli_flags(over), "--data-only"]) == 0
    out = capsys.readouterr().out
    assert "cut to their first 64 tokens: 1" in out and "cut to their last" not in out


@pytest.mark.parametrize("task", ["reward", "dpo"])
def test_pairs_skipped_for_any_reason_are_counted_by_the_check(task, tiny_model_dir, tmp_path, capsys, cli_flags):
    """The pairs item counted only pairs whose sides were the same or empty, and said 'none skipped' over pairs the
    reader skipped as chats sft skips (a conversation that starts with the assistant's turn)."""
    rows = [{"prompt": f"What is {i} + {i}?", "chosen": f"{2 * i}.", "rejected": "No idea."} for i in range(6)]
    turns = [{"role": "assistant", "content": "Hi."}, {"role": "user", "content": "What is 1 + 1?"}]
    rows[1] = {"messages": turns, "chosen": "2.", "rejected": "No idea."}
    data = _write(tmp_path / "pairs.jsonl", rows)
    over = _over(tiny_model_dir, tmp_path, task, data, **{"data.eval_fraction": 0.0})
    assert main(["check", *cli_flags(over), "--data-only"]) == 0
    out = capsys.readouterr().out
    assert "[WARN] pairs: 5 pairs used; 1 skipped" in out
    assert f"conversation does not start with a user message: 1 ({data}:2)" in out


def test_pairs_dropped_as_too_long_are_not_called_none_skipped(tiny_model_dir, tmp_path, capsys, cli_flags):
    """LLaMA-Factory's dpo_en_demo at max_length 512: 'pairs: 97 pairs used; none skipped' over 203 of 300 pairs
    dropped as too long (said only by the lengths item below it). The pairs item now counts them too."""
    rows = [{"prompt": f"What is {i} + {i}?", "chosen": f"{2 * i}.", "rejected": "No idea."} for i in range(6)]
    rows[2]["chosen"] = "It is " + "very " * 200 + "much."
    data = _write(tmp_path / "pairs.jsonl", rows)
    over = _over(tiny_model_dir, tmp_path, "dpo", data, **{"data.eval_fraction": 0.0, "data.max_length": 64})
    main(["check", *cli_flags(over), "--data-only"])
    out = capsys.readouterr().out
    assert "pairs: 5 pairs used; none other skipped (1 too long: see lengths)" in out


def test_feedback_rows_dropped_as_too_long_are_not_called_none_skipped(tiny_model_dir, tmp_path, capsys, cli_flags):
    """dpo.loss kto: the feedback rows item said 'none skipped' while the lengths item below it reported rows
    dropped as too long."""
    rows = [{"prompt": f"What is {i} + {i}?", "completion": f"{2 * i}.", "label": i % 2 == 0} for i in range(6)]
    rows[2]["completion"] = "It is " + "very " * 200 + "much."
    data = _write(tmp_path / "feedback.jsonl", rows)
    over = _over(tiny_model_dir, tmp_path, "dpo", data, **{"dpo.loss": "kto", "data.eval_fraction": 0.0})
    main(["check", *cli_flags(over), "--data-only"])
    out = capsys.readouterr().out
    assert "feedback rows: 5 training rows used (2 desirable, 3 undesirable); none other skipped (1 too long: " in out
    assert "dropped (data.overlong drop): 1 (" in out


@pytest.mark.parametrize("task", ["classify", "dpo"])
def test_the_head_check_steps_the_micro_batch_training_takes_first(task, tiny_model_dir, tmp_path, monkeypatch):
    """The check's forward/backward ran on the first rows of the file, not on training's first (shuffled) micro-batch,
    while saying it steps the first micro-batch 'as the first training step takes it'."""
    import tunelab.checks.heads as heads
    from tunelab.data.loader import epoch_rows
    from tunelab.tasks import get_task
    from tunelab.training.prepare import load_inputs
    from tunelab.training.recipe import resolve

    if task == "classify":
        data = _write(tmp_path / "labels.jsonl", _labels(16))
    else:
        pairs = [{"prompt": f"Box {i}?", "chosen": f"Code {i}.", "rejected": "No."} for i in range(16)]
        data = _write(tmp_path / "pairs.jsonl", pairs)
    over = _over(tiny_model_dir, tmp_path, task, data, **{"data.eval_fraction": 0.0, "method.r": 4})
    cfg = resolve(None, over).config
    inputs = load_inputs(cfg)
    steps = []
    monkeypatch.setattr(heads, "task_step", lambda task, model, batch: steps.append(batch) or (0.5, True))
    heads.head_model_items(cfg, inputs)
    make, pad, seed = get_task(task, cfg).make_batches, inputs.tokenizer.pad_token_id, cfg.train.seed
    trained = make(epoch_rows(inputs.data, seed, 0), 4, pad, shuffle=True, seed=seed, epoch=0)[0]
    in_file_order = make(inputs.data.train[:4], 4, pad, shuffle=False, seed=0, epoch=0)[0]
    assert trained["sources"] != in_file_order["sources"]  # the test tells the two apart
    assert steps[0]["sources"] == trained["sources"]


@pytest.mark.parametrize("task", ["classify", "dpo", "grpo"])
def test_the_preview_names_a_json_array_row_by_its_index(task, tiny_model_dir, tmp_path, capsys, cli_flags):
    """The preview named the first row of a .json array `rows.json:0`, a line 0 that no editor has, while the data
    summary named the same row `rows.json[0]`. Both name it by its index now."""
    rows = {
        "classify": _labels(),
        "dpo": [
            {"prompt": f"Code of box {i}?", "chosen": f"Box {i}: {1000 + i}.", "rejected": "No."} for i in range(6)
        ],
        "grpo": [{"prompt": f"What is {i} plus {i}?", "expected": str(2 * i)} for i in range(6)],
    }[task]
    data = tmp_path / "rows.json"
    data.write_text(json.dumps(rows))
    more = {"grpo.rewards": ["contains"], "grpo.max_new_tokens": 8} if task == "grpo" else {}
    over = _over(tiny_model_dir, tmp_path, task, str(data), **more)
    assert main(["check", *cli_flags(over), "--data-only"]) == 0
    out = capsys.readouterr().out
    assert f"  {data}[0]: " in out and f"{data}:0" not in out


def test_the_pairs_item_splits_the_pairs_used_into_training_and_eval(tiny_model_dir, tmp_path, capsys, cli_flags):
    """examples/hh_reward: 'pairs: 907 pairs used', where training uses 860 and the eval split 47; a user reading it
    as the training set's size counted 47 pairs too many. With an eval split the item says how the pairs divide."""
    rows = [{"prompt": f"What is {i} + {i}?", "chosen": f"{2 * i}.", "rejected": "No idea."} for i in range(8)]
    data = _write(tmp_path / "pairs.jsonl", rows)
    over = _over(tiny_model_dir, tmp_path, "dpo", data, **{"data.eval_fraction": 0.25})
    main(["check", *cli_flags(over), "--data-only"])
    out = capsys.readouterr().out
    assert "pairs: 8 pairs used (6 training, 2 eval); none skipped" in out, out
