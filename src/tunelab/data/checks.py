"""Checks on the rendered data (and what every check of `tunelab check` reports: CheckItem, CheckResult), cheap enough for `tunelab train` to run before it loads the model.

- prompt rendering: for the first examples training keeps, the tokens training puts before each answer are exactly the tokens
  `chat`/`generate` feed the model for that conversation (`data.render.render_prompt`). A difference means the model
  is trained on one prompt format and asked in another (typically a token merged across the prompt/answer border).
- answer ends: every answer's labelled tokens end with a token generation stops on (the end-of-turn or EOS token,
  `Template.stop_token_ids`), so the model learns to stop; answers cut by data.max_length are counted apart.
- padding: the pad token, and that padding never removes a label (labels come from the row lengths, not from
  masking the pad id, which matters when pad = EOS).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tunelab.config import RunConfig
from tunelab.data.batches import make_batches, row_sources
from tunelab.data.loader import epoch_rows
from tunelab.data.packing import Packed
from tunelab.data.render import IGNORE, encode, render_prompt, special_text_in, special_texts
from tunelab.data.report import location
from tunelab.data.size_bound import size_bound, surely_longer
from tunelab.errors import counted

STATUSES = ("pass", "warn", "fail", "info")


@dataclass
class CheckItem:
    name: str
    status: str  # one of STATUSES; only "fail" fails the check
    summary: str
    details: list[str] = field(default_factory=list)

    def line(self) -> str:
        head = f"  [{self.status.upper():>4}] {self.name}: {self.summary}"
        return "\n".join([head, *(f"           {d}" for d in self.details)])


@dataclass
class CheckResult:
    items: list[CheckItem]
    html: Path | None = None

    @property
    def passed(self) -> bool:
        return not any(item.status == "fail" for item in self.items)

    def verdict(self) -> str:
        failed = [item.name for item in self.items if item.status == "fail"]
        warned = sum(item.status == "warn" for item in self.items)
        total = sum(item.status != "info" for item in self.items)
        warnings = f", {counted(warned, 'warning')}" if warned else ""
        if failed:
            return f"check: FAILED: {len(failed)} of {counted(total, 'check')} failed ({', '.join(failed)}){warnings}"
        return f"check: PASSED: {counted(total, 'check')}{warnings}"


PARITY_EXAMPLES = 20  # conversations whose prompts are compared token by token
SHOWN = 5  # locations listed per problem


def _token(tokenizer, token_id: int) -> str:
    return repr(tokenizer.decode([token_id]))


def _first_difference(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def _compared(examples: list, tokenizer, template, drop_over: int | None):
    """The first PARITY_EXAMPLES chats that render_parity compares, each with its rendered text and answer spans:
    those training does not skip for their special-token text or (`drop_over`: the max_length of a run with
    data.overlong=drop) as too long by their size alone, which would take the tokenizer longest."""
    specials, bound = special_texts(tokenizer), size_bound(tokenizer) if drop_over is not None else None
    chats = []
    for ex in examples:
        if len(chats) == PARITY_EXAMPLES:
            break
        if ex.messages is None or special_text_in(ex.messages, specials):
            continue
        text, spans = template.render(ex.messages)
        if not surely_longer(text, drop_over or 0, bound):
            chats.append((ex, text, spans))
    return chats


def render_parity(examples: list, tokenizer, template, drop_over: int | None = None) -> CheckItem:
    """Whether the prompts before the answers of the first chats training keeps are the tokens chat/generate feed;
    `drop_over`: the run's max_length where data.overlong is drop (see `_compared`)."""
    name = "prompt rendering (training = chat/generate)"
    chats = _compared(examples, tokenizer, template, drop_over)
    if not chats:
        return CheckItem(name, "info", "no chat examples (text data): there is no prompt to compare")
    problems, turns = [], 0
    for ex, text, spans in chats:
        ids = encode(tokenizer, [text], [[]])[0][0]
        answers = [i for i, m in enumerate(ex.messages) if m["role"] == "assistant"]
        for k, (index, span) in enumerate(zip(answers, spans)):
            turns += 1
            prompt = render_prompt(ex.messages[:index], tokenizer, template)
            inside = encode(tokenizer, [text], [[span]])[0][1]
            first_label = inside.index(True) if True in inside else len(ids)
            where = f"{location(ex.path, ex.line)} answer {k + 1}"
            if ids[: len(prompt)] != prompt:
                j = _first_difference(ids, prompt)
                got = _token(tokenizer, ids[j]) if j < len(ids) else "(end)"
                fed = _token(tokenizer, prompt[j]) if j < len(prompt) else "(end)"
                problems.append(f"{where}: token {j} is {got} in training but {fed} in the prompt chat/generate feed")
            elif first_label != len(prompt):
                gap = tokenizer.decode(ids[len(prompt) : first_label])
                problems.append(
                    f"{where}: training puts {counted(first_label - len(prompt), 'token')} {gap!r} between the prompt "
                    "and the answer"
                )
    if problems:
        return CheckItem(
            name,
            "fail",
            f"{len(problems)} of {turns} answers follow a prompt that differs from what inference feeds "
            f"(template {template.name}); choose another data.template",
            problems[:SHOWN],
        )
    return CheckItem(
        name, "pass", f"{turns} answers in {len(chats)} examples: the prompts are token for token the same"
    )


def _documents(row) -> list[tuple[list[int], list[int], str]]:
    """(ids, labels, file:line) of each example in a row (several in a packed row)."""
    if not isinstance(row, Packed):
        return [(row.input_ids, row.labels, row_sources(row)[0])]
    docs, start = [], 0
    sources = row.sources or [""] * len(row.doc_lengths)
    for n, source in zip(row.doc_lengths, sources):
        docs.append((row.input_ids[start : start + n], row.labels[start : start + n], source))
        start += n
    return docs


def answer_ends(rows: list, template, cfg: RunConfig, tokenizer) -> CheckItem:
    name = "answers end with a stop token"
    if cfg.data.train_on_prompt:
        return CheckItem(name, "info", "not checked: data.train_on_prompt puts a label on every token")
    stops = np.array(sorted(template.stop_token_ids), dtype=np.int64)
    stop_names = ", ".join(_token(tokenizer, s) for s in stops.tolist()) or "(none)"
    answers, cut, bad = 0, 0, []
    for row in rows:
        for ids, labels, source in _documents(row):
            labelled = np.asarray(labels) != IGNORE
            if labelled[1:].all():  # a text block (continued pretraining): every token is learned
                continue
            ends = np.flatnonzero(labelled & ~np.append(labelled[1:], False))  # the last token of each answer
            answers += len(ends)
            wrong = ends[~np.isin(np.asarray(ids)[ends], stops)]
            for end in wrong.tolist():
                if end == len(ids) - 1 and cfg.data.overlong == "truncate" and len(ids) >= cfg.data.max_length:
                    cut += 1
                else:
                    bad.append(f"{source}: the answer ends with {_token(tokenizer, ids[end])}")
    if not answers:
        return CheckItem(name, "info", "no answers in the data (text only)")
    note = f"; {cut} cut short by data.max_length (data.overlong truncate) do not" if cut else ""
    if bad:
        return CheckItem(
            name,
            "fail",
            f"{len(bad)} of {answers} answers do not end with a stop token ({stop_names}) in the labels, so the model "
            f"would not learn to stop{note}",
            bad[:SHOWN],
        )
    status = "warn" if cut else "pass"
    return CheckItem(name, status, f"{answers - cut} of {answers} answers end with {stop_names} in the labels{note}")


def padding(rows: list, tokenizer, template, cfg: RunConfig) -> CheckItem:
    name = "padding"
    pad = tokenizer.pad_token_id
    if pad is None:
        return CheckItem(name, "fail", "the tokenizer has no pad token and no EOS token to pad with")
    batch = make_batches(rows[: cfg.train.micro_batch], cfg.train.micro_batch, pad, shuffle=False, seed=0, epoch=0)[0]
    stops = set(template.stop_token_ids)
    in_rows = sum(sum(1 for t in r.labels if t in stops) for r in rows[: cfg.train.micro_batch])
    labels, mask = batch["labels"], batch["attention_mask"]
    in_batch = sum(int((labels == s).sum()) for s in stops)
    padded = int((mask == 0).sum())
    leaked = int((labels[mask == 0] != IGNORE).sum())
    same = " (the end-of-turn/EOS token)" if pad in stops else ""
    if leaked or in_batch != in_rows:
        return CheckItem(
            name,
            "fail",
            f"padding changed the labels: {leaked} padded labels, {in_batch} of {in_rows} stop labels kept",
        )
    return CheckItem(
        name,
        "pass",
        f"pad token {_token(tokenizer, pad)} (id {pad}){same}; the first micro-batch has {padded} padded positions, "
        f"all with attention mask 0 and no label, and keeps all {in_rows} stop-token labels of its rows",
    )


def data_checks(cfg: RunConfig, inputs) -> list[CheckItem]:
    data, tokenizer = inputs.data, inputs.tokenizer
    return [
        render_parity(
            data.examples, tokenizer, data.template, cfg.data.max_length if cfg.data.overlong == "drop" else None
        ),
        answer_ends(data.train + data.eval, data.template, cfg, tokenizer),
        padding(epoch_rows(data, cfg.train.seed, 0), tokenizer, data.template, cfg),
    ]
