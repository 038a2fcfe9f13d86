"""The public API stays reachable as functions once every subpackage has been imported."""

import importlib
import importlib.util
import json
import pkgutil
import shlex
import subprocess
import sys

import pytest

import tunelab


def test_api_names_are_not_shadowed_by_subpackages():
    flower = importlib.util.find_spec("flwr") is not None  # tunelab.federated needs the optional federated extra
    for module in pkgutil.walk_packages(tunelab.__path__, "tunelab."):
        if module.name.startswith("tunelab.federated.") and not flower:
            continue
        needs_triton = module.name.startswith("tunelab.kernels.") or module.name.endswith("_triton")
        if not needs_triton:
            importlib.import_module(module.name)
    for name in (
        "train",
        "check",
        "compare",
        "generate",
        "chat",
        "evaluate",
        "report",
        "merge",
        "export_gguf",
        "push",
        "federate",
    ):
        assert callable(getattr(tunelab, name)), name


def test_import_is_light():
    code = "import sys, tunelab; heavy = [m for m in ('torch', 'transformers') if m in sys.modules]; print(heavy)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_modules_the_readme_names_are_reached_after_a_bare_import():
    """`import tunelab` then `except tunelab.errors.TunelabError:` (the README's words): the module is imported on
    first use, as the API is, and importing the package stays light."""
    code = (
        "import sys, tunelab\n"
        "assert issubclass(tunelab.errors.ConfigError, tunelab.errors.TunelabError)\n"
        "assert tunelab.config.RunConfig.__name__ == 'RunConfig'\n"
        "try:\n    tunelab.train(resume='no')\nexcept tunelab.errors.TunelabError as error:\n    print(error)\n"
        "try:\n    tunelab.no_such_name\nexcept AttributeError as error:\n    print(error)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "argument 'resume' must be bool" in out.stdout
    assert "module 'tunelab' has no attribute 'no_such_name'" in out.stdout


def test_the_comparison_after_training_belongs_to_the_api_not_the_recipe(tiny_overrides, tmp_path, capsys):
    import json

    from tunelab.training import recipe

    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"question": "What is the code of box 3?", "expected": "1111"}) + "\n")
    overrides = tiny_overrides | {"train.max_steps": 1, "eval.questions": str(questions), "eval.max_new_tokens": 2}
    plain = recipe.train(None, overrides | {"output_dir": str(tmp_path / "plain")})
    assert not (plain.run_dir / "compare.json").exists()  # the training loop knows nothing of inference
    result = tunelab.train(None, overrides | {"output_dir": str(tmp_path / "api")})
    assert json.loads((result.run_dir / "compare.json").read_text())["rows"][0]["question"].startswith("What is")
    assert "correct: base" in capsys.readouterr().out


def test_a_run_of_one_step_says_one_step(tiny_overrides, capsys):
    """A run cut to one step ended 'saved to ... (1 steps, ...)'."""
    tunelab.train(None, tiny_overrides | {"train.max_steps": 1})
    saved = [line for line in capsys.readouterr().out.splitlines() if line.startswith("saved to ")]
    assert len(saved) == 1 and " (1 step, " in saved[0]


def test_one_question_or_text_given_alone_is_one_not_a_list_of_characters(tiny_run_dir):
    """tunelab.compare(run, question="Where is your office?") asked 21 one-character questions, and predict(texts=
    "see you at 6") predicted each character: a text given where a list is expected is a list of one."""
    from tunelab.api import _texts
    from tunelab.errors import ConfigError
    from tunelab.infer.generate import GenerationSettings

    result = tunelab.compare(
        tiny_run_dir, question="Code of box 3?", settings=GenerationSettings(max_new_tokens=2), save=False
    )
    assert [row.question for row in result.rows] == ["Code of box 3?"]
    assert _texts("see you at 6", "texts") == ["see you at 6"] and _texts(("a", "b"), "texts") == ["a", "b"]
    with pytest.raises(ConfigError, match="argument 'texts' must be a text or a list of texts, got an int"):
        _texts(3, "texts")


def test_arguments_of_the_wrong_kind_say_what_train_takes(tmp_path):
    """A resolved config with overrides raised ValueError, a mapping as the config TypeError (from pathlib) and a list
    of overrides AttributeError: each is a ConfigError saying what the function takes."""
    from tunelab.errors import ConfigError

    path = tmp_path / "c.yaml"
    path.write_text("data: {train: [qa.jsonl]}\n")
    resolved = tunelab.load_config(path)
    with pytest.raises(ConfigError, match="a ResolvedConfig takes no overrides"):
        tunelab.train(resolved, {"train.lr": 1e-4})
    with pytest.raises(ConfigError, match="the config must be a YAML file's path, a RunConfig, a ResolvedConfig"):
        tunelab.train({"data": {"train": ["qa.jsonl"]}})
    with pytest.raises(ConfigError, match="overrides must be a mapping of dotted option names to values"):
        tunelab.train(path, ["train.lr=1"])
    with pytest.raises(ConfigError, match="overrides must be a mapping of dotted option names to values"):
        tunelab.check(tunelab.config.RunConfig(), ["train.lr=1"])


def test_an_argument_of_the_wrong_type_is_refused_by_name_before_any_work(tmp_path):
    """train(resume="no") resumed (a text is truthy), merge(run, None) and generate(None, "hi") failed deep inside
    with a bare TypeError: each is refused, naming the function, the argument and what it takes."""
    from tunelab.errors import ConfigError

    cases = [
        (
            lambda: tunelab.train(None, {}, resume="no"),
            r"train\(\): argument 'resume' must be bool, got a str \('no'\)",
        ),
        (lambda: tunelab.merge(tmp_path, None), r"merge\(\): argument 'out' must be str \| Path, got a NoneType"),
        (lambda: tunelab.generate(None, "hi"), r"generate\(\): argument 'run' must be str \| Path \| LoadedRun"),
        (
            lambda: tunelab.predict(tmp_path, texts=3),
            r"argument 'texts' must be str \| list\[str\] \| None, got an int",
        ),
        (lambda: tunelab.train(None, {}, nproc=True), r"argument 'nproc' must be int \| None, got a bool"),
        (lambda: tunelab.compare(tmp_path, save=1), r"compare\(\): argument 'save' must be bool, got an int"),
    ]
    for call, message in cases:
        with pytest.raises(ConfigError, match=message):
            call()
    assert tunelab.generate.__name__ == "generate" and "prompt" in str(
        __import__("inspect").signature(tunelab.generate)
    )


def test_an_empty_path_is_refused_not_read_as_the_current_folder(tmp_path, capsys, monkeypatch):
    """`tunelab eval RUN --data "$EVAL"` with $EVAL unset read every data file under the current folder as the eval
    file (Path("") is "."), and scored those rows."""
    from tunelab.cli import main
    from tunelab.errors import ConfigError

    monkeypatch.chdir(tmp_path)
    for call in (
        lambda: tunelab.evaluate(tmp_path, ""),
        lambda: tunelab.predict(tmp_path, data=" "),
        lambda: tunelab.compare(tmp_path, questions=""),
        lambda: tunelab.report("", out=tmp_path / "r.html"),
    ):
        with pytest.raises(ConfigError, match=r"argument '(data|questions|run)' is an empty path"):
            call()
    with pytest.raises(SystemExit) as ended:  # argparse's exit: the flag refused as it was parsed
        main(["eval", str(tmp_path), "--data", ""])
    assert ended.value.code == 2
    assert "argument --data: '' is an empty path" in capsys.readouterr().err


def test_an_empty_path_is_named_as_typed_and_as_what_it_is(tmp_path, capsys):
    """`tunelab merge RUN --out ""` was told "merge(): argument 'out' is an empty path ..., which would name the current
    folder and read every data file under it": the Python function, and a read, of an output. The CLI names the
    argument as typed (the positional run_dir, export's --gguf); Python's message says no read of an output."""
    from tunelab.cli import main
    from tunelab.errors import ConfigError

    for argv, named in (
        (["merge", str(tmp_path), "--out", ""], "argument --out: '' is an empty path"),
        (["export", str(tmp_path), "--gguf", " "], "argument --gguf/--out: ' ' is an empty path"),
        (["generate", "", "hi"], "argument run_dir: '' is an empty path"),
        (["report", str(tmp_path), "--out", ""], "argument --out: '' is an empty path"),
        (["compare", str(tmp_path), "--questions", ""], "argument --questions: '' is an empty path"),
    ):
        with pytest.raises(SystemExit) as ended:
            main(argv)
        assert ended.value.code == 2
        err = capsys.readouterr().err
        assert named in err and "()" not in err and "data file" not in err, err
    with pytest.raises(ConfigError) as caught:
        tunelab.merge(tmp_path, "")
    assert "argument 'out' is an empty path" in str(caught.value) and "data file" not in str(caught.value)


def test_save_false_beside_overwrite_or_out_names_the_python_arguments(tmp_path):
    """tunelab.evaluate(..., save=False, overwrite=True) was told of --no-save and --overwrite, its own arguments in
    brackets after them; a Python caller is told of what it wrote alone."""
    from tunelab.errors import ConfigError

    cases = [
        (
            lambda: tunelab.compare(tmp_path, save=False, overwrite=True),
            "save=False writes no compare.json, so overwrite=True has nothing to replace; give one of them.",
        ),
        (
            lambda: tunelab.evaluate(tmp_path, "d.jsonl", save=False, overwrite=True),
            "save=False writes no results file, so overwrite=True has nothing to replace; give one of them.",
        ),
        (
            lambda: tunelab.evaluate(tmp_path, "d.jsonl", save=False, out="e.json"),
            "out='e.json' names where to save the results and save=False saves nothing; give one of them.",
        ),
    ]
    for call, says in cases:
        with pytest.raises(ConfigError) as caught:
            call()
        assert str(caught.value) == says


def test_an_existing_out_file_is_named_as_each_caller_gives_it(tmp_path, capsys):
    """predict(..., out=FILE) beside an existing FILE was told of --overwrite and --out, then of its own arguments in
    brackets; the CLI got the brackets too. Said before the model loads."""
    import json

    from tunelab.cli import main
    from tunelab.errors import RunDirError

    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(
        json.dumps({"base_model": "x", "method": "lora", "finished": True, "task": "classify"})
    )
    out = tmp_path / "p.csv"
    out.write_text("label\n")
    with pytest.raises(RunDirError) as caught:
        tunelab.predict(run, texts=["a"], out=out)
    assert str(caught.value) == f"{out} exists. Pass overwrite=True to replace it, or out= to write elsewhere."
    assert main(["predict", str(run), "a", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{out} exists. Pass --overwrite to replace it, or --out to write elsewhere.\n" in err
    assert "Python" not in err and out.read_text() == "label\n"


def test_predict_refuses_a_prompt_without_answers(tmp_path, capsys):
    """predict --text T --prompt P predicted T and dropped P without a word (a prompt is only read with --answer).
    Each caller is told of what it wrote: the CLI of its flags, a Python caller of its arguments alone."""
    from tunelab.cli import main
    from tunelab.errors import TunelabError

    with pytest.raises(TunelabError) as caught:
        tunelab.predict(tmp_path, texts=["great"], prompt="Say something kind")
    assert str(caught.value) == (
        "prompt= is the prompt that answers= texts answer (reward runs), and no answers= is given; give the answers "
        "to score, or drop prompt= (a text of its own is given in texts=)."
    )
    assert main(["predict", str(tmp_path), "--prompt", "Say something kind"]) == 2
    err = capsys.readouterr().err
    assert "--prompt is the prompt that --answer texts answer (reward runs), and no --answer is given" in err
    assert "(a text of its own is given with --text)." in err and "=" not in err
    with pytest.raises(TunelabError, match=r"^answers= needs the prompt= it answers\.$"):
        tunelab.predict(tmp_path, answers=["You are great"])
    assert main(["predict", str(tmp_path), "--answer", "You are great"]) == 2
    assert "--answer needs the --prompt it answers." in capsys.readouterr().err


@pytest.mark.parametrize("task", ["classify", "reward"])
def test_nothing_to_predict_is_said_before_the_model_loads(tmp_path, capsys, monkeypatch, task):
    """`tunelab predict RUN` with no --data, --text or --answer loaded the model (a minute for a large one), then said
    there was nothing to predict."""
    import json

    import tunelab.infer.predict as predict_module
    from tunelab.cli import main
    from tunelab.errors import TunelabError

    def loading(*args, **kwargs):
        raise TunelabError("stub: the model loads")

    monkeypatch.setattr(predict_module, "open_head_run", loading)
    run = tmp_path / "my run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"base_model": "x", "method": "lora", "finished": True, "task": task}))
    assert main(["predict", str(run)]) == 2
    err = capsys.readouterr().err
    assert "nothing to predict: give --data FILE" in err and "stub" not in err
    # the texts' form names this run, not a placeholder
    assert f'texts (tunelab predict {shlex.quote(str(run))} "TEXT" ..., or --text TEXT)' in err and " RUN " not in err
    assert ("--answer" in err) == (task == "reward")  # a classify run is not told of answers, which it cannot score
    with pytest.raises(TunelabError) as caught:
        tunelab.predict(run)
    said = "data= or texts=." if task == "classify" else "data= or texts=, or prompt= with answers=."
    assert str(caught.value) == f"nothing to predict: give {said}"
    assert main(["predict", str(run), "--text", "great"]) == 2 and "stub: the model loads" in capsys.readouterr().err


def test_predict_takes_its_texts_after_the_run_as_generate_takes_its_prompt(tmp_path, monkeypatch):
    """`tunelab predict RUN "text"` was refused (unrecognized arguments), where `tunelab generate RUN "prompt"` works:
    texts after the run are predicted, before those of --text."""
    import tunelab.api as api
    from tunelab.cli import main

    seen = {}
    monkeypatch.setattr(api, "predict", lambda run, **kwargs: seen.update(kwargs))
    assert main(["predict", str(tmp_path), "great", "awful", "--text", "fine"]) == 0
    assert seen["texts"] == ["great", "awful", "fine"]


def test_predict_names_the_flag_of_an_empty_text_beside_its_argument(tmp_path, capsys):
    """tunelab predict --text '' was told that "argument 'texts'" is empty, a name the command line has not."""
    from tunelab.cli import main

    assert main(["predict", str(tmp_path), "--text", "ok", "--text", ""]) == 2
    assert "argument 'texts' (TEXT or --text), item 2, is empty" in capsys.readouterr().err
    assert main(["predict", str(tmp_path), ""]) == 2  # given after the run
    assert "argument 'texts' (TEXT or --text), item 1, is empty" in capsys.readouterr().err
    assert main(["predict", str(tmp_path), "--prompt", "p", "--answer", " "]) == 2
    assert "argument 'answers' (--answer), item 1, is empty" in capsys.readouterr().err


def test_predict_names_a_python_callers_texts_without_the_flags(tmp_path):
    """tunelab.predict(run, texts=["ok", ""]) was told of "argument 'texts' (TEXT or --text)": the CLI's names, which
    a Python caller never typed."""
    from tunelab.errors import ConfigError

    with pytest.raises(ConfigError) as texts:
        tunelab.predict(tmp_path, texts=["ok", ""])
    assert str(texts.value) == "argument 'texts', item 2, is empty; give the text itself."
    with pytest.raises(ConfigError) as answers:
        tunelab.predict(tmp_path, prompt="p", answers=[" "])
    assert str(answers.value) == "argument 'answers', item 1, is empty; give the text itself."


@pytest.mark.parametrize("command", ["compare", "evaluate"])
def test_an_empty_refusal_sentence_is_refused(tiny_run_dir, tmp_path, command):
    """compare --refusal '' dropped the refusal rates without a word (every answer contains the empty text)."""
    from tunelab.errors import TunelabError

    args = {"question": "Code of box 2?"} if command == "compare" else {"data": tmp_path / "q.jsonl"}
    with pytest.raises(TunelabError, match="argument 'refusal' is empty"):
        getattr(tunelab, command)(tiny_run_dir, refusal="  ", save=False, **args)


@pytest.mark.parametrize("command", ["compare", "evaluate"])
def test_answers_of_a_run_replaced_meanwhile_are_not_saved_into_it(tiny_run_dir, tmp_path, monkeypatch, command):
    """`train --overwrite` replaced the run while compare generated; compare.json then held the old model's answers
    as the new run's."""
    import json
    import shutil

    import tunelab.eval.compare as compare_module
    import tunelab.eval.evaluate as evaluate_module
    from tunelab.errors import RunDirError

    run = tmp_path / "run"
    shutil.copytree(tiny_run_dir, run)

    def replacing(model, tokenizer, template, conversations, settings, progress=None, names=None, generator=None):
        info = json.loads((run / "run.json").read_text())
        (run / "run.json").write_text(json.dumps(info | {"note": "another run"}))  # what a new run writes there
        return ["Box 2: 1074." for _ in conversations], [False for _ in conversations]

    monkeypatch.setattr(compare_module, "generate_answers", replacing)
    monkeypatch.setattr(evaluate_module, "generate_answers", replacing)
    (tmp_path / "q.jsonl").write_text(json.dumps({"question": "Code of box 2?", "expected": "1074"}) + "\n")
    args = {"question": "Code of box 2?"} if command == "compare" else {"data": tmp_path / "q.jsonl"}
    with pytest.raises(RunDirError, match="the run was replaced or changed while .* ran"):
        getattr(tunelab, command)(run, device="cpu", **args)
    assert not (run / "compare.json").exists() and not (run / "eval.json").exists()


def test_counts_and_ports_out_of_range_are_refused_as_the_cli_refuses_them(tmp_path):
    """The CLI refuses --examples -1, --batch-size 0, --check-questions 0 and --port 70000; the API took them:
    check(examples=-1) previewed all examples but one, export_gguf(check_questions=0) checked nothing,
    serve(port=-1) raised socket's OverflowError and serve(port="80"), export_gguf(check_questions="3") and
    open_run(device=3) raised bare TypeErrors. Each is a ConfigError naming the argument."""
    from tunelab.errors import ConfigError

    run = tmp_path / "run"
    cases = [
        (lambda: tunelab.plan(None, {}, nproc=0), r"^argument 'nproc' is 0; give a whole number, 1 or more\.$"),
        (lambda: tunelab.check(None, {}, examples=-1), r"^argument 'examples' is -1"),
        (lambda: tunelab.predict(run, texts=["a"], batch_size=0), r"^argument 'batch_size' is 0"),
        (lambda: tunelab.load_reward_model(run, batch_size=0), r"^argument 'batch_size' is 0"),
        (
            lambda: tunelab.export_gguf(run, tmp_path / "m.gguf", check_questions=0),
            r"^argument 'check_questions' is 0; give 1",
        ),
        (lambda: tunelab.export_gguf(run, tmp_path / "m.gguf", check_questions="3"), r"'check_questions' must be int"),
        (lambda: tunelab.serve(run, port="80"), r"serve\(\): argument 'port' must be int, got a str"),
        (lambda: tunelab.open_run(run, device=3), r"open_run\(\): argument 'device' must be str, got an int"),
        # start_server took these: a bare TypeError, a text read as a list of one-letter origins, a dict as settings
        (lambda: tunelab.start_server(run, port="80"), r"start_server\(\): argument 'port' must be int, got a str"),
        (lambda: tunelab.start_server(run, allowed_origins="http://x"), r"'allowed_origins' must be list\[str\]"),
        (lambda: tunelab.start_server(run, settings={}), r"'settings' must be GenerationSettings \| None, got a dict"),
    ]
    if importlib.util.find_spec("fastapi") and importlib.util.find_spec("uvicorn"):
        cases.append((lambda: tunelab.serve(run, port=70000), r"argument 'port' is 70000; allowed: 0 to 65535"))
    for call, message in cases:
        with pytest.raises(ConfigError, match=message):
            call()


def test_a_merge_dtype_it_does_not_know_is_named_as_merges_argument(tiny_run_dir, tmp_path):
    """merge(run, out, dtype="int8") said "option 'dtype'", a name neither the API nor `tunelab merge --dtype` has."""
    from tunelab.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^argument 'dtype' is 'int8'; allowed values: fp32, bf16, fp16\.$"):
        tunelab.merge(tiny_run_dir, tmp_path / "merged", dtype="int8")
    assert not (tmp_path / "merged").exists()


def test_resume_with_an_overwrite_override_is_refused_as_the_cli_refuses_it(tiny_overrides):
    """`tunelab train --resume --overwrite` is refused; train(..., {"overwrite": True}, resume=True) resumed and
    dropped the overwrite without a word (check and federate likewise). Named as the caller wrote them, not as the
    flags --resume --overwrite."""
    from tunelab.errors import ConfigError

    overrides = dict(tiny_overrides, overwrite=True)
    says = r"^resume=True continues the run in output_dir and overrides\['overwrite'\] replaces it; give one"
    with pytest.raises(ConfigError, match=says):
        tunelab.train(None, overrides, resume=True)
    with pytest.raises(ConfigError, match=says):
        tunelab.check(None, overrides, resume=True, model=False)
    if importlib.util.find_spec("flwr"):
        with pytest.raises(ConfigError, match=says):
            tunelab.federate(None, overrides, resume=True)


def test_nproc_other_than_torchruns_processes_is_refused(monkeypatch):
    """`tunelab train --nproc 4` under a torchrun of 2 processes is refused; train(nproc=4) there trained on the 2
    ranks as if nproc had not been given."""
    from tunelab.errors import ConfigError

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ConfigError, match="argument 'nproc' is 4, but torchrun started 2 processes; drop nproc"):
        tunelab.train(None, {}, nproc=4)


def test_nproc_below_one_names_trains_argument(tmp_path, monkeypatch):
    """train(..., nproc=0) was told "option '--nproc' is 0", a flag its caller never typed."""
    from tunelab.errors import ConfigError

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(ConfigError, match=r"^argument 'nproc' is 0; give the number of processes to start") as refused:
        tunelab.train(None, {"output_dir": str(tmp_path / "run")}, nproc=0)
    assert "--nproc" not in str(refused.value)


def test_a_reward_model_refuses_a_text_alone_and_unequal_lists():
    """load_reward_model(run)("What is 2+2?", "4.") raised ValueError from the lengths, and ("ab", "cd") scored the
    pairs ('a', 'c') and ('b', 'd'); each is a ConfigError saying what the function takes."""
    from types import SimpleNamespace

    from tunelab.errors import ConfigError
    from tunelab.tasks.head_run import RewardModel

    reward = RewardModel(SimpleNamespace(info=SimpleNamespace(task="reward"), run_dir="runs/rm"))
    with pytest.raises(ConfigError, match=r"'prompts' must be a list .*got a str; for one pair, give \[prompt\]"):
        reward("ab", ["cd"])
    with pytest.raises(
        ConfigError, match=r"'completions' must be a list .*got a str; for one pair, give \[completion\]"
    ):
        reward(["ab"], "cd")
    with pytest.raises(ConfigError, match="reward model: 2 prompts but 1 completion; give one each"):
        reward(["a", "b"], ["c"])  # said "1 completions"
    with pytest.raises(ConfigError, match="reward model: 1 prompt but 2 completions; give one each"):
        reward(["a"], ["c", "d"])


@pytest.mark.parametrize("command", ["compare", "evaluate"])
def test_show_answers_without_show_is_refused(tmp_path, command):
    """compare(run, ..., show_answers=True) printed nothing (show is False by default) without a word; the CLI's
    --show-answers always prints."""
    from tunelab.errors import ConfigError

    args = {"question": "Code of box 2?"} if command == "compare" else {"data": tmp_path / "q.jsonl"}
    with pytest.raises(ConfigError, match=r"argument 'show_answers' prints the answers .* pass show=True too"):
        getattr(tunelab, command)(tmp_path, show_answers=True, save=False, **args)


def test_export_refuses_a_question_count_with_the_self_check_skipped(tmp_path, capsys):
    """`tunelab export --check-questions 3 --no-check` (and export_gguf(check=False, check_questions=3)) exported
    without a word: the count was dropped with the check that asks them. Both options are named now."""
    from tunelab.cli import main
    from tunelab.errors import ConfigError

    message = (
        "argument 'check_questions' is 3, and check=False skips the self-check that asks them; give one or the other."
    )
    with pytest.raises(ConfigError) as caught:  # each caller is told of its own way alone
        tunelab.export_gguf(tmp_path / "run", tmp_path / "m.gguf", check=False, check_questions=3)
    assert str(caught.value) == message
    args = ["export", str(tmp_path / "run"), "--gguf", str(tmp_path / "m.gguf")]
    assert main([*args, "--no-check", "--check-questions", "3"]) == 2
    err = capsys.readouterr().err
    assert "option '--check-questions' is 3, and --no-check skips the self-check that asks them" in err
    assert "check=False" not in err
    with pytest.raises(ConfigError, match=r"^argument 'qtype' is 'q3_k'; allowed values: f32, f16"):
        tunelab.export_gguf(tmp_path / "run", tmp_path / "m.gguf", qtype="q3_k")
    assert main([*args, "--type", "q3_k"]) == 2
    assert "option '--type' is 'q3_k'; allowed values: f32, f16" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"^argument 'out': .*m\.bin must be a file name ending in \.gguf\.$"):
        tunelab.export_gguf(tmp_path / "run", tmp_path / "m.bin")
    assert main(["export", str(tmp_path / "run"), "--gguf", str(tmp_path / "m.bin")]) == 2
    assert "option '--gguf': " in capsys.readouterr().err
    assert not (tmp_path / "m.gguf").exists()


def test_an_empty_refusal_or_question_names_its_flag_on_the_command_line(tiny_run_dir, capsys):
    """`tunelab eval RUN --data F --refusal ""` was told of "argument 'refusal'" alone, a Python name it never typed;
    the flag is said beside it, as predict's --text and generate's --prompt are."""
    from tunelab.cli import main

    for argv, named in (
        (["eval", str(tiny_run_dir), "--data", "q.jsonl", "--refusal", ""], "argument 'refusal' (--refusal) is empty"),
        (["compare", str(tiny_run_dir), "--question", " "], "argument 'question' (--question), item 1, is empty"),
        (["compare", str(tiny_run_dir), "--question", "hi", "--refusal", ""], "argument 'refusal' (--refusal) is"),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert named in err, err


def test_a_run_opened_once_is_taken_in_place_of_its_path(tiny_run_dir, tmp_path):
    """The README's `run = tunelab.open_run(run_dir)`: generate, compare and evaluate answer from the loaded run as
    from its path, so a script loads the model once for many calls."""
    data = tmp_path / "q.jsonl"
    data.write_text(json.dumps({"question": "Code of box 3?", "expected": "1111"}) + "\n")
    settings = tunelab.GenerationSettings(max_new_tokens=3)
    run = tunelab.open_run(tiny_run_dir, device="cpu")
    answers = [tunelab.generate(r, "Code of box 3?", settings=settings, device="cpu") for r in (run, tiny_run_dir)]
    assert answers[0] == answers[1]
    asked = [tunelab.compare(r, question="Code of box 3?", settings=settings, save=False) for r in (run, tiny_run_dir)]
    assert asked[0].rows == asked[1].rows
    scored = [tunelab.evaluate(r, data, settings=settings, save=False) for r in (run, tiny_run_dir)]
    assert scored[0].rows == scored[1].rows
    assert scored[0].tuned.eval_loss == pytest.approx(scored[1].tuned.eval_loss)


def test_every_type_an_api_function_returns_is_importable_from_the_package():
    """tunelab.evaluate returned an EvalResult, predict Predictions and push a PushResult, none of which the package
    exported: a script annotating its variables imported them from modules the README never names. Each name in a
    function's return annotation is a type the package exports, and `from tunelab import ...` takes them all."""
    import inspect
    import re

    plain = {"None", "str", "list", "dict", "Path"}
    unannotated, missing = [], []
    for name in [*tunelab._API, "load_config"]:
        returned = inspect.signature(getattr(tunelab, name)).return_annotation
        if returned is inspect.Signature.empty:
            unannotated.append(name)
            continue
        for type_name in set(re.findall(r"[A-Za-z_]\w*", str(returned))) - plain:
            if not isinstance(getattr(tunelab, type_name, None), type):
                missing.append(f"{name} -> {type_name}")
    assert not unannotated and not missing, (unannotated, missing)
    code = f"from tunelab import {', '.join(tunelab._TYPES)}; print(ExportResult.__module__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "tunelab.export.gguf", out.stderr
