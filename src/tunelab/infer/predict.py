"""`tunelab predict`: what a head run (classify or reward) says about texts: a label with the probability of every
label, or a reward. Also the reward model as a reward function for other training (`load_reward_model`).

Inputs are rendered exactly as the run rendered its training rows (its template, system prompt, prompt format,
max_length and field mapping): a `--text` given to a run that was trained on prompts becomes that prompt's user turn. Inputs longer
than the run's max_length are cut to their last max_length tokens and counted (prediction never drops a row).

The reward function, for trainers that score sampled answers (GRPO):

    reward = load_reward_model(run_dir, device="cuda")            # a finished `task: reward` run
    scores = reward(prompts, completions)                         # list[float], one per (prompt, completion)

`prompts[i]` is a user message (str) or a conversation so far (list of {role, content}); `completions[i]` the answer
text. Each pair is rendered as the chat prompt + assistant answer (a run trained on whole texts scores
prompt + completion as one text), in batches of `batch_size`, without gradients.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from tunelab.atomic import write_text
from tunelab.config import DataConfig, load_config
from tunelab.data.report import DataReport, location
from tunelab.data.templates import Template, resolve_template
from tunelab.errors import ConfigError, DataError, RunDirError, TunelabError
from tunelab.models.load import ModelSource, load_tokenizer
from tunelab.rundir import RunInfo, open_info
from tunelab.tasks.classify import read_labelled
from tunelab.tasks.head import SequenceClassifier, load_head_model, run_labels
from tunelab.tasks.head_data import Input, fit, pad_rows, render
from tunelab.tasks.reward import read_scored


@dataclass
class HeadRun:
    """A finished classify or reward run, opened for inference."""

    run_dir: Path
    info: RunInfo
    model: SequenceClassifier
    tokenizer: object
    template: Template
    labels: list[str]  # the head's outputs in order (["reward"] for a reward model)
    data: DataConfig  # the run's data options: fields, system prompt, max_length
    seed: int  # the run's seed: the untrained head is rebuilt from it
    prompt_format: str | None = None  # classify.prompt_format: text inputs are read as training read them

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def chat_input(self) -> bool:
        """The run read chats (prompts, messages), not raw texts."""
        return self.info.extra.get("input", "text") != "text"


def open_head_run(run_dir: str | Path, device: str = "auto") -> HeadRun:
    run_dir = Path(run_dir)
    info = open_info(run_dir, heads=True)
    if info.task not in ("classify", "reward"):
        raise RunDirError(
            f"{run_dir}: a {info.task} run generates text; 'tunelab predict' needs a classify or reward run. Use "
            "'tunelab generate' or 'tunelab compare' for it."
        )
    try:
        cfg = load_config(run_dir / "config.yaml").config
    except ConfigError as exc:
        raise RunDirError(f"{run_dir / 'config.yaml'}: the run's saved config cannot be read ({exc}).") from None
    tokenizer = load_tokenizer(ModelSource(str(run_dir), str(run_dir)), info.trust_remote_code)
    model = load_head_model(run_dir, info, device)
    template = resolve_template(info.template, tokenizer)
    labels = run_labels(run_dir)
    return HeadRun(
        run_dir, info, model, tokenizer, template, labels, cfg.data, cfg.train.seed, cfg.classify.prompt_format
    )


@torch.no_grad()
def head_outputs(
    model: SequenceClassifier, run: HeadRun, inputs: list[Input], batch_size: int = 16, wheres: list[str] | None = None
) -> tuple[torch.Tensor, int]:
    """Logits (N, K) fp32 on the CPU for `inputs`, and how many inputs were cut to max_length."""
    ids = render(inputs, run.tokenizer, run.template, wheres, run.prompt_format)
    fitted = [fit(row, run.data.max_length, "truncate") for row in ids]
    cut = sum(len(a) < len(b) for a, b in zip(fitted, ids))
    out = []
    for start in range(0, len(fitted), batch_size):
        batch = {
            k: v.to(run.device)
            for k, v in pad_rows(fitted[start : start + batch_size], run.tokenizer.pad_token_id).items()
        }
        out.append(model(batch["input_ids"], batch["attention_mask"], batch["position_ids"]).float().cpu())
    return (torch.cat(out) if out else torch.zeros(0, len(run.labels))), cut


@dataclass
class Prediction:
    where: str  # file:line of the row, or "text 1" for a text given directly
    input: str  # the input as given (for display): the text, or the last user turn and the answer
    label: str | None = None  # classify: the most probable label
    probabilities: dict[str, float] | None = None  # classify: every label's probability
    reward: float | None = None  # reward: the scalar score
    expected: str | None = None  # classify: the label the row gives, if any


def _shown(item: Input) -> str:
    if item.messages is None:
        return item.text or ""
    turns = [m for m in item.messages if m["role"] != "system"]
    return "\n".join(f"{m['role']}: {m['content']}" for m in turns[-2:]) if len(turns) > 1 else turns[0]["content"]


def text_input(run: HeadRun, text: str) -> Input:
    """A text given directly, as the run's training rows were given: a user turn for a run trained on chats."""
    if not run.chat_input:
        return Input(text=text)
    system = [{"role": "system", "content": run.data.system_prompt}] if run.data.system_prompt else []
    return Input(messages=system + [{"role": "user", "content": text}])


def scored_input(run: HeadRun, prompt: str | list[dict], answer: str) -> Input:
    """A prompt and its answer as the reward model reads them (a chat, or one text for a run trained on texts)."""
    if not run.chat_input:
        shown = prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)
        return Input(text=shown + answer)
    turns = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if run.data.system_prompt and not (turns and turns[0]["role"] == "system"):
        turns = [{"role": "system", "content": run.data.system_prompt}] + turns
    return Input(messages=turns + [{"role": "assistant", "content": answer}])


def predict(
    run: str | Path | HeadRun,
    data: str | Path | None = None,
    texts: list[str] | None = None,
    prompt: str | None = None,
    answers: list[str] | None = None,
    batch_size: int = 16,
    device: str = "auto",
) -> list[Prediction]:
    """Predictions of a head run for the rows of `data` and/or `texts` (classify or reward), or for `answers` to
    `prompt` (reward)."""
    run = run if isinstance(run, HeadRun) else open_head_run(run, device)
    d = run.data
    items: list[tuple[Input, str, str | None]] = []  # (input, where, expected label)
    if data is not None:
        report = DataReport()
        if run.info.task == "classify":
            rows = read_labelled([str(data)], d.fields, d.system_prompt, report, require_label=False, lenient=True)
            items += [(r.input, location(r.path, r.line), r.label) for r in rows]
        else:
            items += [
                (x, location(p, n), None) for x, p, n in read_scored([str(data)], d.fields, d.system_prompt, report)
            ]
        if report.skips:
            reasons = "; ".join(f"{reason} at {', '.join(s.locations)}" for reason, s in report.skips.items())
            raise DataError(f"{data}: rows cannot be scored: {reasons}. Fix or remove them.")
    items += [(text_input(run, t), f"text {i + 1}", None) for i, t in enumerate(texts or [])]
    if answers:
        if run.info.task != "reward":
            raise TunelabError("--prompt/--answer score answers with a reward run; this is a classify run: use --text.")
        if prompt is None:
            raise TunelabError("--answer needs the --prompt it answers.")
        items += [(scored_input(run, prompt, a), f"answer {i + 1}", None) for i, a in enumerate(answers)]
    if not items:
        raise TunelabError("nothing to predict: give --data FILE, --text TEXT, or --prompt TEXT with --answer TEXT.")
    logits, _ = head_outputs(run.model, run, [x for x, _, _ in items], batch_size, [w for _, w, _ in items])
    if run.info.task == "reward":
        return [Prediction(w, _shown(x), reward=float(r)) for (x, w, _), r in zip(items, logits[:, 0])]
    probs = logits.softmax(dim=-1)
    return [
        Prediction(w, _shown(x), run.labels[int(p.argmax())], dict(zip(run.labels, map(float, p))), expected=e)
        for (x, w, e), p in zip(items, probs)
    ]


def format_predictions(predictions: list[Prediction], width: int = 70) -> str:
    lines = []
    for p in predictions:
        shown = " ".join(p.input.split())
        shown = shown if len(shown) <= width else shown[: width - 3] + "..."
        if p.reward is not None:
            lines.append(f"{p.reward:+.4f}  {shown}  ({p.where})")
            continue
        top = sorted(p.probabilities.items(), key=lambda kv: -kv[1])[:3]
        probs = ", ".join(f"{label} {value:.3f}" for label, value in top)
        mark = "" if p.expected is None else (" ✓" if p.expected == p.label else f" ✗ expected {p.expected}")
        lines.append(f"{p.label}{mark}  [{probs}]  {shown}  ({p.where})")
    return "\n".join(lines)


def check_out(path: str | Path, overwrite: bool) -> Path:
    """The predictions file `path`, if it may be written: a .csv or .jsonl, not replacing a file unless overwrite."""
    path = Path(path)
    if path.suffix not in (".csv", ".jsonl"):
        raise ConfigError(f"option '--out' is {path}; predictions are written as .csv or .jsonl.")
    if path.exists() and not overwrite:
        raise RunDirError(f"{path} exists. Pass --overwrite to replace it, or choose another --out.")
    return path


def save_predictions(predictions: list[Prediction], path: str | Path, overwrite: bool = False) -> Path:
    """A .csv (one column per label's probability) or .jsonl file; an existing file only with overwrite."""
    path = check_out(path, overwrite)
    if path.suffix == ".jsonl":
        return write_text(path, "".join(json.dumps(asdict(p), ensure_ascii=False) + "\n" for p in predictions))
    labels = list(predictions[0].probabilities or {}) if predictions else []
    buf = io.StringIO()
    writer = csv.writer(buf)
    if predictions and predictions[0].reward is not None:
        writer.writerow(["where", "input", "reward"])
        writer.writerows([p.where, p.input, p.reward] for p in predictions)
    else:
        writer.writerow(["where", "input", "label", *(f"p_{label}" for label in labels), "expected"])
        writer.writerows(
            [p.where, p.input, p.label, *(p.probabilities[label] for label in labels), p.expected or ""]
            for p in predictions
        )
    return write_text(path, buf.getvalue())


class RewardModel:
    """A finished reward run as a reward function: (prompts, completions) -> one float per pair."""

    def __init__(self, run: HeadRun, batch_size: int = 16):
        if run.info.task != "reward":
            raise RunDirError(f"{run.run_dir}: a {run.info.task} run, not a reward model (task: reward).")
        self.run, self.batch_size = run, batch_size

    def __call__(self, prompts: list[str | list[dict]], completions: list[str]) -> list[float]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        inputs = [scored_input(self.run, p, c) for p, c in zip(prompts, completions)]
        rewards, _ = head_outputs(self.run.model, self.run, inputs, self.batch_size)
        return rewards[:, 0].tolist()


def load_reward_model(run_dir: str | Path, device: str = "auto", batch_size: int = 16) -> RewardModel:
    """The reward function of a finished `task: reward` run (see the module docstring)."""
    return RewardModel(open_head_run(run_dir, device), batch_size)
