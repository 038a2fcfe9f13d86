"""A federation's round checkpoints (federated/checkpoints.py): written with the size and sha256 of the global
adapter, verified on --resume, a damaged last round falling back to the round before it."""

import errno
import json

import pytest

pytest.importorskip("flwr", reason="the federated extra (flwr) is not installed")

import torch

from tunelab.config import load_config
from tunelab.errors import RunDirError
from tunelab.federated import checkpoints
from tunelab.federated.checkpoints import round_folder, save_round, verify_round
from tunelab.federated.resume import check_resume
from tunelab.federated.server import run_federation

CLIENTS = ["site0", "site1"]


def _damage(path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # the same size, another content: only the checksum tells
    path.write_bytes(bytes(data))


def test_a_damaged_last_round_is_found_on_resume_and_the_round_before_it_trained_again(
    tmp_path, tiny_model_dir, federate_config, rounds_without_clients, capsys
):
    """save_round wrote the global adapter with no checksum: a round damaged on disk after it was written (a bad
    sector, a copy cut short and filled) was loaded by --resume as it was and trained on. tunelab train records and
    checks every checkpoint's sha256 and falls back to the one before."""
    config = federate_config(tmp_path, tiny_model_dir)
    run = run_federation(None, load_config(config, {"federated.rounds": 3}), 2, CLIENTS, resume=False)
    record = json.loads((round_folder(run, 3) / "round.json").read_text())
    assert record["round"] == 3 and len(record["files"]["adapter_model.safetensors"]["sha256"]) == 64
    assert record["state"]["rounds_done"] == 3
    assert verify_round(round_folder(run, 3), 3) is None
    _damage(round_folder(run, 3) / "adapter_model.safetensors")
    assert "does not match its sha256" in verify_round(round_folder(run, 3), 3)
    capsys.readouterr()

    resumed = load_config(config, {"federated.rounds": 4})
    notes = check_resume(run, resumed.config)  # federate --resume and check --resume say it before anything starts
    assert any("the checkpoint of round 3" in n and "does not match its sha256" in n for n in notes)
    run_federation(None, resumed, 2, CLIENTS, resume=True)
    out = capsys.readouterr().out
    assert "resume: continuing from round 2, the last intact one: round 3 is trained again" in out
    state = json.loads((run / "federated.json").read_text())
    assert state["rounds_done"] == 4 and [h["round"] for h in state["history"]] == [1, 2, 3, 4]
    rounds = [json.loads(line)["round"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert sorted({r for r in rounds}) == [0, 1, 2, 3, 4] and rounds.count(3) == rounds.count(2)  # no round twice


def test_a_resume_with_no_intact_round_is_refused_naming_the_checkpoint(
    tmp_path, tiny_model_dir, federate_config, rounds_without_clients
):
    config = federate_config(tmp_path, tiny_model_dir)
    run = run_federation(None, load_config(config), 2, CLIENTS, resume=False)
    for r in (1, 2):
        _damage(round_folder(run, r) / "adapter_model.safetensors")
    with pytest.raises(RunDirError, match=r"round 2 is done, but its checkpoint .*round-0000002 is damaged \("):
        check_resume(run, load_config(config, {"federated.rounds": 3}).config)


def test_a_full_disk_leaves_the_earlier_rounds_and_says_so(tmp_path, monkeypatch):
    adapter = {"lora_A.weight": torch.ones(2, 3)}
    save_round(tmp_path, 1, adapter, {"rounds_done": 1})

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoints, "save_file", full)
    with pytest.raises(RunDirError, match="no space left on the device while writing the checkpoint of round 2"):
        save_round(tmp_path, 2, adapter, {"rounds_done": 2})
    assert verify_round(round_folder(tmp_path, 1), 1) is None
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["round-0000001"]


def test_keep_best_forgets_a_best_round_that_is_trained_again(tmp_path):
    """After a fallback past the round keep_best had kept, the snapshot's own best would say nothing of the adapter
    saved in the run (that later round's): keep_best chooses again among the rounds trained from there."""
    from tunelab.federated.checkpoints import resume_round

    adapter = {"lora_A.weight": torch.ones(2, 3)}
    first = {"rounds_done": 1, "history": [{"round": 1}], "best": {"round": 1, "eval_loss": 2.0}}
    second = {"rounds_done": 2, "history": [{"round": 1}, {"round": 2}], "best": {"round": 2, "eval_loss": 1.0}}
    save_round(tmp_path, 1, adapter, first)
    save_round(tmp_path, 2, adapter, second)
    _damage(round_folder(tmp_path, 2) / "adapter_model.safetensors")
    state, notes = resume_round(tmp_path, second)
    assert state["rounds_done"] == 1 and "best" not in state
    assert (
        notes[-1]
        == "resume: train.keep_best had kept round 2, which is trained again: it chooses among the rounds from 2 on"
    )
    save_round(tmp_path, 2, adapter, second | {"best": {"round": 1, "eval_loss": 2.0}})
    _damage(round_folder(tmp_path, 2) / "adapter_model.safetensors")
    state, notes = resume_round(tmp_path, second | {"best": {"round": 1, "eval_loss": 2.0}})
    assert state["best"] == {"round": 1, "eval_loss": 2.0} and not any("train.keep_best" in n for n in notes)


def test_a_python_caller_is_told_resume_true_not_the_flag(tmp_path, tiny_model_dir, federate_config, monkeypatch):
    """A full disk said to "continue with tunelab federate --resume", a federation with no intact round to "drop
    --resume, give --overwrite", and the notes on rounds that applied nothing named --resume and --overwrite, to a
    tunelab.federate(...) caller too. Each now names what the caller gives; the command line's still its flags."""
    from tunelab.config.flags import CLI, PYTHON
    from tunelab.federated.history import nothing_applied
    from tunelab.federated.resume import idle_note

    adapter = {"lora_A.weight": torch.ones(2, 3)}
    save_round(tmp_path, 1, adapter, {"rounds_done": 1})
    monkeypatch.setattr(checkpoints, "save_file", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
    for spelling, said in (
        (PYTHON, "continue with tunelab.federate(..., resume=True)."),
        (CLI, "tunelab federate --resume."),
    ):
        with pytest.raises(RunDirError) as caught:
            save_round(tmp_path, 2, adapter, {"rounds_done": 2}, spelling=spelling)
        assert str(caught.value).endswith(said)
    _damage(round_folder(tmp_path, 1) / "adapter_model.safetensors")
    for spelling, said in (
        (PYTHON, "(drop resume=True, give overrides['overwrite'] = True)"),
        (CLI, "(drop --resume, give --overwrite)"),
    ):
        with pytest.raises(RunDirError) as caught:
            checkpoints.resume_round(tmp_path, {"rounds_done": 1}, spelling)
        assert said in str(caught.value)
    history = [{"round": 1, "applied": False, "clients": [{"client": "a", "status": "failed"}]}]
    assert "no update (a: failed). resume=True continues from" in idle_note({"history": history}, PYTHON)[0]
    assert "(overrides['overwrite'] = True), or resume=True with more" in nothing_applied(history, PYTHON)
    assert "(--overwrite), or --resume with more" in nothing_applied(history)
