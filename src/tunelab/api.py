"""The Python API: what each CLI subcommand calls.

import tunelab
result = tunelab.train("examples/company_faq/config.yaml", {"train.max_steps": 20})
comparison = tunelab.compare(result.run_dir, questions="examples/company_faq/heldout.jsonl")
print(tunelab.generate(result.run_dir, "Where is your office?"))

A classify or reward run (`task: classify | reward`) is read by `tunelab.predict` and `tunelab.evaluate`; a reward
run also serves as a reward function: `tunelab.load_reward_model(run_dir)(prompts, completions) -> list[float]`.
"""

from __future__ import annotations

from pathlib import Path

from tunelab.infer.compare import Comparison, Question, format_comparison, read_questions, save_comparison
from tunelab.infer.compare import compare as _compare
from tunelab.infer.generate import GenerationSettings, generate_answers
from tunelab.infer.run import LoadedRun, open_run
from tunelab.rundir import HEAD_TASKS, read_info
from tunelab.training.recipe import TrainResult, train

__all__ = [
    "train",
    "compare",
    "generate",
    "chat",
    "evaluate",
    "report",
    "merge",
    "export_gguf",
    "predict",
    "load_reward_model",
    "open_run",
    "TrainResult",
    "Comparison",
    "GenerationSettings",
    "LoadedRun",
]


def _open(run: str | Path | LoadedRun, device: str) -> LoadedRun:
    return run if isinstance(run, LoadedRun) else open_run(run, device=device)


def compare(
    run: str | Path | LoadedRun,
    questions: str | Path | None = None,
    question: list[str] | None = None,
    settings: GenerationSettings | None = None,
    device: str = "auto",
    save: bool = True,
    show: bool = False,
    refusal: str | None = None,
) -> Comparison:
    """Base and tuned model answer the same questions (from a file and/or given directly); scored where expected
    answers exist. `refusal` defaults to the run's configured refusal sentence."""
    loaded = _open(run, device)
    items = read_questions(questions) if questions else []
    items += [Question(q) for q in (question or [])]
    refusal = refusal if refusal is not None else loaded.info.refusal
    result = _compare(loaded, items, settings or GenerationSettings(), refusal)
    if show:
        print(format_comparison(result))
    if save:
        save_comparison(result, loaded.run_dir)
    return result


def generate(
    run: str | Path | LoadedRun,
    prompt: str,
    system: str | None = None,
    base: bool = False,
    settings: GenerationSettings | None = None,
    device: str = "auto",
) -> str:
    """One answer from the tuned model (or the base model with base=True)."""
    loaded = _open(run, device)
    system = system if system is not None else loaded.system_prompt
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    settings = settings or GenerationSettings()
    if base:
        with loaded.base_model() as model:
            return generate_answers(model, loaded.tokenizer, loaded.template, [messages], settings)[0]
    return generate_answers(loaded.model, loaded.tokenizer, loaded.template, [messages], settings)[0]


def chat(run: str | Path | LoadedRun, settings: GenerationSettings | None = None, device: str = "auto") -> list[dict]:
    """Interactive chat on the terminal; returns the conversation."""
    from tunelab.infer.chat import chat as _chat

    return _chat(_open(run, device), settings or GenerationSettings())


def evaluate(
    run: str | Path | LoadedRun,
    data: str | Path,
    settings: GenerationSettings | None = None,
    refusal: str | None = None,
    device: str = "auto",
    save: bool = True,
    out: str | Path | None = None,
    overwrite: bool = False,
    show: bool = False,
):
    """Eval loss and perplexity, answer metrics (exact, contains, ROUGE-L, refusal) and label metrics, base and tuned.
    For a classify run: accuracy, macro-F1, per-class P/R/F1 and the confusion matrix beside the majority class; for a
    reward run: pairwise accuracy and mean margin beside the untrained head (`eval/heads.py`)."""
    from tunelab.eval.evaluate import evaluate_run, format_eval

    if not isinstance(run, LoadedRun) and read_info(run).task in HEAD_TASKS:
        from tunelab.eval.heads import evaluate_head_run, format_head_eval

        batch_size = settings.batch_size if settings else 16
        result = evaluate_head_run(run, data, device, batch_size=batch_size, save=save, out=out, overwrite=overwrite)
        if show:
            print(format_head_eval(result))
        return result

    result = evaluate_run(run, data, settings, refusal, device, save=save, out=out, overwrite=overwrite)
    if show:
        print(format_eval(result))
    return result


def report(run: str | Path, out: str | Path | None = None, overwrite: bool = False) -> Path:
    """A self-contained HTML page of the run: curves, metrics, answers side by side, config, data report."""
    from tunelab.eval.report import build_report

    return build_report(run, out=out, overwrite=overwrite)


def merge(run: str | Path, out: str | Path, overwrite: bool = False, dtype: str | None = None) -> Path:
    """The adapter folded into the base weights, saved as a Hugging Face directory."""
    from tunelab.export.merge import merge_run

    return merge_run(run, out, overwrite=overwrite, dtype=dtype)


def export_gguf(run: str | Path, out: str | Path, qtype: str = "f16", overwrite: bool = False) -> Path:
    """A GGUF file of the merged model (f32, f16, bf16, q8_0, q4_0) and an Ollama Modelfile beside it."""
    from tunelab.export.gguf import export_gguf as _export

    return _export(run, out, qtype=qtype, overwrite=overwrite)


def predict(
    run: str | Path,
    data: str | Path | None = None,
    texts: list[str] | None = None,
    prompt: str | None = None,
    answers: list[str] | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    batch_size: int = 16,
    device: str = "auto",
    show: bool = False,
):
    """A classify run's label and label probabilities, or a reward run's score, for the rows of `data`, for `texts`,
    or (reward) for `answers` to `prompt`. With `out` (.csv or .jsonl) the predictions are also written there."""
    from tunelab.infer.predict import check_out, format_predictions, save_predictions
    from tunelab.infer.predict import predict as _predict

    if out is not None:
        check_out(out, overwrite)
    predictions = _predict(run, data, texts, prompt, answers, batch_size=batch_size, device=device)
    if show:
        print(format_predictions(predictions))
    if out is not None:
        save_predictions(predictions, out, overwrite=overwrite)
    return predictions


def load_reward_model(run: str | Path, device: str = "auto", batch_size: int = 16):
    """A finished reward run as a function (prompts, completions) -> list[float] (see tunelab/infer/predict.py)."""
    from tunelab.infer.predict import load_reward_model as _load

    return _load(run, device, batch_size)
