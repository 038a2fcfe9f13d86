"""Inference on a run directory: compare scores, one-shot generation, and the interactive chat loop."""

import io
import json
import re

import pytest

import tunelab
from tunelab.errors import DataError, RunDirError
from tunelab.eval.compare import Row, score
from tunelab.eval.metrics import contains
from tunelab.eval.questions import read_questions
from tunelab.infer.chat import chat
from tunelab.infer.generate import GenerationSettings
from tunelab.infer.run import open_run

SHORT = GenerationSettings(max_new_tokens=4)


def test_contains_scoring_and_refusal_rates():
    assert contains("Tallowmere was founded in  1997.", "founded in 1997")
    assert not contains("It was 1996.", "1997")
    rows = [
        Row("q1", "1997", "fact", base="no idea", tuned="In 1997.", base_ok=False, tuned_ok=True),
        Row("q2", "Dundee", "fact", base="Sorry, I can only", tuned="In Perth.", base_ok=False, tuned_ok=False),
        Row(
            "q3",
            "Sorry, I can only",
            "off_topic",
            base="Paris",
            tuned="sorry, i can only help",
            base_ok=False,
            tuned_ok=True,
        ),
    ]
    scores = score(rows, refusal="Sorry, I can only")
    assert scores["fact"] == {"n": 2, "base": 0.0, "tuned": 0.5, "base_refused": 0.5, "tuned_refused": 0.0}
    assert scores["off_topic"]["tuned_refused"] == 1.0 and scores["off_topic"]["base"] == 0.0


def test_questions_file_errors_are_located(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"question": "ok?"}) + "\n" + json.dumps({"prompt": ""}) + "\n")
    with pytest.raises(DataError, match=r"q\.jsonl:2: field 'prompt' must be non-empty"):
        read_questions(path)
    path.write_text(json.dumps({"question": "ok?", "expected": ""}) + "\n")
    with pytest.raises(DataError, match="expected"):
        read_questions(path)


def test_compare_generate_and_chat_on_a_run(tiny_run_dir):
    run = open_run(tiny_run_dir, device="cpu")
    result = tunelab.compare(run, question=["Code of box 3?"], settings=SHORT, save=False)
    assert len(result.rows) == 1 and result.rows[0].kind == "all"
    assert isinstance(tunelab.generate(run, "Code of box 2?", settings=SHORT), str)
    assert isinstance(tunelab.generate(run, "Code of box 2?", base=True, settings=SHORT), str)

    inputs = iter(["Code of box 1?", "/reset", "", "Code of box 5?", "/exit"])
    out = io.StringIO()
    history = chat(run, SHORT, read=lambda prompt: next(inputs), out=out)
    assert [m["role"] for m in history] == ["user", "assistant"]  # /reset dropped the first exchange
    assert history[0]["content"] == "Code of box 5?"
    assert out.getvalue().count("model> ") == 2


def test_unfinished_or_foreign_directories_are_refused(tmp_path, tiny_run_dir):
    with pytest.raises(RunDirError, match="no such run directory"):
        open_run(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunDirError, match="not a tunelab run directory"):
        open_run(tmp_path / "empty")
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    info = json.loads((tiny_run_dir / "run.json").read_text()) | {"finished": False}
    (unfinished / "run.json").write_text(json.dumps(info))
    with pytest.raises(RunDirError, match="did not finish"):
        open_run(unfinished)
    noadapter = tmp_path / "noadapter"
    noadapter.mkdir()
    (noadapter / "run.json").write_text(json.dumps(info | {"finished": True}))
    with pytest.raises(RunDirError, match="adapter is incomplete"):
        open_run(noadapter)


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        ({"repetition_penalty": 0.0}, "repetition_penalty is 0.0; it must be above 0"),
        ({"temperature": float("nan")}, "temperature is nan"),
        ({"top_p": 1.5}, "top_p is 1.5; it must be in (0, 1]"),
        ({"max_new_tokens": 0}, "max_new_tokens is 0"),
    ],
)
def test_generation_settings_out_of_range_are_refused_when_made(settings, says):
    """Before any model runs: transformers would raise mid-answer (chat's worker thread, a server's 500)."""
    from tunelab.errors import ConfigError

    with pytest.raises(ConfigError, match=re.escape(says)):
        GenerationSettings(**settings)
