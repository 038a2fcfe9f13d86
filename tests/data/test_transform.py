"""data/transform.py: loading a user's function file once while it is unchanged, again once edited."""

import os

import pytest

from tunelab.config import load_config
from tunelab.data.report import DataReport
from tunelab.data.sources import Record
from tunelab.data.transform import apply_transform, load_transform
from tunelab.errors import DataError


def test_an_edit_that_keeps_the_size_and_the_mtime_is_loaded_again(tmp_path):
    script = tmp_path / "rows_edit_same_second.py"
    script.write_text("def clean(row):\n    return {'n': 1}\n")
    stamp = script.stat().st_mtime_ns
    assert load_transform(f"{script}:clean")({}) == {"n": 1}
    script.write_text("def clean(row):\n    return {'n': 2}\n")  # same size, written within the same second
    os.utime(script, ns=(stamp, stamp))
    assert load_transform(f"{script}:clean")({}) == {"n": 2}


def test_an_unchanged_file_runs_its_top_level_code_once(tmp_path):
    script = tmp_path / "rows_run_once.py"
    count = tmp_path / "count"
    script.write_text(f"open({str(count)!r}, 'a').write('x')\n\ndef clean(row):\n    return row\n")
    load_transform(f"{script}:clean")
    load_transform(f"{script}:clean")
    assert count.read_text() == "x"


def test_a_working_directory_module_is_kept_by_its_path_when_the_working_directory_is_on_sys_path(
    tmp_path, monkeypatch
):
    """`python -m tunelab train --data.transform my_rows:clean` puts the working directory on sys.path, so the module
    was found as an importable one and the run's config kept the bare name: `tunelab eval RUN` from another folder
    (or a federated client) could not find it. The file found there is kept by its path, as with `tunelab train`."""
    (tmp_path / "my_rows_on_path.py").write_text("def clean(row):\n    return row\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = load_config(None, {"data.transform": "my_rows_on_path:clean"}).config
    assert cfg.data.transform == f"{tmp_path / 'my_rows_on_path.py'}:clean"
    assert load_config(None, {"data.transform": "json:loads"}).config.data.transform == "json:loads"


def test_an_exception_without_a_message_is_named_by_its_type_alone(tmp_path):
    """`raise ValueError()` in a transform read 'raised ValueError:  on this row', a colon before nothing."""

    def refuse(row):
        raise ValueError()

    with pytest.raises(DataError, match=r"^t.jsonl:3: data.transform rows:refuse raised ValueError on this row\."):
        apply_transform([Record("t.jsonl", 3, {"a": 1})], refuse, "rows:refuse", DataReport())
