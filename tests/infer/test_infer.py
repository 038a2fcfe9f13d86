"""Inference on a run directory: opening it (what is refused: unfinished or foreign runs, devices, dtypes, generation
settings), compare's scores and questions, and the interactive chat loop's turns."""

import io
import json
import re

import pytest

import tunelab
from tunelab.errors import DataError, RunDirError
from tunelab.eval.compare import Row, score
from tunelab.eval.metrics import contains
from tunelab.eval.questions import read_questions
from tunelab.infer.chat import chat
from tunelab.infer.generate import GenerationSettings
from tunelab.infer.run import open_run

from .infer_setup import CHAT, SHORT, words_for

pytestmark = pytest.mark.usefixtures("seeded")


def test_contains_scoring_and_refusal_rates():
    assert contains("Tallowmere was founded in  1997.", "founded in 1997")
    assert not contains("It was 1996.", "1997")
    rows = [
        Row("q1", "1997", "fact", base="no idea", tuned="In 1997.", base_ok=False, tuned_ok=True),
        Row("q2", "Dundee", "fact", base="Sorry, I can only", tuned="In Perth.", base_ok=False, tuned_ok=False),
        Row(
            "q3",
            "Sorry, I can only",
            "off_topic",
            base="Paris",
            tuned="sorry, i can only help",
            base_ok=False,
            tuned_ok=True,
        ),
    ]
    scores = score(rows, refusal="Sorry, I can only")
    assert scores["fact"] == {"n": 2, "base": 0.0, "tuned": 0.5, "base_refused": 0.5, "tuned_refused": 0.0}
    assert scores["off_topic"]["tuned_refused"] == 1.0 and scores["off_topic"]["base"] == 0.0


def test_questions_file_errors_are_located(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"question": "ok?"}) + "\n" + json.dumps({"prompt": ""}) + "\n")
    with pytest.raises(DataError, match=r"q\.jsonl:2: field 'prompt' must be non-empty"):
        read_questions(path)
    path.write_text(json.dumps({"question": "ok?", "expected": ""}) + "\n")
    with pytest.raises(DataError, match="expected"):
        read_questions(path)


def test_compare_generate_and_chat_on_a_run(tiny_run_dir):
    run = open_run(tiny_run_dir, device="cpu")
    result = tunelab.compare(run, question=["Code of box 3?"], settings=SHORT, save=False)
    assert len(result.rows) == 1 and result.rows[0].kind == "all"
    assert isinstance(tunelab.generate(run, "Code of box 2?", settings=SHORT), str)
    assert isinstance(tunelab.generate(run, "Code of box 2?", base=True, settings=SHORT), str)

    inputs = iter(["Code of box 1?", "/reset", "", "Code of box 5?", "/exit"])
    out = io.StringIO()
    history = chat(run, CHAT, read=lambda prompt: next(inputs), out=out)
    assert [m["role"] for m in history] == ["user", "assistant"]  # /reset dropped the first exchange
    assert history[0]["content"] == "Code of box 5?"
    assert out.getvalue().count("model> ") == 2


def test_unfinished_or_foreign_directories_are_refused(tmp_path, tiny_run_dir):
    with pytest.raises(RunDirError, match="no such run directory"):
        open_run(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunDirError, match="not a tunelab run directory"):
        open_run(tmp_path / "empty")
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    info = json.loads((tiny_run_dir / "run.json").read_text()) | {"finished": False}
    (unfinished / "run.json").write_text(json.dumps(info))
    with pytest.raises(RunDirError, match="did not finish"):
        open_run(unfinished)
    noadapter = tmp_path / "noadapter"
    noadapter.mkdir()
    (noadapter / "run.json").write_text(json.dumps(info | {"finished": True}))
    with pytest.raises(RunDirError, match="adapter is incomplete"):
        open_run(noadapter)


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        ({"repetition_penalty": 0.0}, "repetition_penalty is 0.0; it must be above 0"),
        ({"temperature": float("nan")}, "temperature is nan"),
        ({"top_p": 1.5}, "top_p is 1.5; it must be in [0, 1] (0: greedy)"),
        ({"max_new_tokens": 0}, "max_new_tokens is 0"),
    ],
)
def test_generation_settings_out_of_range_are_refused_when_made(settings, says):
    """Before any model runs: transformers would raise mid-answer (chat's worker thread, a server's 500)."""
    from tunelab.errors import ConfigError

    with pytest.raises(ConfigError, match=re.escape(says)):
        GenerationSettings(**settings)


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        ({"max_new_tokens": "5"}, "max_new_tokens is '5'; it must be a whole number"),
        ({"max_new_tokens": 2.5}, "max_new_tokens is 2.5; it must be a whole number"),
        ({"batch_size": 2.5}, "batch_size is 2.5; it must be a whole number"),
        ({"temperature": None}, "temperature is None; it must be a number"),
        ({"top_p": "0.9"}, "top_p is '0.9'; it must be a number"),
        ({"repetition_penalty": True}, "repetition_penalty is True; it must be a number"),
    ],
)
def test_generation_settings_of_the_wrong_type_are_refused_by_name(settings, says):
    """GenerationSettings(temperature=None) or top_p="0.9" raised a bare TypeError from the range check, and
    max_new_tokens=2.5 generated an empty answer without a word; each is a ConfigError naming the setting."""
    from tunelab.errors import ConfigError

    with pytest.raises(ConfigError, match=re.escape(says)):
        GenerationSettings(**settings)
    assert GenerationSettings(max_new_tokens=None, temperature=1, top_p=0.5).temperature == 1  # ints are numbers


def test_a_device_torch_does_not_know_or_a_missing_gpu_names_the_device_option(tiny_run_dir, capsys):
    """open_run(device="gpu") ended in torch's RuntimeError traceback, and --device cuda on a machine without one was
    told about 'model.device', a training option the command does not take."""
    import torch

    from tunelab.cli import main
    from tunelab.errors import ConfigError

    with pytest.raises(ConfigError, match=r"argument 'device' is 'gpu'; allowed values: auto, cpu, cuda"):
        open_run(tiny_run_dir, device="gpu")
    if not torch.cuda.is_available():
        assert main(["generate", str(tiny_run_dir), "--prompt", "hi", "--device", "cuda"]) == 2
        assert "option '--device' is cuda, but no CUDA device is available" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["mps", "meta", "cpu:1", "cuda:x"])
def test_the_api_and_the_cli_take_the_same_devices(tiny_run_dir, capsys, monkeypatch, name):
    """The API took any device torch knows (mps and meta loaded on and failed deep in torch, cpu:1 was cpu), while the CLI's
    --device refused cuda:N, which the API took. Both now take auto, cpu, cuda and cuda:N, and refuse the rest by name
    with the allowed values."""
    import torch

    import tunelab
    from tunelab.cli import main
    from tunelab.errors import ConfigError
    from tunelab.models.load import pick_device

    allowed = "allowed values: auto, cpu, cuda, cuda:N"
    with pytest.raises(ConfigError, match=rf"argument 'device' is '{name}'; {allowed}"):
        tunelab.generate(tiny_run_dir, "hi", device=name)
    for command in (["generate", str(tiny_run_dir), "--prompt", "hi"], ["predict", str(tiny_run_dir), "--text", "hi"]):
        with pytest.raises(SystemExit) as exit_:  # argparse's own exit
            main([*command, "--device", name])
        assert exit_.value.code == 2 and f"'{name}' is not a device; {allowed}" in capsys.readouterr().err
        if not torch.cuda.is_available():  # cuda:0 is taken by the CLI as by the API, and refused later for what it is
            assert main([*command, "--device", "cuda:0"]) == 2  # predict: the sft run; generate: the missing GPU
            assert "not a device" not in (err := capsys.readouterr().err) and "Traceback" not in err
            assert command[0] == "predict" or "option '--device' is cuda:0, but no CUDA device is available" in err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert pick_device("cuda:1", "option '--device'") == torch.device("cuda:1")
    with pytest.raises(ConfigError, match="is cuda:2, but this machine has 2 CUDA devices: cuda:0 to cuda:1"):
        pick_device("cuda:2", "option '--device'")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match="is cuda:1, but this machine has 1 CUDA device: cuda:0 to cuda:0"):
        pick_device("cuda:1", "option '--device'")


def test_a_run_whose_saved_tokenizer_lost_its_chat_template_says_so(tiny_run_dir, tmp_path, capsys):
    """A run copied without chat_template.jinja was refused with "option 'data.template' ... Use a named template",
    an option no reading command has: the run's template is its own."""
    import shutil

    from tunelab.cli import main

    run = shutil.copytree(tiny_run_dir, tmp_path / "run")
    assert json.loads((run / "run.json").read_text())["template"] == "tokenizer"
    (run / "chat_template.jinja").unlink()
    assert main(["generate", str(run), "--prompt", "hi", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert f"{run}: the run was trained with its tokenizer's chat template" in err and "chat_template.jinja" in err
    assert "Use a named template" not in err and "Traceback" not in err


def test_open_run_refuses_a_dtype_it_does_not_know(tmp_path):
    """tunelab.open_run(run, dtype="float16") raised a bare KeyError from the dtype table; it is a ConfigError
    naming the argument and the allowed values, before the run is read."""
    from tunelab.errors import ConfigError

    with pytest.raises(ConfigError, match=re.escape("argument 'dtype' is 'float16'; allowed values: auto, fp32, bf16")):
        tunelab.open_run(tmp_path, dtype="float16")


def test_a_loaded_run_refuses_a_device_or_base_precision_it_was_not_opened_with(tiny_run_dir, tmp_path):
    """tunelab.compare(open_run(run), base_precision="16bit") or generate(loaded, device="cpu") on a run opened on a
    GPU used the run as it was opened and dropped the argument without a word; the defaults still take it as it is."""
    from tunelab.errors import ConfigError

    loaded = tunelab.open_run(tiny_run_dir, device="cpu")
    with pytest.raises(
        ConfigError, match="argument 'base_precision' is 16bit, but the run given was opened with trained"
    ):
        tunelab.generate(loaded, "Code of box 1?", base_precision="16bit")
    with pytest.raises(ConfigError, match="argument 'base_precision' is 16bit, but the run given was opened with"):
        tunelab.compare(loaded, question="Code of box 1?", base_precision="16bit", save=False)
    (tmp_path / "q.jsonl").write_text(json.dumps({"question": "Code of box 2?", "expected": "1074"}) + "\n")
    with pytest.raises(ConfigError, match="argument 'base_precision' is 16bit, but the run given was opened with"):
        tunelab.evaluate(loaded, tmp_path / "q.jsonl", base_precision="16bit", save=False)
    short = GenerationSettings(max_new_tokens=2)
    assert isinstance(tunelab.generate(loaded, "Code of box 1?", settings=short, device="cpu"), str)
    assert isinstance(tunelab.generate(loaded, "Code of box 1?", settings=short), str)


def test_ctrl_c_during_an_answer_stops_the_answer_not_the_chat(tiny_run_dir):
    """Ctrl-C while the model answered ended `tunelab chat` ("interrupted", exit 130), the conversation lost. It stops
    that answer, kept as far as it was shown, and the chat goes on."""
    run = open_run(tiny_run_dir, device="cpu")

    class Interrupting(io.StringIO):
        """A terminal where Ctrl-C is pressed as the first answer's second piece of text (not blank) is shown."""

        shown = 0

        def write(self, text: str) -> int:
            if "model> " in self.getvalue() and text.strip():
                self.shown += 1
                if self.shown == 2:
                    raise KeyboardInterrupt
            return super().write(text)

    inputs = iter(["Code of box 1?", "Code of box 2?", "/exit"])
    out = Interrupting()
    history = chat(run, GenerationSettings(40, temperature=1.0), read=lambda prompt: next(inputs), out=out)
    assert [m["role"] for m in history] == ["user", "assistant", "user", "assistant"]
    assert out.getvalue().count(" (stopped)\n") == 1 and out.getvalue().count("model> ") == 2
    assert history[1]["content"] == out.getvalue().split("model> ")[1].split(" (stopped)")[0].strip()


def test_an_unknown_chat_command_is_not_sent(tiny_run_dir):
    """A mistyped command ("/exti", "/help") was sent to the model as a question and stayed in the conversation. It
    is reported and not sent; a line that only starts with a slash is a message as before."""
    run = open_run(tiny_run_dir, device="cpu")
    inputs = iter(["/exti", "/help", "/etc/hosts?", "/exit"])
    out = io.StringIO()
    history = chat(run, CHAT, read=lambda prompt: next(inputs), out=out)
    assert [m["content"] for m in history if m["role"] == "user"] == ["/etc/hosts?"]
    assert "(not sent: unknown command /exti; /reset starts over, /system TEXT, /exit leaves.)" in out.getvalue()
    assert "unknown command /help" in out.getvalue()


def test_chat_says_when_the_context_leaves_an_answer_little_room(tiny_run_dir):
    """A conversation near the model's context got an answer cut to the room left, with nothing said: the user saw a
    truncated answer, then the next message refused. Chat now says how much room the answer had; an answer with all
    it asked for gets no such line."""
    run = open_run(tiny_run_dir, device="cpu")
    inputs = iter(["Code of box 1?", "/reset", words_for(run, 3), "/exit"])
    out = io.StringIO()
    chat(run, CHAT, read=lambda prompt: next(inputs), out=out)
    said = "(the model's context left this answer room for 3 of the 4 tokens asked; /reset starts a new conversation.)"
    first, second = out.getvalue().split("model> ")[1:]
    assert said not in first and said in second  # the first answer had the 4 tokens it asked for


def test_chat_survives_a_refused_turn_says_reset_and_ends_its_line_on_eof(tiny_run_dir):
    """A conversation the run's template refused raised out of `tunelab chat`, ending the session; /reset printed
    nothing; Ctrl-D left the shell's prompt on the "you> " line. The refused message is not sent and the chat goes
    on, /reset says so, and end of input ends the line."""
    from dataclasses import replace

    from tunelab.data.templates import TemplateRefused

    run = open_run(tiny_run_dir, device="cpu")
    real = run.template.write

    def picky(messages, add_generation_prompt):
        if any("refuse me" in m["content"] for m in messages):
            raise TemplateRefused("roles must alternate", "roles must alternate")
        return real(messages, add_generation_prompt)

    run.template = replace(run.template, write=picky)
    inputs = iter(["refuse me", "Code of box 1?", "/reset", "Code of box 5?"])

    out = io.StringIO()

    def read(prompt):  # as input() does: the prompt goes to the terminal
        out.write(prompt)
        try:
            return next(inputs)
        except StopIteration:
            raise EOFError from None

    history = chat(run, CHAT, read=read, out=out)
    said = out.getvalue()
    assert [m["content"] for m in history if m["role"] == "user"] == ["Code of box 5?"]
    assert "(not sent: prompt template" in said and "roles must alternate" in said
    assert said.count("model> ") == 2
    assert "(conversation reset" in said
    assert said.endswith("you> \n")
