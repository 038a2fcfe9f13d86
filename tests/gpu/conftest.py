"""Fixtures of the CUDA tests: they skip without a GPU, and need a tokenizer folder (the GPU machine cannot reach a
hub and has no `gguf` package for the embedded model): TUNELAB_GPU_TOKENIZER names it, as written by
scripts/save_gpu_tokenizer.py. Models are built here from configs, with random weights."""

import json
import os
from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def _needs_cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")


@pytest.fixture(scope="session")
def gpu_tokenizer_dir() -> Path:
    folder = os.environ.get("TUNELAB_GPU_TOKENIZER")
    if not folder or not (Path(folder) / "tokenizer.json").is_file():
        pytest.skip("set TUNELAB_GPU_TOKENIZER to a folder from scripts/save_gpu_tokenizer.py")
    return Path(folder)


def build_llama(folder: Path, tokenizer_dir: Path, layers: int, hidden: int, zero_tokens: tuple[str, ...] = ()) -> Path:
    """A random-init Llama of `layers` decoder layers and width `hidden`, saved with the tokenizer as a Hugging Face
    directory. zero_tokens: tokens whose embedding rows are set to zero (untrained rows)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 11 // 4,
        num_hidden_layers=layers,
        num_attention_heads=max(2, hidden // 64),
        num_key_value_heads=max(1, hidden // 128),
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for token in zero_tokens:
            model.model.embed_tokens.weight[tokenizer.convert_tokens_to_ids(token)] = 0.0
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def deep_llama_dir(tmp_path_factory, gpu_tokenizer_dir) -> Path:
    """24 layers, width 256: the depth of the models that trained to NaN, small enough to train in seconds."""
    return build_llama(tmp_path_factory.mktemp("llama24"), gpu_tokenizer_dir, layers=24, hidden=256)


@pytest.fixture
def chat_file(tmp_path) -> Path:
    """8 question/answer pairs of different lengths: one micro-batch, so every step sees the same batch."""
    path = tmp_path / "chat.jsonl"
    rows = [
        {"question": f"What is the code of box {i}?", "answer": f"Box {i} has code {1000 + 37 * i}." + " Yes." * i}
        for i in range(8)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def report(record: dict) -> None:
    """Append a result line for scripts/gpu_train_check.sh's table (TUNELAB_GPU_REPORT)."""
    path = os.environ.get("TUNELAB_GPU_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")


@pytest.fixture(scope="session")
def gpu_report():
    return report


@pytest.fixture(scope="session")
def llama_builder():
    return build_llama


def count_finite_files(run_dir: Path) -> int:
    """How many .safetensors files a run directory holds, each asserted to hold only finite floating-point tensors."""
    from safetensors.torch import load_file

    files = list(run_dir.rglob("*.safetensors"))
    for file in files:
        for name, t in load_file(file).items():
            assert not t.is_floating_point() or torch.isfinite(t).all(), f"{file}: {name}"
    return len(files)


@pytest.fixture(scope="session")
def finite_files():
    return count_finite_files
