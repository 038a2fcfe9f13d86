"""The `tunelab` command's argument parser: every subcommand, its flags and their help.

The training commands (train, check, plan, federate) take every config option as a flag generated from the config
dataclasses (`--section.key VALUE`), with its help text, allowed values and default; an unknown one is a ConfigError
with suggestions, like an unknown YAML key.
"""

from __future__ import annotations

import argparse
import dataclasses
import os

from tunelab.config.flags import device, finite, keep_double_dash, path, positive, refuse_repeated, whole
from tunelab.errors import ConfigError


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    from tunelab.config import iter_options
    from tunelab.config.overrides import flag_text, unsets_by_null

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
        elif unsets_by_null(hint):
            kwargs["type"] = flag_text  # --data.system_prompt null unsets it; the API's str 'null' is that text
        group.add_argument(f"--{name}", **kwargs)


def _generation_options(parser: argparse.ArgumentParser, tokens_default: str = "128") -> None:
    g = parser.add_argument_group("generation")
    g.add_argument(
        "--max-new-tokens",
        type=whole(1),
        default=None,
        help=f"tokens to generate per answer (default: {tokens_default})",
    )
    g.add_argument("--temperature", type=finite, default=0.0, help="sampling temperature; 0 is greedy (default: 0)")
    g.add_argument(
        "--top-p", type=finite, default=1.0, help="nucleus sampling threshold, 0 to 1 (0: greedy; default: 1.0)"
    )
    g.add_argument(
        "--repetition-penalty", type=positive, default=1.0, help="penalty for repeated tokens (default: 1.0)"
    )
    g.add_argument(
        "--device", type=device, default="auto", help="where to run: auto, cpu, cuda or cuda:N (default: auto)"
    )
    g.add_argument(
        "--base-precision",
        default="trained",
        choices=("trained", "16bit"),
        help="the base a QLoRA adapter sits on: trained (the NF4 base it was trained over) or 16bit (the unquantized "
        "weights) (default: trained)",
    )


def _seed_option(parser: argparse.ArgumentParser, what: str, default: str = "none, a new draw each time") -> None:
    parser.add_argument(
        "--seed",
        type=whole(-(2**63), 2**63 - 1),
        default=None,
        metavar="N",
        help=f"{what}; with --temperature 0 (greedy) it changes nothing (default: {default})",
    )


# compare's and eval's --seed: what it does, and its default
_ANSWERS_SEED = (
    "sampled answers draw from a generator seeded with N, a fresh one for each model, so the same seed gives the same "
    "answers and scores; recorded in the results file",
    "the run's train.seed, else 42",
)


def _run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="YAML config file (optional: flags alone work too)")
    parser.add_argument("--resume", action="store_true", help="continue the run in output_dir from its last checkpoint")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing run directory (it must be one tunelab wrote; it is kept until the new run finishes)",
    )
    parser.add_argument(
        "--overwrite-non-run",
        action="store_true",
        help="with --overwrite: also replace an output_dir that is not a tunelab run directory, deleting its contents",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tunelab", description="Fine-tune open LLMs on your own data.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser(
        "train",
        help="fine-tune a model as a YAML config says",
        description="Fine-tune a model. Options given as flags override the YAML file.",
        allow_abbrev=False,
    )
    _run_arguments(train)
    train.add_argument(
        "--no-check", action="store_true", help="skip the data checks that run before training (see tunelab check)"
    )
    train.add_argument(
        "--nproc",
        type=int,
        help="train with this many processes on this host (one per GPU on CUDA; gloo on the CPU), started through "
        "torch's elastic launcher like torchrun; see train.sharding (default: one process)",
    )
    _add_config_options(train)

    check = sub.add_parser(
        "check",
        help="check a config before training: data, rendering, untrained tokens, one real step; exit 0 (passed), 1 "
        "(a check failed) or 2 (bad config or data)",
        description="Everything that can be known before training, in seconds to a minute. Takes the same config "
        "and flags as train, writes nothing into output_dir, and ends with one verdict line (exit 0 passed, 1 failed).",
        allow_abbrev=False,
    )
    _run_arguments(check)
    check.add_argument(
        "--html",
        type=path,
        help="where to write the HTML page of the check (default: check.html in a new folder under the system's "
        "temporary directory; the path is printed)",
    )
    check.add_argument("--examples", type=whole(0), default=3, help="rendered examples to preview (default: 3)")
    check.add_argument(
        "--data-only", action="store_true", help="skip the checks that load the model (forward/backward, memory)"
    )
    _add_config_options(check)
    plan = sub.add_parser(
        "plan",
        help="the fastest micro-batch, checkpointing and offload that fit the GPU: a table of candidates and why",
        description="Predict the peak GPU memory and speed of each micro-batch / checkpointed layers / offload "
        "configuration for a config (data and model shapes; no weights are loaded) and pick the fastest that fits. "
        "Exit 2 when nothing fits, naming the minimum.",
        allow_abbrev=False,
    )
    plan.add_argument("config", nargs="?", help="YAML config file (optional: flags alone work too)")
    plan.add_argument("--gpu-memory", help="the budget, like 24GiB or 80GB (default: train.gpu_memory, or this GPU's)")
    plan.add_argument("--nproc", type=int, default=1, help="plan for N processes, as train --nproc N (default: 1)")
    _add_config_options(plan)
    federate = sub.add_parser(
        "federate",
        help="federated fine-tuning on Flower: clients train on their own data, a server averages the adapter",
        description="Federated LoRA fine-tuning on Flower. The federated options name each client's data; by "
        "default Flower's simulation engine runs the server and every client on this machine. With --app-dir, "
        "write a Flower App for Flower's deployment engine (flower-superlink, flower-supernode, flwr run) instead. "
        "Each round prints one line; Flower's own log lines show from WARNING up unless FLWR_LOG_LEVEL is set "
        "(FLWR_LOG_LEVEL=INFO shows them all).",
        allow_abbrev=False,
    )
    federate.add_argument("config", nargs="?", help="YAML config file with a federated: section")
    federate.add_argument(
        "--resume", action="store_true", help="continue the federation in output_dir after its last round"
    )
    federate.add_argument("--overwrite", action="store_true", help="replace an existing run directory (or app folder)")
    federate.add_argument(
        "--app-dir", type=path, help="write a Flower App here for the deployment engine instead of simulating"
    )
    _add_config_options(federate)

    compare = sub.add_parser("compare", help="base and tuned model answer the same questions, side by side")
    compare.add_argument("run_dir", type=path, help="a finished run directory")
    compare.add_argument(
        "--questions",
        type=path,
        help="jsonl/json/csv file with a question column and optional expected and kind columns (default, without "
        "--question: the run's eval.questions)",
    )
    compare.add_argument("--question", action="append", default=[], help="a question (repeatable)")
    compare.add_argument(
        "--refusal", help="the refusal sentence, to report refusal rates (default: the run's eval.refusal)"
    )
    compare.add_argument("--no-save", action="store_true", help="do not write compare.json into the run directory")
    compare.add_argument("--overwrite", action="store_true", help="replace the run's existing compare.json")
    compare.add_argument("--batch-size", type=whole(1), default=16, help="questions generated together (default: 16)")
    compare.add_argument(
        "--show-answers", action="store_true", help="print every answer after the scores (they are in compare.json)"
    )
    _generation_options(compare, "the run's eval.max_new_tokens")
    _seed_option(compare, *_ANSWERS_SEED)

    chat = sub.add_parser("chat", help="chat with the tuned model (multi-turn, streaming)")
    chat.add_argument("run_dir", type=path, help="a finished run directory")
    _generation_options(chat, "the room the model's context leaves after the conversation")
    _seed_option(
        chat,
        "sampled answers draw from a generator of the chat's own seeded with N, so the same messages get the same answers again",
    )

    generate = sub.add_parser("generate", help="one answer to one prompt, for scripts")
    generate.add_argument("run_dir", type=path, help="a finished run directory")
    generate.add_argument(
        "text", nargs="?", metavar="PROMPT", help="the user message (or --prompt); \\n is a newline, \\t a tab"
    )
    generate.add_argument("--prompt", help="the user message; \\n is a newline, \\t a tab, \\\\ a backslash")
    generate.add_argument(
        "--system",
        help="a system message (none: none at all, not the run's data.system_prompt); \\n is a newline, \\t a tab",
    )
    generate.add_argument("--base", action="store_true", help="answer with the base model instead of the tuned one")
    _generation_options(generate)
    _seed_option(
        generate, "a sampled answer is drawn from a generator seeded with N, so the same seed gives the same answer"
    )
    evaluate = sub.add_parser("eval", help="loss, answer and label metrics of base and tuned model on a file")
    evaluate.add_argument("run_dir", type=path, help="a finished run directory")
    evaluate.add_argument(
        "--data",
        type=path,
        required=True,
        help="eval file: question/expected rows or any training format (a classify run: inputs with their label; a "
        "reward run: preference pairs)",
    )
    evaluate.add_argument("--refusal", help="the refusal sentence (default: the run's eval.refusal)")
    evaluate.add_argument(
        "--out", type=path, help="where to write the results, a .json file (default: RUN_DIR/eval.json)"
    )
    evaluate.add_argument("--overwrite", action="store_true", help="replace an existing results file")
    evaluate.add_argument("--no-save", action="store_true", help="print only")
    evaluate.add_argument(
        "--batch-size",
        type=whole(1),
        default=16,
        help="questions generated together; of a classify or reward run, rows per forward pass (default: 16)",
    )
    evaluate.add_argument(
        "--show-answers", action="store_true", help="print every answer after the scores (they are in eval.json)"
    )
    _generation_options(evaluate, "the run's eval.max_new_tokens")
    _seed_option(evaluate, *_ANSWERS_SEED)

    predict = sub.add_parser(
        "predict", help="a classify run's label and probabilities, or a reward run's score, for texts or a file"
    )
    predict.add_argument(
        "run_dir", type=path, help="a classify or reward run directory (unfinished: its newest checkpoint)"
    )
    predict.add_argument(
        "texts",
        nargs="*",
        metavar="TEXT",
        help="texts to classify or score (or --text, repeatable); \\n is a newline, \\t a tab",
    )
    predict.add_argument(
        "--data", type=path, help="rows to predict: the run's input columns (text, prompt, messages, ...)"
    )
    predict.add_argument(
        "--text",
        action="append",
        default=[],
        help="a text to classify or score (repeatable); \\n is a newline, \\t a tab, \\\\ a backslash",
    )
    predict.add_argument(
        "--prompt", help="reward runs: the prompt the --answer texts answer; \\n is a newline, \\t a tab"
    )
    predict.add_argument(
        "--answer",
        action="append",
        default=[],
        help="reward runs: an answer to score (repeatable); \\n is a newline, \\t a tab",
    )
    predict.add_argument("--out", type=path, help="also write the predictions to this .csv or .jsonl file")
    predict.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    predict.add_argument("--batch-size", type=whole(1), default=16, help="inputs per forward pass (default: 16)")
    predict.add_argument(
        "--device", type=device, default="auto", help="where to run: auto, cpu, cuda or cuda:N (default: auto)"
    )

    report = sub.add_parser("report", help="one self-contained HTML page about a run")
    report.add_argument("run_dir", type=path, help="a run directory: finished, stopped early, or still training")
    report.add_argument("--out", type=path, help="the HTML file (default: RUN_DIR/report.html)")
    report.add_argument("--overwrite", action="store_true", help="replace a file there (this run's report: always)")

    merge = sub.add_parser("merge", help="fold the adapter into the base weights: a Hugging Face model directory")
    merge.add_argument("run_dir", type=path, help="a finished run directory")
    merge.add_argument("--out", type=path, required=True, help="the output directory")
    merge.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), help="weight dtype (default: as saved)")
    merge.add_argument("--overwrite", action="store_true", help="replace an existing output directory")

    export = sub.add_parser("export", help="write a GGUF file (llama.cpp, Ollama) and an Ollama Modelfile beside it")
    export.add_argument("run_dir", type=path, help="a finished run directory")
    export.add_argument("--gguf", "--out", dest="out", type=path, required=True, help="the .gguf file to write")
    export.add_argument(
        "--type",
        "--qtype",
        dest="qtype",
        default="f16",
        help="tensor type: f32, f16, bf16, q8_0, q4_0, or the k-quants q4_k_m, q5_k_m, q6_k (made by llama.cpp's "
        "quantizer; needs llama-cpp-python) (default: f16; --qtype is the same flag, named like export_gguf's qtype)",
    )
    export.add_argument("--overwrite", action="store_true", help="replace existing files")
    export.add_argument(
        "--no-check",
        action="store_true",
        help="skip the self-check (by default, when llama-cpp-python imports, llama.cpp loads the file and its "
        "answers, tokens, stop tokens and template are compared with tunelab's; the verdict goes to NAME.check.json)",
    )
    export.add_argument(
        "--check-questions", type=whole(1), help="questions the self-check asks both models (default: 8)"
    )

    push = sub.add_parser(
        "push",
        help="publish a run's adapter, a merged folder or a GGUF export to the Hugging Face Hub (one commit)",
        description="Commit PATH to a model repository on the Hugging Face Hub, created when missing: an adapter run's "
        "adapter, tokenizer and a model card; a folder 'tunelab merge' wrote; or a .gguf file 'tunelab export' wrote "
        "with its Modelfile and card. Needs a token: 'hf auth login', or HF_TOKEN. Prints the commit's URL.",
    )
    push.add_argument(
        "path",
        metavar="PATH",
        help="a finished adapter run directory, a folder 'tunelab merge' wrote, or a .gguf file 'tunelab export' wrote",
    )
    push.add_argument("--repo", required=True, help="the hub repository, OWNER/NAME (created when missing)")
    push.add_argument(
        "--private",
        action="store_true",
        help="create the repository private (an existing public one is refused, nothing pushed)",
    )
    push.add_argument(
        "--revision", help="the branch to commit to, created when missing (default: the repository's default branch)"
    )
    push.add_argument("--message", help="the commit message (default: Upload <what> with tunelab)")

    serve = sub.add_parser(
        "serve",
        help="an OpenAI-compatible HTTP server for the tuned model (/v1/chat/completions, /v1/completions, "
        "/v1/responses, /v1/models, /health)",
        description="Serve a run over HTTP in OpenAI's dialect: chat completions, text completions and responses "
        "(streaming included). Needs the 'serve' extra: pip install 'tunelab[serve]'.",
    )
    serve.add_argument("run_dir", type=path, help="a finished run directory")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine)")
    serve.add_argument("--port", type=whole(0, 65535), default=8000, help="port to listen on (default: 8000)")
    serve.add_argument(
        "--api-key",
        default=os.environ.get("TUNELAB_API_KEY") or None,  # an empty variable is none
        help="require 'Authorization: Bearer KEY' on /v1/ routes (default: $TUNELAB_API_KEY, else no key)",
    )
    serve.add_argument("--model-name", help="the model id clients ask for (default: the run directory's name)")
    serve.add_argument(
        "--allowed-origins",
        nargs="+",
        metavar="ORIGIN",
        help="web pages whose scripts may call the server from a browser (CORS), as scheme://host[:port], or * for "
        "any (default: none)",
    )
    _generation_options(serve, "the room the model's context leaves after the prompt")

    cache = sub.add_parser(
        "cache",
        help="see or clear the GGUF conversion cache (GGUF models converted once to safetensors)",
        description="List the converted GGUF models with their sizes (default), print where the cache lives, "
        "clear it (all entries, or those named), or prune it (only the stale entries, whose GGUF file is gone or "
        "changed since); a cleared model is converted again at its next use.",
    )
    actions = ("list", "path", "clear", "prune")
    cache.add_argument("action", nargs="?", default="list", choices=actions, help="(default: list)")
    cache.add_argument("names", nargs="*", help="for clear: the entries to remove (default: all)")
    return parser


TRAILING_TEXTS = ("predict", "generate")  # commands whose texts (TEXT, PROMPT) may follow their options


def parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """parse_args, but an unknown flag of a command that takes the config options (train, check, plan, federate) is a
    ConfigError with suggestions (exit 2 like any bad option)."""
    refuse_repeated(parser, argv)  # an option of one value given twice, in every command
    args, unknown = parser.parse_known_args(argv)
    command = getattr(args, "command", None)
    if unknown and command in TRAILING_TEXTS and not any(u.startswith("-") for u in unknown):
        # `predict RUN --device cpu "text"`: argparse fills the positionals before the first option (no TEXT) and
        # leaves the texts after it unrecognized; read the command's arguments intermixed, as they were meant
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
        rest = argv[argv.index(command) + 1 :]
        args, unknown = sub.parse_known_intermixed_args(rest, argparse.Namespace(command=command))
    keep_double_dash(parser, args)
    if unknown and getattr(args, "command", None) in ("train", "check", "plan", "federate"):
        from tunelab.config import unknown_option

        flag = next((u for u in unknown if u.startswith("-")), unknown[0])
        if not flag.startswith("-"):
            raise ConfigError(f"unexpected argument {flag!r}; options are given as --section.key VALUE.")
        name = flag.lstrip("-").split("=")[0]
        raise unknown_option(name, f"--{name}", flag=True, command=args.command)
    if unknown:
        parser.parse_args(argv)  # argparse's own message and exit code
    if getattr(args, "resume", False) and getattr(args, "overwrite", False):
        raise ConfigError(
            "--resume continues the run in output_dir and --overwrite replaces it; give one of them (to start the run "
            "again, --overwrite alone)."
        )
    return args
