"""A reasoning model's `<think>...</think>` thought is no part of the answer `eval` and `compare` score: a thought
that names the expected text is no hit. The thought is kept apart in eval.json and compare.json and shown apart."""

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tunelab.cli import main
from tunelab.data.reasoning import split_thought
from tunelab.data.templates import resolve_template
from tunelab.eval import compare as compare_module
from tunelab.eval import evaluate as evaluate_module
from tunelab.infer.generate import GenerationSettings, _answer_batch


@pytest.fixture
def questions(tmp_path):
    path = tmp_path / "q.jsonl"
    rows = [{"question": f"Code of box {i}?", "expected": f"{1000 + 37 * i}", "kind": "fact"} for i in range(2)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, [r["expected"] for r in rows]


def _thinking_answers(expected: list[str], monkeypatch, module):
    """Every answer thinks of the expected text and then says another, the tuned model's first, then the base's;
    a base answer says the expected text after its thought."""
    calls = []

    def answers(model, tokenizer, template, conversations, settings, progress=None, names=None, generator=None):
        calls.append(len(conversations))
        if len(conversations) < len(expected):  # eval's 2-token warm-up
            return ["x"] * len(conversations), [False] * len(conversations)
        tuned = len([c for c in calls if c == len(expected)]) == 1
        return [f"<think>\nIt is {e}.\n</think>\n\n{'Not sure.' if tuned else e}" for e in expected], [False] * len(
            expected
        )

    monkeypatch.setattr(module, "generate_answers", answers)


def test_compare_scores_the_answer_without_its_thought(tiny_run_dir, tmp_path, questions, monkeypatch, capsys):
    """A thought naming the expected text counted as a correct answer: the tuned model's "It is 1000." thought
    before "Not sure." scored 100%. It is now no hit; the thought is kept apart in compare.json and shown apart."""
    path, expected = questions
    run = shutil.copytree(tiny_run_dir, tmp_path / "run")
    _thinking_answers(expected, monkeypatch, compare_module)
    assert main(["compare", str(run), "--questions", str(path), "--device", "cpu", "--show-answers"]) == 0
    out = capsys.readouterr().out
    saved = json.loads((run / "compare.json").read_text())
    assert saved["scores"]["fact"]["tuned"] == 0.0 and saved["scores"]["fact"]["base"] == 1.0
    row = saved["rows"][0]
    assert (row["tuned"], row["tuned_thought"]) == ("Not sure.", f"It is {expected[0]}.")
    assert f"(thought: It is {expected[0]}.)" in out and "<think>" not in out


def test_eval_scores_the_answer_without_its_thought(tiny_run_dir, tmp_path, questions, monkeypatch):
    path, expected = questions
    run = shutil.copytree(tiny_run_dir, tmp_path / "run")
    _thinking_answers(expected, monkeypatch, evaluate_module)
    assert main(["eval", str(run), "--data", str(path), "--device", "cpu"]) == 0
    saved = json.loads((run / "eval.json").read_text())
    assert saved["tuned"]["overall"]["contains"] == 0.0 and saved["base"]["overall"]["contains"] == 1.0
    tuned = saved["rows"][0]["tuned"]
    assert (tuned["text"], tuned["thought"], tuned["correct"]) == ("Not sure.", f"It is {expected[0]}.", False)


class _Writes:
    """A model whose generate writes `ids` after the prompt."""

    def __init__(self, ids):
        self.ids, self.config, self.generation_config = ids, SimpleNamespace(max_position_embeddings=512), None

    def parameters(self):
        yield torch.zeros(1)

    def generate(self, input_ids, attention_mask, **_):
        return torch.cat([input_ids, torch.tensor([self.ids] * input_ids.shape[0])], dim=1)


def test_generate_keeps_a_thoughts_markers_and_the_one_the_prompt_opened(base_tokenizer):
    """Where `<think>` and `</think>` are special tokens, skip_special_tokens took them out, and the thought read as
    the answer's start; where the prompt opens the thought (DeepSeek-R1's later templates), the answer had no
    `<think>`. Both now read as a thought, then the answer."""
    turns = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    for opened, written in ((False, "<think>\nSeven.\n</think>\n\n7</s>"), (True, "Seven.\n</think>\n\n7</s>")):
        chat = (
            turns
            + "{% if add_generation_prompt %}<|im_start|>assistant\n"
            + ("<think>\n" if opened else "")
            + "{% endif %}"
        )
        tokenizer = base_tokenizer(extra_special=("<think>", "</think>"), chat_template=chat)
        template = resolve_template("tokenizer", tokenizer)
        model = _Writes(tokenizer.encode(written, add_special_tokens=False))
        prompt = tokenizer.encode(
            template.render([{"role": "user", "content": "Box?"}], True)[0], add_special_tokens=False
        )
        answers, _ = _answer_batch(model, tokenizer, template, [prompt], GenerationSettings(max_new_tokens=20))
        assert answers[0].startswith("<think>") and split_thought(answers[0]) == ("Seven.", "7"), opened


def test_the_report_folds_a_thought_apart_from_the_answer():
    """The report showed the answer alone and dropped the thought the answer was scored without: it is folded
    apart in the answer's cell, escaped, marked as not scored, and left out of the word differences."""
    from tunelab.eval.report_answers import answer_rows
    from tunelab.eval.report_inputs import Input

    row = {"question": "Box?", "expected": "7", "kind": "fact", "base": "7", "tuned": "8"}
    row |= {"base_ok": True, "tuned_ok": False, "base_thought": None, "tuned_thought": "It is <7>."}
    html = answer_rows(Input("eval.json", problem="missing"), Input("compare.json", {"rows": [row]}), Path("run"))
    assert html.count('<details class="thought">') == 1
    assert "<summary>thought (not scored)</summary>It is &lt;7&gt;.</details>" in html
