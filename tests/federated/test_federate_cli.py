"""`tunelab federate` end to end on a tiny model: the real CLI, Flower's simulation engine (Ray), 2 clients x 2
rounds; a server killed after round 1 and resumed, then given a third round (its server's side); bad input giving
exit code 2 (a failing client: test_deployment).

The federations start Ray and a worker per client, tens of seconds each on two cores, so each runs once and the tests
read it: the model is the tiny one with a zero embedding row (model.fix_untrained_tokens repairs it on the server and
on every client), and the third round's eval loss is scripted (train.keep_best then keeps round 2). Two federations
start: the uninterrupted one, and the resume of its run directory as a server killed after round 1 leaves it (copied
then), beside its second round (each a Ray cluster of its own): most of a federation's time is its processes
starting, which leaves the cores idle.

Each federation runs in its own process (as a user runs it), so Ray never starts inside the test process. What
starts no federation (bad input, a resume with no round left) runs the CLI's `main` here, with `simulate` replaced
by a failure so that it cannot start Ray by mistake; so does the third round, with `simulate` replaced by the
ServerApp's rounds without Flower's transport (a federation's start is the file's cost, and what the third round
checks is the server's: its config.yaml, federated.json, run.json and train.keep_best's choice)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

pytest.importorskip("flwr", reason="the federated extra (flwr) is not installed")
pytest.importorskip("ray", reason="Flower's simulation engine needs ray")

from safetensors.torch import load_file  # noqa: E402

import tunelab.federated.run as federated_run  # noqa: E402
from tunelab.cli import main  # noqa: E402


def _env() -> dict[str, str]:
    return os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "FLWR_TELEMETRY_ENABLED": "0"}


def _federate(*args, out, err) -> subprocess.Popen:
    """`tunelab federate *args` started in a process of its own (a session of its own, with what it starts), writing
    to the files `out` and `err`."""
    command = [sys.executable, "-m", "tunelab.cli", "federate", *map(str, args)]
    return subprocess.Popen(command, stdout=out, stderr=err, text=True, env=_env(), start_new_session=True)


@pytest.fixture
def no_simulation(monkeypatch):
    """The CLI in this process, where no federation may start: `simulate` fails the test if it is reached."""

    def simulate(*args, **kwargs):
        raise AssertionError("a federation was started in the test process")

    monkeypatch.setattr(federated_run, "simulate", simulate)


def _round_records(run: Path) -> list[dict]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if "client" not in r]


def _one_round_more_in_this_process(monkeypatch, applied_round) -> None:
    """`simulate` in this process, for a resume asking for one round more: the ServerApp's own rounds (run_federation:
    evaluation, keep_best, checkpoints, config.yaml, federated.json, run.json) with Flower's transport replaced by a
    round whose applied update moves every tensor of the global adapter, and the server's eval loss of that round
    scripted (99.0, the worst): which round train.keep_best keeps then does not hang on what a tiny model learns."""
    from tunelab.federated import rounds, server
    from tunelab.federated.payload import from_record, to_record

    def start(self, *, grid, initial_arrays, num_rounds, timeout, evaluate_fn):
        assert evaluate_fn(0, initial_arrays) is None  # resumed: the adapter it resumes from is not scored again
        for r in range(1, num_rounds + 1):
            applied_round(self, r)
            evaluate_fn(r, to_record({k: v + 0.01 for k, v in from_record(initial_arrays).items()}))

    def simulate(resolved, clients, resume):
        server.run_federation(None, resolved, len(clients), [c.name for c in clients], resume=resume)

    monkeypatch.setattr(rounds.Recorded, "start", start)
    monkeypatch.setattr(server, "evaluate", lambda model, batches: 99.0)
    monkeypatch.setattr(federated_run, "simulate", simulate)


def _copy_after_round_1(process: subprocess.Popen, run: Path, copy: Path) -> None:
    """Copy the run directory of the federation `process` as a server killed once its federated.json records a round
    done leaves it: a server stopped between rounds, with nothing of its own to finish. The server (this process:
    Flower's simulation runs the ServerApp in a thread of it) is paused while its run directory is copied, so the copy
    holds each file as the disk held it at one instant, which is what a kill at that instant leaves (what the process
    had not yet written is in neither)."""
    state = run / "federated.json"
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if state.is_file() and json.loads(state.read_text())["rounds_done"] >= 1:
            os.kill(process.pid, signal.SIGSTOP)
            try:
                shutil.copytree(run, copy)
            finally:
                os.kill(process.pid, signal.SIGCONT)
            return
        time.sleep(0.05)


def _finished(process: subprocess.Popen, out, err) -> subprocess.CompletedProcess:
    """The federation `process` once it has ended (killed with what it started after 600 s), with what it wrote to
    the files `out` and `err`."""
    try:
        process.wait(timeout=600)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    out.seek(0), err.seek(0)
    return subprocess.CompletedProcess(process.args, process.returncode, out.read(), err.read())


@pytest.fixture(scope="module")
def federations(tmp_path_factory, zero_row_model_dir, federate_config_module):
    """2 clients x 2 rounds through the CLI on the tiny model with a zero row ("uninterrupted": its run directory and
    finished process), and the same federation as a server killed after round 1 left it ("stopped": its config, run
    directory and the rounds done there, "resumed": that run resumed through the CLI, its finished process).

    The stopped run is the uninterrupted one's directory copied after round 1 (`_copy_after_round_1`) into an
    output_dir of its own (a resume allows that change), and it is resumed at once, its Ray cluster beside the
    uninterrupted federation's second round: most of a federation's time is its processes starting, which leaves the
    cores idle."""
    folder = tmp_path_factory.mktemp("federate")
    config = federate_config_module(folder, zero_row_model_dir[0])
    stopped = folder / "stopped"  # the same clients' files and eval set: the config differs in output_dir alone
    stopped_config = folder / "stopped.yaml"
    stopped_config.write_text(yaml.safe_dump(yaml.safe_load(config.read_text()) | {"output_dir": str(stopped)}))
    files = [(folder / f"{name}.txt").open("w+") for name in ("stdout", "stderr", "resumed-out", "resumed-err")]
    try:
        process = _federate(config, out=files[0], err=files[1])
        try:
            _copy_after_round_1(process, folder / "run", stopped)
        except BaseException:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise
        copied = (stopped / "federated.json").is_file()  # not when the federation ended before its first round
        rounds_done = json.loads((stopped / "federated.json").read_text())["rounds_done"] if copied else 0
        resuming = _federate(stopped_config, "--resume", out=files[2], err=files[3]) if copied else None
        try:
            done = _finished(process, *files[:2])
        finally:  # the resume's processes are waited for (or killed) whatever became of the first federation's
            resumed = _finished(resuming, *files[2:]) if copied else None
    finally:
        for file in files:
            file.close()
    return {
        "uninterrupted": (folder / "run", done),
        "stopped": (stopped_config, stopped, rounds_done),
        "resumed": resumed,
    }


@pytest.fixture(scope="module")
def uninterrupted(federations):
    """2 clients x 2 rounds through the CLI, never stopped: its run directory and finished process."""
    return federations["uninterrupted"]


@pytest.mark.slow
def test_two_clients_two_rounds_through_the_cli(uninterrupted, zero_row_model_dir):
    """Also: model.fix_untrained_tokens (on by default) was not applied: the server and every client trained and
    evaluated over the base's zero row, and run.json recorded no repaired rows, so the run opened with the zero row
    too."""
    from tunelab.infer.run import open_run
    from tunelab.models.untrained import embedding_matrices

    run, done = uninterrupted
    model_dir, im_start = zero_row_model_dir
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for name in ("run.json", "config.yaml", "adapter_config.json", "adapter_model.safetensors", "federated.json"):
        assert (run / name).is_file(), name
    assert (run / "federated.png").stat().st_size > 1000
    rounds = _round_records(run)
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert rounds[2]["eval_loss"] < rounds[0]["eval_loss"]  # the global adapter learnt from both clients
    assert all(r["clients_used"] == 2 and r["bytes_sent"] > 0 and r["bytes_received"] > 0 for r in rounds[1:])
    clients = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    clients = [r for r in clients if "client" in r]
    assert sorted((r["round"], r["client"]) for r in clients) == [
        (1, "site0"),
        (1, "site1"),
        (2, "site0"),
        (2, "site1"),
    ]
    assert all(r["client_loss"] > 0 and r["examples"] == 12 for r in clients)
    info = json.loads((run / "run.json").read_text())
    assert info["finished"] and info["steps"] == 2 and info["extra"]["federated"]["complete"]
    assert "round 2/2 | eval loss" in done.stdout
    # one line a round, tunelab's: neither Flower's INFO lines nor the clients' own through Ray
    output = done.stdout + done.stderr
    assert [line[:9] for line in output.splitlines() if line.startswith("round ")] == [
        "round 0 (",
        "round 1/2",
        "round 2/2",
    ]
    assert "INFO" not in output and "ClientAppActor" not in output and "deduplicates logs" not in output

    from tunelab.federated.history import federated_section

    section = federated_section(run)  # the report's section about the federation
    assert "<svg" in section and "round 2: eval loss" in section and "site1" in section

    # the zero row, repaired on the server and on every client, and the run opens with the repaired row
    assert (
        f"untrained tokens: 1 token of the tokenizer has untrained rows: '<|im_start|>' (id {im_start}" in done.stdout
    )
    assert "repaired on the server and on every client" in done.stdout
    assert info["fixed_untrained_tokens"] == {"embed_tokens": [im_start]}
    embed = embedding_matrices(open_run(run, device="cpu").model)["embed_tokens"]
    trained = embed[torch.arange(len(embed)) != im_start]
    assert torch.allclose(embed[im_start], trained.float().mean(0).to(embed.dtype))  # the mean of the trained rows

    # a normal run directory: PEFT loads the global adapter
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), run)


@pytest.mark.slow
def test_resume_after_the_server_is_stopped(
    federations, uninterrupted, no_simulation, monkeypatch, applied_round, capsys
):
    config, run, rounds_done = federations["stopped"]  # as a server killed once its first round was done leaves it
    state = run / "federated.json"
    assert rounds_done == 1, "the run ended before it could be stopped"

    done = federations["resumed"]  # resumed through the CLI, beside the uninterrupted federation's second round
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "resuming" in done.stdout
    assert [r["round"] for r in _round_records(run)] == [0, 1, 2]  # no round twice
    assert json.loads(state.read_text())["rounds_done"] == 2
    # the same rounds as the uninterrupted run: data order, learning rate and seeds are functions of the round
    resumed = load_file(str(run / "adapter_model.safetensors"))
    straight = load_file(str(uninterrupted[0] / "adapter_model.safetensors"))
    for key, value in straight.items():
        assert (resumed[key] - value).abs().max() < 1e-5, key

    capsys.readouterr()  # nothing left to do: refused, as tunelab train refuses it, and no simulation started for it
    assert main(["federate", str(config), "--resume"]) == 2
    assert "all 2 rounds are done and this config asks for 2, so --resume has nothing to" in capsys.readouterr().err
    assert json.loads(state.read_text())["rounds_done"] == 2

    # more rounds may be asked for on resume; config.yaml, federated.json and run.json then say so
    losses = [r["eval_loss"] for r in _round_records(run)]
    assert losses[2] < losses[1] < losses[0], losses  # the real losses: each round learnt
    # the server's side of it, in this process: the real clients' side of a resume is the federation resumed above
    _one_round_more_in_this_process(monkeypatch, applied_round)
    assert main(["federate", str(config), "--resume", "--federated.rounds", "3"]) == 0  # round 3's loss: the worst
    out = capsys.readouterr().out
    assert "resume: federated.rounds: 2 -> 3" in out and "round 3/3 | eval loss 99.0000" in out
    assert yaml.safe_load((run / "config.yaml").read_text())["federated"]["rounds"] == 3
    assert json.loads(state.read_text())["rounds"] == json.loads(state.read_text())["rounds_done"] == 3
    info = json.loads((run / "run.json").read_text())
    assert info["extra"]["federated"]["rounds"] == 3 and info["steps"] == 3

    # train.keep_best (on by default) was ignored: the result was the last round's adapter, whatever its eval loss.
    # Round 2's eval loss is the lowest, round 3's the last: round 2's global adapter stays the result.
    assert [r["eval_loss"] for r in _round_records(run)] == [*losses, 99.0]
    assert info["eval_loss"] == losses[2] and info["extra"]["best"] == {"step": 2, "eval_loss": losses[2]}
    result = load_file(str(run / "adapter_model.safetensors"))
    second, third = (
        load_file(str(run / "checkpoints" / f"round-{r:07d}" / "adapter_model.safetensors")) for r in (2, 3)
    )
    assert all(torch.equal(result[k], second[k]) for k in result)
    assert any(not torch.equal(result[k], third[k]) for k in result)
    assert (
        f"keep_best: round 2 had the lowest eval loss ({losses[2]:.4f}); its global adapter is the result "
        "(the last round, 3, had 99.0000)" in out
    )


@pytest.mark.slow
def test_resume_refuses_a_changed_config_before_anything_runs(uninterrupted, no_simulation, capsys):
    run, done = uninterrupted
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    config, saved = run.parent / "federate.yaml", (run / "config.yaml").read_text()
    west = run.parent / "west.jsonl"
    west.write_text((run.parent / "site1.jsonl").read_text())
    changed = ["--train.lr", "0.05", "--train.seed", "9", "--federated.local_steps", "2"]
    changed += ["--federated.clients", f"[{run.parent / 'site0.jsonl'}, {west}]"]
    capsys.readouterr()
    assert main(["federate", str(config), "--resume", "--federated.rounds", "3", *changed]) == 2
    err = capsys.readouterr().err
    for line in ("train.lr: 0.001 -> 0.05", "train.seed: 42 -> 9", "federated.local_steps: 3 -> 2", "west.jsonl"):
        assert line in err, err
    assert "federated.rounds" not in err  # more rounds are allowed
    assert main(["federate", str(config), "--resume", "--federated.rounds", "1"]) == 2
    assert "fewer than the 2 rounds the federation has done" in capsys.readouterr().err
    assert (run / "config.yaml").read_text() == saved

    # a second resume while a process writes the run (here: its lock held by another open file, as another process
    # holds it) is refused before anything runs; two resumed servers both wrote rounds into the same run
    import fcntl

    from tunelab.training.outdir import LOCK_FILE

    held = os.open(run / LOCK_FILE, os.O_RDWR | os.O_CREAT)
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        assert main(["federate", str(config), "--resume", "--federated.rounds", "3"]) == 2
        assert "another tunelab process is writing this run" in capsys.readouterr().err
    finally:
        os.close(held)
    assert (run / "config.yaml").read_text() == saved


def test_a_client_with_no_data_exits_2_with_a_message(tmp_path, tiny_model_dir, federate_config, no_simulation, capsys):
    config = federate_config(tmp_path, tiny_model_dir)
    (tmp_path / "site1.jsonl").write_text("")
    assert main(["federate", str(config)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "client site1" in err and "site1.jsonl" in err
    assert not (tmp_path / "run").exists()  # stopped before any client or server started


def test_a_missing_server_eval_set_exits_2_before_anything_starts(
    tmp_path, tiny_model_dir, federate_config, no_simulation, capsys
):
    """A data.eval that does not exist was found by the server only after Ray and the clients had started (a
    minute on two cores), leaving an empty output_dir behind."""
    config = federate_config(tmp_path, tiny_model_dir)
    assert main(["federate", str(config), "--data.eval", "nope.jsonl"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "nope.jsonl: file not found" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"federated.min_clients": 3}, "'federated.min_clients' is 3 but the federation has 2 clients"),
        ({"federated.strategy": "fedsgd"}, "allowed values: fedavg, fedprox"),
        ({"method.name": "full"}, "needs lora"),
        ({"data.train": ["x.jsonl"]}, "federated.clients or federated.split_file"),
        ({"federated.split_file": "all.jsonl"}, "both set"),
        ({"federated.clients": "null"}, r"'federated.clients' must be a list of str \| ClientSource, got None"),
        ({"federated.dp": True, "federated.dp_noise_multiplier": 0.0}, "dp_noise_multiplier > 0"),
        ({"data.max_length": 2048}, r"'data.max_length' .*is 2048, above the context window .*: 1024 tokens"),
        ({"federated.proximal_mu": 0.5}, r"federated.proximal_mu \(0.5\): only strategy fedprox reads it"),
        ({"federated.dp_clipping_norm": 3.0}, r"federated.dp_clipping_norm \(3.0\): only federated.dp: true reads"),
        ({"federated.split": "column"}, r"federated.split \('column'\): only federated.split_file is split"),
        ({"federated.num_clients": 5}, "'federated.num_clients' is 5 but option 'federated.clients' names 2 clients"),
        # its default, given beside 3 clients, was taken as unset: the clients listed counted, the option given did not
        (
            {"federated.num_clients": 2, "federated.clients": ["site0.jsonl", "site1.jsonl", "server_eval.jsonl"]},
            "'federated.num_clients' is 2 but option 'federated.clients' names 3",
        ),
        # a missing client file was said to be 'in data.train / data.eval', options a federation leaves unset
        # given as a flag, the path was said to be relative to the config's folder: it is the working directory's
        (
            {"federated.clients": ["gone.jsonl"]},
            r"^option 'federated.clients': \S*gone.jsonl: no such file or folder .*--flag, from the working directory",
        ),
        (
            {"federated.clients": [], "federated.split_file": "gone.jsonl"},
            r"^option 'federated.split_file': \S*gone.jsonl: no such file or folder",
        ),
    ],
)
def test_bad_config_is_refused_before_anything_runs(tmp_path, tiny_model_dir, federate_config, overrides, message):
    import tunelab
    from tunelab.errors import TunelabError

    with pytest.raises(TunelabError, match=message):
        tunelab.federate(federate_config(tmp_path, tiny_model_dir), overrides)


def test_a_federation_of_one_client_is_counted_as_one(tmp_path, tiny_model_dir, federate_config):
    """A smoke run of one client was told 'the federation has 1 clients'."""
    import tunelab
    from tunelab.errors import ConfigError

    config = federate_config(tmp_path, tiny_model_dir)
    with pytest.raises(ConfigError, match="'federated.min_clients' is 2 but the federation has 1 client; lower"):
        tunelab.federate(config, {"federated.clients": [str(tmp_path / "site0.jsonl")]})


def test_options_a_federation_does_not_read_are_refused(
    tmp_path, tiny_model_dir, federate_config, no_simulation, capsys
):
    config = federate_config(tmp_path, tiny_model_dir)
    unread = ["--train.max_steps", "50", "--train.save_every", "1", "--train.eval_every", "2"]
    unread += ["--stages", f"[{{data: {{train: [{tmp_path / 'site0.jsonl'}]}}, train: {{lr: 0.5}}}}]"]
    for command in (["federate"], ["check", "--data-only"]):
        assert main([*command, str(config), *unread]) == 2
        err = capsys.readouterr().err
        for name in ("train.max_steps (50)", "train.save_every (1)", "train.eval_every (2)", "stages ("):
            assert name in err, err
        assert "federated.rounds x federated.local_steps" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_a_federation_that_fails_says_where_the_run_it_replaces_is(
    tmp_path, tiny_model_dir, tiny_run_dir, federate_config, capsys
):
    """--overwrite moved the finished run aside to NAME.previous; a federation that then failed (here: its base cannot
    be opened) kept it there without saying so."""
    import shutil

    from tunelab.config import load_config
    from tunelab.errors import TunelabError
    from tunelab.federated.server import run_federation

    config = federate_config(tmp_path, tiny_model_dir)
    shutil.copytree(tiny_run_dir, tmp_path / "run")
    resolved = load_config(config, {"overwrite": True, "model.name": str(tmp_path / "no-such-model")})
    with pytest.raises(TunelabError, match="no-such-model"):
        run_federation(None, resolved, 2, ["site0", "site1"], resume=False)  # the ServerApp's work, no Flower grid
    previous = tmp_path / "run.previous"
    assert (
        f"the previous run is kept in {previous} until a run in {tmp_path / 'run'} finishes" in capsys.readouterr().err
    )
    assert (previous / "run.json").is_file()


def test_run_directory_is_never_replaced_silently(tmp_path, tiny_model_dir, federate_config):
    import tunelab
    from tunelab.errors import RunDirError

    config = federate_config(tmp_path, tiny_model_dir)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "mine.txt").write_text("keep")
    with pytest.raises(RunDirError, match=r"is not a run directory .*delete it yourself .*\(federate\(\) replaces"):
        tunelab.federate(config)  # not "pass overwrite": federate() would refuse this folder with it too
    with pytest.raises(RunDirError, match="nothing to resume"):
        tunelab.federate(config, resume=True)
    assert (tmp_path / "run" / "mine.txt").read_text() == "keep"


def test_a_folder_federate_will_not_replace_is_refused_with_what_federate_offers(
    tmp_path, tiny_model_dir, federate_config, no_simulation, capsys
):
    """output_dir holding files of the user's was refused with 'add --overwrite-non-run', which tunelab federate
    rejects as an unknown option, and an existing run with 'in Python: train(config, ...)', not federate; the CLI is
    told of its flags alone."""
    config = federate_config(tmp_path, tiny_model_dir)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "mine.txt").write_text("keep")
    assert main(["federate", str(config), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "is not a run directory tunelab wrote" in err and "--overwrite-non-run" not in err
    assert "delete it yourself if everything in it may go (tunelab federate replaces run directories only)" in err
    (tmp_path / "run" / "run.json").write_text('{"base_model": "m", "method": "lora"}')  # a run's description
    assert main(["federate", str(config)]) == 2
    err = capsys.readouterr().err
    said = (
        "Pass --overwrite to replace it (the old run is kept until the new one finishes), --resume to continue it, "
        "or choose another output_dir.\n"
    )
    assert said in err
    assert "Python" not in err
    assert (tmp_path / "run" / "mine.txt").read_text() == "keep"


def test_the_flower_app_is_never_written_into_a_run_directory(tmp_path, tiny_model_dir, federate_config, capsys):
    """--app-dir naming the output_dir (or a folder inside a run) wrote the app there; the server then refused the
    folder it ran from, or with --overwrite moved it aside with the run and deleted it."""
    from tunelab.cli import main
    from tunelab.run_info import RunInfo
    from tunelab.rundir import write_info

    config = federate_config(tmp_path, tiny_model_dir, clients=2, rounds=1)
    other = tmp_path / "other"
    other.mkdir()
    write_info(other, RunInfo(base_model="m", method="lora"))
    for app, says in ((tmp_path / "run", "is the run directory"), (other / "app", "is inside the run directory")):
        assert main(["federate", str(config), "--app-dir", str(app)]) == 2
        err = capsys.readouterr().err
        assert says in err and not (app / "pyproject.toml").exists()
        assert "whose --overwrite stops at files tunelab did not write there (refused, naming them)" in err
    assert main(["federate", str(config), "--app-dir", str(tmp_path / "app")]) == 0


def test_a_client_folder_without_data_files_is_not_said_of_data_train(tmp_path, tiny_model_dir, federate_config):
    """A client whose folder held no data files was told to check data.train, an option a federation refuses."""
    import tunelab
    from tunelab.errors import DataError

    (tmp_path / "north").mkdir()
    (tmp_path / "north" / "notes.pdf").write_text("not data")
    config = federate_config(tmp_path, tiny_model_dir)
    with pytest.raises(DataError) as error:
        tunelab.federate(config, {"federated.clients": [str(tmp_path / "site0.jsonl"), str(tmp_path / "north")]})
    assert str(error.value).startswith(f"client north: {tmp_path / 'north'}: the folder holds no data files")
    assert "data.train" not in str(error.value)


def test_the_simulation_does_not_pass_on_rays_tip_about_its_future_defaults(
    tmp_path, tiny_model_dir, federate_config, monkeypatch
):
    """Every tunelab federate printed Ray's FutureWarning 'Tip: In future versions of Ray, Ray will no longer override
    accelerator visible devices env var if num_gpus=0 ...', naming an environment variable tunelab's users have no
    reason to set."""
    import warnings

    import flwr.simulation

    from tunelab.config import load_config
    from tunelab.federated.run import federation_clients, simulate

    def run_simulation(**kwargs):
        warnings.warn(
            "Tip: In future versions of Ray, Ray will no longer override accelerator ...", FutureWarning, stacklevel=2
        )
        warnings.warn("a warning of its own", UserWarning, stacklevel=2)

    monkeypatch.setattr(flwr.simulation, "run_simulation", run_simulation)
    resolved = load_config(federate_config(tmp_path, tiny_model_dir))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        simulate(resolved, federation_clients(resolved.config), resume=False)
    assert [str(w.message) for w in seen] == ["a warning of its own"]


def test_a_shard_client_is_named_client_2_not_client_client_2(tmp_path, tiny_model_dir, federate_config, capsys):
    """A split_file shard without usable rows stopped federate with 'client client-2: ...', and the start lines
    named every shard so ('client client-1: 6 examples ...')."""
    import json

    import tunelab
    from tunelab.errors import DataError
    from tunelab.federated.run import check_clients, federation_clients

    rows = [{"question": f"Box {i}?", "answer": f"Code {i}.", "t": "a"} for i in range(6)]
    rows += [{"question": "word " * 200, "answer": "x", "t": "b"} for _ in range(3)]  # over max_length 64
    (tmp_path / "all.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    split = {"federated.clients": [], "federated.split_file": str(tmp_path / "all.jsonl"), "federated.split": "column"}
    config = federate_config(tmp_path, tiny_model_dir)
    with pytest.raises(DataError, match=r"^client-2: \S*all.jsonl: no usable training examples"):
        tunelab.federate(config, split | {"federated.split_column": "t"})
    resolved = tunelab.config.load_config(config, split | {"federated.split": "iid"})
    check_clients(resolved.config, federation_clients(resolved.config))
    out = "\n" + capsys.readouterr().out
    assert "\nclient-1: " in out and "\nclient-2: " in out and "client client-" not in out


def test_flowers_warnings_about_tunelabs_own_choices_are_not_passed_on(
    tmp_path, tiny_model_dir, federate_config, monkeypatch
):
    """Every tunelab federate printed Flower's 'WARNING: fraction_evaluate is set to 0.0. Federated evaluation will be
    skipped.' (the server evaluates each round itself) and 'DEPRECATED FEATURE: The `run_simulation` function is
    deprecated ... Please use `flwr run`' (tunelab runs the simulation): read as problems, with nothing to act on.
    Flower's other lines still pass."""
    import logging

    import flwr.simulation
    from flwr.supercore.logger import warn_deprecated_feature

    from tunelab.config import FederatedConfig, load_config
    from tunelab.federated.rounds import build_strategy
    from tunelab.federated.run import federation_clients, simulate

    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logging.getLogger("flwr").addHandler(handler)

    def run_simulation(**kwargs):
        warn_deprecated_feature("The `run_simulation` function is deprecated and will be removed ...")
        logging.getLogger("flwr").warning("a line of its own")

    monkeypatch.setattr(flwr.simulation, "run_simulation", run_simulation)
    try:
        build_strategy(FederatedConfig(min_clients=2), 3)
        resolved = load_config(federate_config(tmp_path, tiny_model_dir))
        simulate(resolved, federation_clients(resolved.config), resume=False)
        run_simulation()  # outside: Flower's lines reach the handler
    finally:
        logging.getLogger("flwr").removeHandler(handler)
    assert seen[0] == "a line of its own" and seen[1].lstrip().startswith("DEPRECATED FEATURE: The `run_simulation`")
    assert not any("fraction_evaluate" in line for line in seen) and len(seen) == 3
