"""`tunelab federate --resume` on the ServerApp's run directory, without Flower's transport (`rounds_without_clients`
in conftest.py, or a `Recorded.start` of the test's own): what a resumed federation keeps, refuses and says."""

import json

import pytest

pytest.importorskip("flwr", reason="the federated extra (flwr) is not installed")

import tunelab
from tunelab.cli import main
from tunelab.config import load_config
from tunelab.errors import ConfigError
from tunelab.federated import rounds
from tunelab.federated.resume import check_resume
from tunelab.federated.server import run_federation


def test_a_resume_after_rounds_that_applied_no_update_says_what_it_continues_from(
    tmp_path, tiny_model_dir, federate_config, monkeypatch, capsys
):
    """A federation whose last round applied no update (every client failed) was resumed without a word: the rounds
    it ran started from the same adapter with the same clients, and failed the same way unless that was fixed."""
    from tunelab.federated.rounds import ClientRound, RoundReport

    failing = [2]  # the rounds every client fails in

    def start(self, *, grid, initial_arrays, num_rounds, timeout, evaluate_fn):
        evaluate_fn(0, initial_arrays)
        for r in range(self.offset + 1, min(self.offset + num_rounds, 2) + 1):
            if r in failing:
                clients = [ClientRound(f"site{i}", i, "failed", reason="CUDA out of memory.") for i in range(2)]
            else:
                clients = [ClientRound(f"site{i}", i, "ok", examples=3, train_loss=2.0) for i in range(2)]
            self.reports[r] = RoundReport(r, sampled=2, applied=r not in failing, clients=clients)
            evaluate_fn(r - self.offset, initial_arrays)

    monkeypatch.setattr(rounds.Recorded, "start", start)
    config = federate_config(tmp_path, tiny_model_dir)
    run = run_federation(None, load_config(config, {"federated.rounds": 3}), 2, ["site0", "site1"], resume=False)
    notes = check_resume(run, load_config(config, {"federated.rounds": 3}).config)
    said = (
        "resume: round 2 of the federation applied no update (site0: CUDA out of memory.; site1: CUDA out of "
        "memory.). --resume continues from the global adapter of round 1, with the same clients and settings"
    )
    assert any(n.startswith(said) for n in notes), notes
    capsys.readouterr()
    failing.append(1)
    (run / "federated.json").write_text(  # round 1 failed as well: nothing was ever applied
        (run / "federated.json").read_text().replace('"applied": true', '"applied": false')
    )
    notes = check_resume(run, load_config(config, {"federated.rounds": 3}).config)
    assert any(
        "rounds 1-2 of the federation applied no update" in n and "from the untrained adapter" in n for n in notes
    )

    (run / "federated.json").write_text(
        (run / "federated.json").read_text().replace('"applied": false', '"applied": true')
    )
    assert not any(
        "applied no update" in n for n in check_resume(run, load_config(config, {"federated.rounds": 3}).config)
    )


def test_a_resumed_federation_says_its_time_in_all_and_this_time(
    tmp_path, tiny_model_dir, federate_config, rounds_without_clients, capsys
):
    """A resumed federation ended '(3 rounds, 146 s)', the earlier rounds' time counted in without a word: a user took
    it for this command's."""
    config = federate_config(tmp_path, tiny_model_dir)
    run = run_federation(None, load_config(config, {"federated.rounds": 2}), 2, ["site0", "site1"], resume=False)
    first = [line for line in capsys.readouterr().out.splitlines() if line.startswith("saved to ")]
    assert len(first) == 1 and "in all" not in first[0] and first[0].endswith(" s)"), first
    state = json.loads((run / "federated.json").read_text())
    (run / "federated.json").write_text(json.dumps(state | {"elapsed_s": 1000.0}))  # the first command's rounds
    run_federation(None, load_config(config, {"federated.rounds": 3}), 2, ["site0", "site1"], resume=True)
    saved = [line for line in capsys.readouterr().out.splitlines() if line.startswith("saved to ")]
    assert len(saved) == 1 and saved[0].endswith(" s this time)"), saved
    in_all, this_time = saved[0].split("(3 rounds, ", 1)[1].split(" s in all, ")
    assert int(in_all) >= 1000 > int(this_time.split(" s")[0])


def test_a_resume_refuses_other_eval_rows_under_the_same_name(
    tmp_path, tiny_model_dir, federate_config, rounds_without_clients, capsys
):
    """run.json kept no record of the server's eval rows: a --resume with another data.eval under the same name went
    on, and keep_best compared the new rounds' eval losses with the best of the old rounds' (tunelab train refuses)."""
    config = federate_config(tmp_path, tiny_model_dir)
    run = run_federation(None, load_config(config), 2, ["site0", "site1"], resume=False)
    run_federation(None, load_config(config, {"federated.rounds": 3}), 2, ["site0", "site1"], resume=True)
    assert json.loads((run / "federated.json").read_text())["rounds_done"] == 3  # the same eval rows: resumed

    eval_file = tmp_path / "server_eval.jsonl"
    eval_file.write_text(eval_file.read_text().replace("Box", "Crate"))
    changed = load_config(config, {"federated.rounds": 4})
    with pytest.raises(ConfigError, match="resume=True needs the eval data the run started with.*server_eval.jsonl"):
        run_federation(None, changed, 2, ["site0", "site1"], resume=True)
    with pytest.raises(ConfigError) as caught:
        tunelab.federate(config, {"federated.rounds": 4}, resume=True)  # before the simulation starts
    # a Python caller was told "--resume needs the eval data", a flag it never gave
    assert "resume=True needs the eval data the run started with" in str(caught.value)
    assert "--resume" not in str(caught.value)
    assert main(["federate", str(config), "--federated.rounds", "4", "--resume"]) == 2
    assert "--resume needs the eval data the run started with" in capsys.readouterr().err
    assert json.loads((run / "federated.json").read_text())["rounds_done"] == 3


def test_a_resumed_federation_removes_the_scores_of_the_adapter_before_it(
    tmp_path, tiny_model_dir, federate_config, rounds_without_clients, capsys
):
    """`federate --resume` with more rounds replaced the adapter but kept eval.json, compare.json and report.html of
    the one before: `tunelab report` showed those scores beside the new round count (train --resume removes them)."""
    config = federate_config(tmp_path, tiny_model_dir)
    every_round = {"train.keep_best": False}  # each round's adapter is the result (keep_best keeps round 1's here)
    run = run_federation(None, load_config(config, every_round), 2, ["site0", "site1"], resume=False)
    for name in ("eval.json", "compare.json", "report.html"):
        (run / name).write_text("{}")
    resumed = load_config(config, every_round | {"federated.rounds": 3})
    run_federation(None, resumed, 2, ["site0", "site1"], resume=True)
    assert json.loads((run / "run.json").read_text())["steps"] == 3
    assert not any((run / name).exists() for name in ("eval.json", "compare.json", "report.html"))
    assert "removed compare.json, eval.json, report.html" in capsys.readouterr().out


def test_a_resume_with_more_rounds_keeps_the_warmup_the_federation_started_with(
    tmp_path, tiny_model_dir, federate_config, rounds_without_clients, monkeypatch, capsys
):
    """Resumed with more federated.rounds, each client took train.warmup_ratio of the new rounds x local_steps as its
    warmup: a federation past its warmup fell back into a longer one, changing the rate of rounds already trained."""
    from flwr.app import ConfigRecord

    from tunelab.federated.payload import WARMUP

    sent = []
    start = rounds.Recorded.start

    def start_and_configure(self, **kwargs):
        config = ConfigRecord({})
        self.stamp(config, 1)  # what configure_train adds to every round's message
        sent.append(dict(config))
        return start(self, **kwargs)

    monkeypatch.setattr(rounds.Recorded, "start", start_and_configure)
    config = federate_config(tmp_path, tiny_model_dir)
    run = run_federation(None, load_config(config, {"train.warmup_ratio": 0.5}), 2, ["s0", "s1"], resume=False)
    capsys.readouterr()
    run_federation(None, load_config(config, {"train.warmup_ratio": 0.5, "federated.rounds": 4}), 2, ["s0", "s1"],
                   resume=True)  # fmt: skip
    assert [s[WARMUP] for s in sent] == [3, 3]  # half of 2 rounds x 3 steps, then still 3 (not half of 4 x 3)
    assert "resume: the warmup stays 3 steps, as the federation started with them" in capsys.readouterr().out
    assert json.loads((run / "federated.json").read_text())["warmup_steps"] == 3


def test_a_kept_warmup_of_one_step_is_said_in_the_singular(tmp_path, tiny_model_dir, federate_config,
                                                          rounds_without_clients, capsys):  # fmt: skip
    """A federation resumed with more rounds after a one-step warmup printed 'the warmup stays 1 steps'."""
    config = federate_config(tmp_path, tiny_model_dir)
    run_federation(None, load_config(config, {"train.warmup_ratio": 0.2}), 2, ["s0", "s1"], resume=False)
    capsys.readouterr()
    run_federation(None, load_config(config, {"train.warmup_ratio": 0.2, "federated.rounds": 4}), 2, ["s0", "s1"],
                   resume=True)  # fmt: skip
    assert "resume: the warmup stays 1 step, as the federation started with them" in capsys.readouterr().out


def test_a_failure_without_a_reason_is_named_by_its_status():
    """A client whose failure came with a blank reason (a Ray worker that died silently) broke the resume's note."""
    from tunelab.federated.resume import idle_note

    history = [
        {"round": 1, "applied": True, "clients": []},
        {"round": 2, "applied": False, "clients": [{"client": "a", "status": "failed", "reason": " \n"}]},
    ]
    assert idle_note({"history": history})[0].startswith(
        "resume: round 2 of the federation applied no update (a: failed)"
    )


def test_a_python_callers_resume_refusals_name_its_arguments(
    tmp_path, tiny_model_dir, federate_config, rounds_without_clients
):
    """tunelab.federate(config, resume=True) was told "--resume continues the run..." and "drop --resume and give
    --overwrite": flags a Python caller does not pass. Its refusals now name resume=True and
    overrides['overwrite'] = True, as train's do."""
    config = federate_config(tmp_path, tiny_model_dir)
    run_federation(None, load_config(config), 2, ["site0", "site1"], resume=False)
    with pytest.raises(ConfigError) as caught:
        tunelab.federate(config, {"method.r": 8}, resume=True)
    message = str(caught.value)
    assert "resume=True continues the run" in message and "overrides['overwrite'] = True" in message
    assert "--resume" not in message and "--overwrite" not in message
    with pytest.raises(ConfigError) as caught:
        tunelab.federate(config, resume=True)
    message = str(caught.value)
    assert "so resume=True has nothing to continue" in message and "tunelab.compare() or tunelab.evaluate()" in message
    assert "--resume" not in message and "--overwrite" not in message
    checked = tunelab.check(config, {"method.r": 8}, resume=True)  # tunelab check says it as train would
    (item,) = [i for i in checked.items if i.name == "resume"]
    assert item.status == "fail" and "resume=True continues the run" in item.summary and "--" not in item.summary
