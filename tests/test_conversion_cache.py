"""`tunelab cache`: lists converted GGUF models with sizes, says where the cache is, clears all or named entries,
and never touches folders that are not tunelab's conversions."""

import pytest

import tunelab
from tunelab.cli import main


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path))
    gguf = tmp_path / "gguf"
    for name, size in (("big-1111", 3000), ("small-2222", 1000)):
        (gguf / name).mkdir(parents=True)
        (gguf / name / "config.json").write_text("{}")
        (gguf / name / "model.safetensors").write_bytes(b"\0" * size)
    (gguf / ".tmp-abc").mkdir()  # an interrupted conversion
    (gguf / "notes").mkdir()  # not ours: no config.json + safetensors
    (gguf / "notes" / "mine.txt").write_text("keep me")
    return gguf


def test_list_path_and_clear(cache, capsys):
    entries = tunelab.cache_entries()
    assert [e.name for e in entries] == ["big-1111", "small-2222", ".tmp-abc"]
    assert entries[0].size_bytes == 3002 and entries[2].complete is False
    assert tunelab.cache_path() == cache

    assert main(["cache"]) == 0
    out = capsys.readouterr().out
    assert str(cache) in out and "big-1111" in out and "3 entries" in out and "unfinished" in out
    assert main(["cache", "path"]) == 0 and capsys.readouterr().out.strip() == str(cache)

    assert main(["cache", "clear", "small-2222"]) == 0
    assert "removed 1 entry" in capsys.readouterr().out and not (cache / "small-2222").exists()
    assert main(["cache", "clear", "nope"]) == 2
    assert "no cache entry named nope; entries: big-1111, .tmp-abc" in capsys.readouterr().err
    assert main(["cache", "clear"]) == 0
    assert sorted(p.name for p in cache.iterdir()) == ["notes"]  # what is not ours stays
    assert (cache / "notes" / "mine.txt").read_text() == "keep me"
    assert main(["cache"]) == 0 and "empty" in capsys.readouterr().out
