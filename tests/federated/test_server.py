"""The ServerApp's run directory without Flower's transport: `Recorded.start` replaced by calls of the server's
per-round callback with the global adapter unchanged, as Flower makes them (round 0 first)."""

import json
import shutil

import pytest

pytest.importorskip("flwr", reason="the federated extra (flwr) is not installed")

import tunelab
from tunelab.config import load_config
from tunelab.errors import ConfigError, RunDirError, TrainingStopped
from tunelab.federated import rounds
from tunelab.federated.server import run_federation


@pytest.fixture(scope="module")
def read_only_federation(tmp_path_factory, tiny_model_dir, federate_once):
    """A finished federation of two clients over 2 rounds with model.dtype bf16 and auto train.micro_batch and
    train.lr, run once for the tests that only read it: (its run directory, what it printed)."""
    overrides = {"model.dtype": "bf16", "train.micro_batch": "auto", "train.lr": "auto"}
    return federate_once(tmp_path_factory.mktemp("federation"), tiny_model_dir, overrides)


def test_run_json_records_the_dtype_the_federation_trained_in(read_only_federation):
    """run.json lacked it, so a federated QLoRA run was opened over a base quantized from another dtype than the one
    it trained over (tunelab train records it)."""
    run, _ = read_only_federation  # model.dtype bf16
    info = json.loads((run / "run.json").read_text())
    assert info["dtype"] == "bfloat16" and info["extra"]["federated"]["rounds_done"] == 2


def test_a_federation_of_one_round_says_one_round(
    tmp_path, tiny_model_dir, federate_config, rounds_without_clients, capsys
):
    """A federation of federated.rounds 1 (a smoke run) ended 'saved to ... (1 rounds, ...)'."""
    config = federate_config(tmp_path, tiny_model_dir)
    run_federation(None, load_config(config, {"federated.rounds": 1}), 2, ["site0", "site1"], resume=False)
    saved = [line for line in capsys.readouterr().out.splitlines() if line.startswith("saved to ")]
    assert len(saved) == 1 and " (1 round, " in saved[0]


def test_a_finished_federation_says_what_its_checkpoints_are_kept_for(
    tmp_path, tiny_model_dir, federate_config, rounds_without_clients, capsys
):
    """A finished federation left checkpoints/round-N (19 MB on a tiny run) unmentioned, where a finished
    `tunelab train` deletes its step checkpoints and says so."""
    config = federate_config(tmp_path, tiny_model_dir)
    run = run_federation(None, load_config(config, {"federated.rounds": 3}), 2, ["site0", "site1"], resume=False)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["round-0000002", "round-0000003"]
    said = capsys.readouterr().out
    assert f"kept {run / 'checkpoints'} (" in said and "the global adapter of rounds 2 and 3)" in said
    assert "--resume with more federated.rounds continues from it; delete it if no more rounds will follow" in said
    shutil.rmtree(run / "checkpoints")  # deleted, as it says it may be: a resume for more rounds names what is gone
    with pytest.raises(RunDirError, match="round 3 is done, but .*round-0000003.* is missing"):
        run_federation(None, load_config(config, {"federated.rounds": 4}), 2, ["site0", "site1"], resume=True)


def test_keep_best_turned_off_and_on_again_forgets_the_best_whose_adapter_is_gone(
    tmp_path, tiny_model_dir, federate_config, rounds_without_clients
):
    """A resume with keep_best off saves each round's adapter as the result; turned on again, the best of the rounds
    before named round 1 as the result while the folder held a later round's adapter."""
    config = federate_config(tmp_path, tiny_model_dir)
    run = run_federation(None, load_config(config), 2, ["site0", "site1"], resume=False)
    assert json.loads((run / "run.json").read_text())["extra"]["best"]["step"] == 1  # the same loss every round
    off = load_config(config, {"federated.rounds": 3, "train.keep_best": False})
    run_federation(None, off, 2, ["site0", "site1"], resume=True)
    on = load_config(config, {"federated.rounds": 4})
    run_federation(None, on, 2, ["site0", "site1"], resume=True)
    assert json.loads((run / "run.json").read_text())["extra"]["best"]["step"] == 4


def test_packing_on_the_generic_path_is_refused_as_train_refuses_it(
    tmp_path, tiny_model_dir, federate_config, rounds_without_clients
):
    """tunelab train refuses data.packing on the generic path, whose attention runs across a packed row's documents;
    a federation trained such rows on it without a word."""
    config = federate_config(tmp_path, tiny_model_dir)
    packed_generic = {"data.packing": True, "model.impl": "generic"}
    with pytest.raises(ConfigError, match="'data.packing' needs the fast path"):
        tunelab.federate(config, packed_generic)  # before the simulation starts
    with pytest.raises(ConfigError, match="'data.packing' needs the fast path"):
        run_federation(None, load_config(config, packed_generic), 2, ["site0", "site1"], resume=False)  # deployment
    assert not (tmp_path / "run" / "run.json").exists()


def _accept_edit(run):
    """Record the edited config.yaml's digest in run.json, as the refusal of an edited one tells a user to."""
    from tunelab.config_digest import FIELD, yaml_digest
    from tunelab.rundir import update_run_json

    update_run_json(run, {FIELD: yaml_digest(run / "config.yaml")})


def test_a_run_saved_with_an_option_now_refused_as_unread_resumes(
    tmp_path, tiny_model_dir, federate_config, rounds_without_clients
):
    """federated.proximal_mu under fedavg (never read) is refused now; a run whose config.yaml holds it could not be
    resumed either way: with the option, federate refuses it; without it, --resume called it a change."""
    from tunelab.federated.resume import check_resume

    config = federate_config(tmp_path, tiny_model_dir)
    run = run_federation(None, load_config(config), 2, ["site0", "site1"], resume=False)
    saved = (run / "config.yaml").read_text()
    saved = saved.replace("proximal_mu: 0.01", "proximal_mu: 0.5").replace("num_clients: 2", "num_clients: 5")
    (run / "config.yaml").write_text(saved)
    _accept_edit(run)
    assert check_resume(run, load_config(config, {"federated.rounds": 3}).config) == [
        "resume: federated.rounds: 2 -> 3; the federation continues to 3 rounds: from round 3 on, the learning rate's "
        "cosine decay is recomputed over the new 3 x 3 steps (the rounds already trained keep the rates they had)"
    ]
    with pytest.raises(ConfigError, match="federated.strategy: 'fedavg' -> 'fedprox'"):  # what reads it is compared
        check_resume(run, load_config(config, {"federated.strategy": "fedprox"}).config)


def test_an_app_dir_never_replaces_a_pyproject_tunelab_did_not_write(tmp_path, tiny_model_dir, federate_config):
    """--overwrite (meant for the run directory) replaced any pyproject.toml in --app-dir, a project's own too."""
    from tunelab.errors import RunDirError

    config = federate_config(tmp_path, tiny_model_dir)
    app = tmp_path / "app"
    assert tunelab.federate(config, app_dir=app) == app
    written = (app / "pyproject.toml").read_text()
    assert tunelab.federate(config, {"overwrite": True, "federated.rounds": 3}, app_dir=app) == app  # its own: replaced
    assert (app / "pyproject.toml").read_text() != written
    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text('[project]\nname = "mine"\n')
    with pytest.raises(RunDirError, match="not a Flower App tunelab wrote"):
        tunelab.federate(config, {"overwrite": True}, app_dir=project)
    assert (project / "pyproject.toml").read_text() == '[project]\nname = "mine"\n'


def test_a_resume_that_samples_clients_says_it_is_not_the_uninterrupted_run(
    tmp_path, tiny_model_dir, federate_config, rounds_without_clients
):
    """README said a resumed federation continues exactly as an uninterrupted run; with federated.fraction < 1 Flower
    samples each round's clients with Python's unseeded random, so that held only when every client trains."""
    from tunelab.federated.resume import check_resume

    config = federate_config(tmp_path, tiny_model_dir, clients=3, fraction=0.34, min_clients=1)
    run = run_federation(None, load_config(config), 3, ["site0", "site1", "site2"], resume=False)
    notes = check_resume(run, load_config(config, {"federated.rounds": 3}).config)
    assert any("federated.fraction is 0.34" in n and "other clients than an uninterrupted run" in n for n in notes)
    every = load_config(config, {"federated.rounds": 3, "federated.min_clients": 3}).config
    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace("min_clients: 1", "min_clients: 3"))
    _accept_edit(run)
    assert not any("federated.fraction" in n for n in check_resume(run, every))  # 3 of 3 clients asked: exact


def test_an_app_names_the_server_paths_every_client_host_needs(
    tmp_path, tiny_model_dir, federate_config, capsys, monkeypatch
):
    """The clients of a deployment read the base model at the path the server's config gives, which nothing said; a
    model.name relative to where tunelab federate ran was read relative to each SuperNode's folder."""
    import shutil

    config = federate_config(tmp_path, tiny_model_dir)
    shutil.copytree(tiny_model_dir, tmp_path / "base")
    monkeypatch.chdir(tmp_path)
    app = tmp_path / "app"
    tunelab.federate(config, {"model.name": "base"}, app_dir=app)
    toml = (app / "pyproject.toml").read_text()
    assert f"# Every SuperNode host reads model.name at the server's path: {tmp_path / 'base'}\n" in toml
    assert f"name: {tmp_path / 'base'}\n" in toml  # the run config the ServerApp reads and sends on
    assert f"each needs them there: model.name: {tmp_path / 'base'}" in capsys.readouterr().out


def test_an_app_waits_for_as_many_supernodes_as_the_config_lists_clients(tmp_path, tiny_model_dir, federate_config):
    """federated.clients listed 3 clients, but the app's server waited for federated.num_clients' default of 2
    SuperNodes, so a federation could start without the third. It waits for one per client listed now."""
    config = federate_config(tmp_path, tiny_model_dir, clients=3)
    app = tmp_path / "app"
    tunelab.federate(config, app_dir=app)
    toml = (app / "pyproject.toml").read_text()
    assert "waits for federated.num_clients = 3 SuperNodes" in toml and "  num_clients: 3\n" in toml


@pytest.mark.parametrize("given, where", [(4, "--federated.num_clients"), (2, "federate.yaml")])
def test_an_app_whose_num_clients_is_not_the_clients_listed_is_refused(
    tmp_path, tiny_model_dir, federate_config, given, where
):
    """--app-dir wrote an app for 3 listed clients whose server waited for num_clients 4 SuperNodes (or 2, given in
    the YAML), though federate refuses the same config: the federation started with a number of clients the config
    did not list. Refused with both numbers, the options and where num_clients was set; no app is written."""
    in_yaml = {"num_clients": given} if where == "federate.yaml" else {}
    config = federate_config(tmp_path, tiny_model_dir, clients=3, **in_yaml)
    flags = {"federated.num_clients": given} if not in_yaml else {}
    app = tmp_path / "app"
    with pytest.raises(ConfigError) as error:
        tunelab.federate(config, flags, app_dir=app)
    said = f"(set in {config}) " if in_yaml else ""  # a flag is its own place
    assert f"option 'federated.num_clients' {said}is {given} but option 'federated.clients' names 3 clients" in str(
        error.value
    )
    assert not app.exists()


def test_a_round_that_applied_no_update_keeps_the_final_loss_of_the_round_before(
    tmp_path, tiny_model_dir, federate_config, monkeypatch
):
    """run.json's final_loss was the last round's clients' loss: after a round in which no client trained (all
    failed, or too few to apply) it was null, although the global adapter is the one an earlier round trained with a
    known loss. It stays that round's loss now, and the run records which round that is."""
    from tunelab.eval.report import build_report
    from tunelab.federated.rounds import ClientRound, RoundReport

    def start(self, *, grid, initial_arrays, num_rounds, timeout, evaluate_fn):
        evaluate_fn(0, initial_arrays)
        ok = [ClientRound("site0", 1, "ok", examples=3, train_loss=2.0), ClientRound("site1", 2, "ok", examples=1)]
        ok[1].train_loss = 6.0
        self.reports[1] = RoundReport(1, sampled=2, applied=True, clients=ok)
        evaluate_fn(1, initial_arrays)
        failed = [ClientRound("site0", 1, "failed", reason="out of memory")]
        self.reports[2] = RoundReport(2, sampled=2, applied=False, clients=failed, note="too few updates")
        evaluate_fn(2, initial_arrays)

    monkeypatch.setattr(rounds.Recorded, "start", start)
    run = run_federation(None, load_config(federate_config(tmp_path, tiny_model_dir)), 2, ["site0", "site1"], False)
    info = json.loads((run / "run.json").read_text())
    assert info["steps"] == 2 and info["final_loss"] == pytest.approx(3.0)  # (2 x 3 + 6 x 1) / 4
    assert info["extra"]["federated"]["final_loss_round"] == 1
    assert "3.0000 (round 1, the last whose clients" in build_report(run).read_text()


def test_run_json_names_the_dtype_each_client_trained_in(tmp_path, tiny_model_dir, federate_config, monkeypatch):
    """run.json's dtype is the server's (float32 on the CPU) while a GPU client on auto trained in bfloat16: it now
    also names each client's, every one it trained in over the rounds; a client that never said is left out."""
    from tunelab.federated.rounds import ClientRound, RoundReport

    def start(self, *, grid, initial_arrays, num_rounds, timeout, evaluate_fn):
        evaluate_fn(0, initial_arrays)
        for r, moved in ((1, "bfloat16"), (2, "float32")):  # site1 moved to a CPU host for round 2
            clients = [
                ClientRound("site0", 1, "ok", examples=3, train_loss=2.0, dtype="bfloat16"),
                ClientRound("site1", 2, "ok", examples=3, train_loss=2.0, dtype=moved),
                ClientRound("site2", 3, "ok", examples=3, train_loss=2.0),
            ]
            self.reports[r] = RoundReport(r, sampled=3, applied=True, clients=clients)
            evaluate_fn(r, initial_arrays)

    monkeypatch.setattr(rounds.Recorded, "start", start)
    config = load_config(federate_config(tmp_path, tiny_model_dir, clients=3))
    run = run_federation(None, config, 3, ["site0", "site1", "site2"], False)
    info = json.loads((run / "run.json").read_text())
    assert info["dtype"] == "float32"  # the server's
    assert info["extra"]["federated"]["client_dtypes"] == {"site0": "bfloat16", "site1": "bfloat16, float32"}


def test_a_federation_that_applied_no_update_fails_saying_its_adapter_is_untrained(
    tmp_path, tiny_model_dir, federate_config, monkeypatch, capsys
):
    """Every client failed every round (round_timeout too short): the federation ended (exit 0) 'keep_best: the last round
    (1) had the lowest eval loss; it is the result' and 'saved to', with nothing saying the adapter never trained."""
    from tunelab.federated.rounds import ClientRound, RoundReport

    def start(self, *, grid, initial_arrays, num_rounds, timeout, evaluate_fn):
        evaluate_fn(0, initial_arrays)
        for r in range(1, num_rounds + 1):
            failed = [ClientRound(f"site{i}", i, "failed", reason="no reply") for i in range(2)]
            self.reports[r] = RoundReport(r, sampled=2, clients=failed, note="too few updates")
            evaluate_fn(r, initial_arrays)

    monkeypatch.setattr(rounds.Recorded, "start", start)
    config = federate_config(tmp_path, tiny_model_dir)
    with pytest.raises(TrainingStopped) as stopped:  # exit 3: a script must not export the untrained adapter
        run_federation(None, load_config(config), 2, ["site0", "site1"], False)
    assert "none of the 2 rounds applied an update" in str(stopped.value)
    assert "the saved adapter is the untrained one" in str(stopped.value)
    assert stopped.value.exit_code == 3 and "saved to" in capsys.readouterr().out

    def start_ok(self, *, grid, initial_arrays, num_rounds, timeout, evaluate_fn):  # one round applied: no warning
        for r in range(1, num_rounds + 1):
            ok = [ClientRound(f"site{i}", i, "ok", examples=3, train_loss=2.0) for i in range(2)]
            self.reports[r + self.offset] = RoundReport(r + self.offset, sampled=2, applied=True, clients=ok)
            evaluate_fn(r, initial_arrays)

    monkeypatch.setattr(rounds.Recorded, "start", start_ok)
    run_federation(None, load_config(config, {"federated.rounds": 3}), 2, ["site0", "site1"], True)
    assert "applied an update" not in capsys.readouterr().out


def test_the_server_says_what_every_client_trains_with(read_only_federation):
    """Each client chose its own auto options from its own data, and the start of a federation did not say what they
    were. The server says the settings every client trains with, and run.json records the auto choices."""
    run, out = read_only_federation  # train.micro_batch and train.lr auto
    assert "every client trains with the same settings (FedAvg averages updates of one local procedure): " in out
    assert "train.micro_batch 8," in out and "train.micro_batch        = 8" in out
    auto = json.loads((run / "run.json").read_text())["extra"]["auto"]
    assert auto["train.micro_batch"]["value"] == 8 and "train.lr" in auto


def test_every_client_is_sent_the_hub_commit_the_server_loaded(
    tmp_path, tiny_model_dir, federate_config, monkeypatch, applied_round
):
    """Each client resolved the hub id's branch when it trained, so a branch that moved during a federation put
    clients of one round over other weights than the server's. The server sends the commit it loaded in the recipe,
    and run.json records it; config.yaml keeps the config as given."""
    import shutil

    import huggingface_hub.constants

    from tunelab.federated.payload import recipe_config
    from tunelab.rundir import read_info

    commit = "c" * 40
    repo = tmp_path / "hub" / "models--org--tiny"
    shutil.copytree(tiny_model_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    sent = []

    def start(self, *, grid, initial_arrays, num_rounds, timeout, evaluate_fn):
        sent.append(recipe_config(self.recipe).model)
        for r in range(num_rounds + 1):
            applied_round(self, r)
            evaluate_fn(r, initial_arrays)

    monkeypatch.setattr(rounds.Recorded, "start", start)
    run = run_federation(None, load_config(federate_config(tmp_path, "org/tiny")), 2, ["site0", "site1"], False)
    assert (sent[0].name, sent[0].revision) == ("org/tiny", commit) and read_info(run).base_revision == commit
    assert load_config(run / "config.yaml", saved=True).config.model.revision is None
    assert json.loads((run / "adapter_config.json").read_text())["revision"] == commit  # PEFT loads that commit


def test_a_federation_stopped_early_is_not_finished(
    tmp_path, tiny_model_dir, federate_config, monkeypatch, capsys, applied_round
):
    """run.json said `finished: true` after every round, so a federation stopped after round 1 of 2 read as finished
    and the report said "finished: yes". It is finished once the last round asked for has run; until then the
    report says where it stopped, and the run still opens (its global adapter is saved after every round)."""
    from tunelab.eval.report import build_report
    from tunelab.rundir import read_info

    stop_after = [1]  # the server stops after this many rounds of num_rounds

    def start(self, *, grid, initial_arrays, num_rounds, timeout, evaluate_fn):
        for r in range(min(num_rounds, stop_after[0]) + 1):
            applied_round(self, r)
            evaluate_fn(r, initial_arrays)

    monkeypatch.setattr(rounds.Recorded, "start", start)
    config = federate_config(tmp_path, tiny_model_dir)
    run = run_federation(None, load_config(config), 2, ["site0", "site1"], resume=False)
    info = json.loads((run / "run.json").read_text())
    assert not info["finished"] and info["steps"] == 1 and not info["extra"]["federated"]["complete"]
    said = capsys.readouterr().out  # it said "saved to RUN (2 rounds, ...)" after one
    # said as the caller resumes: resume=True to Python (load_config's config), --resume to the command line
    assert f"saved to {run} (stopped after round 1 of 2; resume=True goes on, " in said and "(2 rounds" not in said
    assert "no: stopped after round 1 of 2" in build_report(run).read_text()
    assert read_info(run).steps == 1  # compare, chat and eval open it

    # a run.json written before: finished after every round; read as stopped
    info["finished"] = True
    (run / "run.json").write_text(json.dumps(info))
    assert not read_info(run).finished
    assert "no: stopped after round 1 of 2" in build_report(run, overwrite=True).read_text()

    stop_after[0] = 2
    run_federation(None, load_config(config), 2, ["site0", "site1"], resume=True)
    info = json.loads((run / "run.json").read_text())
    assert info["finished"] and info["steps"] == 2 and info["extra"]["federated"]["complete"]
    assert "<td>yes</td>" in build_report(run, overwrite=True).read_text()


def test_overwrite_says_what_it_replaces_and_a_resume_leaves_no_previous_folder(
    tmp_path, tiny_model_dir, tiny_run_dir, federate_config, monkeypatch, capsys, applied_round
):
    """--overwrite of a federation stopped early deleted it, its adapter of the last round too, without a word; and a
    federation that replaced a run, stopped and was resumed to its end left NAME.previous behind for good (tunelab
    train --resume deletes it)."""
    import shutil

    stop_after = [1]  # the server stops after this many rounds of num_rounds

    def start(self, *, grid, initial_arrays, num_rounds, timeout, evaluate_fn):
        for r in range(min(num_rounds, stop_after[0]) + 1):
            applied_round(self, r)
            evaluate_fn(r, initial_arrays)

    monkeypatch.setattr(rounds.Recorded, "start", start)
    config = federate_config(tmp_path, tiny_model_dir)
    run, previous = tmp_path / "run", tmp_path / "run.previous"
    shutil.copytree(tiny_run_dir, run)
    run_federation(None, load_config(config, {"overwrite": True}), 2, ["site0", "site1"], resume=False)
    out = capsys.readouterr().out
    assert f"replacing: moving the finished run in {run} to {previous}, deleted once this run finishes" in out
    assert f"the previous run is kept in {previous}" in out and (previous / "run.json").is_file()  # stopped early

    run_federation(None, load_config(config, {"overwrite": True}), 2, ["site0", "site1"], resume=False)
    out = capsys.readouterr().out
    assert (
        f"replacing: deleting the federation stopped after round 1 of 2 (with its adapter of that round) in {run}, "
        f"an unfinished replacement of the run in {previous}" in out
    )
    assert (previous / "run.json").is_file()

    stop_after[0] = 2
    run_federation(None, load_config(config), 2, ["site0", "site1"], resume=True)
    assert f"replaced the previous run in {run}" in capsys.readouterr().out
    assert not previous.exists() and json.loads((run / "run.json").read_text())["finished"]


def test_a_resumed_federation_trains_in_the_dtype_it_started_in(
    tmp_path, tiny_model_dir, federate_config, monkeypatch, gpu_bf16, capsys, applied_round
):
    """Started where auto picks fp16 (a GPU without native bf16) and resumed where it picks bf16: the server and
    every client built the model in bf16, so the rounds after the resume trained in another dtype than those before.
    Now auto keeps the run's dtype for the server and, through the recipe, the clients, and says so. On the CPU, with
    training_dtype answering as on such GPUs."""

    from tunelab.federated.payload import recipe_config
    from tunelab.rundir import read_info

    bf16 = gpu_bf16
    sent = []

    def start(self, *, grid, initial_arrays, num_rounds, timeout, evaluate_fn):
        sent.append(recipe_config(self.recipe).model.dtype)
        for r in range(num_rounds + 1):
            applied_round(self, r)
            evaluate_fn(r, initial_arrays)

    monkeypatch.setattr(rounds.Recorded, "start", start)
    config = federate_config(tmp_path, tiny_model_dir)
    run = run_federation(None, load_config(config), 2, ["site0", "site1"], resume=False)
    assert read_info(run).dtype == "float16" and sent == ["auto"]  # a fresh federation: each host's auto
    bf16["native"] = True  # the other machine
    run_federation(None, load_config(config, {"federated.rounds": 3}), 2, ["site0", "site1"], resume=True)
    assert sent[1] == "fp16" and read_info(run).dtype == "float16"
    assert "resume: model.dtype auto keeps fp16, the dtype the run trained in" in capsys.readouterr().out


def test_a_federation_whose_server_ran_on_the_cpu_leaves_the_clients_dtype_to_auto(
    tmp_path, tiny_model_dir, federate_config, monkeypatch, applied_round
):
    """A server on the CPU records fp32 in run.json, whatever its GPU clients trained in (auto trains LoRA in 16
    bits on every GPU): a resume must not send them fp32."""
    from tunelab.federated.payload import recipe_config

    sent = []

    def start(self, *, grid, initial_arrays, num_rounds, timeout, evaluate_fn):
        sent.append(recipe_config(self.recipe).model.dtype)
        for r in range(num_rounds + 1):
            applied_round(self, r)
            evaluate_fn(r, initial_arrays)

    monkeypatch.setattr(rounds.Recorded, "start", start)
    config = federate_config(tmp_path, tiny_model_dir)
    run_federation(None, load_config(config), 2, ["site0", "site1"], resume=False)
    run_federation(None, load_config(config, {"federated.rounds": 3}), 2, ["site0", "site1"], resume=True)
    assert sent == ["auto", "auto"]


def test_check_resume_of_a_federation_builds_the_clients_model_in_the_runs_dtype(
    tmp_path, tiny_model_dir, federate_config, monkeypatch, gpu_bf16, rounds_without_clients
):
    """tunelab check --resume of a federated config built the first client's model in what auto picks on this
    machine (bf16), not the fp16 the federation trained in and its resumed clients now get. On the CPU, with
    training_dtype answering as on GPUs without (then with) native bf16."""

    bf16 = gpu_bf16
    config = federate_config(tmp_path, tiny_model_dir)
    run_federation(None, load_config(config), 2, ["site0", "site1"], resume=False)
    bf16["native"] = True  # the other machine
    result = tunelab.check(config, {"federated.rounds": 3}, resume=True)
    items = {item.name.split(": ", 1)[-1]: item.summary for item in result.items}
    assert items["model dtype"].startswith("resume: model.dtype auto keeps fp16, the dtype the run trained in")


def test_a_reason_flower_made_is_shown_by_its_last_line_without_colours():
    """A client whose ClientApp raised was reported, inside the server's one line a round, with Flower's reason: Ray's
    whole traceback with its terminal colours. The line shows the error's last line now; federated.json keeps it."""
    from tunelab.federated.server import brief

    ray = (
        "<class 'ray.exceptions.RayTaskError(ClientAppException)'>:<'\x1b[36mray::ClientAppActor.run()\x1b[39m (pid=1)\n"
        '  File "flwr/simulation/ray_transport/ray_actor.py", line 65, in run\n'
        "    raise ClientAppException(str(ex)) from ex\nflwr.clientapp.client_app.ClientAppException: \n"
        "Exception ClientAppException occurred. Message: CUDA out of memory.'>"
    )
    assert brief(ray) == (
        "Exception ClientAppException occurred. Message: CUDA out of memory. (the whole reason: federated.json)"
    )
    assert brief("site1.jsonl: file not found") == "site1.jsonl: file not found"
    assert brief(None) == "no reason given"


def test_the_report_shows_the_servers_eval_set_as_eval_data(read_only_federation):
    """The server's data_report.json held its eval set read as training rows, so `tunelab report` showed 6 train
    examples and no eval split for a run that trained on none of them."""
    run, _ = read_only_federation
    report = json.loads((run / "data_report.json").read_text())
    assert report["train"]["examples"] == 0 and report["eval"]["examples"] == 6 and report["eval_source"] == "file"


def test_the_report_counts_a_federation_of_one_client_as_one(
    tmp_path, tiny_model_dir, federate_config, rounds_without_clients
):
    """A federation of one client was 'fedavg over 1 clients' in `tunelab report`."""
    from tunelab.federated.history import federated_section

    config = federate_config(tmp_path, tiny_model_dir)
    one = {"federated.min_clients": 1, "federated.clients": [str(tmp_path / "site0.jsonl")]}
    run = run_federation(None, load_config(config, one), 1, ["site0"], resume=False)
    assert "fedavg over 1 client (site0)" in federated_section(run)


@pytest.mark.parametrize("losses, said", [((1.0, 1.2, 1.1), True), ((1.3, 1.2, 1.1), False)])
def test_keep_best_says_when_no_round_beat_the_base_model(
    tmp_path, tiny_model_dir, federate_config, rounds_without_clients, monkeypatch, capsys, losses, said
):
    """A federation whose every round evaluated worse than the base model (round 0) ended 'keep_best: the last round
    (2) had the lowest eval loss (1.1000); it is the result.', read as an improvement beside round 0's 1.0000."""
    from tunelab.federated import server

    scripted = iter(losses)
    monkeypatch.setattr(server, "evaluate", lambda model, batches: next(scripted))
    run_federation(None, load_config(federate_config(tmp_path, tiny_model_dir)), 2, ["site0", "site1"], False)
    out = capsys.readouterr().out
    assert "keep_best: the last round (2) had the lowest eval loss (1.1000); it is the result." in out
    note = "But the base model's, before round 1, was no higher (1.0000): no round improved on it."
    assert (note in out) == said


def test_an_app_says_its_supernodes_read_their_own_data_not_the_clients_listed(
    tmp_path, tiny_model_dir, federate_config, capsys
):
    """--app-dir wrote an app from a config listing the clients' files on the server's host, and said nothing of
    them: a user expected the server to hand them out, but each SuperNode trains on what its --node-config names."""
    config = federate_config(tmp_path, tiny_model_dir, clients=3)
    tunelab.federate(config, app_dir=tmp_path / "app")
    out = capsys.readouterr().out
    assert "federated.clients: the deployment reads none of its 3 entries (it counts the SuperNodes" in out
    (tmp_path / "all.jsonl").write_text((tmp_path / "site0.jsonl").read_text())
    shards = {"federated.clients": [], "federated.split_file": str(tmp_path / "all.jsonl"), "overwrite": True}
    tunelab.federate(config, shards, app_dir=tmp_path / "app")
    assert (
        f"federated.split_file: the deployment does not split {tmp_path / 'all.jsonl'} among" in capsys.readouterr().out
    )


def test_run_json_counts_the_tokens_the_clients_trained_on(tmp_path, tiny_model_dir, federate_config, monkeypatch):
    """run.json of a federation said tokens 0 (tunelab train records the tokens it trained on): it is the sum of what
    the clients that trained each round replied; a failed client's round counts nothing."""
    from tunelab.federated.rounds import ClientRound, RoundReport

    def start(self, *, grid, initial_arrays, num_rounds, timeout, evaluate_fn):
        evaluate_fn(0, initial_arrays)
        for r in range(1, num_rounds + 1):
            clients = [
                ClientRound("site0", 1, "ok", examples=3, train_loss=2.0, tokens=100 * r),
                ClientRound("site1", 2, "ok", examples=3, train_loss=2.0, tokens=250),
                ClientRound("site2", 3, "failed", reason="out of memory"),
            ]
            self.reports[r] = RoundReport(r, sampled=3, applied=True, clients=clients)
            evaluate_fn(r, initial_arrays)

    monkeypatch.setattr(rounds.Recorded, "start", start)
    run = run_federation(None, load_config(federate_config(tmp_path, tiny_model_dir)), 3, ["a", "b", "c"], False)
    assert json.loads((run / "run.json").read_text())["tokens"] == 100 + 250 + 200 + 250
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["tokens"] for r in records if r.get("client") == "site0"] == [100, 200]
    from tunelab.eval.report import build_report

    assert "<th>tokens trained on (all clients)</th><td>800</td>" in build_report(run).read_text()
