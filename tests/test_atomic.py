"""scratch_folder: a folder appears whole or not at all, with ordinary permissions; an old one is replaced only when
asked. A write the system refuses (a full disk) is a WriteFailed naming the file, through the CLI too: exit 2, no
traceback, the run not marked finished and the run it was replacing kept."""

import errno
import os
from pathlib import Path

import pytest

from tunelab.atomic import scratch_folder, temporary_sibling, write_text
from tunelab.cli import main
from tunelab.errors import WriteFailed
from tunelab.rundir import read_info


def test_a_folder_appears_whole_with_ordinary_permissions(tmp_path):
    target = tmp_path / "out"
    with scratch_folder(target) as scratch:
        (scratch / "a.txt").write_text("new")
        (scratch / "sub").mkdir()
        scratch.chmod(0o700)
        assert not target.exists()  # nothing at the target while it is being written
    probe = tmp_path / "probe"
    probe.touch()
    file_mode = probe.stat().st_mode & 0o777
    assert (target / "a.txt").read_text() == "new"
    assert (target / "a.txt").stat().st_mode & 0o777 == file_mode
    assert (
        (target / "sub").stat().st_mode & 0o777 == target.stat().st_mode & 0o777 == file_mode | 0o111 & (file_mode >> 2)
    )
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_failed_write_leaves_the_old_folder_and_no_scratch(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("old")
    with pytest.raises(RuntimeError), scratch_folder(target) as scratch:
        (scratch / "half.txt").write_text("half")
        raise RuntimeError("interrupted")
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (target / "keep.txt").read_text() == "old"

    with pytest.raises(OSError), scratch_folder(target, replace=False) as scratch:  # another writer got there first
        (scratch / "new.txt").write_text("new")
    assert [p.name for p in target.iterdir()] == ["keep.txt"] and len(list(tmp_path.iterdir())) == 1

    with scratch_folder(target) as scratch:
        (scratch / "new.txt").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new.txt"] and len(list(tmp_path.iterdir())) == 1


def _full_disk(monkeypatch, name: str, nth: int = 1, code: int = errno.ENOSPC) -> None:
    """The `nth` write of a file called `name` (directly or under its temporary name) fails with `code`, as the
    system would on a full disk (ENOSPC) or a read-only filesystem (EROFS). Every Path write opens the file."""
    real_open, seen = Path.open, {"n": 0}

    def failing_open(self, mode="r", *args, **kwargs):
        if self.name in (name, temporary_sibling(Path(name)).name) and set(mode) & set("wax"):
            seen["n"] += 1
            if seen["n"] == nth:
                raise OSError(code, os.strerror(code), str(self))
        return real_open(self, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "open", failing_open)


@pytest.mark.parametrize(
    "code, says", [(errno.ENOSPC, "free some space on its disk"), (errno.EROFS, "make it writable")]
)
def test_a_refused_write_names_the_file_and_keeps_the_old_content(tmp_path, monkeypatch, code, says):
    path = write_text(tmp_path / "run.json", "old")
    _full_disk(monkeypatch, "run.json", code=code)
    with pytest.raises(WriteFailed) as caught:
        write_text(path, "new")
    assert str(caught.value).startswith(f"{path}: cannot be written ({os.strerror(code)}).") and says in str(
        caught.value
    )
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["run.json"]


def test_a_full_disk_while_building_a_folder_names_the_folder_and_keeps_the_old_one(tmp_path):
    target = tmp_path / "merged"
    target.mkdir()
    (target / "keep.txt").write_text("old")
    with pytest.raises(WriteFailed, match=f"^{target}: cannot be written \\(No space left on device\\)"):
        with scratch_folder(target) as scratch:
            (scratch / "half.bin").write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert [p.name for p in tmp_path.iterdir()] == ["merged"] and (target / "keep.txt").read_text() == "old"


@pytest.mark.parametrize(
    "name, nth",
    [
        ("config.yaml", 1),  # at the start, before any step
        ("metrics.jsonl", 2),  # the first step's record (the first write empties the file)
        ("run.json", 2),  # the end: the result is saved, the run is about to be marked finished
    ],
)
def test_a_full_disk_during_training_exits_2_unfinished_keeping_the_previous_run(
    tiny_overrides, monkeypatch, capsys, name, nth, cli_flags
):
    overrides = tiny_overrides | {"train.max_steps": 2}
    flags = cli_flags(overrides)
    assert main(["train", *flags]) == 0
    run = Path(overrides["output_dir"])
    _full_disk(monkeypatch, name, nth)
    assert main(["train", *flags, "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert f"tunelab train: error: {run / name}: cannot be written (No space left on device)" in err
    assert "free some space" in err and "Traceback" not in err
    assert not read_info(run, require_finished=False).finished  # the failed run is not reported as finished
    previous = run.with_name(run.name + ".previous")  # the run it was replacing is all there
    assert read_info(previous).finished and (previous / "adapter_model.safetensors").is_file()
    # and the error says where it is, at the start and the end as in the loop (it did in the loop only)
    assert f"the previous run is kept in {previous} until a run in {run} finishes" in err
    monkeypatch.undo()
    assert main(["train", *flags, "--overwrite"]) == 0  # once there is space, the same command runs
    assert read_info(run).finished and not previous.exists()


def test_require_space_leaves_a_disk_that_does_not_say_to_the_write(tmp_path, monkeypatch):
    """A filesystem whose free space cannot be read (statvfs refused) stopped merge and export with a traceback from
    the room check; the check now stands aside and the write itself reports what happens. A disk that says it has
    too little room is refused, naming both sizes."""
    import shutil

    import tunelab.atomic
    from tunelab.atomic import require_space
    from tunelab.errors import WriteFailed

    def refused(_):
        raise PermissionError(13, "Permission denied")

    real = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(tunelab.atomic.shutil, "disk_usage", refused)
    require_space(tmp_path / "out" / "m.gguf", 10**12, "the export")
    monkeypatch.setattr(tunelab.atomic.shutil, "disk_usage", lambda _: real._replace(free=5 * 2**20))
    with pytest.raises(WriteFailed, match=r"m.gguf: the export needs about 0.93 GB on its disk, which has 5.0 MB free"):
        require_space(tmp_path / "out" / "m.gguf", 10**9, "the export")
