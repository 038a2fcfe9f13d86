"""`tunelab check` of a federated config names the untrained rows `tunelab federate` repairs: those of every token
the tokenizer has (the server never sees the clients' data), not only those of the tokens the first client uses."""

import json

import pytest
import yaml

from tunelab.cli import main


@pytest.fixture(scope="module")
def two_zero_rows(tmp_path_factory, tiny_model_dir):
    """The tiny model with zero embedding rows for <|im_start|> (in every chat row) and for a token no row holds:
    (its folder, the unused token's text)."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    unused = len(tokenizer) - 1  # the last token: no box question holds it
    with torch.no_grad():
        model.model.embed_tokens.weight[tokenizer.convert_tokens_to_ids("<|im_start|>")] = 0.0
        model.model.embed_tokens.weight[unused] = 0.0
    path = tmp_path_factory.mktemp("two-zero-rows")
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path, tokenizer.decode([unused])


def test_check_names_the_untrained_rows_federate_repairs(two_zero_rows, tmp_path, capsys):
    """check named only <|im_start|> (the rows the first client's data uses), while federate repaired both rows."""
    from tunelab.config import load_config
    from tunelab.federated.local import untrained_rows
    from tunelab.models.load import load_tokenizer, resolve_source
    from tunelab.training.build import build_model

    model_dir, unused = two_zero_rows
    for i in range(2):
        rows = [
            {"question": f"Code of box {k}?", "answer": f"Box {k} has code {1000 + k}."}
            for k in range(10 * i, 10 * i + 10)
        ]
        (tmp_path / f"site{i}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = {
        "output_dir": "run",
        "model": {"name": str(model_dir)},
        "data": {"max_length": 64},
        "method": {"r": 4},
        "train": {"lr": 1e-3},
        "federated": {"clients": ["site0.jsonl", "site1.jsonl"], "rounds": 2, "local_steps": 3},
    }
    path = tmp_path / "federate.yaml"
    path.write_text(yaml.safe_dump(config))

    cfg = load_config(path).config  # what federate's server and every client repair
    source = resolve_source(cfg.model.name)
    built = build_model(source, cfg.model, cfg.method)
    repaired = untrained_rows(built.model, load_tokenizer(source), cfg.model.fix_untrained_tokens)
    assert sorted(t.text for t in repaired.tokens) == sorted(["<|im_start|>", unused])

    assert main(["check", str(path), "--html", str(tmp_path / "page.html")]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if "untrained tokens:" in line)
    assert line.strip().startswith("[PASS] untrained tokens: 2 tokens of the tokenizer have untrained rows")
    assert repr(unused) in line and "'<|im_start|>'" in line
    assert "repaired on the server and on every client" in line
