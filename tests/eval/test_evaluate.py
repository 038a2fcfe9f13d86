"""evaluate_run on a tiny trained run: the loss matches training's own eval, every number is there and finite, and
bad input fails early with the file, line or option named."""

import json
import math

import pytest

import tunelab
import tunelab.training.recipe as recipe
from tunelab.data.loader import split_eval
from tunelab.errors import ConfigError, DataError, RunDirError
from tunelab.eval.evaluate import EVAL_FILE, evaluate_run, format_eval
from tunelab.eval.questions import read_questions, run_data_config
from tunelab.eval.report import build_report
from tunelab.eval.report_inputs import Input
from tunelab.eval.report_scores import eval_section
from tunelab.infer.generate import GenerationSettings
from tunelab.infer.run import open_run
from tunelab.rundir import open_info

from ..smollm2_vocab import smollm2_tiny_model_dir, smollm2_tiny_tokenizer  # noqa: F401 (SmolLM2's vocabulary)

REFUSAL = "I cannot say."
QA = [{"question": f"What is the code of box {i}?", "answer": f"Box {i} has code {1000 + 37 * i}."} for i in range(24)]
SETTINGS = GenerationSettings(max_new_tokens=5)


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir):
    """One LoRA step of the tiny random model with a quarter of the data held out (eval loss in run.json)."""
    root = tmp_path_factory.mktemp("eval-run")
    data = _write_jsonl(root / "qa.jsonl", QA)
    recipe.train(
        None,
        {
            "model.name": str(tiny_model_dir),
            "data.train": [str(data)],
            "data.system_prompt": "You answer box questions.",
            "data.max_length": 64,
            "data.eval_fraction": 0.25,
            "method.r": 4,
            "train.micro_batch": 4,
            "train.max_steps": 1,
            "train.lr": 1e-2,
            "eval.refusal": REFUSAL,
            "output_dir": str(root / "run"),
        },
    )
    return root / "run"


@pytest.fixture(scope="module")
def loaded(trained):
    return open_run(trained, device="cpu")


def test_loss_is_training_eval_loss_with_expected_as_answer(trained, loaded, tmp_path):
    """The held-out rows as question/expected give the eval loss training logged: same rendering, same loss."""
    _, held = split_eval(QA, 0.25, 42)  # the run's seed
    path = _write_jsonl(tmp_path / "held.jsonl", [{"question": r["question"], "expected": r["answer"]} for r in held])
    result = evaluate_run(loaded, path, SETTINGS, overwrite=True)
    info = json.loads((trained / "run.json").read_text())

    assert result.tuned.eval_loss == pytest.approx(info["eval_loss"], rel=1e-4)
    assert result.base.eval_loss != pytest.approx(result.tuned.eval_loss, rel=1e-6)  # the adapter changed something
    for scores in (result.base, result.tuned):
        assert math.isfinite(scores.eval_loss) and scores.eval_loss > 0
        assert scores.perplexity == pytest.approx(math.exp(scores.eval_loss))
        assert 0 < scores.generated_tokens <= len(held) * SETTINGS.max_new_tokens
        assert scores.tokens_per_s > 0 and math.isfinite(scores.tokens_per_s)
        assert scores.overall.n == len(held) and 0 <= scores.overall.rouge_l <= 1
        assert scores.overall.refusal_rate is not None  # the run's refusal sentence is the default
    assert result.refusal == REFUSAL
    assert result.loss_rows == len(held) and result.loss_tokens > 0

    saved = json.loads((trained / EVAL_FILE).read_text())
    assert saved["tuned"]["eval_loss"] == result.tuned.eval_loss
    assert [r["question"] for r in saved["rows"]] == [r["question"] for r in held]
    assert {"text", "exact", "contains", "rouge_l", "refused", "correct"} <= saved["rows"][0]["base"].keys()
    # `expected` texts are what an answer contains: the loss on them is labelled as such, beside training's own, and
    # exact match, 0% by construction on key strings, is not scored
    assert result.loss_on == "expected texts" and result.training_eval_loss == info["eval_loss"]
    assert result.tuned.overall.exact_match is None and saved["rows"][0]["tuned"]["exact"] is None
    table = format_eval(result)
    assert "loss on expected texts" in table and f"(run.json: {info['eval_loss']:.4f})" in table
    assert "exact match: not scored" in table and "  exact match  " not in table
    assert result.settings["max_new_tokens"] == SETTINGS.max_new_tokens


def test_mixed_formats_label_task_and_text_rows(loaded, tmp_path):
    path = _write_jsonl(
        tmp_path / "mixed.jsonl",
        [
            {"question": "What is the code of box 3?", "expected": "Box 3 has code 1111.", "kind": "fact"},
            {"question": "What is the code of box 4?", "answer": "Box 4 has code 1148.", "kind": "fact"},
            {
                "messages": [{"role": "user", "content": "Bake bread?"}, {"role": "assistant", "content": REFUSAL}],
                "kind": "off_topic",
            },
            {"question": "Is 'great box' positive or negative?", "label": "positive"},
            {"question": "Is 'awful box' positive or negative?", "label": "negative"},
            {"question": "Is 'fine box' positive or negative?", "label": "positive"},
        ],
    )
    _write_jsonl(tmp_path / "more.jsonl", [{"text": "Boxes hold codes."}])
    result = evaluate_run(loaded, path, SETTINGS, refusal="Nope.", save=False)

    assert result.rows_read == 6 and result.loss_rows == 6
    assert [r.kind for r in result.rows] == ["fact", "fact", "off_topic", "label", "label", "label"]
    assert [r.task for r in result.rows] == ["text"] * 3 + ["label"] * 3
    assert result.rows[1].expected == "Box 4 has code 1148." and result.rows[2].expected == REFUSAL
    assert result.rows[2].location.endswith("mixed.jsonl:3")
    assert result.refusal == "Nope."
    for scores in (result.base, result.tuned):
        assert set(scores.by_kind) == {"fact", "off_topic", "label"}
        task = scores.label_tasks["label"]
        assert task.labels == ["positive", "negative"] and task.n == 3
        assert sum(c.support for c in task.per_class.values()) == 3
        assert sum(sum(row.values()) for row in task.confusion.values()) == 3
        assert 0 <= task.accuracy <= 1
    assert all(r.tuned.label is not None for r in result.rows if r.task == "label")

    assert result.loss_on == "answers and expected texts"
    # exact match over the rows whose expected text is a whole answer: the training rows and the labels
    whole = [r for r in result.rows if r.tuned.exact is not None]
    assert [r.location[-1] for r in whole] == ["2", "3", "4", "5", "6"]
    assert result.tuned.overall.exact_match == pytest.approx(sum(r.tuned.exact for r in whole) / len(whole))

    text_only = evaluate_run(loaded, tmp_path / "more.jsonl", SETTINGS, save=False)
    assert text_only.rows == [] and text_only.tuned.overall is None and text_only.tuned.eval_loss > 0


def test_report_of_the_real_run_in_chromium(trained, loaded, tmp_path, chromium):
    _, held = split_eval(QA, 0.25, 42)
    path = _write_jsonl(tmp_path / "held.jsonl", [{"question": r["question"], "expected": r["answer"]} for r in held])
    result = evaluate_run(loaded, path, SETTINGS, overwrite=True)
    page = build_report(trained, tmp_path / "report.html")
    dom = chromium("--dump-dom", page.as_uri())
    # loss, learning rate, tokens/s, grad norm, answer scores, token-length histogram
    assert dom.count("<svg") == 6 and dom.count("<path") > 50
    assert (
        f'<th>loss on expected texts (nats / token)</th><td class="num">{result.base.eval_loss:,.4f}</td><td class="num">{result.tuned.eval_loss:,.4f}</td>'
        in dom
    )
    assert dom.count('class="answer-row"') == len(held)
    assert 'class="files"' in dom and "question_answer" in dom and "lora" in dom


# ------------------------------------------------------------------ bad input, found before any model is loaded


def _fake_run(path, method="lora", files=("adapter_config.json", "adapter_model.safetensors"), finished=True):
    path.mkdir()
    (path / "run.json").write_text(
        json.dumps({"base_model": "x", "method": method, "finished": finished, "refusal": None})
    )
    (path / "config.yaml").write_text("model: {name: x}\ndata: {train: [qa.jsonl]}\n")  # what training saves
    for name in files:
        (path / name).write_text("")
    return path


def test_unknown_run_dir(tmp_path):
    with pytest.raises(RunDirError, match="no such run directory"):
        evaluate_run(tmp_path / "nope", tmp_path / "q.jsonl")


def test_not_a_run_dir_and_unfinished_run(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunDirError, match="no run.json"):
        open_info(tmp_path / "empty")
    with pytest.raises(RunDirError, match="did not finish"):
        open_info(_fake_run(tmp_path / "unfinished", finished=False))


def test_run_without_adapter_or_weights(tmp_path):
    with pytest.raises(RunDirError, match="adapter_model.safetensors missing"):
        open_info(_fake_run(tmp_path / "lora", files=("adapter_config.json",)))
    with pytest.raises(RunDirError, match=r"no config.json and \*.safetensors weights"):
        open_info(_fake_run(tmp_path / "full", method="full", files=("config.json",)))
    with pytest.raises(RunDirError, match=r"no config.json and \*.safetensors weights"):
        open_info(_fake_run(tmp_path / "weights", method="full", files=("model.safetensors",)))
    open_info(_fake_run(tmp_path / "ok", method="full", files=("config.json", "model.safetensors")))


def test_rows_without_expected_answers_name_file_and_line(tmp_path):
    run = _fake_run(tmp_path / "run")
    path = _write_jsonl(tmp_path / "q.jsonl", [{"question": "a?", "expected": "a"}, {"question": "b?", "kind": "fact"}])
    with pytest.raises(DataError, match=r"q\.jsonl:2: the row has no expected answer"):
        evaluate_run(run, path)
    _write_jsonl(path, [{"question": "a?", "expected": "  "}])
    with pytest.raises(DataError, match=r"q\.jsonl:1: field 'expected' must be non-empty"):
        evaluate_run(run, path)
    _write_jsonl(path, [{"question": "a?", "answer": "A."}, {"question": "b?", "answer": ""}])
    with pytest.raises(DataError, match=r"empty answer at .*q\.jsonl:2"):
        evaluate_run(run, path)
    _write_jsonl(path, [{"expected": "A."}])
    with pytest.raises(DataError, match=r"q\.jsonl:1: .*no question"):
        evaluate_run(run, path)
    with pytest.raises(  # a Python caller: the API's function and argument
        DataError,
        match=r"missing\.jsonl: file not found\. Check the path given to tunelab\.evaluate\(\) \(argument 'data'",
    ):
        evaluate_run(run, tmp_path / "missing.jsonl")


def test_existing_output_needs_overwrite(tmp_path):
    from tunelab.config.flags import CLI

    run = _fake_run(tmp_path / "run")
    (run / EVAL_FILE).write_text("{}")
    _write_jsonl(tmp_path / "q.jsonl", [{"question": "a?", "expected": "a"}])  # a missing one is named first
    with pytest.raises(RunDirError, match="eval.json exists. Pass overwrite=True to replace it, or out= to write"):
        evaluate_run(run, tmp_path / "q.jsonl")
    with pytest.raises(RunDirError, match="eval.json exists. Pass --overwrite to replace it, or --out to write"):
        evaluate_run(run, tmp_path / "q.jsonl", spelling=CLI)
    (run / "report.html").write_text("")
    with pytest.raises(RunDirError, match="report.html exists"):
        build_report(run)


def test_out_with_no_save_is_refused_before_any_work(tmp_path, capsys):
    """`--no-save --out FILE` answered every question and wrote nothing, silently: the two options contradict."""
    from tunelab.cli import main

    run = _fake_run(tmp_path / "run")
    out = tmp_path / "results.json"
    assert main(["eval", str(run), "--data", str(tmp_path / "q.jsonl"), "--no-save", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--no-save saves nothing; give one of them" in err and "Traceback" not in err and not out.exists()
    with pytest.raises(ConfigError) as caught:  # its arguments alone
        tunelab.evaluate(run, tmp_path / "q.jsonl", save=False, out=out)
    assert str(caught.value) == (
        f"out={str(out)!r} names where to save the results and save=False saves nothing; give one of them."
    )


def test_an_out_file_that_is_not_json_is_refused_before_any_work(tmp_path, capsys):
    """`eval --out results.csv` (as `predict --out` writes CSV) wrote eval.json's JSON into a file named .csv."""
    from tunelab.cli import main

    run = _fake_run(tmp_path / "run")
    _write_jsonl(tmp_path / "q.jsonl", [{"question": "a?", "expected": "a"}])
    for name in ("results.csv", "results.jsonl", "results"):
        out = tmp_path / name
        assert main(["eval", str(run), "--data", str(tmp_path / "q.jsonl"), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert (
            f"{out}: the result is written as .json (eval.json's format); give --out a file name ending in .json" in err
        )
        assert not out.exists() and "Traceback" not in err
    with pytest.raises(RunDirError, match=r"r\.csv: the result is written as \.json"):
        tunelab.evaluate(run, tmp_path / "q.jsonl", out=tmp_path / "r.csv")


@pytest.mark.parametrize("task", ["classify", "reward"])
def test_options_of_generated_answers_are_refused_for_a_head_run(tmp_path, capsys, task):
    """A classify or reward run generates no text: --max-new-tokens, --refusal, --show-answers and --base-precision
    16bit were dropped without a word (the last scored the NF4 base all the same)."""
    from tunelab.cli import main

    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"base_model": "x", "method": "lora", "finished": True, "task": task}))
    data = str(tmp_path / "q.jsonl")
    for flags, named in [
        (["--show-answers", "--max-new-tokens", "5"], "--max-new-tokens, --show-answers do not apply"),
        (["--base-precision", "16bit"], "--base-precision does not apply"),
        (["--refusal", "I cannot say."], "--refusal does not apply"),
        (["--temperature", "0.7"], "--temperature does not apply"),
        (["--seed", "3"], "--seed does not apply"),  # nothing is sampled
    ]:
        assert main(["eval", str(run), "--data", data, *flags]) == 2
        err = capsys.readouterr().err
        assert f"a {task} run is evaluated by its head's outputs and generates no text" in err and named in err
        assert "Python" not in err and "=" not in err
    with pytest.raises(ConfigError, match=r"generates no text, so settings.temperature does not apply; drop it\.$"):
        tunelab.evaluate(run, data, settings=GenerationSettings(temperature=0.7))  # its own name for the option
    with pytest.raises(ConfigError, match=r"generates no text, so seed= does not apply; drop it\.$"):
        tunelab.evaluate(run, data, seed=3)
    with pytest.raises(ConfigError, match=r"so refusal=, show_answers= do not apply; drop them\. eval\.json keeps"):
        tunelab.evaluate(run, data, refusal="No.", show=True, show_answers=True)


def test_the_loss_is_named_by_what_it_is_taken_on(tmp_path):
    """A training-format row that also gives `expected` keeps its own answer for the loss: the table said 'loss on
    expected texts' for it."""
    from tunelab.eval.evaluate import _loss_on
    from tunelab.eval.questions import read_questions

    path = _write_jsonl(
        tmp_path / "q.jsonl",
        [{"question": "Founded?", "answer": "We were founded in 1997.", "expected": "1997"}],
    )
    assert _loss_on(read_questions(path)) == "answers"
    _write_jsonl(path, [{"question": "Founded?", "expected": "1997"}])
    assert _loss_on(read_questions(path)) == "expected texts"


def test_a_missing_data_file_of_a_head_run_is_named_as_given_to_the_command(tmp_path, capsys):
    """tunelab eval or predict of a classify run with a --data file that is not there loaded the model, then said
    'Check the path in data.train / data.eval (relative paths in a YAML config ...)', options it did not come from."""
    from tunelab.cli import main

    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(
        json.dumps({"base_model": "x", "method": "lora", "finished": True, "task": "classify"})
    )
    missing = tmp_path / "nothere.jsonl"
    for command in ("eval", "predict"):
        assert main([command, str(run), "--data", str(missing)]) == 2
        err = capsys.readouterr().err
        assert f"{missing}: file not found. Check the path given to {command} (--data; a relative path" in err
        assert "data.train" not in err and "Traceback" not in err


def test_the_batch_size_is_an_argument_as_the_cli_has_it(trained, tmp_path, monkeypatch):
    """`tunelab eval --batch-size 3` had no argument in Python: evaluate() took it only as settings.batch_size, and
    a head run's batch size needed GenerationSettings it otherwise refuses. batch_size= reaches both paths, is
    refused below 1 as the flag is, and a settings.batch_size that disagrees with it is refused."""
    import tunelab.eval.evaluate as evaluate_module
    import tunelab.eval.heads as heads_module

    sizes = []

    def answering(model, tokenizer, template, conversations, settings, progress=None, names=None, generator=None):
        sizes.append(settings.batch_size)
        return ["Box 1 has code 1037." for _ in conversations], [False for _ in conversations]

    monkeypatch.setattr(evaluate_module, "generate_answers", answering)
    path = _write_jsonl(tmp_path / "q.jsonl", [{"question": "What is the code of box 1?", "expected": "1037"}])
    tunelab.evaluate(trained, path, settings=SETTINGS, batch_size=3, save=False, device="cpu")
    assert 3 in sizes and 16 not in sizes

    head = tmp_path / "head"
    head.mkdir()
    (head / "run.json").write_text(
        json.dumps({"base_model": "x", "method": "lora", "finished": True, "task": "classify"})
    )
    scored = {}
    monkeypatch.setattr(
        heads_module, "evaluate_head_run", lambda *a, batch_size, **k: scored.setdefault("b", batch_size)
    )
    tunelab.evaluate(head, path, batch_size=5, save=False)
    assert scored["b"] == 5

    with pytest.raises(ConfigError, match=r"^argument 'batch_size' is 0; give a whole number, 1 or more"):
        tunelab.evaluate(trained, path, batch_size=0)
    with pytest.raises(ConfigError, match="argument 'batch_size' is 3 and settings.batch_size is 8; give one of them"):
        tunelab.evaluate(trained, path, settings=GenerationSettings(batch_size=8), batch_size=3)


def test_the_loss_of_a_packed_text_run_is_its_training_eval_loss(tiny_model_dir, tmp_path):
    """A packed run cuts each text document into blocks of its own (no attention across documents), its eval file
    too; `tunelab eval` rendered the same file without packing, documents run together into max_length blocks, so
    it scored other tokens than training's eval and gave another loss on the same file."""
    docs = [{"text": f"Box {i} holds {1000 + 37 * i} marbles and a note."} for i in range(12)]
    train, held = _write_jsonl(tmp_path / "t.jsonl", docs[:8]), _write_jsonl(tmp_path / "e.jsonl", docs[8:])
    over = {"model.name": str(tiny_model_dir), "data.train": [str(train)], "data.eval": str(held)}
    over |= {"data.packing": True, "data.max_length": 64, "method.r": 4, "train.micro_batch": 2}
    over |= {"train.max_steps": 1, "train.lr": 1e-2, "output_dir": str(tmp_path / "run")}
    run = recipe.train(None, over).run_dir
    info = json.loads((run / "run.json").read_text())
    result = evaluate_run(run, held, SETTINGS, device="cpu", save=False)
    assert result.loss_on == "text" and result.loss_rows == 4
    assert result.tuned.eval_loss == pytest.approx(info["eval_loss"], rel=1e-4)


def test_the_loss_of_a_run_trained_on_prompts_says_it_holds_them(tiny_model_dir, tmp_path):
    """With data.train_on_prompt the run's eval loss, and `tunelab eval`'s on the same file, is on every token of a
    row, the question's too; the table called it the loss on answers."""
    train, held = _write_jsonl(tmp_path / "t.jsonl", QA[:8]), _write_jsonl(tmp_path / "e.jsonl", QA[8:12])
    over = {"model.name": str(tiny_model_dir), "data.train": [str(train)], "data.eval": str(held)}
    over |= {"data.train_on_prompt": True, "data.max_length": 64, "method.r": 4, "train.micro_batch": 4}
    over |= {"train.max_steps": 1, "train.lr": 1e-2, "output_dir": str(tmp_path / "run")}
    run = recipe.train(None, over).run_dir
    info = json.loads((run / "run.json").read_text())
    result = evaluate_run(run, held, SETTINGS, device="cpu", save=False)
    assert result.tuned.eval_loss == pytest.approx(info["eval_loss"], rel=1e-4)
    assert result.loss_on == "answers with their prompts (data.train_on_prompt)"
    assert "loss on answers with their prompts (data.train_on_prompt)" in format_eval(result)


def test_a_grpo_runs_own_eval_figure_is_recorded_as_its_reward():
    """eval.json's training_eval_loss of a grpo run was run.json's eval_loss, its mean eval reward negated, and the
    printed note called -0.75 the "training eval loss". It is recorded as training_eval_reward (0.75) now."""
    from tunelab.eval.evaluate import EvalResult, training_figure
    from tunelab.run_info import RunInfo

    assert training_figure(RunInfo("tiny", "lora", task="grpo", eval_loss=-0.75)) == {"training_eval_reward": 0.75}
    assert training_figure(RunInfo("tiny", "lora", eval_loss=1.5)) == {"training_eval_loss": 1.5}
    assert EvalResult.__dataclass_fields__["training_eval_reward"].default is None  # eval.json written before: none


def test_the_loss_of_a_run_with_a_transform_is_taken_on_the_rows_it_made(tiny_model_dir, tmp_path, capsys):
    """Training reads every row, its eval file's too, through data.transform; `tunelab eval` and `tunelab compare`
    read the file as it is, so the rows training saw as question/answer were no question at all to them. Rows the
    transform drops are dropped here too, and said."""
    rows = [{"q": r["question"], "a": r["answer"]} for r in QA[:12]]
    train, held = _write_jsonl(tmp_path / "t.jsonl", rows[:8]), _write_jsonl(tmp_path / "e.jsonl", rows[8:])
    (tmp_path / "shaping.py").write_text(
        "def to_qa(row):\n"
        "    if row['q'].endswith('box 11?'):\n"
        "        return None\n"
        "    return {'question': row['q'].upper(), 'answer': row['a']}\n"
    )
    over = {"model.name": str(tiny_model_dir), "data.train": [str(train)], "data.eval": str(held)}
    over |= {"data.transform": f"{tmp_path / 'shaping.py'}:to_qa", "data.max_length": 64, "method.r": 4}
    over |= {"train.micro_batch": 4, "train.max_steps": 1, "train.lr": 1e-2, "output_dir": str(tmp_path / "run")}
    run = recipe.train(None, over).run_dir
    info = json.loads((run / "run.json").read_text())
    capsys.readouterr()
    result = evaluate_run(run, held, SETTINGS, device="cpu", save=False)
    assert result.rows_read == 3 and result.loss_on == "answers"
    assert result.tuned.eval_loss == pytest.approx(info["eval_loss"], rel=1e-4)
    assert all(r.question.startswith("WHAT IS THE CODE") for r in result.rows)
    assert "e.jsonl: 1 row dropped by data.transform" in capsys.readouterr().err


def test_a_mixture_sources_eval_file_is_scored_as_that_source_was_trained(tiny_model_dir, tmp_path):
    """A mixture's source with its own system prompt and column mapping trained and scored its eval file with them;
    `tunelab eval` on that file read it with the top-level ones (another system prompt, columns not found), so its
    loss was not the source's eval loss. A file of no source is read with the top-level options, as training reads a
    mixture's data.eval."""
    rows = [{"q": r["question"], "a": r["answer"]} for r in QA[:12]]
    train, held = _write_jsonl(tmp_path / "t.jsonl", rows[:8]), _write_jsonl(tmp_path / "e.jsonl", rows[8:])
    doors = _write_jsonl(tmp_path / "doors.jsonl", QA[12:20])
    source = {"path": str(train), "eval": str(held), "name": "boxes", "system_prompt": "You answer box questions."}
    source |= {"fields": {"question": "q", "answer": "a"}}
    over = {"model.name": str(tiny_model_dir), "data.train": [source, {"path": str(doors), "name": "doors"}]}
    over |= {"data.system_prompt": "You answer door questions.", "data.max_length": 64, "method.r": 4}
    over |= {"train.micro_batch": 4, "train.max_steps": 1, "train.lr": 1e-2, "output_dir": str(tmp_path / "run")}
    over |= {"model.device": "cpu"}
    run = recipe.train(None, over).run_dir
    info = json.loads((run / "run.json").read_text())  # boxes' eval file is the run's only eval set
    result = evaluate_run(run, held, SETTINGS, device="cpu", save=False)
    assert result.loss_on == "answers" and result.loss_rows == 4
    assert result.tuned.eval_loss == pytest.approx(info["eval_loss"], rel=1e-4)
    other = _write_jsonl(tmp_path / "other.jsonl", [{"question": "Door 1?", "expected": "red"}])
    (asked,) = read_questions(other, run_data_config(run, open_info(run)))
    assert asked.prompt[0] == {"role": "system", "content": "You answer door questions."}


def test_rows_the_transform_drops_are_counted_in_eval_json_and_the_report(tiny_model_dir, tmp_path):
    """Rows of the eval file that the run's data.transform drops were said on stderr only: eval.json and the HTML
    report gave the rows read as if the file held no others. They are counted there now, beside the loss's skips."""
    rows = [{"q": r["question"], "a": r["answer"]} for r in QA[:12]]
    train, held = _write_jsonl(tmp_path / "t.jsonl", rows[:8]), _write_jsonl(tmp_path / "e.jsonl", rows[8:])
    (tmp_path / "shaping.py").write_text(
        "def to_qa(row):\n    return None if row['q'].endswith('box 11?') else {'question': row['q'], 'answer': row['a']}\n"
    )
    over = {"model.name": str(tiny_model_dir), "data.train": [str(train)], "data.eval": str(held)}
    over |= {"data.transform": f"{tmp_path / 'shaping.py'}:to_qa", "data.max_length": 64, "method.r": 4}
    over |= {"train.micro_batch": 4, "train.max_steps": 1, "output_dir": str(tmp_path / "run")}
    run = recipe.train(None, over).run_dir
    result = evaluate_run(run, held, SETTINGS, device="cpu")
    saved = json.loads((run / EVAL_FILE).read_text())["transform_dropped"]
    assert [s["count"] for s in saved.values()] == [1] and "data.transform" in next(iter(saved))
    assert "not read: 1 dropped by data.transform" in format_eval(result)
    html = eval_section(Input(EVAL_FILE, json.loads((run / EVAL_FILE).read_text())), Input("compare.json"))
    assert "data.transform dropped" in html and "e.jsonl:4" in html


def test_eval_says_where_it_saved_its_results(trained, tmp_path, capsys):
    """`tunelab eval` wrote eval.json without a word about it, where `compare` names its compare.json: a user had to
    guess where the answers went, or that --out had been used at all."""
    from tunelab.cli import main

    data = _write_jsonl(tmp_path / "q.jsonl", [{"question": "What is the code of box 1?", "expected": "1037"}])
    out = tmp_path / "elsewhere.json"
    assert main(["eval", str(trained), "--data", str(data), "--max-new-tokens", "2", "--out", str(out)]) == 0
    assert capsys.readouterr().out.rstrip().splitlines()[-1] == f"saved to {out}"
    assert out.is_file()
    assert main(["eval", str(trained), "--data", str(data), "--max-new-tokens", "2", "--overwrite"]) == 0
    last = capsys.readouterr().out.rstrip().splitlines()[-1]
    assert last == f"saved to {trained / EVAL_FILE} ('tunelab report {trained}' shows it with the run)"
    assert main(["eval", str(trained), "--data", str(data), "--max-new-tokens", "2", "--no-save"]) == 0
    assert "saved to" not in capsys.readouterr().out


def test_rows_holding_characters_the_tokenizer_drops_are_said_in_eval_and_its_report(loaded, tmp_path):
    """eval renders its rows as training does and counted those holding characters SmolLM2's tokenizer drops (it
    has no token for U+0004 and no unknown token), but said nothing of them: their loss is taken without them."""
    rows = [{"question": f"What is the code of box {i}?", "expected": f"Box {i} has code."} for i in range(3)]
    rows[1]["question"] = "What is the code\x04 of box 1?"
    path = _write_jsonl(tmp_path / "q.jsonl", rows)
    result = evaluate_run(loaded, path, SETTINGS, save=False)
    assert result.unread == {"rows": 1, "chars": {"U+0004": 1}, "first": f"{path}:2", "held": 1, "effect": "trained"}
    line = (
        "1 row holds characters the tokenizer drops, having no token for them (U+0004 x1): "
        f"first at {path}:2; they are evaluated without them"
    )
    assert f"  {line}" in format_eval(result).splitlines()
    html = eval_section(Input(EVAL_FILE, result.to_dict()), Input("compare.json"))
    assert f"<p>{line}.</p>" in html
    clean = evaluate_run(loaded, _write_jsonl(tmp_path / "c.jsonl", rows[:1]), SETTINGS, save=False)
    assert clean.unread == {} and "tokenizer drops" not in format_eval(clean)
