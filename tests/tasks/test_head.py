"""The head on the last real token: pooling with padding, fast body against the transformers body, packing refused."""

import shlex

import pytest
import torch
from transformers import LlamaForCausalLM

from tunelab.config import load_config
from tunelab.config.flags import CLI, PYTHON
from tunelab.errors import ConfigError
from tunelab.kernels import select as select_ops
from tunelab.models.hf_adapter import from_hf_model
from tunelab.tasks import get_task
from tunelab.tasks.head import SequenceClassifier, attach_head, last_token_index, new_score
from tunelab.training.build import BuiltModel


@pytest.fixture
def hf_model(tiny_llama_config):
    """The tiny Llama with a 300-token vocabulary and an untied LM head, in eval mode."""
    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_llama_config(vocab_size=300, tie_word_embeddings=False)).eval()


def _built(model, impl):
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return BuiltModel(model, impl, model.config, torch.device("cpu"), torch.float32, trainable, total)


def test_last_token_index_with_right_and_left_padding():
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    left = torch.tensor([[0, 0, 1, 1, 1], [0, 0, 0, 0, 1]])
    assert last_token_index(right).tolist() == [2, 4, 0]
    assert last_token_index(left).tolist() == [4, 4]


@pytest.mark.parametrize("impl", ["generic", "fast"])
def test_a_right_padded_row_gets_the_logits_it_gets_alone(hf_model, impl):
    lm = from_hf_model(hf_model, select_ops("auto")) if impl == "fast" else hf_model
    built = _built(lm, impl)
    attach_head(built, 3, seed=7)
    model = built.model.eval()
    rows = [[5, 17, 42, 9, 100, 7], [8, 3], [250, 11, 12]]
    width = max(map(len, rows))
    ids = torch.zeros(len(rows), width, dtype=torch.long)  # pad id 0, which also occurs inside no row
    mask = torch.zeros_like(ids)
    for b, row in enumerate(rows):
        ids[b, : len(row)] = torch.tensor(row)
        mask[b, : len(row)] = 1
    positions = torch.arange(width).expand(len(rows), width)
    with torch.no_grad():
        batched = model(ids, mask, positions)
        alone = torch.cat([model(torch.tensor([r]), torch.ones(1, len(r), dtype=torch.long)) for r in rows])
        # the head reads the last real token's hidden state and nothing else
        hidden = model.hidden_states(torch.tensor([rows[0]]), torch.ones(1, 6, dtype=torch.long))[0, -1]
    assert batched.shape == (3, 3) and batched.dtype == torch.float32
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batched[0], model.score(hidden), rtol=1e-5, atol=1e-6)


def test_fast_and_generic_bodies_give_the_same_logits(hf_model):
    generic, fast = _built(hf_model, "generic"), _built(from_hf_model(hf_model, select_ops("auto")), "fast")
    for built in (generic, fast):
        attach_head(built, 4, seed=3)
    ids = torch.tensor([[5, 17, 42, 9], [8, 3, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    with torch.no_grad():
        a, b = generic.model.eval()(ids, mask), fast.model.eval()(ids, mask)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)  # two implementations of the same fp32 maths


def test_the_head_replaces_the_lm_head_and_trains(hf_model):
    for p in hf_model.parameters():
        p.requires_grad_(False)
    built = _built(hf_model, "generic")
    before = built.total
    attach_head(built, 5, seed=1)
    names = {n for n, _ in built.model.named_parameters()}
    assert "score.weight" in names and not any("lm_head" in n for n in names)
    assert all(n.startswith(("model.", "score.")) for n in names)  # transformers' *ForSequenceClassification names
    assert built.trainable == 5 * 64 == sum(p.numel() for p in built.model.parameters() if p.requires_grad)
    assert built.total == before - 300 * 64 + 5 * 64  # the untied LM head is gone


def test_the_initial_head_is_a_function_of_the_seed():
    a, b, c = new_score(8, 2, 5, 0.02, "cpu"), new_score(8, 2, 5, 0.02, "cpu"), new_score(8, 2, 6, 0.02, "cpu")
    assert torch.equal(a.weight, b.weight) and not torch.equal(a.weight, c.weight)


@pytest.mark.parametrize("task", ["classify", "reward"])
def test_packing_is_refused(task, tmp_path):
    cfg = load_config(None, {"task": task, "data.train": [str(tmp_path / "x.jsonl")], "data.packing": True}).config
    with pytest.raises(ConfigError, match="data.packing.*last token"):
        get_task(task).build_data(cfg, None, 0)


@pytest.mark.parametrize("task", ["classify", "reward"])
def test_eval_questions_are_refused(task, tmp_path):
    """Questions answered by generation after training: a head run generates nothing, so it is said before loading;
    the way to score held-out rows is named as the caller gives it, the command or the Python call, not both."""
    over = {"task": task, "data.train": [str(tmp_path / "x.jsonl")], "eval.questions": str(tmp_path / "q.jsonl")}
    over["output_dir"] = str(tmp_path / "my run")  # the run's directory: named, not a placeholder
    with pytest.raises(ConfigError, match="eval.questions") as err:
        get_task(task, spelling=CLI).build_data(load_config(None, over).config, None, 0)
    assert f"`tunelab eval {shlex.quote(over['output_dir'])} --data FILE`" in str(err.value)
    assert "evaluate(" not in str(err.value) and "RUN_DIR" not in str(err.value)
    with pytest.raises(ConfigError, match="eval.questions") as err:
        get_task(task, spelling=PYTHON).build_data(load_config(None, over).config, None, 0)
    assert f"tunelab.evaluate({over['output_dir']!r}, data=FILE)" in str(err.value)
    assert "tunelab eval " not in str(err.value)


def test_a_checks_refusal_of_eval_questions_names_the_callers_way_to_score(tiny_model_dir, tmp_path, cli_flags, capsys):
    """tunelab check and tunelab.check read the config as train does: each names only its own way to score rows."""
    import tunelab
    from tunelab.cli import main

    rows = tmp_path / "labels.jsonl"
    rows.write_text("".join(f'{{"text": "row {i}", "label": "{"ab"[i % 2]}"}}\n' for i in range(8)))
    over = {
        "task": "classify",
        "model.name": str(tiny_model_dir),
        "data.train": [str(rows)],
        "eval.questions": str(rows),
        "output_dir": str(tmp_path / "my run"),
    }
    assert main(["check", "--data-only", *cli_flags(over)]) == 2
    err = capsys.readouterr().err
    # the run's own directory (output_dir), not a placeholder, for each caller
    assert f"`tunelab eval {shlex.quote(over['output_dir'])} --data FILE`" in err and "evaluate(" not in err
    with pytest.raises(ConfigError) as raised:
        tunelab.check(None, over, model=False)
    assert f"tunelab.evaluate({over['output_dir']!r}, data=FILE)" in str(raised.value)
    assert "tunelab eval " not in str(raised.value) and "RUN_DIR" not in err


@pytest.mark.parametrize("task", ["classify", "reward"])
def test_federate_says_it_covers_sft(task):
    pytest.importorskip("flwr")
    from tunelab.federated.run import check_config

    with pytest.raises(ConfigError, match=f"option 'task' is {task}; a federation trains task sft"):
        check_config(load_config(None, {"task": task}).config)


def test_sequence_classifier_keeps_the_body_under_transformers_name():
    body = torch.nn.Linear(2, 2)
    model = SequenceClassifier(body, torch.nn.Linear(2, 1), prefix="transformer")
    assert model.body is body and {n for n, _ in model.named_parameters()} >= {"transformer.weight", "score.weight"}
