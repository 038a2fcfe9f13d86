"""dpo pairs (chats and whole texts) and kto rows with a side far over data.max_length under data.overlong=truncate: the
side is tokenized only to a head (data/leading.py), and the rows and report are those of tokenizing it whole, but for
its length and answer tokens, counted at their least and said to be."""

import json

import pytest

from tunelab.config import load_config
from tunelab.data import leading

from ..data.counting import Counting
from .test_overlong_by_size import HUGE, _rows


def _build(task: str, path, tokenizer):
    from tunelab.tasks.kto_data import build_feedback
    from tunelab.tasks.preference_data import build_preferences

    options = {"task": "dpo", "data.train": [str(path)], "data.max_length": 64, "data.overlong": "truncate"}
    cfg = load_config(None, options | ({"dpo.loss": "kto"} if task == "kto" else {})).config
    return (build_feedback if task == "kto" else build_preferences)(cfg, tokenizer, 0)


def _cut_note(notes: list[str]) -> tuple[list[str], str]:
    return [n for n in notes if "were cut to max_length" not in n], next(n for n in notes if "were cut to" in n)


@pytest.mark.parametrize("task", ["dpo", "dpo_text", "kto"])
def test_a_huge_side_is_cut_from_its_head_with_the_rows_of_the_whole(task, smollm2_tokenizer, tmp_path, monkeypatch):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in _rows(task)))
    counting = Counting(smollm2_tokenizer)
    data = _build(task, path, counting)
    assert max(counting.sizes) < 10_000  # the huge side was read only to its head
    monkeypatch.setattr(leading, "cuttable", lambda tokenizer: False)  # every side tokenized whole
    whole = _build(task, path, smollm2_tokenizer)
    assert len(HUGE) > 100_000
    for rows, expected in ((data.train, whole.train), (data.eval, whole.eval)):
        assert [(r.chosen_ids, r.chosen_labels, r.rejected_ids, r.rejected_labels) for r in rows] == [
            (r.chosen_ids, r.chosen_labels, r.rejected_ids, r.rejected_labels) for r in expected
        ]
    now, then = data.report.to_dict(), whole.report.to_dict()
    drop = ("lengths", "notes")
    assert {k: v for k, v in now.items() if k not in drop} == {k: v for k, v in then.items() if k not in drop}
    (others, note), (whole_others, whole_note) = _cut_note(data.report.notes), _cut_note(whole.report.notes)
    assert others == whole_others and data.report.total_truncated == whole.report.total_truncated == 1
    assert "lost at least" in note and "at least" not in whole_note
    assert data.report.lengths.at_least == 1 and whole.report.lengths.at_least == 0
    assert 200_000 / 81 < data.report.lengths.max <= whole.report.lengths.max
    assert data.report.lengths.count == whole.report.lengths.count


@pytest.mark.parametrize("task", ["dpo", "kto"])
def test_a_huge_prompt_read_from_its_head_is_refused_at_its_least_size(task, smollm2_tokenizer, tmp_path, monkeypatch):
    """A prompt far over max_length under truncate leaves no room for an answer: the row is refused by file, row and
    option, its prompt counted as at least the tokens of the head that was read, and exactly where read whole."""
    from tunelab.errors import DataError

    rows = _rows(task)
    side = "chosen" if task == "dpo" else "completion"
    rows[1][side], rows[1]["prompt"] = "At 9:40.", HUGE
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    counting = Counting(smollm2_tokenizer)
    with pytest.raises(DataError) as read:
        _build(task, path, counting)
    assert max(counting.sizes) < 10_000  # the huge prompt was read only to its head
    answer = "an answer" if task == "dpo" else "the completion"
    said = str(read.value)
    assert said.startswith(f"{path}:2: the prompt is at least ") and "data.max_length (64)" in said
    assert f"which leaves no room for {answer} within data.max_length (64)" in said
    assert 64 < int(said.split("at least ")[1].split()[0]) < 10_000
    monkeypatch.setattr(leading, "cuttable", lambda tokenizer: False)  # every side tokenized whole
    with pytest.raises(DataError) as whole:
        _build(task, path, smollm2_tokenizer)
    assert str(whole.value).startswith(f"{path}:2: the prompt is ") and "at least" not in str(whole.value)
    assert int(str(whole.value).split("prompt is ")[1].split()[0]) > 200_000 / 81


MIXED = ("Grüße, 世界! 🙂  don't\\t we'll\n\n   ferry 9:40; " + "x" * 90 + " ") * 6000  # 800 kB


def _head_rows(task: str) -> list[dict]:
    """Six classify rows, four of them huge: a text, a text ending inside a long word, a chat ending with the user's
    turn and one ending with an answer after a huge prompt; or six reward pairs, three of them huge: two of whole
    texts, and a chat whose prompt is huge."""
    rows = _rows(task)
    if task == "classify":
        rows[1]["text"], rows[3]["text"] = MIXED, "Skerry " + HUGE + "y" * 300
        rows[4] = {"prompt": MIXED[::-1], "label": "late"}
        rows[5] = {"messages": [{"role": "user", "content": HUGE}, {"role": "assistant", "content": "Late."}]}
        rows[5]["label"] = "on time"
    else:
        rows[1] = {"chosen": MIXED, "rejected": "No idea."}
        rows[3] = {"chosen": "At 9:40.", "rejected": HUGE + "y" * 300}
        rows[4]["prompt"] = MIXED[::-1]
    return rows


@pytest.mark.parametrize("task", ["classify", "reward"])
def test_a_huge_head_input_is_read_from_its_ends_with_the_rows_of_the_whole(
    task, smollm2_tokenizer, tmp_path, monkeypatch
):
    """classify and reward keep an input's start and end: a huge one is tokenized only at its head and its tail,
    and the rows and report are those of tokenizing it whole but for its length, counted at its least."""
    from tunelab.tasks.classify import CLASSIFY
    from tunelab.tasks.reward import REWARD

    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in _head_rows(task)))
    options = {"task": task, "data.train": [str(path)], "data.max_length": 64, "data.overlong": "truncate"}
    cfg = load_config(None, options).config
    build = (CLASSIFY if task == "classify" else REWARD).build_data
    counting = Counting(smollm2_tokenizer)
    data = build(cfg, counting, 0)
    assert max(counting.sizes) < 10_000  # no huge input was tokenized whole
    monkeypatch.setattr(leading, "cuttable", lambda tokenizer: False)  # every input tokenized whole
    whole = build(cfg, smollm2_tokenizer, 0)
    fields = ("input_ids", "label", "weight") if task == "classify" else ("chosen_ids", "rejected_ids")
    for rows, expected in ((data.train, whole.train), (data.eval, whole.eval)):
        assert [[getattr(r, f) for f in fields] for r in rows] == [[getattr(r, f) for f in fields] for r in expected]
    huge = 4 if task == "classify" else 3  # rows; reward's lengths are its 4 huge sides
    assert data.report.total_truncated == whole.report.total_truncated == huge
    now, then = data.report.to_dict(), whole.report.to_dict()
    assert {k: v for k, v in now.items() if k != "lengths"} == {k: v for k, v in then.items() if k != "lengths"}
    assert data.report.lengths.at_least == 4 and whole.report.lengths.at_least == 0
    assert 200_000 / 81 < data.report.lengths.max <= whole.report.lengths.max
    assert data.report.lengths.count == whole.report.lengths.count


def test_a_huge_grpo_prompt_is_refused_under_truncate_without_being_tokenized(smollm2_tokenizer, tmp_path):
    """A grpo prompt is kept whole or not at all: one over max_length by its size alone is refused under truncate by
    file, row and option, at the fewest tokens it can have, without tokenizing it (a multi-megabyte prompt took most
    of a minute); one over it by its tokens alone is refused with its count, as before."""
    from tunelab.errors import DataError
    from tunelab.tasks.prompt_data import build_prompts

    rows = [{"prompt": f"When does ferry {i} leave?"} for i in range(6)]
    rows[1]["prompt"], rows[2]["prompt"] = HUGE * 20, "word " * 70  # 4 MB; 70 tokens in 350 bytes
    path = tmp_path / "rows.jsonl"
    options = {"task": "grpo", "data.max_length": 64, "data.overlong": "truncate"}
    for shown, line in ((rows, 2), (rows[:1] + rows[2:], 2)):
        path.write_text("".join(json.dumps(row) + "\n" for row in shown))
        counting = Counting(smollm2_tokenizer)
        with pytest.raises(DataError) as refused:
            build_prompts(load_config(None, options | {"data.train": [str(path)]}).config, counting, 0, [])
        said = str(refused.value)
        assert said.startswith(f"{path}:{line}: the prompt is ") and "data.max_length (64)" in said
        assert "data.overlong" in said and max(counting.sizes) < 1000
        if len(shown) == 6:
            assert int(said.split("at least ")[1].split()[0]) > 4_000_000 / 81
        else:
            assert "at least" not in said and int(said.split("prompt is ")[1].split()[0]) > 64


def test_scoring_a_huge_input_reads_its_ends_and_feeds_the_head_the_tokens_of_the_whole(smollm2_tokenizer, monkeypatch):
    """predict, eval and grpo's reward model score inputs cut as training cuts them (head_run.head_outputs): a huge
    text or chat is read from its head and tail alone, and the head is fed the ids of tokenizing it whole."""
    import torch

    from tunelab.config import DataConfig
    from tunelab.data.templates import resolve_template
    from tunelab.tasks.head_data import Input
    from tunelab.tasks.head_run import HeadRun, head_outputs

    class Recording(torch.nn.Module):
        """A stand-in head that records the rows it is fed and scores each by its length."""

        def __init__(self):
            super().__init__()
            self.weight, self.fed = torch.nn.Parameter(torch.zeros(1)), []

        def forward(self, input_ids, attention_mask, position_ids):
            self.fed += [row[mask.bool()].tolist() for row, mask in zip(input_ids, attention_mask)]
            return attention_mask.sum(1, keepdim=True).float()

    inputs = [
        Input(text=MIXED),
        Input(messages=[{"role": "user", "content": HUGE}, {"role": "assistant", "content": "At 9:40."}]),
        Input(messages=[{"role": "user", "content": MIXED[::-1]}]),
        Input(text="Ferry 3 was late."),
    ]

    def score(tokenizer):
        model = Recording()
        template = resolve_template("chatml", smollm2_tokenizer)
        run = HeadRun(None, None, model, tokenizer, template, ["reward"], DataConfig(max_length=64), 0)
        _, cut = head_outputs(model, run, inputs, batch_size=2)
        return model.fed, cut

    counting = Counting(smollm2_tokenizer)
    fed, cut = score(counting)
    assert max(counting.sizes) < 10_000 and cut == 3 and all(len(row) <= 64 for row in fed)
    monkeypatch.setattr(leading, "cuttable", lambda tokenizer: False)  # every input tokenized whole
    assert score(smollm2_tokenizer) == (fed, cut)
