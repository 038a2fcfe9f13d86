"""A GGUF file's tokenizer, converted by tunelab, splits text as llama.cpp splits it for the file's tokenizer.ggml.pre
(models/gguf_split.py): checked against llama.cpp's own tokenize on tiny GGUF files that differ only in that name."""

from types import SimpleNamespace

import pytest
import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from tunelab.models.gguf_split import SPLITS, read_gguf_string
from tunelab.models.load import materialize, resolve_source

pytest.importorskip("gguf", reason="writing and reading GGUF needs the gguf package")

# whitespace before digits ('\n\n1.', ' 42'), runs of digits, contractions, newlines in runs, accents, code
TEXTS = [
    "Steps:\n\n1. Mix 250 g of flour.\n2. Bake for 45 minutes at 180 degrees.",
    "Call 0800 123 4567, or  99 bottles; 3.14159 and 1,000,000 and x2y3.",
    "I'm sure it's DON'T they'll we've you'd\n\n\n  indented line\r\n\tTabbed 7",
    "def f(x):\n    return x**2 + 10  # 2024-12-05\n",
    "Café déjà vu: naïve résumé, 12 €, ½ cup, ²",
    "ABCdef GHI jklMNO camelCaseWord HTTPServer 'quoted' /path/to/file_1.txt",
]
CORPUS = TEXTS * 3 + ["\n\n1.", " 42", "123456789", "\n\n", "  ", "It's", " the", " and"]


@pytest.fixture(scope="module")
def split_tokenizer(base_tokenizer):
    """A byte-level BPE tokenizer whose merges join whitespace with digits and digits with digits ('\\n\\n1', ' 42',
    '123'): where two splits part such text differently, the token ids differ."""
    return base_tokenizer(("<|im_start|>", "<|im_end|>"), corpus=CORPUS, vocab_size=500)


def _gguf_named(tok, pre: str, folder, monkeypatch):
    """A 2-layer random Llama as a GGUF file whose tokenizer.ggml.pre is `pre`."""
    from tunelab.export import gguf as export_gguf

    from ..conftest import _tiny_llama_config

    monkeypatch.setattr(export_gguf, "source_pre_tokenizer", lambda base: pre)
    torch.manual_seed(0)
    merged = SimpleNamespace(
        model=LlamaForCausalLM(_tiny_llama_config(tok)).eval(),
        tokenizer=tok,
        info=SimpleNamespace(base_model="tiny"),
        template=SimpleNamespace(stop_token_ids=[tok.eos_token_id]),
    )
    path = folder / f"{pre}.gguf"
    export_gguf.write_gguf(merged, path, "f32", pre)
    assert read_gguf_string(path, "tokenizer.ggml.pre") == pre
    return path


@pytest.mark.parametrize("pre", ["smollm", "starcoder", "gpt-2", "llama-bpe", "qwen2", "gpt-4o"])
def test_the_converted_tokenizer_splits_as_llama_cpp(pre, split_tokenizer, tmp_path, monkeypatch):
    llama_cpp = pytest.importorskip("llama_cpp", reason="the reference split is llama.cpp's")
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    path = _gguf_named(split_tokenizer, pre, tmp_path, monkeypatch)
    ours = AutoTokenizer.from_pretrained(materialize(resolve_source(str(path))))
    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    for text in TEXTS:
        ids = ours(text, add_special_tokens=False)["input_ids"]
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids, (pre, text)


def test_smollm_splits_each_digit_alone_after_whitespace(split_tokenizer, tmp_path, monkeypatch):
    """SmolLM2's own tokenizer.json: Digits(individual_digits) before GPT-2's byte-level regex."""
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    path = _gguf_named(split_tokenizer, "smollm", tmp_path, monkeypatch)
    ours = AutoTokenizer.from_pretrained(materialize(resolve_source(str(path))))
    pieces = [piece for piece, _ in ours.backend_tokenizer.pre_tokenizer.pre_tokenize_str("Steps:\n\n12. Do 42")]
    assert pieces == ["Steps", ":", "ĊĊ", "1", "2", ".", "ĠDo", "Ġ", "4", "2"]


def test_a_name_tunelab_does_not_know_is_named_in_a_warning(split_tokenizer, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    path = _gguf_named(split_tokenizer, "deepseek-coder", tmp_path, monkeypatch)
    materialize(resolve_source(str(path)))
    err = capsys.readouterr().err
    assert "tokenizer.ggml.pre is 'deepseek-coder'" in err and "may differ from llama.cpp's" in err
    assert "deepseek-coder" not in SPLITS


def test_every_known_name_builds_a_pre_tokenizer():
    from tunelab.models.gguf_split import pre_tokenizer_for

    for name in SPLITS:
        built, ignore_merges = pre_tokenizer_for(name)
        assert built.pre_tokenize_str("a 12") and isinstance(ignore_merges, bool), name
    assert pre_tokenizer_for("no-such-name") is None


def test_the_export_check_finds_the_training_texts_split_alike(split_tokenizer, tmp_path, monkeypatch):
    """The GGUF export's self-check (export/check.py) splits a run's training conversations with llama.cpp and with
    the tokenizer the run trained with: on a 'smollm' base, conversations with digits after newlines and spaces
    now split alike (before, 'llama.cpp splits N of M training texts differently')."""
    import json

    import yaml

    from tunelab.data.templates import resolve_template
    from tunelab.export.check import GGUFCheck, _check_template

    llama_cpp = pytest.importorskip("llama_cpp", reason="the reference split is llama.cpp's")
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    path = _gguf_named(split_tokenizer, "smollm", tmp_path, monkeypatch)
    tok = AutoTokenizer.from_pretrained(materialize(resolve_source(str(path))))
    rows = [{"question": f"Steps for task {i}?", "answer": text} for i, text in enumerate(TEXTS)]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(
        yaml.safe_dump({"model": {"name": "tiny"}, "data": {"train": [str(tmp_path / "t.jsonl")]}})
    )
    merged = SimpleNamespace(
        tokenizer=tok, template=resolve_template("chatml", tok), info=SimpleNamespace(system_prompt=None)
    )
    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    result = GGUFCheck(str(path), "f32")
    _check_template(result, merged, llm, "", run, adds_bos=False)
    assert result.tokens == {"texts": len(TEXTS), "mismatched": []}
    assert not any("splits" in p for p in result.problems)
