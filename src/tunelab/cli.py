"""The `tunelab` command: every subcommand is one call into the Python API (the parser is cli_parser.py).

Training options are generated from the config dataclasses, so `tunelab train --help` lists every option with its
help text, allowed values and default, and a flag `--section.key value` overrides the YAML file. A negative number
after a flag is its value (`--train.lr -1e-4`), and an unknown flag gets suggestions like an unknown YAML key.

Exit codes: 0 done (check: passed), 1 check failed (or export's self-check: FAIL) or a push to the hub failed (tunelab
push, or train.push_to after a run that finished and was saved), 2 bad input (one paragraph on stderr, no traceback),
3 training stopped on NaN/inf (training/guard.py) or a federation that applied no update, 130 interrupted (Ctrl-C),
143 stopped by SIGTERM, 141 stdout closed by its reader (`| head`).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from tunelab.cli_parser import build_parser, parse
from tunelab.config.flags import CLI, join_negative_values, one_prompt
from tunelab.config.overrides import FlagValues
from tunelab.config.values import read_escapes
from tunelab.errors import ConfigError, Interrupted, TunelabError, counted, stdout_closed


def _settings(args):
    from tunelab.infer.generate import GenerationSettings

    for flag, value, ok, allowed in (  # --max-new-tokens and --repetition-penalty: their argparse types
        ("--temperature", args.temperature, args.temperature >= 0, "0 (greedy) or more"),
        ("--top-p", args.top_p, 0 <= args.top_p <= 1, "from 0 (greedy) to 1"),
    ):
        if not ok:
            raise ConfigError(f"option '{flag}' is {value:g}; give a number {allowed}.")
    return GenerationSettings(args.max_new_tokens, args.temperature, args.top_p, args.repetition_penalty)


_RUN_FLAGS = (
    "command",
    "config",
    "resume",
    "overwrite",
    "overwrite_non_run",
    "no_check",
    "nproc",
    "html",
    "examples",
    "data_only",
)


def _overrides(args: argparse.Namespace) -> dict:
    overrides = FlagValues({k: v for k, v in vars(args).items() if k not in _RUN_FLAGS})
    if args.overwrite:
        overrides["overwrite"] = True
    return overrides


def texts_before_data(argv: list[str]) -> bool:
    """Did `tunelab predict` get its first text (a TEXT or --text) before --data, so that the texts are predicted (and
    printed) first? The command line is walked as argparse reads it: an option's value is no TEXT, the first
    positional is the run, and a TEXT may stand after the options (`predict RUN --data FILE "text"`)."""
    parser = build_parser()
    flags = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["predict"]
    actions = flags._option_string_actions
    rest = argv[argv.index("predict") + 1 :] if "predict" in argv else argv
    run, i = False, 0
    while i < len(rest):
        arg, i = rest[i], i + 1
        if arg.startswith("-") and arg != "-" and "--" not in rest[: i - 1]:
            name = arg.split("=", 1)[0]
            named = [s for s in actions if s.startswith(name)]  # argparse takes an unambiguous prefix
            action = actions.get(name) or (actions[named[0]] if len(named) == 1 else None)
            if action is not None and action.dest in ("data", "text"):
                return action.dest == "text"
            if action is not None and action.nargs != 0 and "=" not in arg:
                i += 1  # its value
        elif arg != "--":
            if run:
                return True  # a TEXT
            run = True
    return False


def _launch(args: argparse.Namespace, argv: list[str]) -> int:
    """`tunelab train --nproc N`: check what can be checked once, then start N ranks of the command without --nproc."""
    from tunelab.training.launch import check_launch, launch
    from tunelab.training.recipe import resolve

    check_launch(resolve(args.config, _overrides(args)).config, args.nproc)
    worker = [a for i, a in enumerate(argv) if not _is_nproc(argv, i)]
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // args.nproc)))  # as torchrun does
    return launch(worker, args.nproc)


def _is_nproc(argv: list[str], i: int) -> bool:
    """Is argv[i] the --nproc flag or its value?"""
    return argv[i] == "--nproc" or argv[i].startswith("--nproc=") or (i > 0 and argv[i - 1] == "--nproc")


def _check_device(args: argparse.Namespace) -> None:
    """A --device this machine cannot run on (cuda without a GPU, a GPU index it lacks), refused by its flag before the
    API call, which would name its argument 'device' (argparse already refused a name that is no device)."""
    if getattr(args, "device", "auto") != "auto":
        from tunelab.models.load import pick_device

        pick_device(args.device, CLI.option("device"))


def _run(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    import tunelab.api as api

    _check_device(args)

    if args.command == "train" and args.nproc is not None:
        world = os.environ.get("WORLD_SIZE")
        if world is None:
            return _launch(args, argv or [])
        if int(world) != args.nproc:
            raise ConfigError(
                f"option '--nproc' is {args.nproc}, but torchrun started {world} processes; drop --nproc."
            )
    if args.command == "train":
        result = api.train(
            args.config,
            _overrides(args),
            resume=args.resume,
            check=not args.no_check,
            overwrite_non_run=args.overwrite_non_run,
        )
        return 128 + result.stop_signal if result.interrupted else 0  # saved, but what follows training was skipped
    if args.command == "cache":
        if args.names and args.action != "clear":
            raise TunelabError("entry names go with 'clear' only (tunelab cache clear NAME...).")
        if args.action == "path":
            print(api.cache_path())
        elif args.action == "clear":
            api.clear_cache(args.names or None, show=True)
        elif args.action == "prune":
            api.prune_cache(show=True)
        else:
            api.cache_entries(show=True)
        return 0
    if args.command == "check":
        result = api.check(
            args.config,
            _overrides(args),
            resume=args.resume,
            overwrite_non_run=args.overwrite_non_run,
            html=args.html,
            examples=args.examples,
            model=not args.data_only,
            show=True,
        )
        return 0 if result.passed else 1
    if args.command == "plan":
        options = FlagValues(
            {k: v for k, v in vars(args).items() if k not in ("command", "config", "gpu_memory", "nproc")}
        )
        print(api.plan(args.config, options, gpu_memory=args.gpu_memory, nproc=args.nproc).text())
        return 0
    if args.command == "federate":
        overrides = FlagValues(
            {k: v for k, v in vars(args).items() if k not in ("command", "config", "resume", "overwrite", "app_dir")}
        )
        if args.overwrite:
            overrides["overwrite"] = True
        result = api.federate(args.config, overrides, resume=args.resume, app_dir=args.app_dir)
        if args.app_dir:
            print(
                f"Flower App written to {result}; its pyproject.toml says how to run it with Flower's deployment engine."
            )
        return 0
    if args.command == "predict":
        api.predict(
            args.run_dir,
            data=args.data,
            texts=[read_escapes(t) for t in args.texts + args.text],  # \n a newline, as generate reads its prompt
            prompt=args.prompt and read_escapes(args.prompt),
            answers=[read_escapes(a) for a in args.answer],
            out=args.out,
            overwrite=args.overwrite,
            batch_size=args.batch_size,
            device=args.device,
            show=True,
            texts_first=texts_before_data(argv or []),
            spelling=CLI,  # errors name the flags typed
        )
        if args.out:
            print(f"written to {args.out}")
        return 0
    if args.command == "report":
        print(api.report(args.run_dir, out=args.out, overwrite=args.overwrite, spelling=CLI))
        return 0
    if args.command == "merge":
        print(api.merge(args.run_dir, args.out, overwrite=args.overwrite, dtype=args.dtype, show=True, spelling=CLI))
        return 0
    if args.command == "export":
        exported = api.export_gguf(
            args.run_dir,
            args.out,
            qtype=args.qtype,
            overwrite=args.overwrite,
            check=False if args.no_check else None,
            check_questions=args.check_questions,
            show=True,
            spelling=CLI,  # errors name the flags typed
        )
        print(f"{exported.path}\nOllama: {exported.ollama_command}\nmodel card: {exported.card}")
        return 1 if exported.verdict == "fail" else 0  # the files stay, for inspection
    if args.command == "push":
        result = api.push(
            args.path, args.repo, private=args.private, revision=args.revision, message=args.message, spelling=CLI
        )
        branch = f" (branch {result.revision})" if result.revision else ""
        print(f"pushed {counted(len(result.files), 'file')} to {result.repo}{branch}: {result.url}")
        return 0
    settings = _settings(args)
    if args.command == "eval":
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
            base_precision=args.base_precision,
            show_answers=args.show_answers,
            batch_size=args.batch_size,
            seed=args.seed,
            spelling=CLI,  # errors name the flags typed
        )
    elif args.command == "compare":
        api.compare(
            args.run_dir,
            questions=args.questions,
            question=args.question or None,  # no --question: none (an empty list is refused)
            settings=settings,
            device=args.device,
            save=not args.no_save,
            show=True,
            refusal=args.refusal,
            base_precision=args.base_precision,
            overwrite=args.overwrite,
            show_answers=args.show_answers,
            batch_size=args.batch_size,
            seed=args.seed,
            spelling=CLI,  # errors name the flags typed
        )
    elif args.command == "serve":
        api.serve(
            args.run_dir,
            host=args.host,
            port=args.port,
            api_key=args.api_key,
            model_name=args.model_name,
            settings=settings,
            device=args.device,
            base_precision=args.base_precision,
            allowed_origins=args.allowed_origins,
            spelling=CLI,  # errors name the flags typed
        )
    elif args.command == "chat":
        api.chat(
            args.run_dir,
            settings=settings,
            device=args.device,
            base_precision=args.base_precision,
            seed=args.seed,
            spelling=CLI,
        )
    elif args.command == "generate":
        system = args.system and read_escapes(args.system)  # \n a newline, as --data.system_prompt reads it
        answer = api.generate(
            args.run_dir,
            read_escapes(one_prompt(args.text, args.prompt, args.run_dir)),
            system=False if (system or "").strip().lower() == "none" else system,
            base=args.base,
            settings=settings,
            device=args.device,
            base_precision=args.base_precision,
            seed=args.seed,
            spelling=CLI,  # notes and errors name the flags typed
        )
        print(answer)  # stdout is the answer alone, for scripts; an empty one is said on stderr
        if not answer:
            print("tunelab generate: the answer is empty (the model wrote no text, only whitespace)", file=sys.stderr)
    return 0


def resume_command(argv: list[str]) -> str:
    """The command line that continues an interrupted `tunelab train ARGV`."""
    kept = [a for a in argv if a not in ("--overwrite", "--overwrite-non-run", "--resume")]
    return shlex.join(["tunelab", *kept, "--resume"])


def main(argv: list[str] | None = None) -> int:
    try:
        try:
            return _main(argv)
        finally:
            if sys.stdout is not None:  # None: started with stdout closed (>&-), where print writes nothing
                sys.stdout.flush()  # a reader gone fails here (help and argparse's exits too), not at Python's exit
    except BrokenPipeError:
        return stdout_closed()  # `tunelab plan CONFIG | head -3`: 141, no traceback


def _main(argv: list[str] | None) -> int:
    # Grow CUDA allocator segments instead of caching fixed-size blocks: less fragmentation, lower peak reserved.
    # Set here, before torch touches CUDA; API users set it themselves (README, Python API).
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    argv = join_negative_values(list(sys.argv[1:] if argv is None else argv))
    command = argv[0] if argv else "tunelab"
    try:
        args = parse(build_parser(), argv)
    except TunelabError as exc:
        print(f"tunelab {command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress bar is the one to watch
    quiet = os.environ.get("RANK", "0") != "0"  # under torchrun, rank 0 reports errors (all ranks reach the same)
    try:
        return _run(args, argv)
    except Interrupted as exc:
        if quiet:
            return exc.exit_code
        saved = f"; checkpoint {exc.checkpoint}" if exc.checkpoint else ""  # none: a stage saved, or no checkpoint
        then = f"Continue with:\n  {resume_command(argv)}" if exc.resumable else str(exc)
        print(f"\ntunelab {args.command}: interrupted after {exc.at}{saved}. {then}", file=sys.stderr)
        return exc.exit_code
    except TunelabError as exc:
        if not quiet:
            print(f"tunelab {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:  # 130, or 143 after a second SIGTERM (errors.Terminated)
        print("\ninterrupted", file=sys.stderr)
        return getattr(exc, "exit_code", 130)


if __name__ == "__main__":
    sys.exit(main())
