"""The one list of what a tokenizer's save_pretrained writes (models/tokenizer_files.py), against what transformers
names and what a real save writes; `tunelab push` uploads these files (tests/export/test_push_tokenizer.py) and
`train --overwrite` counts them as tunelab's (training/run_files.py)."""

import json

import pytest

from tunelab.models.load import TOKENIZER_MARKERS
from tunelab.models.tokenizer_files import (
    TOKENIZER_DIRS,
    TOKENIZER_ENTRIES,
    TOKENIZER_FILES,
    saved_tokenizer,
    tokenizer_code,
)
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


@pytest.fixture
def remote_code_tokenizer(tmp_path, monkeypatch):
    """A tokenizer folder with its own code, as a hub model with remote code has: tokenization_box.py, named by its
    auto_map, importing box_vocab.py relatively, and a notes.py beside them that nothing names; transformers' module
    cache in tmp_path, its modules dropped after the test."""
    import sys

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, dynamic_module_utils

    monkeypatch.setattr(dynamic_module_utils, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    monkeypatch.setattr(sys, "path", list(sys.path))
    folder = tmp_path / "box"
    vocab = Tokenizer(models.WordLevel({"[UNK]": 0, "box": 1, "lid": 2}, unk_token="[UNK]"))
    vocab.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=vocab, unk_token="[UNK]").save_pretrained(folder)
    _add_box_code(folder)
    (folder / "notes.py").write_text("print('mine')\n")
    yield folder
    for name in [m for m in sys.modules if m.startswith("transformers_modules")]:
        del sys.modules[name]


def _add_box_code(folder):
    """The tokenizer saved in `folder` made one with its own code: tokenization_box.py (BoxTokenizerFast, a fast
    tokenizer with a `words` attribute), named by the auto_map of its tokenizer_config.json, and box_vocab.py, which
    it imports relatively."""
    (folder / "tokenization_box.py").write_text(
        "from transformers import PreTrainedTokenizerFast\n\nfrom .box_vocab import WORDS\n\n\n"
        "class BoxTokenizerFast(PreTrainedTokenizerFast):\n    words = WORDS\n"
    )
    (folder / "box_vocab.py").write_text('WORDS = ("box", "lid")\n')
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("tokenizer_class", None)
    config["auto_map"] = {"AutoTokenizer": [None, "tokenization_box.BoxTokenizerFast"]}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))


def test_a_remote_code_tokenizer_s_own_files_are_found_by_its_auto_map(remote_code_tokenizer, tmp_path):
    """save_pretrained of a tokenizer loaded with trust_remote_code copies the module its auto_map names and the one
    that module imports; saved_tokenizer (what push uploads) finds both, and no other Python file of the folder, and
    --overwrite counts none of them as tunelab's by name (their names are the model's)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(remote_code_tokenizer, trust_remote_code=True)
    assert type(tokenizer).__name__ == "BoxTokenizerFast" and tokenizer.words == ("box", "lid")
    assert set(tokenizer_code(remote_code_tokenizer)) == {"tokenization_box.py", "box_vocab.py"}
    saved = tmp_path / "saved"
    tokenizer.save_pretrained(saved)
    on_disk = {p.name for p in saved.iterdir()}
    assert {"tokenization_box.py", "box_vocab.py"} <= on_disk and "notes.py" not in on_disk
    assert set(saved_tokenizer(saved)) == on_disk
    assert foreign_entries(saved) == ["box_vocab.py", "tokenization_box.py"]  # no run.json records them
    loaded = AutoTokenizer.from_pretrained(saved, trust_remote_code=True)  # what the pushed files load as
    assert type(loaded).__name__ == "BoxTokenizerFast" and loaded("box lid")["input_ids"] == [1, 2]


def test_only_the_code_the_auto_map_names_is_taken(tmp_path):
    """A map of one class string, a repository's module, a module the folder lacks, an import cycle and a name that is
    not a module: the folder's own modules that are named or imported, nothing else."""
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "auto_map": {
                    "AutoTokenizer": "tok_a.A",
                    "AutoProcessor": ["other/repo--proc.P", "missing.M", "../up.X", None, 3],
                }
            }
        )
    )
    (tmp_path / "tok_a.py").write_text("import .tok_b\n")
    (tmp_path / "tok_b.py").write_text("from .tok_a import A\nfrom .gone import G\n")
    for name in ("proc.py", "up.py", "transform.py"):
        (tmp_path / name).write_text("")
    assert set(tokenizer_code(tmp_path)) == {"tok_a.py", "tok_b.py"}
    assert set(saved_tokenizer(tmp_path)) == {"tokenizer_config.json", "tok_a.py", "tok_b.py"}
    (tmp_path / "tokenizer_config.json").write_text("[1]")
    assert tokenizer_code(tmp_path) == {}


def test_overwrite_takes_the_code_a_run_saved_as_its_own_and_refuses_a_py_of_the_users(
    remote_code_tokenizer, tiny_model_dir, tiny_overrides, tmp_path
):
    """A run over a base whose tokenizer has its own code (model.trust_remote_code) saves that code beside its
    tokenizer and records it in run.json (result_files); --overwrite replaces it. A .py file put there by the user,
    or one of the run's changed since, is refused by name, and nothing is replaced."""
    import os
    import shutil

    from tunelab.errors import RunDirError
    from tunelab.training.outdir import plan_output_dir
    from tunelab.training.recipe import train

    base = shutil.copytree(tiny_model_dir, tmp_path / "box-base")
    _add_box_code(base)
    overrides = tiny_overrides | {"model.name": str(base), "model.trust_remote_code": True, "train.max_steps": 1}
    run = train(None, overrides).run_dir
    code = {"tokenization_box.py", "box_vocab.py"}
    assert code <= {p.name for p in run.iterdir()}
    assert code <= set(json.loads((run / "run.json").read_text())["result_files"])
    assert foreign_entries(run) == []
    train(None, overrides | {"overwrite": True})  # the run replaced, its code with it
    assert foreign_entries(run) == [] and not run.with_name("run.previous").exists()

    def replace():
        return plan_output_dir(run, overwrite=True, resume=False, protected={})

    (run / "notes.py").write_text("print('mine')\n")
    with pytest.raises(RunDirError, match=r"holds 1 file or folder \(notes.py\) that tunelab did not write"):
        replace()
    (run / "notes.py").unlink()
    vocab = run / "box_vocab.py"
    saved, stat = vocab.read_text(), vocab.stat()
    vocab.write_text(saved.replace("lid", "lId"))  # edited since the save (the same size)
    with pytest.raises(RunDirError, match=r"\(box_vocab.py\) that tunelab did not write"):
        replace()
    assert "lId" in vocab.read_text()
    vocab.write_text(saved)
    os.utime(vocab, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # put back as the save left it
    assert replace().replace
