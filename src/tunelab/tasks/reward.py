"""A reward model: the head of `tasks/head.py` with one output, trained on preference pairs (Bradley-Terry).

    r_c, r_r = head(prompt + chosen), head(prompt + rejected)        # scalars
    loss     = -log sigmoid(r_c - r_r) = softplus(r_r - r_c)         # per pair, summed, divided by the step's pairs

Rows hold `chosen` and `rejected` and, optionally, a prompt (`data.fields` maps the names):
- `prompt` (or question, instruction): text or a message list; `chosen`/`rejected`: text, one message
  ({role, content} / {from, value}) or a message list; the pair is the prompt's chat plus each answer;
- LLaMA-Factory's preference format: `conversations` (ShareGPT turns ending with the user's) and `chosen`/`rejected`
  as {from: gpt, value} messages (`messages` in OpenAI spelling works the same);
- no prompt: `chosen`/`rejected` are whole texts (e.g. Anthropic HH-RLHF's transcripts) or whole conversations.

A reasoning model's thought (`<think>...</think>` before a chat side's answer, data/reasoning.py) is not scored: the
head reads the answer after it, in training as in `tunelab eval`, `tunelab predict` and grpo's `model` reward; where
the template ends the prompt with `<think>`, an answer's text up to a `</think>` it never opened is the thought too.

A batch holds the P chosen rows then the P rejected rows (one forward pass); `count` is P. Pairs whose two sides are
the same, or with an empty side, are skipped and counted in the data report. Metrics: pairwise accuracy (the share
of pairs with r_c > r_r; a tie counts as wrong) and the mean margin r_c - r_r.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tunelab.config import RunConfig
from tunelab.config.flags import CLI, Spelling
from tunelab.data.batches import epoch_chunks
from tunelab.data.formats import text_field
from tunelab.data.loader import Datasets, note_system_on_texts
from tunelab.data.render import note_templated_inputs, note_unreadable, pair_text, row_text
from tunelab.data.report import DataReport, SplitStats, location, location_path
from tunelab.data.sources import read_records
from tunelab.errors import ConfigError, DataError
from tunelab.tasks.classify import refuse_head_options
from tunelab.tasks.head import attach_head, continue_head, head_learning_rates, save_head_run
from tunelab.tasks.head_data import (
    CHAT_FIELDS,
    PROMPT_FIELDS,
    Input,
    Opens,
    as_turns,
    chat_flaw,
    column,
    counted_records,
    in_order,
    input_kind,
    is_empty,
    pad_rows,
    plain_text,
    read_task_data,
    refuse_chat_format,
    render_within,
    thought_apart,
    user_turns,
    with_system,
)
from tunelab.tasks.head_fit import Keep, fit, overlong_reason, starts
from tunelab.tasks.pair_data import (
    answer_blank,
    answer_turns,
    note_repeated_prompts,
    pair_columns,
    pair_skip,
    repeats_prompt,
    same_tokens,
    shared_prompt,
)
from tunelab.tasks.task import Task, eval_mode
from tunelab.training.build import BuiltModel

FIELDS = (*PROMPT_FIELDS, *CHAT_FIELDS, "chosen", "rejected", "system", "input", "history")
LABELS = ["reward"]  # the head's one output, as id2label names it


@dataclass
class Pair:
    chosen: Input  # a chat side's answer without its thought (`head_data.thought_apart`)
    rejected: Input
    path: str
    line: int
    thoughts: tuple[str | None, str | None] = (None, None)  # the chosen and rejected answers' thoughts, not scored


@dataclass
class PairRow:
    chosen_ids: list[int]
    rejected_ids: list[int]
    path: str
    line: int

    @property
    def input_ids(self) -> list[int]:
        """Every token id the pair feeds the model (both sides), as the untrained-token scan reads rows."""
        return self.chosen_ids + self.rejected_ids

    @property
    def labels(self) -> list[int]:
        """Where the rejected side starts in input_ids: with it the resume digest tells the two sides apart."""
        return [len(self.chosen_ids)]


def prompt_field(row: dict, fields: dict[str, str], lenient: bool = False) -> tuple[str, str] | None:
    """The field of `row` holding its prompt (the first of PROMPT_FIELDS and CHAT_FIELDS there, those data.fields maps
    first: `in_order`) and its column, or None."""
    names = in_order((*PROMPT_FIELDS, *CHAT_FIELDS), fields)
    return next(((name, key) for name in names if (key := column(row, fields, name, lenient))), None)


def prompt_column(row: dict, fields: dict[str, str], lenient: bool = False) -> str | None:
    """The column of `row` holding its prompt (`prompt_field`), or None."""
    found = prompt_field(row, fields, lenient)
    return found[1] if found else None


def read_prompt(row: dict, fields: dict[str, str], where: str, lenient: bool = False) -> list[dict] | None:
    """The prompt's turns (without a system message), or None when the row has no prompt; an `instruction` takes the
    row's `input` and `history` as sft's alpaca rows do (`head_data.user_turns`). DataError (file:line and field) for
    a prompt that is empty, or a chat that does not end with the user's turn (the answer follows it)."""
    found = prompt_field(row, fields, lenient)
    if found is None:
        return None
    name, key = found
    value = row[key]
    chat = isinstance(value, list | dict)
    turns = as_turns(value, where, key) if chat else user_turns(row, fields, where, name, key, lenient)
    if turns and turns[-1]["role"] != "user":
        raise DataError(
            f"{where}: field '{key}': the prompt's chat ends with the {turns[-1]['role']}'s turn; it must end with "
            "the user's, which the answer follows."
        )
    if not turns or not turns[-1]["content"].strip():
        raise DataError(f"{where}: field '{key}': the prompt is empty. Give the row its prompt, or remove the row.")
    return turns


def answer_input(
    value,
    prompt: list[dict] | None,
    row: dict,
    fields: dict[str, str],
    where: str,
    key: str,
    system: str | None,
    lenient: bool = False,
) -> Input:
    """One side of a pair: the prompt's chat plus the answer, or a whole text or conversation when there is no prompt."""
    if isinstance(value, list | dict):
        turns = as_turns(value, where, key) if prompt is None else answer_turns(value, where, key)
    elif prompt is None:
        return Input(text=plain_text(row, fields, where, key, lenient))
    else:
        turns = [{"role": "assistant", "content": text_field(value, where, key)}]
    return Input(messages=with_system((prompt or []) + turns, row, fields, where, system, lenient))


def read_pairs(
    paths: list[str],
    fields: dict[str, str],
    system_prompt: str | None,
    report: DataReport,
    lenient: bool = False,
    evaluating: bool = False,
    delimiter: str = "auto",
    transform: str | None = None,
    opens: Opens | None = None,
    spelling: Spelling = CLI,
    run_dir: str | Path | None = None,
) -> list[Pair]:
    """Rows of the files as Pairs; DataError (file:line) for a row without chosen or rejected, whose message says what
    `tunelab eval` needs when `evaluating` (its file is not a training file: data.fields cannot be changed). `opens`:
    the run's template's `thought_opener`, with which a chat side's thought is read apart (`head_data.thought_apart`).
    `spelling`: how an eval row of one answer is told of the command that scores it (`_refuse_single_answer`), with
    the file and `run_dir` (the run's directory, where it is known)."""
    pairs = []
    command = "tunelab eval" if evaluating else None
    for record in counted_records(
        paths, report, "preference pairs", fields, lenient, delimiter, "reward", FIELDS, transform
    ):
        row, where = record.row, location(record.path, record.line)
        if evaluating:
            _refuse_single_answer(row, fields, where, spelling, run_dir)
        keys = pair_columns(row, fields, where, lenient, "and optionally a prompt", command)
        prompt = read_prompt(row, fields, where, lenient)
        if repeats_prompt(prompt, [row[key] for key in keys], keys, where):
            prompt = None  # two whole conversations: the turns they share are the prompt
        (chosen, chosen_thought), (rejected, rejected_thought) = (
            thought_apart(answer_input(row[key], prompt, row, fields, where, key, system_prompt, lenient), opens)
            for key in keys
        )
        if prompt is None and chosen.is_chat != rejected.is_chat:
            kinds = ("a conversation", "a text") if chosen.is_chat else ("a text", "a conversation")
            raise DataError(
                f"{where}: chosen is {kinds[0]} and rejected {kinds[1]}: the head would score them in two formats. "
                "Give both sides the same way."
            )
        start = None  # where the answers begin in a chat side (after the prompt's turns)
        if prompt is None and chosen.is_chat:
            start = shared_prompt(chosen.messages, rejected.messages, where)
        elif prompt is not None:
            start = len(with_system(prompt, row, fields, where, system_prompt, lenient))
        empty = any(is_empty(side) or _answer_empty(side, start) for side in (chosen, rejected))
        if reason := pair_skip(chosen == rejected, empty, chosen.messages, rejected.messages):
            report.skip(reason, record.path, record.line)
        else:
            pairs.append(Pair(chosen, rejected, record.path, record.line, (chosen_thought, rejected_thought)))
    return pairs


ANSWER_FIELDS = ("answer", "completion", "response", "output")


def _refuse_single_answer(
    row: dict, fields: dict[str, str], where: str, spelling: Spelling, run_dir: str | Path | None
) -> None:
    """DataError for a `tunelab eval` row that gives neither side of a pair but one answer (`read_scored`'s rows): no
    renaming of its columns makes a pair of it, and `tunelab predict` scores it."""
    if column(row, fields, "chosen", True) or column(row, fields, "rejected", True):
        return
    answer = next((key for name in ANSWER_FIELDS if (key := column(row, fields, name, True))), None)
    if answer is not None:
        evaluate = "tunelab eval" if spelling.flags else "tunelab.evaluate()"
        predict = _scoring_call("predict", run_dir, location_path(where), spelling)
        raise DataError(
            f"{where}: the row gives one answer (column '{answer}'), not a preference pair: {evaluate} of a reward "
            f"run scores pairs (chosen and rejected) by pairwise accuracy. Score single answers with {predict}."
        )


def read_scored(
    paths: list[str],
    fields: dict[str, str],
    system_prompt: str | None,
    report: DataReport,
    delimiter: str = "auto",
    transform: str | None = None,
    spelling: Spelling = CLI,
    run_dir: str | Path | None = None,
) -> list[tuple[Input, str, int]]:
    """Rows to score one at a time (tunelab predict): a prompt and an answer (answer, completion, response or
    output), a whole conversation (messages, conversations) or a whole text; (input, path, line) each. A row that
    training would skip (an empty input or answer, a chat sft skips: `chat_flaw`) is skipped and counted in `report`.
    `delimiter`: the run's data.delimiter, which splits a .csv file's values as it split its training files'.
    `transform`: the run's data.transform, which shapes pairs and is not applied here; a row with nothing to score
    is told so (it may be a raw row of the training files' form), and of the command that scores pairs as `spelling`
    names it, with the file and `run_dir` (the run's directory, where it is known)."""
    out = []
    for record in read_records(paths, delimiter):
        report.read(record.path)
        row, where = record.row, location(record.path, record.line)
        answer = next((key for name in ANSWER_FIELDS if (key := column(row, fields, name, True))), None)
        text = column(row, fields, "text", True)
        chat = _whole_conversation(row, fields, where) if answer is None else None
        prompt = read_prompt(row, fields, where, lenient=True) if chat is None else None
        if chat is not None:
            item = Input(messages=with_system(chat, row, fields, where, system_prompt, True))
        elif prompt is not None and answer is not None:
            item = answer_input(row[answer], prompt, row, fields, where, answer, system_prompt, True)
        elif text is not None:
            item = Input(text=plain_text(row, fields, where, text, True))
        else:
            evaluate = _scoring_call("eval", run_dir, record.path, spelling)
            pair = (
                f" A preference pair (chosen and rejected) is scored by {evaluate} (pairwise "
                "accuracy); predict scores one answer a row."
                if column(row, fields, "chosen", True) and column(row, fields, "rejected", True)
                else ""
            )
            if transform and not pair:
                pair = (
                    f" The run's data.transform {transform} made its training pairs and is not applied to predict's "
                    f"rows: rows in the training files' form are scored as pairs by {evaluate}."
                )
            raise DataError(
                f"{where}: nothing to score: give the row a prompt and an answer ({', '.join(ANSWER_FIELDS)}), a whole "
                f"conversation (messages) or a text. It has {', '.join(map(str, row)) or 'no fields'}.{pair}"
            )
        if reason := _unscorable(item):
            report.skip(reason, record.path, record.line)  # what training skips is not scored either
            continue
        out.append((item, record.path, record.line))
    return out


def _scoring_call(command: str, run_dir: str | Path | None, path: str, spelling: Spelling) -> str:
    """How the caller scores `path` with the run of `run_dir` (RUN_DIR where it is not known) by `command` (eval:
    pairs, predict: single answers): its command line, or the API's call (tunelab.evaluate, tunelab.predict)."""
    if spelling.flags:
        run = shlex.quote(str(run_dir)) if run_dir is not None else "RUN_DIR"
        return f"'tunelab {command} {run} --data {shlex.quote(path)}'"
    run = repr(str(run_dir)) if run_dir is not None else "run_dir"
    return f"tunelab.{'evaluate' if command == 'eval' else command}({run}, data={path!r})"


def _unscorable(item: Input) -> str | None:
    """Why training would skip a row to score: an empty input, a chat whose answer is blank, a chat sft skips."""
    if is_empty(item):
        return "empty input"
    if item.is_chat and item.messages[-1]["role"] == "assistant" and not item.messages[-1]["content"].strip():
        return "empty answer"
    return chat_flaw(item.messages)


def _whole_conversation(row: dict, fields: dict[str, str], where: str) -> list[dict] | None:
    """The row's chat when it ends with the assistant's turn: a whole conversation, scored as it is (a prompt's chat
    ends with the user's turn, `read_prompt`)."""
    key = prompt_column(row, fields, lenient=True)
    if key is None or not isinstance(row[key], list | dict):
        return None
    turns = as_turns(row[key], where, key)
    return turns if turns and turns[-1]["role"] == "assistant" else None


def _answer_empty(side: Input, start: int | None) -> bool:
    """A chat side without an answer after its prompt's `start` turns (`pair_data.answer_blank`)."""
    return side.messages is not None and start is not None and answer_blank(side.messages, start)


def to_rows(
    pairs: list[Pair],
    tokenizer,
    template,
    max_length: int,
    overlong: str,
    report: DataReport,
    text_format: str | None = None,
) -> list[PairRow]:
    wheres = [location(p.path, p.line) for p in pairs]
    sides, over, tails = render_within(
        [p.chosen for p in pairs] + [p.rejected for p in pairs],
        tokenizer,
        template,
        wheres + wheres,
        text_format,
        # over max_length by size: dropped whatever their tokens, or read from their ends alone (see render_within)
        *((max_length, None) if overlong == "drop" else (None, max_length)),
    )
    report.add_lengths([over.get(n, len(ids)) for n, ids in enumerate(sides)], at_least=len(over))
    inputs = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    kept = (
        starts(inputs, sides, tokenizer, template, max_length, text_format, tails) if overlong == "truncate" else None
    )
    kept = kept or [Keep()] * len(sides)
    rows = []
    for n, (pair, chosen, rejected) in enumerate(zip(pairs, sides[: len(pairs)], sides[len(pairs) :])):
        keep = max(kept[n], kept[n + len(pairs)], key=lambda k: k.fixed)
        c, r = fit(chosen, max_length, overlong, kept[n]), fit(rejected, max_length, overlong, kept[n + len(pairs)])
        c, r = (None, None) if {n, n + len(pairs)} & over.keys() and overlong == "drop" else (c, r)
        if c is None or r is None:
            report.skip(overlong_reason(max_length, keep), pair.path, pair.line)
            continue
        cut = len(c) < len(chosen) or len(r) < len(rejected)
        if c == r:  # sides that differ as read but not as tokens (a template that trims), or once cut
            report.skip(same_tokens(f"{max_length} kept" if cut else None), pair.path, pair.line)
            continue
        if cut:
            report.truncated(pair.path, pair.line)
        report.used(pair.path)
        rows.append(PairRow(c, r, pair.path, pair.line))
    return rows


def _stats(rows: list[PairRow], examples: int) -> SplitStats:
    tokens = sum(len(r.chosen_ids) + len(r.rejected_ids) for r in rows)
    return SplitStats(examples=examples, used=len(rows), rows=2 * len(rows), tokens=tokens, loss_tokens=2 * len(rows))


def build_data(cfg: RunConfig, tokenizer, seed: int, spelling: Spelling = CLI) -> Datasets:
    refuse_head_options(cfg, spelling)
    d = cfg.data
    if not d.train:
        raise ConfigError("option 'data.train' is empty; give one or more files of preference pairs.")
    pairs, held, report, template = read_task_data(cfg, tokenizer, seed, read_pairs, FIELDS, thoughts=True)
    report.pairs = True
    refuse_chat_format([side for p in pairs + held for side in (p.chosen, p.rejected)], cfg)
    text_format = cfg.classify.prompt_format
    chat = any(p.chosen.is_chat for p in pairs + held)
    texts = [p for p in pairs + held if not p.chosen.is_chat]
    note_system_on_texts(d.system_prompt, texts, report)
    note_templated_inputs(
        texts,
        lambda p: (p.chosen.text, p.rejected.text),
        tokenizer,
        report,
        "text pairs",
        "a text is read as it is, its markup plain characters, not control tokens, so the head learns to score "
        "answers in a form the chat template never writes; give such pairs as chats (a prompt with chosen and "
        "rejected, or two conversations), so the template writes the markup, or keep them as text knowingly",
    )
    sides = [
        (row_text(p.chosen.text, p.chosen.messages), row_text(p.rejected.text, p.rejected.messages))
        for p in pairs + held
    ]
    note_unreadable(pairs + held, [pair_text(*s) for s in sides], tokenizer, report, held=len(held))
    note_repeated_prompts(pairs + held, report)
    report.template = template.name if chat else "none (text only)"
    train = to_rows(pairs, tokenizer, template, d.max_length, d.overlong, report, text_format)
    if not train:
        raise DataError(f"{', '.join(d.train)}: no usable preference pairs. {report.summary()}")
    evals = to_rows(held, tokenizer, template, d.max_length, d.overlong, report, text_format)
    report.train, report.eval = _stats(train, len(pairs)), _stats(evals, len(held))
    return Datasets(train, evals, template, report, facts={"input": input_kind([p.chosen for p in pairs])})


def make_batches(
    rows: list[PairRow], micro_batch: int, pad_id: int, *, shuffle: bool, seed: int, epoch: int
) -> list[dict]:
    """micro_batch pairs per batch: input_ids, attention_mask, position_ids (2P, T), the P chosen rows first;
    sources, per chosen then rejected row the file:line of its pair."""
    batches = []
    for chunk in epoch_chunks(rows, micro_batch, shuffle=shuffle, seed=seed, epoch=epoch):
        batch = pad_rows([r.chosen_ids for r in chunk] + [r.rejected_ids for r in chunk], pad_id)
        batch["sources"] = 2 * [[location(r.path, r.line)] for r in chunk]
        batches.append(batch)
    return batches


def count(batch: dict) -> int:
    return int(batch["input_ids"].shape[0]) // 2


def margins(model: nn.Module, batch: dict) -> torch.Tensor:
    """(P,) r_chosen - r_rejected."""
    rewards = model(batch["input_ids"], batch["attention_mask"], batch["position_ids"])[:, 0]  # (2P,)
    p = rewards.shape[0] // 2
    return rewards[:p] - rewards[p:]


def loss(model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
    """Sum over pairs of -log sigmoid(margin) (as softplus(-margin): no overflow for large margins)."""
    m = margins(model, batch)
    return F.softplus(-m).sum(), {"accuracy": (m > 0).sum().detach(), "margin": m.sum().detach()}


@torch.no_grad()
def evaluate(model: nn.Module, batches: list[dict]) -> dict[str, float]:
    """Mean loss, pairwise accuracy and mean margin over the eval pairs."""
    total, correct, margin, n = 0.0, 0, 0.0, 0
    with eval_mode(model):
        for batch in batches:
            m = margins(model, batch)
            total += F.softplus(-m).sum().item()
            correct += int((m > 0).sum())
            margin += m.sum().item()
            n += m.numel()
    if not n:
        return {}
    return {"eval_loss": total / n, "eval_accuracy": correct / n, "eval_margin": margin / n}


def prepare(built: BuiltModel, data: Datasets, cfg: RunConfig) -> None:
    attach_head(built, 1, cfg.train.seed)
    continued = f"; the head continues {cfg.model.adapter}'s" if continue_head(built, cfg.model.adapter, LABELS) else ""
    print(f"head: one reward output on the last real token ({data.facts['input']} input){continued}", flush=True)


def save(folder: Path, built: BuiltModel, tokenizer, cfg: RunConfig, data: Datasets) -> None:
    save_head_run(folder, built, tokenizer, cfg, data, LABELS)


REWARD = Task(
    name="reward",
    build_data=build_data,
    make_batches=make_batches,
    count=count,
    loss=loss,
    prepare=prepare,
    save=save,
    evaluate=evaluate,
    learning_rates=head_learning_rates,
)
