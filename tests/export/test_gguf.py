"""export_gguf: the file transformers reads back gives the merged model's logits (q/k permutation, names, metadata),
quantized types round exactly as the gguf package's (de)quantizers say, a real llama.cpp computes what transformers
computes (tiny models in every qtype, Llama 3 rope scaling, head_dim, untied output, Mistral; the embedded SmolLM2
with an adapter) and splits text the same way for each pre-tokenizer name written, the Modelfile says ChatML in Go,
and bad input is refused. The llama.cpp tests skip when llama-cpp-python is not installed."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    Qwen2Config,
)

import tunelab.export.gguf as gguf_export
from tunelab.config import RunConfig, dump_yaml
from tunelab.data.templates import resolve_template
from tunelab.errors import ConfigError, ModelError, RunDirError
from tunelab.export.gguf import (
    encode_tensor,
    export_gguf,
    gguf_shape,
    gguf_tensors,
    permute_rotary_rows,
    write_gguf,
)
from tunelab.export.gguf_vocab import LLAMA3_SPLIT, read_gguf_string
from tunelab.export.merge import merged_model
from tunelab.export.modelfile import modelfile_text
from tunelab.models.load import materialize, resolve_source
from tunelab.peft.lora import attach_lora, lora_modules
from tunelab.peft.save import save_adapter

IDS = torch.tensor([[1, 504, 1458, 314, 1760, 260, 1104, 2], [17, 29, 2000, 2047, 12, 9, 8, 7]])
TEXTS = [
    "Hello world!",
    "The capital of France is",
    "  two  spaces,\ttabs\nand 1234 digits",
    "<|im_start|>user\nHi<|im_end|>",
]


def _lora_run(base, tokenizer, run_dir, std, targets=("all-linear",), system_prompt=None, template="auto"):
    """A finished LoRA run on model `base` (a directory or alias) whose B matrices are N(0, std)."""
    model = AutoModelForCausalLM.from_pretrained(materialize(resolve_source(str(base))), dtype=torch.float32).eval()
    torch.manual_seed(3)  # A's random init too: the run must not depend on what earlier tests drew
    attach_lora(model, list(targets), r=4, alpha=8)
    for _, m in lora_modules(model):
        if std:
            torch.nn.init.normal_(m.lora_B.weight, std=std)
    save_adapter(model, run_dir, base_model=str(base))
    tokenizer.save_pretrained(run_dir)
    info = {
        "base_model": str(base),
        "method": "lora",
        "template": template,
        "system_prompt": system_prompt,
        "quantize_base": "none",
        "finished": True,
    }
    (run_dir / "run.json").write_text(json.dumps(info))
    (run_dir / "config.yaml").write_text(dump_yaml(RunConfig()))  # as training saves it: the self-check reads it
    return run_dir


SMALL_VOCAB = 2048  # the small tokenizer's size (tests/export/conftest.py)


@pytest.fixture(scope="module")
def sharp_base(small_tokenizer, tiny_llama_config, tmp_path_factory):
    """A 2-layer random Llama with q and k scaled up 8x: random init gives near-uniform attention, where the rotary
    layout hardly matters; sharper attention makes a wrong q/k row order show in the logits (checked below)."""
    tok = small_tokenizer
    torch.manual_seed(0)
    # the embedding has 8 rows more than the tokenizer has tokens, as models padded to a round size do
    config = tiny_llama_config(tok, vocab_size=SMALL_VOCAB + 8)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(8)
            layer.self_attn.k_proj.weight.mul_(8)
    path = tmp_path_factory.mktemp("sharp")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_run(sharp_base, small_tokenizer, tmp_path_factory):
    return _lora_run(sharp_base, small_tokenizer, tmp_path_factory.mktemp("run"), std=0.05)


@pytest.fixture(scope="module")
def tiny_merged(tiny_run):
    merged = merged_model(tiny_run)
    with torch.no_grad():
        return merged, merged.model(IDS).logits


def _simulated(model, qtype):
    """The merged model with every weight rounded as the GGUF file stores it (dequantize(quantize(W)))."""
    import gguf

    shape = gguf_shape(model.config)
    sim = AutoModelForCausalLM.from_config(model.config).eval()
    state = {}
    hf_names = [n for n in model.state_dict() if not (shape.tied and n == "lm_head.weight")]
    for hf_name, (gguf_name, t) in zip(hf_names, gguf_tensors(model, shape), strict=True):
        data, raw = encode_tensor(gguf_name, t, qtype)
        state[hf_name] = torch.from_numpy(gguf.quants.dequantize(data, raw).astype(np.float32).reshape(t.shape))
    # the permutation moves whole rows and quantization blocks lie within rows, so un-permuting the rounded
    # permuted matrix equals rounding the original: only q and k need undoing for the reference
    for name, t in state.items():
        if name.endswith("q_proj.weight"):
            state[name] = _unpermute(t, shape.heads)
        elif name.endswith("k_proj.weight"):
            state[name] = _unpermute(t, shape.kv_heads)
    sim.load_state_dict(state, strict=False)
    sim.tie_weights()
    return sim


def _unpermute(w, n_heads):
    return w.reshape(n_heads, w.shape[0] // n_heads // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def test_permutation_interleaves_each_heads_halves():
    w = torch.arange(8.0).reshape(8, 1)  # 2 heads of 4 rows: (0 1 | 2 3), (4 5 | 6 7) in rotate-half layout
    assert permute_rotary_rows(w, 2).flatten().tolist() == [0, 2, 1, 3, 4, 6, 5, 7]
    assert torch.equal(_unpermute(permute_rotary_rows(w, 2), 2), w)


# Tolerances against the fp32 merged model (logits of the tiny model are ~1 in size):
TOLERANCES = {
    "f16": 2e-3,  # f16 keeps 11 significant bits: each weight off by <= 2^-12 relative
    "q8_0": 3e-2,  # 8-bit integers per block of 32 with one f16 scale: ~0.4% error per weight
    "bf16": 1e-2,  # bf16 keeps 8 significant bits
    "q4_0": 3e-1,  # 4-bit integers per block: ~7% error per weight (token embedding kept at q8_0)
}


@pytest.mark.parametrize("qtype", ["f16", "q8_0"])
def test_transformers_reads_back_the_merged_model(tiny_run, tiny_merged, tmp_path, qtype):
    merged, expected = tiny_merged
    out = export_gguf(tiny_run, tmp_path / f"tiny-{qtype}.gguf", qtype, check=False)
    # transformers un-permutes q and k when it reads a llama GGUF, so this also checks the permutation's inverse
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=out.name, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = loaded(IDS).logits
        simulated = _simulated(merged.model, qtype)(IDS).logits
    # The file holds exactly the rounded weights: the same model up to fp32 summation order.
    torch.testing.assert_close(logits, simulated, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logits, expected, rtol=0, atol=TOLERANCES[qtype])


def test_an_upper_case_suffix_is_a_gguf_file_too(tiny_run, tmp_path):
    out = export_gguf(tiny_run, tmp_path / "Tiny.GGUF", "f32", check=False)
    assert out == tmp_path / "Tiny.GGUF" and out.read_bytes()[:4] == b"GGUF"
    assert resolve_source(str(out)).gguf_file == "Tiny.GGUF"  # tunelab reads it back as a model, as it reads .gguf
    assert "FROM ./Tiny.GGUF\n" in (tmp_path / "Tiny.Modelfile").read_text()


def test_two_exports_into_one_folder_each_keep_their_modelfile(tiny_run, tmp_path, capsys):
    """Both exports wrote one `Modelfile`: a second export into the folder was refused for it (naming a file the user
    never asked for), and with --overwrite it replaced the first's, whose `ollama create` then built the second
    GGUF. Each GGUF has its own NAME.Modelfile now, and the printed command names it."""
    from tunelab.cli import main

    assert main(["export", str(tiny_run), "--gguf", str(tmp_path / "a.gguf"), "--type", "f32", "--no-check"]) == 0
    assert main(["export", str(tiny_run), "--gguf", str(tmp_path / "b.gguf"), "--type", "f16", "--no-check"]) == 0
    assert "FROM ./a.gguf\n" in (tmp_path / "a.Modelfile").read_text()
    assert "FROM ./b.gguf\n" in (tmp_path / "b.Modelfile").read_text()
    assert "ollama create NAME -f b.Modelfile" in (tmp_path / "b.Modelfile").read_text()
    assert f"Ollama: ollama create NAME -f {tmp_path / 'b.Modelfile'}" in capsys.readouterr().out
    assert not (tmp_path / "Modelfile").exists()


def test_metadata_tokenizer_and_tensor_names(tiny_run, tmp_path, small_tokenizer, sharp_base):
    from gguf import GGUFReader

    out = export_gguf(tiny_run, tmp_path / "tiny.gguf", "f16", check=False)
    reader = GGUFReader(out)
    f = {k: v.contents() for k, v in reader.fields.items() if not k.startswith("GGUF.")}
    assert f["general.architecture"] == "llama" and f["general.file_type"] == 1
    # the local base is named by its folder, not its absolute path: the file is shared, the user's layout is not
    assert json.loads((tiny_run / "run.json").read_text())["base_model"] == str(sharp_base)
    assert f["general.base_model.0.name"] == sharp_base.name and f["general.name"] == tiny_run.name
    leaked = [k for k, v in f.items() if isinstance(v, str) and str(tmp_path.parent) in v]
    assert leaked == [] and str(tmp_path.parent) not in (tmp_path / "tiny.Modelfile").read_text()
    expected = {
        "llama.context_length": 1024,
        "llama.embedding_length": 64,
        "llama.block_count": 2,
        "llama.feed_forward_length": 128,
        "llama.attention.head_count": 4,
        "llama.attention.head_count_kv": 2,
        "llama.rope.dimension_count": 16,
        "llama.vocab_size": SMALL_VOCAB + 8,
    }
    assert {k: f[k] for k in expected} == expected
    assert f["llama.rope.freq_base"] == pytest.approx(10000.0)
    tok = small_tokenizer
    assert f["tokenizer.ggml.model"] == "gpt2" and f["tokenizer.ggml.pre"] == "gpt-2"  # plain byte-level split
    assert len(f["tokenizer.ggml.tokens"]) == SMALL_VOCAB + 8 and f["tokenizer.ggml.tokens"][2] == "<|im_end|>"
    assert f["tokenizer.ggml.tokens"][SMALL_VOCAB:] == [f"[PAD{i}]" for i in range(SMALL_VOCAB, SMALL_VOCAB + 8)]
    assert f["tokenizer.ggml.tokens"][tok.convert_tokens_to_ids("Ġthe")] == "Ġthe"
    types = f["tokenizer.ggml.token_type"]  # 3 control (special), 1 normal, 5 unused (padding rows)
    assert types[:17] == [3] * 17 and set(types[17:SMALL_VOCAB]) == {1} and types[SMALL_VOCAB:] == [5] * 8
    merges = json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]
    assert f["tokenizer.ggml.merges"] == [" ".join(m) for m in merges] and f["tokenizer.ggml.merges"][0] == "Ġ t"
    assert (
        f["tokenizer.ggml.bos_token_id"],
        f["tokenizer.ggml.eos_token_id"],
        f["tokenizer.ggml.padding_token_id"],
    ) == (1, 2, 2)
    assert f["tokenizer.ggml.add_bos_token"] is False
    assert f["tokenizer.chat_template"] == tok.chat_template
    # the header scanner used for the base model's pre-tokenizer reads past the token and merge arrays correctly
    assert read_gguf_string(out, "tokenizer.chat_template") == tok.chat_template
    assert read_gguf_string(out, "tokenizer.ggml.pre") == "gpt-2" and read_gguf_string(out, "no.such.key") is None
    names = {t.name for t in reader.tensors}
    per_layer = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down", "attn_norm", "ffn_norm"]
    assert names == {"token_embd.weight", "output_norm.weight"} | {
        f"blk.{i}.{n}.weight" for i in range(2) for n in per_layer
    }
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == "F16" and types["blk.0.attn_norm.weight"] == "F32"


def test_the_files_chat_template_writes_the_runs_system_prompt(sharp_base, small_tokenizer, tmp_path):
    """llama.cpp, llama-cpp-python and LM Studio prompt with the file's tokenizer.chat_template: without the run's
    data.system_prompt in it, a conversation without a system message got SmolLM2's default one, not the prompt the
    run trained with."""
    from jinja2 import Template

    prompt = 'You answer box questions, "briefly".'
    run = _lora_run(sharp_base, small_tokenizer, tmp_path / "run", std=0.05, system_prompt=prompt)
    out = export_gguf(run, tmp_path / "run.gguf", "f16", check=False)
    template = read_gguf_string(out, "tokenizer.chat_template")
    text = Template(template).render(messages=[{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    assert text.startswith(f"<|im_start|>system\n{prompt}<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n")


def test_a_blank_system_prompt_of_an_older_run_is_none_in_the_export(sharp_base, small_tokenizer, tmp_path):
    """A run that recorded a data.system_prompt of spaces (older versions did) was exported with a system block of
    spaces in the file's chat template and a SYSTEM of spaces in the Modelfile, where training, generate, chat and
    serve add none; the export now writes neither."""
    from jinja2 import Template

    run = _lora_run(sharp_base, small_tokenizer, tmp_path / "run", std=0.05, system_prompt="  \n")
    assert merged_model(run).info.system_prompt is None  # what the export's self-check reads
    out = export_gguf(run, tmp_path / "run.gguf", "f16", check=False)
    chat = Template(read_gguf_string(out, "tokenizer.chat_template"))
    user = [{"role": "user", "content": "Hi"}]
    own = Template(small_tokenizer.chat_template).render(messages=user, add_generation_prompt=True)
    assert chat.render(messages=user, add_generation_prompt=True) == own
    assert "SYSTEM" not in (tmp_path / "run.Modelfile").read_text()


def test_unsupported_models_and_bad_options_are_refused(tiny_run, tmp_path):
    gemma = Gemma3TextConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4)
    with pytest.raises(
        ModelError, match="supports the model types llama, mistral, qwen2, qwen3 .* this model is 'gemma3_text'"
    ):
        gguf_shape(gemma)
    with pytest.raises(ModelError, match="sliding-window attention"):
        gguf_shape(Qwen2Config(hidden_size=64, num_attention_heads=4, use_sliding_window=True, sliding_window=16))
    with pytest.raises(ModelError, match="bias terms"):
        gguf_shape(LlamaConfig(hidden_size=64, num_attention_heads=4, attention_bias=True))
    yarn = LlamaConfig(
        hidden_size=64, num_attention_heads=4, rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}
    )
    with pytest.raises(ModelError, match="rope scaling 'yarn'"):
        gguf_shape(yarn)
    with pytest.raises(
        ConfigError,
        match=r"'qtype' \(--type\) is 'q5_k'; allowed values: f32, f16, bf16, q8_0, q4_0, q4_k_m, q5_k_m, q6_k",
    ):
        export_gguf(tiny_run, tmp_path / "x.gguf", "q5_k")
    with pytest.raises(ConfigError, match="ending in .gguf"):
        export_gguf(tiny_run, tmp_path / "x.bin")
    (tmp_path / "taken.gguf").write_text("mine")
    with pytest.raises(RunDirError, match="exists and is not empty.*--overwrite"):
        export_gguf(tiny_run, tmp_path / "taken.gguf")
    assert (tmp_path / "taken.gguf").read_text() == "mine" and not (tmp_path / "taken.Modelfile").exists()
    with pytest.raises(RunDirError, match="no such run directory"):
        export_gguf(tmp_path / "missing", tmp_path / "y.gguf")


def test_a_missing_questions_file_stops_the_export_before_it_writes(tiny_run, tmp_path):
    """The self-check asks the run's eval.questions; when that file is gone the export stops before writing the
    GGUF file (a retry then needs no --overwrite)."""
    pytest.importorskip("llama_cpp")
    import shutil

    from tunelab.config import RunConfig, dump_yaml
    from tunelab.errors import DataError

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    cfg = RunConfig()
    cfg.eval.questions = str(tmp_path / "gone.jsonl")
    (run / "config.yaml").write_text(dump_yaml(cfg))
    with pytest.raises(DataError, match="gone.jsonl"):
        export_gguf(run, tmp_path / "out" / "m.gguf", "f16", check=True)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_the_self_check_of_a_run_without_its_config_is_refused_by_name(tiny_run, tmp_path):
    """The self-check of a run whose config.yaml is gone asked the probe questions in place of the run's
    eval.questions without a word (eval and compare refuse such a run, naming the file): it is refused now, before
    anything is written, and --no-check exports it."""
    pytest.importorskip("llama_cpp")
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "config.yaml").unlink()
    with pytest.raises(RunDirError, match=r"config.yaml: the run's config.yaml is missing; .*--no-check"):
        export_gguf(run, tmp_path / "out" / "m.gguf", "f16")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    assert export_gguf(run, tmp_path / "out" / "m.gguf", "f16", check=False).is_file()


def test_modelfile_speaks_chatml_in_go(tiny_run, tmp_path, small_tokenizer):
    tok = small_tokenizer
    out = export_gguf(tiny_run, tmp_path / "m.gguf", "q8_0", check=False)
    text = (tmp_path / "m.Modelfile").read_text()
    assert (
        "FROM ./m.gguf\n" in text and 'PARAMETER stop "<|im_end|>"' in text and 'PARAMETER stop "<|im_start|>"' in text
    )
    # SmolLM2's template inserts its own system prompt when a conversation has none: the Go template does too
    assert "{{ else }}<|im_start|>system\nYou are a helpful AI assistant named SmolLM" in text
    assert (
        '{{ range .Messages }}{{ if eq .Role "user" }}<|im_start|>user\n{{ .Content }}<|im_end|>\n<|im_start|>assistant\n'
        in text
    )
    assert "SYSTEM" not in text and out.is_file() and not (tmp_path / "m.check.json").exists()

    chatml = resolve_template("chatml", tok)
    with_system = modelfile_text("a.gguf", chatml, tok, "Answer box questions.")
    assert 'SYSTEM """Answer box questions."""' in with_system and "{{ else }}" not in with_system


# --------------------------------------------------------------------------------------------- real llama.cpp


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
def test_llama_cpp_runs_the_tiny_export_like_transformers(tiny_run, tiny_merged, tmp_path, qtype, monkeypatch):
    _llama_cpp()
    merged, expected = tiny_merged
    path = tmp_path / f"tiny-{qtype}.gguf"
    write_gguf(merged, path, qtype, name="tiny")
    llm = _llama(path)
    with torch.no_grad():
        simulated = _simulated(merged.model, qtype)(IDS).logits
    tolerance = LLAMA_CPP_TOLERANCES[qtype]
    for row, ids in enumerate(IDS.tolist()):
        ours = _llama_logits(llm, ids)
        torch.testing.assert_close(ours, simulated[row], rtol=0, atol=tolerance)
        torch.testing.assert_close(ours, expected[row], rtol=0, atol=tolerance + TOLERANCES[qtype])
    if qtype != "f16":
        return
    tok = AutoTokenizer.from_pretrained(tiny_run)
    for text in TEXTS:  # the byte-level BPE and its pre-tokenizer split text as transformers does
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == tok(text)["input_ids"], text
    # The same file with Hugging Face's q/k row order is a different model for llama.cpp: the test can tell.
    monkeypatch.setattr(gguf_export, "permute_rotary_rows", lambda w, n_heads: w)
    write_gguf(merged, tmp_path / "unpermuted.gguf", qtype, name="tiny")
    wrong = _llama_logits(_llama(tmp_path / "unpermuted.gguf"), IDS[0].tolist())
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
def test_llama_cpp_answers_like_transformers_on_smollm2(smollm2_tokenizer, tmp_path, one_torch_thread):
    _llama_cpp()
    tok = smollm2_tokenizer
    run = _lora_run("smollm2-135m-instruct", tok, tmp_path / "run", std=0.03, targets=("q_proj", "v_proj", "down_proj"))
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
