"""merge_run: a LoRA run folded into plain weights loads in transformers with the logits of base + adapter; full runs
are re-saved unchanged; the chat template travels; bad run dirs and occupied outputs are refused without writing."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunelab.data.templates import resolve_template
from tunelab.errors import RunDirError
from tunelab.export.merge import merge_run
from tunelab.peft.lora import attach_lora, lora_modules
from tunelab.peft.save import save_adapter

IDS = torch.tensor([[1, 504, 3458, 314, 4760, 260, 1104, 2], [17, 29, 3000, 40000, 12, 9, 8, 7]])


def _write_run(run_dir, model, tokenizer, base, method, template="auto", system_prompt=None):
    run_dir.mkdir(parents=True, exist_ok=True)
    if method == "lora":
        save_adapter(model, run_dir, base_model=str(base))
    else:
        model.save_pretrained(run_dir, safe_serialization=True)
    tokenizer.save_pretrained(run_dir)
    info = {
        "base_model": str(base),
        "method": method,
        "template": template,
        "system_prompt": system_prompt,
        "quantize_base": "none",  # as training records it: without it (or config.yaml) the base is not known
        "finished": True,
    }
    (run_dir / "run.json").write_text(json.dumps(info))
    return run_dir


@pytest.fixture
def lora_run(tiny_model_dir, smollm2_tokenizer, tmp_path):
    """A finished LoRA run on the tiny model with a random (non-zero) B, and the logits its model gives on IDS."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    attach_lora(model, ["all-linear"], r=4, alpha=8)
    torch.manual_seed(3)
    for _, m in lora_modules(model):
        torch.nn.init.normal_(m.lora_B.weight, std=0.05)
    with torch.no_grad():
        tuned = model(IDS).logits
    run = _write_run(tmp_path / "run", model, smollm2_tokenizer, tiny_model_dir, "lora")
    return run, tuned


def test_merged_lora_loads_in_plain_transformers_with_the_tuned_logits(lora_run, tmp_path, tiny_model_dir):
    run, tuned = lora_run
    out = merge_run(run, tmp_path / "merged")
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "chat_template.jinja"} <= {
        p.name for p in out.iterdir()
    }
    assert not list(tmp_path.glob(".tmp-*"))  # the scratch folder was renamed, not left behind
    probe = tmp_path / "probe"
    probe.touch()  # what the user's umask gives a new file (0644 under the usual 022)
    file_mode = probe.stat().st_mode & 0o777
    assert out.stat().st_mode & 0o777 == file_mode | (file_mode & 0o444) >> 2  # not the 0700 of a temporary folder
    assert {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()} == dict.fromkeys(
        (p.name for p in out.iterdir()), file_mode
    )  # the weights too (transformers leaves them 0600)
    merged = AutoModelForCausalLM.from_pretrained(out, use_safetensors=True).eval()
    assert merged.dtype == torch.float32  # the base was saved in fp32, so the merge is too
    with torch.no_grad():
        logits = merged(IDS).logits
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()(IDS).logits
    # x (W + s B A)^T versus x W^T + s (x A^T) B^T in fp32: the same sum associated differently, so differences are
    # float rounding (~1e-6 on logits of size ~1); the adapter itself moves the logits by ~1e-2 (checked below).
    torch.testing.assert_close(logits, tuned, rtol=1e-4, atol=1e-5)
    assert (tuned - base).abs().max() > 1e-3
    tok = AutoTokenizer.from_pretrained(out)
    chat = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert chat.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert merged.generation_config.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")


def test_merge_to_bf16_rounds_once(lora_run, tmp_path):
    run, tuned = lora_run
    merged = AutoModelForCausalLM.from_pretrained(merge_run(run, tmp_path / "m16", dtype="bf16")).eval()
    assert merged.dtype == torch.bfloat16
    with torch.no_grad():
        logits = merged(IDS).logits.float()
    # bf16 keeps 8 mantissa bits: weights are off by up to 2^-9 relative, and the random 2-layer model's logits
    # (~0.5 in size) move by a few 1e-3; fp32 agreement is checked in the test above.
    torch.testing.assert_close(logits, tuned, rtol=0, atol=3e-2)


def test_full_run_is_resaved_unchanged_with_the_named_template(tiny_model_dir, smollm2_tokenizer, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    with torch.no_grad():
        model.model.norm.weight.mul_(1.5)  # a "trained" change to tell it from the base
        expected = model(IDS).logits
    run = _write_run(tmp_path / "full", model, smollm2_tokenizer, tiny_model_dir, "full", template="alpaca")
    out = merge_run(run, tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        assert torch.equal(merged(IDS).logits, expected)
    tok = AutoTokenizer.from_pretrained(out)
    alpaca = resolve_template("alpaca", smollm2_tokenizer)
    assert tok.chat_template.endswith(
        alpaca.jinja
    )  # the named template's Jinja (tests/data/test_templates.py checks it)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert tok.apply_chat_template(messages, tokenize=False) == alpaca.render(messages)[0]


@pytest.mark.parametrize("template", ["auto", "chatml"])
def test_the_merged_template_writes_the_runs_system_prompt(tiny_model_dir, smollm2_tokenizer, tmp_path, template):
    """Training wrote data.system_prompt into every conversation without a system message; the merged model's chat
    template wrote the tokenizer's default instead (SmolLM2: "You are a helpful AI assistant named SmolLM...")."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    system = 'You are the "Tallowmere" assistant.\nAnswer in one sentence: café, naïve, 😀.'
    run = _write_run(tmp_path / "run", model, smollm2_tokenizer, tiny_model_dir, "full", template, system)
    tok = AutoTokenizer.from_pretrained(merge_run(run, tmp_path / "merged"))
    trained = resolve_template(template, smollm2_tokenizer)
    user = [{"role": "user", "content": "Hi"}]
    written = tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    assert written == trained.render([{"role": "system", "content": system}, *user], add_generation_prompt=True)[0]
    own = [{"role": "system", "content": "Be brief."}, *user]  # a conversation's own system message stays
    assert tok.apply_chat_template(own, tokenize=False) == trained.render(own)[0]


@pytest.mark.parametrize("system", [None, "Answer in one sentence."])
@pytest.mark.parametrize("template", ["auto", "chatml", "llama2"])
def test_a_blank_system_message_is_none_in_the_merged_template(
    tiny_model_dir, smollm2_tokenizer, tmp_path, template, system
):
    """Training reads an empty system message as none (the run's system prompt, or the template's own default, takes
    its place); the merged model's apply_chat_template wrote it as an empty system block, a prompt the run never
    saw (SmolLM2: `<|im_start|>system\n<|im_end|>` instead of its default system message)."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    run = _write_run(tmp_path / "run", model, smollm2_tokenizer, tiny_model_dir, "full", template, system)
    tok = AutoTokenizer.from_pretrained(merge_run(run, tmp_path / "merged"))
    trained = resolve_template(template, smollm2_tokenizer)
    user = [{"role": "user", "content": "Hi"}]
    expected = trained.render(([{"role": "system", "content": system}] if system else []) + user, True)[0]
    for blank in ("", "  \n"):
        asked = [{"role": "system", "content": blank}, *user]
        written = tok.apply_chat_template(asked, tokenize=False, add_generation_prompt=True)
        assert written == expected
        assert "<|im_start|>system\n<|im_end|>" not in written and "<<SYS>>\n\n<</SYS>>" not in written


def test_bad_run_dirs_and_occupied_outputs_are_refused(lora_run, tmp_path):
    run, _ = lora_run
    with pytest.raises(RunDirError, match="no such run directory"):
        merge_run(tmp_path / "nope", tmp_path / "out")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RunDirError, match="not a tunelab run directory"):
        merge_run(empty, tmp_path / "out")

    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")
    with pytest.raises(RunDirError, match="not a merged model tunelab wrote"):  # not "pass --overwrite": it would not
        merge_run(run, occupied)
    assert [p.name for p in occupied.iterdir()] == ["keep.txt"]
    with pytest.raises(RunDirError, match="would replace the run directory"):
        merge_run(run, run.parent, overwrite=True)

    with pytest.raises(RunDirError, match="not a merged model tunelab wrote"):  # --overwrite: earlier merges only
        merge_run(run, occupied, overwrite=True)
    assert [p.name for p in occupied.iterdir()] == ["keep.txt"]
    with pytest.raises(RunDirError, match="is a file"):
        merge_run(run, occupied / "keep.txt", overwrite=True)
    merged = tmp_path / "merged"
    merge_run(run, merged)
    (merged / "model.safetensors").write_bytes(b"stale")
    merge_run(run, merged, overwrite=True)  # an earlier merge is replaced
    assert (merged / "model.safetensors").stat().st_size > 5
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".old-", ".tmp-"))]

    (run / "adapter_model.safetensors").unlink()
    with pytest.raises(RunDirError, match="adapter_model.safetensors missing"):
        merge_run(run, tmp_path / "out2")
    assert not (tmp_path / "out2").exists()


def test_overwrite_never_deletes_what_the_merge_did_not_write(lora_run, tmp_path):
    """`merge --overwrite` replaced an earlier merge's folder whole, with whatever had been put into it since: the
    GGUF llama.cpp's convert_hf_to_gguf.py writes into the model's folder, the user's notes. It now replaces an
    earlier merge only when every entry in it is one the merge wrote (tunelab_merge.json lists them; a merge from
    before that list, the names merges write), and otherwise names what would be lost, writing nothing."""
    from tunelab.rundir import MERGE_FILE

    run, _ = lora_run
    merged = merge_run(run, tmp_path / "merged")
    listed = json.loads((merged / MERGE_FILE).read_text())["files"]
    assert sorted(p.name for p in merged.iterdir()) == listed and MERGE_FILE in listed
    (merged / "Merged-F16.gguf").write_bytes(b"GGUF converted by llama.cpp")
    (merged / "notes").mkdir()
    with pytest.raises(RunDirError, match=r"merged: an earlier merge, but it also holds .*\(Merged-F16.gguf, notes\)"):
        merge_run(run, merged, overwrite=True)
    assert (merged / "Merged-F16.gguf").read_bytes() == b"GGUF converted by llama.cpp" and (merged / "notes").is_dir()

    (merged / "notes").rmdir()
    recorded = json.loads((merged / MERGE_FILE).read_text())
    del recorded["files"]  # a merge written before the list: its names are those merges write
    (merged / MERGE_FILE).write_text(json.dumps(recorded))
    with pytest.raises(RunDirError, match=r"it also holds what the merge did not write \(Merged-F16.gguf\)"):
        merge_run(run, merged, overwrite=True)
    (merged / "Merged-F16.gguf").unlink()
    merge_run(run, merged, overwrite=True)
    assert sorted(p.name for p in merged.iterdir()) == json.loads((merged / MERGE_FILE).read_text())["files"]


def test_the_folder_the_command_runs_in_is_never_the_output(lora_run, tmp_path, monkeypatch, capsys):
    """`tunelab merge RUN --out .` in an empty folder ended in a ValueError traceback ('.' has no name to build the
    scratch folder beside); in an earlier merge with --overwrite it would pull the folder from under the shell."""
    from tunelab.cli import main

    run, _ = lora_run
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    for out in (".", "..", str(here)):
        assert main(["merge", str(run), "--out", out, "--overwrite"]) == 2
        err = capsys.readouterr().err
        assert "is the folder this command runs in" in err and "Traceback" not in err
    assert list(here.iterdir()) == []
    assert main(["merge", str(run), "--out", "merged"]) == 0 and (here / "merged" / "tunelab_merge.json").is_file()


def test_the_runs_own_base_is_never_an_output(lora_run, smollm2_tokenizer, tmp_path):
    """A run trained over an earlier merge: merging (or exporting) it over that merge with --overwrite replaced the
    base its adapter needs; every later command then opened the adapter over the wrong weights."""
    run, _ = lora_run
    first = merge_run(run, tmp_path / "merged-1")
    model = AutoModelForCausalLM.from_pretrained(first, dtype=torch.float32)
    second = _write_run(tmp_path / "run-2", model, smollm2_tokenizer, first, "full")
    before = (first / "model.safetensors").read_bytes()
    with pytest.raises(RunDirError, match="the base model .*, which the run needs as it was"):
        merge_run(second, first, overwrite=True)
    assert (first / "model.safetensors").read_bytes() == before


def test_a_bf16_base_merged_for_export_keeps_the_adapter_in_fp32(tiny_model_dir, smollm2_tokenizer, tmp_path):
    from tunelab.export.merge import merged_model

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16)
    base.save_pretrained(tmp_path / "bf16-base")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "bf16-base", dtype=torch.bfloat16)
    attach_lora(model, ["q_proj"], r=4, alpha=8)
    torch.manual_seed(4)
    for _, m in lora_modules(model):
        torch.nn.init.normal_(m.lora_B.weight, std=1e-3)  # an update far below bf16's resolution of these weights
    layer = model.model.layers[0].self_attn.q_proj
    expected = layer.base_layer.weight.float() + layer.scale * (layer.lora_B.weight @ layer.lora_A.weight)
    run = _write_run(tmp_path / "run", model, smollm2_tokenizer, tmp_path / "bf16-base", "lora")
    merged = merged_model(run, "fp32")
    weight = merged.model.model.layers[0].self_attn.q_proj.weight
    assert weight.dtype == torch.float32 and torch.equal(weight, expected)  # no bf16 rounding between sum and export
    assert merged_model(run).dtype == torch.bfloat16  # by default the merge keeps the stored dtype


def test_a_damaged_adapter_is_refused_naming_the_file(lora_run, tmp_path):
    """A NaN in the adapter, a truncated weights file or a broken adapter_config.json: merge (and every command
    that opens the run) stops with the file named, and writes nothing."""
    from safetensors.torch import load_file, save_file

    run, _ = lora_run
    weights = run / "adapter_model.safetensors"
    good = weights.read_bytes()
    state = load_file(str(weights))
    key = next(k for k in state if "lora_B" in k)
    state[key][0, 0] = float("nan")
    save_file(state, str(weights))
    with pytest.raises(RunDirError, match=rf"adapter_model\.safetensors: the adapter holds NaN or inf values .*{key}"):
        merge_run(run, tmp_path / "m1")
    weights.write_bytes(good[:1000])
    with pytest.raises(RunDirError, match=r"adapter_model\.safetensors: the adapter cannot be read"):
        merge_run(run, tmp_path / "m2")
    weights.write_bytes(good)
    (run / "adapter_config.json").write_text("{bad")
    with pytest.raises(RunDirError, match=r"adapter_config\.json: damaged"):
        merge_run(run, tmp_path / "m3")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(("m1", "m2", "m3", ".tmp-"))]


def test_outputs_inside_the_run_or_the_base_folder_are_refused_naming_the_option(lora_run, tiny_model_dir, capsys):
    """`merge --out RUN/merged` or `export --gguf RUN/model.gguf` wrote into the run, which `train --overwrite`
    replaces whole; an output inside the base model's folder put files among the weights the run needs as they
    were. Both are refused before anything is merged or written, naming the option."""
    from tunelab.cli import main

    run, _ = lora_run
    before = sorted(p.name for p in run.iterdir()), sorted(p.name for p in tiny_model_dir.iterdir())
    cases = [
        (["merge", str(run), "--out", str(run / "merged")], f"--out {run / 'merged'}: is inside the run directory"),
        (
            ["export", str(run), "--gguf", str(run / "m.gguf"), "--no-check"],
            f"--gguf {run / 'm.gguf'}: is inside the run",
        ),
        (["merge", str(run), "--out", str(tiny_model_dir / "merged")], "the folder of the base model"),
        (["export", str(run), "--gguf", str(tiny_model_dir / "m.gguf"), "--no-check"], "the folder of the base model"),
    ]
    for args, says in cases:
        assert main([*args, "--overwrite"]) == 2
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err
    assert (sorted(p.name for p in run.iterdir()), sorted(p.name for p in tiny_model_dir.iterdir())) == before


def test_outputs_inside_another_run_directory_are_refused_naming_the_option(lora_run, tmp_path, capsys):
    """`merge --out RUN_B/merged` was written into another run, and RUN_B's `train --overwrite` later deleted it."""
    from tunelab.cli import main
    from tunelab.rundir import RunInfo, write_info

    run, _ = lora_run
    other = tmp_path / "other"
    other.mkdir()
    write_info(other, RunInfo(base_model="m", method="lora", finished=True))
    cases = [
        (["merge", str(run), "--out", str(other / "merged")], f"--out {other / 'merged'}: is inside the run directory"),
        (["merge", str(run), "--out", str(other / "a" / "b")], f"--out {other / 'a' / 'b'}: is inside the run"),
        (["export", str(run), "--gguf", str(other / "m.gguf"), "--no-check"], f"--gguf {other / 'm.gguf'}: is inside"),
    ]
    for args, says in cases:
        assert main(args) == 2
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err
    assert sorted(p.name for p in other.iterdir()) == ["run.json"]


def test_the_embedded_base_file_is_never_an_export_output(tmp_path):
    """A run over the embedded model names it by its alias, which no path check matched: `export --gguf` at the
    alias's .gguf file with --overwrite replaced the model every run over it needs."""
    from tunelab.errors import ModelError
    from tunelab.export.merge import check_output
    from tunelab.models.load import resolve_source

    try:
        source = resolve_source("smollm2-135m-instruct")
    except ModelError as exc:
        pytest.skip(f"the embedded model is not installed here: {exc}")
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(
        json.dumps({"base_model": "smollm2-135m-instruct", "method": "lora", "finished": True})
    )
    target = tmp_path / "link"
    target.symlink_to(source.path)  # the package's folder by another name
    with pytest.raises(RunDirError, match="--gguf .*the base model smollm2-135m-instruct, which the run needs"):
        check_output(target / source.gguf_file, run, True, "--gguf")
    check_output(tmp_path / "beside.gguf", run, True, "--gguf")  # elsewhere: no objection


def test_a_device_or_pipe_is_never_an_output(lora_run, tmp_path):
    """`merge RUN --out /dev/null` needed no --overwrite (neither a file nor a folder with files) and, run as root,
    moved the device aside and put the merged folder in its place."""
    import os

    from tunelab.export.merge import check_output

    run, _ = lora_run
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    for option, target in (("--out", pipe), ("--gguf", pipe)):
        with pytest.raises(RunDirError, match=f"{option} {pipe}: is not a regular file or folder"):
            check_output(target, run, True, option)
    with pytest.raises(RunDirError, match="is not a regular file or folder"):
        merge_run(run, pipe)
    assert pipe.exists() and not pipe.is_file()


def test_an_output_under_a_file_is_refused_by_name(lora_run, tmp_path, capsys):
    """`merge RUN --out notes.txt/m` and `export RUN --gguf notes.txt/m.gguf` said "cannot be written (File exists)",
    naming neither the file in the way nor what to do."""
    from tunelab.cli import main

    run, _ = lora_run
    (tmp_path / "notes.txt").write_text("mine")
    for option, out in (("--out", tmp_path / "notes.txt" / "m"), ("--gguf", tmp_path / "notes.txt" / "sub" / "m.gguf")):
        command = "merge" if option == "--out" else "export"
        assert main([command, str(run), option, str(out), *(["--no-check"] if command == "export" else [])]) == 2
        err = capsys.readouterr().err
        assert f"{option} {out}: {tmp_path / 'notes.txt'} is a file, not a folder" in err, err
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_read_only_output_place_is_refused_before_merging(lora_run, tmp_path, monkeypatch):
    """merge and export into a read-only folder merged (and converted) the whole model first, minutes for a large
    one, and failed only when writing; the place is now tried first, as the write will use it."""
    import errno
    import os
    from pathlib import Path

    import tunelab.export.gguf as gguf
    import tunelab.export.merge as merge
    from tunelab.errors import WriteFailed

    run, _ = lora_run
    locked = tmp_path / "locked"
    locked.mkdir()
    real_open, calls = Path.open, []

    def read_only(self, mode="r", *args, **kwargs):
        if locked in (self, *self.parents) and set(mode) & set("wax"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real_open(self, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "open", read_only)
    monkeypatch.setattr(merge, "merged_model", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(gguf, "merged_model", lambda *a, **k: calls.append(a))
    for out in (locked / "merged", locked / "new" / "merged"):
        with pytest.raises(WriteFailed, match=f"{out}: cannot be written \\(Read-only file system\\)"):
            merge_run(run, out)
    with pytest.raises(WriteFailed, match="m.gguf: cannot be written"):
        gguf.export_gguf(run, locked / "m.gguf", check=False)
    assert calls == [] and list(locked.iterdir()) == []


def test_outputs_in_or_over_the_runs_data_are_refused_as_eval_and_predict_refuse(lora_run, tmp_path, capsys):
    """`merge --out train/merged`, train/ being the run's data.train folder, or `export --gguf eval.gguf` over its
    data.eval file or a folder holding it (--overwrite) wrote a model among the data the next training reads, or replaced the data; eval
    and predict refused the same paths."""
    from tunelab.cli import main

    run, _ = lora_run
    train, holder = tmp_path / "train", tmp_path / "data"
    train.mkdir()
    (train / "a.jsonl").write_text('{"prompt": "hi", "completion": "hello"}\n')
    (holder / "sub").mkdir(parents=True)
    evalf = holder / "sub" / "eval.jsonl"
    evalf.write_text('{"prompt": "hi", "completion": "hello"}\n')
    config = {"model": {"name": "x"}, "data": {"train": [str(train)], "eval": str(evalf)}}
    (run / "config.yaml").write_text(json.dumps(config))
    cases = [
        (["merge", str(run), "--out", str(train / "merged")], f"--out {train / 'merged'}: is where data.train"),
        (["export", str(run), "--gguf", str(train / "m.gguf"), "--no-check"], f"--gguf {train / 'm.gguf'}: is where"),
        (["merge", str(run), "--out", str(evalf)], f"--out {evalf}: is where data.eval of the run's config"),
        (["merge", str(run), "--out", str(holder)], f"--out {holder}: the output would replace {evalf}, data.eval"),
    ]
    for args, says in cases:
        assert main([*args, "--overwrite"]) == 2
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err, err
    assert sorted(p.name for p in train.iterdir()) == ["a.jsonl"]
    assert evalf.read_text() == '{"prompt": "hi", "completion": "hello"}\n'
    assert sorted(p.name for p in holder.iterdir()) == ["sub"]


def test_the_merge_record_names_the_run_relative_to_the_merged_folder(lora_run, tmp_path):
    """tunelab_merge.json named the run by its absolute path only: a project folder moved or copied elsewhere (runs
    and merged models together) named a run that was not there. It names it relative to the merged folder now, with
    the absolute path at the merge beside it, and the base as the run's run.json records it."""
    import shutil

    run, _ = lora_run
    out = merge_run(run, tmp_path / "models" / "merged")
    saved = json.loads((out / "tunelab_merge.json").read_text())
    assert saved["run_dir"] == "../../run" and saved["run_dir_at_merge"] == str(run.resolve())
    assert saved["base_model"] == json.loads((run / "run.json").read_text())["base_model"]
    moved = tmp_path / "elsewhere"
    shutil.copytree(tmp_path / "run", moved / "run")
    shutil.copytree(tmp_path / "models", moved / "models")
    copy = moved / "models" / "merged"
    named = copy / json.loads((copy / "tunelab_merge.json").read_text())["run_dir"]
    assert named.resolve() == (moved / "run").resolve() and (named / "run.json").is_file()


def _gguf_run(tiny_gguf, tmp_path, monkeypatch):
    """A LoRA run over a copy of the tiny GGUF base (converted into a cache of its own), as training records it."""
    from tunelab.models.base_record import base_record
    from tunelab.models.load import materialize, resolve_source

    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    base = tmp_path / "base.gguf"
    base.write_bytes(tiny_gguf.read_bytes())
    converted = materialize(resolve_source(str(base)))
    model = AutoModelForCausalLM.from_pretrained(converted, dtype=torch.float32).eval()
    attach_lora(model, ["all-linear"], r=4, alpha=8)
    torch.manual_seed(3)
    for _, m in lora_modules(model):
        torch.nn.init.normal_(m.lora_B.weight, std=0.05)
    run = _write_run(tmp_path / "run", model, AutoTokenizer.from_pretrained(converted), base, "lora")
    info = json.loads((run / "run.json").read_text()) | base_record(str(base))
    (run / "run.json").write_text(json.dumps(info))
    return run, base, converted


def test_a_gone_gguf_base_is_merged_from_its_converted_copy_of_the_same_file(tiny_gguf, tmp_path, monkeypatch, capsys):
    run, base, converted = _gguf_run(tiny_gguf, tmp_path, monkeypatch)
    there = AutoModelForCausalLM.from_pretrained(merge_run(run, tmp_path / "with-file"))
    base.unlink()
    capsys.readouterr()
    gone = AutoModelForCausalLM.from_pretrained(merge_run(run, tmp_path / "without-file"))
    err = capsys.readouterr().err
    assert "the GGUF file is gone; using its converted copy" in err and converted in err
    with torch.no_grad():
        assert torch.equal(there(IDS % 300).logits, gone(IDS % 300).logits)


def test_a_gone_gguf_base_is_not_replaced_by_a_copy_that_cannot_be_told_the_same(tiny_gguf, tmp_path, monkeypatch):
    from tunelab.errors import ModelError
    from tunelab.models.converted import COMPLETE

    run, base, converted = _gguf_run(tiny_gguf, tmp_path, monkeypatch)
    base.unlink()
    mark = Path(converted) / COMPLETE
    recorded = json.loads(mark.read_text())
    for changed, why in [
        (recorded | {"fingerprint": "0" * 16}, "of another file at that path"),
        ({k: v for k, v in recorded.items() if k != "fingerprint"}, "before tunelab recorded the fingerprint"),
    ]:
        mark.write_text(json.dumps(changed))
        with pytest.raises(ModelError, match="not there any more") as caught:
            merge_run(run, tmp_path / "merged")
        assert why in str(caught.value) and converted in str(caught.value)
        assert not (tmp_path / "merged").exists()


def test_a_merged_folder_has_a_model_card_whose_example_runs(lora_run, tmp_path, tiny_model_dir, monkeypatch):
    """A merged folder had no README.md: pushed to the hub it had no model card, and nothing in it said what the
    model is, which system prompt it was trained with or how to prompt it. The card says so, names a local base by
    its folder's name (not the user's absolute path, nor as hub metadata), and its Python example runs as written."""
    import re

    import yaml

    run, _ = lora_run
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps(info | {"system_prompt": "Answer in one line.\nBe kind."}))
    out = merge_run(run, tmp_path / "box-model")
    card = (out / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "transformers" and "base_model" not in front  # a local base: no hub link
    assert str(tiny_model_dir) not in card and f"`{tiny_model_dir.name}` fine-tuned with tunelab (lora" in card
    assert "> Answer in one line.\n> Be kind.\n" in card and "Merge check on a " in card
    code = re.search(r"```python\n(.*?)```", card, re.S).group(1).replace("max_new_tokens=128", "max_new_tokens=2")
    monkeypatch.chdir(tmp_path)  # the example names the folder as the merge named it
    exec(compile(code, "README.md", "exec"), {})


def test_a_merged_model_answers_greedily_as_it_was_evaluated(tiny_model_dir, smollm2_tokenizer, tmp_path):
    """A merged folder kept its base's generation_config (Qwen's do_sample with temperature 0.7, top_p 0.8), so a
    plain `model.generate()` sampled while tunelab's eval and chat answered the run greedily. Its generation_config
    is greedy now, stops at the run's end-of-turn token, and the card names the base's sampling."""
    from transformers import GenerationConfig

    base = tmp_path / "base"
    shutil.copytree(tiny_model_dir, base)
    GenerationConfig(
        do_sample=True, temperature=0.7, top_p=0.8, top_k=20, bos_token_id=1, eos_token_id=2
    ).save_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    attach_lora(model, ["all-linear"], r=4, alpha=8)
    run = _write_run(tmp_path / "run", model, smollm2_tokenizer, base, "lora", template="chatml")
    out = merge_run(run, tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    assert not merged.generation_config.do_sample
    assert merged.generation_config.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    ids = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True, return_tensors="pt")
    ids = ids["input_ids"] if not torch.is_tensor(ids) else ids
    answers = []
    for seed in (0, 1, 2):
        torch.manual_seed(seed)
        answers.append(merged.generate(ids, max_new_tokens=12)[0, ids.shape[1] :].tolist())
    greedy = merged.generate(ids, max_new_tokens=12, do_sample=False, top_k=None, top_p=None, temperature=None)
    assert answers == [greedy[0, ids.shape[1] :].tolist()] * 3  # the same greedy answer, whatever the seed
    card = (out / "README.md").read_text()
    assert "answers greedily" in card and "do_sample=True, temperature=0.7, top_k=20, top_p=0.8" in card


def test_an_output_no_overwrite_replaces_is_not_offered_overwrite(lora_run, tiny_run, tmp_path):
    """`merge --out` at a file, or at a folder that is not an earlier merge, said 'exists and is not empty. Pass
    --overwrite to replace it'; with --overwrite it then refused the same path for being a file or not a merge. So did
    `export --gguf` at a folder. Each now says at once why no --overwrite would write there."""
    from tunelab.export.gguf import export_gguf

    run, _ = lora_run
    (tmp_path / "notes.txt").write_text("mine")
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"\xff")
    for out, overwrite in [(tmp_path / "notes.txt", False), (folder, False), (tmp_path / "notes.txt", True)]:
        with pytest.raises(RunDirError) as refused:
            merge_run(run, out, overwrite=overwrite)
        assert "--overwrite to replace" not in str(refused.value)
        assert "is a file" in str(refused.value) or "not a merged model tunelab wrote" in str(refused.value)
    (tmp_path / "box.gguf").mkdir()
    (tmp_path / "box.gguf" / "x").write_text("x")
    with pytest.raises(RunDirError, match="is a directory; the export writes a file there") as refused:
        export_gguf(tiny_run, tmp_path / "box.gguf", check=False)
    assert "--overwrite to replace" not in str(refused.value)
    assert (tmp_path / "notes.txt").read_text() == "mine" and [p.name for p in folder.iterdir()] == ["a.jpg"]


def test_a_merge_onto_a_full_disk_is_refused_without_a_traceback(lora_run, tmp_path, monkeypatch):
    """A merge onto a disk without room ended in a traceback (safetensors' 'No space left on device' is no OSError)
    and exit 1. It now measures the merged folder and refuses first (exit 2); a disk that fills anyway is said as a
    write that failed, naming the folder."""
    from transformers import PreTrainedModel

    import tunelab.atomic
    from tunelab.errors import WriteFailed

    run, _ = lora_run
    real = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(tunelab.atomic.shutil, "disk_usage", lambda _: real._replace(free=1000))
    with pytest.raises(WriteFailed, match="the merged model needs about .* MB on its disk, which has 0.0 MB free"):
        merge_run(run, tmp_path / "merged")
    monkeypatch.undo()

    def full(self, *args, **kwargs):
        from safetensors import SafetensorError

        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", full)
    with pytest.raises(WriteFailed, match="merged: cannot be written .*No space left on device"):
        merge_run(run, tmp_path / "merged")
    assert [p.name for p in tmp_path.iterdir() if "merged" in p.name] == []

    monkeypatch.undo()
    from tunelab.export.merge import saved_bytes, shapes_only

    for dtype in (torch.float32, torch.bfloat16):  # measured from the shapes alone, before the merge
        out = tmp_path / f"merged-{dtype}"
        merge_run(run, out, dtype=dtype)
        on_disk = sum(p.stat().st_size for p in out.iterdir())
        shapes = shapes_only(run)  # the tokenizer's files are estimated at 256 bytes a token: no less than they take
        assert on_disk <= saved_bytes(shapes, dtype) <= on_disk + 256 * shapes.config.vocab_size + 2**20


def test_a_merge_without_room_is_refused_before_the_merge(lora_run, tmp_path, monkeypatch):
    """The room was measured on the merged model, so a disk without it was said only after the minutes the merge
    of a large model takes (loading the base, folding every adapter in). It is now measured from the model's config
    before anything is loaded: the merge never starts, and nothing is written."""
    import tunelab.atomic
    import tunelab.export.merge
    from tunelab.errors import WriteFailed

    def no_merge(*args, **kwargs):
        raise AssertionError("the merge ran before the room was checked")

    run, _ = lora_run
    real = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(tunelab.atomic.shutil, "disk_usage", lambda _: real._replace(free=1000))
    monkeypatch.setattr(tunelab.export.merge, "merged_model", no_merge)
    with pytest.raises(WriteFailed, match=r"merged: the merged model needs about \d.* on its disk, which has 0.0 MB"):
        merge_run(run, tmp_path / "merged")
    assert list(tmp_path.iterdir()) == [tmp_path / "run"]


def test_a_model_transformers_cannot_build_from_its_config_is_measured_after_the_merge(lora_run, tmp_path, monkeypatch):
    """The room is measured from the model built on the meta device; a model transformers cannot build from its
    config alone (a class its auto-mapping lacks) must still merge, measured once merged, and a full disk still be
    refused then."""
    import transformers

    import tunelab.atomic
    from tunelab.errors import WriteFailed

    def cannot(*args, **kwargs):
        raise ValueError("Unrecognized configuration class for this kind of AutoModel")

    run, _ = lora_run
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_config", cannot)
    merge_run(run, tmp_path / "merged")
    assert (tmp_path / "merged" / "config.json").exists()
    real = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(tunelab.atomic.shutil, "disk_usage", lambda _: real._replace(free=1000))
    with pytest.raises(WriteFailed, match=r"merged-2: the merged model needs about \d"):
        merge_run(run, tmp_path / "merged-2")
    assert not (tmp_path / "merged-2").exists()
