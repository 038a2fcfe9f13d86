"""tunelab push uploads every tokenizer file a run or merged folder holds: the files of any tokenizer kind and the
additional_chat_templates folder of a dict chat template, the list models/tokenizer_files.py keeps (which
`train --overwrite` counts as tunelab's too), and the Python files of a remote-code tokenizer (which it does not)."""

import json
import shutil
from pathlib import Path

import pytest

import tunelab
from tunelab.cli import main
from tunelab.training.run_files import foreign_entries

from ..smollm2_vocab import (  # noqa: F401 (SmolLM2's vocabulary)
    smollm2_tiny_model_dir,
    smollm2_tiny_run_dir,
    smollm2_tiny_tokenizer,
)

# A SentencePiece tokenizer's files and those transformers 4 wrote (sentencepiece is not installed here: by name)
SENTENCEPIECE = ("tokenizer.model", "spiece.model", "sentencepiece.bpe.model", "special_tokens_map.json")
SENTENCEPIECE += ("added_tokens.json", "chat_template.json", "vocab.txt")


@pytest.fixture
def run(tiny_run_dir, tmp_path):
    return Path(shutil.copytree(tiny_run_dir, tmp_path / "run"))


def test_a_run_pushes_every_file_of_the_embedded_tokenizer_with_its_named_templates(run, hub, smollm2_named_templates):
    saved = {Path(p).relative_to(run).as_posix() for p in smollm2_named_templates.save_pretrained(run)}
    assert "additional_chat_templates/tool_use.jinja" in saved
    assert main(["push", str(run), "--repo", "alice/tiny-box"]) == 0
    assert saved <= set(hub.files), saved - set(hub.files)
    assert hub.files["additional_chat_templates/tool_use.jinja"] == b"{{ messages[0]['content'] }}"
    assert foreign_entries(run) == []  # and a later --overwrite may replace them


def test_a_run_pushes_the_files_of_a_sentencepiece_tokenizer(run, hub):
    for name in SENTENCEPIECE:
        (run / name).write_text(f"{name}\n")
    assert main(["push", str(run), "--repo", "alice/tiny-box"]) == 0
    assert set(SENTENCEPIECE) <= set(hub.files), set(SENTENCEPIECE) - set(hub.files)
    assert all(hub.files[name] == f"{name}\n".encode() for name in SENTENCEPIECE)
    assert foreign_entries(run) == []


def test_a_run_pushes_the_code_of_a_remote_code_tokenizer_and_no_other_python_file(run, hub):
    """A run over a base whose tokenizer has its own code (model.trust_remote_code) holds the files save_pretrained
    copied: those its auto_map names and the modules they import go up, so the pushed tokenizer loads; a data.transform
    beside them does not; --overwrite counts none of them as tunelab's."""
    config = json.loads((run / "tokenizer_config.json").read_text())
    config["auto_map"] = {"AutoTokenizer": ["tokenization_box.BoxTokenizer", "tokenization_box_fast.BoxTokenizerFast"]}
    (run / "tokenizer_config.json").write_text(json.dumps(config))
    code = {
        "tokenization_box.py": "class BoxTokenizer: ...\n",
        "tokenization_box_fast.py": "from .tokenization_box import BoxTokenizer\nfrom .box_words import WORDS\n",
        "box_words.py": "WORDS = ()\n",
    }
    for name, text in {**code, "transform.py": "def transform(row): return row\n"}.items():
        (run / name).write_text(text)
    assert main(["push", str(run), "--repo", "alice/tiny-box"]) == 0
    assert {name: hub.files.get(name) for name in code} == {name: text.encode() for name, text in code.items()}
    assert "transform.py" not in hub.files
    assert foreign_entries(run) == sorted([*code, "transform.py"])


def test_a_merged_folder_pushes_its_named_templates(run, hub, smollm2_named_templates, tmp_path):
    smollm2_named_templates.save_pretrained(run)
    merged = tunelab.merge(run, tmp_path / "merged")
    assert (merged / "additional_chat_templates" / "tool_use.jinja").is_file()
    assert "additional_chat_templates" in json.loads((merged / "tunelab_merge.json").read_text())["files"]
    assert main(["push", str(merged), "--repo", "alice/tiny-merged"]) == 0
    pushed = hub.files["additional_chat_templates/tool_use.jinja"]
    assert pushed == (merged / "additional_chat_templates" / "tool_use.jinja").read_bytes()
    assert pushed.endswith(b"{{ messages[0]['content'] }}")  # with the run's reading of a blank system message


def test_a_run_over_a_base_with_named_templates_keeps_and_pushes_them(tiny_model_dir, tiny_overrides, hub, tmp_path):
    """The whole path: a base whose tokenizer folder holds additional_chat_templates/ trains, its run saves the named
    template (with the run's system prompt), --overwrite counts it as tunelab's and push uploads it."""
    from tunelab.training.recipe import train

    base = Path(shutil.copytree(tiny_model_dir, tmp_path / "base"))
    (base / "additional_chat_templates").mkdir()
    (base / "additional_chat_templates" / "tool_use.jinja").write_text("{{ messages[0]['content'] }}")
    overrides = tiny_overrides | {"model.name": str(base), "train.max_steps": 1}
    run = train(None, overrides).run_dir
    saved = run / "additional_chat_templates" / "tool_use.jinja"
    assert (
        saved.read_text().endswith("{{ messages[0]['content'] }}") and "You answer box questions." in saved.read_text()
    )
    assert foreign_entries(run) == []
    assert main(["push", str(run), "--repo", "alice/tiny-box"]) == 0
    assert hub.files["additional_chat_templates/tool_use.jinja"] == saved.read_bytes()
    assert train(None, overrides | {"overwrite": True}).run_dir == run  # replaced, nothing of the user's in it
