"""The files and folders a tokenizer's `save_pretrained` writes: the one list that `tunelab push` uploads from a run
and that `train --overwrite` counts as tunelab's (training/run_files.py).

transformers 5 writes, for a fast tokenizer (TokenizersBackend: what the models tunelab trains load as)
tokenizer_config.json, chat_template.jinja, additional_chat_templates/NAME.jinja (the named templates of a dict
chat_template besides "default") and tokenizer.json; a SentencePiece or Python tokenizer writes its
`vocab_files_names` (tokenizer.model, spiece.model, vocab.json + merges.txt, ...) and added_tokens.json instead of
tokenizer.json. transformers 4 wrote special_tokens_map.json too, a fast tokenizer also its slow files where it
could (`legacy_format` unset), and processors their template as chat_template.json.

The vocabulary names are those of the decoder families' tokenizers (Llama, Mistral, Gemma, Qwen, GPT-2, ... and the
BERT-style vocab.txt); the rarer names of encoder and translation tokenizers (bpe.codes, dict.txt, source.spm, ...)
are left out, since a user may keep a file of that name: a run holding one is refused by --overwrite (nothing is
lost) and pushed without it. Nor is the Python file a remote-code tokenizer copies beside its files.
"""

from __future__ import annotations

from pathlib import Path

TOKENIZER_FILES = (
    "tokenizer_config.json",
    "tokenizer.json",  # a fast tokenizer's whole state
    "chat_template.jinja",
    "chat_template.json",  # a processor's template (transformers 4)
    "special_tokens_map.json",  # transformers 4
    "added_tokens.json",  # a slow tokenizer's tokens past its vocabulary
    "tokenizer.model",  # SentencePiece: Llama, Mistral, Gemma 1 ...
    "spiece.model",  # SentencePiece: T5, ALBERT, ...
    "sentencepiece.bpe.model",  # SentencePiece BPE: XGLM, XLM-R, ...
    "vocab.json",  # byte-level BPE (GPT-2, Qwen2, ...) with merges.txt
    "merges.txt",
    "vocab.txt",  # WordPiece
)
TOKENIZER_DIRS = ("additional_chat_templates",)  # transformers' CHAT_TEMPLATE_DIR: NAME.jinja per named template
TOKENIZER_ENTRIES = TOKENIZER_FILES + TOKENIZER_DIRS


def saved_tokenizer(folder: Path) -> dict[str, Path]:
    """The tokenizer files `folder` holds, as {path relative to it, with /: the file}: the files of TOKENIZER_FILES
    at its top and every file under its TOKENIZER_DIRS, sorted by path."""
    found = {name: folder / name for name in TOKENIZER_FILES if (folder / name).is_file()}
    for name in TOKENIZER_DIRS:
        inner = folder / name
        if inner.is_dir() and not inner.is_symlink():
            found |= {p.relative_to(folder).as_posix(): p for p in inner.rglob("*") if p.is_file()}
    return dict(sorted(found.items()))
