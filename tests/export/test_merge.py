"""merge_run: a LoRA run folded into plain weights loads in transformers with the logits of base + adapter; full runs
are re-saved unchanged; the chat template, the system prompt and greedy answering travel; a damaged adapter is
refused; a gone GGUF base is merged from its converted copy; the merged folder has a model card and a record of its
run. Where a merge may write is tested in test_merge_outputs.py."""

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

from ..smollm2_vocab import smollm2_tiny_model_dir, smollm2_tiny_tokenizer  # noqa: F401 (SmolLM2's vocabulary)
from .merge_setup import IDS, write_run


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
    run = write_run(tmp_path / "full", model, smollm2_tokenizer, tiny_model_dir, "full", template="alpaca")
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
    run = write_run(tmp_path / "run", model, smollm2_tokenizer, tiny_model_dir, "full", template, system)
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
    run = write_run(tmp_path / "run", model, smollm2_tokenizer, tiny_model_dir, "full", template, system)
    tok = AutoTokenizer.from_pretrained(merge_run(run, tmp_path / "merged"))
    trained = resolve_template(template, smollm2_tokenizer)
    user = [{"role": "user", "content": "Hi"}]
    expected = trained.render(([{"role": "system", "content": system}] if system else []) + user, True)[0]
    for blank in ("", "  \n"):
        asked = [{"role": "system", "content": blank}, *user]
        written = tok.apply_chat_template(asked, tokenize=False, add_generation_prompt=True)
        assert written == expected
        assert "<|im_start|>system\n<|im_end|>" not in written and "<<SYS>>\n\n<</SYS>>" not in written


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
    run = write_run(tmp_path / "run", model, smollm2_tokenizer, tmp_path / "bf16-base", "lora")
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
    run = write_run(tmp_path / "run", model, AutoTokenizer.from_pretrained(converted), base, "lora")
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
    run = write_run(tmp_path / "run", model, smollm2_tokenizer, base, "lora", template="chatml")
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
