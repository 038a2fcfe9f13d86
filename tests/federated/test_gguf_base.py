"""A federation over a GGUF base records the conversion of the base's tokenizer in run.json (`gguf_conversion`), as
tunelab train records it, so a --resume whose server eval rows differ can say that a changed conversion may be
why."""

import json

import pytest

from tunelab.config import load_config
from tunelab.errors import ConfigError
from tunelab.federated.run import check_clients, federation_clients
from tunelab.federated.server import run_federation
from tunelab.models.converted import CONVERSION
from tunelab.rundir import read_info


def test_a_federation_over_a_gguf_base_records_its_conversion_and_a_resume_names_it(
    tmp_path, monkeypatch, tiny_gguf, federate_config, rounds_without_clients
):
    """run.json of a federation held no `gguf_conversion`: a --resume with other eval rows could not tell a changed
    tokenizer conversion from changed data, as tunelab train --resume tells them."""
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    config = federate_config(tmp_path, tiny_gguf)
    longer = {"data.max_length": 256}  # the tiny GGUF's 300-token vocabulary cuts the rows in many tokens
    run = run_federation(None, load_config(config, longer), 2, ["site0", "site1"], resume=False)
    assert read_info(run, require_finished=False).extra.get("gguf_conversion") == CONVERSION

    # the run as one written before the conversion that splits as llama.cpp does, its eval file since changed
    info = json.loads((run / "run.json").read_text())
    info["extra"].pop("gguf_conversion")
    (run / "run.json").write_text(json.dumps(info))
    eval_file = tmp_path / "server_eval.jsonl"
    eval_file.write_text(eval_file.read_text().replace("code", "number"))
    said = r"server_eval.jsonl changed; or the run started before tunelab gave a GGUF"
    resumed = load_config(config, longer | {"federated.rounds": 3})
    with pytest.raises(ConfigError, match=said):  # tunelab federate --resume, before Ray and the clients start
        check_clients(resumed.config, federation_clients(resumed.config), resume=True)
    with pytest.raises(ConfigError, match=said):  # the server's own check (the deployment engine's first)
        run_federation(None, resumed, 2, ["site0", "site1"], resume=True)
