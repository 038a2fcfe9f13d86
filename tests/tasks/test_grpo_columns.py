"""Task grpo's reward functions and the row's column names: a column read under another case (`Expected` as
`expected`) reaches a function under the file's own name too; parameters after prompt, answer and row are columns,
found by name in any case, as TRL passes a data set's columns as keywords; a **kwargs function gets every column; a
parameter without a default that no column gives stops the run before the model loads, naming the function, the
parameter and the row's columns."""

import pytest

from tunelab.config import RewardSpec, load_config
from tunelab.errors import DataError
from tunelab.models.load import load_tokenizer, resolve_source
from tunelab.tasks import get_task
from tunelab.tasks import rewards as R
from tunelab.tasks.grpo import _samples

from .grpo_setup import grpo_overrides, write_rows

ROWS = [
    {"Prompt": f"What is {n} x 7?", "Expected": str(7 * n), "Answer": 7 * n, "ANSWER_KEY": str(7 * n)} for n in (3, 6)
]


def _data(tiny_model_dir, tmp_path, functions, module, rows=ROWS):
    entries = ["contains"] + [RewardSpec(kind="function", function=f"{module}:{f}") for f in functions]
    options = grpo_overrides(tiny_model_dir, tmp_path, write_rows(tmp_path / "p.jsonl", rows), module)
    cfg = load_config(None, options | {"grpo.rewards": entries, "data.eval_fraction": 0.0}).config
    tokenizer = load_tokenizer(resolve_source(str(tiny_model_dir)))
    return get_task("grpo", cfg).build_data(cfg, tokenizer, 0), tokenizer, R.specs(entries)


def test_functions_read_columns_under_the_files_own_names(tiny_model_dir, tmp_path, column_rewards):
    functions = ["own_spelling", "by_parameter", "lower_parameter", "every_column"]
    data, tokenizer, specs = _data(tiny_model_dir, tmp_path, functions, column_rewards)
    rows = sorted(data.train, key=lambda r: r.line)
    assert rows[0].row["expected"] == "21"  # contains read `Expected` as expected
    answers = [tokenizer.encode(text, add_special_tokens=False) for text in ("It is 21.", "I think 40.")]
    samples = _samples(rows[:1], answers, set(), tokenizer, group=2)
    values, failures = R.score([R.build(s) for s in specs], samples)
    assert not failures, failures
    # contains; row["Expected"] (KeyError before); the parameter Answer (refused before); answer_key, ANSWER_KEY's
    # value; **columns: the row's columns as the file names them, and the thought
    assert values.tolist() == [[1.0, 1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0, 1.0]]


def test_every_column_a_kwargs_function_gets_is_named_as_written(tmp_path):
    got = {}

    def keep(prompt, answer, row, **columns):
        got.update(columns, row=row)
        return 1.0

    sample = R.Sample(
        "p", "a", {"prompt": "p", "expected": "4", "Other": 1}, 1, "f:1", spelled={"expected": "EXPECTED"}
    )
    assert R.call(keep, R.takes(keep), "m:keep", sample) == 1.0
    assert got.pop("row") == {"prompt": "p", "expected": "4", "EXPECTED": "4", "Other": 1}
    assert got == {"EXPECTED": "4", "Other": 1, "thought": None}  # prompt: the name the function takes it by


def test_a_parameter_no_column_gives_is_named_with_the_rows_columns(tiny_model_dir, tmp_path, column_rewards):
    rows = [{k: v for k, v in row.items() if k != "Answer"} for row in ROWS]
    with pytest.raises(DataError) as caught:
        _data(tiny_model_dir, tmp_path, ["by_parameter"], column_rewards, rows=rows)
    says = str(caught.value)
    assert "p.jsonl:1: reward function grpo_column_rewards:by_parameter takes the parameter 'Answer'" in says
    assert "(its columns: Prompt, Expected, ANSWER_KEY)" in says  # as the file writes them
    # checked as the function is loaded: its column parameters may be given by keyword
    assert R.specs([RewardSpec(kind="function", function=f"{column_rewards}:by_parameter")])[0].name == "by_parameter"
