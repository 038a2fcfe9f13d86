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


def _gguf_named(tok, pre: str, folder, monkeypatch, named: bool = True):
    """A 2-layer random Llama as a GGUF file whose tokenizer.ggml.pre is `pre` (none where `named` is False: the
    caller stubbed the writer's add_tokenizer_pre)."""
    from tunelab.export import gguf as export_gguf

    from ..conftest import _tiny_llama_config

    monkeypatch.setattr(export_gguf, "source_pre_tokenizer", lambda base: pre)
    torch.manual_seed(0)
    merged = SimpleNamespace(
        model=LlamaForCausalLM(_tiny_llama_config(tok)).eval(),
        tokenizer=tok,
        info=SimpleNamespace(base_model="tiny"),
        base_info=SimpleNamespace(base_model="tiny"),
        template=SimpleNamespace(stop_token_ids=[tok.eos_token_id]),
    )
    path = folder / f"{pre}.gguf"
    export_gguf.write_gguf(merged, path, "f32", pre)
    assert read_gguf_string(path, "tokenizer.ggml.pre") == (pre if named else None)
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
    path = _gguf_named(split_tokenizer, "tiny_aya", tmp_path, monkeypatch)
    materialize(resolve_source(str(path)))
    err = capsys.readouterr().err
    assert "tokenizer.ggml.pre is 'tiny_aya'" in err and "may differ from llama.cpp's" in err
    assert "tiny_aya" not in SPLITS


# Digits (runs of 1 to 7, after spaces, next to letters, other scripts' digits), CJK with its punctuation, runs of
# ASCII and full-width punctuation, apostrophes, newlines and carriage returns, runs of spaces and non-ASCII whitespace
# (U+00A0, U+3000, U+2003), text in scripts with combining marks.
TRICKY = [
    "Call 0800 123 4567, or  99 bottles; 3.14159 and 1,000,000 and x2y3 and 1234567.",
    "中文文本，测试。日本語のテキスト、カタカナ！한국어 문장입니다. 混合English与中文123 \U00020000\U00020001x",
    'Punctuation!!! ... ?! -- (a) [b] {c} "d" «e» …\u3000全角\u3000空格\u00a0nbsp\u2003em ~~~ ~a a~ 1~2 $x+y <= z',
    "I'm sure it's DON'T they'll we've you'd 'S 'LL it'\u017f\n\n\n  indented\r\n\tTabbed\r\rx\n\n  \n end   ",
    "مرحبا، عالم۔ हिन्दी। Привет, мир! 123٤٥ १२३ abc123def 12é ½ ² Ⅻ ＡＢＣ１２３ ﬁne",
    "def f(x):\n    return x**2 + 10  # 2024-12-05 <sentinel:12> IMGIMGABZ x    y  z\t\tw" + " " * 37 + "end",
]


@pytest.fixture(scope="module")
def unsplit_tokenizer():
    """A byte-level BPE tokenizer whose merges were learnt with no split at all, so they join across every place a
    split could part the TRICKY texts: two splits that part one otherwise give other token ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=3000,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        max_token_length=12,
    )
    tok.train_from_iterator(TRICKY * 3, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>"
    )


# one name for each list of several regexes in llama.cpp's llm_tokenizer_bpe, and the names of one regex transformers
# does not know (bloom's, ...), kimi-k2's hand-written split among them
BUILT = [
    "deepseek-llm",
    "deepseek-coder",
    "deepseek-v3",
    "spark2_5",
    "youtu",
    "falcon",
    "bloom",
    "viking",
    "chameleon",
    "superbpe",
    "laguna",
    "minicpm5",
    "afmoe",
    "default",
    "jais-2",
    "bailingmoe",
    "exaone-moe",
    "granite-embed-multi-97m",
    "kimi-k2",
]


@pytest.mark.parametrize("pre", BUILT)
def test_a_split_transformers_does_not_know_is_llama_cpps(pre, unsplit_tokenizer, tmp_path, monkeypatch):
    """Each regex of llama.cpp's list splits the pieces the ones before it left; transformers gave these names GPT-2's
    split."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="the reference split is llama.cpp's")
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    path = _gguf_named(unsplit_tokenizer, pre, tmp_path, monkeypatch)
    ours = AutoTokenizer.from_pretrained(materialize(resolve_source(str(path))))
    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    for text in TRICKY:
        ids = ours(text, add_special_tokens=False)["input_ids"]
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == ids, (pre, text)


@pytest.mark.parametrize("pre", ["gpt-4o", "tekken"])
def test_gpt_4o_and_tekken_split_as_llama_cpp_reads_their_regexes(pre, unsplit_tokenizer, tmp_path, monkeypatch):
    """llama.cpp reads [\\p{Lu}...\\p{M}] as 'a letter not a-z': a combining mark (Devanagari's, Khmer's) is not part of
    the word; and it spells the contractions out in cases, where (?i:'s) also took the long s ('\\u017f')."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="the reference split is llama.cpp's")
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    path = _gguf_named(unsplit_tokenizer, pre, tmp_path, monkeypatch)
    ours = AutoTokenizer.from_pretrained(materialize(resolve_source(str(path))))
    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    for text in TRICKY:
        ids = ours(text, add_special_tokens=False)["input_ids"]
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == ids, (pre, text)


def test_every_alias_of_a_list_splits_as_its_name():
    """llama.cpp maps several names to one regex list (llama_vocab::impl::load)."""
    for alias, name in [
        ("hunyuan-dense", "deepseek-v3"),
        ("joyai-llm", "deepseek-v3"),
        ("hy_v4", "deepseek-v3"),
        ("poro-chat", "bloom"),
        ("gpt3-finnish", "bloom"),
        ("bailingmoe2", "bailingmoe"),
        ("llada-moe", "bailingmoe"),
    ]:
        assert SPLITS[alias] == SPLITS[name], alias


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


@pytest.mark.parametrize("pre", ["falcon", "deepseek-coder"])
def test_the_converted_tokenizer_decodes_as_llama_cpp_generates(pre, unsplit_tokenizer, tmp_path, monkeypatch):
    """llama.cpp's clean_spaces (on for falcon, off for deepseek-coder) acts in llama_detokenize alone; the text it
    generates joins the tokens' pieces, spaces before punctuation and apostrophes kept, as the converted decode does."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="the reference pieces are llama.cpp's")
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    path = _gguf_named(unsplit_tokenizer, pre, tmp_path, monkeypatch)
    ours = AutoTokenizer.from_pretrained(materialize(resolve_source(str(path))))
    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    text = "Hello , world . It 's ok ? yes ! I ' m here"
    ids = ours(text, add_special_tokens=False)["input_ids"]
    assert ours.decode(ids) == llm.detokenize(ids).decode() == text


def test_a_file_naming_no_pre_tokenizer_splits_as_llama_cpp_s_default(unsplit_tokenizer, tmp_path, monkeypatch, capsys):
    """llama.cpp splits a byte-level file without tokenizer.ggml.pre by its 'default' regexes; tunelab did by
    transformers' GPT-2 split."""
    import gguf

    llama_cpp = pytest.importorskip("llama_cpp", reason="the reference split is llama.cpp's")
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(gguf.GGUFWriter, "add_tokenizer_pre", lambda self, pre: None)
    path = _gguf_named(unsplit_tokenizer, "none", tmp_path, monkeypatch, named=False)
    ours = AutoTokenizer.from_pretrained(materialize(resolve_source(str(path))))
    assert "it names no pre-tokenizer (tokenizer.ggml.pre)" in capsys.readouterr().err
    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    for text in TRICKY:
        ids = ours(text, add_special_tokens=False)["input_ids"]
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == ids, text
