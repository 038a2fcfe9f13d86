"""Options the user set that the run's method does not read are named in a note of the printed config (not refused:
a sweep shares its overrides across methods); defaults never are. An adapter to continue beside a method
without one is no such option: it is refused."""

from tunelab.config import describe, load_config


def notes(resolved):
    return [line for line in describe(resolved).splitlines() if line.startswith("note:")]


def test_lora_options_beside_full_are_noted(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method:\n  name: full\n  r: 8\n  rslora: true\n")
    resolved = load_config(path, {"method.target_modules": "[q_proj]"})
    assert notes(resolved) == [
        "note: method.r (8) is not used by method full",
        "note: method.target_modules (['q_proj']) is not used by method full",
        "note: method.rslora (True) is not used by method full",
    ]


def test_pissa_init_beside_full_or_layers_is_noted():
    for method in ("full", "layers"):
        resolved = load_config(None, {"method.name": method, "method.init": "pissa"})
        assert notes(resolved) == [f"note: method.init (pissa) is not used by method {method}"]
    assert notes(load_config(None, {"method.name": "dora", "method.init": "pissa"})) == []


def test_top_layers_beside_lora_and_defaults_say_nothing():
    assert notes(load_config(None, {"method.top_layers": 4})) == [
        "note: method.top_layers (4) is not used by method lora"
    ]
    assert notes(load_config(None, {"method.name": "full"})) == []  # r, alpha, top_layers are defaults
    assert notes(load_config(None, {"method.name": "layers", "method.top_layers": 4})) == []
    assert notes(load_config(None, {"method.name": "dora", "method.alpha": 8})) == []


def test_staged_run_notes_by_its_stages_methods():
    stages = [{"method": {"name": "layers"}}, {"method": {"name": "lora", "top_layers": 3}}]
    resolved = load_config(None, {"method.r": 8, "stages": stages})
    # r is read by stage 2's lora; stage 2's own top_layers by nothing there
    assert notes(resolved) == ["note: stage 2: method.top_layers (3) is not used by method lora"]
    only_full = load_config(None, {"method.r": 8, "stages": [{"method": {"name": "full"}}, {}]})
    assert notes(only_full) == []  # stage 2 is lora, the run's method
    assert notes(load_config(None, {"method.name": "full", "method.r": 8, "stages": [{}, {}]})) == [
        "note: method.r (8) is not used by method full"
    ]


def test_a_stages_own_config_notes_only_what_the_stage_sets():
    """Each stage prints its config as it starts: a full stage of a run whose method.r serves its lora stage said
    `method.r (8) is not used by method full`, though r is no option of that stage; the run's notes judge the run's
    options. An option the stage sets itself, unused there, is still noted."""
    from tunelab.config import stage_config

    stages = [{"train": {"max_steps": 2}}, {"method": {"name": "full"}, "continue": "merge"}]
    resolved = load_config(None, {"method.r": 8, "stages": stages})
    assert notes(resolved) == []
    assert [notes(stage_config(resolved, k, "out")) for k in (0, 1)] == [[], []]
    stages[1]["method"]["alpha"] = 4
    assert notes(stage_config(load_config(None, {"method.r": 8, "stages": stages}), 1, "out")) == [
        "note: method.alpha (4.0) is not used by method full"
    ]


def test_epochs_beside_max_steps_is_noted():
    both = load_config(None, {"train.epochs": 2, "train.max_steps": 3})
    assert notes(both) == [
        "note: train.epochs (2.0) is not used beside train.max_steps (3), which sets the run's length"
    ]
    assert notes(load_config(None, {"train.max_steps": 3})) == []  # epochs at its default (auto)
    assert notes(load_config(None, {"train.epochs": 2})) == []


def test_offload_on_cpu_is_noted():
    resolved = load_config(None, {"model.device": "cpu", "train.offload_activations": True})
    assert notes(resolved) == [
        "note: train.offload_activations (True) is not used on model.device cpu (it offloads from a GPU)"
    ]


def test_an_adapter_to_continue_beside_full_or_layers_is_refused_with_the_config():
    """It was refused only after the model loaded, as 'method.target_modules [] (the adapter's: [...])'."""
    import pytest

    from tunelab.errors import ConfigError

    for method in ("full", "layers"):
        with pytest.raises(ConfigError, match=f"option 'model.adapter' is '.*runs/a'.*method.name is {method}"):
            load_config(None, {"model.adapter": "runs/a", "method.name": method})
    # a staged run's model.adapter is stage 1's start: a later full stage (after continue: merge) is no contradiction
    stages = [{}, {"continue": "merge", "method": {"name": "full"}}]
    resolved = load_config(None, {"model.adapter": "runs/a", "stages": stages})
    from tunelab.config import stage_config

    assert stage_config(resolved, 1, "out").config.model.adapter is None
    with pytest.raises(ConfigError, match="stage 1: option 'model.adapter'"):
        stage_config(load_config(None, {"model.adapter": "runs/a", "stages": [{"method": {"name": "full"}}]}), 0, "o")


def test_answer_options_of_a_head_run_are_noted():
    resolved = load_config(None, {"task": "classify", "eval.max_new_tokens": 32, "eval.refusal": "No."})
    assert notes(resolved) == [
        "note: eval.max_new_tokens (32) is not used by task classify (it generates no text)",
        "note: eval.refusal (No.) is not used by task classify (it generates no text)",
    ]
    assert notes(load_config(None, {"task": "dpo", "eval.max_new_tokens": 32})) == []


def test_a_split_seed_without_a_split_is_noted():
    assert notes(load_config(None, {"data.split_seed": 3})) == [
        "note: data.split_seed (3) is not used without data.eval_fraction (it seeds that split)"
    ]
    assert notes(load_config(None, {"data.split_seed": 3, "data.eval_fraction": 0.1})) == []


def test_use_dora_false_beside_dora_is_noted():
    """`method.name: dora` with `method.use_dora: false` trained DoRA adapters without a word (use_dora true there is
    refused); the false one is no option method dora reads, and is noted as such."""
    assert notes(load_config(None, {"method.name": "dora", "method.use_dora": False})) == [
        "note: method.use_dora (False) is not used by method dora"
    ]
    assert notes(load_config(None, {"method.name": "lora", "method.use_dora": True})) == []


def shown(resolved) -> list[str]:
    """The names of the options the printed config lists."""
    return [line.split()[0] for line in describe(resolved).splitlines() if line.startswith("  ") and "=" in line]


def test_an_sft_run_prints_no_option_it_never_reads_at_its_default(tmp_path):
    """An sft LoRA run printed every federated.*, dpo.*, grpo.* and classify.* default: ~40 of its ~100 lines were
    options the run never reads. They are left out, counted in one line; the saved config keeps them all."""
    from tunelab.config import dump_yaml, iter_options

    resolved = load_config(None, {})
    names = shown(resolved)
    assert "train.lr" in names and "method.r" in names and "eval.max_new_tokens" in names
    assert not [n for n in names if n.split(".")[0] in ("federated", "dpo", "grpo", "classify")], names
    assert "method.top_layers" not in names  # read by method layers only
    left_out = len(iter_options()) - len(names)
    summary = next(x for x in describe(resolved).splitlines() if x.startswith("  ... and "))
    assert summary.startswith(f"  ... and {left_out} options at their defaults that this run does not read")
    assert "federated.*" in summary and "config.yaml" in summary
    assert "rounds:" in dump_yaml(resolved.config) and "beta:" in dump_yaml(resolved.config)  # saved in full


def test_a_federation_prints_its_options_and_a_head_run_its_own(tmp_path):
    federation = load_config(None, {"federated.split_file": str(tmp_path / "all.jsonl")})
    names = shown(federation)
    assert {"federated.rounds", "federated.split_file", "federated.strategy"} <= set(names)
    assert "dpo.beta" not in names
    head = shown(load_config(None, {"task": "classify", "method.name": "full"}))
    assert "classify.head_init" in head and "federated.rounds" not in head
    assert "method.r" not in head and "eval.max_new_tokens" not in head  # a head generates no text
    full_staged = load_config(None, {"stages": [{"method": {"name": "full"}}, {"task": "dpo"}]})
    assert "method.r" in shown(full_staged) and "dpo.beta" in shown(full_staged)  # stage 2 is a lora dpo run


def test_a_federation_leaves_out_the_train_options_federate_does_not_read(tmp_path):
    """A federation's printed config listed train.max_steps, train.save_every, stages and the other options
    tunelab federate refuses when set (federated.NOT_READ), each at its default, and federated.proximal_mu beside
    strategy fedavg: options it never reads, printed as if they applied. They are left out and counted, as an sft
    run's dpo.* are; the options it reads stay, and the saved config keeps them all."""
    from tunelab.config import dump_yaml
    from tunelab.config.federated import NOT_READ

    federation = load_config(None, {"federated.split_file": str(tmp_path / "all.jsonl")})
    names = shown(federation)
    assert not set(NOT_READ) & set(names), sorted(set(NOT_READ) & set(names))
    assert "federated.proximal_mu" not in names and "federated.dp_delta" not in names  # fedavg, no dp
    assert {"train.lr", "train.micro_batch", "train.seed", "federated.rounds", "federated.local_steps"} <= set(names)
    summary = next(x for x in describe(federation).splitlines() if x.startswith("  ... and "))
    assert "does not read: stages, model.adapter, " in summary and "train.max_steps" in summary  # stages is no ".*"
    assert "max_steps:" in dump_yaml(federation.config) and "proximal_mu:" in dump_yaml(federation.config)
    fedprox = load_config(None, {"federated.split_file": "all.jsonl", "federated.strategy": "fedprox"})
    assert "federated.proximal_mu" in shown(fedprox)  # read by fedprox
    assert "train.max_steps" in shown(load_config(None, {}))  # tunelab train reads it


def test_an_unread_option_the_user_set_is_still_printed_and_noted(tmp_path):
    """A federated option set on a run that is no federation was printed among the defaults and never said to be
    ignored (tunelab train refuses a federation, not one of its options alone)."""
    path = tmp_path / "c.yaml"
    path.write_text("method:\n  name: full\n  r: 8\nfederated:\n  rounds: 5\n")
    resolved = load_config(path)
    assert {"method.r", "federated.rounds"} <= set(shown(resolved))
    assert "federated.local_steps" not in shown(resolved)
    assert notes(resolved) == [
        "note: method.r (8) is not used by method full",
        "note: federated.rounds (5) is not used outside a federation (federated.clients or split_file)",
    ]
