"""Model folders and files that cannot be loaded are named with what is wrong (exit 2), never a traceback."""

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch

from tunelab.cli import main
from tunelab.errors import ModelError
from tunelab.models.load import EMBEDDED, load_hf_model, load_tokenizer, resolve_source


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
    with pytest.raises(ModelError, match="the directory has no tokenizer"):
        load_tokenizer(resolve_source(str(folder)))


def test_remote_code_error_names_our_option(tiny_model_dir, tmp_path, capsys):
    folder = tmp_path / "custom"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config |= {"model_type": "mymodel", "auto_map": {"AutoConfig": "configuration_my.MyConfig"}}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "configuration_my.py").write_text(
        "from transformers import PretrainedConfig\nclass MyConfig(PretrainedConfig):\n    model_type = 'mymodel'\n"
    )
    source = resolve_source(str(folder))
    load_tokenizer(source)
    with pytest.raises(ModelError) as err:
        load_hf_model(source, torch.float32, torch.device("cpu"))
    assert "set model.trust_remote_code: true" in str(err.value) and "trust_remote_code=True" not in str(err.value)


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
    """'smollm2-135m' was taken for a hub id and failed with a network error (or an offline-cache one)."""
    monkeypatch.chdir(tmp_path)
    for typo in ("smollm2-135m", "smolm2-135m-instruct", "SmolLM2-135M-Instruct"):
        with pytest.raises(
            ModelError, match=rf"model '{typo}': .*did you mean the embedded model 'smollm2-135m-instruct'"
        ):
            resolve_source(typo)
    assert resolve_source("gpt2").path == "gpt2"  # a hub id without an org stays one
    assert resolve_source("HuggingFaceTB/SmolLM2-135M").path == "HuggingFaceTB/SmolLM2-135M"
