"""scratch_folder: a folder appears whole or not at all, with ordinary permissions; an old one is replaced only when
asked."""

import pytest

from tunelab.atomic import scratch_folder


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
