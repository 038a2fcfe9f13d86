"""classify.prompt_format and classify.head_lr: validated, applied in training, and kept with the run so that predict,
eval and a plain transformers user read a text as training did."""

import json

import pytest
import torch

import tunelab.training.recipe as recipe
from tunelab.config import load_config
from tunelab.errors import ConfigError
from tunelab.eval.heads import evaluate_head_run
from tunelab.infer.predict import head_outputs, open_head_run, text_input
from tunelab.tasks.head import head_learning_rates
from tunelab.tasks.head_data import Input, pad_rows, render
from tunelab.training.optim import build_optimizer

FORMAT = "Review: {text}\nVerdict:"


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize(
    "over, message",
    [
        ({"task": "classify", "classify.prompt_format": "Review: \nVerdict:"}, "has no {text} placeholder"),
        ({"task": "reward", "classify.prompt_format": "{text} {text}"}, "has more than one {text}"),
        (
            {"task": "sft", "classify.prompt_format": "A: {text}"},
            "is for tasks classify and reward; option 'task' is sft",
        ),
        ({"task": "dpo", "classify.head_lr": 0.01}, "'classify.head_lr' is for tasks classify and reward"),
        ({"task": "classify", "classify.head_lr": -1}, "'classify.head_lr' is -1; it must be >= 0"),
    ],
)
def test_head_options_are_validated(over, message):
    with pytest.raises(ConfigError, match=message.replace("{", r"\{").replace("}", r"\}")):
        load_config(None, over)


def test_a_format_with_a_colon_survives_the_flag_and_the_python_api():
    """Flag values are read as YAML; 'Review: {text}' would be a mapping: a text option keeps the text."""
    cfg = load_config(None, {"task": "classify", "classify.prompt_format": FORMAT}).config
    assert cfg.classify.prompt_format == FORMAT
    cfg = recipe.resolve(cfg).config  # the Python API passes a RunConfig through the same flags
    assert cfg.classify.prompt_format == FORMAT


def test_render_puts_text_inputs_into_the_format_and_only_them(tiny_tokenizer):
    ids = render([Input(text="good {x}")], tiny_tokenizer, None, text_format=FORMAT)
    (expected,) = render([Input(text="Review: good {x}\nVerdict:")], tiny_tokenizer, None)
    assert ids == [expected] and ids != render([Input(text="good {x}")], tiny_tokenizer, None)


def test_the_head_has_its_own_learning_rate_group():
    model = torch.nn.ModuleDict({"model": torch.nn.Linear(4, 4), "score": torch.nn.Linear(4, 2, bias=False)})
    cfg = load_config(None, {"task": "classify", "classify.head_lr": 0.05}).config
    optimizer = build_optimizer(model, 1e-3, 0.01, lrs=head_learning_rates(cfg))
    groups = [(g["lr"], g["weight_decay"], {id(p) for p in g["params"]}) for g in optimizer.param_groups]
    assert groups[0] == (1e-3, 0.01, {id(model["model"].weight)})  # the metrics log param_groups[0]'s lr
    assert (0.05, 0.01, {id(model["score"].weight)}) in groups and (1e-3, 0.0, {id(model["model"].bias)}) in groups
    plain = build_optimizer(model, 1e-3, 0.01, lrs=head_learning_rates(load_config(None, {"task": "classify"}).config))
    assert {g["lr"] for g in plain.param_groups} == {1e-3}


def test_predict_and_eval_read_texts_in_the_run_format(tiny_model_dir, tmp_path):
    words = {"pos": "great lovely fine", "neg": "awful bad sad"}
    rows = [{"text": f"{words[lab].split()[i % 3]} {i}", "label": lab} for i in range(16) for lab in [("pos", "neg")[i % 2]]]  # fmt: skip
    data = _write(tmp_path / "labels.jsonl", rows)
    over = {
        "task": "classify",
        "model.name": str(tiny_model_dir),
        "data.train": [data],
        "method.r": 4,
        "train.micro_batch": 4,
        "train.lr": 5e-3,
        "train.max_steps": 3,
        "classify.prompt_format": FORMAT,
        "classify.head_lr": 5e-2,
        "output_dir": str(tmp_path / "run"),
    }
    run_dir = recipe.train(None, over).run_dir
    run = open_head_run(run_dir, device="cpu")
    assert run.prompt_format == FORMAT
    assert json.loads((run_dir / "config.json").read_text())["prompt_format"] == FORMAT  # for transformers users
    texts = ["great 3", "sad 8"]
    ours, _ = head_outputs(run.model, run, [text_input(run, t) for t in texts])
    formatted = [FORMAT.replace("{text}", t) for t in texts]
    with torch.no_grad():
        by_hand = pad_rows(render([Input(text=t) for t in formatted], run.tokenizer, run.template), 0)
        expected = run.model(by_hand["input_ids"], by_hand["attention_mask"], by_hand["position_ids"])
        raw = pad_rows(render([Input(text=t) for t in texts], run.tokenizer, run.template), 0)
        unformatted = run.model(raw["input_ids"], raw["attention_mask"], raw["position_ids"])
    torch.testing.assert_close(ours, expected)
    assert not torch.allclose(ours, unformatted)  # the format changes what the head sees
    # eval scores the file's rows through the same format: its loss is the cross-entropy of the formatted rows
    result = evaluate_head_run(run_dir, data, device="cpu", save=False)
    with torch.no_grad():
        batch = pad_rows(
            render([Input(text=FORMAT.replace("{text}", r["text"])) for r in rows], run.tokenizer, None), 0
        )
        logits = run.model(batch["input_ids"], batch["attention_mask"], batch["position_ids"])
    targets = torch.tensor([run.labels.index(r["label"]) for r in rows])
    assert result.tuned["eval_loss"] == pytest.approx(
        torch.nn.functional.cross_entropy(logits, targets).item(), rel=1e-5
    )
    predicted = {r["where"]: r["predicted"] for r in result.rows}
    assert predicted == {f"{data}:{i + 1}": run.labels[int(k)] for i, k in enumerate(logits.argmax(dim=-1))}


@pytest.mark.parametrize("impl", ["generic", "fast"])
def test_a_label_word_head_starts_as_the_lm_scores_of_the_label_words(impl, tiny_llama_config):
    """head_init label_words: logit_k = mean over label k's tokens of the LM's next-token logit, at the pooled token."""
    from transformers import LlamaForCausalLM

    from tunelab.kernels import select as select_ops
    from tunelab.models.hf_adapter import from_hf_model
    from tunelab.tasks.head import attach_head
    from tunelab.training.build import BuiltModel

    torch.manual_seed(0)
    config = tiny_llama_config(vocab_size=300, tie_word_embeddings=False)
    hf = LlamaForCausalLM(config).eval()
    lm = from_hf_model(hf, select_ops("auto")) if impl == "fast" else hf
    ids = torch.tensor([[5, 17, 42, 9]])
    with torch.no_grad():
        lm_logits = hf(input_ids=ids).logits[0, -1]  # (V,) the next-token logits after the last token
    built = BuiltModel(lm, impl, config, torch.device("cpu"), torch.float32, 0, 1)
    words = [[7], [11, 12, 13], [250]]
    attach_head(built, 3, seed=1, label_tokens=words)
    with torch.no_grad():
        head = built.model.eval()(ids, torch.ones_like(ids))[0]
    expected = torch.stack([lm_logits[w].mean() for w in words])
    torch.testing.assert_close(head, expected, rtol=1e-4, atol=1e-5)


def test_label_words_without_an_lm_head_name_the_option(monkeypatch):
    """classify.head_init label_words on a model without an LM head stopped with a model error that did not name the
    option as other config errors do."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from tunelab.tasks.head import attach_head
    from tunelab.training.build import BuiltModel

    config = LlamaConfig(
        vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2,
    )  # fmt: skip
    hf = LlamaForCausalLM(config)
    monkeypatch.setattr(hf, "get_output_embeddings", lambda: None)  # a body without a head of its own
    built = BuiltModel(hf, "generic", config, torch.device("cpu"), torch.float32, 0, 1)
    with pytest.raises(ConfigError, match=r"^option 'classify.head_init' is label_words, .* Use classify.head_init"):
        attach_head(built, 2, seed=1, label_tokens=[[7], [11]])


def test_label_words_are_read_with_underscores_as_spaces_and_only_for_classify(tiny_tokenizer):
    from tunelab.tasks.classify import label_words

    assert label_words(tiny_tokenizer, "credit_cards") == tiny_tokenizer.encode(
        " credit cards", add_special_tokens=False
    )
    with pytest.raises(ConfigError, match="'classify.head_init' is for task classify; option 'task' is reward"):
        load_config(None, {"task": "reward", "classify.head_init": "label_words"})
    with pytest.raises(ConfigError, match="allowed values: random, label_words"):
        load_config(None, {"task": "classify", "classify.head_init": "words"})
