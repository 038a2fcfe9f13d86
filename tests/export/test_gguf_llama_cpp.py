"""export_gguf in a real llama.cpp: it computes what transformers computes (tiny models in every qtype, Llama 3 rope
scaling, head_dim, untied output, Mistral; the embedded SmolLM2 with an adapter) and splits text the same way for each
pre-tokenizer name written. The tests skip when llama-cpp-python is not installed."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, MistralConfig

import tunelab.export.gguf as gguf_export
from tunelab.config import RunConfig, dump_yaml
from tunelab.export.gguf import export_gguf, write_gguf
from tunelab.export.gguf_vocab import LLAMA3_SPLIT
from tunelab.export.merge import merged_model
from tunelab.models.load import materialize, resolve_source

SMALL_VOCAB = 2048  # the small tokenizer's size (tests/export/conftest.py)

TEXTS = [
    "Hello world!",
    "The capital of France is",
    "  two  spaces,\ttabs\nand 1234 digits",
    "<|im_start|>user\nHi<|im_end|>",
]


def _llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        pytest.skip("llama-cpp-python is not installed: CMAKE_ARGS=-DGGML_NATIVE=OFF pip install llama-cpp-python")
    return llama_cpp


def _llama(path):
    # one thread: llama.cpp's OpenMP threads spin at every barrier, and on two shared cores a second thread made
    # a 9-token eval take seconds instead of 0.1 s
    return _llama_cpp().Llama(
        model_path=str(path), n_ctx=128, logits_all=True, verbose=False, seed=0, n_threads=1, n_threads_batch=1
    )


def _llama_logits(llm, ids):
    llm.reset()
    llm.eval(ids)
    return torch.from_numpy(np.array(llm.scores[: len(ids)], dtype=np.float32))  # (T, V)


# llama.cpp against the same rounded weights in PyTorch: its kernels keep the KV cache in f16 and, for q8_0/q4_0
# weights, quantize activations to 8 bits before each dot product; measured ~4e-4 (f16), ~2e-3 (bf16), ~8e-3 (q8_0, q4_0).
LLAMA_CPP_TOLERANCES = {"f16": 2e-3, "bf16": 8e-3, "q8_0": 3e-2, "q4_0": 3e-2}


@pytest.mark.parametrize("qtype", ["f16", "bf16", "q8_0", "q4_0"])
def test_llama_cpp_runs_the_tiny_export_like_transformers(
    gguf_kit, tiny_run, tiny_merged, tmp_path, qtype, monkeypatch
):
    _llama_cpp()
    merged, expected = tiny_merged
    path = tmp_path / f"tiny-{qtype}.gguf"
    write_gguf(merged, path, qtype, name="tiny")
    llm = _llama(path)
    with torch.no_grad():
        simulated = gguf_kit.simulated(merged.model, qtype)(gguf_kit.ids).logits
    tolerance = LLAMA_CPP_TOLERANCES[qtype]
    for row, ids in enumerate(gguf_kit.ids.tolist()):
        ours = _llama_logits(llm, ids)
        torch.testing.assert_close(ours, simulated[row], rtol=0, atol=tolerance)
        torch.testing.assert_close(ours, expected[row], rtol=0, atol=tolerance + gguf_kit.tolerances[qtype])
    if qtype != "f16":
        return
    tok = AutoTokenizer.from_pretrained(tiny_run)
    for text in TEXTS:  # the byte-level BPE and its pre-tokenizer split text as transformers does
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == tok(text)["input_ids"], text
    # The same file with Hugging Face's q/k row order is a different model for llama.cpp: the test can tell.
    monkeypatch.setattr(gguf_export, "permute_rotary_rows", lambda w, n_heads: w)
    write_gguf(merged, tmp_path / "unpermuted.gguf", qtype, name="tiny")
    wrong = _llama_logits(_llama(tmp_path / "unpermuted.gguf"), gguf_kit.ids[0].tolist())
    assert (wrong - expected[0]).abs().max() > 10 * tolerance


def _full_run(config, tokenizer, run_dir):
    """A finished full fine-tuning run holding a random model of `config` with sharpened attention (as sharp_base)."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(8)
            layer.self_attn.k_proj.weight.mul_(8)
    model.save_pretrained(run_dir)
    tokenizer.save_pretrained(run_dir)
    info = {"base_model": "tiny-variant", "method": "full", "template": "auto", "system_prompt": None, "finished": True}
    (run_dir / "run.json").write_text(json.dumps(info))
    (run_dir / "config.yaml").write_text(dump_yaml(RunConfig()))  # as training saves it: the self-check reads it
    return run_dir


_SMALL = dict(
    vocab_size=SMALL_VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=1024,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=2,
)
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 10000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}
VARIANTS = {
    # Llama 3.x frequency scaling, written as rope_freqs; positions beyond 16 feel it
    "llama3-rope": LlamaConfig(**_SMALL, tie_word_embeddings=True, rope_parameters=LLAMA3_ROPE),
    "head-dim-32": LlamaConfig(**_SMALL, tie_word_embeddings=True, head_dim=32),  # heads * head_dim != hidden size
    "untied-output": LlamaConfig(**_SMALL, tie_word_embeddings=False),
    "mistral": MistralConfig(**_SMALL, tie_word_embeddings=False, sliding_window=512),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_llama_cpp_runs_llama_family_variants(variant, small_tokenizer, tmp_path, monkeypatch):
    _llama_cpp()
    from gguf import GGUFReader

    run = _full_run(VARIANTS[variant], small_tokenizer, tmp_path / "run")
    merged = merged_model(run)
    ids = torch.randint(3, SMALL_VOCAB, (40,), generator=torch.Generator().manual_seed(0)).tolist()
    with torch.no_grad():
        expected = merged.model(torch.tensor([ids])).logits[0]
    write_gguf(merged, tmp_path / "v.gguf", "f32", name=variant)
    ours = _llama_logits(_llama(tmp_path / "v.gguf"), ids)
    # f32 weights: what differs is llama.cpp's f16 KV cache and summation order (measured ~2e-4 on logits ~1)
    torch.testing.assert_close(ours, expected, rtol=0, atol=2e-3)
    fields = GGUFReader(tmp_path / "v.gguf").fields
    names = {t.name for t in GGUFReader(tmp_path / "v.gguf").tensors}
    if variant == "llama3-rope":
        assert "rope_freqs.weight" in names
        monkeypatch.setattr(gguf_export, "rope_freq_factors", lambda model, shape: None)
        write_gguf(merged, tmp_path / "plain-rope.gguf", "f32", name=variant)
        wrong = _llama_logits(_llama(tmp_path / "plain-rope.gguf"), ids)
        assert (wrong - expected).abs().max() > 10 * 2e-3  # without the factors llama.cpp computes another model
    elif variant == "head-dim-32":
        assert (
            fields["llama.attention.key_length"].contents() == 32
            and fields["llama.rope.dimension_count"].contents() == 32
        )
    elif variant == "untied-output":
        assert "output.weight" in names and "rope_freqs.weight" not in names
    else:
        assert fields["llama.context_length"].contents() == 512  # the sliding window bounds the context


_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
_LLAMA3_SPLIT = {
    "type": "Split",
    "pattern": {"Regex": LLAMA3_SPLIT},
    "behavior": "Isolated",
    "invert": False,
}
PRE_TOKENIZERS = {  # llama.cpp's name: (tokenizer.json pre_tokenizer, model.ignore_merges)
    "gpt-2": (_BYTE_LEVEL, False),
    "smollm": (
        {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, _BYTE_LEVEL]},
        False,
    ),
    "llama-bpe": ({"type": "Sequence", "pretokenizers": [_LLAMA3_SPLIT, _BYTE_LEVEL | {"use_regex": False}]}, True),
}
TRICKY = [
    "I'm here, DON'T go!",
    "  leading and trailing  ",
    "tabs\tand\n\n\nnewlines\r\n",
    "12345678 and 3.14159",
    " 2024-01-01T12:00",
    "abc123def 9x",
    "héllo wörld, naïve café",
    "日本語のテキスト",
    "emoji 🙂👍🏽!",
    "...!!!???---",
    "x  2  y   33",
    "<|im_start|>user\nHi<|im_end|>",
]


@pytest.mark.parametrize("pre", list(PRE_TOKENIZERS))
def test_llama_cpp_splits_text_like_transformers_for_each_pre_tokenizer(pre, small_tokenizer, tiny_merged, tmp_path):
    llama_cpp = _llama_cpp()
    pre_tokenizer, ignore_merges = PRE_TOKENIZERS[pre]
    small_tokenizer.save_pretrained(tmp_path / "tok")
    spec = json.loads((tmp_path / "tok" / "tokenizer.json").read_text())
    spec["pre_tokenizer"] = pre_tokenizer
    spec["model"]["ignore_merges"] = ignore_merges
    if ignore_merges:
        # whole words found in the vocabulary skip the merges: tokens only Llama 3's split can produce (digits in
        # threes, an upper-case contraction) tell its regex apart from GPT-2's in the comparison below
        spec["model"]["vocab"].update(
            {"123": SMALL_VOCAB, "456": SMALL_VOCAB + 1, "78": SMALL_VOCAB + 2, "'T": SMALL_VOCAB + 3}
        )
    (tmp_path / "tok" / "tokenizer.json").write_text(json.dumps(spec))
    tok = AutoTokenizer.from_pretrained(tmp_path / "tok")
    merged, _ = tiny_merged
    write_gguf(
        replace(merged, tokenizer=tok, info=replace(merged.info, base_model="tiny-variant")),
        tmp_path / "t.gguf",
        "f16",
        name=pre,
    )
    llm = llama_cpp.Llama(model_path=str(tmp_path / "t.gguf"), vocab_only=True, verbose=False)
    assert llm.metadata["tokenizer.ggml.pre"] == pre
    for text in TRICKY:
        assert (
            llm.tokenize(text.encode(), add_bos=False, special=True) == tok(text, add_special_tokens=False)["input_ids"]
        ), text
        assert llm.detokenize(tok(text, add_special_tokens=False)["input_ids"], special=True).decode() == text, text


@pytest.fixture
def one_torch_thread():
    """PyTorch on one thread for the 135M model: on two shared cores, two spinning threads ran 3-5x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_llama_cpp_answers_like_transformers_on_smollm2(gguf_kit, smollm2_tokenizer, tmp_path, one_torch_thread):
    _llama_cpp()
    tok = smollm2_tokenizer
    run = gguf_kit.lora_run(
        "smollm2-135m-instruct", tok, tmp_path / "run", std=0.03, targets=("q_proj", "v_proj", "down_proj")
    )
    # the export as a user runs it, self-check included: it must pass on the embedded model
    export_gguf(run, tmp_path / "smol.gguf", "f16", check=True, check_questions=3)
    report = json.loads((tmp_path / "smol.check.json").read_text())
    assert report["verdict"] == "pass", report
    assert report["template"]["byte_identical"] and report["answers"]["next_token_agreement"] >= 0.97
    merged = merged_model(run)
    model = merged.model
    base = AutoModelForCausalLM.from_pretrained(materialize(resolve_source("smollm2-135m-instruct"))).eval()
    llm = _llama(tmp_path / "smol.gguf")
    assert llm.metadata["tokenizer.ggml.pre"] == "smollm"  # carried over from the base model's GGUF
    probes = [
        "The capital of France is",
        "def fibonacci(n):",
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
        "Water boils at a temperature of",
        "The first president of the United States was",
    ]
    for prompt in probes:
        ids = tok(prompt)["input_ids"]
        assert llm.tokenize(prompt.encode(), add_bos=False, special=True) == ids, prompt
        with torch.no_grad():
            ref = model(torch.tensor([ids])).logits[0]  # (T, V)
            untuned = base(torch.tensor([ids])).logits[0]
        ours = _llama_logits(llm, ids)
        # The next-token choice agrees at every position. Logits (~30 in size) agree loosely: f16 weights, an f16
        # KV cache and llama.cpp's own summation order; measured <= 0.07. The adapter moves them by > 1, so a file
        # that lost it would fail here.
        assert torch.equal(ours.argmax(-1), ref.argmax(-1)), prompt
        assert (ours - ref).abs().max() < 0.25, prompt
        assert (untuned - ref).abs().max() > 1.0, prompt

    prompt = "The capital of France is"
    ids = tok(prompt)["input_ids"]
    with torch.no_grad():
        ref = model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)[0, len(ids) :].tolist()
    got = []
    for token in llm.generate(ids, temp=0.0, top_k=1, reset=True):
        if len(got) == 8 or token == llm.token_eos():
            break
        got.append(token)
    assert got == ref, (tok.decode(got), tok.decode(ref))
    assert tok.decode(got).startswith(" Paris")


def test_the_check_file_names_the_gguf_relative_to_itself(tiny_run, tmp_path, monkeypatch, capsys):
    """NAME.check.json recorded the GGUF's path as typed (`out/m.gguf`, relative to the folder the export ran in),
    which named nothing once read from elsewhere. It names the file relative to the check file beside it."""
    _llama_cpp()
    monkeypatch.chdir(tmp_path)
    export_gguf(tiny_run, "out/m.gguf", "q8_0", check=True, check_questions=1, show=True)
    check = tmp_path / "out" / "m.check.json"
    assert (check.parent / json.loads(check.read_text())["gguf"]).resolve() == (tmp_path / "out" / "m.gguf").resolve()
    assert "self-check of out/m.gguf (q8_0)" in capsys.readouterr().out  # the terminal names it as typed
    verdict = json.loads(check.read_text())["verdict"].upper()
    assert f"self-check of m.gguf (q8_0) with llama.cpp: {verdict}" in (check.parent / "m.README.md").read_text()
