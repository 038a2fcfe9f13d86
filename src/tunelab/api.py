"""The Python API: what each CLI subcommand calls.

import tunelab
result = tunelab.train("examples/company_faq/config.yaml", {"train.max_steps": 20})
comparison = tunelab.compare(result.run_dir, questions="examples/company_faq/heldout.jsonl")
print(tunelab.generate(result.run_dir, "Where is your office?"))
"""

from __future__ import annotations

from pathlib import Path

from tunelab.infer.compare import Comparison, Question, format_comparison, read_questions, save_comparison
from tunelab.infer.compare import compare as _compare
from tunelab.infer.generate import GenerationSettings, generate_answers
from tunelab.infer.run import LoadedRun, open_run
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
    "federate",
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
    """Eval loss and perplexity, answer metrics (exact, contains, ROUGE-L, refusal) and label metrics, base and tuned."""
    from tunelab.eval.evaluate import evaluate_run, format_eval

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


def federate(
    config=None,
    overrides: dict | None = None,
    *,
    resume: bool = False,
    app_dir: str | Path | None = None,
):
    """Federated fine-tuning on Flower: the clients of `federated.clients` (or the shards of federated.split_file)
    train the LoRA adapter on their own data, the server averages it every round and keeps it in output_dir.
    Runs in Flower's simulation engine; with `app_dir`, writes a Flower App for its deployment engine instead.
    Needs the `federated` extra (pip install 'tunelab[federated]')."""
    from tunelab.federated.setup import require_flower

    require_flower(simulation=app_dir is None)
    from tunelab.federated.run import federate as _federate

    return _federate(config, overrides, resume=resume, app_dir=app_dir)
