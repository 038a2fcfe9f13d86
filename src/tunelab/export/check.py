"""The export checks itself: llama.cpp loads the written GGUF and is compared with tunelab's own merged model.

Checks, each with what makes it fail:
- tokens: llama.cpp splits the training texts and the prompts into the same token ids as the tokenizer (fail if not);
- stop tokens: every end-of-turn token the run trained on stops llama.cpp's generation, and the Modelfile lists it
  (fail if not);
- template: the Modelfile's TEMPLATE, rendered as Ollama does (export/gotemplate.py) with its SYSTEM, gives the
  training text of the run's first examples byte for byte, prompt and answer (fail if not; a warning when the
  Modelfile has no TEMPLATE);
- answers: the run's questions (eval.questions, else a few probes) answered greedily by both; reported as the rate
  of identical answers and the first differing token. Long greedy strings diverge after any near-tie, and
  quantized arithmetic moves logits, so the verdict rests on a teacher-forced comparison instead: both models read
  the prompt + tunelab's answer, and at every answer position we compare the next-token choice (agreement) and the
  logits (largest absolute difference, and that difference over the logits' spread). Agreement under the floor
  for the file's type is a warning.

The verdict (pass / warn / fail) and every number go to NAME.check.json beside the file.
"""

from __future__ import annotations

import json
import math
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from tunelab.atomic import write_json
from tunelab.data.entries import training_examples
from tunelab.data.render import render_prompt
from tunelab.errors import ModelError, TunelabError, counted
from tunelab.eval.questions import check_saved_transform, read_questions
from tunelab.export import llama_cpp
from tunelab.export.gguf_vocab import adds_special, pre_tokenizer_name, tokenizer_spec
from tunelab.export.merge import MergedModel
from tunelab.export.modelfile import (
    PROBES,
    left_out,
    modelfile_path,
    modelfile_stops,
    modelfile_system,
    modelfile_template,
    ollama_text,
    training_text,
)
from tunelab.rundir import read_config, saved_config

# Lowest teacher-forced next-token agreement that passes, per file type: float types round each weight by at most
# 2^-9 (bf16) .. 2^-12 (f16) relative, so only near-ties may flip; 8-bit blocks move logits by ~1%, 4-bit by ~5-10%.
AGREEMENT_FLOOR = {
    "f32": 0.98,
    "f16": 0.97,
    "bf16": 0.95,
    "q8_0": 0.93,
    "q6_k": 0.9,
    "q5_k_m": 0.88,
    "q4_k_m": 0.8,
    "q4_0": 0.75,
}
PROBE_QUESTIONS = (
    "Hello! Who are you?",
    "What is the capital of France?",
    "Write one sentence about the sea.",
    "List three colours.",
)
MAX_NEW_TOKENS = 48
# The template check renders the first conversations of the run's training data: only the first this many rows of
# each source go through data.transform and are converted (all of a large set took seconds per 100k rows).
CHECK_ROWS = 200


@dataclass
class AnswerCheck:
    question: str
    tunelab: str
    llama_cpp: str
    identical: bool
    first_difference: int | None  # index of the first differing generated token
    next_token_agreement: float  # teacher-forced, over tunelab's answer
    max_logit_diff: float
    logit_spread: float  # standard deviation of tunelab's logits at those positions


@dataclass
class GGUFCheck:
    # the checked file's name, which is its path relative to NAME.check.json beside it: right wherever the two are
    # moved or copied together (the path as typed meant something only in the folder the export ran in)
    gguf: str
    qtype: str
    verdict: str = "pass"  # pass | warn | fail
    problems: list[str] = field(default_factory=list)  # what made it fail
    warnings: list[str] = field(default_factory=list)
    tokens: dict = field(default_factory=dict)
    stop_tokens: dict = field(default_factory=dict)
    template: dict = field(default_factory=dict)
    answers: dict = field(default_factory=dict)
    rows: list[AnswerCheck] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def check_path(out: Path) -> Path:
    """Where the self-check's verdict is written: beside the file, `NAME.check.json`."""
    return out.with_name(f"{out.stem}.check.json")


def saved_verdict(out: str | Path) -> str | None:
    """The self-check's verdict written beside the export `out` (None when the check did not run)."""
    path = check_path(Path(out))
    return json.loads(path.read_text())["verdict"] if path.is_file() else None


# what the rows of a task other than sft are: no conversations to render, so the check renders the probes
OTHER_ROWS = {"dpo": "preference pairs", "kto": "feedback rows", "grpo": "prompts without answers"}


def _conversations(run_dir: Path, system: str | None, limit: int) -> tuple[list[list[dict]], str]:
    """The first training conversations of the run (in the first CHECK_ROWS rows of each source), read as training
    read them (`entries.training_examples`: its data.delimiter, data.transform and each mixture source's options), or
    the probe conversations, with `system`, when its data cannot be read (the source says why); RunDirError naming
    the file when its config.yaml (a staged run's last stage's) is gone."""
    # a staged run: its last stage's, whose result it holds; missing, it is refused by name, not replaced by probes
    cfg = saved_config(run_dir, CHECK_NEEDS)
    rows = OTHER_ROWS.get("kto" if cfg.task == "dpo" and cfg.dpo.loss == "kto" else cfg.task)
    try:
        if rows:  # read as sft rows, they failed with the format reader's error, which reads as damaged data
            reason = f"a {cfg.task} run's training rows are {rows}, not conversations"
        else:
            check_saved_transform(run_dir, cfg.data)
            chats = [ex.messages for ex in training_examples(cfg.data, CHECK_ROWS) if ex.messages][:limit]
            if chats:
                return chats, f"the first {CHECK_ROWS} rows of the training data"
            reason = f"the training data has no conversations in its first {CHECK_ROWS} rows"
    except (
        TunelabError,
        OSError,
    ) as exc:  # the data moved, or its transform is gone: the probes still test the template
        reason = str(exc).split("\n")[0][:200]
    # training added the run's system prompt to every conversation that had none
    with_system = [
        [{"role": "system", "content": system}, *p] if system and p[0]["role"] != "system" else list(p) for p in PROBES
    ]
    return with_system, f"probes ({reason})"


CHECK_NEEDS = (
    "the eval.questions and training conversations the export's self-check asks and renders (export with --no-check "
    "to skip the check)"
)


def check_questions(run_dir: Path, limit: int) -> tuple[list[str], str]:
    """The run's eval.questions (its first `limit` that are questions), else the probe questions. A questions file
    the run names but that cannot be read is an error, not a silent fall-back to the probes, and so is a run whose
    config.yaml is gone (RunDirError naming it, as eval and compare say): whether it named questions is unknown."""
    # saved_config raises, naming the file, when config.yaml (a staged run: its last stage's) is gone; the run's own
    # config names the questions (a staged run's records an eval.questions changed by --resume)
    last = saved_config(run_dir, CHECK_NEEDS)
    path = (read_config(run_dir) or last).eval.questions
    if not path:
        return list(PROBE_QUESTIONS[:limit]), "probes"
    check_saved_transform(run_dir, last.data)
    # the last stage's data settings; a file of many questions is read no further than CHECK_ROWS rows
    asked = [q.text for q in read_questions(path, last.data, rows=CHECK_ROWS) if q.prompt is not None]
    return asked[:limit], str(path)


def _first_difference(text_a: str, text_b: str) -> dict:
    i = next((k for k, (x, y) in enumerate(zip(text_a, text_b)) if x != y), min(len(text_a), len(text_b)))
    return {"at_char": i, "training": text_a[max(0, i - 40) : i + 40], "modelfile": text_b[max(0, i - 40) : i + 40]}


def split_difference(tok, ours: list[int], theirs: list[int]) -> dict:
    """Where two splittings of one text part: the first token that differs, the text around it, and the next few
    tokens of each side as text."""
    i = next((k for k, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
    pieces = lambda ids: [tok.decode([t]) for t in ids[i : i + 3]]
    return {
        "at_token": i,
        "near": tok.decode(ours[max(0, i - 4) : i + 4]),
        "tokenizer": pieces(ours),
        "llama_cpp": pieces(theirs),
    }


def _describe_split(difference: dict) -> str:
    return (
        f"the first at token {difference['at_token']}, in {difference['near']!r}: the tokenizer "
        f"{difference['tokenizer']}, llama.cpp {difference['llama_cpp']}"
    )


def _other_pre_tokenizer(tok, llm) -> str:
    """Where the file's pre-tokenizer is not the one the run's tokenizer has (a GGUF base whose name for it the
    file carries, while transformers converted that base's tokenizer into another), a sentence saying so."""
    written = (getattr(llm, "metadata", None) or {}).get("tokenizer.ggml.pre")
    with suppress(ModelError):
        spec = tokenizer_spec(tok)
        trained = pre_tokenizer_name(spec, bool(getattr(tok, "clean_up_tokenization_spaces", False)))
        if written and trained and written != trained:
            return (
                f"; the file's pre-tokenizer is {written!r}, the base model's, while the tokenizer the run trained "
                f"with splits as llama.cpp's {trained!r}"
            )
    return ""


def _check_template(result: GGUFCheck, merged: MergedModel, llm, modelfile: str, run_dir: Path, adds_bos: bool):
    tok, template = merged.tokenizer, merged.template
    system = modelfile_system(modelfile)
    conversations, source = _conversations(run_dir, merged.info.system_prompt, 8)
    mismatched_tokens = []
    for messages in conversations:  # llama.cpp splits the training text as the tokenizer does
        text = training_text(template, messages, False)
        ours = tok(text, add_special_tokens=False)["input_ids"]
        theirs = llm.tokenize(text.encode(), add_bos=False, special=True)
        if ours != theirs:
            mismatched_tokens.append({"text": text[:120], **split_difference(tok, ours, theirs)})
    result.tokens = {"texts": len(conversations), "mismatched": mismatched_tokens}
    if mismatched_tokens:
        result.problems.append(
            f"llama.cpp splits {len(mismatched_tokens)} of {len(conversations)} training texts differently "
            f"({_describe_split(mismatched_tokens[0])}){_other_pre_tokenizer(tok, llm)}"
        )
    why = left_out(modelfile).get("SYSTEM")  # not where the TEMPLATE writes the run's prompt by default itself
    if merged.info.system_prompt and why:
        result.warnings.append(
            f"the Modelfile has no SYSTEM ({why.split('; ')[0]}): give it as each chat's system message"
        )
    go = modelfile_template(modelfile)
    result.template = {"source": source, "conversations": len(conversations), "has_template": go is not None}
    if go is None:
        result.warnings.append("the Modelfile has no TEMPLATE: Ollama guesses one from the GGUF's chat template")
        return
    bos = tok.bos_token or ""
    for messages in conversations:
        # a request to Ollama carries no system message: the Modelfile's SYSTEM takes its place, or where the
        # Modelfile leaves the run's prompt to the TEMPLATE (it holds characters Ollama's reader drops), its default
        prompt = system or (None if why else merged.info.system_prompt)
        asked = (
            messages[1:]
            if prompt and messages[0]["role"] == "system" and messages[0]["content"] == prompt
            else messages
        )
        offset = len(messages) - len(asked)
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            for upto, generation in ((i, True), (i + 1, False)):  # the prompt of the answer, then with the answer
                trained = training_text(template, messages[:upto], generation)
                rendered = ollama_text(go, asked[: upto - offset], system, bos, adds_bos)
                if rendered != trained:
                    result.template["first_mismatch"] = _first_difference(trained, rendered)
                    result.problems.append("the Modelfile's TEMPLATE does not render the training text byte for byte")
                    return
    result.template["byte_identical"] = True


def _some_tokens(tokens: list[str], shown: int = 3) -> str:
    """A few token texts for a message, and how many more: the list can be long, the first ones say enough."""
    more = f" and {len(tokens) - shown} more" if len(tokens) > shown else ""
    return ", ".join(tokens[:shown]) + more


def _check_stops(result: GGUFCheck, merged: MergedModel, llm, modelfile: str) -> None:
    tok = merged.tokenizer
    trained = list(merged.template.stop_token_ids)
    names = tok.convert_ids_to_tokens(trained)
    stops_llama = {name: llama_cpp.is_end_of_generation(llm, i) for name, i in zip(names, trained)}
    listed = modelfile_stops(modelfile)
    result.stop_tokens = {"trained": names, "llama_cpp_stops_on": stops_llama, "modelfile": listed}
    missing = [n for n, ok in stops_llama.items() if not ok]
    if missing:
        result.problems.append(
            f"llama.cpp does not stop generating at {counted(len(missing), 'trained end-of-turn token')} "
            f"{_some_tokens(missing)}: the GGUF file marks {'it' if len(missing) == 1 else 'them'} neither EOS nor "
            "end of generation"
        )
    unlisted = [n for n in names if n not in listed]
    if unlisted:  # only those missing, and the line that adds the first: every listed one is fine
        result.problems.append(
            f"the Modelfile does not stop at {counted(len(unlisted), 'trained end-of-turn token')} "
            f'{_some_tokens(unlisted)}; add PARAMETER stop "{unlisted[0]}"'
            + (" (and one per token)" if len(unlisted) > 1 else "")
        )


@torch.no_grad()
def _answer_tunelab(model, prompt: list[int], stops: list[int], pad: int | None, max_new: int) -> list[int]:
    ids = torch.tensor([prompt])
    out = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new,
        do_sample=False,
        temperature=None,
        top_p=None,
        top_k=None,
        eos_token_id=stops,
        pad_token_id=pad,
    )
    return out[0, len(prompt) :].tolist()


def _answer_llama_cpp(llm, prompt: list[int], max_new: int) -> list[int]:
    got: list[int] = []
    for token in llm.generate(prompt, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
        got.append(token)
        if len(got) >= max_new or llama_cpp.is_end_of_generation(llm, token):
            break
    return got


@dataclass
class _Reference:
    """tunelab's side of one question: the prompt, the greedy answer, and the logits predicting that answer."""

    question: str
    prompt: list[int]
    answer: list[int]
    logits: torch.Tensor  # (len(answer), V)


def _messages(system: str | None, question: str) -> list[dict]:
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]


@torch.no_grad()
def _references(merged: MergedModel, questions: list[str]) -> list[_Reference]:
    """Computed before llama.cpp is loaded: its idle threads would compete with PyTorch's for the cores."""
    tok, template, model = merged.tokenizer, merged.template, merged.model
    stops = list(template.stop_token_ids) or [tok.eos_token_id]
    refs = []
    for q in questions:
        prompt = render_prompt(_messages(merged.info.system_prompt, q), tok, template)
        answer = _answer_tunelab(model, prompt, stops, tok.pad_token_id, MAX_NEW_TOKENS)
        logits = model(torch.tensor([prompt + answer])).logits[0, len(prompt) - 1 : -1].float()  # (n, V)
        refs.append(_Reference(q, prompt, answer, logits))
    return refs


def _teacher_forced(llm, ref: _Reference) -> tuple[int, int, float, float]:
    """(agreeing positions, positions, max |logit diff|, logit spread) over the positions that predict the answer."""
    ids = ref.prompt + ref.answer
    llm.reset()
    llm.eval(ids)
    theirs = torch.from_numpy(llm.scores[len(ref.prompt) - 1 : len(ids) - 1].copy()).float()  # (n, V)
    ours = ref.logits
    agree = int((theirs.argmax(-1) == ours.argmax(-1)).sum())
    return agree, len(ref.answer), float((theirs - ours).abs().max()), float(ours.std())


def _check_answers(result: GGUFCheck, merged: MergedModel, llm, refs: list[_Reference], source: str, qtype: str):
    tok, template = merged.tokenizer, merged.template
    agree = total = identical = mismatched_prompts = 0
    worst = spread = 0.0
    first_split = None
    for ref in refs:
        text, _ = template.render(_messages(merged.info.system_prompt, ref.question), add_generation_prompt=True)
        split = llm.tokenize(text.encode(), add_bos=False, special=True)
        if split != ref.prompt:
            mismatched_prompts += 1
            first_split = first_split or split_difference(tok, ref.prompt, split)
        ours, theirs = ref.answer, _answer_llama_cpp(llm, ref.prompt, MAX_NEW_TOKENS)
        diff = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), None)
        if diff is None and len(ours) != len(theirs):
            diff = min(len(ours), len(theirs))
        a, n, d, s = _teacher_forced(llm, ref)
        agree, total, identical = agree + a, total + n, identical + (diff is None)
        worst, spread = max(worst, d), max(spread, s)
        decode = lambda ids: tok.decode(ids, skip_special_tokens=True).strip()
        result.rows.append(
            AnswerCheck(ref.question, decode(ours), decode(theirs), diff is None, diff, a / max(n, 1), d, s)
        )
    rate = agree / max(total, 1)
    floor = AGREEMENT_FLOOR.get(qtype, 0.75)
    result.answers = {
        "source": source,
        "n": len(refs),
        "identical": identical,
        "agreement_rate": identical / max(len(refs), 1),
        "next_token_agreement": rate,
        "next_token_floor": floor,
        "positions": total,
        "max_logit_diff": worst,
        "max_logit_diff_over_spread": worst / spread if spread else math.inf,
        "prompts_split_differently": mismatched_prompts,
        "first_prompt_split": first_split,
    }
    if mismatched_prompts:
        result.problems.append(
            f"llama.cpp splits {mismatched_prompts} of {len(refs)} prompts differently ({_describe_split(first_split)})"
        )
    if rate < floor:
        result.warnings.append(
            f"teacher-forced next-token agreement {rate:.1%} is under {floor:.0%}, the floor for {qtype}"
        )


def check_export(merged: MergedModel, path: Path, qtype: str, run_dir: Path, questions: int = 8) -> GGUFCheck:
    """Run every check on the exported `path` (its NAME.Modelfile beside it) and write NAME.check.json."""

    result = GGUFCheck(path.name, qtype)
    modelfile_file = modelfile_path(path)
    modelfile = modelfile_file.read_text(encoding="utf-8") if modelfile_file.is_file() else ""
    texts, source = check_questions(run_dir, questions)
    refs = _references(merged, texts)
    context = getattr(merged.model.config, "max_position_embeddings", None) or 2048
    need = max((len(r.prompt) + len(r.answer) for r in refs), default=0) + 8
    with llama_cpp.quiet():
        llm = llama_cpp.load(path, n_ctx=min(context, max(512, need)))
        try:
            adds_bos = adds_special(merged.tokenizer, merged.tokenizer.bos_token_id, first=True)
            _check_stops(result, merged, llm, modelfile)
            _check_template(result, merged, llm, modelfile, run_dir, adds_bos)
            _check_answers(result, merged, llm, refs, source, qtype)
        finally:
            llm.close()
    result.verdict = "fail" if result.problems else "warn" if result.warnings else "pass"
    write_json(check_path(path), result.to_dict())
    return result


def _stops_line(stop_tokens: dict) -> str:
    """How many trained end-of-turn tokens llama.cpp stops at and the Modelfile lists, naming only those that fail."""
    stops = stop_tokens.get("llama_cpp_stops_on", {})
    if not stops:
        return "not checked"
    not_stopping = [k for k, v in stops.items() if not v]
    unlisted = [k for k in stops if k not in stop_tokens.get("modelfile", [])]
    line = (
        f"llama.cpp and the Modelfile stop at {'the' if len(stops) == 1 else f'all {len(stops)}'} trained "
        f"end-of-turn {'token' if len(stops) == 1 else 'tokens'} ({_some_tokens(list(stops))})"
    )
    if not_stopping or unlisted:
        line = f"of {counted(len(stops), 'trained end-of-turn token')}"
        line += f"; llama.cpp DOES NOT STOP at {_some_tokens(not_stopping)}" if not_stopping else ""
        line += f"; the Modelfile DOES NOT LIST {_some_tokens(unlisted)}" if unlisted else ""
    return line


def format_check(result: GGUFCheck, path: str | Path | None = None) -> str:
    """The verdict and its numbers as printed; `path` names the file as the user gave it (else its name)."""
    a = result.answers
    lines = [
        f"self-check of {path or result.gguf} ({result.qtype}) with llama.cpp: {result.verdict.upper()}",
        f"  tokens        {result.tokens.get('texts', 0) - len(result.tokens.get('mismatched', []))}/{result.tokens.get('texts', 0)} training texts split alike",
        f"  stop tokens   {_stops_line(result.stop_tokens)}",
        "  template      "
        + (
            "byte-identical to the training text"
            if result.template.get("byte_identical")
            else "no TEMPLATE in the Modelfile"
            if not result.template.get("has_template")
            else "DIFFERS from the training text"
        )
        + f" ({result.template.get('conversations', 0)} conversations from {result.template.get('source')})",
    ]
    if a:
        lines.append(
            f"  answers       {a['identical']}/{a['n']} identical greedy answers ({a['source']}); next-token agreement "
            f"{a['next_token_agreement']:.1%} over {a['positions']} positions (floor {a['next_token_floor']:.0%}); "
            f"largest logit difference {a['max_logit_diff']:.3f}"
        )
        for row in result.rows:
            if not row.identical:
                lines.append(f"    differs from token {row.first_difference}: {row.question!r}")
                lines.append(f"      tunelab:   {row.tunelab[:100]!r}")
                lines.append(f"      llama.cpp: {row.llama_cpp[:100]!r}")
    lines += [f"  problem: {p}" for p in result.problems] + [f"  warning: {w}" for w in result.warnings]
    return "\n".join(lines)
