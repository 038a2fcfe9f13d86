"""Data through the `datasets` library: a save_to_disk folder, an .arrow file and a hub id read offline from the
cache (prepared here as the library lays it out), with the column mapping of local files; an id that is neither
cached nor reachable is named. data.transform: rows changed, dropped, or the raising row named."""

import json
import shutil

import pytest

from tunelab.config import DataConfig, DataSource
from tunelab.data.loader import build_datasets
from tunelab.errors import ConfigError, DataError

datasets = pytest.importorskip("datasets")

ROWS = [{"q": f"What is the code of box {i}?", "a": f"Box {i} has code {1000 + i}."} for i in range(12)]
FIELDS = {"question": "q", "answer": "a"}


def _decoded(data, tokenizer):
    return [tokenizer.decode(r.input_ids) for r in data.train]


def test_a_save_to_disk_folder_and_an_arrow_file(tmp_path, tiny_tokenizer):
    folder = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS)}).save_to_disk(str(folder))
    data = build_datasets(
        DataConfig(train=[DataSource(path=str(folder), fields=FIELDS)], max_length=64), tiny_tokenizer, seed=0
    )
    assert len(data.train) == 12 and "Box 3 has code 1003." in _decoded(data, tiny_tokenizer)[3]
    assert list(data.report.files) == [f"{folder}[train]"]

    arrow = next(folder.rglob("*.arrow"))
    data = build_datasets(
        DataConfig(train=[DataSource(path=str(arrow), fields=FIELDS, take=5)], max_length=64), tiny_tokenizer, seed=0
    )
    assert len(data.train) == 5
    # it holds one split: a split asked of it read all its rows, labelled as the file, without a word
    with pytest.raises(DataError, match=r"is an \.arrow file, which holds the rows of one split, so split 'test'"):
        build_datasets(DataConfig(train=[DataSource(path=str(arrow), split="test")]), tiny_tokenizer, seed=0)
    with pytest.raises(DataError, match=r"saved by the datasets library, with no configurations .* remove config"):
        build_datasets(DataConfig(train=[DataSource(path=str(folder), config="en")]), tiny_tokenizer, seed=0)

    with pytest.raises(DataError, match="has no split 'test'; its splits are train"):
        build_datasets(DataConfig(train=[DataSource(path=str(folder), split="test")]), tiny_tokenizer, seed=0)
    # the library's slice syntax, which load_dataset reads for a hub id, is no split of a saved folder
    with pytest.raises(DataError, match=r"no split 'train\[:5\]'; .* read as split: train with take: 100"):
        build_datasets(DataConfig(train=[DataSource(path=str(folder), split="train[:5]")]), tiny_tokenizer, seed=0)


def test_a_saved_dataset_without_splits_and_a_saved_folder_given_as_a_path(tmp_path, tiny_tokenizer):
    """A Dataset saved whole has no splits: split 'validation' read all of its rows, labelled [validation]. And a
    save_to_disk folder named as a plain path had its dataset_info.json read as data ("must hold an array")."""
    folder = tmp_path / "one"
    datasets.Dataset.from_list(ROWS).save_to_disk(str(folder))
    data = build_datasets(
        DataConfig(train=[DataSource(path=str(folder), fields=FIELDS)], max_length=64), tiny_tokenizer, seed=0
    )
    assert len(data.train) == 12 and list(data.report.files) == [str(folder)]
    with pytest.raises(DataError, match="holds one dataset without splits .* split 'validation' cannot be read"):
        build_datasets(DataConfig(train=[DataSource(path=str(folder), split="validation")]), tiny_tokenizer, seed=0)
    with pytest.raises(DataError, match=r"a file or folder the datasets library wrote \(save_to_disk\); .*\{path: "):
        build_datasets(DataConfig(train=[str(folder)], max_length=64), tiny_tokenizer, seed=0)
    # as data.eval, which takes no mapping, the error told only to give it as {path: ...}
    train = tmp_path / "t.jsonl"
    train.write_text(json.dumps({"q": "Q", "a": "A"}) + "\n")
    with pytest.raises(DataError, match=r"An eval file \(data.eval, a source's eval\) is read as plain files"):
        build_datasets(DataConfig(train=[str(train)], eval=str(folder), fields=FIELDS), tiny_tokenizer, seed=0)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """A cache holding acme/box-codes as `datasets` leaves a hub dataset it has loaded once, with the hub offline."""
    from datasets.packaged_modules.json.json import Json

    source = tmp_path / "rows.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    builder = Json(data_files={"train": str(source)}, dataset_name="box-codes", cache_dir=str(tmp_path / "build"))
    builder.download_and_prepare()
    cache = tmp_path / "hf-datasets"
    shutil.copytree(builder.cache_dir, cache / "acme___box-codes" / "default" / "0.0.0" / "0123abcd")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    return cache


def test_a_cached_hub_id_is_read_offline_and_streamed(hub_cache, tiny_tokenizer):
    cfg = DataConfig(train=[DataSource(hub="acme/box-codes", fields=FIELDS)], max_length=64)
    data = build_datasets(cfg, tiny_tokenizer, seed=0)
    assert len(data.train) == 12 and "Box 11 has code 1011." in _decoded(data, tiny_tokenizer)[11]
    assert list(data.report.files) == ["acme/box-codes[train]"]

    streamed = DataConfig(
        train=[DataSource(hub="acme/box-codes", fields=FIELDS, streaming=True, take=4)], max_length=64
    )
    assert len(build_datasets(streamed, tiny_tokenizer, seed=0).train) == 4
    # a slice of a split, which load_dataset reads unless streaming, was refused with no word of take
    sliced = DataConfig(train=[DataSource(hub="acme/box-codes", fields=FIELDS, streaming=True, split="train[:4]")])
    with pytest.raises(DataError, match=r"a stream is read from its start: .* split: train with take: 100"):
        build_datasets(sliced, tiny_tokenizer, seed=0)


def test_a_hub_id_neither_cached_nor_reachable_is_named(hub_cache, tiny_tokenizer):
    cfg = DataConfig(train=[DataSource(hub="acme/not-here")])
    with pytest.raises(DataError, match="entry 1: the dataset 'acme/not-here' .* is neither in the local cache"):
        build_datasets(cfg, tiny_tokenizer, seed=0)


def test_transform_changes_drops_or_names_the_row(tmp_path, tiny_tokenizer, monkeypatch):
    data_file = tmp_path / "rows.jsonl"
    data_file.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (tmp_path / "shaping.py").write_text(
        "def to_qa(row):\n"
        "    if row['q'].endswith('box 5?'):\n"
        "        return None\n"
        "    return {'question': row['q'].upper(), 'answer': row['a']}\n"
        "def fragile(row):\n"
        "    return {'question': row['q'], 'answer': row['a'] + str(1 // (int(row['a'].split()[1]) - 7))}\n"
    )
    cfg = DataConfig(train=[str(data_file)], transform=f"{tmp_path / 'shaping.py'}:to_qa", max_length=64)
    data = build_datasets(cfg, tiny_tokenizer, seed=0)
    assert len(data.train) == 11 and "WHAT IS THE CODE OF BOX 3?" in _decoded(data, tiny_tokenizer)[3]
    assert "dropped by data.transform" in data.report.summary()
    # eval files go through it too (they did not: their rows kept the raw fields), a mixture source's own one as well
    with_eval = DataConfig(
        train=[str(data_file)], eval=str(data_file), transform=f"{tmp_path / 'shaping.py'}:to_qa", max_length=64
    )
    held = build_datasets(with_eval, tiny_tokenizer, seed=0)
    assert len(held.eval) == 11 and "WHAT IS THE CODE OF BOX 3?" in tiny_tokenizer.decode(held.eval[3].input_ids)
    mixed = DataConfig(
        train=[DataSource(path=str(data_file), eval=str(data_file))],
        transform=f"{tmp_path / 'shaping.py'}:to_qa",
        max_length=64,
    )
    assert len(build_datasets(mixed, tiny_tokenizer, seed=0).eval) == 11

    monkeypatch.chdir(tmp_path)  # module:function finds shaping.py in the working directory
    cfg = DataConfig(train=[str(data_file)], transform="shaping:fragile", max_length=64)
    with pytest.raises(DataError, match=r"rows.jsonl:8: data.transform shaping:fragile raised ZeroDivisionError"):
        build_datasets(cfg, tiny_tokenizer, seed=0)
    with pytest.raises(ConfigError, match="has no function 'nothing'"):
        build_datasets(DataConfig(train=[str(data_file)], transform="shaping:nothing"), tiny_tokenizer, seed=0)
    # sys.exit in the function, or in the module as it is imported, ended tunelab with that code and no word
    (tmp_path / "leaving.py").write_text("def rows(row):\n    raise SystemExit(4)\n")
    with pytest.raises(DataError, match=r"rows\.jsonl:1: data\.transform leaving:rows called sys\.exit\(4\)"):
        build_datasets(DataConfig(train=[str(data_file)], transform="leaving:rows"), tiny_tokenizer, seed=0)
    (tmp_path / "script.py").write_text("import sys\nsys.exit(0)\n")
    with pytest.raises(ConfigError, match=r"importing 'script' called sys\.exit\(0\)"):
        build_datasets(DataConfig(train=[str(data_file)], transform="script:rows"), tiny_tokenizer, seed=0)


def test_an_unreachable_hub_id_leaves_an_existing_run_alone(hub_cache, tiny_overrides):
    from tunelab.training.recipe import train

    first = train(None, tiny_overrides | {"train.max_steps": 1})
    adapter = (first.run_dir / "adapter_model.safetensors").read_bytes()
    bad = tiny_overrides | {"data.train": [{"hub": "acme/not-here"}], "overwrite": True}
    with pytest.raises(DataError, match="acme/not-here"):
        train(None, bad)
    assert (first.run_dir / "adapter_model.safetensors").read_bytes() == adapter
    assert not first.run_dir.with_name(first.run_dir.name + ".previous").exists()


def test_a_transform_that_drops_the_text_of_a_txt_file_is_named(tmp_path, tiny_tokenizer):
    """A .txt file is one record {text: ...}; a data.transform that renamed or removed that field stopped the run with
    a KeyError and a traceback. It is bad input now, naming the file and the fields the row has."""
    (tmp_path / "notes.txt").write_text("A document.\n")
    (tmp_path / "shaping.py").write_text("def rename(row):\n    return {'body': row['text']}\n")
    cfg = DataConfig(train=[str(tmp_path / "notes.txt")], transform=f"{tmp_path / 'shaping.py'}:rename")
    with pytest.raises(DataError, match=r"notes\.txt:1: a \.txt file is one record .* without it \(body\)"):
        build_datasets(cfg, tiny_tokenizer, seed=0)


def test_a_local_file_or_folder_given_as_hub_is_refused(tmp_path, tiny_tokenizer, monkeypatch):
    """{hub: notes/} read a folder of .txt files through the datasets library, every line a document (one file is
    one document as a path); {hub: rows.jsonl} was said to be missing from the hub's cache. Both say: give it as path."""
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("One document,\nover two lines.\n")
    (tmp_path / "rows.jsonl").write_text(json.dumps(ROWS[0]) + "\n")
    monkeypatch.chdir(tmp_path)
    for hub, kind in (("notes", "folder"), (str(tmp_path / "rows.jsonl"), "file")):
        with pytest.raises(
            DataError, match=rf"entry 1: hub is '{hub}', a local {kind}, not a dataset id .* path: {hub}"
        ):
            build_datasets(DataConfig(train=[DataSource(hub=hub)]), tiny_tokenizer, seed=0)


@pytest.mark.parametrize("builder", ["parquet", "json"])
def test_a_hub_source_named_after_one_of_the_librarys_readers_is_refused(
    builder, tmp_path, monkeypatch, tiny_tokenizer
):
    """`hub: parquet` reached the library's parquet reader with no files named, which read the working directory's
    files (here a stray one, elsewhere a source tree) as the training set."""
    monkeypatch.chdir(tmp_path)
    datasets.Dataset.from_list(ROWS).to_parquet(str(tmp_path / "stray.parquet"))
    datasets.Dataset.from_list(ROWS).to_json(str(tmp_path / "stray.json"))
    source = DataSource(hub=builder, fields=FIELDS)
    with pytest.raises(DataError, match=rf"hub is '{builder}', the datasets library's reader of {builder} files, not"):
        build_datasets(DataConfig(train=[source], max_length=64), tiny_tokenizer, seed=0)


def test_a_folder_holding_a_save_to_disk_folder_names_it(tmp_path, tiny_tokenizer):
    """A data folder holding a save_to_disk folder beside its files: the saved folder's dataset_info.json was read as
    a .json data file and refused as 'must hold an array of objects', naming neither the saved folder nor the way."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS)}).save_to_disk(str(tmp_path / "data" / "saved"))
    with pytest.raises(DataError, match=r"data: the folder holds .*data/saved, a folder the datasets library wrote"):
        build_datasets(DataConfig(train=[str(tmp_path / "data")], fields=FIELDS), tiny_tokenizer, seed=0)


def test_a_row_of_a_saved_dataset_without_splits_is_named_by_its_index(tmp_path, tiny_tokenizer):
    """A Dataset saved whole is named by its folder, which `location` took for a line-based file: its first row was
    reported as line `folder:0`. It is `folder[0]`, as the rows of a split (`folder[train][0]`) are."""
    folder = tmp_path / "one"
    datasets.Dataset.from_list([{"q": "Empty?", "a": ""}, *ROWS]).save_to_disk(str(folder))
    data = build_datasets(
        DataConfig(train=[DataSource(path=str(folder), fields=FIELDS)], max_length=64), tiny_tokenizer, seed=0
    )
    assert data.report.skips["empty answer"].locations == [f"{folder}[0]"]
    assert f"{folder}[0]" in data.report.summary() and f"{folder}:0" not in data.report.summary()


def test_a_source_holds_out_another_split_of_its_dataset(tmp_path, tiny_tokenizer):
    """Train from split train, eval from split validation of one DatasetDict: a source's eval was a file only (eval:
    validation was read as a missing file, with advice about data.train's paths), and two sources of the dataset's
    two splits both took its name, refused as taken."""
    folder = tmp_path / "saved"
    valid = [{"q": f"Which code has box {i}?", "a": f"Box {i}: {2000 + i}."} for i in range(3)]
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(ROWS), "validation": datasets.Dataset.from_list(valid)}
    ).save_to_disk(str(folder))
    cfg = DataConfig(train=[DataSource(path=str(folder), fields=FIELDS, eval_split="validation")], max_length=64)
    data = build_datasets(cfg, tiny_tokenizer, seed=0)
    assert len(data.train) == 12 and len(data.eval) == 3 and data.report.eval_source == "split"
    assert "Box 1: 2001." in tiny_tokenizer.decode(data.eval[1].input_ids)
    assert data.report.files[f"{folder}[validation]"].used == 3

    # both splits trained on, as two sources: each named by its split
    cfg = DataConfig(
        train=[
            DataSource(path=str(folder), fields=FIELDS, weight=1.0),
            DataSource(path=str(folder), fields=FIELDS, split="validation", weight=1.0),
        ],
        max_length=64,
    )
    data = build_datasets(cfg, tiny_tokenizer, seed=0)
    assert {n: s.examples for n, s in data.report.sources.items()} == {"saved-train": 12, "saved-validation": 3}

    # eval: validation names a split, not a file: said, with the key that reads it
    cfg = DataConfig(train=[DataSource(path=str(folder), fields=FIELDS, eval=str(tmp_path / "validation"))])
    with pytest.raises(ConfigError, match=r"entry 1 .*names no file; .* give eval_split: validation instead"):
        build_datasets(cfg, tiny_tokenizer, seed=0)
    cfg = DataConfig(train=[DataSource(path=str(folder), fields=FIELDS, eval_split="test")], max_length=64)
    with pytest.raises(
        DataError, match=r"entry 1, eval_split: .*has no split 'test'; its splits are train, valid.*Set eval_split"
    ):
        build_datasets(cfg, tiny_tokenizer, seed=0)
    one = tmp_path / "one"  # a Dataset saved whole: one split, nothing to hold out but a fraction
    datasets.Dataset.from_list(ROWS).save_to_disk(str(one))
    for path in (one, next(one.glob("*.arrow"))):
        cfg = DataConfig(train=[DataSource(path=str(path), fields=FIELDS, eval_split="validation")], max_length=64)
        with pytest.raises(DataError, match=r"so eval_split 'validation' cannot be read .* with data.eval_fraction"):
            build_datasets(cfg, tiny_tokenizer, seed=0)
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    cfg = DataConfig(train=[DataSource(path=str(rows), fields=FIELDS, eval_split="validation")], max_length=64)
    with pytest.raises(ConfigError, match=r"eval_split 'validation' is read from a hub dataset or a save_to_disk"):
        build_datasets(cfg, tiny_tokenizer, seed=0)


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"hub": "org/x", "eval_split": "train"}, "eval_split is 'train', the split the source trains on"),
        ({"hub": "org/x", "eval_split": "validation", "eval": "v.jsonl"}, "give one of eval .* and eval_split"),
    ],
)
def test_a_bad_eval_split_is_refused_naming_the_entry(entry, message, tmp_path):
    from tunelab.config import load_config

    config = tmp_path / "run.yaml"
    config.write_text(json.dumps({"data": {"train": [entry]}}))
    with pytest.raises(ConfigError, match=message):
        load_config(config)


def test_a_sources_take_limits_its_eval_split_too(tmp_path, tiny_tokenizer):
    """`take` read the first N rows of the training split, but its eval_split whole: a stream taken for its head
    fetched all of the validation split. The eval split stops at take, or at eval_take where it is given."""
    folder = tmp_path / "saved"
    valid = [{"q": f"Which code has box {i}?", "a": f"Box {i}: {2000 + i}."} for i in range(7)]
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(ROWS), "validation": datasets.Dataset.from_list(valid)}
    ).save_to_disk(str(folder))

    def split_rows(**options):
        source = DataSource(path=str(folder), fields=FIELDS, eval_split="validation", **options)
        data = build_datasets(DataConfig(train=[source], max_length=64), tiny_tokenizer, seed=0)
        return len(data.train), len(data.eval)

    assert split_rows() == (12, 7)
    assert split_rows(take=4) == (4, 4)
    assert split_rows(take=4, eval_take=6) == (4, 6)
    assert split_rows(eval_take=2) == (12, 2)


def test_an_eval_take_without_an_eval_split_is_refused(tmp_path):
    from tunelab.config import load_config

    config = tmp_path / "run.yaml"
    config.write_text(json.dumps({"data": {"train": [{"hub": "org/x", "eval_take": 5}]}}))
    with pytest.raises(ConfigError, match=r"entry 1 \(org/x\): eval_take limits the rows read of eval_split"):
        load_config(config)
