"""Which stage may follow which: a head stage continues the head stage before it; a stage that cannot follow its
predecessor, a bad stage, or a stage's data inside the run directory is refused before anything trains or is written,
naming its file and line."""

import json
import shlex
import shutil
from pathlib import Path

import pytest
import torch

from tunelab.api import train
from tunelab.cli import main
from tunelab.config import load_config
from tunelab.errors import ConfigError, DataError, RunDirError
from tunelab.rundir import read_info

from .stages_setup import adapter_of, docs_then_qa


@pytest.fixture
def staged(tiny_overrides, tmp_path):
    return docs_then_qa(tiny_overrides, tmp_path)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"trian": {"lr": 1}}, "stage 2: unknown section 'trian'. Did you mean 'train'"),
        ({"model": {"name": "other-model"}}, "stage 2: model.name is 'other-model', but stage 2 starts from stage 1"),
        ({"model": {"adapter": "runs/other"}}, r"stage 2: model.adapter is '\S*runs/other', but stage 2 starts from"),
        ({"method": {"r": 8}}, r"continues stage 1's adapter .* method.r 8 \(stage 1: 4\)"),
        ({"method": {"name": "full"}}, "continue: adapter trains stage 1's adapter on"),
        ({"continue": "restart"}, "'continue' is 'restart'; allowed values: adapter, merge"),
        ({"output_dir": "elsewhere"}, "'output_dir' belongs to the whole run"),
        ({"dpo": {"beta": 0.5}}, "stage 2: option 'dpo.beta' is for task dpo; option 'task' is sft"),
        ({"eval": {"questions": "q.jsonl"}}, "stage 2: 'eval.questions' belongs to the whole run"),
        ({"eval": {"refusal": "No."}}, "stage 2: 'eval.refusal' belongs to the whole run"),
        ({"eval": {"max_new_tokens": 8}}, "stage 2: 'eval.max_new_tokens' belongs to the whole run"),
        ({"federated": {"rounds": 2}}, "stage 2: 'federated.rounds': a stage is not federated"),
        ({"data": {"max_length": 2048}}, r"stage 2 of 2 \(qa\): option 'data.max_length' is 2048, above the context"),
        ({"name": "docs"}, "stage 2: the stage's name is 'docs', which stage 1 has too"),
    ],
)
def test_bad_stages_are_refused_and_nothing_is_written(staged, tmp_path, change, message):
    staged["stages"][1] |= change
    with pytest.raises(ConfigError, match=message):
        train(None, staged)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("option", ["train", "eval"])
def test_a_stages_data_error_names_the_stage_and_eval_as_the_caller_runs_it(
    staged, tmp_path, capsys, cli_flags, option
):
    """A file of questions (question, expected) as a stage's data.train or data.eval was refused naming no stage, and
    advising "eval's data file" where a single run names eval's command of its run directory."""
    questions = tmp_path / "heldout.jsonl"
    questions.write_text('{"question": "Since when?", "expected": "1997"}\n')
    run = tmp_path / "my run"
    given = {"train": [str(questions)]} if option == "train" else {"eval": str(questions), "eval_fraction": 0.0}
    staged["stages"][1]["data"] |= given
    over = staged | {"output_dir": str(run)}
    assert main(["train", *cli_flags(over)]) == 2
    err = capsys.readouterr().err
    assert f"stage 2 of 2 (qa): {questions}:1: cannot tell the data format" in err
    assert f"score them with 'tunelab eval {shlex.quote(str(run))} --data FILE'" in err and "eval's data" not in err
    with pytest.raises(DataError) as python:
        train(None, over)
    assert str(python.value).startswith(f"stage 2 of 2 (qa): {questions}:1: cannot tell the data format")
    assert f"score them with tunelab.evaluate({str(run)!r}, data=FILE)" in str(python.value)
    assert not run.exists()


def test_a_stages_eval_split_error_names_the_stage(staged, tmp_path, capsys, cli_flags):
    one = tmp_path / "one.jsonl"
    one.write_text('{"question": "Which box?", "answer": "Box 1."}\n')
    staged["stages"][0]["data"]["train"] = [str(one)]
    assert main(["train", *cli_flags(staged)]) == 2
    assert "stage 1 of 2 (docs): data.eval_fraction=0.2 holds out 1 of 1 usable" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_overwrite_never_deletes_a_stages_data_inside_the_run_directory(staged, tmp_path, tiny_run_dir):
    """Every path inside output_dir was dropped from the files a staged run protects (to let a stage start from the
    stage before it, inside the run), a stage's data file too: --overwrite replaced the run directory that held it."""

    run = tmp_path / "run"
    shutil.copytree(tiny_run_dir, run)  # an earlier run, which --overwrite may replace
    kept = run / "qa.jsonl"
    shutil.copy(staged["stages"][1]["data"]["train"][0], kept)
    staged["stages"][1]["data"]["train"] = [str(kept)]
    with pytest.raises(RunDirError, match=f"holds the data file {kept}"):
        train(None, staged | {"overwrite": True})
    assert kept.is_file() and not (tmp_path / "run.previous").exists()
    staged["stages"][1]["data"]["train"] = [str(tmp_path / "qa.jsonl")]
    shutil.copytree(tiny_run_dir, run / "start")  # stage 1's own model.adapter, inside output_dir
    staged["stages"][0]["model"] = {"adapter": str(run / "start")}
    with pytest.raises(RunDirError, match=f"holds the adapter the run starts from {run / 'start'}"):
        train(None, staged | {"overwrite": True})
    assert (run / "start" / "adapter_model.safetensors").is_file() and not (tmp_path / "run.previous").exists()


def _refused_by_train_and_check(overrides: dict, tmp_path, message: str) -> None:
    """`train` refuses the config before writing anything, and `tunelab check` refuses it alike."""
    from tunelab.checks.run import run_check

    with pytest.raises(ConfigError, match=message):
        train(None, overrides)
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match=message):
        run_check(None, overrides, model=False, html=tmp_path / "check.html")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"continue": "merge"}, "stage 1: continue: merge has no earlier stage to continue from"),
        ({"task": "classify"}, "stage 2: stage 1 trains a classify head .* Make the classify stage the last one"),
        ({"task": "reward"}, "stage 2: stage 1 trains a reward head"),
    ],
)
def test_a_first_stage_nothing_can_follow_is_refused_before_it_trains(staged, tmp_path, change, message):
    """A classify or reward stage 1 trained, then stage 2 refused its adapter (it holds the head); check passed it."""
    staged["stages"][0] |= change
    _refused_by_train_and_check(staged, tmp_path, message)


def _head_files(tmp_path):
    """Label rows (two sets of texts with the same labels, and rows of other labels) and preference pairs."""
    files = {}
    for name, labels in (("labels", ("pos", "neg")), ("more", ("neg", "pos")), ("other", ("a", "b", "c"))):
        rows = [{"text": f"{name} row {i} says {labels[i % len(labels)]}", "label": labels[i % len(labels)]} for i in range(8)]  # fmt: skip
        files[name] = str(tmp_path / f"{name}.jsonl")
        Path(files[name]).write_text("".join(json.dumps(r) + "\n" for r in rows))
    pairs = [
        {"prompt": f"Say something {i}", "chosen": f"Kind words {i}", "rejected": f"Go away {i}"} for i in range(8)
    ]
    files["pairs"] = str(tmp_path / "pairs.jsonl")
    Path(files["pairs"]).write_text("".join(json.dumps(r) + "\n" for r in pairs))
    return files


@pytest.fixture
def head_staged(staged, tmp_path):
    """Two classify stages over the same labels, the second taking steps that change nothing (lr 0)."""
    files = _head_files(tmp_path)
    return staged | {
        "task": "classify",
        "data.eval_fraction": 0.0,
        "stages": [
            {"name": "first", "data": {"train": [files["labels"]]}, "train": {"max_steps": 2}},
            {"name": "second", "data": {"train": [files["more"]]}, "train": {"max_steps": 2, "lr": 0.0}},
        ],
    }


@pytest.mark.parametrize("task", ["classify", "reward"])
def test_a_head_stage_continues_the_head_stage_before_it(head_staged, tmp_path, task):
    """Stage 2 refused stage 1's adapter (it holds the head, score.weight) only after stage 1 had trained, and tunelab
    check refused a staged classify run outright. Now stage 2 trains stage 1's adapter and head on."""
    from tunelab.checks.run import run_check

    if task == "reward":
        pairs = _head_files(tmp_path)["pairs"]
        for stage in head_staged["stages"]:
            stage["data"]["train"] = [pairs]
        head_staged["task"] = "reward"
    assert run_check(None, head_staged, model=False, html=tmp_path / "check.html").passed
    run = train(None, head_staged).run_dir
    first, second = adapter_of(run / "stage-1"), adapter_of(run / "stage-2")
    head = "base_model.model.score.weight"
    assert first.keys() == second.keys() and head in first
    assert all(torch.equal(first[k], second[k]) for k in first)  # lr 0: stage 2 ends where stage 1 ended
    assert any(v.abs().sum() > 0 for k, v in first.items() if "lora_B" in k)  # stage 1 did learn
    assert read_info(run).task == task and torch.equal(adapter_of(run)[head], first[head])


@pytest.mark.parametrize(
    "change, message",
    [
        ({"data": {"train": ["other"]}}, r"stage 2: its training rows have the labels \['a', 'b', 'c'\]"),
        ({"continue": "merge"}, "stage 2: stage 1 trains a classify head .* continue: merge would .* lose the head"),
        ({"task": "reward", "data": {"train": ["pairs"]}}, "stage 2's task is reward: only a classify stage can"),
        ({"first": {"method": {"name": "full"}}}, "method.name is full there, so its result is a whole classify model"),
    ],
)
def test_a_stage_that_cannot_follow_a_head_stage_is_refused_before_it_trains(head_staged, tmp_path, change, message):
    files = _head_files(tmp_path)
    change = dict(change)
    head_staged["stages"][0] |= change.pop("first", {})
    if "data" in change:
        change["data"] = {"train": [files[name] for name in change["data"]["train"]]}
    head_staged["stages"][1] |= change
    _refused_by_train_and_check(head_staged, tmp_path, message)


@pytest.mark.parametrize(
    "second, message",
    [
        ("  - {model: {revision: v1}}\n", None),  # stage 1's own: nothing changes
        ("  - {model: {revision: v2}}\n", r"staged\.yaml:4: stage 2: model\.revision is 'v2', .* at v1, as stage 1"),
    ],
)
def test_a_later_stages_revision_is_compared_with_stage_ones(tmp_path, second, message):
    """Stage 1 may name its own model.revision; a later stage's was compared with the run's instead, so repeating stage
    1's was refused, saying stage 1 trained at the default revision."""
    from tunelab.training.stage_plan import plan_stages

    config = tmp_path / "staged.yaml"
    config.write_text(
        "model: {name: smollm2-135m-instruct}\nstages:\n  - {data: {train: [a.jsonl]}, model: {revision: v1}}\n"
        + second
    )
    if message is None:
        assert [p.config.model.revision for p in plan_stages(load_config(config), tmp_path / "run")][0] == "v1"
        return
    with pytest.raises(ConfigError, match=message):
        plan_stages(load_config(config), tmp_path / "run")


@pytest.mark.parametrize(
    "second, message",
    [
        ("  - {model: {name: ./other}}\n", None),  # stage 1's own: nothing changes
        (
            "  - {model: {name: smollm2-135m-instruct}}\n",
            r"staged\.yaml:4: stage 2: model\.name is 'smollm2-135m-\S*, .*",
        ),
    ],
)
def test_a_later_stages_model_name_is_compared_with_stage_ones(tmp_path, second, message):
    """Stage 1 may name its own model.name; a later stage's was compared with the run's instead, so repeating stage
    1's was refused and repeating the run's, which stage 1 does not train over, passed."""
    from tunelab.training.stage_plan import plan_stages

    config = tmp_path / "staged.yaml"
    config.write_text(
        "model: {name: smollm2-135m-instruct}\nstages:\n  - {data: {train: [a.jsonl]}, model: {name: ./other}}\n"
        + second
    )
    if message is None:
        assert len(plan_stages(load_config(config), tmp_path / "run")) == 2
        return
    with pytest.raises(ConfigError, match=message + "over '\\S*other', as stage 1 trains"):
        plan_stages(load_config(config), tmp_path / "run")


@pytest.mark.parametrize(
    "second, message",
    [
        (
            "  - {continue: adapter, method: {r: 8}}\n",
            r"staged\.yaml:4: stage 2: it continues stage 1's adapter .* method\.r 8",
        ),
        ("  - {model: {name: other-model}}\n", r"staged\.yaml:4: stage 2: model\.name is 'other-model'"),
    ],
)
def test_a_stage_that_cannot_follow_the_one_before_names_its_file_and_line(tmp_path, second, message):
    """Refused by the chaining of the stages, a stage was named 'stage 2' alone, unlike the errors of its options."""
    from tunelab.training.stage_plan import plan_stages

    config = tmp_path / "staged.yaml"
    config.write_text(
        "model: {name: smollm2-135m-instruct}\nstages:\n  - {data: {train: [a.jsonl]}, method: {r: 4}}\n" + second
    )
    with pytest.raises(ConfigError, match=message):
        plan_stages(load_config(config), tmp_path / "run")
