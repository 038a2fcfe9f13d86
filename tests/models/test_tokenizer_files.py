"""The one list of what a tokenizer's save_pretrained writes (models/tokenizer_files.py), against what transformers
names and what a real save writes; `tunelab push` uploads these files (tests/export/test_push_tokenizer.py) and
`train --overwrite` counts them as tunelab's (training/run_files.py)."""

from tunelab.models.load import TOKENIZER_MARKERS
from tunelab.models.tokenizer_files import TOKENIZER_DIRS, TOKENIZER_ENTRIES, TOKENIZER_FILES, saved_tokenizer
from tunelab.training.run_files import foreign_entries

# What a SentencePiece or WordPiece tokenizer, or transformers 4, leaves in a folder (none of it loadable here
# without the sentencepiece package, so by name)
OTHER_KINDS = (
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "vocab.txt",
)


def test_the_list_holds_the_names_transformers_gives_the_decoder_tokenizers():
    import transformers
    from transformers import tokenization_utils_base as base
    from transformers.utils import hub

    named = {base.TOKENIZER_CONFIG_FILE, base.FULL_TOKENIZER_FILE, base.SPECIAL_TOKENS_MAP_FILE}
    named |= {base.ADDED_TOKENS_FILE, hub.CHAT_TEMPLATE_FILE, hub.LEGACY_PROCESSOR_CHAT_TEMPLATE_FILE}
    for kind in ("Llama", "CodeLlama", "Gemma", "Qwen2", "GPT2", "GPTNeoX", "Cohere", "T5", "XLMRoberta", "Bert"):
        named |= set(getattr(transformers, f"{kind}Tokenizer").vocab_files_names.values())
    assert named <= set(TOKENIZER_FILES), named - set(TOKENIZER_FILES)
    assert hub.CHAT_TEMPLATE_DIR in TOKENIZER_DIRS
    assert set(TOKENIZER_MARKERS) <= set(TOKENIZER_FILES)  # the loader's marker files are among them


def test_every_file_the_embedded_tokenizer_saves_is_listed(smollm2_named_templates, tmp_path):
    written = smollm2_named_templates.save_pretrained(tmp_path)
    relative = {p.relative_to(tmp_path).as_posix() for p in map(type(tmp_path), written)}
    assert "additional_chat_templates/tool_use.jinja" in relative and "tokenizer.json" in relative
    assert set(saved_tokenizer(tmp_path)) == relative
    assert {p.name for p in tmp_path.iterdir()} <= set(TOKENIZER_ENTRIES)
    assert foreign_entries(tmp_path) == []


def test_the_files_of_other_tokenizer_kinds_are_found(tmp_path):
    for name in OTHER_KINDS:
        (tmp_path / name).write_text("{}")
    (tmp_path / "notes.txt").write_text("mine")
    assert set(saved_tokenizer(tmp_path)) == set(OTHER_KINDS)
    assert foreign_entries(tmp_path) == ["notes.txt"]
