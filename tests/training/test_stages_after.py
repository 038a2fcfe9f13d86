"""What later commands read of a finished staged run: the export's self-check refuses a run whose last stage's
config.yaml is gone (it names the file) rather than check the template on the probes without a word; a grpo stage's
column of the forgetting matrix is its reward, marked as one; the verdict and a stop say which stage's steps they
name."""

import json

import pytest

from tunelab.api import train
from tunelab.errors import DataError, Interrupted, RunDirError, TrainingStopped
from tunelab.eval.report_inputs import Input
from tunelab.eval.report_run import stages_section
from tunelab.export.check import CHECK_ROWS, _conversations, check_questions
from tunelab.tasks.grpo import RewardError
from tunelab.training.forgetting import forgetting, format_forgetting


@pytest.fixture
def staged(tiny_overrides, tmp_path):
    base = {k: v for k, v in tiny_overrides.items() if not k.startswith("data.train")}
    return base | {
        "data.train": [],
        "train.log_every": 1,
        "output_dir": str(tmp_path / "run"),
        "stages": [
            {"name": "first", "data": {"train": tiny_overrides["data.train"]}, "train": {"max_steps": 2}},
            {"name": "second", "data": {"train": tiny_overrides["data.train"]}, "train": {"max_steps": 2}},
        ],
    }


@pytest.fixture
def staged_run(staged):
    return train(None, staged).run_dir


def test_the_self_check_refuses_a_staged_run_whose_last_stage_config_is_gone(staged_run):
    """The self-check read the run's training conversations from the last stage's config.yaml; without it, it checked
    the template on the probe conversations and asked the probe questions, with a verdict as if the run's own data had
    been checked. It is refused now, naming the file, as a single run without its config.yaml is."""
    assert _conversations(staged_run, None, 2)[1] == f"the first {CHECK_ROWS} rows of the training data"
    (staged_run / "stage-2" / "config.yaml").unlink()
    for check in (lambda: _conversations(staged_run, None, 2), lambda: check_questions(staged_run, 2)):
        with pytest.raises(RunDirError, match=r"stage-2/config.yaml: the run's config.yaml is missing; .*--no-check"):
            check()


def test_the_modelfile_of_a_staged_run_covers_its_longest_stage(staged, tmp_path):
    """The Modelfile's num_ctx (and the comment that says why it sets none) read data.max_length of the last stage
    alone: a run that learned long documents, then short questions, got the context of the questions, and Ollama
    cut chats as long as the documents without a word. It now reads the longest any stage trained on."""
    pytest.importorskip("gguf")
    from tunelab.export.gguf import export_gguf
    from tunelab.export.modelfile import modelfile_path

    staged["stages"][0]["data"]["max_length"] = 96  # the second stage keeps the run's 64
    run = train(None, staged).run_dir
    text = modelfile_path(export_gguf(run, tmp_path / "out" / "m.gguf", "f16", check=False).path).read_text()
    assert "trained on sequences of up to 96 tokens (data.max_length of stage-1)" in text


def _stage(run, k, task, eval_loss, earlier=None):
    here = run / f"stage-{k}"
    here.mkdir(parents=True)
    info = {"base_model": "tiny", "method": "lora", "task": task, "finished": True, "eval_loss": eval_loss}
    (here / "run.json").write_text(json.dumps(info | {"extra": {"eval_losses": earlier or {}}}))


def test_a_grpo_stages_forgetting_column_is_its_reward_and_says_so(tmp_path):
    """A grpo stage's eval_loss is its negated mean eval reward (so that keep_best keeps the best-scoring weights):
    the forgetting matrix showed -0.75 as the "eval loss" of a model whose greedy answers scored 0.75. A grpo stage's
    column now holds the reward, marked as one, in run.json, the printed table and the report."""
    run = tmp_path / "run"
    _stage(run, 1, "sft", 2.5)
    _stage(run, 2, "grpo", -0.75)
    _stage(run, 3, "grpo", -0.5, {"eval_loss/stage-2": -0.25})
    matrix, measures = forgetting(run, 3)
    assert matrix == [[2.5], [None, 0.75], [None, 0.25, 0.5]]
    assert measures == ["eval loss", "eval reward", "eval reward"]
    table = format_forgetting(["sft", "rl", "more"], matrix, measures)
    assert "on rl (reward)" in table and "on sft (reward)" not in table and "higher is better" in table
    assert "0.7500" in table and "-0.7500" not in table
    data = {"extra": {"stages": [], "forgetting": {"stages": ["sft", "rl", "more"], "matrix": matrix}}}
    data["extra"]["forgetting"]["measures"] = measures
    page = stages_section(Input("run.json", data))
    assert "on rl (reward)" in page and "on sft (reward)" not in page and "mean reward of greedy answers" in page


def test_a_staged_run_without_eval_data_says_it_has_no_forgetting_matrix(tmp_path):
    """A staged run none of whose stages had eval data ended with a table of dashes under "eval loss after each
    stage", as if every evaluation had failed. It says there is no matrix, and why."""
    run = tmp_path / "run"
    _stage(run, 1, "sft", None)
    _stage(run, 2, "grpo", None)
    matrix, measures = forgetting(run, 2)
    text = format_forgetting(["sft", "rl"], matrix, measures)
    assert text.startswith("no forgetting matrix: no stage has eval data"), text
    assert len(text.splitlines()) == 1, text  # no table beneath


def test_a_grpo_stages_eval_figure_is_recorded_as_its_reward(tmp_path):
    """run.json's extra.stages[].eval_loss of a grpo stage was its negated eval reward, with nothing to say so. It is
    recorded as eval_reward now, and the report reads both: a run written before shows the stage's figure as the
    reward and marks its forgetting column as a negated reward."""
    from tunelab.run_info import RunInfo
    from tunelab.training.forgetting import stage_record

    grpo = stage_record(RunInfo("tiny", "lora", task="grpo", eval_loss=-0.75, steps=3))
    assert grpo["eval_reward"] == 0.75 and "eval_loss" not in grpo
    sft = stage_record(RunInfo("tiny", "lora", task="sft", eval_loss=2.5, steps=3))
    assert sft["eval_loss"] == 2.5 and "eval_reward" not in sft

    names, matrix = ["sft", "rl"], [[2.5], [2.75, -0.75]]  # as written before: the grpo column negated
    old = {"stages": [{"name": "sft", "task": "sft", "eval_loss": 2.5}, {"name": "rl", "task": "grpo"}]}
    old["stages"][1]["eval_loss"] = -0.75
    old["forgetting"] = {"stages": names, "matrix": matrix}
    page = stages_section(Input("run.json", {"extra": old}))
    assert "on rl (negated reward)" in page and "on sft (negated reward)" not in page
    assert "reward 0.7500" in page and "loss 2.5000" in page and "reward -0.7500" not in page

    new = {"stages": [{"name": "sft", **sft}, {"name": "rl", **grpo}]}
    new["forgetting"] = {"stages": names, "matrix": [[2.5], [2.75, 0.75]], "measures": ["eval loss", "eval reward"]}
    page = stages_section(Input("run.json", {"extra": new}))
    assert "on rl (reward)" in page and "negated" not in page and "reward 0.7500" in page and "loss 2.5000" in page


def test_a_staged_runs_verdict_says_whose_steps_it_names(staged_run):
    """The run's verdict is its last stage's, whose step numbers are the stage's own, while the run's metrics.jsonl,
    report and run.json count steps across the stages: "step 2" named the stage's step 2, the run's step 4, without a
    word. The verdict now names the stage and how its steps map to the run's."""
    info = json.loads((staged_run / "run.json").read_text())
    stage = json.loads((staged_run / "stage-2" / "run.json").read_text())
    verdict = info["extra"]["verdict"]
    assert verdict["text"].startswith(
        "stage 2 (second), its steps counted from the stage's start (its step N is step N + 2"
    )
    assert verdict["text"].endswith(stage["extra"]["verdict"]["text"])
    assert verdict["numbers"]["stage"] == 2 and verdict["numbers"]["step_offset"] == 2 and info["steps"] == 4


def test_ctrl_c_in_a_later_stage_names_the_stage_and_the_runs_step(staged, monkeypatch):
    """Ctrl-C in stage 2 said "interrupted after step 1 of 2": the stage's step, with the stage's length, where the
    run's log and metrics count 3 and 4. It names the stage and the run's step now (the CLI prints `at`)."""
    import signal

    import tunelab.training.loop as loop

    real, calls = loop.train_step, {"n": 0}

    def step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # stage 2's first step
            signal.raise_signal(signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", step)
    with pytest.raises(Interrupted) as caught:
        train(None, staged)
    assert caught.value.at == "stage 2 of 2 (second), its step 1 (step 3 of the run, as metrics.jsonl counts)"
    assert str(caught.value).startswith("stage 2 of 2 (second): interrupted after step 1 of 2;")
    assert caught.value.step == 3 and "stage-2" in caught.value.checkpoint


def test_the_guard_stopping_a_later_stage_names_the_stage(staged, monkeypatch):
    """The non-finite guard stopping stage 2 said "training stopped at step 2 of 2": the stage's count, where the
    run's log and metrics count 4. It names the stage and how its steps map to the run's now."""
    import tunelab.tasks.sft as sft_task
    import tunelab.training.stages as stages

    real_loss, real_stage, poisoned = sft_task.summed_loss, stages._run_stage, {"on": False}

    def loss(model, batch):
        value = real_loss(model, batch)
        return value * float("nan") if poisoned["on"] else value

    def run_stage(plan, here, *args, **kwargs):
        poisoned["on"] = here.name == "stage-2"
        return real_stage(plan, here, *args, **kwargs)

    monkeypatch.setattr(sft_task, "summed_loss", loss)
    monkeypatch.setattr(stages, "_run_stage", run_stage)
    with pytest.raises(TrainingStopped) as stopped:
        train(None, staged | {"train.max_bad_steps": 2})
    message = str(stopped.value)
    assert message.startswith(
        "stage 2 of 2 (second), its steps counted from the stage's start (its step N is step N + 2"
    )
    assert "training stopped at step 2 of 2" in message


@pytest.mark.parametrize("error", [DataError, RewardError])
def test_a_data_error_inside_a_later_stage_names_the_stage_and_what_is_kept(staged, monkeypatch, error):
    """A reward function failing in stage 2's step stopped the run with the row's file and line alone: nothing said
    which stage had stopped, or that stage 1 was saved and --resume would not train it again. Both are said now."""
    import tunelab.training.stages as stages

    real_stage = stages._run_stage

    def run_stage(plan, here, *args, **kwargs):
        if here.name == "stage-2":
            raise error("p.jsonl:7: reward score raised RuntimeError: down (answer '4').")
        return real_stage(plan, here, *args, **kwargs)

    monkeypatch.setattr(stages, "_run_stage", run_stage)
    with pytest.raises(error) as stopped:
        train(None, staged)
    assert str(stopped.value) == (
        "stage 2 of 2 (second): p.jsonl:7: reward score raised RuntimeError: down (answer '4'). Stage 1 is saved: "
        "resume=True with the same config continues at stage 2, not from the start."  # a Python caller's argument
    )


def test_ctrl_c_while_a_stage_saves_says_how_to_start_the_next_one(staged, monkeypatch):
    """Ctrl-C while stage 1 saved its result lets the save finish, then stops before stage 2; a Python caller was
    told "--resume (in Python: train(..., resume=True))", the flag first. It is told its argument alone now."""
    import signal

    from tunelab.training import finish

    real = finish.save_final

    def interrupted_save(*args, **kwargs):
        signal.raise_signal(signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(finish, "save_final", interrupted_save)
    with pytest.raises(Interrupted) as caught:
        train(None, staged)
    message = str(caught.value)
    assert "interrupted after stage 1 of 2 was saved; continue with the same train(...) call and resume=True" in message
    assert "--resume" not in message


def test_a_save_cut_short_in_a_later_stage_says_so(staged, monkeypatch):
    """A second Ctrl-C while stage 2 saved its result said where the stage stopped, as if between two steps, not
    that its save was cut short (the CLI prints `at`)."""
    import signal

    from tunelab.training import result

    real, calls = result.record_base_revision, {"n": 0}

    def interrupted(*args, **kwargs):
        real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:  # stage 2's save
            signal.raise_signal(signal.SIGINT)
            raise KeyboardInterrupt  # the second Ctrl-C

    monkeypatch.setattr(result, "record_base_revision", interrupted)
    with pytest.raises(Interrupted) as caught:
        train(None, staged)
    assert caught.value.at.startswith("stage 2 of 2 (second), its step 2 of 2, while saving the result, which was cut")
    assert caught.value.exit_code == 130


def test_a_cell_between_stages_of_two_tasks_says_why_it_is_empty(tmp_path):
    """An sft stage then a dpo stage printed `-` under `on sft` for the dpo stage's model, as an evaluation that
    failed would, while the README said every earlier stage's eval data is scored. A stage scores only the eval data
    of its own task: the table says so below it, and the report's forgetting section too."""
    run = tmp_path / "run"
    _stage(run, 1, "sft", 2.5)
    _stage(run, 2, "dpo", 0.69)
    matrix, measures = forgetting(run, 2)
    assert matrix == [[2.5], [None, 0.69]]
    text = format_forgetting(["sft", "pref"], matrix, measures, tasks=["sft", "dpo"])
    assert "-: not measured: after pref (task dpo) on sft (task sft)" in text, text
    same = format_forgetting(["a", "b"], [[2.5], [None, 0.69]], measures, tasks=["sft", "sft"])
    assert "not measured" not in same
    stages = [{"name": "sft", "task": "sft"}, {"name": "pref", "task": "dpo"}]
    data = {"extra": {"stages": stages, "forgetting": {"stages": ["sft", "pref"], "matrix": matrix}}}
    data["extra"]["forgetting"]["measures"] = measures
    page = stages_section(Input("run.json", data))
    assert "Not measured (–): after pref (task dpo) on sft (task sft)" in page, page
