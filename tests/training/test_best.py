"""keep_best: the weights of the lowest eval loss are the saved result, whatever order the losses come in."""

import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import tunelab.tasks.sft as sft
import tunelab.training.evals as evals
import tunelab.training.finish as finish
import tunelab.training.recipe as recipe
from tunelab.errors import Interrupted
from tunelab.peft.save import adapter_state_dict
from tunelab.tasks import get_task
from tunelab.training.best import BestWeights


def _set(model, value):
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)


def test_observe_keeps_the_lowest_and_restore_loads_it(tmp_path):
    model = nn.Linear(3, 2)
    best = BestWeights(tmp_path, enabled=True)
    for step, (value, loss) in enumerate([(1.0, 0.9), (2.0, 0.5), (3.0, 0.7), (4.0, 0.5), (5.0, float("nan"))], 1):
        _set(model, value)
        best.observe(step, loss, model)
    assert (best.step, best.loss) == (2, 0.5)  # a tie later does not replace it; NaN never counts
    resumed = BestWeights(tmp_path, enabled=True, resume_step=3)  # a resumed run reads the best so far
    assert (resumed.step, resumed.loss) == (2, 0.5)
    message = best.restore(model, last_step=5, last_loss=float("nan"))
    assert torch.all(model.weight == 2.0) and torch.all(model.bias == 2.0)
    assert "loaded the weights of step 2" in message and "0.5000" in message
    assert not best.path.exists()  # the result now holds these weights


def test_a_resumed_run_forgets_a_best_newer_than_its_checkpoint(tmp_path):
    model = nn.Linear(3, 2)
    BestWeights(tmp_path, enabled=True).observe(6, 0.2, model)
    # Resumed from step 4: steps 5 and 6 run again (exactly), so step 6 is evaluated again; until then the best is
    # whatever the resumed run sees.
    resumed = BestWeights(tmp_path, enabled=True, resume_step=4)
    assert resumed.step is None and not resumed.path.exists()
    (tmp_path / "checkpoints" / "best.safetensors").write_bytes(b"torn")
    assert BestWeights(tmp_path, enabled=True, resume_step=4).step is None


def test_a_checkpoint_shares_the_best_file_and_keeps_it_when_a_later_best_replaces_it(tmp_path):
    """Each checkpoint held its own copy of the best weights (a full fine-tune's size per checkpoint kept)."""
    model = nn.Linear(3, 2)
    best = BestWeights(tmp_path, enabled=True)
    _set(model, 2.0)
    best.observe(2, 0.5, model)
    checkpoint = tmp_path / "checkpoints" / "step-0000004"
    checkpoint.mkdir()
    best.keep_with(checkpoint)
    assert (checkpoint / "best.safetensors").stat().st_ino == best.path.stat().st_ino  # no second copy on disk
    _set(model, 6.0)
    best.observe(6, 0.2, model)  # replaces the file beside the checkpoints, not the checkpoint's
    resumed = BestWeights(tmp_path, enabled=True, resume_step=4, checkpoint=checkpoint)
    assert (resumed.step, resumed.loss) == (2, 0.5)
    resumed.restore(model, last_step=8, last_loss=0.9)
    assert torch.all(model.weight == 2.0)


def test_last_step_best_or_disabled_changes_nothing(tmp_path):
    model = nn.Linear(3, 2)
    best = BestWeights(tmp_path, enabled=True)
    _set(model, 1.0)
    best.observe(4, 0.3, model)
    assert "the last step (4) had the lowest eval loss" in best.restore(model, 4, 0.3)
    off = BestWeights(tmp_path / "off", enabled=False)
    assert not off.observe(1, 0.1, model) and off.restore(model, 1, 0.1) is None
    assert not (tmp_path / "off").exists()


@pytest.mark.parametrize("keep_best", [True, False])
def test_the_saved_adapter_is_the_best_evaluated_one(tiny_overrides, monkeypatch, capsys, keep_best):
    scripted = iter([0.9, 0.4, 0.6, 0.8])  # evaluations at steps 2, 4, 6, 8: the best is step 4
    seen = {}

    def fake_evaluate(model, batches):
        loss = next(scripted)
        seen[loss] = {k: v.clone() for k, v in adapter_state_dict(model).items()}
        return loss

    monkeypatch.setattr(sft, "mean_loss", fake_evaluate)  # the sft task's eval loss
    overrides = tiny_overrides | {
        "data.eval_fraction": 0.25,
        "train.max_steps": 8,
        "train.eval_every": 2,
        "train.keep_best": keep_best,
    }
    result = recipe.train(None, overrides)
    saved = load_file(result.run_dir / "adapter_model.safetensors")
    expected = seen[0.4] if keep_best else seen[0.8]
    assert saved.keys() == expected.keys()
    for key in saved:
        assert torch.equal(saved[key], expected[key]), key
    info = json.loads((result.run_dir / "run.json").read_text())
    out = capsys.readouterr().out
    if keep_best:
        assert "keep_best: loaded the weights of step 4" in out
        assert info["extra"]["best"] == {"step": 4, "eval_loss": 0.4} and info["eval_loss"] == 0.4
        assert "keep_best saved the weights of step 4" in info["extra"]["verdict"]["text"]  # 0.8 vs 0.4: overfit
    else:
        assert "keep_best: loaded" not in out and "best" not in info["extra"] and info["eval_loss"] == 0.8
        assert "Set train.keep_best: true" in info["extra"]["verdict"]["text"]
    assert "train.max_steps: 4 (it was 8)" in info["extra"]["verdict"]["text"]
    assert info["extra"]["verdict"]["kind"] == "overfit" == result.verdict.kind
    assert result.auto == info["extra"]["auto"] and set(result.auto) == {
        "train.warmup_ratio",
        "train.checkpointing",
        "train.offload_activations",
    }  # the rest were given
    assert not (result.run_dir / "checkpoints" / "best.safetensors").exists()


def test_the_best_is_kept_beside_checkpoints_kept_after_the_run(tmp_path):
    """A finished run that keeps its checkpoints may be resumed to train on; the best it chose must survive, or the
    longer run calls a later, worse step the lowest."""
    from torch import nn

    model = nn.Linear(2, 2)
    best = BestWeights(tmp_path, enabled=True)
    best.observe(2, 0.5, model)
    best.observe(4, 0.9, model)
    best.restore(model, 6, 1.2, keep_file=True)
    again = BestWeights(tmp_path, enabled=True, resume_step=6)
    assert (again.step, again.loss) == (2, 0.5)
    again.restore(model, 8, 1.0)
    assert not again.path.exists()


@pytest.mark.parametrize("task", ["sft", "classify"])
def test_an_eval_split_with_no_usable_row_stops_the_run_before_it_trains(tiny_model_dir, tmp_path, capsys, task):
    """Every eval row too long (sft) or of a label the training rows lack (classify): the run trained with no eval
    loss or keep_best, and its verdict said it had no eval split, where the config named one."""
    from tunelab.cli import main

    if task == "sft":
        train = [{"question": f"q {i}", "answer": f"a {i}"} for i in range(8)]
        held = [{"question": "long " * 100, "answer": "x"}] * 2
    else:
        train = [{"text": f"t {i}", "label": "ab"[i % 2]} for i in range(8)]
        held = [{"text": "e", "label": "c"}] * 2
    files = {}
    for name, rows in (("train", train), ("eval", held)):
        files[name] = tmp_path / f"{name}.jsonl"
        files[name].write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["train", "--task", task, "--model.name", str(tiny_model_dir), "--data.train", str(files["train"])]
    args += ["--data.eval", str(files["eval"]), "--data.max_length", "64", "--output_dir", str(tmp_path / "run")]
    assert main(args) == 2
    err = capsys.readouterr().err
    reason = "longer than max_length" if task == "sft" else "label not among the training labels ('c')"
    assert f"{files['eval']}: the eval split has no usable rows (2 read; 2 skipped: {reason}" in err
    assert f"e.g. {files['eval']}:1)" in err and not (tmp_path / "run").exists()


def test_an_eval_fraction_with_no_usable_row_is_said_not_refused(capsys):
    """Which rows a fraction holds out depends on data.split_seed: the same config must not be refused on some seeds.
    The note says the split seed that drew the unusable rows, and that another holds out others."""
    from types import SimpleNamespace

    from tunelab.config import DataConfig
    from tunelab.data.report import DataReport
    from tunelab.training.prepare import refuse_unusable_eval

    report = DataReport()
    report.skip("longer than max_length", "a.jsonl", 3)  # a training row's skip is not the eval split's
    report.eval.examples, report.split_seed = 2, 7
    refuse_unusable_eval(DataConfig(train=["a.jsonl"], eval_fraction=0.1), SimpleNamespace(eval=[], report=report))
    said = capsys.readouterr().out
    assert "every example data.eval_fraction 0.1 held out (split seed 7) is unusable" in said
    assert "set data.split_seed to hold out other examples" in said
    refuse_unusable_eval(DataConfig(train=["a.jsonl"]), SimpleNamespace(eval=[], report=report))
    assert capsys.readouterr().out == ""


def test_a_resumed_run_keeps_the_best_before_its_checkpoint_that_a_later_one_overwrote(
    tiny_overrides, tmp_path, monkeypatch
):
    """The best of step 2 was overwritten by step 6's, after the checkpoint of step 4; the resume dropped step 6's
    file, as it repeats those steps, and with them the best of step 2: evaluated at other steps (train.eval_every
    may change on resume), the run saved a step of a higher eval loss as its result."""
    import tunelab.training.loop as loop

    losses = iter([0.5, 0.9, 0.4])  # steps 2, 4, 6; then the resumed run's steps 5 and 8

    def scripted(task, model, evals):
        return {"eval_loss": next(losses)}

    monkeypatch.setattr(loop, "eval_record", scripted)
    overrides = tiny_overrides | {"train.max_steps": 8, "train.save_every": 4, "data.eval_fraction": 0.25}
    real_step, calls = loop.train_step, {"n": 0}

    def dying_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt  # killed during step 7
        return real_step(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        recipe.train(None, overrides | {"train.eval_every": 2})
    monkeypatch.setattr(loop, "train_step", real_step)
    losses = iter([0.8, 0.7])
    result = recipe.train(None, overrides | {"train.eval_every": 5}, resume=True)
    assert result.eval_loss == 0.5
    assert json.loads((result.run_dir / "run.json").read_text())["extra"]["best"] == {"step": 2, "eval_loss": 0.5}


def test_a_run_resumed_after_its_save_failed_keeps_the_best_of_an_earlier_step(tiny_overrides, monkeypatch):
    """keep_best loads the best weights and removes their file before the result is saved: a crash in the save, and
    the run resumed at its last step (which trains and evaluates nothing) saved the last step's weights instead."""
    import tunelab.training.loop as loop

    losses = iter([0.5, 0.9])  # steps 2 and 4

    def scripted(task, model, evals):
        return {"eval_loss": next(losses)}

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "eval_record", scripted)
    overrides = tiny_overrides | {"train.max_steps": 4, "train.save_every": 4, "data.eval_fraction": 0.25}
    overrides |= {"train.eval_every": 2}
    real_save = finish.save_final
    monkeypatch.setattr(finish, "save_final", crash)
    with pytest.raises(Interrupted, match="the save of the result was cut short"):  # Ctrl-C again while saving
        recipe.train(None, overrides)
    monkeypatch.setattr(finish, "save_final", real_save)
    result = recipe.train(None, overrides, resume=True)
    assert result.eval_loss == 0.5
    assert json.loads((result.run_dir / "run.json").read_text())["extra"]["best"] == {"step": 2, "eval_loss": 0.5}


def test_a_run_resumed_onto_fsdp2_says_keep_best_is_off_and_drops_the_best_before(tiny_overrides, monkeypatch, capsys):
    """Resumed with train.sharding fsdp2, keep_best was silently off: the result was the last step's weights, not
    the best step the run had chosen before. The run now says so, at its start and at its end. (One process stands
    for the ranks: the run is told it trains under fsdp2, with the model itself as its sharded form.)"""
    import tunelab.training.loop as loop

    losses = iter([0.5, 0.9, 0.8])  # steps 2, 4, then the resumed run's step 6

    def scripted(task, model, evals):
        return {"eval_loss": next(losses)}

    monkeypatch.setattr(loop, "eval_record", scripted)
    overrides = tiny_overrides | {"train.max_steps": 6, "train.save_every": 4, "data.eval_fraction": 0.25}
    overrides |= {"train.eval_every": 2}
    real_step, calls = loop.train_step, {"n": 0}

    def dying_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt  # killed during step 5, after the checkpoint of step 4
        return real_step(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        recipe.train(None, overrides)
    monkeypatch.setattr(loop, "train_step", real_step)
    planned = recipe._train_planned
    monkeypatch.setattr(
        recipe,
        "_train_planned",
        lambda plan, resolved, ranks, sharding, *rest: planned(plan, resolved, ranks, "fsdp2", *rest),
    )
    monkeypatch.setattr(recipe, "parallelize", lambda model, sharding, ranks: model)
    capsys.readouterr()
    result = recipe.train(None, overrides, resume=True)
    out = capsys.readouterr().out
    said = "keep_best: off under train.sharding fsdp2"
    assert out.count(said) == 2 and "the result is the last step's weights, not step 2 (eval loss 0.5000)" in out
    assert "overfit" in out and "train.keep_best was off under train.sharding fsdp2" in out  # the verdict's advice
    assert "Set train.keep_best: true" not in out  # it was true
    assert result.eval_loss == 0.8
    assert "best" not in json.loads((result.run_dir / "run.json").read_text())["extra"]


def test_a_grpo_run_is_told_its_held_out_reward_not_a_negative_eval_loss(tmp_path):
    """grpo's eval loss is its held-out reward negated: the end of a run said 'eval loss -0.6500' and 'whose eval loss
    -0.8000 was the lowest', a loss below zero where the user set a reward to rise."""
    model = nn.Linear(3, 2)
    best = BestWeights(tmp_path, enabled=True)
    best.observe(0, -0.8, model)
    best.observe(10, -0.6, model)
    message = best.restore(model, last_step=10, last_loss=-0.6, reward=True)
    assert "whose held-out reward 0.8000 was the highest (the last step, 10, had 0.6000)" in message
    assert (
        "the saved result is the untrained adapter, as before training: training did not improve the held-out reward"
        in message
    )
    assert "-0." not in message and "eval loss" not in message
    metrics = {"eval_loss": -0.6, "eval_reward": 0.6, "eval_reward_exact": 0.6, "eval_reward_errors": 0.0}
    line = evals.eval_line(get_task("grpo"), metrics)
    assert line == "held-out reward 0.6000, reward_exact 0.6000, reward_errors 0.0000"
    assert evals.eval_line(sft.SFT, {"eval_loss": 0.5}).startswith("eval loss 0.5000 (perplexity 1.65)")
