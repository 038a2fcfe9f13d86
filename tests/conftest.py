"""Shared fixtures: the embedded model's tokenizer, and a tiny random Llama that loads like a real model directory."""

import json

import pytest
import torch

from tunelab.models.load import load_tokenizer, resolve_source


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """The embedded SmolLM2-135M-Instruct tokenizer (chatml chat template; eos = pad = <|im_end|>)."""
    return load_tokenizer(resolve_source("smollm2-135m-instruct"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smollm2_tokenizer):
    """A 2-layer random Llama with SmolLM2's tokenizer, saved as a Hugging Face directory (safetensors)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(smollm2_tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        eos_token_id=smollm2_tokenizer.eos_token_id,
        pad_token_id=smollm2_tokenizer.pad_token_id,
        bos_token_id=smollm2_tokenizer.bos_token_id,
    )
    model = LlamaForCausalLM(config)
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path, safe_serialization=True)
    smollm2_tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def qa_file(tmp_path):
    """24 question/answer pairs about made-up numbers: enough for a few optimizer steps."""
    path = tmp_path / "qa.jsonl"
    rows = [
        {"question": f"What is the code of box {i}?", "answer": f"Box {i} has code {1000 + 37 * i}."} for i in range(24)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def tiny_overrides(tiny_model_dir, qa_file, tmp_path):
    """A run of the tiny random model on qa_file: a few seconds on the CPU."""
    return {
        "model.name": str(tiny_model_dir),
        "data.train": [str(qa_file)],
        "data.system_prompt": "You answer box questions.",
        "data.max_length": 64,
        "method.r": 4,
        "method.dropout": 0.1,
        "train.micro_batch": 4,
        "train.grad_accum": 2,
        "train.lr": 1e-3,
        "output_dir": str(tmp_path / "run"),
    }


@pytest.fixture(scope="session")
def tiny_run_dir(tmp_path_factory, tiny_model_dir):
    """A finished LoRA run (3 steps) of the tiny random model: for tests of what reads a run directory."""
    from tunelab.training.recipe import train

    folder = tmp_path_factory.mktemp("tiny-run")
    data = folder / "qa.jsonl"
    data.write_text(
        "".join(
            json.dumps({"question": f"Code of box {i}?", "answer": f"Box {i}: {1000 + 37 * i}."}) + "\n"
            for i in range(16)
        )
    )
    overrides = {
        "model.name": str(tiny_model_dir),
        "data.train": [str(data)],
        "data.max_length": 64,
        "method.r": 4,
        "train.micro_batch": 4,
        "train.max_steps": 3,
        "train.lr": 1e-3,
        "output_dir": str(folder / "run"),
    }
    return train(None, overrides).run_dir


@pytest.fixture(scope="session")
def deep_zero_row_model_dir(tmp_path_factory, smollm2_tokenizer):
    """A 32-layer random Llama whose embedding row of <|im_start|>, the first token of every chat example, is zero:
    the zero state at position 0 stays zero through every layer and the gradient overflows (models/untrained.py)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(smollm2_tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=32,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        eos_token_id=smollm2_tokenizer.eos_token_id,
        pad_token_id=smollm2_tokenizer.pad_token_id,
        bos_token_id=smollm2_tokenizer.bos_token_id,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.model.embed_tokens.weight[smollm2_tokenizer.convert_tokens_to_ids("<|im_start|>")] = 0.0
    path = tmp_path_factory.mktemp("deep-llama")
    model.save_pretrained(path, safe_serialization=True)
    smollm2_tokenizer.save_pretrained(path)
    return path
