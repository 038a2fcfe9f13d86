"""A head run (classify or reward) opened for scoring (for predict and eval, one that did not finish: from its
newest checkpoint), and the reward model as a reward function: what `tunelab predict` (infer/predict.py) shows and what task grpo scores sampled answers with (tasks/rewards.py). It sits
with the tasks, below infer/, because a training objective uses it.

Inputs are rendered exactly as the run rendered its training rows (its template, system prompt, max_length and
field mapping). Inputs longer than the run's max_length keep their start (BOS, system prompt, template header) and
last tokens, as in training, and are counted; an input whose start alone fills max_length, which training skips, is a
DataError naming it (its last tokens alone would be a form the head never read).

The reward function, for trainers that score sampled answers (GRPO):

    reward = load_reward_model(run_dir, device="cuda")            # a finished `task: reward` run
    scores = reward(prompts, completions)                         # list[float], one per (prompt, completion)

`prompts[i]` is a user message (str) or a conversation so far (list of {role, content}); `completions[i]` the answer
text. Each pair is rendered as the chat prompt + assistant answer (a run trained on whole texts scores
prompt + completion as one text), in batches of `batch_size`, without gradients. A reasoning model's thought
(`<think>...</think>` first) is not scored: the answer after it is (data/reasoning.py `answer_apart`); where the run's
template ends the prompt with `<think>`, the completion starts inside the thought, its text up to `</think>` the
thought, as the server reads such an answer.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from tunelab.config import DataConfig
from tunelab.config.flags import PYTHON, Spelling
from tunelab.data.reasoning import answer_apart
from tunelab.data.templates import Template, run_template
from tunelab.errors import ConfigError, DataError, RunDirError, article, counted
from tunelab.models.base_record import run_base
from tunelab.models.load import ModelSource, load_tokenizer
from tunelab.models.untrained import repair_rows
from tunelab.run_info import RunInfo
from tunelab.rundir import HEAD_TASKS, federation_stopped, open_info, read_info, saved_config
from tunelab.tasks.head import SequenceClassifier, attach_head, load_head_model, run_labels
from tunelab.tasks.head_data import Input, pad_rows, render_within, thought_opener, with_system
from tunelab.tasks.head_fit import Keep, fit, overlong_reason, starts
from tunelab.tasks.pair_data import same_tokens
from tunelab.training.build import build_model
from tunelab.training.checkpoint import STEP_PREFIX, intact_checkpoint
from tunelab.training.initial_factors import kept_factors
from tunelab.training.sharded_checkpoint import load_weights


@dataclass
class HeadRun:
    """A classify or reward run, opened for inference: its result, or an unfinished run's newest checkpoint."""

    run_dir: Path
    info: RunInfo
    model: SequenceClassifier
    tokenizer: object
    template: Template
    labels: list[str]  # the head's outputs in order (["reward"] for a reward model)
    data: DataConfig  # the run's data options: fields, system prompt, max_length
    seed: int  # the run's seed: the untrained head is rebuilt from it
    prompt_format: str | None = None  # classify.prompt_format: text inputs are read as training read them
    step: int | None = None  # the training step of the weights opened (the result's: the last, or keep_best's)
    checkpoint: Path | None = None  # the checkpoint opened, of a run that did not finish; None: the run's result

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def chat_input(self) -> bool:
        """The run read chats (prompts, messages), not raw texts."""
        return self.info.extra.get("input", "text") != "text"


def open_head_run(
    run_dir: str | Path, device: str = "auto", from_checkpoint: bool = False, spelling: Spelling = PYTHON
) -> HeadRun:
    """The run's result; with `from_checkpoint` (predict, eval), for a run that did not finish (stopped, or still
    training), its newest intact checkpoint, saying so on stderr (`_checkpoint_run`). A reward model that trains
    another run (load_reward_model) must have finished. `spelling`: how refusals name the commands (`tunelab
    predict`, or tunelab.predict() in Python)."""
    run_dir = Path(run_dir)
    unfinished = _unfinished(run_dir) if from_checkpoint else None
    if unfinished is not None:
        return _checkpoint_run(run_dir, *unfinished, device, spelling)
    info = open_info(run_dir, heads=True, spelling=spelling)
    if info.task not in ("classify", "reward"):
        predict, instead = (
            ("'tunelab predict'", "'tunelab generate' or 'tunelab compare'")
            if spelling.flags
            else ("tunelab.predict()", "tunelab.generate() or tunelab.compare()")
        )
        raise RunDirError(
            f"{run_dir}: {article(info.task)} run generates text; {predict} needs a classify or reward run. Use "
            f"{instead} for it."
        )
    cfg = saved_config(run_dir, "the data settings its inputs are rendered with (data.fields, max_length) and its seed")
    tokenizer = load_tokenizer(ModelSource(str(run_dir), str(run_dir)), info.trust_remote_code)
    model = load_head_model(run_dir, info, device)
    template = run_template(info.template, tokenizer, run_dir)
    labels = run_labels(run_dir)
    best = info.extra.get("best")
    step = best["step"] if isinstance(best, dict) and isinstance(best.get("step"), int) else info.steps
    return HeadRun(
        run_dir, info, model, tokenizer, template, labels, cfg.data, cfg.train.seed, cfg.classify.prompt_format, step
    )


def _unfinished(run_dir: Path) -> tuple[RunInfo, Path] | None:
    """An unfinished classify or reward run with a checkpoint (of one process, or sharded by several ranks), and its
    newest intact checkpoint; None for any other run, which open_info opens or refuses (the run did not finish:
    resume it)."""
    try:
        info = read_info(run_dir, require_finished=False)
    except RunDirError:
        return None
    if info.finished or info.task not in HEAD_TASKS or info.extra.get("stages") or federation_stopped(info.extra):
        return None
    checkpoint = intact_checkpoint(run_dir)[0]
    return None if checkpoint is None else (info, checkpoint)


def _checkpoint_run(run_dir: Path, info: RunInfo, checkpoint: Path, device: str, spelling: Spelling) -> HeadRun:
    """The run's model as training holds it at `checkpoint`: the base with the method applied (method.init pissa or
    olora: over the residual its kept A0, B0 rebuild, as --resume rebuilds it) and the repaired rows repaired again, a
    new head, then the checkpoint's trainable weights (the head among them) copied in."""
    cfg = saved_config(run_dir, "the model, method and data settings its checkpoint was trained with")
    labels = info.extra.get("labels") if info.task == "classify" else ["reward"]
    if not (isinstance(labels, list) and labels and all(isinstance(label, str) for label in labels)):
        raise RunDirError(f"{run_dir}: run.json records no labels of the head (extra.labels); resume the run first.")
    source = run_base(info)
    start = kept_factors(info, cfg.method, spelling, "scoring its checkpoint", _note)  # RunDirError (exit 2)
    built = build_model(source, dataclasses.replace(cfg.model, device=device), cfg.method, resumed=info, start=start)
    repair_rows(built.model, info.fixed_untrained_tokens)
    attach_head(built, len(labels), cfg.train.seed)
    load_weights(checkpoint, built.model)  # a sharded checkpoint's slices put together
    built.model.eval()
    tokenizer = load_tokenizer(source, info.trust_remote_code)
    step = int(checkpoint.name.removeprefix(STEP_PREFIX))
    print(
        f"note: {run_dir} did not finish{f' ({info.total_steps} steps asked)' if info.total_steps else ''}; scoring "
        f"its newest checkpoint, step {step} ({checkpoint}). Resume the run to score its result.",
        file=sys.stderr,
        flush=True,
    )
    template = run_template(info.template, tokenizer, run_dir)
    return HeadRun(
        run_dir,
        info,
        built.model,
        tokenizer,
        template,
        labels,
        cfg.data,
        cfg.train.seed,
        cfg.classify.prompt_format,
        step,
        checkpoint,
    )


def _note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)  # stdout holds predict's scores


def refuse_other_input_kind(run: HeadRun, inputs: list[Input], wheres: list[str], pairs: bool = False) -> None:
    """DataError naming the first row of a file given as a text to a run that read only chats in training, or as a
    chat to one that read only texts: a chat is rendered with the prompt template and a text is not, so the head would
    score a format it never read, and its label or reward would differ without a word. A run of mixed inputs (or one
    written before the kind was recorded) takes both. `pairs`: the inputs are the sides of preference pairs."""
    trained = run.info.extra.get("input")
    if trained not in ("chat", "text"):
        return
    for item, where in zip(inputs, wheres):
        if item.is_chat == (trained == "chat"):
            continue
        if pairs:
            given, hint = (
                ("a chat (a prompt with its answers, or conversations)", "chosen and rejected as texts, no prompt")
                if item.is_chat
                else ("whole texts (chosen and rejected without a prompt)", "a prompt column beside the answers")
            )
        elif item.is_chat:
            given, hint = "a chat (prompt, question, instruction or messages)", "a 'text' column"
        else:
            given, hint = "a text ('text' column)", "a prompt, question or messages column (or pass it with --text)"
        raise DataError(
            f"{where}: the row gives {given}, but the run read only {trained}s in training, and the head would score "
            f"it in a form it never read (chats are rendered with the prompt template, texts are not). Give it as "
            f"the training rows were given: {hint}."
        )


def training_skips(
    run: HeadRun, inputs: list[Input], wheres: list[str] | None = None, pairs: bool = False
) -> dict[int, str]:
    """The inputs that training skips once rendered, by index, with training's reason: those longer than max_length
    under the run's data.overlong=drop, and those whose start (BOS, system prompt, template header) fills max_length
    (`head_fit.overlong_reason`). `pairs`: the inputs are the P chosen sides then the P rejected ones, and the
    indices are the pairs', skipped as well when their two sides are the same tokens once rendered (and cut), as
    reward training skips them (`pair_data.same_tokens`). `tunelab eval` skips them too, so it scores the rows
    training's eval scores."""
    limit, overlong = run.data.max_length, run.data.overlong
    ends = limit if overlong == "truncate" else None  # read from their ends alone where long (render_within)
    ids, _, tails = render_within(inputs, run.tokenizer, run.template, wheres, run.prompt_format, keep_over=ends)
    kept = (
        starts(inputs, ids, run.tokenizer, run.template, limit, run.prompt_format, tails)
        if overlong == "truncate"
        else None
    )
    kept = kept or [Keep()] * len(ids)
    fitted = [fit(row, limit, overlong, keep) for row, keep in zip(ids, kept)]
    skips = {i: overlong_reason(limit, keep) for i, (row, keep) in enumerate(zip(fitted, kept)) if row is None}
    if not pairs:
        return skips
    n, out = len(inputs) // 2, {}
    for i in range(n):
        if i in skips or n + i in skips:
            out[i] = overlong_reason(limit, max(kept[i], kept[n + i], key=lambda k: k.fixed))
        elif fitted[i] == fitted[n + i]:
            cut = len(fitted[i]) < len(ids[i]) or len(fitted[n + i]) < len(ids[n + i])
            out[i] = same_tokens(f"{limit} kept" if cut else None)
    return out


@torch.no_grad()
def head_outputs(
    model: SequenceClassifier,
    run: HeadRun,
    inputs: list[Input],
    batch_size: int = 16,
    wheres: list[str] | None = None,
    progress: str | None = None,
) -> tuple[torch.Tensor, int]:
    """Logits (N, K) fp32 on the CPU for `inputs`, and how many inputs were cut to max_length. `progress`: the label
    of a progress bar on stderr over the batches (none by default: a grpo reward scores every step)."""
    limit = run.data.max_length  # a long input is read from its ends alone (render_within)
    ids, _, tails = render_within(inputs, run.tokenizer, run.template, wheres, run.prompt_format, keep_over=limit)
    kept = starts(inputs, ids, run.tokenizer, run.template, limit, run.prompt_format, tails)
    fitted = [fit(row, limit, "truncate", keep) for row, keep in zip(ids, kept)]
    for i, (row, keep) in enumerate(zip(fitted, kept)):
        if row is None:  # training skips it: its last tokens alone are a form the head never read
            where = wheres[i] if wheres else f"input {i + 1}"
            raise DataError(
                f"{where}: cannot be scored: {overlong_reason(limit, keep)}, so training would have skipped it. "
                "Shorten its system prompt, or score it with a run of a larger data.max_length."
            )
    cut = sum(len(a) < len(b) for a, b in zip(fitted, ids))
    out, starts_at = [], range(0, len(fitted), batch_size)
    for start in tqdm(starts_at, desc=progress, unit="batch", leave=False) if progress else starts_at:
        batch = {
            k: v.to(run.device)
            for k, v in pad_rows(fitted[start : start + batch_size], run.tokenizer.pad_token_id).items()
        }
        out.append(model(batch["input_ids"], batch["attention_mask"], batch["position_ids"]).float().cpu())
    return (torch.cat(out) if out else torch.zeros(0, len(run.labels))), cut


def _prompt_turns(run: HeadRun, prompt: str | list[dict]) -> list[dict]:
    turns = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    return with_system(turns, {}, {}, "the prompt", run.data.system_prompt)  # a blank system is none, as in training


def scored_input(run: HeadRun, prompt: str | list[dict], answer: str) -> Input:
    """A prompt and its answer as the reward model reads them (a chat, or one text for a run trained on texts)."""
    if not run.chat_input:
        shown = prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)
        return Input(text=shown + answer)
    return Input(messages=_prompt_turns(run, prompt) + [{"role": "assistant", "content": answer}])


def opens_thought(run: HeadRun, prompt: str | list[dict], where: str) -> bool:
    """Whether the run's template ends this prompt's generation prompt with `<think>` (DeepSeek-R1's later templates):
    an answer to it starts inside the thought, without its `<think>`, as the server reads it (data/reasoning.py). A
    run of texts has no generation prompt."""
    return run.chat_input and thought_opener(run.tokenizer, run.template)(_prompt_turns(run, prompt), where)


def _completion_text(completion, where: str) -> str:
    """A completion's text: a text, or TRL's conversational form, a list of one assistant message; ConfigError naming
    `where` for anything else (it failed deep inside with an AttributeError)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list | tuple) and len(completion) == 1 and isinstance(completion[0], dict):
        message = completion[0]
        if message.get("role", "assistant") == "assistant" and isinstance(message.get("content"), str):
            return message["content"]
    shown = repr(completion) if len(repr(completion)) <= 60 else repr(completion)[:57] + "..."
    raise ConfigError(
        f"{where}: a completion is a text, or a list of one assistant message ([{{'role': 'assistant', 'content': "
        f"...}}], as TRL's GRPOTrainer gives a conversation's), got {article(type(completion).__name__)} ({shown})."
    )


def _check_pairs(prompts, answers, name: str) -> None:
    """ConfigError unless `prompts` and `answers` (given as `name`) are lists of one item per pair scored."""
    for what, value in (("prompts", prompts), (name, answers)):
        if not isinstance(value, list | tuple):  # a text alone would be scored character by character
            raise ConfigError(
                f"reward model: '{what}' must be a list (one item per pair scored), got {article(type(value).__name__)}; "
                f"for one pair, give [{what[:-1]}]."
            )
    if len(prompts) != len(answers):
        raise ConfigError(
            f"reward model: {counted(len(prompts), 'prompt')} but {counted(len(answers), name[:-1])}; give one each."
        )


class RewardModel:
    """A finished reward run as a reward function: (prompts, completions) -> one float per pair. It is called as
    TRL's GRPOTrainer calls a reward function: by keyword, with the trainer's other values beside (completion_ids,
    trainer_state, the dataset's columns), which it does not read, and its `__name__` names it in the trainer's logs."""

    def __init__(self, run: HeadRun, batch_size: int = 16):
        refuse_other_than_reward(run.run_dir, run.info.task)
        self.run, self.batch_size = run, batch_size
        self.__name__ = Path(run.run_dir).name

    def __call__(self, prompts: list[str | list[dict]], completions: list, **_unread) -> list[float]:
        _check_pairs(prompts, completions, "completions")
        wheres = [self._where(i, len(prompts)) for i in range(len(prompts))]
        # the answer after its thought is scored (an answer that is all thought: an empty one), as grpo reads it; a
        # thought the prompt opened (its template ends with <think>) starts the answer without its <think>
        texts = [_completion_text(c, w) for c, w in zip(completions, wheres)]
        answers = [answer_apart(c, opens_thought(self.run, p, w))[1] for p, c, w in zip(prompts, texts, wheres)]
        return self.score(prompts, answers)

    def _where(self, i: int, n: int) -> str:
        return f"reward model {self.run.run_dir}, answer {i + 1} of {n} scored"

    def score(self, prompts: list[str | list[dict]], answers: list[str]) -> list[float]:
        """The rewards of answers already read apart from their thoughts (grpo's samples), scored as written."""
        _check_pairs(prompts, answers, "answers")
        odd = next((i for i, a in enumerate(answers) if not isinstance(a, str)), None)
        if odd is not None:
            kind = article(type(answers[odd]).__name__)
            raise ConfigError(f"{self._where(odd, len(answers))}: an answer is a text, got {kind}.")
        inputs = [scored_input(self.run, p, a) for p, a in zip(prompts, answers)]
        wheres = [self._where(i, len(inputs)) for i in range(len(inputs))]
        rewards, _ = head_outputs(self.run.model, self.run, inputs, self.batch_size, wheres)
        return rewards[:, 0].tolist()


def refuse_other_than_reward(run_dir: str | Path, task: str) -> None:
    """RunDirError for a run that is no reward model (sft, classify, dpo, ...), named as a reward function's run."""
    if task != "reward":
        raise RunDirError(
            f"{run_dir}: {article(task)} run, not a reward model; a reward function is a finished run of task: reward."
        )


def load_reward_model(run_dir: str | Path, device: str = "auto", batch_size: int = 16) -> RewardModel:
    """The reward function of a finished `task: reward` run (see the module docstring); another run is refused
    before its model loads."""
    refuse_other_than_reward(run_dir, open_info(run_dir, heads=True, spelling=PYTHON).task)
    return RewardModel(open_head_run(run_dir, device), batch_size)
