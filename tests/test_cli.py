"""The real `tunelab` command: a run end to end on a tiny model, --help, and bad input giving exit code 2 without a traceback."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tunelab.cli import _overrides, build_parser, join_negative_values, main, resume_command
from tunelab.config import load_config


def _tunelab(*args, cwd=None):
    env = os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "tunelab.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=600,
    )


def test_train_compare_generate_through_the_cli(tiny_overrides, tmp_path, cli_flags):
    questions = tmp_path / "q.jsonl"
    questions.write_text(
        json.dumps({"question": "What is the code of box 3?", "expected": "1111", "kind": "fact"}) + "\n"
    )
    overrides = tiny_overrides | {"train.max_steps": 3, "eval.questions": str(questions), "eval.max_new_tokens": 5}
    done = _tunelab("train", *cli_flags(overrides))
    assert done.returncode == 0, done.stderr[-2000:]
    run = Path(overrides["output_dir"])
    for name in (
        "config.yaml",
        "run.json",
        "metrics.jsonl",
        "loss.png",
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer.json",
        "data_report.json",
        "compare.json",
    ):
        assert (run / name).is_file(), name
    assert "resolved config" in done.stdout and "(--train.max_steps)" in done.stdout
    assert "correct: base" in done.stdout  # the scores printed at the end
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps[:3] == [1, 2, 3]

    # the trained run answers through the CLI's main in this process (the training above was its own process)
    code = main(
        ["generate", str(run), "--prompt", "What is the code of box 3?", "--max-new-tokens", "4", "--device", "cpu"]
    )
    assert code == 0  # a random model may well answer with an end token at once


def test_help_lists_every_option_with_its_help(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # help text is wrapped to the terminal width
    for option in ("--train.lr", "--data.packing", "--method.target_modules", "--model.name", "--eval.questions"):
        assert option in text
    assert "one of: constant, linear, cosine" in text
    assert "needs name lora or dora (one of: none, nf4" in text  # QLoRA trains DoRA adapters too
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())  # check said 'exit 0 or 1', though bad input exits 2 as train's
    assert "exit 0 (passed), 1 (a check failed) or 2 (bad config or data)" in text


def test_report_and_eval_help_say_what_they_take(capsys):
    """report --help asked for a finished run, though it draws a stopped or running one; eval's --batch-size spoke of
    generated questions only, though a classify or reward run's rows go through the head in batches of it."""
    with pytest.raises(SystemExit):
        main(["report", "--help"])
    assert "a run directory: finished, stopped early, or still training" in " ".join(capsys.readouterr().out.split())
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "of a classify or reward run, rows per forward pass" in text
    assert "(a classify run: inputs with their label; a reward run: preference pairs)" in text


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data.train", "missing.jsonl"], "missing.jsonl"),
        (["--train.scheduler", "wavy"], "allowed values: constant, linear, cosine"),
        (["--train.micro_batch", "-1"], "it must be >= 1"),
        (["--model.name", "/nowhere/model.gguf"], "GGUF file not found"),
        (["--resume", "--overwrite"], "--resume continues the run in output_dir and --overwrite replaces it"),
    ],
)
def test_bad_input_exits_2_without_traceback(args, message, capsys, tmp_path):
    code = main(["train", "--output_dir", str(tmp_path / "r"), *args])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (
            ["compare", "RUN", "--no-save", "--overwrite"],
            "--no-save writes no compare.json, so --overwrite has nothing to replace; give one of them.\n",
        ),
        (["eval", "RUN", "--data", "d.jsonl", "--no-save", "--overwrite"], "--no-save writes no results file"),
        (
            ["eval", "RUN", "--data", "d.jsonl", "--no-save", "--out", "e.json"],
            "--out e.json names where to save the results and --no-save saves nothing; give one of them.\n",
        ),
        (["export", "RUN", "--out", "m.gguf", "--no-check", "--check-questions", "3"], "skips the self-check"),
        (
            ["predict", "RUN", "hello", "--overwrite"],
            "--overwrite replaces an existing --out file, and no --out is given",
        ),
        (["check", "--resume", "--overwrite"], "--resume continues the run in output_dir and --overwrite replaces it"),
    ],
)
def test_flags_that_contradict_each_other_exit_2_before_anything_runs(argv, says, capsys, tmp_path):
    """compare --no-save --overwrite (and the like) was taken: the command did one and ignored the other. Refused
    before the run is read (RUN does not exist here)."""
    code = main([argv[0], *(str(tmp_path / a) if a == "RUN" else a for a in argv[1:])])
    err = capsys.readouterr().err
    assert code == 2 and says in err and "Traceback" not in err


def test_unreadable_json_line_is_located(tmp_path, capsys, tiny_model_dir):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"question": "a", "answer": "b"}\n{"question": "c", answer: "d"}\n')
    code = main(
        ["train", "--model.name", str(tiny_model_dir), "--data.train", str(data), "--output_dir", str(tmp_path / "r")]
    )
    err = capsys.readouterr().err
    assert code == 2 and "bad.jsonl:2" in err and "not valid JSON" in err


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["check", "--examples", "-1"], "--examples: -1 is out of range; give an integer 0 or more"),
        (["serve", "run", "--port", "70000"], "--port: 70000 is out of range; give an integer from 0 to 65535"),
        (["chat", "run", "--temperature", "nan"], "--temperature: nan is not a finite number"),
        (
            ["serve", "run", "--repetition-penalty", "0"],
            "--repetition-penalty: 0 is out of range; give a number above 0",
        ),
        (["eval", "run", "--batch-size", "0"], "--batch-size: 0 is out of range"),
        (["generate", "run", "--max-new-tokens", "x"], "--max-new-tokens: invalid integer value: 'x'"),
    ],
)
def test_numbers_out_of_range_are_refused_by_the_parser(argv, says, capsys):
    with pytest.raises(SystemExit) as exit_:  # argparse's own exit, status 2
        main(argv)
    assert exit_.value.code == 2 and says in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["plan", "--gpu-memory=--"], "(--gpu-memory): '--' is not a size like 24GiB, 80GB or 512MiB"),
        (["plan", "--train.gpu_memory=--"], "'--' is not a size like 24GiB"),
        (["plan", "--train.lr=--"], "option 'train.lr' must be float or 'auto', got '--'"),
        (["train", "--data.max_length=--"], "option 'data.max_length' must be int, got '--'"),
    ],
)
def test_a_double_dash_value_is_checked_as_the_options_value(argv, says, tiny_model_dir, capsys):
    """argparse dropped the '--' of `--gpu-memory=--` and gave the option an empty list: "plan(): argument
    'gpu_memory' must be str | None, got a list". It is the option's text, refused naming the option and its forms."""
    assert main([*argv, "--model.name", str(tiny_model_dir)]) == 2
    err = capsys.readouterr().err
    assert says in err and "list" not in err, err


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["plan", "--nproc=--"], "argument --nproc: invalid int value: '--'"),
        (["merge", "run", "--out", "x", "--dtype=--"], "argument --dtype: invalid choice: '--'"),
        (["compare", "run", "--question", "a", "--batch-size=--"], "--batch-size: invalid integer value: '--'"),
    ],
)
def test_a_double_dash_value_of_a_typed_option_is_refused_by_the_parser(argv, says, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and says in capsys.readouterr().err


@pytest.mark.parametrize("command", ["cache", "plan", "train"])
def test_a_reader_that_closes_stdout_early_ends_the_command_quietly(command, tiny_overrides, cli_flags):
    """`tunelab plan CONFIG | head -3` ended in a BrokenPipeError traceback (and Python's "Exception ignored" at exit);
    now the command ends with 141 (128 + SIGPIPE, as a shell reports it) and nothing on stderr about the pipe."""
    args = {"cache": ["cache", "path"], "plan": ["plan", "--gpu-memory", "1GiB"], "train": ["train"]}[command]
    if command != "cache":
        args += cli_flags(tiny_overrides)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tunelab.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ | {"HF_HUB_OFFLINE": "1"},
    )
    proc.stdout.close()  # the reader is gone before the command writes its first line
    err = proc.stderr.read()
    assert proc.wait(timeout=600) == 141, err
    assert "Traceback" not in err and "Exception ignored" not in err and "BrokenPipe" not in err, err


def test_a_command_started_with_stdout_closed_ends_as_it_would(tmp_path):
    """Started with no stdout at all (`>&-`: Python's sys.stdout is None, and print writes nothing), a command ends
    as it would with one, without an AttributeError from flushing it."""
    done = subprocess.run(
        ["sh", "-c", 'exec "$0" -m tunelab.cli cache path >&-', sys.executable],
        capture_output=True,
        text=True,
        env=os.environ | {"HF_HUB_OFFLINE": "1"},
        timeout=600,
    )
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr


def test_unknown_flag_exits_2_with_suggestions(capsys):
    assert main(["train", "--train.lrr", "1"]) == 2
    assert "unknown option 'train.lrr'. Did you mean --train.lr" in capsys.readouterr().err
    assert main(["train", "--learning_rate", "1e-4"]) == 2
    assert "Did you mean --train.lr?" in capsys.readouterr().err
    assert main(["check", "--train.packing", "true"]) == 2
    assert "Did you mean --data.packing" in capsys.readouterr().err
    assert main(["plan", "--train.lrr", "1"]) == 2
    assert "unknown option 'train.lrr'. Did you mean --train.lr" in capsys.readouterr().err
    assert main(["federate", "fed.yaml", "--federated.round", "3"]) == 2
    assert "unknown option 'federated.round'. Did you mean --federated.rounds" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["train", "check", "plan", "federate"])
def test_an_abbreviated_flag_is_refused_not_completed(command, capsys):
    # argparse would take --federated.local for --federated.local_steps and --train.ep for --train.epochs
    assert main([command, "c.yaml", "--federated.local", "5", "--train.ep", "2"]) == 2
    assert "unknown option 'federated.local'. Did you mean --federated.local_steps" in capsys.readouterr().err


def test_yaml_key_named_as_elsewhere_suggests_our_option(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("train:\n  learning_rate: 1.0e-4\n  batch_size: 4\n")
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert "unknown option 'train.learning_rate'. Did you mean train.lr?" in err and "Traceback" not in err


def test_a_config_file_that_is_not_utf8_exits_2_naming_it(tmp_path, capsys):
    config = tmp_path / "latin.yaml"
    config.write_bytes(b"data: {train: [qa.jsonl]}\nx: caf\xe9\n")
    assert main(["check", str(config)]) == 2
    err = capsys.readouterr().err
    assert "latin.yaml, line 2: not UTF-8 text" in err and "Traceback" not in err


def test_negative_value_is_parsed_and_refused_with_the_range(tmp_path, capsys):
    assert join_negative_values(["train", "--train.lr", "-1e-4", "--x", "-y"]) == [
        "train",
        "--train.lr=-1e-4",
        "--x",
        "-y",
    ]
    assert main(["train", "--train.lr", "-1e-4", "--output_dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "option 'train.lr' is -1e-4; it must be >= 0.0" in err and "usage:" not in err  # as typed


def test_resume_command_repeats_the_command_line():
    argv = ["train", "my config.yaml", "--train.lr=1e-4", "--overwrite"]
    assert resume_command(argv) == "tunelab train 'my config.yaml' --train.lr=1e-4 --resume"


def test_compare_on_missing_run_dir(tmp_path, capsys):
    assert main(["compare", str(tmp_path / "nope"), "--question", "hi"]) == 2
    assert "no such run directory" in capsys.readouterr().err


def test_eval_report_merge_export_through_the_cli(tiny_run_dir, tmp_path, capsys):
    data = tmp_path / "e.jsonl"
    data.write_text(
        "".join(
            json.dumps({"question": f"Code of box {i}?", "expected": f"Box {i}: {1000 + 37 * i}."}) + "\n"
            for i in range(3)
        )
    )
    assert (
        main(
            [
                "eval",
                str(tiny_run_dir),
                "--data",
                str(data),
                "--max-new-tokens",
                "4",
                "--device",
                "cpu",
                "--out",
                str(tmp_path / "eval.json"),
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "eval.json").read_text())
    assert main(["report", str(tiny_run_dir), "--out", str(tmp_path / "r.html")]) == 0
    assert "<svg" in (tmp_path / "r.html").read_text()
    assert main(["merge", str(tiny_run_dir), "--out", str(tmp_path / "merged")]) == 0
    assert (tmp_path / "merged" / "model.safetensors").is_file()
    assert main(["merge", str(tiny_run_dir), "--out", str(tmp_path / "merged")]) == 2  # exists: not overwritten
    assert main(["export", str(tiny_run_dir), "--gguf", str(tmp_path / "m.gguf"), "--type", "q8_0"]) == 0
    assert (tmp_path / "m.gguf").stat().st_size > 0 and (tmp_path / "m.Modelfile").is_file()
    assert "error" in capsys.readouterr().err  # the refused merge said why


def test_a_flags_null_unsets_an_optional_text_option_and_is_text_for_a_required_one():
    """README: on the command line `null` unsets an optional option, a text one included; a required text keeps it."""
    args = build_parser().parse_args(
        ["check", "c.yaml", "--data.system_prompt", "null", "--eval.refusal", " ~ ", "--output_dir", "null"]
    )
    overrides = _overrides(args)
    assert (overrides["data.system_prompt"], overrides["eval.refusal"], overrides["output_dir"]) == (None, None, "null")
    cfg = load_config(None, overrides | {"data.train": "qa.jsonl"}).config
    assert (cfg.data.system_prompt, cfg.eval.refusal, cfg.output_dir) == (None, None, "null")


def test_a_command_line_text_that_is_not_utf8_exits_2_naming_it(tiny_run_dir):
    """Python keeps a byte that is not UTF-8 in an argument as a lone surrogate, which crashed the tokenizer with a
    traceback (exit 1); a chat line of such bytes did the same."""
    env = os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tunelab.cli",
            "generate",
            str(tiny_run_dir),
            "--prompt",
            b"Code of box \xff?",
            "--device",
            "cpu",
        ],
        capture_output=True,
        env=env,
        timeout=600,
    )
    err = done.stderr.decode(errors="replace")
    assert done.returncode == 2, err[-2000:]
    assert (
        "argument 'prompt' (PROMPT or --prompt): character 13 is U+DCFF" in err
        and "the byte 0xff" in err
        and "Traceback" not in err
    )
    done = subprocess.run(
        [sys.executable, "-m", "tunelab.cli", "chat", str(tiny_run_dir), "--device", "cpu", "--max-new-tokens", "3"],
        input=b"Code of box \xff?\nCode of box 2?\n/exit\n",
        capture_output=True,
        env=env,
        timeout=600,
    )
    out = done.stdout.decode(errors="replace")
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    assert "(not sent: " in out and out.count("model> ") == 1


def test_overwrite_never_replaces_the_runs_training_data(tiny_run_dir, capsys):
    """`tunelab report RUN --out qa.jsonl --overwrite` replaced the file the run was trained on with an HTML page."""
    data = tiny_run_dir.parent / "qa.jsonl"  # the tiny run's data.train
    before = data.read_bytes()
    assert main(["report", str(tiny_run_dir), "--out", str(data), "--overwrite"]) == 2
    assert "is a file of data.train of the run's config; --overwrite never replaces data" in capsys.readouterr().err
    assert data.read_bytes() == before


def test_overwrite_never_replaces_the_base_model(tiny_run_dir, tiny_model_dir, capsys):
    """`tunelab report RUN --out BASE/model.safetensors --overwrite` replaced the weights the run's adapter sits on."""
    weights = next(tiny_model_dir.glob("*.safetensors"))
    before = weights.stat().st_mtime_ns, weights.stat().st_size
    assert main(["report", str(tiny_run_dir), "--out", str(weights), "--overwrite"]) == 2
    assert f"is a file of the base model {tiny_model_dir}; --overwrite never replaces it" in capsys.readouterr().err
    assert (weights.stat().st_mtime_ns, weights.stat().st_size) == before


def test_an_option_of_one_value_given_twice_is_refused(tmp_path, capsys):
    """argparse keeps the last of a repeated option: `eval --data a.jsonl --data b.jsonl` scored b alone and `export
    --out a.gguf --gguf b.gguf` wrote b, without a word. Repeatable options (--question, --text) stay repeatable."""
    from tunelab.config.flags import refuse_repeated

    parser = build_parser()
    cases = [
        (["eval", "run", "--data", "a.jsonl", "--data=b.jsonl"], "--data"),
        (["export", "run", "--out", "a.gguf", "--gguf", "b.gguf"], "--gguf"),
        (["predict", "run", "--dat", "a.jsonl", "--data", "b.jsonl"], "--data"),  # an abbreviation counts
        (["merge", "run", "--out", "a", "--out", "b"], "--out"),
    ]
    for argv, option in cases:
        assert main(argv) == 2
        assert f"option '{option}' is given more than once" in capsys.readouterr().err
        assert not (tmp_path / "b").exists()
    refuse_repeated(parser, ["compare", "run", "--question", "a", "--question", "b"])
    refuse_repeated(parser, ["predict", "run", "--text", "a", "--text", "b", "--answer", "x"])


def test_a_config_option_given_twice_on_the_command_line_is_refused(tmp_path, capsys):
    """`tunelab train --data.train a.jsonl --data.train b.jsonl` trained on b alone and `--data.packing true
    --data.packing false` packed nothing, without a word: the commands that take the config options kept the last of
    a repeated one, where every other command refused it."""
    cases = [
        (["train", "--data.train", "a.jsonl", "--data.train=b.jsonl"], "--data.train"),
        (["check", "--data.packing", "true", "--data.packing", "false"], "--data.packing"),
        (["plan", "--train.micro_batch", "2", "--train.micro_batch", "4"], "--train.micro_batch"),
        (["federate", "--train.lr", "1e-4", "--train.lr", "2e-4"], "--train.lr"),
    ]
    for argv, option in cases:
        assert main([*argv, "--output_dir", str(tmp_path / "run")]) == 2
        assert f"option '{option}' is given more than once" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "flags, says",
    [
        (["--top-p", "-0.1"], "option '--top-p' is -0.1; give a number from 0 (greedy) to 1"),
        (["--top-p", "1.5"], "option '--top-p' is 1.5; give a number from 0 (greedy) to 1"),
        (["--temperature", "-0.5"], "option '--temperature' is -0.5; give a number 0 (greedy) or more"),
    ],
)
def test_a_generation_option_out_of_range_is_named_with_its_value(tmp_path, capsys, flags, says):
    """--top-p 1.5 was told that "options --max-new-tokens >= 1, --temperature >= 0 and 0 < --top-p <= 1 are
    required", leaving the user to find which of the three was wrong."""
    assert main(["generate", str(tmp_path), "--prompt", "hi", *flags]) == 2
    assert says in capsys.readouterr().err


def test_serve_refuses_an_option_given_twice_as_the_other_commands_that_read_a_run_do(capsys):
    """`tunelab serve RUN --port 8000 --port 8001` served on 8001 and `--api-key A --api-key B` required B, without a
    word: serve was left out of the commands that refuse an option of one value given twice."""
    for argv, option in [
        (["serve", "run", "--port", "8000", "--port", "8001"], "--port"),
        (["serve", "run", "--api-key", "a", "--api-key=b"], "--api-key"),
    ]:
        assert main(argv) == 2
        assert f"option '{option}' is given more than once" in capsys.readouterr().err


def test_generate_takes_the_prompt_after_the_run_or_as_a_flag(monkeypatch, capsys):
    """`tunelab generate RUN "prompt"` was refused with argparse's '--prompt is required'."""
    import tunelab.api

    asked = []
    monkeypatch.setattr(tunelab.api, "generate", lambda run, prompt, **_: asked.append((run, prompt)) or "ok")
    assert main(["generate", "runs/a", "What is 2+2?"]) == 0
    assert main(["generate", "runs/a", "--prompt", "Hi"]) == 0
    assert asked == [("runs/a", "What is 2+2?"), ("runs/a", "Hi")]
    capsys.readouterr()
    assert main(["generate", "runs/a", "One", "--prompt", "Two"]) == 2
    assert "takes one prompt; it got 'One' and --prompt 'Two'" in capsys.readouterr().err
    assert main(["generate", "runs/my run"]) == 2  # told with the run it gave, quoted for the shell
    assert "needs a prompt: tunelab generate 'runs/my run' \"your prompt\"" in capsys.readouterr().err
    assert len(asked) == 2


def test_generate_system_none_asks_for_no_system_prompt(monkeypatch, capsys):
    """`tunelab generate --system none` sent the text "none" as the system message: generate had no way to ask for
    no system prompt, as chat's `/system none` does; now it gives the API system=False (none at all)."""
    import tunelab.api

    asked = []
    monkeypatch.setattr(tunelab.api, "generate", lambda run, prompt, system, **_: asked.append(system) or "ok")
    for given in ("none", "None", " NONE "):
        assert main(["generate", "runs/a", "Hi", "--system", given]) == 0
    assert main(["generate", "runs/a", "Hi", "--system", "Be brief."]) == 0
    assert main(["generate", "runs/a", "Hi"]) == 0
    assert asked == [False, False, False, "Be brief.", None]
    capsys.readouterr()


def test_generate_reads_a_newline_in_its_text_flags_as_data_system_prompt_does(monkeypatch, capsys):
    """`tunelab generate --system "A.\\nB."` gave the model a backslash and an n, where --data.system_prompt and
    --classify.prompt_format read \\n as a newline; PROMPT, --prompt and --system now read it so too."""
    import tunelab.api

    asked = []
    monkeypatch.setattr(
        tunelab.api, "generate", lambda run, prompt, system, **_: asked.append((prompt, system)) or "ok"
    )
    assert main(["generate", "runs/a", "Line one\\nline two", "--system", "Be brief.\\tOk.\\nBye."]) == 0
    assert main(["generate", "runs/a", "--prompt", "a\\\\nb"]) == 0  # typed a\\nb: a backslash, then n
    assert asked == [("Line one\nline two", "Be brief.\tOk.\nBye."), ("a\\nb", None)]
    capsys.readouterr()


def test_predict_reads_a_newline_in_its_text_flags_as_generate_does(monkeypatch, capsys):
    """`tunelab predict RUN --answer "A.\\nB."` scored a backslash and an n, where generate's PROMPT, --prompt and
    --system read \\n as a newline; TEXT, --text, --prompt and --answer now read it so too."""
    import tunelab.api

    asked = []
    monkeypatch.setattr(
        tunelab.api, "predict", lambda run, texts, prompt, answers, **_: asked.append((texts, prompt, answers))
    )
    assert main(["predict", "runs/a", "one\\ntwo", "--text", "a\\tb"]) == 0
    assert main(["predict", "runs/a", "--prompt", "Q?\\nMore.", "--answer", "x\\ny", "--answer", "a\\\\nb"]) == 0
    assert asked == [(["one\ntwo", "a\tb"], None, []), ([], "Q?\nMore.", ["x\ny", "a\\nb"])]
    capsys.readouterr()


@pytest.mark.parametrize(
    "argv, field, value",
    [
        (["predict", "runs/spam", "--device", "cpu", "WINNER!", "see you"], "texts", ["WINNER!", "see you"]),
        (["predict", "runs/spam", "--text", "a", "b"], "texts", ["b"]),
        (["generate", "runs/faq", "--max-new-tokens", "8", "Where is your office?"], "text", "Where is your office?"),
    ],
)
def test_texts_after_an_option_are_the_commands_texts(argv, field, value):
    """`tunelab predict RUN --device cpu "text"` stopped with argparse's `unrecognized arguments: text`, exit 2: the
    texts after an option were no longer read as the command's TEXT (nor generate's PROMPT). They are now, wherever
    they stand."""
    from tunelab.cli_parser import build_parser, parse

    args = parse(build_parser(), argv)
    assert getattr(args, field) == value and args.command == argv[0] and args.run_dir == argv[1]
