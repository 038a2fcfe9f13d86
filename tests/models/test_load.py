"""Model folders and files that cannot be loaded are named with what is wrong (exit 2), never a traceback."""

import importlib.util
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from tunelab.cli import main
from tunelab.conversion_cache import cache_entries
from tunelab.errors import ModelError
from tunelab.models.converted import COMPLETE
from tunelab.models.load import EMBEDDED, load_hf_model, load_tokenizer, materialize, resolve_source


def test_a_folder_with_config_json_only_says_what_is_missing(tiny_model_dir, tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    shutil.copy(tiny_model_dir / "config.json", folder)
    with pytest.raises(ModelError, match="has config.json but no weights as \\*.safetensors"):
        resolve_source(str(folder))
    (folder / "pytorch_model.bin").write_bytes(b"\0")
    with pytest.raises(ModelError, match="it has pytorch_model.bin, which tunelab does not load"):
        resolve_source(str(folder))
    shutil.copy(tiny_model_dir / "model.safetensors", folder)
    with pytest.raises(ModelError, match="the folder has no tokenizer; expected tokenizer.json"):
        load_tokenizer(resolve_source(str(folder)))


def test_a_folder_without_tokenizer_json_names_the_folder_and_the_files_expected(
    tiny_model_dir, tiny_run_dir, qa_file, tmp_path, capsys
):
    """A model folder with tokenizer_config.json but no tokenizer.json showed transformers' message, which asks to
    install sentencepiece or tiktoken; train, check and the run commands now name the folder and the files a
    tokenizer is read from, and exit 2. A tokenizer.json cut short is named as such."""
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "tokenizer.json").unlink()
    flags = ["--model.name", str(folder), "--data.train", str(qa_file), "--output_dir", str(tmp_path / "run")]
    for command in ("train", "check"):
        assert main([command, *flags]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and "sentencepiece or tiktoken" not in err
        assert (
            f"model '{folder}': the folder has no tokenizer vocabulary (it has tokenizer_config.json); expected " in err
        )
        assert "tokenizer.json (a fast tokenizer: what most models ship), or tokenizer.model (SentencePiece)" in err
    run = tmp_path / "run-copy"
    shutil.copytree(tiny_run_dir, run)
    (run / "tokenizer.json").unlink()
    assert main(["generate", str(run), "--prompt", "Code of box 2?"]) == 2
    err = capsys.readouterr().err
    assert f"run {run}: the run directory has no tokenizer vocabulary" in err
    assert "Training saved the tokenizer there: put its files back, or train the run again." in err
    (folder / "tokenizer.json").write_text((tiny_model_dir / "tokenizer.json").read_text()[:500])
    with pytest.raises(
        ModelError,
        match=rf"{folder / 'tokenizer.json'} is not whole JSON \(.*\): it was cut short or damaged. Copy the model",
    ):
        load_tokenizer(resolve_source(str(folder)))


def _remote_code_model(tiny_model_dir, tmp_path):
    """A copy of the tiny model whose config names a class in its own code (auto_map), which only
    trust_remote_code would run."""
    folder = tmp_path / "custom"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config |= {"model_type": "mymodel", "auto_map": {"AutoConfig": "configuration_my.MyConfig"}}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "configuration_my.py").write_text(
        "from transformers import PretrainedConfig\nclass MyConfig(PretrainedConfig):\n    model_type = 'mymodel'\n"
    )
    return folder


def test_remote_code_error_names_our_option(tiny_model_dir, tmp_path, capsys):
    folder = _remote_code_model(tiny_model_dir, tmp_path)
    source = resolve_source(str(folder))
    load_tokenizer(source)
    with pytest.raises(ModelError) as err:
        load_hf_model(source, torch.float32, torch.device("cpu"))
    assert "set model.trust_remote_code: true" in str(err.value) and "trust_remote_code=True" not in str(err.value)


def test_remote_code_error_names_the_option_as_its_caller_sets_it(
    tiny_model_dir, tmp_path, tiny_overrides, cli_flags, capsys
):
    """tunelab.train(...) was told to give --model.trust_remote_code true, a flag it has no way to type, and then both
    spellings at once: the loaders take the caller's spelling, so Python reads the override and the CLI the flag."""
    import tunelab
    from tunelab.cli import main

    folder = _remote_code_model(tiny_model_dir, tmp_path)
    with pytest.raises(ModelError) as err:
        tunelab.train(None, tiny_overrides | {"model.name": str(folder)}, check=False)
    assert "overrides['model.trust_remote_code'] = True" in str(err.value) and "--model" not in str(err.value)
    assert not (tmp_path / "run" / "run.json").exists()
    for command in ("train", "check", "plan"):
        flags = cli_flags(tiny_overrides | {"model.name": str(folder)})
        assert main([command, *flags, *(["--gpu-memory", "8GiB"] if command == "plan" else [])]) == 2
        said = capsys.readouterr().err
        assert "(or --model.trust_remote_code true)" in said and "overrides[" not in said, command
    with pytest.raises(ModelError, match=r"overrides\['model.trust_remote_code'\]") as err:
        tunelab.plan(None, tiny_overrides | {"model.name": str(folder)}, gpu_memory="8GiB")
    assert "--model" not in str(err.value)
    assert not (tmp_path / "run" / "run.json").exists()


def _with_config(tiny_model_dir, folder, **changes) -> Path:
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text()) | changes
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_weights_the_config_asks_for_but_the_files_lack_are_an_error(tiny_model_dir, tmp_path):
    """A config.json naming 4 layers over weights of 2 loaded, its layers 2 and 3 drawn at random at every load."""
    source = resolve_source(str(_with_config(tiny_model_dir, tmp_path / "more", num_hidden_layers=4)))
    with pytest.raises(
        ModelError,
        match=r"18 weights the model needs .*: config\.json says 4 layers \(num_hidden_layers\), the weights hold 2\.",
    ):
        load_hf_model(source, torch.float32, torch.device("cpu"))
    wider = _with_config(tiny_model_dir, tmp_path / "wider", intermediate_size=96)
    with pytest.raises(ModelError, match=r"weight model\.layers\.0\.mlp\.down_proj\.weight has shape \(64, \d+\)"):
        load_hf_model(resolve_source(str(wider)), torch.float32, torch.device("cpu"))


def test_unused_weights_are_said(tiny_model_dir, tmp_path, capsys):
    source = resolve_source(str(_with_config(tiny_model_dir, tmp_path / "fewer", num_hidden_layers=1)))
    load_hf_model(source, torch.float32, torch.device("cpu"))
    assert "weights in its files are not used by the model (model.layers.1." in capsys.readouterr().err


def test_a_config_field_of_the_wrong_type_names_the_file(tiny_model_dir, tmp_path):
    folder = _with_config(tiny_model_dir, tmp_path / "text", hidden_size="64")
    with pytest.raises(ModelError, match=rf"{folder / 'config.json'}: .*'hidden_size'.* Fix the field's value"):
        load_tokenizer(resolve_source(str(folder)))


def _embedded_gguf() -> Path:
    package, filename, _ = EMBEDDED["smollm2-135m-instruct"]
    spec = importlib.util.find_spec(package)
    if spec is None:
        pytest.skip("the embedded model is not installed")
    return Path(spec.submodule_search_locations[0]) / filename


@pytest.mark.parametrize("keep", [1000, 8_000_000], ids=["cut-in-header", "cut-in-tensors"])
def test_a_cut_gguf_file_is_named_damaged(keep, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    cut = tmp_path / "model.gguf"
    with _embedded_gguf().open("rb") as f:
        cut.write_bytes(f.read(keep))
    (tmp_path / "x.jsonl").write_text('{"question": "q", "answer": "a"}\n')
    assert (
        main(
            [
                "train",
                "--model.name",
                str(cut),
                "--data.train",
                str(tmp_path / "x.jsonl"),
                "--output_dir",
                str(tmp_path / "r"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert f"is damaged or cut short ({keep:,} bytes)" in err and "Traceback" not in err


def test_the_converted_embedded_model_stores_its_tied_embedding_as_transformers_does(tmp_path):
    """The conversion kept the tied embedding only as lm_head.weight: a sequence classifier loaded from it in plain
    transformers (README's PEFT snippet for classify runs) started from a random embedding."""
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from tunelab.models.load import materialize, resolve_source

    _embedded_gguf()
    folder = Path(materialize(resolve_source("smollm2-135m-instruct")))
    with safe_open(folder / "model.safetensors", "pt") as f:
        names = set(f.keys())
    assert "model.embed_tokens.weight" in names and "lm_head.weight" not in names
    classifier = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2)
    causal = AutoModelForCausalLM.from_pretrained(folder)
    assert torch.equal(classifier.model.embed_tokens.weight, causal.model.embed_tokens.weight)
    assert torch.equal(causal.lm_head.weight, causal.model.embed_tokens.weight)


def test_a_misspelt_alias_is_named_not_looked_up_on_the_hub(monkeypatch, tmp_path):
    """'smollm2-135m' was taken for a hub id and failed with a network error (or an offline-cache one); so was the
    alias cut short, 'smollm2', after a minute of the hub's retries with no network."""
    monkeypatch.chdir(tmp_path)
    for typo in ("smollm2-135m", "smolm2-135m-instruct", "SmolLM2-135M-Instruct", "smollm2", "SmolLM2"):
        with pytest.raises(
            ModelError, match=rf"model '{typo}': .*did you mean the embedded model 'smollm2-135m-instruct'"
        ):
            resolve_source(typo)
    assert resolve_source("gpt2").path == "gpt2"  # a hub id without an org stays one
    assert resolve_source("HuggingFaceTB/SmolLM2-135M").path == "HuggingFaceTB/SmolLM2-135M"


def _train_on(model: Path, tmp_path: Path) -> int:
    (tmp_path / "a.jsonl").write_text('{"question": "q", "answer": "a"}\n' * 4)
    args = ["--data.train", str(tmp_path / "a.jsonl"), "--data.max_length", "64", "--train.max_steps", "1"]
    return main(["train", "--model.name", str(model), *args, "--output_dir", str(tmp_path / "r"), "--overwrite"])


def test_the_first_conversion_is_said_and_the_next_load_is_quiet(tiny_gguf, tmp_path, monkeypatch, capsys):
    """The first use of a GGUF model converted it with no word from tunelab (only transformers' own bar, which does
    not say that the copy is kept, nor where): it is said now, naming the copy, and a later load says nothing."""
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    folder = Path(materialize(resolve_source(str(tiny_gguf))))
    assert f"converting the GGUF file once into {folder}" in capsys.readouterr().err
    assert Path(materialize(resolve_source(str(tiny_gguf)))) == folder
    assert "converting" not in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["cut", "deleted"])
def test_a_damaged_conversion_is_listed_and_converted_again(damage, tiny_gguf, tmp_path, monkeypatch, capsys):
    """A converted copy whose weights were cut short failed inside safetensors with a traceback at every run; one
    whose weights were deleted passed for finished (only config.json was looked for) and failed at every run, while
    `tunelab cache` called the cache empty and `tunelab cache clear` removed nothing."""
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    folder = Path(materialize(resolve_source(str(tiny_gguf))))
    weights = folder / "model.safetensors"
    if damage == "cut":
        os.truncate(weights, weights.stat().st_size // 2)
    else:
        weights.unlink()
    assert [(e.name, e.complete) for e in cache_entries()] == [(folder.name, False)]
    assert main(["cache"]) == 0 and f"{folder.name}  (incomplete" in capsys.readouterr().out

    assert _train_on(tiny_gguf, tmp_path) == 0
    assert f"the converted copy {folder} is incomplete" in capsys.readouterr().err
    assert [(e.name, e.complete) for e in cache_entries()] == [(folder.name, True)]


def test_a_conversion_damaged_in_place_names_the_folder_and_the_fix(tiny_gguf, tmp_path, monkeypatch, capsys):
    """Weights overwritten at their own size cannot be told from whole ones without reading them all: loading says
    which copy is damaged and how to remove it, with no traceback."""
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    folder = Path(materialize(resolve_source(str(tiny_gguf))))
    weights = folder / "model.safetensors"
    weights.write_bytes(b"\xff" * weights.stat().st_size)
    assert _train_on(tiny_gguf, tmp_path) == 2
    err = capsys.readouterr().err
    assert str(folder) in err and f"tunelab cache clear {folder.name}" in err and "Traceback" not in err


def test_a_whole_conversion_made_before_the_finish_mark_is_kept(tiny_gguf, tmp_path, monkeypatch, capsys):
    """Folders converted before COMPLETE was written are checked by their own files, not all converted again."""
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    folder = Path(materialize(resolve_source(str(tiny_gguf))))
    (folder / COMPLETE).unlink()
    capsys.readouterr()
    assert materialize(resolve_source(str(tiny_gguf))) == str(folder)
    assert "incomplete" not in capsys.readouterr().err and not (folder / COMPLETE).exists()
    assert [e.complete for e in cache_entries()] == [True]


def test_a_relative_cache_folder_is_named_by_its_absolute_path(tiny_gguf, tmp_path, monkeypatch):
    """TUNELAB_CACHE=rc put "rc/gguf/..." in runs' adapter_config.json as their base, which PEFT then looked for
    under whatever folder the run was opened from."""
    from tunelab.peft.save import loadable_base

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TUNELAB_CACHE", "rc")
    base = Path(loadable_base(str(tiny_gguf)))
    assert base.is_absolute() and base.parent == (tmp_path / "rc" / "gguf").resolve()
    assert (base / "model.safetensors").is_file()


def test_a_gguf_file_is_known_by_its_extension_in_any_case(tiny_gguf, tmp_path, monkeypatch):
    """Model.GGUF was refused as "not a Hugging Face model directory, a .gguf file, or a hub id"."""
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    upper = tmp_path / "Model.GGUF"
    shutil.copy(tiny_gguf, upper)
    source = resolve_source(str(upper))
    assert source.gguf_file == "Model.GGUF"
    assert load_hf_model(source, torch.float32, torch.device("cpu")).config.num_hidden_layers == 2
    assert len(load_tokenizer(source)) == 301
    upper.write_bytes(b"PK\3\4 not a GGUF file")
    with pytest.raises(ModelError, match="Model.GGUF is not a GGUF file \\(it does not start with 'GGUF'\\)"):
        load_hf_model(resolve_source(str(upper)), torch.float32, torch.device("cpu"))


def test_a_gguf_file_missing_weights_is_refused_not_filled_with_random_ones(
    base_tokenizer, tiny_llama_config, tmp_path, monkeypatch, capsys
):
    """A GGUF file without some of the model's tensors (the first part of a split GGUF, or a damaged file) was
    converted with transformers' random initialisation in their place and cached, so training and chat ran on a
    different model at each conversion, saying nothing but a log table. It is refused, naming the weights, and nothing
    is cached."""
    from types import SimpleNamespace

    from transformers import LlamaForCausalLM

    import tunelab.export.gguf as gguf_export

    pytest.importorskip("gguf", reason="writing and reading GGUF needs the gguf package")
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    tok = base_tokenizer(("<|im_start|>", "<|im_end|>"))
    merged = SimpleNamespace(
        model=LlamaForCausalLM(tiny_llama_config(tok)).eval(),
        tokenizer=tok,
        info=SimpleNamespace(base_model="tiny"),
        base_info=SimpleNamespace(base_model="tiny"),
        template=SimpleNamespace(stop_token_ids=[tok.eos_token_id]),
    )
    every = gguf_export.gguf_tensors
    monkeypatch.setattr(
        gguf_export, "gguf_tensors", lambda m, s: (x for x in every(m, s) if x[0] != "blk.1.ffn_down.weight")
    )
    path = tmp_path / "part.gguf"
    gguf_export.write_gguf(merged, path, "f32", "tiny")
    with pytest.raises(ModelError, match=r"1 weights the model needs are not in the GGUF file \(model\.layers\.1\.mlp"):
        load_hf_model(resolve_source(str(path)), torch.float32, torch.device("cpu"))
    assert not list((tmp_path / "cache").glob("gguf/*"))


def _replace_keeping_size_and_mtime(file: Path) -> None:
    """Another file in its place, as `cp -p` or `rsync -t` leave it: the last weight's bytes differ, size and
    modification time are the same."""
    stat = file.stat()
    data = bytearray(file.read_bytes())
    data[-4:] = bytes(b ^ 0x5A for b in data[-4:])
    file.write_bytes(bytes(data))
    os.utime(file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert file.stat().st_size == stat.st_size and file.stat().st_mtime_ns == stat.st_mtime_ns


def test_a_gguf_file_replaced_at_the_same_size_and_mtime_is_converted_again(tiny_gguf, tmp_path, monkeypatch):
    """A GGUF file replaced by another of the same size and modification time (`cp -p`, `rsync -t`) was served
    from the old file's converted copy; its content now names the copy."""
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    model = tmp_path / "m.gguf"
    shutil.copy(tiny_gguf, model)
    first = Path(materialize(resolve_source(str(model))))
    _replace_keeping_size_and_mtime(model)
    second = Path(materialize(resolve_source(str(model))))
    assert second != first
    from safetensors.torch import load_file

    old, new = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    assert any(not torch.equal(old[k], new[k]) for k in old)


def test_a_large_gguf_file_is_fingerprinted_by_pieces_in_milliseconds(tmp_path):
    """A multi-GB file is not read whole: its head, tail and pieces spread between name it, and a change in any of
    them gives another key."""
    import time

    from tunelab.models import converted

    big = tmp_path / "big.gguf"
    with big.open("wb") as f:
        f.truncate(3 * 2**30)  # sparse: 3 GB on paper, nothing on disk
    start = time.perf_counter()
    key = converted.gguf_key(big)
    assert time.perf_counter() - start < 2.0
    for offset in (100, 3 * 2**30 - 100, converted.HEAD + 5 * ((3 * 2**30 - converted.HEAD - converted.TAIL) // 65)):
        with big.open("r+b") as f:
            f.seek(offset)
            f.write(b"x")
        changed = converted.gguf_key(big)
        assert changed != key
        key = changed


def test_copies_of_a_gguf_file_changed_or_gone_are_stale_and_pruned(tiny_gguf, tmp_path, monkeypatch, capsys):
    """Each download or touch of the same GGUF file left another full converted copy (17 of one 135M model, 541 MB
    each), listed like the one in use; only clearing all or naming each removed them."""
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    model = tmp_path / "m.gguf"
    gone = tmp_path / "gone.gguf"
    shutil.copy(tiny_gguf, model)
    shutil.copy(tiny_gguf, gone)
    first = Path(materialize(resolve_source(str(model))))
    orphan = Path(materialize(resolve_source(str(gone))))
    gone.unlink()
    os.utime(model, ns=(model.stat().st_atime_ns, model.stat().st_mtime_ns + 10**9))  # touched: the same content
    assert Path(materialize(resolve_source(str(model)))) == first
    _replace_keeping_size_and_mtime(model)
    current = Path(materialize(resolve_source(str(model))))
    assert len({first, orphan, current}) == 3
    stale = {e.name: e.stale for e in cache_entries()}
    assert stale[current.name] is None
    assert "changed or was replaced" in stale[first.name] and "is gone" in stale[orphan.name]

    assert main(["cache"]) == 0
    out = capsys.readouterr().out
    assert f"{first.name}  (stale:" in out and f"{current.name}  (stale" not in out
    assert "2 stale (" in out and "tunelab cache prune" in out
    assert main(["cache", "prune"]) == 0
    out = capsys.readouterr().out
    assert "removed 2 entries (" in out and first.name in out and orphan.name in out
    assert [e.name for e in cache_entries()] == [current.name]
    assert main(["cache", "prune"]) == 0 and "removed 0 entries (0.0 MB): nothing stale" in capsys.readouterr().out
    assert main(["cache", "prune", current.name]) == 2  # names go with clear alone


def _adapter_over_stale_copy(tiny_gguf, tmp_path, monkeypatch):
    """A run's adapter saved over the converted copy of a GGUF file, which is then changed: (run, copy, current)."""
    from transformers import AutoModelForCausalLM

    from tunelab.peft.lora import attach_lora
    from tunelab.peft.save import save_adapter

    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    model_file = tmp_path / "m.gguf"
    shutil.copy(tiny_gguf, model_file)
    copy = Path(materialize(resolve_source(str(model_file))))
    model = AutoModelForCausalLM.from_pretrained(copy, dtype=torch.float32)
    attach_lora(model, ["q_proj"], r=2, alpha=4)
    run = tmp_path / "runs" / "r1"
    save_adapter(model, run / ".tmp-final", base_model=str(model_file))  # staged, then moved in, as training does
    for item in (run / ".tmp-final").iterdir():
        os.replace(item, run / item.name)
    assert json.loads((run / "adapter_config.json").read_text())["base_model_name_or_path"] == str(copy)
    _replace_keeping_size_and_mtime(model_file)
    current = Path(materialize(resolve_source(str(model_file))))
    assert current != copy and {e.name for e in cache_entries() if e.stale} == {copy.name}
    return run, copy, current


def test_prune_keeps_a_stale_copy_that_a_runs_adapter_names_as_its_base(tiny_gguf, tmp_path, monkeypatch, capsys):
    """`tunelab cache prune` removed the copy of a GGUF file changed since, which the adapters of runs trained on it
    name as base_model_name_or_path: peft's AutoPeftModelForCausalLM then stopped with "Repo id must be in the form
    'repo_name'", and the copy could not be made again. A copy an adapter still names is kept, saying which; once no
    adapter names it, it is removed, saying what an unrecorded adapter of it meets."""
    run, copy, current = _adapter_over_stale_copy(tiny_gguf, tmp_path, monkeypatch)
    assert main(["cache"]) == 0
    assert f"kept by tunelab cache prune: the adapter in {run} names it)" in capsys.readouterr().out
    assert main(["cache", "prune"]) == 0
    out = capsys.readouterr().out
    assert "removed 0 entries" in out and f"kept {copy.name} (stale): the adapter in {run} names it as base" in out
    assert copy.is_dir()

    shutil.rmtree(run)
    assert main(["cache", "prune"]) == 0
    out = capsys.readouterr().out
    assert "removed 1 entry" in out and copy.name in out and "AutoPeftModelForCausalLM" in out
    assert not copy.exists() and current.is_dir()


def test_a_copy_named_by_the_older_key_is_not_said_to_be_of_a_changed_file(tiny_gguf, tmp_path, monkeypatch, capsys):
    """Copies named by the key of before 2026-12-05 (path, size, modification time) were listed as stale because
    "its GGUF file changed or was replaced since", for a file untouched since: they are now said to be copies of an
    unchanged file under an older name, with the name its copy has now (what an adapter naming the old one can use)."""
    import hashlib

    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    model_file = tmp_path / "m.gguf"
    shutil.copy(tiny_gguf, model_file)
    current = Path(materialize(resolve_source(str(model_file))))
    stat = model_file.stat()
    old_key = f"{model_file.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|2"
    older = current.with_name(f"m-{hashlib.sha256(old_key.encode()).hexdigest()[:16]}")
    shutil.copytree(current, older)
    stale = {e.name: e.stale for e in cache_entries()}
    assert stale[current.name] is None
    assert stale[older.name] == (
        f"an older tunelab named this copy of {model_file.resolve()}, which is unchanged; its copy is now named "
        f"{current.name}"
    )


def test_clear_says_which_adapter_names_a_stale_copy_it_removed(tiny_gguf, tmp_path, monkeypatch, capsys):
    """`tunelab cache clear` removed a stale copy that an adapter names, which cannot be converted again, saying no
    more than its name: it now names the adapter and says what loading it in PEFT meets."""
    run, copy, _ = _adapter_over_stale_copy(tiny_gguf, tmp_path, monkeypatch)
    assert main(["cache", "clear", copy.name]) == 0
    out = capsys.readouterr().out
    assert f"removed {copy.name} (stale), which cannot be converted again: the adapter in {run} names it" in out
    assert "AutoPeftModelForCausalLM" in out and not copy.exists()


def test_the_embedded_models_hub_id_offline_is_told_the_alias(monkeypatch):
    """model.name HuggingFaceTB/SmolLM2-135M-Instruct offline ended in transformers' "couldn't connect to
    huggingface.co", though the model is installed as the embedded one; the error names the alias that loads it."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", "/nonexistent-tunelab-test-cache")  # no hub cache: transformers cannot find it
    source = resolve_source("HuggingFaceTB/SmolLM2-135M-Instruct", weights=False)
    with pytest.raises(ModelError, match=r"loads without a network: model.name: smollm2-135m-instruct\.$"):
        load_tokenizer(source)
    other = resolve_source("HuggingFaceTB/SmolLM2-360M-Instruct", weights=False)
    with pytest.raises(ModelError) as err:
        load_tokenizer(other)
    assert "embedded model" not in str(err.value)


def test_a_copy_of_an_older_conversion_is_stale_as_such(tiny_gguf, tmp_path, monkeypatch):
    """A copy converted before the tokenizer got llama.cpp's split (conversion 2; converted.CONVERSION) is not used
    again and is listed as stale because an older tunelab converted it, not because its file changed."""
    import hashlib
    import json

    from tunelab.models.converted import COMPLETE, CONVERSION, content_fingerprint

    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    model_file = tmp_path / "m.gguf"
    shutil.copy(tiny_gguf, model_file)
    current = Path(materialize(resolve_source(str(model_file))))
    old_key = f"{model_file.resolve()}|{content_fingerprint(model_file)}|{CONVERSION - 1}"
    older = current.with_name(f"m-{hashlib.sha256(old_key.encode()).hexdigest()[:16]}")
    shutil.copytree(current, older)
    mark = json.loads((older / COMPLETE).read_text()) | {"conversion": CONVERSION - 1}
    (older / COMPLETE).write_text(json.dumps(mark))
    stale = {e.name: e.stale for e in cache_entries()}
    assert stale[current.name] is None
    assert stale[older.name] == (
        f"an older tunelab converted {model_file.resolve()} into this copy (conversion {CONVERSION - 1}); its copy is "
        f"now {current.name}"
    )
