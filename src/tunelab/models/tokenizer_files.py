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
lost) and pushed without it.

A remote-code tokenizer (model.trust_remote_code) has its own Python files, which save_pretrained copies beside the
others (transformers' custom_object_save): the modules its tokenizer_config.json's auto_map names and those they
import relatively. `saved_tokenizer` finds them by that map (`tokenizer_code`), so push uploads them and the pushed
tokenizer loads; their names are the model's own, so they are not in TOKENIZER_ENTRIES: --overwrite counts them as
tunelab's by run.json's record of what the run's save left (training/run_files.py), and refuses a run holding one
not recorded or changed since, naming it, as one holding any other .py file (nothing of the user's is lost).
"""

from __future__ import annotations

import json
import re
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


# Python's relative imports, `from .name import x` and `import .name`, as transformers' get_relative_imports reads them
RELATIVE_IMPORT = re.compile(r"^\s*(?:from\s+\.(\S+)\s+import|import\s+\.(\S+)\s*$)", re.MULTILINE)


def saved_tokenizer(folder: Path) -> dict[str, Path]:
    """The tokenizer files `folder` holds, as {path relative to it, with /: the file}: the files of TOKENIZER_FILES
    at its top, every file under its TOKENIZER_DIRS and a remote-code tokenizer's Python files (`tokenizer_code`),
    sorted by path."""
    found = {name: folder / name for name in TOKENIZER_FILES if (folder / name).is_file()}
    for name in TOKENIZER_DIRS:
        inner = folder / name
        if inner.is_dir() and not inner.is_symlink():
            found |= {p.relative_to(folder).as_posix(): p for p in inner.rglob("*") if p.is_file()}
    return dict(sorted((found | tokenizer_code(folder)).items()))


def tokenizer_code(folder: Path) -> dict[str, Path]:
    """The Python files of a remote-code tokenizer in `folder`, as {name: file}: the modules that the auto_map of its
    tokenizer_config.json names ({"AutoTokenizer": ["tokenization_x.XTokenizer", "tokenization_x_fast.XFast"]}: a
    class "module.Class" or a list of them, null for none) and, as custom_object_save copies them, the modules these
    import relatively, recursively; those present only. A name with a repository before it ("org/repo--module.Class")
    is code of that repository, not of the folder; any other file (a data.transform beside it) is never taken."""
    try:
        config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    auto_map = config.get("auto_map") if isinstance(config, dict) else None
    todo = []  # the modules to take: "tokenization_x" of "tokenization_x.XTokenizer"
    for value in auto_map.values() if isinstance(auto_map, dict) else ():
        classes = [value] if isinstance(value, str) else value if isinstance(value, list) else []
        todo += [c.rpartition(".")[0] for c in classes if isinstance(c, str)]
    found: dict[str, Path] = {}
    while todo:
        module = todo.pop()
        file = folder / f"{module}.py"
        if not module.isidentifier() or f"{module}.py" in found or not file.is_file():
            continue  # a repository's module ("org/repo--module"), one seen, or one the folder lacks
        found[f"{module}.py"] = file
        todo += [a or b for a, b in RELATIVE_IMPORT.findall(file.read_text(encoding="utf-8", errors="replace"))]
    return found
