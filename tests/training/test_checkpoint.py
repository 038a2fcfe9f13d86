"""Checkpoints: verified by size and sha256, and a full disk leaves the earlier ones intact and says what it needed."""

import errno
import json
from pathlib import Path

import torch

import tunelab.training.checkpoint as checkpoint
from tunelab.cli import main
from tunelab.training.checkpoint import save_checkpoint, verify_checkpoint


def test_disk_full_while_checkpointing_keeps_the_earlier_ones(tiny_overrides, monkeypatch, capsys, cli_flags):
    real_save, calls = checkpoint.save_file, {"n": 0}

    def filling_save(tensors, path, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] >= 3:  # the checkpoint of step 2 (two files per checkpoint)
            with open(path, "wb") as f:
                f.write(b"\0" * 100)  # a partial write, then the device is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(tensors, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "save_file", filling_save)
    overrides = tiny_overrides | {"train.max_steps": 4, "train.save_every": 1}
    flags = cli_flags(overrides)
    assert main(["train", *flags]) == 2
    err = capsys.readouterr().err
    assert "no space left on the device while writing checkpoint of step 2" in err and "it needs about" in err
    assert "are free" in err and "The earlier checkpoints are intact (step-0000001)" in err and "--resume" in err
    folder = Path(tiny_overrides["output_dir"]) / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["step-0000001"]  # no partial folder left
    assert verify_checkpoint(folder / "step-0000001") is None


def test_verify_names_what_is_damaged(tmp_path):
    model = torch.nn.Linear(3, 3)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    folder = save_checkpoint(tmp_path, model, optimizer, {"step": 1}, keep=2)
    assert verify_checkpoint(folder) is None
    data = bytearray((folder / "optimizer.safetensors").read_bytes())
    data[-1] ^= 0xFF  # same size, one bit pattern changed
    (folder / "optimizer.safetensors").write_bytes(bytes(data))
    assert verify_checkpoint(folder) == "optimizer.safetensors does not match its sha256 in state.json"
    (folder / "state.json").write_text("")
    assert verify_checkpoint(folder).startswith("state.json is missing or damaged")


def test_an_edited_state_json_is_a_damaged_checkpoint(tmp_path):
    """An edited step resumed at the wrong place (-3 counted the bar from -50%, 2 trained 8 steps and reported 6);
    a string step, a files entry of the wrong type and emptied param_groups ended --resume in a traceback."""
    import pytest

    model = torch.nn.Linear(3, 3)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    folder = save_checkpoint(tmp_path, model, optimizer, {"step": 4, "epoch": 0, "batch_in_epoch": 4}, keep=2)
    good = json.loads((folder / "state.json").read_text())
    edits = {
        "step -3": lambda s: s["position"].update(step=-3),
        "step 2": lambda s: s["position"].update(step=2),
        "step '4'": lambda s: s["position"].update(step="4"),
        "epoch -1": lambda s: s["position"].update(epoch=-1),
        "files 'x'": lambda s: s.update(files="x"),
        "param_groups []": lambda s: s.update(param_groups=[]),
    }
    for what, edit in edits.items():
        state = json.loads(json.dumps(good))
        edit(state)
        (folder / "state.json").write_text(json.dumps(state))
        assert (verify_checkpoint(folder) or "").startswith("state.json is damaged ("), what
    (folder / "state.json").write_text(json.dumps(good))
    assert verify_checkpoint(folder) is None
    state = json.loads(json.dumps(good))
    state["param_groups"] = state["param_groups"] * 2  # two groups for an optimizer of one
    (folder / "state.json").write_text(json.dumps(state))
    with pytest.raises(checkpoint.RunDirError, match="optimizer state does not fit this run"):
        checkpoint.load_checkpoint(folder, model, optimizer)


def test_cuda_rng_states_are_restored_in_device_order_past_ten_devices(monkeypatch):
    """The CUDA RNG states were put back in the text order of their keys, so on a host of more than ten GPUs device 2
    got device 10's state (rng.cuda.10 sorts before rng.cuda.2) and a resumed run drew other dropout masks."""
    from tunelab.training.checkpoint import restore_rng

    set_all = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 12)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", set_all.extend)
    tensors = {"rng.cpu": torch.get_rng_state()} | {f"rng.cuda.{i}": torch.tensor([i]) for i in range(12)}
    restore_rng(tensors)
    assert [int(state) for state in set_all] == list(range(12))


def test_disk_full_at_the_first_checkpoint_does_not_offer_resume(tiny_overrides, monkeypatch, capsys, cli_flags):
    """A full disk at a run's first checkpoint said "No earlier checkpoint; free some space, then continue with
    --resume": there was nothing to resume, and --resume then refused."""

    def full(tensors, path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_file", full)
    assert main(["train", *cli_flags(tiny_overrides | {"train.max_steps": 2, "train.save_every": 1})]) == 2
    err = capsys.readouterr().err
    assert "no space left on the device while writing checkpoint of step 1" in err
    assert "--resume" not in err and "No checkpoint was written before it" in err and "train the run again" in err
