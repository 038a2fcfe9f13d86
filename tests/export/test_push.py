"""tunelab push: what a push would commit to the hub, read off huggingface_hub's HfApi methods replaced by recorders
(no network here): the files of an adapter run, a merged folder and a GGUF export, the card's metadata, refusals
before any request (exit 2), and a failed request as one line with exit 1."""

import json
import shutil
import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
import torch
from huggingface_hub.errors import HfHubHTTPError
from safetensors.torch import load_file, save_file

import tunelab
import tunelab.errors
from tunelab.cli import main
from tunelab.export.card import card_head

from .hub_recorder import TOKEN


@pytest.fixture
def run(tiny_run_dir, tmp_path):
    """A copy of the finished tiny LoRA run, to change."""
    return Path(shutil.copytree(tiny_run_dir, tmp_path / "run"))


def _card(hub) -> str:
    return hub.files["README.md"].decode()


def test_an_adapter_run_pushes_its_adapter_tokenizer_and_card(run, hub, capsys):
    assert main(["push", str(run), "--repo", "alice/tiny-box", "--revision", "exp"]) == 0
    out = capsys.readouterr().out
    assert "https://huggingface.co/alice/tiny-box/commit/abc123" in out and "(branch exp)" in out
    assert [c[0] for c in hub.calls] == ["create_repo", "create_branch", "create_commit"]
    assert hub.calls[0][1] == ("alice/tiny-box",) and hub.calls[0][2]["exist_ok"] is True
    assert hub.calls[0][2]["private"] is None  # not asked: the hub's default
    assert hub.calls[1][2]["branch"] == "exp" and hub.calls[2][2]["revision"] == "exp"
    tokenizer = {p.name for p in run.iterdir() if p.name.startswith(("tokenizer", "special_tokens", "chat_template"))}
    assert tokenizer and "tokenizer_config.json" in tokenizer
    assert set(hub.files) == {"adapter_model.safetensors", "adapter_config.json", "README.md"} | tokenizer
    assert hub.files["adapter_model.safetensors"] == (run / "adapter_model.safetensors").read_bytes()
    config = json.loads(hub.files["adapter_config.json"])
    info = json.loads((run / "run.json").read_text())
    assert config["base_model_name_or_path"] == Path(info["base_model"]).name  # a local base: its name, not the path
    for name, data in hub.files.items():  # nothing pushed carries this machine's folders
        if not name.endswith(".safetensors"):
            assert str(run.parent.parent) not in data.decode(), name
    card = _card(hub)
    assert card.startswith(card_head("peft")) and "- lora\n" in card
    assert "base_model:" not in card  # only a hub base is named in the metadata
    assert f"template `{info['template']}`" in card and f"Training: {info['steps']} steps" in card
    assert 'PeftModel.from_pretrained(base, "alice/tiny-box")' in card


def test_a_hub_base_is_linked_and_the_scores_are_in_the_card(run, hub):
    info = json.loads((run / "run.json").read_text())
    hub_base = {"base_model": "HuggingFaceTB/SmolLM2-135M", "base_source": "hub", "system_prompt": "Be brief."}
    (run / "run.json").write_text(json.dumps(info | hub_base | {"eval_loss": 1.25}))
    scores = {"fact": {"n": 4, "base": 0.25, "tuned": 0.75}}
    (run / "compare.json").write_text(json.dumps({"rows": [], "scores": scores}))
    evaluated = {
        "data_file": "/x/heldout.jsonl",
        "loss_on": "answers",
        "base": {"eval_loss": 2.5},
        "tuned": {"eval_loss": 0.5},
    }
    (run / "eval.json").write_text(json.dumps(evaluated))
    result = tunelab.push(run, "alice/tiny-box", private=True, message="first")
    assert result.url.endswith("/commit/abc123") and result.revision is None and "README.md" in result.files
    assert [c[0] for c in hub.calls] == ["create_repo", "repo_info", "create_commit"]  # no branch asked, none made
    assert hub.calls[0][2]["private"] is True and hub.calls[2][2]["commit_message"] == "first"
    card = _card(hub)
    front = card.split("---")[1]
    assert 'base_model: "HuggingFaceTB/SmolLM2-135M"' in front and "base_model_relation: adapter" in front
    assert "> Be brief." in card and "eval loss 1.25" in card
    assert "| fact | 4 | 25.0% | 75.0% |" in card
    assert "`tunelab eval` on `heldout.jsonl`: loss on answers 2.5 (base), 0.5 (tuned)." in card
    assert 'AutoPeftModelForCausalLM.from_pretrained("alice/tiny-box")' in card
    assert json.loads(hub.files["adapter_config.json"])["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M"


def _nan_adapter(run):
    weights = load_file(run / "adapter_model.safetensors")
    first = sorted(weights)[0]
    weights[first] = torch.full_like(weights[first], float("nan"))
    save_file(weights, run / "adapter_model.safetensors", metadata={"format": "pt"})


def _unfinished(run):
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps(info | {"finished": False, "end": {}}))


def _full(run):
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps(info | {"method": "full"}))


@pytest.mark.parametrize(
    "change, repo, said",
    [
        (_unfinished, "alice/tiny", "{run}: the run did not finish"),
        (_nan_adapter, "alice/tiny", "{run}: the adapter holds NaN or inf"),
        (_full, "alice/tiny", "{run}: the run trained whole weights (method full)"),
        (None, "tiny", "option '--repo' is 'tiny'; give the repository as OWNER/NAME"),
        (None, "alice/tiny/x", "option '--repo' is 'alice/tiny/x'"),
        (None, "alice/ti--ny", "option '--repo' is 'alice/ti--ny'"),
    ],
)
def test_bad_runs_and_repo_ids_are_refused_before_any_request(run, hub, capsys, change, repo, said):
    if change is not None:
        change(run)
    assert main(["push", str(run), "--repo", repo]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tunelab push: error: ") and said.format(run=run) in err
    assert "Traceback" not in err and hub.calls == []


def test_no_token_and_offline_mode_are_refused_before_any_request(run, hub, monkeypatch, capsys):
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    assert main(["push", str(run), "--repo", "alice/tiny"]) == 2
    err = capsys.readouterr().err
    assert "no Hugging Face token" in err and "hf auth login" in err and "HF_TOKEN" in err
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert main(["push", str(run), "--repo", "alice/tiny"]) == 2
    assert "HF_HUB_OFFLINE" in capsys.readouterr().err
    assert hub.calls == []


def test_a_token_helper_that_raises_is_one_line_not_a_traceback(run, hub, monkeypatch, capsys):
    def oidc_fails():
        raise RuntimeError("OIDC token exchange failed:\n  401 Unauthorized")

    monkeypatch.setattr(huggingface_hub, "get_token", oidc_fails)
    assert main(["push", str(run), "--repo", "alice/tiny"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "cannot push to alice/tiny: huggingface_hub could not get the Hugging Face token" in err
    assert "RuntimeError: OIDC token exchange failed: 401 Unauthorized" in err and "HF_TOKEN" in err
    assert hub.calls == []


def test_a_failed_request_is_one_line_naming_the_repo_with_exit_1(run, hub, capsys):
    response = SimpleNamespace(status_code=403, headers={}, request=None)
    hub.fail = HfHubHTTPError(f"403 Forbidden: no write access\nwith {TOKEN}", response=response)
    assert main(["push", str(run), "--repo", "alice/tiny"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "pushing to alice/tiny failed: 403 Forbidden: no write access" in err and "read-only token" in err
    assert TOKEN not in err
    hub.fail = ConnectionError("Connection refused")
    assert main(["push", str(run), "--repo", "alice/tiny"]) == 1
    assert "pushing to alice/tiny failed: Connection refused" in capsys.readouterr().err
    hub.fail = OSError("Repository Not Found for url: https://huggingface.co/api/models/alice/tiny.")
    assert main(["push", str(run), "--repo", "alice/tiny"]) == 1
    assert capsys.readouterr().err.endswith(
        "failed: Repository Not Found for url: https://huggingface.co/api/models/alice/tiny.\n"
    )


def test_a_merged_folder_and_a_gguf_export_push_the_files_their_commands_wrote(run, hub, tmp_path, capsys):
    merged = tunelab.merge(run, tmp_path / "merged")
    (merged / "notes.txt").write_text("mine")  # not the merge's: stays home
    assert main(["push", str(merged), "--repo", "alice/tiny-merged"]) == 0
    listed = json.loads((merged / "tunelab_merge.json").read_text())["files"]
    assert set(hub.files) == set(listed) - {"tunelab_merge.json"}
    card = _card(hub)
    assert 'from_pretrained("alice/tiny-merged")' in card and 'from_pretrained("merged")' not in card
    served = tmp_path / "served"
    served.mkdir()
    for name, data in hub.files.items():
        (served / name).write_bytes(data)
    from transformers import AutoModelForCausalLM

    ids = torch.tensor([[1, 17, 29, 300, 12]])
    with torch.no_grad():  # what was left home is not needed to load it
        pushed = AutoModelForCausalLM.from_pretrained(served)(ids).logits
        assert torch.equal(pushed, AutoModelForCausalLM.from_pretrained(merged)(ids).logits)

    hub.files.clear()
    gguf = tmp_path / "out" / "box.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF....")
    (gguf.parent / "box.Modelfile").write_text("FROM ./box.gguf\n")
    assert main(["push", str(gguf), "--repo", "alice/tiny-gguf"]) == 2  # no card beside it: not an export's
    assert "box.README.md" in capsys.readouterr().err
    (gguf.parent / "box.README.md").write_text(card_head("gguf") + "---\n# box\n")
    assert main(["push", str(gguf), "--repo", "alice/tiny-gguf"]) == 0
    assert set(hub.files) == {"box.gguf", "box.Modelfile", "README.md"}
    assert hub.files["README.md"].decode().startswith(card_head("gguf"))


def test_the_python_api_names_its_arguments_and_private_never_goes_public(run, hub):
    with pytest.raises(tunelab.errors.ConfigError, match="argument 'repo' is 'tiny'"):
        tunelab.push(run, "tiny")
    with pytest.raises(tunelab.errors.ConfigError, match="repo"):
        tunelab.push(run, None)
    assert hub.calls == []
    hub.private = False  # the repository exists, public: --private must not send the files there
    with pytest.raises(
        tunelab.errors.TunelabError,
        match="private=True asks for a private repository, but alice/public-one exists and is public; nothing",
    ) as refused:
        tunelab.push(run, "alice/public-one", private=True)
    assert refused.value.exit_code == 2 and "create_commit" not in [c[0] for c in hub.calls]


def test_what_an_adapter_push_sends_loads_as_a_peft_adapter_with_its_tokenizer(run, hub, tmp_path):
    """The files pushed, written into a folder as the hub would serve them, are a whole PEFT adapter: PEFT puts it on
    the base with the run's logits, and the tokenizer prompts with the chat template training wrote."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tunelab.push(run, "alice/tiny-box")
    served = tmp_path / "served"
    served.mkdir()
    for name, data in hub.files.items():
        (served / name).write_bytes(data)
    base = Path(json.loads((run / "run.json").read_text())["base_model"])
    ids = torch.tensor([[1, 17, 29, 300, 12]])
    with torch.no_grad():
        pushed = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), served).eval()(ids).logits
        local = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), run).eval()(ids).logits
    assert torch.equal(pushed, local)
    messages = [{"role": "user", "content": "Code of box 3?"}]
    assert AutoTokenizer.from_pretrained(served).apply_chat_template(
        messages, tokenize=False
    ) == AutoTokenizer.from_pretrained(run).apply_chat_template(messages, tokenize=False)


class _Forbidding(BaseHTTPRequestHandler):
    """A hub that refuses every request as the real one refuses a token without write access to the namespace."""

    def do_POST(self):
        body = json.dumps(
            {"error": 'You don\'t have the rights to create a model under the namespace "alice"'}
        ).encode()
        self.send_response(403)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST

    def log_message(self, *args):
        pass


def test_real_requests_that_fail_are_one_line_with_exit_1(run, monkeypatch, capsys):
    """huggingface_hub's own requests (nothing replaced but the endpoint): a 403 from a server, and a port where none
    listens, each end as one line naming the repository, exit 1, the token not in it."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: TOKEN)
    server = HTTPServer(("127.0.0.1", 0), _Forbidding)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        closed = free.getsockname()[1]
    try:
        for endpoint, said in [
            (f"http://127.0.0.1:{server.server_port}", 'under the namespace "alice"'),
            (f"http://127.0.0.1:{closed}", "refused"),
        ]:
            monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", endpoint)
            assert main(["push", str(run), "--repo", "alice/tiny"]) == 1
            err = capsys.readouterr().err
            assert err.startswith("tunelab push: error: pushing to alice/tiny failed: ") and said in err
            assert err.count("\n") == 1 and TOKEN not in err
    finally:
        server.shutdown()
