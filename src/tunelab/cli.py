"""The `tunelab` command: argument parsing only; every subcommand is one call into the Python API.

Training options are generated from the config dataclasses, so `tunelab train --help` lists every option with its
help text, allowed values and default, and a flag `--section.key value` overrides the YAML file.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from tunelab.errors import TunelabError


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    from tunelab.config import iter_options

    groups: dict[str, argparse._ArgumentGroup] = {}
    for name, f, hint in iter_options():
        if name == "overwrite":
            continue  # a plain flag below
        section = name.split(".")[0] if "." in name else "run"
        group = groups.setdefault(section, parser.add_argument_group(f"{section} options"))
        meta = f.metadata
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        extra = []
        if meta.get("choices"):
            extra.append("one of: " + ", ".join(map(str, meta["choices"])))
        extra.append(f"default: {default!r}")
        kwargs = {
            "dest": name,
            "default": argparse.SUPPRESS,
            "metavar": "VALUE",
            "help": f"{meta['help']} ({'; '.join(extra)})",
        }
        if hint is bool:
            kwargs.update(nargs="?", const="true", metavar="BOOL")
        group.add_argument(f"--{name}", **kwargs)


def _generation_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("generation")
    g.add_argument("--max-new-tokens", type=int, default=128, help="tokens to generate per answer (default: 128)")
    g.add_argument("--temperature", type=float, default=0.0, help="sampling temperature; 0 is greedy (default: 0)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold (default: 1.0)")
    g.add_argument("--repetition-penalty", type=float, default=1.0, help="penalty for repeated tokens (default: 1.0)")
    g.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where to run (default: auto)")


def _settings(args):
    from tunelab.infer.generate import GenerationSettings

    if args.max_new_tokens < 1 or args.temperature < 0 or not 0 < args.top_p <= 1:
        raise TunelabError("options --max-new-tokens >= 1, --temperature >= 0 and 0 < --top-p <= 1 are required.")
    return GenerationSettings(args.max_new_tokens, args.temperature, args.top_p, args.repetition_penalty)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tunelab", description="Fine-tune open LLMs on your own data.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser(
        "train",
        help="fine-tune a model as a YAML config says",
        description="Fine-tune a model. Options given as flags override the YAML file.",
    )
    train.add_argument("config", nargs="?", help="YAML config file (optional: flags alone work too)")
    train.add_argument("--resume", action="store_true", help="continue the run in output_dir from its last checkpoint")
    train.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    _add_config_options(train)

    compare = sub.add_parser("compare", help="base and tuned model answer the same questions, side by side")
    compare.add_argument("run_dir", help="a finished run directory")
    compare.add_argument(
        "--questions", help="jsonl/json/csv file with a question column and optional expected and kind columns"
    )
    compare.add_argument("--question", action="append", default=[], help="a question (repeatable)")
    compare.add_argument(
        "--refusal", help="the refusal sentence, to report refusal rates (default: the run's eval.refusal)"
    )
    compare.add_argument("--no-save", action="store_true", help="do not write compare.json into the run directory")
    _generation_options(compare)

    chat = sub.add_parser("chat", help="chat with the tuned model (multi-turn, streaming)")
    chat.add_argument("run_dir", help="a finished run directory")
    _generation_options(chat)

    generate = sub.add_parser("generate", help="one answer to one prompt, for scripts")
    generate.add_argument("run_dir", help="a finished run directory")
    generate.add_argument("--prompt", required=True, help="the user message")
    generate.add_argument("--system", help="a system message")
    generate.add_argument("--base", action="store_true", help="answer with the base model instead of the tuned one")
    _generation_options(generate)
    evaluate = sub.add_parser("eval", help="loss, answer and label metrics of base and tuned model on a file")
    evaluate.add_argument("run_dir", help="a finished run directory")
    evaluate.add_argument("--data", required=True, help="eval file: question/expected rows or any training format")
    evaluate.add_argument("--refusal", help="the refusal sentence (default: the run's eval.refusal)")
    evaluate.add_argument("--out", help="where to write the results (default: RUN_DIR/eval.json)")
    evaluate.add_argument("--overwrite", action="store_true", help="replace an existing results file")
    evaluate.add_argument("--no-save", action="store_true", help="print only")
    evaluate.add_argument("--batch-size", type=int, default=16, help="questions generated together (default: 16)")
    _generation_options(evaluate)

    predict = sub.add_parser(
        "predict", help="a classify run's label and probabilities, or a reward run's score, for texts or a file"
    )
    predict.add_argument("run_dir", help="a finished classify or reward run directory")
    predict.add_argument("--data", help="rows to predict: the run's input columns (text, prompt, messages, ...)")
    predict.add_argument("--text", action="append", default=[], help="a text to classify or score (repeatable)")
    predict.add_argument("--prompt", help="reward runs: the prompt the --answer texts answer")
    predict.add_argument("--answer", action="append", default=[], help="reward runs: an answer to score (repeatable)")
    predict.add_argument("--out", help="also write the predictions to this .csv or .jsonl file")
    predict.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    predict.add_argument("--batch-size", type=int, default=16, help="inputs per forward pass (default: 16)")
    predict.add_argument(
        "--device", default="auto", choices=("auto", "cpu", "cuda"), help="where to run (default: auto)"
    )

    report = sub.add_parser("report", help="one self-contained HTML page about a run")
    report.add_argument("run_dir", help="a finished run directory")
    report.add_argument("--out", help="the HTML file (default: RUN_DIR/report.html)")
    report.add_argument("--overwrite", action="store_true", help="replace an existing file")

    merge = sub.add_parser("merge", help="fold the adapter into the base weights: a Hugging Face model directory")
    merge.add_argument("run_dir", help="a finished run directory")
    merge.add_argument("--out", required=True, help="the output directory")
    merge.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), help="weight dtype (default: as saved)")
    merge.add_argument("--overwrite", action="store_true", help="replace an existing output directory")

    export = sub.add_parser("export", help="write a GGUF file (llama.cpp, Ollama) and an Ollama Modelfile beside it")
    export.add_argument("run_dir", help="a finished run directory")
    export.add_argument("--gguf", "--out", dest="out", required=True, help="the .gguf file to write")
    export.add_argument(
        "--type",
        "--qtype",
        dest="qtype",
        default="f16",
        choices=("f32", "f16", "bf16", "q8_0", "q4_0"),
        help="tensor type (default: f16)",
    )
    export.add_argument("--overwrite", action="store_true", help="replace existing files")
    return parser


def _run(args: argparse.Namespace) -> int:
    import tunelab.api as api

    if args.command == "train":
        overrides = {k: v for k, v in vars(args).items() if k not in ("command", "config", "resume", "overwrite")}
        if args.overwrite:
            overrides["overwrite"] = True
        api.train(args.config, overrides, resume=args.resume)
        return 0
    if args.command == "predict":
        api.predict(
            args.run_dir,
            data=args.data,
            texts=args.text,
            prompt=args.prompt,
            answers=args.answer,
            out=args.out,
            overwrite=args.overwrite,
            batch_size=args.batch_size,
            device=args.device,
            show=True,
        )
        if args.out:
            print(f"written to {args.out}")
        return 0
    if args.command == "report":
        print(api.report(args.run_dir, out=args.out, overwrite=args.overwrite))
        return 0
    if args.command == "merge":
        print(api.merge(args.run_dir, args.out, overwrite=args.overwrite, dtype=args.dtype))
        return 0
    if args.command == "export":
        path = api.export_gguf(args.run_dir, args.out, qtype=args.qtype, overwrite=args.overwrite)
        print(f"{path}\nOllama: ollama create NAME -f {path.parent / 'Modelfile'}")
        return 0
    settings = _settings(args)
    if args.command == "eval":
        settings.batch_size = args.batch_size
        api.evaluate(
            args.run_dir,
            args.data,
            settings=settings,
            refusal=args.refusal,
            device=args.device,
            save=not args.no_save,
            out=args.out,
            overwrite=args.overwrite,
            show=True,
        )
    elif args.command == "compare":
        if not args.questions and not args.question:
            raise TunelabError("tunelab compare needs --questions FILE or at least one --question TEXT.")
        api.compare(
            args.run_dir,
            questions=args.questions,
            question=args.question,
            settings=settings,
            device=args.device,
            save=not args.no_save,
            show=True,
            refusal=args.refusal,
        )
    elif args.command == "chat":
        api.chat(args.run_dir, settings=settings, device=args.device)
    elif args.command == "generate":
        print(
            api.generate(
                args.run_dir, args.prompt, system=args.system, base=args.base, settings=settings, device=args.device
            )
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress bar is the one to watch
    try:
        return _run(args)
    except TunelabError as exc:
        print(f"tunelab {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
