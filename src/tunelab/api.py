"""The Python API: what each CLI subcommand calls.

import tunelab
result = tunelab.train("examples/company_faq/config.yaml", {"train.max_steps": 20})
comparison = tunelab.compare(result.run_dir, questions="examples/company_faq/heldout.jsonl", save=False)
print(tunelab.generate(result.run_dir, "Where is your office?"))

A classify or reward run (`task: classify | reward`) is read by `tunelab.predict` and `tunelab.evaluate`, from its
folder or from the run `tunelab.open_head_run` loaded once; a reward run also serves as a reward function:
`tunelab.load_reward_model(run_dir)(prompts, completions) -> list[float]`. The types the functions return are the
package's too (tunelab/__init__.py `_TYPES`).

Where a module's function takes exactly the API's arguments it is the API's, with only its argument types checked
here: `export_gguf` (export/gguf.py), `push` (export/push.py), `serve` and `start_server` (server/serve.py), `open_run` (infer/run.py).
`train` is api_train.py's: the checks before training, and the comparison and push after it.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

from tunelab import _API
from tunelab.api_args import at_least as _at_least
from tunelab.api_args import checked as _checked
from tunelab.api_args import checked_text as _text
from tunelab.api_args import checked_texts as _texts
from tunelab.api_args import refuse_overwrite_unsaved as _refuse_overwrite_unsaved
from tunelab.api_args import shown_answers as _shown_answers
from tunelab.api_args import with_batch_size as _with_batch_size
from tunelab.api_train import train as _train
from tunelab.config.flags import CLI, PYTHON, Spelling
from tunelab.config.overrides import FlagValues
from tunelab.data.report import DataReport
from tunelab.data.sources import refuse_missing_file
from tunelab.errors import ConfigError, DataError, RunDirError, counted
from tunelab.eval.compare import (
    Comparison,
    check_writable,
    compare_file,
    format_comparison,
    save_comparison,
)
from tunelab.eval.compare import compare as _compare
from tunelab.eval.questions import Question, configured_questions, read_questions, run_data_config
from tunelab.export.gguf import export_gguf as _export_gguf
from tunelab.export.push import push as _push
from tunelab.infer.conversation import as_trained
from tunelab.infer.generate import (
    DEFAULT_MAX_NEW_TOKENS,
    GenerationSettings,
    answer_generator,
    answer_one,
    check_seed,
    longer_answers,
    say_config_notice,
)
from tunelab.infer.run import LoadedRun, check_opened_on, opened
from tunelab.infer.run import open_run as _open_run
from tunelab.run_stamp import check_same_run, run_stamp
from tunelab.rundir import HEAD_TASKS, open_info, read_info
from tunelab.server.serve import serve as _serve
from tunelab.server.serve import start_server as _start_server
from tunelab.tasks.head_run import HeadRun
from tunelab.training.plan_config import plan_config
from tunelab.training.recipe import resolve

if TYPE_CHECKING:  # the types the functions return, which their modules import when called
    from tunelab.conversion_cache import CacheEntry
    from tunelab.data.checks import CheckResult
    from tunelab.eval.evaluate import EvalResult
    from tunelab.eval.heads import HeadEvalResult
    from tunelab.federated.run import FederateResult
    from tunelab.infer.predict import Prediction
    from tunelab.tasks.head_run import RewardModel
    from tunelab.training.plan_config import StagesPlanReport
    from tunelab.training.plan_report import PlanReport

__all__ = list(_API)


train = _train
export_gguf = _checked(_export_gguf)
push = _checked(_push)
serve = _checked(_serve)
start_server = _checked(_start_server)  # serve's server on a background thread: .url, .stop()
open_run = _checked(_open_run)


@_checked
def plan(
    config=None, overrides: dict | None = None, *, gpu_memory: str | None = None, nproc: int = 1
) -> PlanReport | StagesPlanReport:
    """The memory planner for a config (`tunelab plan`): a PlanReport whose .memory holds the candidates with their
    predicted peak and speed, the chosen one and why; .text() is what the CLI prints. A staged config gives a
    StagesPlanReport: .stages, each stage's (name, PlanReport). Loads the data and the model's config, not its
    weights. gpu_memory (like "24GiB") overrides train.gpu_memory; BudgetError (a ConfigError) when nothing fits,
    naming the minimum and its largest part; so is gpu_memory beside an override of train.gpu_memory (a config
    file's train.gpu_memory it overrides). nproc: the processes `tunelab train --nproc` would start (the plan is
    each GPU's; train.sharding fsdp2 divides the weights and training state among them)."""
    _at_least(nproc, "nproc", 1, CLI if isinstance(overrides, FlagValues) else PYTHON)
    if gpu_memory is not None and isinstance(overrides, Mapping) and "train.gpu_memory" in overrides:
        given = overrides["train.gpu_memory"]
        # the CLI's flags by their flags, a Python caller's keyword and override by what it wrote
        keyword, key = (
            ("--gpu-memory ", "--train.gpu_memory ")
            if isinstance(overrides, FlagValues)
            else ("gpu_memory=", "overrides['train.gpu_memory'] = ")
        )
        raise ConfigError(f"{keyword}{gpu_memory!r} and {key}{given!r} both give the plan's budget; give one of them.")
    budget_name = "--gpu-memory" if isinstance(overrides, FlagValues) else "gpu_memory="
    return plan_config(resolve(config, overrides), gpu_memory, nproc, budget_name)


@_checked
def check(
    config=None,
    overrides: dict | None = None,
    *,
    resume: bool = False,
    overwrite_non_run: bool = False,
    html: str | Path | None = None,
    examples: int = 3,
    model: bool = True,
    show: bool = False,
) -> CheckResult:
    """Everything `tunelab check` checks, for the same arguments as `train`; returns a CheckResult (.passed, .items,
    .html: where the page was written). Writes nothing into output_dir. model=False skips the checks that load it."""
    from tunelab.checks.run import run_check

    _at_least(examples, "examples", 0)
    return run_check(
        config,
        overrides,
        resume=resume,
        overwrite_non_run=overwrite_non_run,
        html=html,
        examples=examples,
        model=model,
        show=show,
    )


@_checked
def compare(
    run: str | Path | LoadedRun,
    questions: str | Path | None = None,
    question: str | list[str] | None = None,
    settings: GenerationSettings | None = None,
    device: str = "auto",
    save: bool = True,
    show: bool = False,
    refusal: str | None = None,
    base_precision: str = "trained",
    overwrite: bool = False,
    show_answers: bool = False,
    batch_size: int | None = None,
    seed: int | None = None,
    *,
    spelling: Spelling = PYTHON,
) -> Comparison:
    """Base and tuned model answer the same questions (from a file and/or given directly; neither: the run's
    eval.questions); scored where expected answers exist. `settings` default to greedy answers of the run's eval.max_new_tokens; `refusal` to the run's
    refusal sentence. `save` writes RUN_DIR/compare.json, which must not exist unless `overwrite`. `show` prints the
    scores, and the answers too with `show_answers`. `base_precision`: trained (a QLoRA adapter over the NF4 base it
    was trained on) or 16bit (over the unquantized weights). `batch_size` (--batch-size): questions answered together;
    default settings.batch_size (16). seed: sampled answers (temperature above 0) draw from a generator seeded with it,
    a fresh one for each model, so the same seed gives the same answers; default the run's train.seed (42 where its
    config.yaml is gone); compare.json records it. Greedy answers draw nothing."""
    check_seed(seed, "--seed" if spelling.flags else "compare(): argument 'seed'")  # before the model loads
    _shown_answers(show, show_answers)
    _refuse_overwrite_unsaved(save, overwrite, "compare.json", spelling)
    settings = _with_batch_size(settings, batch_size)
    run_dir = run.run_dir if isinstance(run, LoadedRun) else Path(run)
    if refusal is not None:
        refusal = _text(refusal, "refusal", blank=False, flag=spelling.given("refusal") if spelling.flags else None)
    stamp = run_stamp(run_dir)
    info = run.info if isinstance(run, LoadedRun) else open_info(run_dir, spelling=spelling)
    dropped = DataReport()
    asked = _texts(question, "question", blank=False, flag=spelling.given("question") if spelling.flags else None)
    if question is not None and not asked:  # a filter that kept none would otherwise ask the whole eval file
        raise ConfigError(
            "argument 'question' is an empty list; give at least one question, or leave it out (None) to ask "
            "the questions file (questions=, else the run's eval.questions)."
        )
    if questions:  # as eval and predict name a missing --data file
        refuse_missing_file(questions, "compare", "questions", spelling.flags)
    if not questions and not asked:  # the file training compared on
        questions = configured_questions(run_dir, spelling)
        if show:
            print(f"questions: {questions} (the run's eval.questions)", flush=True)
    items = read_questions(questions, run_data_config(run_dir, info), dropped=dropped) if questions else []
    for i, text in enumerate(asked, 1):  # named as _texts names them, in errors about one of them
        where = "argument 'question'" if isinstance(question, str) else f"argument 'question', item {i}"
        items.append(Question.ask(text, info.system_prompt, where=where))
    if not items:
        raise DataError("no questions to compare on: give a questions file or at least one question.")
    if save:  # before minutes of generation, not after; after the questions, whose errors are the ones to fix first
        check_writable(compare_file(run_dir), overwrite, spelling)
    loaded = opened(run, device, base_precision, spelling)
    result = _compare(loaded, items, settings, refusal if refusal is not None else info.refusal, dropped, seed)
    if save:
        check_same_run(run_dir, stamp, "compare")
    path = save_comparison(result, run_dir, overwrite=overwrite, spelling=spelling) if save else None
    if show:
        print(format_comparison(result, path, show_answers, spelling))
    return result


@_checked
def generate(
    run: str | Path | LoadedRun,
    prompt: str,
    system: str | bool | None = None,
    base: bool = False,
    settings: GenerationSettings | None = None,
    device: str = "auto",
    base_precision: str = "trained",
    seed: int | None = None,
    *,
    spelling: Spelling = PYTHON,
) -> str:
    """One answer from the tuned model (or the base model with base=True). system: the system message; None (or a
    blank text) for the run's data.system_prompt, False for none at all (the prompt of a conversation trained without
    one, as chat's `/system none` and serve's "default_system_prompt": false). seed: a sampled answer (temperature
    above 0) is drawn from a generator of its own seeded with it, so the same seed gives the same answer (torch's
    global generator is left alone); a greedy one draws nothing. `spelling`: how its notes and errors name the
    arguments (these, or `tunelab generate`'s flags)."""
    flag = "PROMPT or --prompt" if spelling.flags else None
    prompt = _text(
        prompt, "prompt", blank=False, flag=flag
    )  # training skips an empty question: the model never saw one
    if system is True:
        raise ConfigError(
            "generate(): argument 'system' is True; give the system message's text, None for the run's own "
            "(data.system_prompt) or False for none."
        )
    system = _text(system, "system") if isinstance(system, str) else system
    check_seed(seed, "--seed" if spelling.flags else "generate(): argument 'seed'")  # before the model loads
    loaded = opened(run, device, base_precision, spelling)
    generator = answer_generator(seed, loaded.model)
    given = [{"role": "system", "content": system}] if isinstance(system, str) else []
    trained = None if system is False else loaded.system_prompt
    messages = as_trained([*given, {"role": "user", "content": prompt}], trained)  # blank system: none
    settings = settings or GenerationSettings()
    with loaded.base_model() if base else nullcontext(loaded.model) as model:
        say_config_notice(model)
        answer, cut_at = answer_one(model, loaded.tokenizer, loaded.template, messages, settings, generator)
    if cut_at is not None:  # on stderr: stdout is the answer alone
        asked = settings.max_new_tokens or DEFAULT_MAX_NEW_TOKENS
        why = (
            f"the limit; {longer_answers(spelling)} allows more"
            if cut_at == asked
            else "the room the model's context left"
        )
        print(f"note: the answer was cut at {counted(cut_at, 'token')}, {why}.", file=sys.stderr, flush=True)
    return answer


@_checked
def chat(
    run: str | Path | LoadedRun,
    settings: GenerationSettings | None = None,
    device: str = "auto",
    base_precision: str = "trained",
    seed: int | None = None,
    *,
    spelling: Spelling = PYTHON,
) -> list[dict]:
    """Interactive chat on the terminal; returns the conversation. seed: sampled answers draw from a generator of the
    chat's own, seeded once, so the same messages get the same answers again; greedy ones draw nothing. `spelling`:
    how its notes and errors name the arguments (these, or `tunelab chat`'s flags)."""
    from tunelab.infer.chat import chat as _chat

    check_seed(seed, "--seed" if spelling.flags else "chat(): argument 'seed'")  # before the model loads
    loaded = opened(run, device, base_precision, spelling)
    return _chat(loaded, settings or GenerationSettings(), spelling=spelling, seed=seed)


@_checked
def evaluate(
    run: str | Path | LoadedRun | HeadRun,
    data: str | Path,
    settings: GenerationSettings | None = None,
    refusal: str | None = None,
    device: str = "auto",
    save: bool = True,
    out: str | Path | None = None,
    overwrite: bool = False,
    show: bool = False,
    base_precision: str = "trained",
    show_answers: bool = False,
    batch_size: int | None = None,
    seed: int | None = None,
    *,
    spelling: Spelling = PYTHON,
) -> EvalResult | HeadEvalResult:
    """Eval loss and perplexity, answer metrics (exact, contains, ROUGE-L, refusal) and label metrics, base and tuned.
    `settings` default to greedy answers of the run's eval.max_new_tokens. `show` prints the table (and the answers
    with `show_answers`); eval.json holds everything. For a classify run: accuracy, macro-F1, per-class P/R/F1 and
    the confusion matrix beside the majority class; for a reward run: pairwise accuracy and mean margin beside the
    untrained head (`eval/heads.py`). `batch_size` (--batch-size): questions answered, or rows scored, together;
    default settings.batch_size (16). seed: as compare's (sampled answers only; default the run's train.seed, 42
    where its config.yaml is gone), recorded in eval.json; a classify or reward run generates nothing and refuses it."""
    from tunelab.eval.evaluate import evaluate_run, format_eval, saved_line

    check_seed(seed, "--seed" if spelling.flags else "evaluate(): argument 'seed'")  # before the model loads
    _shown_answers(show, show_answers)
    settings = _with_batch_size(settings, batch_size)
    if out is not None and not save:  # the results would go nowhere after minutes of answering, without a word
        given, unsaved = (f"--out {out}", "--no-save") if spelling.flags else (f"out={str(out)!r}", "save=False")
        raise ConfigError(f"{given} names where to save the results and {unsaved} saves nothing; give one of them.")
    _refuse_overwrite_unsaved(save, overwrite, "results file", spelling)
    if refusal is not None:
        refusal = _text(refusal, "refusal", blank=False, flag=spelling.given("refusal") if spelling.flags else None)
    if isinstance(run, HeadRun | LoadedRun):
        task = run.info.task
    else:
        task = read_info(run, require_finished=False).task
    if task in HEAD_TASKS:
        from tunelab.eval.heads import evaluate_head_run, format_head_eval, refuse_text_options

        run_dir = run.run_dir if isinstance(run, HeadRun) else run
        refuse_text_options(run_dir, task, settings, refusal, base_precision, show_answers, spelling, seed)
        if isinstance(run, HeadRun):
            check_opened_on(device, run.device, "open_head_run")
        result = evaluate_head_run(
            run,
            data,
            device,
            batch_size=(settings or GenerationSettings()).batch_size,
            save=save,
            out=out,
            overwrite=overwrite,
            spelling=spelling,
        )
        if show:
            print(format_head_eval(result))
            if save:
                print(saved_line(run_dir, out))
        return result

    result = evaluate_run(
        run,
        data,
        settings,
        refusal,
        device,
        save=save,
        out=out,
        overwrite=overwrite,
        base_precision=base_precision,
        seed=seed,
        spelling=spelling,
    )
    if show:
        print(format_eval(result, show_answers, spelling))
        if save:
            print(saved_line(run.run_dir if isinstance(run, LoadedRun) else run, out))
    return result


@_checked
def report(
    run: str | Path, out: str | Path | None = None, overwrite: bool = False, *, spelling: Spelling = PYTHON
) -> Path:
    """A self-contained HTML page of the run: curves, metrics, answers side by side, config, data report."""
    from tunelab.eval.report import build_report

    return build_report(run, out=out, overwrite=overwrite, spelling=spelling)


@_checked
def merge(
    run: str | Path,
    out: str | Path,
    overwrite: bool = False,
    dtype: str | None = None,
    show: bool = False,
    *,
    spelling: Spelling = PYTHON,
) -> Path:
    """The adapter folded into the base weights (a QLoRA base dequantized first), saved as a Hugging Face directory;
    how far the merged model's logits are from the adapter's on a probe is saved in tunelab_merge.json (`show`: and
    printed)."""
    from tunelab.export.merge import merge_run

    return merge_run(run, out, overwrite=overwrite, dtype=dtype, show=show, spelling=spelling)


@_checked
def cache_entries(show: bool = False) -> list[CacheEntry]:
    """The converted GGUF models in tunelab's cache (name, path, size_bytes, modified, complete, stale), largest
    first; `show` prints them as `tunelab cache` lists them."""
    from tunelab.conversion_cache import cache_entries as _entries
    from tunelab.conversion_cache import format_entries

    entries = _entries()
    if show:
        print(format_entries(entries))
    return entries


def cache_path() -> Path:
    """Where GGUF models are converted to ($TUNELAB_CACHE/gguf, by default ~/.cache/tunelab/gguf)."""
    from tunelab.conversion_cache import gguf_cache_dir

    return gguf_cache_dir()


@_checked
def clear_cache(names: str | list[str] | None = None, show: bool = False) -> list[CacheEntry]:
    """Remove converted models from the cache (all when names is None; one name given alone is a list of one, and an
    empty list removes nothing); returns the removed entries. `show` prints them and the space freed, as `tunelab
    cache clear` does."""
    from tunelab.conversion_cache import clear_cache as _clear
    from tunelab.conversion_cache import format_removed

    removed = _clear(None if names is None else _texts(names, "names", blank=False))
    if show:
        print(format_removed(removed))
    return removed


@_checked
def prune_cache(show: bool = False) -> list[CacheEntry]:
    """Remove the stale converted models alone (their GGUF file is gone or changed since) that no recorded adapter
    still names; returns them. `show` prints them, the space freed and the stale ones kept, as `tunelab cache prune`
    does."""
    from tunelab.conversion_cache import cache_entries as _entries
    from tunelab.conversion_cache import format_removed
    from tunelab.conversion_cache import prune_cache as _prune

    removed = _prune()
    if show:
        print(format_removed(removed, pruned=True, kept=[e for e in _entries() if e.stale]))
    return removed


@_checked
def federate(
    config=None,
    overrides: dict | None = None,
    *,
    resume: bool = False,
    app_dir: str | Path | None = None,
) -> FederateResult | Path:
    """Federated fine-tuning on Flower: the clients of `federated.clients` (or the shards of federated.split_file)
    train the LoRA adapter on their own data, the server averages it every round and keeps it in output_dir.
    Runs in Flower's simulation engine; with `app_dir`, writes a Flower App for its deployment engine instead.
    Needs the `federated` extra (pip install 'tunelab[federated]')."""
    from tunelab.federated.setup import require_flower

    require_flower(simulation=app_dir is None)
    from tunelab.federated.run import federate as _federate

    return _federate(config, overrides, resume=resume, app_dir=app_dir)


@_checked
def open_head_run(run: str | Path, device: str = "auto") -> HeadRun:
    """A classify or reward run's model loaded once, to pass as `run` to `predict`, `evaluate` and
    `load_reward_model`, so many calls share one load (as `open_run` for generate, compare, chat and evaluate). A run
    that did not finish is opened from its newest checkpoint, as predict opens it, saying so on stderr."""
    from tunelab.tasks.head_run import open_head_run as _open_head_run

    return _open_head_run(run, device, from_checkpoint=True)


@_checked
def predict(
    run: str | Path | HeadRun,
    data: str | Path | None = None,
    texts: str | list[str] | None = None,
    prompt: str | None = None,
    answers: str | list[str] | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    batch_size: int = 16,
    device: str = "auto",
    show: bool = False,
    texts_first: bool = False,
    *,
    spelling: Spelling = PYTHON,
) -> list[Prediction]:
    """A classify run's label and label probabilities, or a reward run's score, for the rows of `data`, for `texts`,
    or (reward) for `answers` to `prompt`: the rows of `data` first, then `texts` (`texts_first`: the texts first).
    `run`: the run's folder, or the run loaded by `open_head_run`, which calls after the first take without loading
    it again. With `out` (.csv or .jsonl) the predictions are also written there. `spelling`: how errors name the
    arguments (these, or `tunelab predict`'s flags)."""
    from tunelab.infer.predict import check_out, format_predictions, save_predictions
    from tunelab.infer.predict import predict as _predict

    _at_least(batch_size, "batch_size", 1)
    if isinstance(run, HeadRun):
        check_opened_on(device, run.device, "open_head_run")
    run_dir = run.run_dir if isinstance(run, HeadRun) else run
    if overwrite and out is None:  # it replaces the --out file; without one, it would be dropped without a word
        given, out_ = ("--overwrite", "--out") if spelling.flags else ("overwrite=True", "out=")
        raise ConfigError(
            f"{given} replaces an existing {out_} file, and no {out_} is given; drop {given}, or give {out_}."
        )
    if out is not None:
        check_out(out, overwrite, run_dir, data, spelling)
    text_, answer_ = ("TEXT or --text", "--answer") if spelling.flags else (None, None)  # the CLI's names, to it alone
    texts = _texts(texts, "texts", blank=False, flag=text_) if texts is not None else None
    answers = _texts(answers, "answers", blank=False, flag=answer_) if answers is not None else None
    prompt = _text(prompt, "prompt", blank=False) if prompt is not None else None
    predictions = _predict(
        run,
        data,
        texts,
        prompt,
        answers,
        batch_size=batch_size,
        device=device,
        texts_first=texts_first,
        spelling=spelling,
    )
    if show:
        print(format_predictions(predictions))
    if out is not None:
        save_predictions(predictions, out, run_dir, overwrite=overwrite, data=data)
    return predictions


@_checked
def load_reward_model(run: str | Path | HeadRun, device: str = "auto", batch_size: int = 16) -> RewardModel:
    """A finished reward run as a function (prompts, completions) -> list[float] (see tunelab/infer/predict.py);
    `run` may be the run `open_head_run` loaded, which it then scores with, not loading it again."""
    from tunelab.infer.predict import RewardModel as _RewardModel
    from tunelab.infer.predict import load_reward_model as _load

    _at_least(batch_size, "batch_size", 1)
    if isinstance(run, HeadRun):
        check_opened_on(device, run.device, "open_head_run")
        if run.checkpoint is not None:  # as load_reward_model(run_dir) refuses a run that did not finish
            raise RunDirError(
                f"{run.run_dir}: the run did not finish (opened from {run.checkpoint}); a reward function is a "
                "finished run of task: reward."
            )
        return _RewardModel(run, batch_size)
    return _load(run, device, batch_size)
