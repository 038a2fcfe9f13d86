"""Untrained token rows: found for the tokens the data uses, repaired to the mean of the trained rows, recorded in
run.json and repeated when the run is opened; on a deep model the repair is the difference between a finite run and
NaN (stopped by the guard with exit code 3)."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

from tunelab.cli import main
from tunelab.data.render import Rendered
from tunelab.models.untrained import (
    UntrainedReport,
    UntrainedToken,
    find_untrained,
    repair_rows,
    token_counts,
    untrained_mask,
)
from tunelab.training.recipe import train


def test_rows_far_below_the_trained_norm_are_found_only_for_used_tokens(smollm2_tokenizer):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        tie_word_embeddings=False,
    )  # fmt: skip
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.model.embed_tokens.weight[5] = 0.0  # all zero
        model.model.embed_tokens.weight[6] *= 1e-20  # Llama-3 style: tiny, not zero
        model.model.embed_tokens.weight[7] = 0.0  # untrained, but the data never uses it
        model.lm_head.weight[5] = 0.0
        model.lm_head.weight[9] *= 0.3  # small but trained
    rows = [Rendered([5, 6, 9, 9, 10], [-100] * 5, "d.jsonl", 1), Rendered([5, 11], [-100, 11], "d.jsonl", 2)]
    counts = token_counts(rows, 64)
    assert counts[5] == 2 and counts[9] == 2 and counts[7] == 0
    found = find_untrained(model, counts, smollm2_tokenizer)
    assert [(t.id, t.count, t.matrices) for t in found] == [
        (5, 2, ["embed_tokens", "lm_head"]),
        (6, 1, ["embed_tokens"]),
    ]
    report = UntrainedReport(found, repaired=True)
    assert report.rows() == {"embed_tokens": [5, 6], "lm_head": [5]}
    assert "repaired" in report.summary() and "(id 5, 2x, embed_tokens+lm_head)" in report.summary()

    embed = model.model.embed_tokens.weight
    mean = embed[~untrained_mask(embed)].mean(0)
    repair_rows(model, report.rows())
    assert torch.equal(embed[5], mean) and torch.equal(embed[6], mean)
    assert embed[7].abs().sum() == 0  # not used by the data: left as it is
    head = model.lm_head.weight
    assert torch.allclose(head[5], head[torch.arange(64) != 5].mean(0))
    assert not untrained_mask(embed)[[5, 6]].any()


def _deep_overrides(model_dir, qa_file, tmp_path):
    return {
        "model.name": str(model_dir),
        "data.train": [str(qa_file)],
        "data.max_length": 64,
        "method.r": 4,
        "train.micro_batch": 4,
        "train.max_steps": 2,
        "output_dir": str(tmp_path / "run"),
    }


@pytest.mark.slow
def test_deep_model_with_an_untrained_row_stops_with_exit_3_without_the_repair(
    deep_zero_row_model_dir, qa_file, tmp_path, capsys, cli_flags
):
    overrides = _deep_overrides(deep_zero_row_model_dir, qa_file, tmp_path) | {
        "model.fix_untrained_tokens": "false",
        "train.max_bad_steps": 2,
    }
    args = ["train", *cli_flags(overrides)]
    assert main(args) == 3
    captured = capsys.readouterr()
    assert "'<|im_start|>' (id 1" in captured.out and "NOT repaired" in captured.out
    assert "training stopped at step 2 of 2" in captured.err and "qa.jsonl:" in captured.err
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["skipped"] for r in records) and len(records) == 2


@pytest.mark.slow
def test_deep_model_trains_finite_with_the_repair_and_inference_sees_the_repaired_rows(
    deep_zero_row_model_dir, qa_file, tmp_path, smollm2_tokenizer
):
    from tunelab.export.merge import merge_run
    from tunelab.infer.run import open_run

    result = train(None, _deep_overrides(deep_zero_row_model_dir, qa_file, tmp_path))
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert result.skipped_steps == 0 and len(records) == 2
    assert all(r["loss"] == r["loss"] and r["grad_norm"] == r["grad_norm"] for r in records)
    im_start, im_end = (smollm2_tokenizer.convert_tokens_to_ids(t) for t in ("<|im_start|>", "<|im_end|>"))
    info = json.loads((result.run_dir / "run.json").read_text())
    assert info["fixed_untrained_tokens"] == {"embed_tokens": [im_start, im_end]} or info["fixed_untrained_tokens"] == {
        "embed_tokens": [im_end, im_start]
    }

    run = open_run(result.run_dir, device="cpu")
    embed = run.model.get_input_embeddings().weight
    assert embed[im_start].abs().sum() > 0 and torch.equal(embed[im_start], embed[im_end])  # both are the mean
    merged = merge_run(result.run_dir, tmp_path / "merged")
    weights = load_file(merged / "model.safetensors")
    assert torch.equal(weights["model.embed_tokens.weight"][im_start], embed[im_start])  # merges (and GGUF) carry it


@pytest.fixture
def zero_row_tiny_dir(tiny_model_dir, tiny_tokenizer, tmp_path):
    """The tiny model with the embedding row of <|im_start|>, which every chat example starts with, set to zero."""
    model = LlamaForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with torch.no_grad():
        model.model.embed_tokens.weight[tiny_tokenizer.convert_tokens_to_ids("<|im_start|>")] = 0.0
    model.save_pretrained(tmp_path / "zero-row", safe_serialization=True)
    tiny_tokenizer.save_pretrained(tmp_path / "zero-row")
    return tmp_path / "zero-row"


@pytest.mark.parametrize("method", ["full", "layers"])
def test_the_base_beside_a_full_run_is_loaded_with_the_rows_training_repaired(
    method, zero_row_tiny_dir, qa_file, tmp_path, tiny_tokenizer
):
    """eval and compare of a full or layers run loaded the base for the "base" side without the repair training made,
    so the base answered from a zero row the tuned model never had: not the model the run started from."""
    from tunelab.infer.run import open_run

    overrides = _deep_overrides(zero_row_tiny_dir, qa_file, tmp_path) | {
        "method.name": method,
        "method.top_layers": 1,
        "train.max_steps": 1,
    }
    result = train(None, overrides)
    im_start = tiny_tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert im_start in json.loads((result.run_dir / "run.json").read_text())["fixed_untrained_tokens"]["embed_tokens"]
    saved = LlamaForCausalLM.from_pretrained(zero_row_tiny_dir, dtype=torch.float32).model.embed_tokens.weight
    mean = saved[~untrained_mask(saved)].mean(0)  # what training set the row to
    run = open_run(result.run_dir, device="cpu")
    with run.base_model() as base:
        assert torch.equal(base.get_input_embeddings().weight[im_start], mean) and mean.abs().sum() > 0


def test_the_untrained_head_of_a_full_classify_run_sits_on_the_repaired_base(
    zero_row_tiny_dir, tmp_path, tiny_tokenizer
):
    """`tunelab eval` of a full classify run scored its "untrained head" baseline over the base with the zero row."""
    from tunelab.eval.heads import untrained_model
    from tunelab.infer.predict import open_head_run

    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps({"prompt": f"word {i}", "label": "ab"[i % 2]}) + "\n" for i in range(8)))
    overrides = _deep_overrides(zero_row_tiny_dir, labels, tmp_path) | {
        "task": "classify",
        "method.name": "full",
        "train.max_steps": 1,
    }
    result = train(None, overrides)
    im_start = tiny_tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert im_start in json.loads((result.run_dir / "run.json").read_text())["fixed_untrained_tokens"]["embed_tokens"]
    with untrained_model(open_head_run(result.run_dir, device="cpu")) as model:
        embed = model.body.get_input_embeddings().weight
        assert embed[im_start].abs().sum() > 0


def test_the_untrained_tokens_line_counts_one_token_in_the_singular():
    """One untrained token read "1 token(s) the data uses have untrained rows"."""
    one = UntrainedReport([UntrainedToken(5, "<x>", 2, ["embed_tokens"])])
    assert one.summary().startswith("untrained tokens: 1 token the data uses has untrained rows: ")
    two = UntrainedReport([UntrainedToken(5, "<x>", 2, ["embed_tokens"]), UntrainedToken(6, "<y>", 1, ["lm_head"])])
    assert two.summary().startswith("untrained tokens: 2 tokens the data uses have untrained rows: ")
