"""`tunelab check`: passes a good config, and fails each class of problem on a config built to have it."""

import json
import shlex
import shutil
from pathlib import Path

import pytest
import torch

import tunelab
import tunelab.tasks.sft as sft_task
import tunelab.training.loss_scale as loss_scale
from tunelab.checks.model import eval_comparisons, forward_backward
from tunelab.cli import main
from tunelab.data.checks import CheckItem, CheckResult
from tunelab.errors import CheckFailed, ConfigError, DataError
from tunelab.training.build import BuiltModel
from tunelab.training.recipe import train

from ..smollm2_vocab import smollm2_tiny_model_dir, smollm2_tiny_tokenizer  # noqa: F401 (SmolLM2's vocabulary)


def _statuses(result) -> dict[str, str]:
    return {item.name: item.status for item in result.items}


def _model_variant(tiny_model_dir: Path, tmp_path: Path, template: str | None = None, **tokenizer) -> Path:
    """The tiny model with another chat template and/or tokenizer settings."""
    folder = tmp_path / "variant"
    shutil.copytree(tiny_model_dir, folder)
    if template is not None:
        (folder / "chat_template.jinja").write_text(template)
    if tokenizer:
        config = json.loads((folder / "tokenizer_config.json").read_text()) | tokenizer
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def test_a_good_config_passes_through_the_cli(tiny_overrides, tmp_path, capsys, cli_flags):
    page = tmp_path / "page.html"
    assert main(["check", *cli_flags(tiny_overrides | {"data.packing": "true"}), "--html", str(page)]) == 0
    out = capsys.readouterr().out
    assert "[[Box 0 has code 1000.<|im_end|>]]" in out  # the loss tokens, bracketed off a terminal
    for name in ("prompt rendering", "answers end with a stop token", "padding", "untrained tokens", "gradients"):
        assert f"[PASS] {name}" in out, name
    assert "[PASS] packing" in out and "[PASS] fast path = generic path" in out
    assert out.rstrip().splitlines()[-1].startswith("check: PASSED")
    assert 'class="loss"' in page.read_text() and not Path(tiny_overrides["output_dir"]).exists()


def test_existing_output_dir_fails_the_check_with_exit_1(tiny_overrides, capsys, cli_flags):
    Path(tiny_overrides["output_dir"]).mkdir()
    (Path(tiny_overrides["output_dir"]) / "notes.txt").write_text("mine")
    assert main(["check", *cli_flags(tiny_overrides), "--data-only"]) == 1
    out = capsys.readouterr().out
    assert "[FAIL] output_dir" in out and "check: FAILED: 1 of" in out and "(output_dir)" in out


def test_resume_with_a_changed_option_fails(tiny_overrides):
    train(
        None,
        tiny_overrides | {"train.max_steps": 1, "train.save_every": 1, "train.keep_checkpoints_after_finish": True},
    )
    result = tunelab.check(None, tiny_overrides | {"train.max_steps": 1, "train.lr": 0.5}, resume=True, model=False)
    assert _statuses(result)["resume"] == "fail" and "train.lr: 0.001 -> 0.5" in result.items[0].summary


def test_a_prompt_that_tokenizes_differently_at_inference_fails(
    tiny_model_dir, tiny_overrides, tmp_path, capsys, cli_flags
):
    # The generation prompt ends with a space: in training the space merges into the answer's first token.
    template = (
        "{% for m in messages %}{% if m.role == 'assistant' %}Assistant: {{ m.content }}<|im_end|>\n"
        "{% else %}{{ m.role }}: {{ m.content }}\n{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}Assistant: {% endif %}"
    )
    overrides = tiny_overrides | {"model.name": str(_model_variant(tiny_model_dir, tmp_path, template))}
    result = tunelab.check(None, overrides, model=False)
    item = next(i for i in result.items if i.name.startswith("prompt rendering"))
    assert item.status == "fail" and "20 of 20 answers" in item.summary  # the first 20 examples are compared
    assert "in training but" in item.details[0] and "qa.jsonl:1 answer 1" in item.details[0]
    # train runs the same check before loading the model; a Python caller is told its argument, not only the flag
    with pytest.raises(CheckFailed, match=r"prompt rendering.*tunelab\.check\(\).*pass check=False to train") as failed:
        train(None, overrides | {"train.max_steps": 1})
    assert "--no-check" not in str(failed.value)
    assert not Path(overrides["output_dir"]).exists()
    capsys.readouterr()
    assert main(["train", *cli_flags(overrides | {"train.max_steps": 1})]) == CheckFailed.exit_code
    err = capsys.readouterr().err  # the CLI user is told the flag alone
    assert "Run `tunelab check` with the same config and flags" in err and "--no-check to train anyway." in err
    assert "check=False" not in err and not Path(overrides["output_dir"]).exists()
    assert train(None, overrides | {"train.max_steps": 1}, check=False).steps == 1


def test_answers_without_a_stop_token_fail(tiny_model_dir, tiny_overrides, tmp_path):
    model = _model_variant(tiny_model_dir, tmp_path, eos_token=None, pad_token="<|endoftext|>")
    result = tunelab.check(None, tiny_overrides | {"model.name": str(model), "data.template": "alpaca"}, model=False)
    item = next(i for i in result.items if i.name == "answers end with a stop token")
    assert item.status == "fail" and "24 of 24 answers do not end with a stop token" in item.summary
    assert "qa.jsonl:1: the answer ends with '.'" in item.details[0]


def test_untrained_tokens_without_the_repair_fail(tiny_model_dir, tiny_overrides, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = _model_variant(tiny_model_dir, tmp_path)  # with the row of <|im_end|> (id 2) zero, as untrained
    weights = load_file(folder / "model.safetensors")
    weights["model.embed_tokens.weight"][2] = 0.0
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    result = tunelab.check(None, tiny_overrides | {"model.name": str(folder), "model.fix_untrained_tokens": False})
    assert _statuses(result)["untrained tokens"] == "fail" and not result.passed
    assert "'<|im_end|>' (id 2" in next(i for i in result.items if i.name == "untrained tokens").summary


@pytest.mark.slow
def test_nan_gradients_of_a_deep_model_fail(deep_zero_row_model_dir, tiny_overrides):
    overrides = tiny_overrides | {"model.name": str(deep_zero_row_model_dir), "model.fix_untrained_tokens": False}
    result = tunelab.check(None, overrides)
    statuses = _statuses(result)
    assert statuses["untrained tokens"] == "fail" and statuses["gradients"] == "fail"
    assert "gradient norm nan" in " ".join(next(i for i in result.items if i.name == "gradients").details)
    # With the repair the same model trains finite: tests/models/test_untrained.py.


def test_packing_and_path_mismatches_fail(tiny_model_dir, tiny_overrides, tmp_path, monkeypatch):
    from safetensors.torch import load_file, save_file

    # At init scale (std 0.02) attention is nearly uniform and what one document reads of another moves the loss by
    # less than the check's tolerance: sharpen it (q and k x 30) so that a leak across documents shows.
    folder = _model_variant(tiny_model_dir, tmp_path)
    weights = load_file(folder / "model.safetensors")
    for name in weights:
        if name.endswith(("q_proj.weight", "k_proj.weight")):
            weights[name] *= 30
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    tiny_overrides = tiny_overrides | {"model.name": str(folder)}
    real = sft_task.packed_inputs

    def across_documents(batch):  # a packing bug: attention across the documents of a row
        inputs = real(batch)
        inputs["cu_seqlens"] = inputs["cu_seqlens"][[0, -1]]
        return inputs

    monkeypatch.setattr(sft_task, "packed_inputs", across_documents)
    assert _statuses(tunelab.check(None, tiny_overrides))["packing"] == "fail"
    monkeypatch.setattr(sft_task, "packed_inputs", real)

    import tunelab.training.build as build

    real_convert = build.from_hf_model

    def wrong_norm(hf_model, ops):  # a fast-path bug: one norm scaled
        model = real_convert(hf_model, ops)
        model.model.norm.weight.data *= 1.5
        return model

    monkeypatch.setattr(build, "from_hf_model", wrong_norm)
    statuses = _statuses(tunelab.check(None, tiny_overrides))
    assert statuses["fast path = generic path"] == "fail" and statuses["packing"] == "pass"


def test_a_tensor_without_gradient_fails():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    model.unused = torch.nn.Parameter(torch.ones(3))

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.unused = model, torch.nn.Parameter(torch.ones(3))
            self.config = type("C", (), {"model_type": "toy"})()

        def forward(self, input_ids, attention_mask=None, position_ids=None):
            return type("O", (), {"logits": self.body(torch.nn.functional.one_hot(input_ids, 4).float())})()

    built = BuiltModel(Tiny(), "generic", None, torch.device("cpu"), torch.float32, 0, 0)
    ids = torch.tensor([[0, 1, 2, 3]])
    items = forward_backward(built, {"input_ids": ids, "labels": ids, "attention_mask": torch.ones_like(ids)})
    grads = next(i for i in items if i.name == "gradients")
    assert grads.status == "fail" and any("unused: no gradient" in d for d in grads.details)


@pytest.mark.parametrize("start", [2.0**16, 2.0**60])  # 2**60: the first passes overflow, the check halves it
def test_fp16_gradients_that_underflow_unscaled_pass_the_check_as_training_scales_them(
    monkeypatch, start, small_weight_lora
):
    model, batch = small_weight_lora(torch.float16)  # small weights: fp16 activation gradients underflow unscaled
    monkeypatch.setattr(loss_scale, "INIT_SCALE", start)
    built = BuiltModel(model, "generic", None, torch.device("cpu"), torch.float16, 0, 0)
    items = forward_backward(built, batch)
    grads = next(i for i in items if i.name == "gradients")
    assert grads.status == "pass", grads.details
    assert all(p.grad is None for p in model.parameters())


def test_data_that_cannot_be_checked_is_bad_input(
    tiny_model_dir, tiny_overrides, tmp_path, capsys, monkeypatch, cli_flags
):
    temp = tmp_path / "temp"  # where a page without --html would go: nothing is left there by a stopped check
    temp.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(temp))
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"question": "q", "answer": ""}\n')
    assert main(["check", *cli_flags(tiny_overrides | {"data.train": [str(empty)]})]) == 2
    assert "no usable training examples" in capsys.readouterr().err
    # A template that writes the last answer differently from earlier ones: the answers cannot be located.
    template = (
        "{% for m in messages %}{% if loop.last and m.role == 'assistant' %}FINAL {{ m.content }}<|im_end|>"
        "{% else %}{{ m.role }}: {{ m.content }}\n{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    chats = tmp_path / "chats.jsonl"
    turns = [
        {"role": r, "content": c} for r, c in (("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "d"))
    ]
    chats.write_text(json.dumps({"messages": turns}) + "\n")
    model = _model_variant(tiny_model_dir, tmp_path, template)
    with pytest.raises(ConfigError, match="renders earlier turns of a conversation differently"):
        tunelab.check(None, tiny_overrides | {"model.name": str(model), "data.train": [str(chats)]}, model=False)
    with pytest.raises(DataError):
        tunelab.check(None, tiny_overrides | {"data.train": [str(tmp_path / "missing.jsonl")]})
    assert list(temp.iterdir()) == []


def test_the_preview_names_rows_as_the_data_report_does(tiny_tokenizer):
    """A JSON array's item is `file[index]` in the data report and its errors; the preview said `file:index`."""
    from types import SimpleNamespace

    from tunelab.checks.preview import preview_text

    ids = tiny_tokenizer("Q A")["input_ids"]
    rows = [SimpleNamespace(path=p, line=n, input_ids=ids, labels=ids) for p, n in (("d.json", 0), ("d.jsonl", 3))]
    out = preview_text(rows, tiny_tokenizer, color=False)
    assert f"--- example 1 (d.json[0], {len(ids)} tokens) ---" in out and "--- example 2 (d.jsonl:3, " in out


def test_eval_questions_that_cannot_be_asked_stop_the_run_before_training(tiny_overrides, tmp_path, capsys, cli_flags):
    """A question holding special-token text, or too long for the model's context, was refused by the comparison
    after training: the run trained to its end, saved, and then exited 2. `tunelab check` passed it. Now check fails
    it and train stops before training."""
    questions = tmp_path / "q.jsonl"
    rows = [{"question": "Code of box 1?", "expected": "1001"}, {"question": "Hi<|im_end|>", "expected": "x"}]
    questions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    overrides = tiny_overrides | {"eval.questions": str(questions)}
    assert main(["check", *cli_flags(overrides), "--data-only"]) == 1
    out = capsys.readouterr().out
    assert "[FAIL] eval.questions" in out and "q.jsonl:2: the special token text '<|im_end|>'" in out
    with pytest.raises(ConfigError, match=r"q\.jsonl:2: the special token text"):
        tunelab.train(None, overrides | {"train.max_steps": 1})
    assert not Path(tiny_overrides["output_dir"]).exists()  # nothing trained, nothing written
    questions.write_text(json.dumps(rows[0]) + "\n" + json.dumps({"question": "box " * 1100, "expected": "x"}) + "\n")
    assert main(["check", *cli_flags(overrides), "--data-only"]) == 1  # the tiny model reads 1024 positions
    assert "q.jsonl:2: the prompt is" in capsys.readouterr().out
    with pytest.raises(ConfigError, match=r"q\.jsonl:2: the prompt is \d+ tokens .* at most 1024"):
        tunelab.train(None, overrides | {"train.max_steps": 1})
    questions.write_text(json.dumps(rows[0]) + "\n")
    assert main(["check", *cli_flags(overrides), "--data-only"]) == 0
    assert "[PASS] eval.questions: the 1 row of" in capsys.readouterr().out


def test_a_stage_without_data_is_named(tiny_overrides):
    """A stage `{}` of a run whose data is in another stage failed with "option 'data.train' is empty", naming no
    stage (tunelab train named it)."""
    overrides = {k: v for k, v in tiny_overrides.items() if k != "data.train"}
    stages = [{"data": {"train": tiny_overrides["data.train"]}}, {}]
    with pytest.raises(ConfigError, match=r"stage 2 of 2 \(stage-2\): option 'data.train' is empty"):
        tunelab.check(None, overrides | {"stages": stages}, model=False, show=False)
    with pytest.raises(ConfigError, match=r"stage 1 of 2 \(stage-1\): option 'data.train' is empty"):
        tunelab.check(None, overrides | {"stages": stages[::-1]}, model=False, show=False)


def test_a_data_option_error_names_the_config_file_that_set_it(tiny_model_dir, qa_file, tmp_path):
    """An error the data reader finds in an option (a data.fields mapping to a column the file lacks) named the
    option but not the YAML file that set it; given as a flag, the flag's name is its place."""
    config = tmp_path / "run.yaml"
    config.write_text(
        json.dumps(
            {"model": {"name": str(tiny_model_dir)}, "data": {"train": [str(qa_file)], "fields": {"prompt": "q"}}}
        )
    )
    with pytest.raises(DataError, match=rf"qa.jsonl:1: option 'data.fields' \(set in {config}\) maps prompt -> 'q'"):
        tunelab.check(config, model=False)
    with pytest.raises(DataError, match=r"qa.jsonl:1: option 'data.fields' maps prompt -> 'q'"):
        tunelab.check(
            None,
            {"model.name": str(tiny_model_dir), "data.train": [str(qa_file)], "data.fields": {"prompt": "q"}},
            model=False,
        )


def test_the_first_micro_batch_checked_is_the_one_training_takes_with_group_by_length(tiny_overrides, tmp_path):
    """With train.group_by_length the check's forward/backward (and its memory figure) ran on a micro-batch of the
    ungrouped order, not on the one training takes first."""
    from tunelab.checks.model import first_batch
    from tunelab.data.batches import make_batches
    from tunelab.data.loader import epoch_rows
    from tunelab.training.prepare import load_inputs
    from tunelab.training.recipe import resolve

    rows = [{"question": f"Box {i}?", "answer": "Code " + "word " * (1 + (7 * i) % 23)} for i in range(32)]
    data = tmp_path / "varied.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    over = tiny_overrides | {"data.train": [str(data)], "train.group_by_length": True, "train.grad_accum": 1}
    cfg = resolve(None, over).config
    inputs = load_inputs(cfg)
    pad = inputs.tokenizer.pad_token_id
    trained = make_batches(
        epoch_rows(inputs.data, cfg.train.seed, 0),
        4,
        pad,
        shuffle=True,
        seed=cfg.train.seed,
        epoch=0,
        group_by_length=True,
    )[0]
    ungrouped = make_batches(
        epoch_rows(inputs.data, cfg.train.seed, 0), 4, pad, shuffle=True, seed=cfg.train.seed, epoch=0
    )
    assert not torch.equal(trained["input_ids"], ungrouped[0]["input_ids"])  # the test tells the two orders apart
    assert torch.equal(first_batch(cfg, inputs.data, pad)["input_ids"], trained["input_ids"])


def test_check_prints_the_split_seed_that_holds_out_the_eval_examples(tiny_overrides, capsys, cli_flags):
    """`tunelab check` shows the data report that training prints: a data.eval_fraction split names the seed that
    drew its held-out examples, data.split_seed, else train.seed."""
    for more, seed in (({"data.split_seed": 7}, 7), ({"train.seed": 3}, 3)):
        over = tiny_overrides | {"data.eval_fraction": 0.25} | more
        assert main(["check", *cli_flags(over), "--data-only"]) == 0
        assert f"eval (fraction, split seed {seed})" in capsys.readouterr().out


def test_check_says_what_dtype_auto_picked_on_a_gpu_without_bf16(tiny_overrides, monkeypatch, capsys, cli_flags):
    """train says at its start that auto chose fp16 (adapters) on a GPU without native bf16; check said nothing of
    it. On the CPU, with training_dtype answering as on such a GPU."""
    import tunelab.training.build as build

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    real = build.training_dtype
    monkeypatch.setattr(
        build, "training_dtype", lambda dtype, device, method: real(dtype, torch.device("cuda"), method)
    )
    main(["check", *cli_flags(tiny_overrides)])
    out = capsys.readouterr().out
    assert "[INFO] model dtype: model.dtype auto: fp16 with dynamic loss scaling, since this GPU has no native" in out
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    main(["check", *cli_flags(tiny_overrides)])
    assert "model dtype" not in capsys.readouterr().out  # bf16 where the GPU has it: nothing to say


def test_check_resume_builds_the_model_in_the_dtype_the_run_trained_in(tiny_overrides, monkeypatch, gpu_bf16, crash_at):
    """A run started in fp16 (auto, on a GPU without native bf16) and checked with --resume where auto picks bf16:
    check builds the model as train --resume would, in fp16, and says so; it checked a bf16 model without a word.
    On the CPU, with training_dtype answering as on such GPUs."""
    import tunelab.training.build as build

    bf16 = gpu_bf16
    built = []
    real_build = build.build_model
    monkeypatch.setattr(
        "tunelab.training.prepare.build_model", lambda *a, **k: built.append(real_build(*a, **k)) or built[-1]
    )
    run = tiny_overrides | {"train.max_steps": 4, "train.save_every": 2}
    with crash_at(3):
        train(None, run)
    bf16["native"] = True  # the other machine
    built.clear()
    items = {item.name: item.summary for item in tunelab.check(None, run, resume=True).items}
    assert items["model dtype"].startswith("resume: model.dtype auto keeps fp16, the dtype the run trained in")
    assert built and {b.dtype for b in built} == {torch.float16}


def test_options_the_method_does_not_read_are_an_item_of_the_check(tiny_overrides, capsys):
    """The API's check (show=False prints nothing) said nothing of method.top_layers set beside lora."""
    result = tunelab.check(None, tiny_overrides | {"method.top_layers": 3}, model=False)
    (item,) = [item for item in result.items if item.name == "unused options"]
    assert item.status == "info" and item.details == ["note: method.top_layers (3) is not used by method lora"]
    assert item.summary == "1 option set that the run does not read"
    assert "unused options" not in _statuses(tunelab.check(None, tiny_overrides, model=False))


def test_the_verdict_counts_one_check_and_one_warning_in_the_singular():
    """A check of one item said 'check: PASSED: 1 checks', and a warning '2 checks, 1 warning(s)'."""
    assert CheckResult([CheckItem("a", "pass", "")]).verdict() == "check: PASSED: 1 check"
    two = CheckResult([CheckItem("a", "pass", ""), CheckItem("b", "warn", ""), CheckItem("c", "info", "")])
    assert two.verdict() == "check: PASSED: 2 checks, 1 warning"
    failed = CheckResult([CheckItem("a", "fail", ""), CheckItem("b", "warn", ""), CheckItem("c", "warn", "")])
    assert failed.verdict() == "check: FAILED: 1 of 3 checks failed (a), 2 warnings"


def test_check_resume_of_a_run_the_guard_stopped_warns_it_would_stop_again(tiny_overrides, crash_at, monkeypatch, capsys):  # fmt: skip
    """`tunelab check --resume` passed a run the non-finite guard stopped, which train --resume would stop again."""
    import tunelab.checks.run as check_run

    overrides = tiny_overrides | {"train.max_steps": 3, "train.save_every": 1}
    with crash_at(2):
        train(None, overrides)
    run_json = Path(overrides["output_dir"]) / "run.json"
    run_json.write_text(json.dumps(json.loads(run_json.read_text()) | {"end": {"reason": "non_finite", "step": 2}}))
    capsys.readouterr()
    result = tunelab.check(None, overrides, resume=True, model=False)
    item = next(item for item in result.items if item.name == "resume")
    assert item.status == "warn" and "guard stopped the run at step 2" in item.details[0]
    assert "a resume continues from its last checkpoint" in item.details[0] and "lower train.lr" in item.details[0]

    monkeypatch.setattr(check_run, "load_inputs", lambda *a, **k: (_ for _ in ()).throw(KeyError("loading")))
    capsys.readouterr()
    with pytest.raises(KeyError, match="loading"):
        tunelab.check(None, overrides, resume=True, model=False, show=True)
    assert "warning: " in capsys.readouterr().out  # said before the data loads


def test_the_gradient_check_says_why_lora_a_is_zero_at_the_first_step(small_weight_lora):
    model, batch = small_weight_lora(torch.float32, init_range=0.02)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.zeros_(p)  # as a run starts
    a_count = sum("lora_A" in n for n, p in model.named_parameters() if p.requires_grad)
    built = BuiltModel(model, "generic", None, torch.device("cpu"), torch.float32, 0, 0)
    grads = next(i for i in forward_backward(built, batch) if i.name == "gradients")
    assert grads.status == "pass", grads.details
    assert f"non-zero gradients in all {a_count} checked trainable tensors" in grads.summary
    assert f"not checked: {a_count} LoRA A tensors, whose gradient is zero at the first step as LoRA B" in grads.summary


def test_packing_of_one_example_is_in_the_singular(small_weight_lora):
    model, batch = small_weight_lora(torch.float32, init_range=0.02)
    one = {k: v[:1] for k, v in batch.items()}
    built = BuiltModel(model, "fast", None, torch.device("cpu"), torch.float32, 0, 0)
    items, _ = eval_comparisons(built, one, pad_id=0)
    packing = next(i for i in items if i.name == "packing")
    assert "1 example packed in one row" in packing.summary


def test_a_questions_file_as_training_data_is_told_of_eval_as_the_caller_runs_it(
    tiny_overrides, tmp_path, capsys, cli_flags
):
    """A file of questions (question, expected) given as data.train was told to give it to "eval's data file", the
    data reader knowing no caller; tunelab check and train name eval's command line, a Python caller
    tunelab.evaluate, where they catch the reader's error."""
    questions = tmp_path / "heldout.jsonl"
    questions.write_text('{"question": "Since when?", "expected": "1997"}\n')
    run = str(tmp_path / "my run")  # the run the config trains is named, not a placeholder (RUN_DIR, run_dir)
    over = tiny_overrides | {"data.train": [str(questions)], "output_dir": run}
    assert main(["check", "--data-only", *cli_flags(over)]) == 2
    err = capsys.readouterr().err
    assert f"once the run is trained, score them with 'tunelab eval {shlex.quote(run)} --data FILE'" in err
    assert "tunelab.evaluate" not in err and "eval's data file" not in err
    for call in (lambda: tunelab.check(None, over, model=False), lambda: train(None, over)):
        with pytest.raises(DataError) as python:
            call()
        said = str(python.value)
        assert f"{questions}:1: cannot tell the data format" in said and "give the file as eval.questions" in said
        assert f"once the run is trained, score them with tunelab.evaluate({run!r}, data=FILE))" in said
        assert "tunelab eval" not in said and "--data" not in said
