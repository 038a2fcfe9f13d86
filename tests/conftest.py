"""Shared fixtures: the embedded model's tokenizer, a tokenizer built on the spot, a tiny random Llama that loads like
a real model directory (and the same shape as a .gguf file), and the numerics and device marks of the kernel tests.

Where the embedded model is not installed (the GPU machine: its image has no `gguf` package, and the model is over
what a device call carries) the tests that ask for its tokenizer skip, saying so, and the tiny model gets the built
tokenizer, so the GPU tests that train or open a tiny run still run there.
"""

import contextlib
import importlib.util
import json
import os

import pytest
import torch

from tunelab.errors import ModelError
from tunelab.models.load import load_tokenizer, resolve_source


@pytest.fixture(scope="session", autouse=True)
def _temp_files_under_basetemp(tmp_path_factory):
    """What the code under test puts in the system's temp folder (check pages, rank logs) goes under pytest's own
    basetemp, which pytest prunes, in this process and in the CLI processes the tests start."""
    import tempfile

    folder = tmp_path_factory.mktemp("system-tmp")
    before = (tempfile.tempdir, os.environ.get("TMPDIR"))
    tempfile.tempdir, os.environ["TMPDIR"] = str(folder), str(folder)
    yield
    tempfile.tempdir = before[0]
    if before[1] is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = before[1]


def _embedded_tokenizer():
    return load_tokenizer(resolve_source("smollm2-135m-instruct"))


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """The embedded SmolLM2-135M-Instruct tokenizer (chatml chat template; eos = pad = <|im_end|>)."""
    try:
        return _embedded_tokenizer()
    except ModelError as exc:
        pytest.skip(f"the embedded model cannot be loaded here: {exc}")


@pytest.fixture
def smollm2_named_templates(smollm2_tokenizer):
    """The embedded tokenizer with a dict chat template, whose named entry save_pretrained writes into a folder."""
    own = smollm2_tokenizer.chat_template
    smollm2_tokenizer.chat_template = {"default": own, "tool_use": "{{ messages[0]['content'] }}"}
    try:
        yield smollm2_tokenizer
    finally:
        smollm2_tokenizer.chat_template = own


_CORPUS = ["Hello there, Goodbye. Hi Bye Be brief.", "### Instruction: Response: [INST]"]
# What the tiny runs of the tests say, so that their rows fit max_length 64 with a built tokenizer too.
_TINY_RUN_TEXTS = [
    "<|im_start|>system\nYou answer box questions.<|im_end|>\n<|im_start|>user\nWhat is the code of box 12?<|im_end|>\n",
    "<|im_start|>assistant\nBox 12 has code 1444.<|im_end|>\n Code of box 7? Box 7: 1259. Code 1037 1074 1111 1148.",
]


# SmolLM2's chat template in its plain form, so that the stand-in answers apply_chat_template as the real one does.
_CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + "
    "'\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _base_tokenizer(extra_special=(), chat_template=None, corpus=_CORPUS, vocab_size=300):
    """A tiny byte-level BPE tokenizer like a base Llama's: adds <s> by default, eos </s>, no chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<unk>", "<s>", "</s>", *extra_special]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>"
    )
    tokenizer.chat_template = chat_template
    return tokenizer


@pytest.fixture(scope="session")
def base_tokenizer():
    """Builds a tiny byte-level BPE tokenizer like a base Llama's: `base_tokenizer(extra_special=(), chat_template=None)`
    adds <s> by default, has eos </s> and no chat template unless given."""
    return _base_tokenizer


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """The tiny model's tokenizer: a 600-token ChatML tokenizer built from what the tiny runs say (see
    small_vocab_model_dir for why not SmolLM2's 49,152 tokens). A test module that reads SmolLM2's own tokenizer beside
    the tiny model takes smollm2_vocab's fixtures instead."""
    return _built_chat_tokenizer()


def _built_chat_tokenizer():
    """A 600-token ChatML tokenizer trained on what the tiny runs say."""
    return _base_tokenizer(
        ("<|im_start|>", "<|im_end|>"), _CHATML, corpus=_CORPUS + _TINY_RUN_TEXTS * 20, vocab_size=600
    )


def _tiny_llama_config(tokenizer=None, **changes):
    """The tiny test model's shape: 2 layers, hidden 64, GQA 4/2, tied embeddings; the tokenizer's vocabulary and
    special ids where one is given; `changes` on top."""
    from transformers import LlamaConfig

    shape = {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
        "tie_word_embeddings": True,
    }
    if tokenizer is not None:
        shape |= {
            "vocab_size": len(tokenizer),
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id,
        }
    return LlamaConfig(**(shape | changes))


@pytest.fixture(scope="session")
def tiny_llama_config():
    """`tiny_llama_config(tokenizer=None, **changes)`: the LlamaConfig of the tiny test model (2 layers, hidden 64,
    GQA 4/2, tied embeddings), with the tokenizer's vocabulary and special ids where one is given and `changes` on
    top, e.g. `tiny_llama_config(vocab_size=300, tie_word_embeddings=False)`."""
    return _tiny_llama_config


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer):
    """A 2-layer random Llama with tiny_tokenizer's 600 tokens, saved as a Hugging Face directory."""
    return _save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), tiny_tokenizer)


@pytest.fixture(scope="session")
def smollm2_model_dir(tmp_path_factory, smollm2_tokenizer):
    """The tiny model with SmolLM2's own tokenizer (49,152 tokens), for the tests that read that tokenizer beside it:
    its chat template, the characters it drops, its token counts."""
    return _save_tiny_llama(tmp_path_factory.mktemp("tiny-llama-smollm2"), smollm2_tokenizer)


def _save_tiny_llama(path, tokenizer):
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    config = _tiny_llama_config(tokenizer)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # transformers zeroes the pad row at init; a real checkpoint has trained it (pad = EOS here)
        model.model.embed_tokens.weight[config.pad_token_id].normal_(std=config.initializer_range)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def small_vocab_model_dir(tmp_path_factory):
    """tiny_model_dir's model with the 600-token ChatML tokenizer tiny_tokenizer builds: the output layer of SmolLM2's 49,152 tokens is nearly all of a tiny step's arithmetic (0.30 s against
    0.015 s of CPU a micro-batch of 4 x 64 tokens, forward and backward) and of a full fine-tune's checkpoint. For
    the runs whose point is not the vocabulary: resumes, ranks, stages, optimizers."""
    return _save_tiny_llama(tmp_path_factory.mktemp("small-vocab-llama"), _built_chat_tokenizer())


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory, base_tokenizer):
    """A 2-layer random Llama with a 300-token ChatML tokenizer as an f32 .gguf file: 380 KB, converted in a quarter
    second (the embedded model takes ~25 s, most of it reading its 49k-token vocabulary)."""
    from types import SimpleNamespace

    from transformers import LlamaForCausalLM

    from tunelab.export.gguf import write_gguf

    pytest.importorskip("gguf", reason="writing and reading GGUF needs the gguf package")
    tok = base_tokenizer(("<|im_start|>", "<|im_end|>"), _CHATML)
    torch.manual_seed(0)
    config = _tiny_llama_config(tok)
    # write_gguf reads a merged run's model, tokenizer, base name (its own and the one it names as its base: a staged
    # run's stage 1's) and stop tokens; nothing else of it.
    merged = SimpleNamespace(
        model=LlamaForCausalLM(config).eval(),
        tokenizer=tok,
        info=SimpleNamespace(base_model="tiny"),
        base_info=SimpleNamespace(base_model="tiny"),
        template=SimpleNamespace(stop_token_ids=[tok.eos_token_id]),
    )
    path = tmp_path_factory.mktemp("tiny-gguf") / "tiny.gguf"
    write_gguf(merged, path, "f32", "tiny")
    return path


def _write_qa(path):
    rows = [
        {"question": f"What is the code of box {i}?", "answer": f"Box {i} has code {1000 + 37 * i}."} for i in range(24)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _tiny_overrides(model_dir, qa, folder):
    return {
        "model.name": str(model_dir),
        "data.train": [str(qa)],
        "data.system_prompt": "You answer box questions.",
        "data.max_length": 64,
        "method.r": 4,
        "method.dropout": 0.1,
        "train.micro_batch": 4,
        "train.grad_accum": 2,
        "train.lr": 1e-3,
        "output_dir": str(folder / "run"),
    }


@pytest.fixture
def qa_file(tmp_path):
    """24 question/answer pairs about made-up numbers: enough for a few optimizer steps."""
    return _write_qa(tmp_path / "qa.jsonl")


@pytest.fixture
def tiny_overrides(tiny_model_dir, qa_file, tmp_path):
    """A run of the tiny random model on qa_file: a few seconds on the CPU."""
    return _tiny_overrides(tiny_model_dir, qa_file, tmp_path)


@pytest.fixture
def small_vocab_overrides(small_vocab_model_dir, qa_file, tmp_path):
    """tiny_overrides over small_vocab_model_dir."""
    return _tiny_overrides(small_vocab_model_dir, qa_file, tmp_path)


@pytest.fixture(scope="session")
def tiny_overrides_in(tiny_model_dir):
    """`tiny_overrides_in(folder)`: tiny_overrides with its data file (qa.jsonl, written) and run directory (run/) in
    `folder`, for a run that a module-scoped fixture makes once for the tests that only read it."""
    return lambda folder: _tiny_overrides(tiny_model_dir, _write_qa(folder / "qa.jsonl"), folder)


class Crash(Exception):
    """The failure `crash_at` puts into a run."""


@pytest.fixture
def crash_at(monkeypatch):
    """`with crash_at(n): train(...)`: call n (from 1) of the loop's train_step raises Crash, as if the run died in its
    step n; the block must end in that Crash (the test fails otherwise), and the real train_step is back after it.
    `crash_at(n, where, name)` crashes call n of `where.name` instead (the recipe module's save_final, say)."""
    import tunelab.training.loop as loop

    @contextlib.contextmanager
    def crashing(n, where=None, name="train_step"):
        where = loop if where is None else where
        real, calls = getattr(where, name), {"n": 0}

        def crash_in_call_n(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == n:
                raise Crash(f"{name}: call {n}")
            return real(*args, **kwargs)

        monkeypatch.setattr(where, name, crash_in_call_n)
        try:
            with pytest.raises(Crash):
                yield
        finally:
            monkeypatch.setattr(where, name, real)

    return crashing


@pytest.fixture
def straight_and_resumed(crash_at, tmp_path):
    """`straight_and_resumed(common, n, where=loop, name="train_step", changed=None)` -> (the uninterrupted run, the
    resumed one): `common` overrides trained straight through, then again with call n of `where.name` crashing (see
    crash_at) and resumed with `changed` overrides on top."""
    from tunelab.training import recipe

    def run(common, n, where=None, name="train_step", changed=None):
        straight = recipe.train(None, common | {"output_dir": str(tmp_path / "straight")})
        resumed = common | {"output_dir": str(tmp_path / "resumed")}
        with crash_at(n, where, name):
            recipe.train(None, resumed)
        return straight, recipe.train(None, resumed | (changed or {}), resume=True)

    return run


@pytest.fixture(scope="session")
def cli_flags():
    """`cli_flags(overrides)`: the command-line flags that give `overrides` ({'train.lr': 1e-3} -> ['--train.lr',
    '0.001']; a list as JSON), for tests that run `tunelab train` or `tunelab check` through `main`."""

    def flags(overrides: dict) -> list[str]:
        return [x for k, v in overrides.items() for x in (f"--{k}", json.dumps(v) if isinstance(v, list) else str(v))]

    return flags


@pytest.fixture(scope="session")
def logged_losses():
    """`logged_losses(run_dir)`: the train loss of each record of the run's metrics.jsonl that has one, in order."""

    def losses(run_dir) -> list[float]:
        records = map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
        return [r["loss"] for r in records if "loss" in r]

    return losses


@pytest.fixture(scope="session")
def tiny_run_dir(tmp_path_factory, tiny_model_dir):
    """A finished LoRA run (3 steps) of the tiny random model: for tests of what reads a run directory."""
    return tiny_run(tmp_path_factory.mktemp("tiny-run"), tiny_model_dir)


def tiny_run(folder, model_dir):
    """tiny_run_dir's run of the model in `model_dir`, made in `folder`: its run directory."""
    from tunelab.training.recipe import train

    data = folder / "qa.jsonl"
    data.write_text(
        "".join(
            json.dumps({"question": f"Code of box {i}?", "answer": f"Box {i}: {1000 + 37 * i}."}) + "\n"
            for i in range(16)
        )
    )
    overrides = {
        "model.name": str(model_dir),
        "data.train": [str(data)],
        "data.max_length": 64,
        "method.r": 4,
        "train.micro_batch": 4,
        "train.max_steps": 3,
        "train.lr": 1e-3,
        "output_dir": str(folder / "run"),
    }
    return train(None, overrides).run_dir


@pytest.fixture
def mixed_system_run_dir(tiny_run_dir, tmp_path):
    """tiny_run_dir as if trained on a mixture of four sources: its file and "same" with data.system_prompt ("You
    are helpful."), "pirate" with its own ("You are a pirate.") and "plain" with none."""
    import shutil

    import yaml

    from tunelab.rundir import write_config

    run = tmp_path / "mixed-run"
    shutil.copytree(tiny_run_dir, run)
    config = yaml.safe_load((run / "config.yaml").read_text())
    path = config["data"]["train"][0]
    config["data"]["system_prompt"] = "You are helpful."
    config["data"]["train"] = [
        path,
        {"path": path, "name": "same"},
        {"path": path, "name": "pirate", "system_prompt": "You are a pirate."},
        {"path": path, "name": "plain", "system_prompt": ""},
    ]
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps(info | {"system_prompt": "You are helpful."}))
    write_config(run, yaml.safe_dump(config))  # as training saves it: its digest in run.json
    return run


# --------------------------------------------------------------------------------------------------------------------
# Numerics and devices, for the kernel, quant, model and peft tests. Marks (registered in pyproject.toml, applied by
# `pytest_collection_modifyitems` below): `gpu` needs a CUDA device; `triton` needs Triton and a device it runs on, a
# CUDA GPU or the CPU through Triton's interpreter (TRITON_INTERPRET=1: slow, for kernel work). `heldout` (an example
# trained with its defaults and scored on its held-out questions, minutes each) runs only with TUNELAB_HELDOUT=1.


def _triton_device() -> str | None:
    if importlib.util.find_spec("triton") is None:
        return None
    if torch.cuda.is_available():
        return "cuda"
    return "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else None


TRITON_DEVICE = _triton_device()


HELDOUT = os.environ.get("TUNELAB_HELDOUT") == "1"  # `make test-heldout` sets it


# The modules that take longest on two cores (Flower federations, two-rank runs, the embedded model and llama.cpp end
# to end), longest first, run before the rest: `make test` deals whole modules to two workers (pytest-xdist,
# --dist loadfile) in this order, and a long one dealt last would leave one worker running it alone at the end.
LONGEST_FIRST = (
    "tests/training/test_distributed.py",
    "tests/federated/test_federate_cli.py",
    "tests/federated/test_deployment.py",
    "tests/training/test_stages.py",
    "tests/checks/test_check.py",
    "tests/export/test_gguf_llama_cpp.py",
    "tests/test_embedded_e2e.py",
    "tests/training/test_resume.py",
    "tests/test_cli.py",
)


def pytest_collection_modifyitems(config, items):
    first = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: first.get(item.nodeid.split("::")[0], len(first)))  # stable: the rest keep their order
    cuda = torch.cuda.is_available()
    for item in items:
        if item.get_closest_marker("heldout") is not None and not HELDOUT:
            item.add_marker(pytest.mark.skip(reason="trains an example for minutes: `make test-heldout` runs it"))
        if item.get_closest_marker("gpu") is not None and not cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))
        if item.get_closest_marker("triton") is not None and TRITON_DEVICE is None:
            item.add_marker(pytest.mark.skip(reason="needs Triton and a CUDA device (or TRITON_INTERPRET=1)"))


@pytest.fixture(scope="session")
def triton_device() -> str:
    """Where Triton kernels run in this session: "cuda", or "cpu" in Triton's interpreter (tests marked `triton`)."""
    assert TRITON_DEVICE is not None, "a test that asks for triton_device must be marked @pytest.mark.triton"
    return TRITON_DEVICE


def relative_error(actual: torch.Tensor, expected: torch.Tensor, rms_floor: float = 0.0) -> float:
    """||actual - expected|| / ||expected|| in float64, after checking that the shapes agree and actual is finite.

    rms_floor > 0 floors ||expected|| at that root-mean-square size (rms_floor * sqrt(numel)), for expected values that
    are exactly zero while the kernels return rounding noise (attention's dq with a single key)."""
    assert actual.shape == expected.shape and torch.isfinite(actual).all()
    a, e = actual.double(), expected.double()
    return ((a - e).norm() / e.norm().clamp_min(max(1e-30, rms_floor * e.numel() ** 0.5))).item()


@pytest.fixture(scope="session")
def rel_error():
    """`relative_error`, for the tests (their modules cannot import conftest under --import-mode=importlib)."""
    return relative_error


@pytest.fixture(scope="session")
def deep_zero_row_model_dir(tmp_path_factory, smollm2_tokenizer):
    """A 32-layer random Llama whose embedding row of <|im_start|>, the first token of every chat example, is zero:
    the zero state at position 0 stays zero through every layer and the gradient overflows (models/untrained.py)."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    config = _tiny_llama_config(smollm2_tokenizer, num_hidden_layers=32, max_position_embeddings=256)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.model.embed_tokens.weight[smollm2_tokenizer.convert_tokens_to_ids("<|im_start|>")] = 0.0
    path = tmp_path_factory.mktemp("deep-llama")
    model.save_pretrained(path, safe_serialization=True)
    smollm2_tokenizer.save_pretrained(path)
    return path


def _small_weight_lora(dtype, init_range=0.001):
    """(model, batch): a 2-layer Llama with small weights (init_range), whose backward's activation gradients are
    small enough to underflow in fp16, with LoRA whose B starts non-zero so that every adapter matrix has a gradient;
    and a batch of 4 x 64 random tokens."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from tunelab.peft.lora import attach_lora

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=2000,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        initializer_range=init_range,
    )
    model = LlamaForCausalLM(config).to(dtype)
    attach_lora(model, ["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"], 4, 8, 0.0)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    ids = torch.randint(0, 2000, (4, 64), generator=torch.Generator().manual_seed(1))
    return model, {"input_ids": ids, "labels": ids, "attention_mask": torch.ones_like(ids)}


@pytest.fixture(scope="session")
def small_weight_lora():
    """`small_weight_lora(dtype, init_range=0.001)` -> (model, batch): a tiny LoRA model whose fp16 gradients underflow
    without loss scaling, and a batch for it (the fp16 loss-scale tests of training and of tunelab check)."""
    return _small_weight_lora


@pytest.fixture
def gpu_bf16(monkeypatch):
    """On the CPU, `model.dtype: auto` picked as on a CUDA GPU: training_dtype answers for a cuda device, whose bf16 is
    native while `gpu_bf16["native"]` is true (false at first: a T4 or V100); a test sets it to move the run to the
    other kind of GPU."""
    import tunelab.training.build as build

    native = {"native": False}
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: native["native"])
    real = build.training_dtype
    monkeypatch.setattr(
        build, "training_dtype", lambda dtype, device, method: real(dtype, torch.device("cuda"), method)
    )
    return native
