"""A run interrupted after a checkpoint and resumed ends exactly where the uninterrupted run ends."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import tunelab.training.finish as finish
import tunelab.training.loop as loop
import tunelab.training.recipe as recipe
from tunelab.errors import ConfigError, RunDirError
from tunelab.rundir import read_info


@pytest.mark.parametrize(
    ("method", "dtype", "optimizer"),
    [("lora", "auto", "adamw"), ("layers", "auto", "adamw"), ("full", "bf16", "adamw"), ("full", "bf16", "adamw_8bit")],
)
def test_resume_equals_uninterrupted(
    small_vocab_overrides, straight_and_resumed, method, dtype, optimizer, logged_losses
):
    common = small_vocab_overrides | {
        "train.max_steps": 6,
        "train.save_every": 2,
        "method.name": method,
        "method.top_layers": 1,
        "model.dtype": dtype,  # bf16 weights: the optimizer's moments and compensations travel in checkpoints
        "train.optimizer": optimizer,
    }
    # dies during step 4, after the checkpoint of step 2
    straight, resumed = straight_and_resumed(common, 4)

    assert resumed.steps == straight.steps == 6
    weights = "adapter_model.safetensors" if method == "lora" else "model.safetensors"
    a, b = load_file(straight.run_dir / weights), load_file(resumed.run_dir / weights)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert logged_losses(straight.run_dir) == logged_losses(resumed.run_dir)


def test_resume_without_checkpoint_is_an_error(tiny_overrides):
    with pytest.raises(RunDirError, match="nothing to resume: the folder does not exist"):
        recipe.train(None, tiny_overrides, resume=True)
    Path(tiny_overrides["output_dir"]).mkdir()
    with pytest.raises(
        RunDirError, match=r"nothing to resume: it is not a run directory tunelab wrote \(no run.json\)"
    ):
        recipe.train(None, tiny_overrides, resume=True)
    recipe.train(None, tiny_overrides | {"train.max_steps": 1, "train.keep_checkpoints_after_finish": True})
    with pytest.raises(
        RunDirError, match="the run finished, and its step checkpoints were deleted at the end or never"
    ):
        recipe.train(None, tiny_overrides | {"train.max_steps": 1}, resume=True)


def test_existing_run_dir_is_not_overwritten(tiny_overrides, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "keep.txt").write_text("precious")
    with pytest.raises(RunDirError, match=r"overrides\['overwrite'\] = True"):  # a Python caller's spelling
        recipe.train(None, tiny_overrides | {"train.max_steps": 1})
    assert (run / "keep.txt").read_text() == "precious"


def _finished_with_checkpoints(overrides):
    """A 3-step run that keeps the checkpoints of steps 2 and 3."""
    run = overrides | {"train.max_steps": 3, "train.save_every": 1, "train.keep_checkpoints_after_finish": True}
    return recipe.train(None, run).run_dir


def test_resume_refuses_changes_that_break_exactness_and_changed_data(tiny_overrides, qa_file):
    _finished_with_checkpoints(tiny_overrides)
    with pytest.raises(ConfigError) as refused:
        recipe.train(None, tiny_overrides | {"train.max_steps": 3, "train.lr": 2e-3, "method.r": 8}, resume=True)
    message = str(refused.value)
    assert "train.lr: 0.001 -> 0.002" in message and "method.r: 4 -> 8" in message
    assert "train.max_steps" not in message
    qa_file.write_text(qa_file.read_text().replace("box 3?", "box three?"))
    with pytest.raises(ConfigError, match="tokenized training rows differ") as refused:
        recipe.train(None, tiny_overrides | {"train.max_steps": 3}, resume=True)
    assert f"{qa_file} changed" in str(refused.value)  # the file is named


def test_resume_falls_back_past_damaged_checkpoints_and_a_torn_metrics_line(tiny_overrides, capsys):
    run_dir = _finished_with_checkpoints(tiny_overrides)
    newest = run_dir / "checkpoints" / "step-0000003"
    weights = newest / "trainable.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # truncated
    with (run_dir / "metrics.jsonl").open("a") as f:
        f.write('{"step": 4, "lo')  # a write torn by a crash
    result = recipe.train(None, tiny_overrides | {"train.max_steps": 5, "train.save_every": 1}, resume=True)
    out = capsys.readouterr().out
    assert "step-0000003 is damaged (trainable.safetensors has" in out and "skipping it" in out
    assert "resuming from" in out and "step-0000002 (step 2 of 5)" in out
    assert "train.max_steps: 3 -> 5; the run continues to the new length" in out
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5] and result.steps == 5
    assert not (run_dir / "checkpoints").exists()  # finished: the step checkpoints are deleted, and it said so


def test_resume_with_every_checkpoint_damaged_says_so(tiny_overrides):
    run_dir = _finished_with_checkpoints(tiny_overrides)
    for folder in (run_dir / "checkpoints").iterdir():
        (folder / "state.json").write_text("")
    with pytest.raises(RunDirError, match="every checkpoint in checkpoints/ is damaged"):
        recipe.train(None, tiny_overrides | {"train.max_steps": 3}, resume=True)


def test_finished_runs_delete_their_checkpoints_and_save_every_0_writes_none(tiny_overrides, capsys):
    run_dir = recipe.train(None, tiny_overrides | {"train.max_steps": 2, "train.save_every": 1}).run_dir
    assert not (run_dir / "checkpoints").exists()
    assert "deleted the 2 step checkpoints: the run is finished" in capsys.readouterr().out
    one = tiny_overrides | {"train.max_steps": 1, "train.save_every": 1, "overwrite": True}
    recipe.train(None, one)
    assert (
        "deleted the step checkpoint: the run is finished and its result saved (train.keep_checkpoints_after_finish: true keeps it)"
        in capsys.readouterr().out
    )
    with pytest.raises(RunDirError, match="the run finished, and its step checkpoints were deleted"):
        recipe.train(None, tiny_overrides | {"train.max_steps": 2}, resume=True)
    other = recipe.train(None, tiny_overrides | {"train.max_steps": 2, "overwrite": True}).run_dir
    assert not (other / "checkpoints").exists() and "overwrite" not in (other / "config.yaml").read_text()


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_ctrl_c_writes_a_checkpoint_and_prints_the_resume_command(
    tiny_overrides, monkeypatch, capsys, signame, cli_flags
):
    """SIGTERM (kill, docker stop, a scheduler's preemption) is taken as Ctrl-C: it used to end the run at once,
    without a checkpoint."""
    import signal

    from tunelab.cli import main

    real_step, calls = loop.train_step, {"n": 0}

    def interrupted_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            signal.raise_signal(getattr(signal, signame))  # as Ctrl-C during step 2: the step still completes
        return real_step(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", interrupted_step)
    flags = cli_flags(tiny_overrides | {"train.max_steps": 4})
    assert main(["train", *flags]) == (143 if signame == "SIGTERM" else 130)  # SIGTERM exited 130, as Ctrl-C
    err = capsys.readouterr().err
    assert "interrupted after step 2" in err and "step-0000002" in err
    assert "tunelab train --model.name" in err and err.rstrip().endswith("--resume")
    stopped = json.loads((Path(tiny_overrides["output_dir"]) / "run.json").read_text())
    assert stopped["steps"] == 2 and stopped["tokens"] > 0 and stopped["elapsed_s"] > 0  # the report showed 0 and 0 s
    monkeypatch.setattr(loop, "train_step", real_step)
    assert recipe.train(None, tiny_overrides | {"train.max_steps": 4}, resume=True).steps == 4


def test_a_finished_run_is_not_resumed_to_its_own_length_and_a_longer_one_keeps_its_config(tiny_overrides, capsys):
    """--resume on a finished run asked for no more steps replaced its result (and what keep_best chose) with exit 0;
    after a resume that trained on, config.yaml still gave the old length, so a later --resume shrank the run."""
    run_dir = _finished_with_checkpoints(tiny_overrides)
    before = (run_dir / "adapter_model.safetensors").read_bytes()
    with pytest.raises(
        ConfigError, match=r"the run is finished \(3 steps\) and this config asks for 3, so resume=True"
    ):
        recipe.train(None, tiny_overrides | {"train.max_steps": 3}, resume=True)
    assert (run_dir / "adapter_model.safetensors").read_bytes() == before
    assert json.loads((run_dir / "run.json").read_text())["finished"]
    longer = tiny_overrides | {"train.max_steps": 5, "train.save_every": 1, "train.keep_checkpoints_after_finish": True}
    (run_dir / "compare.json").write_text("{}")  # answers of the 3-step weights
    assert recipe.train(None, longer, resume=True).steps == 5
    assert not (run_dir / "compare.json").exists()  # 'tunelab report' showed them as the 5-step run's answers
    assert "removed compare.json: it described the weights before this resume" in capsys.readouterr().out
    assert "max_steps: 5" in (run_dir / "config.yaml").read_text()
    with pytest.raises(ConfigError, match=r"finished \(5 steps\) and this config asks for 5"):
        recipe.train(None, longer, resume=True)  # the saved config now says 5: no change, nothing to do
    with pytest.raises(ConfigError, match="past the 3 steps this config asks for"):
        recipe.train(None, tiny_overrides | {"train.max_steps": 3}, resume=True)  # and never a silent shrink
    capsys.readouterr()
    notes = tiny_overrides | {"train.max_steps": 6, "train.epochs": 2}
    recipe.train(None, notes, resume=True)
    epochs = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("resume: train.epochs"))
    assert epochs.endswith("-> 2.0; no change: train.max_steps (6) sets the length")


def test_resumed_at_its_last_step_the_run_reports_what_the_uninterrupted_one_did(tiny_overrides, straight_and_resumed):
    """A run stopped after its last step's checkpoint and resumed trains nothing: its final loss and eval loss come
    from its metrics (run.json had them null)."""
    common = tiny_overrides | {"train.max_steps": 4, "train.save_every": 2, "data.eval_fraction": 0.25}
    common |= {"train.eval_every": 2}
    # dies while saving the result, after the step-4 checkpoint
    straight, resumed = straight_and_resumed(common, 1, finish, "save_final")
    assert resumed.final_loss == straight.final_loss is not None
    assert resumed.eval_loss == straight.eval_loss is not None
    info = json.loads((resumed.run_dir / "run.json").read_text())
    assert info["final_loss"] == straight.final_loss and info["eval_loss"] == straight.eval_loss


def test_a_second_sigterm_stops_at_once_with_exit_code_143(tiny_overrides, monkeypatch, capsys):
    """A second SIGTERM (a scheduler's grace period running out) stopped with 130, the code of Ctrl-C."""
    import signal

    from tunelab.cli import main

    def terminated_step(*args, **kwargs):
        signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGTERM)  # the second stops within the step

    monkeypatch.setattr(loop, "train_step", terminated_step)
    flags = [f"--{k}={json.dumps(v) if isinstance(v, list) else v}" for k, v in tiny_overrides.items()]
    assert main(["train", *flags, "--train.max_steps=4"]) == 143
    assert "interrupted" in capsys.readouterr().err


def test_sigterm_to_a_training_process_checkpoints_and_exits_143(tiny_overrides, tmp_path):
    """`kill PID` (SIGTERM) on `tunelab train` in its own process: the step finishes, a checkpoint is written, run.json
    records the steps done, and the process exits 143 (it exited 130, which says Ctrl-C)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    run_dir = Path(tiny_overrides["output_dir"])
    flags = [f"--{k}={json.dumps(v) if isinstance(v, list) else v}" for k, v in tiny_overrides.items()]
    command = [sys.executable, "-m", "tunelab.cli", "train", *flags, "--train.max_steps=100000", "--train.log_every=1"]
    env = os.environ | {"PYTHONPATH": str(Path(__file__).parents[2] / "src")}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not (run_dir / "metrics.jsonl").is_file() or not (run_dir / "metrics.jsonl").read_text():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else "slow"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        err = proc.communicate(timeout=120)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    assert "interrupt (SIGTERM)" in err and "--resume" in err
    info = json.loads((run_dir / "run.json").read_text())
    assert info["steps"] >= 1 and not info["finished"]
    assert (run_dir / "checkpoints" / f"step-{info['steps']:07d}").is_dir()


def test_ctrl_c_after_the_last_step_lets_the_result_be_saved(tiny_overrides, monkeypatch, capsys):
    """With save_every 0 no checkpoint exists: Ctrl-C during the final evaluation used to lose the whole run."""
    import signal

    real = finish.evaluate_at

    def interrupted_eval(run, step):
        signal.raise_signal(signal.SIGINT)  # as Ctrl-C during the final evaluation
        real(run, step)

    monkeypatch.setattr(finish, "evaluate_at", interrupted_eval)
    overrides = tiny_overrides | {"train.max_steps": 2, "train.save_every": 0, "data.eval_fraction": 0.25}
    result = recipe.train(None, overrides | {"train.eval_every": 0})
    err = capsys.readouterr().err
    assert "the training is done: finishing the evaluation and saving the result first" in err
    assert f"the result is saved in {result.run_dir}" in err and result.interrupted
    info = json.loads((result.run_dir / "run.json").read_text())
    assert info["finished"] and info["steps"] == 2 and info["eval_loss"] is not None
    assert (result.run_dir / "adapter_model.safetensors").is_file()


def test_ctrl_c_during_the_last_step_finishes_the_run(tiny_overrides, monkeypatch, capsys):
    """Ctrl-C during the last step stopped with exit 130 and no result, though the steps were all done: the run now
    ends as after a Ctrl-C that comes after the last step (evaluation and save, then nothing more)."""
    import signal

    real_step, calls = loop.train_step, {"n": 0}

    def interrupted_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            signal.raise_signal(signal.SIGINT)
        return real_step(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", interrupted_step)
    overrides = tiny_overrides | {"train.max_steps": 2, "train.save_every": 0}
    result = recipe.train(None, overrides)
    assert result.interrupted and result.steps == 2
    assert f"the result is saved in {result.run_dir}" in capsys.readouterr().err
    info = json.loads((result.run_dir / "run.json").read_text())
    assert info["finished"] and info["steps"] == 2
    assert (result.run_dir / "adapter_model.safetensors").is_file()


def test_the_logged_rate_is_the_one_the_step_ran_at(tiny_overrides):
    """metrics.jsonl gave each step the rate of the step after it (step 1 of a cosine run showed less than lr)."""
    run_dir = recipe.train(None, tiny_overrides | {"train.max_steps": 4, "train.warmup_ratio": 0.0}).run_dir
    rates = [json.loads(line)["lr"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rates[0] == pytest.approx(1e-3) and rates[-1] > 0 and rates == sorted(rates, reverse=True)


def test_resume_refuses_changed_eval_data(tiny_overrides, qa_file, tmp_path):
    """Only the training rows were compared: a shortened eval file mixed two eval sets in one run's curve, which
    keep_best and the verdict then compared."""
    held_out = tmp_path / "held_out.jsonl"
    held_out.write_text("".join(qa_file.read_text().splitlines(keepends=True)[:6]))
    _finished_with_checkpoints(tiny_overrides | {"data.eval": str(held_out)})
    held_out.write_text("".join(qa_file.read_text().splitlines(keepends=True)[:2]))
    with pytest.raises(ConfigError, match="the tokenized eval rows differ"):
        recipe.train(None, tiny_overrides | {"data.eval": str(held_out), "train.max_steps": 4}, resume=True)


def test_changed_data_names_the_file_that_changed(tiny_overrides, qa_file, tmp_path):
    """With two training files and one edited, the refusal names that one, and tunelab check --resume says so too."""
    lines = qa_file.read_text().splitlines(keepends=True)
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    first.write_text("".join(lines[:4]))
    second.write_text("".join(lines[4:]))
    both = tiny_overrides | {"data.train": [str(first), str(second)]}
    run_dir = _finished_with_checkpoints(both)
    assert set(read_info(run_dir).data_files) == {str(first), str(second)}
    second.write_text("".join(lines[4:]).replace("box", "crate"))
    with pytest.raises(ConfigError) as refused:
        recipe.train(None, both | {"train.max_steps": 3}, resume=True)
    assert f"{second} changed" in str(refused.value) and str(first) not in str(refused.value)


def test_file_digests_follow_packed_documents_to_their_files():
    """A packed row's documents are digested with their own files, so packing does not hide which file changed."""
    from tunelab.data.packing import Packed
    from tunelab.data.render import Rendered
    from tunelab.training.resume import file_digests, what_changed

    a = Rendered(input_ids=[1, 2, 3], labels=[-100, 2, 3], path="a.jsonl", line=1)
    b = Rendered(input_ids=[4, 5], labels=[-100, 5], path="b.json", line=0)
    packed = Packed(
        input_ids=[1, 2, 3, 4, 5],
        labels=[-100, 2, 3, -100, 5],
        position_ids=[0, 1, 2, 0, 1],
        doc_lengths=[3, 2],
        sources=["a.jsonl:1", "b.json[0]"],
    )
    assert file_digests([packed]) == file_digests([a, b])
    edited = Rendered(input_ids=[4, 6], labels=[-100, 6], path="b.json", line=0)
    assert what_changed(file_digests([a, b]), file_digests([a, edited])) == "b.json changed"
    assert what_changed(file_digests([a, b]), file_digests([b, a])).startswith("every file gives the rows it gave")
    assert what_changed(file_digests([a, b]), file_digests([a])) == "b.json is no longer read"
    assert what_changed({}, file_digests([a])) == ""  # a run written before files were recorded


def test_what_changed_follows_moved_files():
    """A folder moved and one file in it edited: every file was named new or no longer read, the edited one lost
    among them. A moved file of the same rows is not named; a moved and edited one is named with its old path."""
    from tunelab.data.render import Rendered
    from tunelab.training.resume import file_digests, what_changed

    def row(path, ids):
        return Rendered(input_ids=ids, labels=ids, path=path, line=1)

    before = file_digests([row("old/a.jsonl", [1, 2]), row("old/b.jsonl", [3, 4])])
    moved = file_digests([row("new/a.jsonl", [1, 2]), row("new/b.jsonl", [3, 5])])
    assert what_changed(before, moved) == "new/b.jsonl changed (read from old/b.jsonl before)"
    same = file_digests([row("new/a.jsonl", [1, 2]), row("new/b.jsonl", [3, 4])])
    assert what_changed(before, same) == "every file gives the rows it gave, in another order"


def test_the_result_files_a_resume_removes_are_those_the_commands_write():
    from tunelab.eval.compare import COMPARE_FILE
    from tunelab.eval.evaluate import EVAL_FILE
    from tunelab.eval.report import REPORT_FILE
    from tunelab.training.result import RESULT_FILES

    assert set(RESULT_FILES) == {COMPARE_FILE, EVAL_FILE, REPORT_FILE}


def test_resume_may_add_or_remove_a_tracker():
    # trackers only watch the run: the README lets such options change on --resume
    from tunelab.config import load_config, to_dict
    from tunelab.training.resume import config_changes

    plain = load_config(None, {}).config
    watched = load_config(None, {"train.report_to": ["tensorboard"]}).config
    assert config_changes(to_dict(plain), watched) == ([], ["train.report_to: [] -> ['tensorboard']"])
    assert config_changes(to_dict(watched), plain) == ([], ["train.report_to: ['tensorboard'] -> []"])


def test_resumed_at_its_last_step_the_final_evaluation_is_logged_once(tiny_overrides, straight_and_resumed):
    """With eval_every not dividing the steps, the final evaluation (logged before the save crashed) was run and
    logged again on resume: metrics.jsonl held step 4's eval loss twice."""
    common = tiny_overrides | {"train.max_steps": 4, "train.save_every": 2, "data.eval_fraction": 0.25}
    common |= {"train.eval_every": 3}
    straight, resumed = straight_and_resumed(common, 1, finish, "save_final")

    def evals(run_dir):
        return [
            (r["step"], r["eval_loss"]) for r in map(json.loads, (run_dir / "metrics.jsonl").open()) if "eval_loss" in r
        ]

    assert (
        evals(resumed.run_dir)
        == evals(straight.run_dir)
        == [(3, evals(straight.run_dir)[0][1]), (4, straight.eval_loss)]
    )
    assert resumed.eval_loss == straight.eval_loss


@pytest.mark.parametrize("keep_best", [True, False])
def test_resume_may_turn_keep_best_on_or_off_and_trains_the_same_steps(
    tiny_overrides, straight_and_resumed, capsys, keep_best, logged_losses
):
    """train.keep_best only chooses which weights are saved at the end, but --resume refused a change of it."""
    common = tiny_overrides | {"train.max_steps": 4, "train.save_every": 2, "data.eval_fraction": 0.25}
    common |= {"train.eval_every": 2, "train.keep_best": keep_best}
    flipped = {"train.keep_best": not keep_best}
    straight, resumed = straight_and_resumed(common, 4, changed=flipped)  # resumed at step 2: steps 3 and 4 again
    assert f"resume: train.keep_best: {keep_best!r} -> {not keep_best!r} (allowed" in capsys.readouterr().out
    assert logged_losses(resumed.run_dir) == logged_losses(straight.run_dir)  # the trajectory is the uninterrupted one


def test_resume_may_change_cuda_graphs_and_sharding():
    """CUDA graphs give eager's losses bit for bit, and a checkpoint loads under either sharding (as on another
    rank count), but --resume refused a change of either."""
    from tunelab.config import load_config, to_dict
    from tunelab.training.resume import config_changes

    plain = load_config(None, {}).config
    other = load_config(None, {"train.cuda_graphs": False, "train.sharding": "fsdp2"}).config
    refused, allowed = config_changes(to_dict(plain), other)
    assert refused == []
    assert allowed == ["train.cuda_graphs: 'auto' -> False", "train.sharding: 'auto' -> 'fsdp2'"]


def test_a_longer_resume_keeps_the_warmup_steps_the_run_started_with(tiny_overrides, crash_at, capsys):
    """Resumed with a longer train.max_steps, train.warmup_ratio of the new length made the warmup longer: a run
    already past its 2 warmup steps fell back into a warmup of 4 at the checkpoint."""
    from tunelab.training.schedule import lr_factor

    common = tiny_overrides | {"train.max_steps": 4, "train.save_every": 2, "train.warmup_ratio": 0.5}
    with crash_at(3):
        recipe.train(None, common)
    capsys.readouterr()
    longer = common | {"train.max_steps": 8, "train.keep_checkpoints_after_finish": True}
    result = recipe.train(None, longer, resume=True)
    assert "resume: the warmup stays 2 steps, as the run started with them" in capsys.readouterr().out
    rates = {
        json.loads(line)["step"]: json.loads(line)["lr"]
        for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()
        if '"lr"' in line
    }
    assert [rates[s] for s in range(3, 9)] == pytest.approx([1e-3 * lr_factor(s, 8, 2, "cosine") for s in range(2, 8)])
    assert read_info(result.run_dir).extra["warmup_steps"] == 2
    recipe.train(None, longer | {"train.max_steps": 10}, resume=True)  # a later resume still keeps the first warmup
    assert "the warmup stays 2 steps" in capsys.readouterr().out


def test_resume_may_rename_stages_but_not_change_them():
    """A stage's name only labels it in the reports, but --resume refused a renamed stage, so a staged run started
    with two stages of one name (refused since) could not be resumed under names that tell them apart."""
    from tunelab.config import load_config, to_dict
    from tunelab.training.resume import config_changes

    def stages(*entries):
        return load_config(None, {"stages": list(entries)}).config

    saved = to_dict(stages({"name": "docs"}, {"name": "qa", "train": {"lr": 1e-3}}))
    refused, allowed = config_changes(saved, stages({"name": "docs"}, {"name": "answers", "train": {"lr": 1e-3}}))
    assert refused == [] and len(allowed) == 1 and allowed[0].startswith("stages: ")
    refused, _ = config_changes(saved, stages({"name": "docs"}, {"name": "answers", "train": {"lr": 2e-3}}))
    assert len(refused) == 1 and refused[0].startswith("stages: ")


def test_an_interrupted_run_records_its_last_logged_loss(tiny_overrides, tmp_path, crash_at, logged_losses):
    """run.json of a run stopped after step 3 had final_loss null, though metrics.jsonl held the loss of every step
    so far; the report showed no train loss for it."""
    from tunelab.eval.report import build_report

    common = tiny_overrides | {"train.max_steps": 6, "train.save_every": 2, "train.log_every": 1}
    run = tmp_path / "run"
    with crash_at(4):
        recipe.train(None, common | {"output_dir": str(run)})
    info = json.loads((run / "run.json").read_text())
    assert info["finished"] is False and info["steps"] == 3
    assert info["final_loss"] == logged_losses(run)[-1] and len(logged_losses(run)) == 3
    page = build_report(run).read_text()
    assert "last logged train loss" in page and f"{info['final_loss']:.4f}" in page


def test_a_resuming_run_keeps_the_progress_of_its_checkpoint_in_run_json(
    tiny_overrides, tmp_path, crash_at, logged_losses, monkeypatch
):
    """While a run resumed, its run.json said 0 steps and 0 tokens until the resume stopped or finished; a process
    killed outright (SIGKILL, the OOM killer: no handler runs) left it so, the stop's summary gone. run.json holds the
    checkpoint's steps, tokens, time and last logged loss from the moment the resume starts (the steps the stop
    trained after the checkpoint are trained again)."""
    from tunelab.training.checkpoint import STATE_FILE, latest_checkpoint

    common = tiny_overrides | {"train.max_steps": 6, "train.save_every": 2, "train.log_every": 1}
    run = tmp_path / "run"
    with crash_at(4):  # stopped after step 3, its last checkpoint at step 2
        recipe.train(None, common)
    before, losses = json.loads((run / "run.json").read_text()), logged_losses(run)
    assert before["steps"] == 3 and before["final_loss"] == losses[2]
    checkpoint = json.loads((latest_checkpoint(run) / STATE_FILE).read_text())["position"]
    assert checkpoint["step"] == 2
    seen = {}

    def killed(run_state):  # run.json as a SIGKILL before the resume's first step would leave it
        seen.update(json.loads((run / "run.json").read_text()))
        raise KeyboardInterrupt

    monkeypatch.setattr(recipe, "loop", killed)
    with pytest.raises(KeyboardInterrupt):
        recipe.train(None, common, resume=True)
    assert seen["finished"] is False and seen["steps"] == 2 and seen["total_steps"] == 6
    assert 0 < seen["tokens"] == checkpoint["tokens"] < before["tokens"]
    assert seen["elapsed_s"] == round(checkpoint["elapsed_s"], 1) and seen["final_loss"] == losses[1]


def test_a_kept_warmup_of_one_step_is_said_in_the_singular(tmp_path, monkeypatch):
    """A short run resumed longer printed 'the warmup stays 1 steps'."""
    from types import SimpleNamespace

    import tunelab.training.resume as resume

    monkeypatch.setattr(resume, "read_info", lambda *a, **k: SimpleNamespace(extra={resume.WARMUP: 1}, total_steps=4))
    kept, note = resume.kept_warmup(tmp_path, 0.05, 6)
    assert kept == 1
    assert note.startswith("resume: the warmup stays 1 step, as the run started with them")
    assert "of the new 6 steps would be 0" in note


def test_a_kept_warmup_past_the_new_length_says_the_rate_never_decays(tmp_path, monkeypatch):
    """A run shortened on resume below the warmup it started with was told that 'the decay after it is recomputed',
    though no step comes after it: the run ends still warming up, below train.lr, and never decays."""
    from types import SimpleNamespace

    import tunelab.training.resume as resume
    from tunelab.training.schedule import lr_factor

    monkeypatch.setattr(
        resume, "read_info", lambda *a, **k: SimpleNamespace(extra={resume.WARMUP: 20}, total_steps=400)
    )
    kept, note = resume.kept_warmup(tmp_path, 0.05, 12)
    assert kept == 20 and "decay after it is recomputed" not in note
    last = lr_factor(11, 12, kept, "cosine")
    assert f"ends the run still warming up, at {last:.0%} of train.lr, and never decays" in note


def test_a_checkpoint_written_after_passing_over_a_damaged_one_is_kept(tiny_overrides, crash_at, capsys):
    run = tiny_overrides | {"train.max_steps": 4, "train.save_every": 2, "train.keep_checkpoints_after_finish": True}
    run_dir = recipe.train(None, run).run_dir
    (run_dir / "checkpoints" / "step-0000004" / "state.json").write_text("")  # damaged: the resume starts at step 2
    resumed = tiny_overrides | {"train.max_steps": 6, "train.save_every": 3, "train.keep_checkpoints": 1}
    with crash_at(2):  # step 3 is trained and checkpointed, step 4 crashes
        recipe.train(None, resumed, resume=True)
    # the damaged step 4 was left behind by the resume: it is not the newest checkpoint the run keeps
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step-0000003"]
    capsys.readouterr()
    assert recipe.train(None, resumed, resume=True).steps == 6
    assert "step-0000003 (step 3 of 6)" in capsys.readouterr().out


def test_resume_of_a_run_the_guard_stopped_warns_before_anything_loads(tiny_overrides, crash_at, monkeypatch, capsys):
    """`train --resume` of a run the non-finite guard stopped loaded the data and the model and trained into the same
    NaN losses, without a word that it would: it now says so first, with the step and the advice to lower the lr."""
    overrides = tiny_overrides | {"train.max_steps": 3, "train.save_every": 1}
    with crash_at(2):
        recipe.train(None, overrides)
    run_json = Path(overrides["output_dir"]) / "run.json"
    info = json.loads(run_json.read_text())
    run_json.write_text(json.dumps(info | {"end": {"reason": "non_finite", "step": 2}}))

    class Loading(Exception):
        pass

    def loading(*args, **kwargs):
        raise Loading

    monkeypatch.setattr(recipe, "load_inputs", loading)
    capsys.readouterr()
    with pytest.raises(Loading):
        recipe.train(None, overrides, resume=True)
    out = capsys.readouterr().out
    assert "warning: " in out and "the non-finite guard stopped the run at step 2 (NaN or inf losses)" in out
    assert "a resume continues from its last checkpoint with the same settings" in out
    assert "lower train.lr in a new run" in out
