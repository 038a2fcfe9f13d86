"""GGUF for every family the fast path trains beyond Llama: tiny Qwen2 (q/k/v biases) and Qwen3 (per-head q/k
norms) exports computed alike by llama.cpp, transformers and the merged model, and passing the export's self-check;
k-quants made by llama.cpp's quantizer load and keep their K types; a SentencePiece-style (Llama 2, Mistral)
vocabulary splits text in llama.cpp as in transformers; missing llama.cpp is a clear error."""

import json
import re
import sys

import numpy as np
import pytest
import torch
from gguf import GGUFReader
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, Qwen2Config, Qwen3Config

from tunelab.config import RunConfig, dump_yaml
from tunelab.errors import ModelError
from tunelab.export.gguf import export_gguf, gguf_shape, write_gguf, written_bytes
from tunelab.export.gguf_vocab import QWEN2_SPLIT
from tunelab.export.merge import merged_model

llama_cpp = pytest.importorskip(
    "llama_cpp", reason="llama-cpp-python is not installed: CMAKE_ARGS=-DGGML_NATIVE=OFF pip install llama-cpp-python"
)

SMALL_VOCAB = 2048  # the small tokenizer's size (conftest.py)
SHAPE = dict(  # hidden 256: rows split into k-quants' 256-value super-blocks
    vocab_size=SMALL_VOCAB,
    hidden_size=256,
    intermediate_size=512,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=64,
    max_position_embeddings=1024,
    tie_word_embeddings=True,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=2,
)
CONFIGS = {"qwen2": Qwen2Config, "qwen3": Qwen3Config}


@pytest.fixture(scope="module")
def qwen_tokenizer(small_tokenizer, tmp_path_factory):
    """The small tokenizer with Qwen2's pre-tokenizer (its regex, NFC first, byte-level without regex)."""
    path = tmp_path_factory.mktemp("qwen-tokenizer")
    small_tokenizer.save_pretrained(path)
    spec = json.loads((path / "tokenizer.json").read_text())
    spec["normalizer"] = {"type": "NFC"}
    spec["pre_tokenizer"] = {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN2_SPLIT}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        ],
    }
    (path / "tokenizer.json").write_text(json.dumps(spec))
    return AutoTokenizer.from_pretrained(path)


def _model(family: str, plain: bool = False):
    """A random model of `family` whose family-specific tensors matter: sharpened attention, biases of q/k/v
    (qwen2) and per-head q/k norm weights (qwen3) away from their neutral init. plain=True leaves those neutral."""
    torch.manual_seed(0)
    # Qwen3 sets head_dim apart from hidden / heads (128 in every released size), as here
    shape = SHAPE | {"head_dim": 128} if family == "qwen3" else SHAPE
    model = AutoModelForCausalLM.from_config(CONFIGS[family](**shape)).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in model.model.layers:
            attn = layer.self_attn
            attn.q_proj.weight.mul_(8)
            attn.k_proj.weight.mul_(8)
            if plain:
                continue
            if family == "qwen2":
                for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
                    proj.bias.copy_(torch.randn(proj.bias.shape, generator=generator))
            else:
                for norm in (attn.q_norm, attn.k_norm):
                    norm.weight.copy_(0.5 + torch.rand(norm.weight.shape, generator=generator))
    return model


def _make_run(family: str, tokenizer, run):
    _model(family).save_pretrained(run)
    tokenizer.save_pretrained(run)
    info = {"base_model": "tiny", "method": "full", "template": "auto", "system_prompt": "Be brief.", "finished": True}
    (run / "run.json").write_text(json.dumps(info))
    (run / "config.yaml").write_text(dump_yaml(RunConfig()))  # as training saves it: the self-check reads it
    return run


@pytest.fixture(scope="module", params=list(CONFIGS))
def family_run(request, qwen_tokenizer, tmp_path_factory):
    family = request.param
    return family, _make_run(family, qwen_tokenizer, tmp_path_factory.mktemp(f"{family}-run"))


@pytest.fixture(scope="module")
def qwen2_run(qwen_tokenizer, tmp_path_factory):
    return _make_run("qwen2", qwen_tokenizer, tmp_path_factory.mktemp("qwen2-run"))


def _llama_logits(path, ids):
    llm = llama_cpp.Llama(
        model_path=str(path), n_ctx=128, logits_all=True, verbose=False, n_threads=1, n_threads_batch=1
    )
    llm.eval(ids)
    out = torch.from_numpy(np.array(llm.scores[: len(ids)], dtype=np.float32))
    llm.close()
    return out


def test_qwen_families_compute_alike_in_llama_cpp_and_pass_the_self_check(family_run, tmp_path, one_thread):
    family, run = family_run
    merged = merged_model(run)
    ids = torch.randint(3, SMALL_VOCAB, (40,), generator=torch.Generator().manual_seed(0)).tolist()
    with torch.no_grad():
        expected = merged.model(torch.tensor([ids])).logits[0]
        plain = _model(family, plain=True)(torch.tensor([ids])).logits[0]
    # f32 weights: llama.cpp differs by its f16 KV cache and summation order only (measured ~2e-4 on logits ~1)
    write_gguf(merged, tmp_path / "f32.gguf", "f32", name=family)
    torch.testing.assert_close(_llama_logits(tmp_path / "f32.gguf", ids), expected, rtol=0, atol=2e-3)
    assert (plain - expected).abs().max() > 0.1  # the biases / norms matter, so llama.cpp must have used them

    out = export_gguf(run, tmp_path / "m.gguf", "f16", check=True, check_questions=3).path
    reader = GGUFReader(out)
    fields = {k: v.contents() for k, v in reader.fields.items() if k.startswith(("general.", "tokenizer.ggml.pre"))}
    assert fields["general.architecture"] == family and fields["tokenizer.ggml.pre"] == "qwen2"
    names = {t.name for t in reader.tensors}
    extra = {"qwen2": "blk.1.attn_v.bias", "qwen3": "blk.1.attn_k_norm.weight"}[family]
    assert extra in names and "blk.0.attn_q.weight" in names

    report = json.loads((tmp_path / "m.check.json").read_text())
    assert report["verdict"] == "pass", report
    assert report["template"]["byte_identical"] and report["stop_tokens"]["llama_cpp_stops_on"] == {"<|im_end|>": True}
    assert report["answers"]["next_token_agreement"] >= 0.97 and report["answers"]["max_logit_diff"] < 0.05

    # transformers reads the file back as the same model (qwen rows are not permuted, so none is undone)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=out.name, dtype=torch.float32).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(torch.tensor([ids])).logits[0], expected, rtol=0, atol=2e-2)


@pytest.mark.parametrize("qtype, ktype", [("q4_k_m", "Q4_K"), ("q5_k_m", "Q5_K"), ("q6_k", "Q6_K")])
def test_k_quants_come_from_llama_cpp_and_load(qwen2_run, qtype, ktype, tmp_path, one_thread):
    run = qwen2_run
    out = export_gguf(run, tmp_path / f"{qtype}.gguf", qtype, check=True, check_questions=2).path
    types = {t.name: t.tensor_type.name for t in GGUFReader(out).tensors}
    assert types["blk.0.ffn_gate.weight"] == ktype and types["blk.0.attn_norm.weight"] == "F32"
    report = json.loads((tmp_path / f"{qtype}.check.json").read_text())
    assert report["problems"] == [] and report["qtype"] == qtype  # loaded, stops, template, tokens all fine
    f16 = export_gguf(run, tmp_path / "f16" / "f16.gguf", "f16", check=False).path
    assert out.stat().st_size < 0.6 * f16.stat().st_size
    # the room the export asked for held the k-quant beside the f16 file it was made from
    merged = merged_model(run)
    assert out.stat().st_size + f16.stat().st_size <= written_bytes(
        merged.model, gguf_shape(merged.model.config), qtype
    )


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # see test_gguf.one_torch_thread: two shared cores and spinning llama.cpp threads
    yield
    torch.set_num_threads(before)


def _sentencepiece_tokenizer(tmp_path):
    """A Llama-2-style tokenizer: BPE with byte fallback, '▁' for spaces and one before the text, ids 3..258 the
    byte pieces <0x00>..<0xFF>, trained here on a few sentences."""
    from tokenizers import Tokenizer, decoders, models, normalizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    raw.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    corpus = ["The capital of France is Paris.", "Hello world, hello there!", "I'm here, don't go: 12345 and 3.14"] * 5
    raw.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>", "<s>", "</s>"]))
    spec = json.loads(raw.to_str())
    learned = sorted(spec["model"]["vocab"].items(), key=lambda kv: kv[1])
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {f"<0x{b:02X}>": 3 + b for b in range(256)}
    for token, _ in learned:
        vocab.setdefault(token, len(vocab))
    spec["model"]["vocab"] = vocab
    spec["added_tokens"] = [
        {
            "id": i,
            "content": t,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for t, i in (("<unk>", 0), ("<s>", 1), ("</s>", 2))
    ]
    raw = Tokenizer.from_str(json.dumps(spec))
    raw.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def test_sentencepiece_vocabulary_splits_alike_in_llama_cpp(tmp_path):
    tok = _sentencepiece_tokenizer(tmp_path)
    tok.chat_template = None
    run = tmp_path / "run"
    torch.manual_seed(0)
    config = LlamaConfig(
        **(SHAPE | {"vocab_size": len(tok), "hidden_size": 64, "intermediate_size": 128, "head_dim": 16})
    )
    AutoModelForCausalLM.from_config(config).save_pretrained(run)
    tok.save_pretrained(run)
    info = {"base_model": "tiny", "method": "full", "template": "chatml", "system_prompt": None, "finished": True}
    (run / "run.json").write_text(json.dumps(info))
    write_gguf(merged_model(run), tmp_path / "spm.gguf", "f16", name="spm")
    llm = llama_cpp.Llama(model_path=str(tmp_path / "spm.gguf"), vocab_only=True, verbose=False)
    assert llm.metadata["tokenizer.ggml.model"] == "llama"
    texts = [
        "The capital of France is Paris.",
        "hello there, world",
        "I'm here, DON'T go!",
        "  two  spaces and 12345",
        "héllo wörld 日本",  # characters outside the vocabulary fall back to byte pieces
        "capital capitals Paris Parisian",
    ]
    for text in texts:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids, text
        assert llm.detokenize(ids).decode() == " " + text or llm.detokenize(ids).decode() == text, text


def test_missing_llama_cpp_is_a_clear_error_before_writing(qwen2_run, tmp_path, monkeypatch):
    run = qwen2_run
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp now raises ImportError
    with pytest.raises(ModelError, match="q4_k_m export .* pip install llama-cpp-python"):
        export_gguf(run, tmp_path / "k.gguf", "q4_k_m")
    with pytest.raises(ModelError, match="self-check .* pip install llama-cpp-python"):
        export_gguf(run, tmp_path / "c.gguf", "f16", check=True)
    assert list(tmp_path.iterdir()) == []
    export_gguf(run, tmp_path / "u.gguf", "f16")  # check=None: without llama.cpp the export is unchecked
    assert (tmp_path / "u.gguf").is_file() and not (tmp_path / "u.check.json").exists()


def test_cli_export_checks_by_default_and_refuses_unknown_types(qwen2_run, tmp_path, capsys, one_thread):
    from tunelab.cli import main

    assert main(["export", str(qwen2_run), "--gguf", str(tmp_path / "a.gguf"), "--type", "q3_k"]) == 2
    err = capsys.readouterr().err
    assert "option '--type' is 'q3_k'; allowed values: f32, f16, bf16, q8_0, q4_0, q4_k_m, q5_k_m, q6_k" in err
    args = ["export", str(qwen2_run), "--gguf", str(tmp_path / "a.gguf"), "--type", "Q8_0", "--check-questions", "1"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "with llama.cpp: PASS" in out and (tmp_path / "a.check.json").is_file()
    # replacing the file without a check removes the old verdict, which spoke of the old file
    assert main([*args[:-2], "--overwrite", "--no-check"]) == 0  # no --check-questions: nothing asks them
    assert (tmp_path / "a.gguf").is_file() and not (tmp_path / "a.check.json").exists()


def test_a_failed_self_check_is_said_from_python_without_show(tiny_run_dir, tmp_path, monkeypatch, capsys):
    """`tunelab export` prints a FAIL and exits 1; tunelab.export_gguf(run, out) returned the path without a word,
    the verdict only in NAME.check.json."""
    import tunelab.export.gguf as gguf_module
    import tunelab.export.llama_cpp as llama_cpp_module
    from tunelab.export.check import GGUFCheck

    monkeypatch.setattr(llama_cpp_module, "available", lambda: True)
    monkeypatch.setattr(gguf_module, "asked_questions", lambda run_dir, limit: ([], "probes"))
    monkeypatch.setattr(gguf_module, "check_export", lambda *a: GGUFCheck(str(a[1]), a[2], "fail", ["differs"]))
    out = export_gguf(tiny_run_dir, tmp_path / "m.gguf", qtype="f32").path
    assert out.is_file() and f"export: the self-check of {out} FAILED; see " in capsys.readouterr().err


def test_k_quant_fallbacks_are_one_line_not_one_per_tensor(tiny_run, tmp_path, capfd):
    """A q4_k_m export of a model whose rows are not a multiple of 256 (SmolLM2-135M's 576) printed 181 lines of
    llama.cpp warnings, one per tensor, before the result: they are one line now, with the types used instead."""
    pytest.importorskip("llama_cpp")
    out = export_gguf(tiny_run, tmp_path / "k.gguf", "q4_k_m", check=False).path
    captured = capfd.readouterr()
    assert "falling back" not in captured.err + captured.out and "warning:" not in captured.err
    assert re.search(r"q4_k_m: llama.cpp stored \d+ of \d+ tensors in other types \(q\w+ \d+", captured.out)
    assert out.is_file() and GGUFReader(out).tensors


def test_a_failed_quantization_names_the_file_asked_for(tiny_run, tmp_path, monkeypatch):
    """llama.cpp's quantizer failing said 'failed on out/.tmp-f16-k.gguf-1234', a scratch file deleted by the time
    the message was read. It names the file the user asked for and its type, and leaves nothing behind."""
    llama_cpp = pytest.importorskip("llama_cpp")
    monkeypatch.setattr(llama_cpp, "llama_model_quantize", lambda *a: 1)
    with pytest.raises(ModelError, match=r"failed making .*k\.gguf \(q4_k_m\) from its f16 file \(status 1") as error:
        export_gguf(tiny_run, tmp_path / "k.gguf", "q4_k_m", check=False)
    assert ".tmp-" not in str(error.value) and list(tmp_path.iterdir()) == []


def test_a_self_check_skipped_for_want_of_llama_cpp_is_said(tiny_run_dir, tmp_path, monkeypatch, capsys):
    """Without llama-cpp-python, `tunelab export --type q8_0` wrote the file and printed its path and the Ollama line
    alone: nothing said that the self-check README promises had not run. It says so now, with the install line;
    --no-check, which asks for no check, prints no such line."""
    import tunelab.export.llama_cpp as llama_cpp_module
    from tunelab.cli import main

    monkeypatch.setattr(llama_cpp_module, "available", lambda: False)
    assert main(["export", str(tiny_run_dir), "--gguf", str(tmp_path / "a.gguf"), "--type", "f32"]) == 0
    printed = capsys.readouterr().out
    assert f"self-check of {tmp_path / 'a.gguf'}: not run" in printed and llama_cpp_module.INSTALL in printed
    assert not (tmp_path / "a.check.json").exists()
    assert main(["export", str(tiny_run_dir), "--gguf", str(tmp_path / "b.gguf"), "--type", "f32", "--no-check"]) == 0
    assert "self-check" not in capsys.readouterr().out
