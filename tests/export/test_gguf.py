"""export_gguf: the file transformers reads back gives the merged model's logits (q/k permutation, names, metadata),
quantized types round exactly as the gguf package's (de)quantizers say, the Modelfile says ChatML in Go, and bad input
is refused. A real llama.cpp reading the files: test_gguf_llama_cpp.py."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, Gemma3TextConfig, LlamaConfig, Qwen2Config

from tunelab.config import RunConfig, dump_yaml
from tunelab.data.templates import resolve_template, with_system_default
from tunelab.errors import ConfigError, ModelError, RunDirError
from tunelab.export.gguf import export_gguf, gguf_shape, permute_rotary_rows
from tunelab.export.gguf_vocab import read_gguf_string
from tunelab.export.merge import merged_model
from tunelab.export.modelfile import modelfile_parameters, modelfile_stops, modelfile_text, sampling_parameters
from tunelab.models.load import resolve_source

SMALL_VOCAB = 2048  # the small tokenizer's size (tests/export/conftest.py)


def test_permutation_interleaves_each_heads_halves(gguf_kit):
    w = torch.arange(8.0).reshape(8, 1)  # 2 heads of 4 rows: (0 1 | 2 3), (4 5 | 6 7) in rotate-half layout
    assert permute_rotary_rows(w, 2).flatten().tolist() == [0, 2, 1, 3, 4, 6, 5, 7]
    assert torch.equal(gguf_kit.unpermute(permute_rotary_rows(w, 2), 2), w)


@pytest.mark.parametrize("qtype", ["f16", "q8_0"])
def test_transformers_reads_back_the_merged_model(gguf_kit, tiny_run, tiny_merged, tmp_path, qtype):
    merged, expected = tiny_merged
    out = export_gguf(tiny_run, tmp_path / f"tiny-{qtype}.gguf", qtype, check=False).path
    # transformers un-permutes q and k when it reads a llama GGUF, so this also checks the permutation's inverse
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=out.name, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = loaded(gguf_kit.ids).logits
        simulated = gguf_kit.simulated(merged.model, qtype)(gguf_kit.ids).logits
    # The file holds exactly the rounded weights: the same model up to fp32 summation order.
    torch.testing.assert_close(logits, simulated, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logits, expected, rtol=0, atol=gguf_kit.tolerances[qtype])


def test_an_upper_case_suffix_is_a_gguf_file_too(tiny_run, tmp_path):
    out = export_gguf(tiny_run, tmp_path / "Tiny.GGUF", "f32", check=False).path
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
    assert "ollama create b -f b.Modelfile" in (tmp_path / "b.Modelfile").read_text()
    printed = capsys.readouterr().out
    assert f"Ollama: ollama create b -f {tmp_path / 'b.Modelfile'}\nmodel card: {tmp_path / 'b.README.md'}" in printed
    assert not (tmp_path / "Modelfile").exists()


def test_overwrite_replaces_only_what_an_export_wrote(tiny_run, tmp_path):
    """`export --overwrite` replaced whatever held the four names an export writes: a Modelfile or card of the user's
    own beside the GGUF (names the user never typed), or a GGUF file that tunelab never wrote. It now replaces only
    the files of an earlier export (the Modelfile by its first line, the card by its front matter, the verdict by its
    keys, the GGUF by tunelab's Modelfile naming it) and refuses the rest, naming the file, before writing anything."""
    first = export_gguf(tiny_run, tmp_path / "a.gguf", "f32", check=False).path
    (tmp_path / "a.check.json").write_text(json.dumps({"gguf": "a.gguf", "verdict": "pass"}))
    from gguf import GGUFReader

    again = export_gguf(tiny_run, tmp_path / "a.gguf", "f16", overwrite=True, check=False).path  # an export's files
    assert again == first and GGUFReader(again).fields["general.file_type"].contents() == 1
    assert not (tmp_path / "a.check.json").exists()  # the verdict about the file replaced

    written = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    theirs = {
        "a.Modelfile": "FROM ./a.gguf\nSYSTEM mine\n",
        "a.README.md": "# My model\n",
        "a.check.json": "my notes",
    }
    for name, text in theirs.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(RunDirError, match=rf"{name}: exists and was not written by tunelab export; overwrite=True"):
            export_gguf(tiny_run, tmp_path / "a.gguf", "f16", overwrite=True, check=False)
        assert (tmp_path / name).read_text() == text and (tmp_path / "a.gguf").read_bytes() == written["a.gguf"]
        (tmp_path / name).unlink()
        if name in written:
            (tmp_path / name).write_bytes(written[name])

    (tmp_path / "mine.gguf").write_bytes(written["a.gguf"])  # a GGUF file no export of that name wrote
    with pytest.raises(RunDirError, match="mine.gguf: exists and was not written by tunelab export"):
        export_gguf(tiny_run, tmp_path / "mine.gguf", "f16", overwrite=True, check=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*written, "mine.gguf"])


def test_metadata_tokenizer_and_tensor_names(tiny_run, tmp_path, small_tokenizer, sharp_base):
    from gguf import GGUFReader

    out = export_gguf(tiny_run, tmp_path / "tiny.gguf", "f16", check=False).path
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
    assert f["tokenizer.ggml.model"] == "gpt2" and f["tokenizer.ggml.pre"] == "smollm"  # digits alone, then GPT-2
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
    # the run's template as training read conversations (an empty system message is none: export/merge.py)
    template = with_system_default(tok.chat_template, None)
    assert f["tokenizer.chat_template"] == template and template.endswith(tok.chat_template)
    # the header scanner used for the base model's pre-tokenizer reads past the token and merge arrays correctly
    assert read_gguf_string(out, "tokenizer.chat_template") == template
    assert read_gguf_string(out, "tokenizer.ggml.pre") == "smollm" and read_gguf_string(out, "no.such.key") is None
    names = {t.name for t in reader.tensors}
    per_layer = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down", "attn_norm", "ffn_norm"]
    assert names == {"token_embd.weight", "output_norm.weight"} | {
        f"blk.{i}.{n}.weight" for i in range(2) for n in per_layer
    }
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == "F16" and types["blk.0.attn_norm.weight"] == "F32"


def test_the_files_chat_template_writes_the_runs_system_prompt(gguf_kit, sharp_base, small_tokenizer, tmp_path):
    """llama.cpp, llama-cpp-python and LM Studio prompt with the file's tokenizer.chat_template: without the run's
    data.system_prompt in it, a conversation without a system message got SmolLM2's default one, not the prompt the
    run trained with."""
    from jinja2 import Template

    prompt = 'You answer box questions, "briefly".'
    run = gguf_kit.lora_run(sharp_base, small_tokenizer, tmp_path / "run", std=0.05, system_prompt=prompt)
    out = export_gguf(run, tmp_path / "run.gguf", "f16", check=False).path
    template = read_gguf_string(out, "tokenizer.chat_template")
    text = Template(template).render(messages=[{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    assert text.startswith(f"<|im_start|>system\n{prompt}<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n")


def test_a_tokenizer_with_templates_by_name_exports_each(gguf_kit, sharp_base, small_tokenizer, tmp_path):
    """A run whose tokenizer holds its chat templates by name (default, tool_use) failed to export: gguf's writer
    read the dict's keys as templates. The file now holds the default as tokenizer.chat_template and the others as
    tokenizer.chat_template.NAME, as llama.cpp's own converter writes them."""
    own = small_tokenizer.chat_template
    small_tokenizer.chat_template = {"default": own, "tool_use": "{{ messages[0]['content'] }}"}
    try:
        run = gguf_kit.lora_run(sharp_base, small_tokenizer, tmp_path / "run", std=0.05)
    finally:
        small_tokenizer.chat_template = own
    out = export_gguf(run, tmp_path / "run.gguf", "f16", check=False).path
    assert read_gguf_string(out, "tokenizer.chat_template") == with_system_default(own, None)
    named = read_gguf_string(out, "tokenizer.chat_template.tool_use")
    assert named == with_system_default("{{ messages[0]['content'] }}", None)


def test_the_card_says_what_the_modelfile_leaves_out(gguf_kit, sharp_base, small_tokenizer, tmp_path):
    """A system prompt holding triple quotes is left out of the Modelfile with a comment (and so is the TEMPLATE,
    whose default system block holds it too), but the GGUF's card still said the Modelfile 'holds the template, stop
    tokens, sampling and system prompt'. The card now says what it holds, and why the rest is not there; a prompt the
    TEMPLATE carries (escaped) is held."""
    for prompt, holds in [
        ('Quote as """x""".', "the stop tokens and sampling"),
        ("Box\u200bquestions.", "the template, stop tokens, sampling and system prompt"),
    ]:
        run = gguf_kit.lora_run(sharp_base, small_tokenizer, tmp_path / prompt[:3], std=0.05, system_prompt=prompt)
        export_gguf(run, tmp_path / "m.gguf", "f16", overwrite=True, check=False)
        card = (tmp_path / "m.README.md").read_text()
        assert f"`m.Modelfile` holds {holds}):" in card
        assert ('It has no SYSTEM: the run\'s system prompt holds """, which a Modelfile' in card) == ('"""' in prompt)
        assert ("It has no TEMPLATE: the chat template holds" in card) == ('"""' in prompt)


def test_a_blank_system_prompt_of_an_older_run_is_none_in_the_export(gguf_kit, sharp_base, small_tokenizer, tmp_path):
    """A run that recorded a data.system_prompt of spaces (older versions did) was exported with a system block of
    spaces in the file's chat template and a SYSTEM of spaces in the Modelfile, where training, generate, chat and
    serve add none; the export now writes neither."""
    from jinja2 import Template

    run = gguf_kit.lora_run(sharp_base, small_tokenizer, tmp_path / "run", std=0.05, system_prompt="  \n")
    assert merged_model(run).info.system_prompt is None  # what the export's self-check reads
    out = export_gguf(run, tmp_path / "run.gguf", "f16", check=False).path
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
        match=r"^argument 'qtype' is 'q5_k'; allowed values: f32, f16, bf16, q8_0, q4_0, q4_k_m, q5_k_m, q6_k",
    ):
        export_gguf(tiny_run, tmp_path / "x.gguf", "q5_k")
    with pytest.raises(ConfigError, match="ending in .gguf"):
        export_gguf(tiny_run, tmp_path / "x.bin")
    (tmp_path / "taken.gguf").write_text("mine")
    with pytest.raises(RunDirError, match="taken.gguf: exists and was not written by tunelab export"):
        export_gguf(tiny_run, tmp_path / "taken.gguf")
    assert (tmp_path / "taken.gguf").read_text() == "mine" and not (tmp_path / "taken.Modelfile").exists()
    with pytest.raises(RunDirError, match="no such run directory"):
        export_gguf(tmp_path / "missing", tmp_path / "y.gguf")


def test_a_missing_questions_file_stops_the_export_before_it_writes(tiny_run, tmp_path):
    """The self-check asks the run's eval.questions; when that file is gone the export stops before writing the
    GGUF file (a retry then needs no --overwrite)."""
    pytest.importorskip("llama_cpp")
    import shutil

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
    assert export_gguf(run, tmp_path / "out" / "m.gguf", "f16", check=False).path.is_file()


def test_modelfile_speaks_chatml_in_go(tiny_run, tmp_path, small_tokenizer):
    tok = small_tokenizer
    out = export_gguf(tiny_run, tmp_path / "m.gguf", "q8_0", check=False).path
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


def test_the_modelfile_of_a_grpo_run_answers_greedily_as_chat_and_its_eval_did(tiny_run, tmp_path):
    """The Modelfile of a grpo run sampled at grpo.temperature and top_p, while `tunelab chat`, `generate` and `serve`
    answer it greedily and its eval reward (and train.keep_best) judged greedy answers: Ollama answered otherwise than
    every figure of the run. It answers greedily now, the rollouts' sampling named in the comment, and stops at
    grpo.max_new_tokens."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    cfg = RunConfig()
    cfg.task = "grpo"
    cfg.grpo.temperature, cfg.grpo.top_p, cfg.grpo.max_new_tokens = 0.7, 0.95, 200
    (run / "config.yaml").write_text(dump_yaml(cfg))
    export_gguf(run, tmp_path / "m.gguf", "f16", check=False)
    text = (tmp_path / "m.Modelfile").read_text()
    assert modelfile_parameters(text) == {"temperature": "0", "repeat_penalty": "1", "num_predict": "200"}
    assert (
        "sampled with PARAMETER temperature 0.7, PARAMETER top_p 0.95, PARAMETER top_k 0\nPARAMETER temperature 0\n"
        in text
    )


def test_the_modelfile_of_an_sft_run_answers_as_tunelab_chat_does_by_default(tiny_run, small_tokenizer):
    """The Modelfile of an sft run set the sampling of the base model's generation_config (Qwen's temperature 0.7,
    top_p 0.8) or, for a base without one, nothing (Ollama's temperature 0.8 and repeat_penalty 1.1), while `tunelab
    chat`, `generate` and `serve` answer greedily with no repetition penalty and apply no generation_config: Ollama
    answered otherwise than tunelab and than export's own check. It now sets tunelab's defaults, and says what the
    base's generation_config would sample with."""
    from transformers import GenerationConfig

    tok = small_tokenizer
    chatml = resolve_template("chatml", tok)
    sft = RunConfig()
    qwen = GenerationConfig(do_sample=True, temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.05)
    text = modelfile_text("a.gguf", chatml, tok, None, sampling=sampling_parameters(sft, qwen))
    assert modelfile_parameters(text) == {"temperature": "0", "repeat_penalty": "1"}
    assert "samples instead with PARAMETER temperature 0.7, PARAMETER top_p 0.8, PARAMETER top_k 20, " in text
    assert "PARAMETER repeat_penalty 1.05\nPARAMETER temperature 0\n" in text
    for greedy_base in (GenerationConfig(do_sample=False, temperature=0.7), None):
        plain = modelfile_text("a.gguf", chatml, tok, None, sampling=sampling_parameters(sft, greedy_base))
        assert modelfile_parameters(plain) == {"temperature": "0", "repeat_penalty": "1"}
        assert "generation_config" not in plain and modelfile_stops(plain) == ["<|im_end|>", "<|im_start|>"]
    assert sampling_parameters(None, GenerationConfig()) == []


def test_a_gguf_export_has_a_model_card_beside_it(tiny_run, tmp_path, sharp_base):
    """A GGUF export had no README or model card, unlike a merged folder: nothing beside the file said what it is,
    how it was quantized, which system prompt it expects or how to run it. NAME.README.md says so."""
    import yaml

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps(info | {"system_prompt": "Answer box questions."}))
    export_gguf(run, tmp_path / "box-q8.gguf", "q8_0", check=False)
    card = (tmp_path / "box-q8.README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "gguf" and "q8_0" in front["tags"] and "base_model" not in front
    assert f"`{sharp_base.name}` fine-tuned with tunelab (lora" in card and str(sharp_base) not in card
    assert "`box-q8.gguf`, in `q8_0`" in card and "> Answer box questions.\n" in card
    assert "llama-cli -m box-q8.gguf --jinja -cnv --temp 0" in card
    assert "ollama create box-q8 -f box-q8.Modelfile" in card
    assert "self-check did not run: it was skipped (`check=False`).\n" in card


def test_a_gguf_card_says_why_the_self_check_did_not_run(tiny_run, tmp_path, monkeypatch):
    """The card said the check did not run "(`--no-check`, or llama-cpp-python is not installed)", whichever it was:
    a reader could not tell a file checked by no one for want of llama.cpp from one its exporter chose not to check."""
    from tunelab.cli import main
    from tunelab.export import llama_cpp

    monkeypatch.setattr(llama_cpp, "available", lambda: False)
    export_gguf(tiny_run, tmp_path / "box.gguf", "q8_0")
    card = " ".join((tmp_path / "box.README.md").read_text().split())
    assert "self-check did not run: llama.cpp's Python binding (llama-cpp-python) did not import" in card
    assert "skipped" not in card and llama_cpp.INSTALL.split()[0] in card
    assert main(["export", str(tiny_run), "--gguf", str(tmp_path / "cli.gguf"), "--type", "q8_0", "--no-check"]) == 0
    assert "self-check did not run: it was skipped (`--no-check`).\n" in (tmp_path / "cli.README.md").read_text()


def test_the_printed_ollama_commands_name_the_model_as_ollama_takes_it(tiny_run, tmp_path, capsys):
    """The Modelfile and `tunelab export` said `ollama create NAME -f ...`, a command that fails as printed. They
    give the GGUF's name now, in the characters Ollama takes in a model name."""
    from tunelab.cli import main
    from tunelab.export.modelfile import ollama_name

    assert ollama_name(Path("My Box_v2.Q8.gguf")) == "my-box_v2.q8" and ollama_name(Path("__.gguf")) == "model"
    gguf = tmp_path / "Box Model.gguf"
    assert main(["export", str(tiny_run), "--gguf", str(gguf), "--type", "f32", "--no-check"]) == 0
    line = "ollama create box-model -f 'Box Model.Modelfile'"  # quoted for the shell
    assert line in (tmp_path / "Box Model.Modelfile").read_text().splitlines()[0]
    assert f"Ollama: ollama create box-model -f '{tmp_path / 'Box Model.Modelfile'}'" in capsys.readouterr().out
    assert (
        "ollama create box-model -f 'Box Model.Modelfile'\nollama run box-model\n"
        in (tmp_path / "Box Model.README.md").read_text()
    )


def test_the_gguf_file_asks_llama_cpp_for_greedy_answers(tiny_run, tmp_path):
    """The file set no sampling, so llama.cpp's tools answered at their own defaults (temperature 0.8) while the
    Modelfile, the merged folder and tunelab's eval answer greedily. It carries llama.cpp's general.sampling keys,
    which its tools take as their defaults: temperature 0, no repetition penalty."""
    from gguf import GGUFReader

    out = export_gguf(tiny_run, tmp_path / "greedy.gguf", "q8_0", check=False).path
    fields = GGUFReader(out).fields
    assert fields["general.sampling.temp"].contents() == 0.0
    assert fields["general.sampling.penalty_repeat"].contents() == 1.0


def test_the_sampling_keys_are_written_with_any_gguf_package(tiny_run, tmp_path, monkeypatch):
    """gguf before 0.18 (pyproject allows 0.10) has no GGUFWriter.add_sampling_temp: the export wrote no sampling
    keys there, without a word, while README and the card said the file asks llama.cpp for greedy answers. They are
    written by name now, as float32, the type llama.cpp's converter gives them."""
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    monkeypatch.delattr(GGUFWriter, "add_sampling_temp")
    monkeypatch.delattr(GGUFWriter, "add_sampling_penalty_repeat")
    out = export_gguf(tiny_run, tmp_path / "old-gguf.gguf", "f16", check=False).path
    fields = GGUFReader(out).fields
    for key, value in {"general.sampling.temp": 0.0, "general.sampling.penalty_repeat": 1.0}.items():
        assert fields[key].types == [GGUFValueType.FLOAT32] and fields[key].contents() == value


def test_both_cards_link_a_hub_base_as_fine_tuned(tmp_path):
    """The hub guesses how a repository relates to its base_model from its files, and takes a GGUF for a mere
    quantization of the base: the GGUF of a fine-tuned run was listed as one. Both cards say it is a fine-tune."""
    import yaml

    from tunelab.export.card import gguf_card, model_card
    from tunelab.run_info import RunInfo

    info = RunInfo("HuggingFaceTB/SmolLM2-135M-Instruct", "lora", base_source="hub")
    cards = (
        gguf_card(info, Path("m.gguf"), "q4_k_m", Path("m.Modelfile"), None, None),
        model_card(info, "merged", None, None),
    )
    for card in cards:
        front = yaml.safe_load(card.split("---")[1])
        assert front["base_model"] == info.base_model and front["base_model_relation"] == "finetune"


def test_an_export_that_cannot_fit_its_disk_is_refused_before_it_writes(tiny_run, tmp_path, monkeypatch):
    """An export onto a disk without room wrote until the disk was full and said 'cannot be written (884736 requested
    and 483120 written) ... check the disk and the folder' (numpy's short write names no errno, so nothing said the
    disk was full). It now measures what it will write and refuses first, naming both sizes (exit 2)."""
    import tunelab.atomic
    from tunelab.errors import WriteFailed
    from tunelab.export.gguf import written_bytes

    merged = merged_model(tiny_run)
    shape = gguf_shape(merged.model.config)
    for qtype in ("f16", "q8_0", "q4_0"):  # the estimate covers the file, and not by a disk's worth
        size = export_gguf(tiny_run, tmp_path / f"{qtype}.gguf", qtype, check=False).path.stat().st_size
        assert size <= written_bytes(merged.model, shape, qtype) <= size + 128 * shape.vocab_size + 2**20, qtype
    assert written_bytes(merged.model, shape, "q4_k_m") > written_bytes(merged.model, shape, "f16")  # its f16 too

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(tunelab.atomic.shutil, "disk_usage", lambda _: usage._replace(free=100_000))
    with pytest.raises(WriteFailed, match=r"the f16 export needs about .* MB on its disk, which has 0.1 MB free"):
        export_gguf(tiny_run, tmp_path / "full" / "m.gguf", "f16", check=False)
    assert not (tmp_path / "full").exists()


def test_an_export_without_room_is_refused_before_the_merge(tiny_run, tmp_path, monkeypatch):
    """The room was measured on the merged model, so a disk without it was said only after the minutes a large
    model's merge takes. It is now measured from the model's config first (a k-quant's f16 file counted too): the
    merge never starts, and nothing is written."""
    import tunelab.atomic
    import tunelab.export.gguf
    from tunelab.errors import WriteFailed

    def no_merge(*args, **kwargs):
        raise AssertionError("the merge ran before the room was checked")

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(tunelab.atomic.shutil, "disk_usage", lambda _: usage._replace(free=100_000))
    monkeypatch.setattr(tunelab.export.gguf, "merged_model", no_merge)
    for qtype in ("f16", "q8_0"):
        with pytest.raises(WriteFailed, match=rf"m.gguf: the {qtype} export needs about \d.* which has 0.1 MB free"):
            export_gguf(tiny_run, tmp_path / "out" / "m.gguf", qtype, check=False)
    assert list(tmp_path.iterdir()) == []


def test_a_file_name_the_modelfile_cannot_carry_is_refused(tiny_run, tmp_path):
    """`--gguf $'a\\nb.gguf'` wrote a Modelfile whose FROM line ended at the line break (Ollama then refused 'b.gguf'
    as an unknown command) and a name with other unprinted characters lost them in Ollama's reading. Such a name is
    refused before anything is written, naming the option."""
    for name in ("a\nb.gguf", "a\rb.gguf", "tab\there.gguf", "bell\x07.gguf"):
        with pytest.raises(ConfigError, match=r"^argument 'out': the file name .* Modelfile's FROM line"):
            export_gguf(tiny_run, tmp_path / name, "f16", check=False)
    assert list(tmp_path.iterdir()) == []


def test_the_export_returns_its_self_checks_verdict_and_stands_for_the_file(tiny_run, tmp_path, monkeypatch, capsys):
    """tunelab.export_gguf returned the GGUF path alone: a script learned of a FAIL only by reading NAME.check.json.
    Its result holds the check (verdict and numbers) and the `ollama create` line `tunelab export` prints, and it is
    the file's path where a path is taken; the command's exit code and lines come from the same result."""
    import os

    import tunelab
    import tunelab.export.gguf as gguf_module
    import tunelab.export.llama_cpp as llama_cpp_module
    from tunelab.cli import main
    from tunelab.export.check import GGUFCheck

    monkeypatch.setattr(llama_cpp_module, "available", lambda: True)
    monkeypatch.setattr(gguf_module, "asked_questions", lambda run_dir, limit: ([], "probes"))
    failed = GGUFCheck("Box M.gguf", "f32", "fail", ["differs"], tokens={"texts": 3, "mismatched": [2]})
    monkeypatch.setattr(gguf_module, "check_export", lambda *a: failed)
    out = tmp_path / "Box M.gguf"
    result = tunelab.export_gguf(tiny_run, out, qtype="f32")
    assert result.verdict == "fail" and result.check.problems == ["differs"] and result.unchecked is None
    assert result.check.tokens["mismatched"] == [2]
    assert isinstance(result, os.PathLike) and os.fspath(result) == str(result) == str(out) and Path(result) == out
    with open(result, "rb") as f:
        assert f.read(4) == b"GGUF"
    assert result.modelfile == tmp_path / "Box M.Modelfile" and result.card == tmp_path / "Box M.README.md"
    assert result.ollama_command == f"ollama create box-m -f '{tmp_path / 'Box M.Modelfile'}'"
    capsys.readouterr()
    assert main(["export", str(tiny_run), "--gguf", str(out), "--type", "f32", "--overwrite"]) == 1
    assert f"{out}\nOllama: {result.ollama_command}\nmodel card: {result.card}\n" in capsys.readouterr().out
    skipped = tunelab.export_gguf(tiny_run, out, qtype="f32", overwrite=True, check=False)
    assert skipped.verdict is None and skipped.check is None and "check=False" in skipped.unchecked
