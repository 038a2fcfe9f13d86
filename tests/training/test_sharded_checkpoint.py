"""The sharded checkpoint's save on a full disk, in one process standing for rank 0 of two: the collectives answer for
this rank alone, and torch.distributed.checkpoint writes without a process group, as it loads."""

import errno
import warnings

import pytest
import torch
from torch import nn

import tunelab.training.sharded_checkpoint as sharded
from tunelab.config.flags import CLI, PYTHON
from tunelab.errors import RunDirError
from tunelab.training.checkpoint import checkpoints, intact_checkpoint
from tunelab.training.distributed import Ranks


class _RankZeroOfTwo(Ranks):
    def any(self, flag: bool) -> bool:
        return flag

    def gather(self, value):
        return [value, None]

    def barrier(self) -> None:
        pass


def _save(run_dir, step: int, spelling=CLI):
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(2, 4)).sum().backward()
    optimizer.step()
    position = {"step": step, "epoch": 0, "batch_in_epoch": step, "tokens": 0, "elapsed_s": 0.0}
    with warnings.catch_warnings():  # DCP says it writes without a process group: meant here
        warnings.simplefilter("ignore")
        return sharded.save(run_dir, model, optimizer, position, 3, _RankZeroOfTwo(0, 2), spelling)


def _full(*_, **__):
    raise OSError(errno.ENOSPC, "No space left on device")


class _FullDisk(sharded.HuggingFaceStorageWriter):
    def write_data(self, plan, planner):  # a shard begun, then the disk is full
        (self.path / "shard-00000-model-00001-of-00001.safetensors").write_bytes(b"half")
        _full()


@pytest.mark.parametrize(("where", "spelling"), [("shards", CLI), ("rng", PYTHON), ("state", CLI)])
def test_a_full_disk_in_a_sharded_save_leaves_no_part_of_it(tmp_path, monkeypatch, where, spelling):
    assert _save(tmp_path, 1).name == "step-0000001"
    if where == "shards":
        monkeypatch.setattr(sharded, "HuggingFaceStorageWriter", _FullDisk)
    else:
        monkeypatch.setattr(sharded, "save_file" if where == "rng" else "file_digest", _full)
    with pytest.raises(RunDirError) as failed:
        _save(tmp_path, 2, spelling)
    message = str(failed.value)
    assert "no space left on the device while writing checkpoint of step 2" in message
    assert "The earlier checkpoints are intact (step-0000001)" in message
    # each caller is told its own way: the CLI's flag, or a Python caller's argument, never both
    ours, theirs = ("--resume", "resume=True") if spelling.flags else ("resume=True", "--resume")
    assert f"then continue with the same {'command' if spelling.flags else 'train(...) call'} and {ours}" in message
    assert theirs not in message
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-0000001"]  # no scratch, no step 2
    assert intact_checkpoint(tmp_path)[0] == checkpoints(tmp_path)[0]


def test_a_sharded_save_removes_what_a_killed_save_left(tmp_path, capsys):
    cut = tmp_path / "checkpoints" / ".tmp-step-0000009" / "shards"
    cut.mkdir(parents=True)
    (cut / "shard-00001-model-00001-of-00001.safetensors").write_bytes(b"half")
    _save(tmp_path, 1)
    assert not cut.parent.exists() and f"removed {cut.parent}" in capsys.readouterr().out


def test_a_sharded_checkpoints_files_get_the_permissions_of_any_new_file(tmp_path):
    """The single-file checkpoint's files were made readable as any file the user creates; the sharded one's RNG
    files stayed 0600, unreadable to the colleague a kept checkpoint is for."""
    folder = _save(tmp_path, 1)
    probe = tmp_path / "probe"
    probe.touch()
    files = [path for path in folder.rglob("*") if path.is_file()]
    assert any(path.name.startswith("rng-") for path in files)
    assert {path.stat().st_mode & 0o777 for path in files} == {probe.stat().st_mode & 0o777}, files
