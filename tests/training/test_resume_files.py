"""--resume and the files around a run: data moved elsewhere, and what a killed save left in checkpoints/."""

import pytest
import torch

import tunelab
import tunelab.training.recipe as recipe
from tunelab.config import RunConfig, to_dict
from tunelab.config.data import DataSource
from tunelab.errors import ConfigError
from tunelab.training.checkpoint import save_checkpoint
from tunelab.training.resume import config_changes


def _kept(overrides, steps=3):
    return overrides | {"train.max_steps": steps, "train.save_every": 1, "train.keep_checkpoints_after_finish": True}


def test_data_moved_with_its_content_resumes_and_changed_content_is_refused(tiny_overrides, qa_file, tmp_path, capsys):
    recipe.train(None, _kept(tiny_overrides))
    moved = tmp_path / "elsewhere" / "renamed.jsonl"
    moved.parent.mkdir()
    qa_file.rename(moved)
    longer = _kept(tiny_overrides, 4) | {"data.train": [str(moved)]}
    items = {item.name: item for item in tunelab.check(None, longer, resume=True, model=False, show=False).items}
    assert items["resume"].status == "pass" and "resume data" not in items  # tunelab check --resume agrees
    assert recipe.train(None, longer, resume=True).steps == 4
    out = capsys.readouterr().out
    assert f"data.train: ['{qa_file}'] -> ['{moved}'] (allowed: the data is compared by content" in out
    assert "step-0000003 (step 3 of 4)" in out
    moved.write_text(moved.read_text().replace("box 3?", "box three?"))
    with pytest.raises(ConfigError, match="tokenized training rows differ"):
        recipe.train(None, _kept(tiny_overrides, 5) | {"data.train": [str(moved)]}, resume=True)


def _train_on(*sources) -> RunConfig:
    cfg = RunConfig()
    cfg.data.train = list(sources)
    return cfg


def test_only_the_paths_of_the_data_may_differ():
    saved = to_dict(_train_on(DataSource(path="/old/a.jsonl", weight=1.0), "/old/b.jsonl"))
    moved = _train_on(DataSource(path="/new/a.jsonl", weight=1.0), "/new/b.jsonl")
    refused, allowed = config_changes(saved, moved, by_content={"data.train"})
    assert not refused and allowed[0].startswith("data.train: ")
    assert config_changes(saved, moved)[0]  # without a digest to compare: by path, refused
    reweighted = _train_on(DataSource(path="/new/a.jsonl", weight=2.0), "/new/b.jsonl")
    assert config_changes(saved, reweighted, by_content={"data.train"})[0]
    assert config_changes(saved, _train_on("/new/b.jsonl"), by_content={"data.train"})[0]


def _leftovers(run_dir):
    """What a save killed mid-write leaves (ours), beside a folder of that name holding a file of someone else's and
    one whose name is not a step's."""
    cut = run_dir / "checkpoints" / ".tmp-step-0000007"
    (cut / "shards").mkdir(parents=True)
    (cut / "trainable.safetensors").write_bytes(b"half")
    (cut / "rng-1.safetensors").write_bytes(b"")
    theirs = run_dir / "checkpoints" / ".tmp-step-0000008"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    (run_dir / "checkpoints" / ".tmp-step-draft").mkdir()
    return cut, theirs


def test_resume_removes_what_a_killed_save_left_and_nothing_else(tiny_overrides, capsys):
    run_dir = recipe.train(None, _kept(tiny_overrides)).run_dir
    cut, theirs = _leftovers(run_dir)
    recipe.train(None, _kept(tiny_overrides, 4), resume=True)
    out = capsys.readouterr().out
    assert f"removed {cut}: a checkpoint whose save was cut short" in out and not cut.exists()
    assert f"left {theirs} alone" in out and (theirs / "notes.txt").read_text() == "mine"
    assert (run_dir / "checkpoints" / ".tmp-step-draft").is_dir()


def test_a_save_removes_what_a_killed_save_left(tmp_path, capsys):
    cut, theirs = _leftovers(tmp_path)
    model = torch.nn.Linear(2, 2)
    save_checkpoint(tmp_path, model, torch.optim.SGD(model.parameters()), {"step": 1}, keep=2)
    assert not cut.exists() and theirs.is_dir() and f"removed {cut}" in capsys.readouterr().out


def test_a_gguf_run_started_before_llama_cpp_s_split_is_told_why_its_rows_differ(tmp_path):
    """A run on a GGUF base whose run.json holds no conversion number trained with transformers' split of the base's
    tokenizer; tunelab now gives it llama.cpp's ('smollm': each digit alone), so its rows may differ: the refusal
    says so, beside the file whose rows changed."""
    from tunelab.models.load import ModelSource
    from tunelab.run_info import RunInfo
    from tunelab.training.resume import check_same_data, gguf_split_facts, split_changed

    gguf = pytest.importorskip("gguf")
    path = tmp_path / "base.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tokenizer_pre("smollm")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    source = ModelSource(str(path), str(tmp_path), "base.gguf")
    before, since = RunInfo(str(path), "lora"), RunInfo(str(path), "lora", extra=gguf_split_facts(source))
    assert split_changed(since, source) == "" and split_changed(before, ModelSource("d", "d")) == ""
    with pytest.raises(ConfigError, match=r"d.jsonl changed; or the run started before .*'smollm'.*--overwrite"):
        files = ({"d.jsonl": "1"}, {"d.jsonl": "2"})
        check_same_data(tmp_path, "a", "b", "training", files, split_changed(before, source))


def _gguf_base(folder, pre: str | None):
    from tunelab.models.load import ModelSource

    gguf = pytest.importorskip("gguf")
    path = folder / f"{pre}.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    if pre is not None:
        writer.add_tokenizer_pre(pre)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    return ModelSource(str(path), str(folder), path.name)


def test_a_run_on_a_base_of_several_regexes_from_conversion_3_is_told_its_split_changed(tmp_path):
    """Conversion 3 gave SmolLM2's 'smollm' llama.cpp's split but left 'deepseek-coder' (a list of regexes) with
    transformers' GPT-2 split, which conversion 4 replaced; a name tunelab never rebuilt ('tiny_aya') kept its split."""
    from tunelab.run_info import RunInfo
    from tunelab.training.resume import GGUF_SPLIT, split_changed

    at = lambda conversion: RunInfo("base", "lora", extra={GGUF_SPLIT: conversion})
    assert "'deepseek-coder': its regexes as llama.cpp reads them" in split_changed(
        at(3), _gguf_base(tmp_path, "deepseek-coder")
    )
    assert split_changed(at(4), _gguf_base(tmp_path, "deepseek-coder")) == ""
    assert split_changed(at(3), _gguf_base(tmp_path, "smollm")) == ""
    assert "'llama4'" in split_changed(at(3), _gguf_base(tmp_path, "llama4"))
    assert "'default'" in split_changed(at(3), _gguf_base(tmp_path, None))  # llama.cpp's split of a file naming none
    assert split_changed(RunInfo("base", "lora"), _gguf_base(tmp_path, "tiny_aya")) == ""
