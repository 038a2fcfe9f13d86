"""What the two readers of preference pairs share (reward: `tasks/reward.py`, dpo: `tasks/preference_data.py`): the
columns of a pair, its answers given as messages, the prompt two whole conversations share, and why a pair is
skipped. Each side is then an input of `tasks/head_data.py` (a text or a chat).
"""

from __future__ import annotations

from tunelab.data.formats import turn_name
from tunelab.data.report import DataReport, location, location_path
from tunelab.errors import DataError, article, counted
from tunelab.tasks.head_data import as_turns, chat_flaw, column


def answer_turns(value, where: str, key: str) -> list[dict]:
    """A pair's answer given as messages (one, or a list): the turns that follow the prompt's last user turn. DataError
    when they hold a system turn, or an assistant turn after a user turn that comes first: the system message would
    stand in the middle of the chat, the answer would follow another prompt than the other side's. (Turns without an
    assistant one are no answer: the pair is skipped, `answer_blank`.)"""
    turns = as_turns(value, where, key)
    answers = any(turn["role"] == "assistant" for turn in turns)
    for i, turn in enumerate(turns):
        if turn["role"] == "system" or (i == 0 and turn["role"] != "assistant" and answers):
            raise DataError(
                f"{where}: {turn_name(key, i)} is {article(turn['role'])} turn; an answer follows the prompt, which ends "
                "with the user's turn, so its turns start with the assistant's and hold no system message (give that "
                "in the row's system field). Put the turns before the answer into the prompt."
            )
    return turns


def repeats_prompt(prompt: list[dict] | None, values: list, keys: tuple[str, str], where: str) -> bool:
    """Whether both sides of a pair are message lists that start with the prompt's turns (after a system turn):
    whole conversations beside a prompt column that repeats their start, as UltraFeedback's binarized pairs are (and
    TRL reads them). Such a pair is read as two whole conversations, whose shared turns are the prompt."""
    if prompt is None or not all(isinstance(value, list) for value in values):
        return False
    for value, key in zip(values, keys):
        turns = as_turns(value, where, key)
        turns = turns[1:] if turns and turns[0]["role"] == "system" else turns
        if turns[: len(prompt)] != prompt:
            return False
    return True


def pair_columns(
    row: dict, fields: dict[str, str], where: str, lenient: bool, prompt: str, command: str | None = None
) -> tuple[str, str]:
    """The columns of `row` holding chosen and rejected (a preference pair: dpo, reward); DataError naming those
    missing, whose message says in `prompt` when a row needs a prompt. `command` (tunelab eval): the file is read
    with the run's data.fields, which cannot be changed for it, so the message names the columns it may hold."""
    keys = {name: column(row, fields, name, lenient) for name in ("chosen", "rejected")}
    missing = [fields.get(name, name) for name, key in keys.items() if key is None]
    if missing:
        has = ", ".join(map(str, row)) or "no fields"
        if command:
            mapped = ", ".join(f"{k} -> {fields[k]}" for k in ("chosen", "rejected") if k in fields)
            also = f" (or the columns the run's data.fields maps them to: {mapped})" if mapped else ""
            raise DataError(
                f"{where}: {counted(len(missing), 'field')} missing ({', '.join(missing)}); {command} reads each "
                f"pair from columns named chosen and rejected{also} ({prompt}). This row has {has}. Rename the "
                "columns in "
                f"{location_path(where)}."
            )
        raise DataError(
            f"{where}: {counted(len(missing), 'field')} missing ({', '.join(missing)}); a preference row needs "
            f"chosen and rejected ({prompt}). "
            f"This row has {has}. Map your columns with data.fields, e.g. {{chosen: better, rejected: worse}}."
        )
    return keys["chosen"], keys["rejected"]


def shared_prompt(chosen: list[dict], rejected: list[dict], where: str) -> int:
    """How many turns two whole conversations of a preference pair share: their prompt, which the answers follow.
    DataError when they part at a turn that is not the assistant's, or share no user turn: the two answers would
    answer different prompts, and the pair would teach nothing about which answer is better. When one side ends
    where they part (the two are equal, or one is the start of the other), that side has no answer of its own, and
    the pair is skipped by its reader (the same, or an empty answer), whatever the other side goes on with."""
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    if shared in (len(chosen), len(rejected)):  # a side that ends there has no answer: the caller skips the pair
        return shared
    for name, chat in (("chosen", chosen), ("rejected", rejected)):
        if shared < len(chat) and chat[shared]["role"] != "assistant":
            raise DataError(
                f"{where}: the chosen and rejected conversations part at turn {shared + 1}, the {name} side's "
                f"{chat[shared]['role']} turn: their answers follow different prompts. A pair compares two answers to "
                "one prompt: give both sides the same turns up to the answers (or the prompt in its own field)."
            )
    if not any(m["role"] == "user" for m in chosen[:shared]):
        raise DataError(
            f"{where}: the chosen and rejected conversations share no user turn before their answers. A pair compares "
            "two answers to one prompt: give both sides the prompt's turns (or the prompt in its own field)."
        )
    return shared


def repeats_its_prompt(chosen: list[dict] | None, rejected: list[dict] | None) -> bool:
    """Whether both answers of a chat pair start with the text of the user turn they answer, after the turns the
    sides share: whole transcripts beside a prompt column that holds their start."""
    if chosen is None or rejected is None:
        return False
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    if not 0 < shared < min(len(chosen), len(rejected)) or chosen[shared - 1]["role"] != "user":
        return False
    asked = chosen[shared - 1]["content"].strip()
    return bool(asked) and all(
        side[shared]["role"] == "assistant" and side[shared]["content"].lstrip().startswith(asked)
        for side in (chosen, rejected)
    )


def note_repeated_prompts(pairs: list, report: DataReport) -> None:
    """A note in `report` for the pairs (dpo, reward: each with chosen and rejected sides, `path` and `line`) whose
    answers both start with their prompt's text (`repeats_its_prompt`): each answer is trained, or scored, as one
    that repeats the question before it answers."""
    repeated = [p for p in pairs if repeats_its_prompt(p.chosen.messages, p.rejected.messages)]
    if repeated:
        report.notes.append(
            f"{len(repeated)} of the {len(pairs)} pairs have answers that both start with their prompt's text (e.g. "
            f"{location(repeated[0].path, repeated[0].line)}): each answer is read as one that repeats the question "
            "before it answers. If the sides are whole transcripts, remove the prompt column from the rows: the text "
            "two whole texts share from the start is their prompt"
        )


def answer_blank(messages: list[dict], start: int) -> bool:
    """A pair's chat side whose turns from `start` on (its answer, after the prompt's turns) hold no assistant text:
    none at all, or only blanks. Reward and dpo skip such a pair alike."""
    return not any(m["content"].strip() for m in messages[start:] if m["role"] == "assistant")


SAME = "chosen and rejected are the same"
EMPTY_ANSWER = "empty chosen or rejected answer"


def pair_skip(same: bool, empty: bool, chosen: list[dict] | None, rejected: list[dict] | None) -> str | None:
    """Why a preference pair (dpo, reward) is skipped, the first that holds in this order: its two sides are the
    same (`same`), a side has no answer (`empty`), a side is a chat sft would skip (`chat_flaw` of the sides' chats,
    None for texts); None for a pair to use."""
    if same:
        return SAME
    if empty:
        return EMPTY_ANSWER
    return chat_flaw(chosen, rejected)


def same_tokens(kept: str | None) -> str:
    """The reason to skip a pair whose sides became the same token ids: once cut to the `kept` tokens ("first 512",
    "last 512"), or (None) as rendered, uncut."""
    return f"{SAME} in their {kept} tokens" if kept else f"{SAME} once rendered to tokens"
