"""train.early_stopping_patience: a run stops after N evaluations in a row without a new best eval loss, finishes
cleanly, records why, and resumes to the same step."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import tunelab
import tunelab.training.finish as finish
import tunelab.training.loop as loop
import tunelab.training.recipe as recipe
from tunelab.config import load_config
from tunelab.errors import ConfigError, Interrupted
from tunelab.eval.report_run import _end
from tunelab.peft.save import adapter_state_dict
from tunelab.training.early_stop import EarlyStop


def _scripted(monkeypatch, losses):
    """The eval loss of each evaluation in turn (sft evaluates at every train.eval_every steps, none at step 0);
    returns the adapter weights each evaluation saw, in order."""
    it, seen = iter(losses), []

    def scripted(task, model, evals):
        seen.append({k: v.clone() for k, v in adapter_state_dict(model).items()})
        return {"eval_loss": next(it)}

    monkeypatch.setattr(loop, "eval_record", scripted)
    return seen


def test_the_count_starts_again_at_a_new_best_and_min_delta_measures_from_the_last_best():
    position = {}
    early = EarlyStop(2, 0.1, position)
    early.observe(0, 1.0)  # the first evaluation sets the best
    early.observe(2, 0.95)  # lower, but by less than min_delta: waited
    assert position["early_stop"]["waited"] == [2] and not early.done
    early.observe(4, 0.85)  # 0.15 below the last best (1.0): a creep that adds up counts
    assert position["early_stop"] | {} == {"best_loss": 0.85, "best_step": 4, "waited": []}
    early.observe(6, float("nan"))  # NaN is never a best
    early.observe(8, 0.8)
    assert early.done and early.record(8, 20)["waited"] == [6, 8]
    off = EarlyStop(0, 0.0, position := {})
    off.observe(2, 5.0)
    assert not off.done and "early_stop" not in position


@pytest.mark.parametrize("keep_best", [True, False])
def test_a_run_stops_after_patience_evaluations_without_a_new_best(tiny_overrides, monkeypatch, capsys, keep_best):
    seen = _scripted(monkeypatch, [0.9, 0.5, 0.6, 0.55, 0.4, 0.3])  # steps 2, 4 (best), 6, 8: stop at 8
    overrides = tiny_overrides | {"data.eval_fraction": 0.25, "train.max_steps": 12, "train.eval_every": 2}
    result = recipe.train(None, overrides | {"train.early_stopping_patience": 2, "train.keep_best": keep_best})
    assert len(seen) == 4 and result.steps == 8  # no evaluation at the end: step 8's was the last
    info = json.loads((result.run_dir / "run.json").read_text())
    assert info["finished"] and info["steps"] == 8 and info["total_steps"] == 12
    assert info["end"] == {"reason": "early_stopped", "step": 8}
    record = {"step": 8, "planned_steps": 12, "patience": 2, "min_delta": 0.0}
    record |= {"best_step": 4, "best_eval_loss": 0.5, "waited": [6, 8]}
    assert info["extra"]["early_stop"] == record == result.early_stop
    logged = [json.loads(line)["step"] for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert max(logged) == 8
    out, bar = capsys.readouterr()
    assert "early stopping: stopped after step 8 of the 12 planned: the eval loss has not improved on step 4's " in out
    assert "eval_loss=0.6000" in bar and "no_best=1/2" in bar  # the progress bar shows the count as it goes
    assert "for 2 evaluations in a row (steps 6, 8; train.early_stopping_patience 2)" in out
    assert "(8 steps of the 12 planned, stopped early," in out
    assert info["extra"]["verdict"]["text"].endswith(
        " The run stopped early after step 8 of the 12 planned: 2 evaluations in a row without a new best "
        "(train.early_stopping_patience 2)."
    )
    saved = load_file(result.run_dir / "adapter_model.safetensors")
    expected = seen[1] if keep_best else seen[3]  # keep_best's step, else the last step trained
    assert saved.keys() == expected.keys() and all(torch.equal(saved[k], expected[k]) for k in saved)
    assert (info["extra"].get("best") or {}).get("step") == (4 if keep_best else None)
    assert not (result.run_dir / "checkpoints").exists()
    assert _end(info) == (
        "stopped early after step 8 of 12 planned: 2 evaluations in a row without a new best eval loss "
        "(train.early_stopping_patience 2); the best, step 4's: 0.5000"
    )  # tunelab report's "how training ended"


def test_without_an_eval_split_the_option_is_refused_before_the_model_loads(tiny_overrides, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(recipe, "load_model", no_model)
    with pytest.raises(ConfigError) as refused:
        recipe.train(None, tiny_overrides | {"train.early_stopping_patience": 3})
    message = str(refused.value)
    assert refused.value.exit_code == 2
    assert "option 'train.early_stopping_patience' is 3, but the run has no eval split" in message
    assert "data.eval" in message and "data.eval_fraction" in message


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        ({"train.eval_every": 0}, "'train.eval_every' is 0"),
        ({"federated.clients": ["a.jsonl", "b.jsonl"]}, "not supported in a federation"),
        ({"stages": [{"data.train": "a.jsonl"}, {"data.train": "b.jsonl"}]}, "not supported in a staged run"),
    ],
)
def test_early_stopping_is_refused_where_no_evaluation_can_stop_the_loop(tiny_overrides, extra, says):
    with pytest.raises(ConfigError, match=says):
        load_config(None, tiny_overrides | {"train.early_stopping_patience": 2} | extra)


def test_a_stage_that_sets_patience_is_refused_and_min_delta_alone_too(tiny_overrides):
    stages = [{"data.train": "a.jsonl", "train.early_stopping_patience": 2}, {"data.train": "b.jsonl"}]
    with pytest.raises(ConfigError, match="not supported in a staged run"):
        load_config(None, tiny_overrides | {"stages": stages})
    with pytest.raises(ConfigError, match="'train.early_stopping_patience' is 0"):
        load_config(None, tiny_overrides | {"train.early_stopping_min_delta": 0.01})


def test_a_run_resumed_inside_the_patience_window_stops_at_the_same_step(straight_and_resumed, tiny_overrides):
    """min_delta 10: only the first evaluation is a best, so with patience 3 the run stops at step 8 (evaluations at
    2, 4, 6, 8). Killed in step 5 and resumed from the checkpoint of step 4 (one evaluation waited), it must stop at 8
    too: a count started again would wait for steps 8, 10 and 12."""
    common = tiny_overrides | {"data.eval_fraction": 0.25, "train.max_steps": 12, "train.eval_every": 2}
    common |= {"train.save_every": 2, "train.early_stopping_patience": 3, "train.early_stopping_min_delta": 10.0}
    common |= {"method.dropout": 0.0}
    straight, resumed = straight_and_resumed(common, 5)
    assert straight.steps == resumed.steps == 8
    assert resumed.early_stop == straight.early_stop and straight.early_stop["waited"] == [4, 6, 8]
    a = load_file(straight.run_dir / "adapter_model.safetensors")
    b = load_file(resumed.run_dir / "adapter_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_of_a_finished_early_stopped_run_is_refused_unless_the_patience_changes(tiny_overrides, monkeypatch):
    _scripted(monkeypatch, [0.5, 0.6, 0.7] + [0.4] * 10)
    overrides = tiny_overrides | {"data.eval_fraction": 0.25, "train.max_steps": 10, "train.eval_every": 2}
    overrides |= {"train.early_stopping_patience": 2, "train.save_every": 2}
    overrides |= {"train.keep_checkpoints_after_finish": True}
    assert recipe.train(None, overrides).steps == 6
    with pytest.raises(ConfigError, match="early stopping ended it after step 6 of the 10 planned"):
        recipe.train(None, overrides, resume=True)
    checked = tunelab.check(None, overrides, resume=True, model=False)  # check passed it before train refused it
    item = next(i for i in checked.items if i.name == "resume")
    assert not checked.passed and item.status == "fail" and "early stopping ended it after step 6" in item.summary
    changed = tunelab.check(None, overrides | {"train.early_stopping_patience": 0}, resume=True, model=False)
    assert next(i for i in changed.items if i.name == "resume").status == "pass"
    result = recipe.train(None, overrides | {"train.early_stopping_patience": 0}, resume=True)
    assert result.steps == 10 and result.early_stop is None  # the patience was taken off: it trains on
    info = json.loads((result.run_dir / "run.json").read_text())
    assert info["end"]["reason"] == "finished" and "early_stop" not in info["extra"]


def test_a_run_whose_save_failed_after_its_early_stop_resumes_to_finish_not_to_train_on(tiny_overrides, monkeypatch):
    seen = _scripted(monkeypatch, [0.5, 0.6, 0.7, 0.1, 0.1])
    overrides = tiny_overrides | {"data.eval_fraction": 0.25, "train.max_steps": 10, "train.eval_every": 2}
    overrides |= {"train.early_stopping_patience": 2, "train.save_every": 2}
    real_save = finish.save_final

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(finish, "save_final", crash)
    with pytest.raises(Interrupted, match="the save of the result was cut short after step 6"):
        recipe.train(None, overrides)
    monkeypatch.setattr(finish, "save_final", real_save)
    result = recipe.train(None, overrides, resume=True)
    assert result.steps == 6 and len(seen) == 3  # no step trained, nothing evaluated again
    assert result.early_stop["waited"] == [4, 6] and result.eval_loss == 0.5
    info = json.loads((result.run_dir / "run.json").read_text())
    assert info["finished"] and info["end"] == {"reason": "early_stopped", "step": 6}


def test_the_cli_takes_the_option_and_refuses_it_without_an_eval_split(tiny_overrides, cli_flags, capsys):
    from tunelab.cli import main

    assert main(["train", *cli_flags(tiny_overrides | {"train.early_stopping_patience": 2})]) == 2
    err = capsys.readouterr().err
    assert "train.early_stopping_patience" in err and "data.eval_fraction" in err and "Traceback" not in err
    assert not Path(tiny_overrides["output_dir"]).exists()  # refused before the run directory is made


def test_patience_used_up_at_the_last_planned_step_is_no_early_stop(tiny_overrides, monkeypatch, capsys):
    _scripted(monkeypatch, [0.5, 0.6, 0.7])  # steps 2 (best), 4, 6: the second evaluation waited is step 6, the last
    overrides = tiny_overrides | {"data.eval_fraction": 0.25, "train.max_steps": 6, "train.eval_every": 2}
    result = recipe.train(None, overrides | {"train.early_stopping_patience": 2})
    info = json.loads((result.run_dir / "run.json").read_text())
    assert result.steps == 6 and result.early_stop is None and "early_stop" not in info["extra"]
    assert info["end"] == {"reason": "finished", "step": 6} and "early stopping" not in capsys.readouterr().out


def test_patience_turned_on_at_a_resume_counts_from_there_not_from_a_stale_count(tiny_overrides, monkeypatch, capsys):
    """Stopped early at 6 (best at 2), trained on to 10 with patience 0, then resumed to 16 with patience 2: the count
    of steps 4 and 6 is stale (steps 8 and 10 were evaluated uncounted), so it must not stop the run at once."""
    _scripted(monkeypatch, [0.5, 0.6, 0.7] + [0.4, 0.4] + [0.3, 0.35, 0.36])
    overrides = tiny_overrides | {"data.eval_fraction": 0.25, "train.max_steps": 10, "train.eval_every": 2}
    overrides |= {"train.early_stopping_patience": 2, "train.save_every": 2}
    overrides |= {"train.keep_checkpoints_after_finish": True}
    assert recipe.train(None, overrides).steps == 6
    off = recipe.train(None, overrides | {"train.early_stopping_patience": 0}, resume=True)
    assert off.steps == 10
    checkpoint = sorted((off.run_dir / "checkpoints").iterdir())[-1]
    assert "early_stop" not in json.loads((checkpoint / "state.json").read_text())["position"]
    capsys.readouterr()
    result = recipe.train(None, overrides | {"train.max_steps": 16}, resume=True)
    out = capsys.readouterr().out
    assert "early stopping: counting evaluations from step 10, where this run resumes" in out
    assert "train.early_stopping_patience: 0 -> 2" in out and "starts at this resume" in out
    assert result.steps == 16 and result.early_stop is None  # 12 a new best, 14 and 16 waited: the last step


def test_check_refuses_patience_without_an_eval_split_as_train_does(tiny_overrides, cli_flags, capsys):
    """tunelab check passed such a config (10 checks), and the train after it was refused at once."""
    from tunelab.cli import main

    assert main(["check", *cli_flags(tiny_overrides | {"train.early_stopping_patience": 2})]) == 2
    err = capsys.readouterr().err
    assert "option 'train.early_stopping_patience' is 2, but the run has no eval split" in err
    assert "Traceback" not in err
    flags = cli_flags(tiny_overrides | {"train.early_stopping_patience": 2, "data.eval_fraction": 0.25})
    assert main(["check", *flags]) == 0


def test_the_report_says_a_grpo_run_stopped_on_its_held_out_reward():
    """grpo's early stop counts its held-out reward (its eval loss negated): the report said 'eval loss'."""
    stop = {"step": 6, "planned_steps": 10, "patience": 2, "min_delta": 0.0, "best_step": 2}
    info = {"task": "grpo", "finished": True, "end": {"reason": "early_stopped", "step": 6}}
    info["extra"] = {"early_stop": stop | {"best_eval_loss": -0.75, "waited": [4, 6]}}
    assert _end(info) == (
        "stopped early after step 6 of 10 planned: 2 evaluations in a row without a new best held-out reward "
        "(train.early_stopping_patience 2); the best, step 2's: 0.7500"
    )


def test_the_verdict_of_an_early_stopped_run_counts_the_passes_it_made_and_advises_no_longer_run(
    tiny_overrides, monkeypatch
):
    """6 epochs planned (18 steps), stopped after step 6: 2 passes made. The verdict said 'after 6 passes' and
    'set train.epochs: 12 (it was 6)', though more steps would not have lowered the eval loss."""
    _scripted(monkeypatch, [0.5, 0.51, 0.505])  # steps 2 (best), 4 and 6: no new best, the loss flat
    overrides = tiny_overrides | {"data.eval_fraction": 0.25, "train.epochs": 6, "train.eval_every": 2}
    result = recipe.train(None, overrides | {"train.early_stopping_patience": 2})
    text = result.verdict.text
    assert result.steps == 6 and result.verdict.kind == "underfit" and "still high after 2 passes" in text
    assert "so more steps would not lower it" in text and "train.lr: 0.002 (it was 0.001)" in text
    assert "train.epochs" not in text and "Train longer" not in text


def test_min_delta_says_grpo_measures_it_on_the_held_out_reward():
    """grpo counts its held-out reward: a new best is a reward higher by more than min_delta, on the rewards' scale
    (most give 0..1), which the option's help (and --help) did not say."""
    import dataclasses

    from tunelab.config import TrainConfig

    field = next(f for f in dataclasses.fields(TrainConfig) if f.name == "early_stopping_min_delta")
    assert "grpo: its held-out reward higher" in field.metadata["help"]
