"""`tunelab cache`: lists converted GGUF models with sizes, says where the cache is, clears all or named entries
(incomplete ones and those an interrupted replacement left aside too), and never touches folders that are not
tunelab's conversions."""

import os

import pytest

import tunelab
import tunelab.atomic as atomic
from tunelab.cli import main
from tunelab.models.converted import COMPLETE, finish_conversion


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path))
    gguf = tmp_path / "gguf"
    for name, size in (("big-1111", 3000), ("small-2222", 1000)):
        (gguf / name).mkdir(parents=True)
        (gguf / name / "config.json").write_text("{}")
        (gguf / name / "model.safetensors").write_bytes(b"\0" * size)
        finish_conversion(gguf / name)
    (gguf / ".tmp-abc").mkdir()  # an interrupted conversion
    (gguf / "notes").mkdir()  # not ours: neither finished by tunelab nor named as its conversions are
    (gguf / "notes" / "mine.txt").write_text("keep me")
    (gguf / "notes" / "config.json").write_text("{}")
    return gguf


def test_list_path_and_clear(cache, capsys):
    entries = tunelab.cache_entries()
    assert [e.name for e in entries] == ["big-1111", "small-2222", ".tmp-abc"]
    assert entries[0].size_bytes == 3002 + (cache / "big-1111" / COMPLETE).stat().st_size
    assert entries[0].complete and entries[2].complete is False
    assert tunelab.cache_path() == cache

    assert main(["cache"]) == 0
    out = capsys.readouterr().out
    assert str(cache) in out and "big-1111" in out and "3 entries" in out and "unfinished" in out
    assert main(["cache", "path"]) == 0 and capsys.readouterr().out.strip() == str(cache)

    assert main(["cache", "clear", "small-2222"]) == 0
    assert "removed 1 entry" in capsys.readouterr().out and not (cache / "small-2222").exists()
    assert main(["cache", "clear", "nope"]) == 2
    # said once as the command's error, not "tunelab cache: error: tunelab cache clear: ..."
    assert capsys.readouterr().err == "tunelab cache: error: no cache entry named nope; entries: big-1111, .tmp-abc.\n"
    assert main(["cache", "path", "big-1111"]) == 2
    assert capsys.readouterr().err.startswith("tunelab cache: error: entry names go with 'clear' only")
    assert main(["cache", "clear"]) == 0
    assert sorted(p.name for p in cache.iterdir()) == ["notes"]  # what is not ours stays
    assert (cache / "notes" / "mine.txt").read_text() == "keep me"
    assert main(["cache"]) == 0 and "empty" in capsys.readouterr().out


def test_incomplete_conversions_are_listed_and_cleared(cache, capsys):
    """A conversion whose weights were deleted was neither listed nor cleared ("empty") while every run on its model
    failed on it; one whose weights were cut short was listed as whole."""
    gone = cache / "mymodel-0123456789abcdef"  # its weights deleted, and made before conversions were marked finished
    gone.mkdir()
    (gone / "config.json").write_text("{}")
    with (cache / "small-2222" / "model.safetensors").open("r+b") as f:
        f.truncate(400)
    entries = {e.name: e for e in tunelab.cache_entries()}
    assert [n for n, e in entries.items() if e.complete] == ["big-1111"]

    assert main(["cache"]) == 0
    out = capsys.readouterr().out
    assert f"{gone.name}  (incomplete: model.safetensors is missing; converted again at next use)" in out
    assert "small-2222  (incomplete: model.safetensors has 400 bytes, not the 1,000 written" in out
    assert main(["cache", "clear", gone.name]) == 0 and not gone.exists()
    assert main(["cache", "clear"]) == 0 and "removed 3 entries" in capsys.readouterr().out
    assert sorted(p.name for p in cache.iterdir()) == ["notes"]


def test_a_conversion_left_aside_by_an_interrupted_replacement_is_listed_and_cleared(cache, capsys, monkeypatch):
    """Replacing a damaged conversion moves it aside as .old-NAME-PID first; a process killed there left it, unlisted
    and never cleared, when it no longer held the file a finished conversion writes last."""
    target = cache / "mymodel-0123456789abcdef"  # converted before conversions were marked finished
    target.mkdir()
    (target / "config.json").write_text("{}")
    (target / "model.safetensors").write_bytes(b"\0" * 500)
    new = cache.parent / "new"
    new.mkdir()
    real_replace = os.replace

    def killed_once_moved_aside(src, dst):
        real_replace(src, dst)
        raise KeyboardInterrupt  # the process ends here

    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        m.setattr(atomic.os, "replace", killed_once_moved_aside)
        atomic.replace_folder(new, target)
    (aside,) = cache.glob(".old-*")
    (cache / ".old-notes-1").mkdir()  # not named as the conversions tunelab sets aside: not ours
    (cache / ".old-notes-1" / "mine.txt").write_text("keep me")

    entry = {e.name: e for e in tunelab.cache_entries()}[aside.name]
    assert entry.size_bytes == 502 and not entry.complete and entry.problem is None
    assert main(["cache"]) == 0
    out = capsys.readouterr().out
    (line,) = [line for line in out.splitlines() if aside.name in line]
    assert line.strip().startswith("502 B") and "(an old conversion left aside by an interrupted replacement" in line
    assert ".old-notes-1" not in out and "4 entries" in out
    assert main(["cache", "clear", aside.name]) == 0 and not aside.exists()
    assert f"removed 1 entry (0.0 MB): {aside.name}" in capsys.readouterr().out
    assert (cache / ".old-notes-1" / "mine.txt").read_text() == "keep me"


@pytest.mark.parametrize("manifest", ['{"files": null}', '{"files": ["model.safetensors"]}', '{"files": {"a": "1"}}'])
def test_a_damaged_manifest_is_an_incomplete_conversion(cache, capsys, manifest):
    """A finished-conversion file whose list of files was damaged ended `tunelab cache` in an AttributeError."""
    (cache / "big-1111" / COMPLETE).write_text(manifest)
    assert main(["cache"]) == 0
    assert f"big-1111  (incomplete: {COMPLETE} does not list its files with their sizes" in capsys.readouterr().out


def test_the_api_clears_only_what_it_is_given(cache):
    """clear_cache([]) (a filtered list that came out empty) removed every entry, clear_cache("big-1111") was read
    as the names 'b', 'i', 'g', ... and clear_cache(3) raised a bare TypeError."""
    from tunelab.errors import ConfigError

    assert tunelab.clear_cache([]) == [] and len(tunelab.cache_entries()) == 3
    assert [e.name for e in tunelab.clear_cache("big-1111")] == ["big-1111"]
    with pytest.raises(ConfigError, match=r"clear_cache\(\): argument 'names' must be str \| list\[str\] \| None"):
        tunelab.clear_cache(3)
    assert [e.name for e in tunelab.cache_entries()] == ["small-2222", ".tmp-abc"]


def test_a_name_given_twice_is_cleared_once(cache, capsys):
    """`tunelab cache clear small-2222 small-2222` removed the entry, then failed with a FileNotFoundError traceback
    removing it again."""
    assert main(["cache", "clear", "small-2222", "small-2222"]) == 0
    assert "removed 1 entry" in capsys.readouterr().out and not (cache / "small-2222").exists()
    assert [e.name for e in tunelab.clear_cache([".tmp-abc", ".tmp-abc"])] == [".tmp-abc"]


def test_a_name_given_twice_is_removed_once_and_a_folder_that_cannot_go_is_named(cache, capsys, monkeypatch):
    """`tunelab cache clear NAME NAME` removed the entry, then ended in a FileNotFoundError traceback (exit 1)."""
    import shutil

    import tunelab.conversion_cache as conversion_cache

    assert main(["cache", "clear", "small-2222", "small-2222"]) == 0
    assert "removed 1 entry" in capsys.readouterr().out and not (cache / "small-2222").exists()

    rmtree = shutil.rmtree

    def refused(path):
        if path.name == ".tmp-abc":
            raise PermissionError(13, "Permission denied")
        rmtree(path)

    monkeypatch.setattr(conversion_cache.shutil, "rmtree", refused)
    assert main(["cache", "clear"]) == 2
    err = capsys.readouterr().err
    assert f"{cache / '.tmp-abc'} could not be removed (Permission denied); removed before it: big-1111" in err
    assert "Traceback" not in err


def test_the_api_prints_what_the_command_prints(cache, capsys):
    """The listing `tunelab cache` prints, and what `clear` and `prune` say they removed, had no Python form: a script
    got the entries and had to format them itself. show=True prints each as the command does."""
    assert main(["cache"]) == 0
    listed = capsys.readouterr().out
    assert [e.name for e in tunelab.cache_entries(show=True)] == ["big-1111", "small-2222", ".tmp-abc"]
    assert capsys.readouterr().out == listed and "3 entries" in listed
    assert tunelab.cache_entries() and capsys.readouterr().out == ""  # quiet unless asked
    assert tunelab.prune_cache(show=True) == []
    assert capsys.readouterr().out == "removed 0 entries (0.0 MB): nothing stale\n"
    assert main(["cache", "prune"]) == 0 and capsys.readouterr().out == "removed 0 entries (0.0 MB): nothing stale\n"
    assert [e.name for e in tunelab.clear_cache(["small-2222"], show=True)] == ["small-2222"]
    assert capsys.readouterr().out.startswith("removed 1 entry (0.0 MB): small-2222\n")
    assert main(["cache", "clear", "big-1111"]) == 0
    assert capsys.readouterr().out.startswith("removed 1 entry (0.0 MB): big-1111\n")
