"""train.report_to: a tiny run's metrics read back from TensorBoard's event files (and from MLflow's, W&B's and
Trackio's stores where those libraries are installed) equal metrics.jsonl; a resumed run drops the events after
its checkpoint; a tracker that is not installed stops the run before anything is loaded, naming the pip command; a
run that crashes or is interrupted ends its tracker runs failed or killed, not finished."""

import importlib.util
import json
import os
import signal
import sys
import types

import pytest

from tunelab.cli import main
from tunelab.errors import ConfigError, Interrupted, TrainingStopped
from tunelab.training import finish, loop
from tunelab.training.metrics import MetricsLog, read_metrics
from tunelab.training.recipe import train
from tunelab.training.tracking import SINKS, TrackTo, _scalars, open_trackers

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _events(logdir):
    """{tag: [(step, value)]} from TensorBoard's event files, read with TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_events_hold_the_run_metrics(tiny_overrides):
    pytest.importorskip("tensorboard", reason="pip install tensorboard")
    overrides = tiny_overrides | {"train.max_steps": 4, "train.eval_every": 2, "data.eval_fraction": 0.2}
    result = train(None, overrides | {"train.report_to": ["tensorboard"]})
    events = _events(result.run_dir / "tensorboard")
    records = read_metrics(result.run_dir)
    losses = [(r["step"], r["loss"]) for r in records if "loss" in r]
    assert [s for s, _ in events["train/loss"]] == [1, 2, 3, 4]
    assert [v for _, v in events["train/loss"]] == pytest.approx([v for _, v in losses], rel=1e-6)  # float32 there
    assert [s for s, _ in events["eval/loss"]] == [2, 4]
    assert events["eval/loss"][-1][1] == pytest.approx(result.eval_loss, rel=1e-6)
    assert {"train/lr", "train/grad_norm", "train/tokens_per_s"} <= set(events)


def test_a_resumed_log_drops_events_after_the_checkpoint(tmp_path):
    pytest.importorskip("tensorboard", reason="pip install tensorboard")
    log = MetricsLog(tmp_path, sinks=open_trackers(["tensorboard"], tmp_path, {"train": {"lr": 1.0}}))
    for step in (1, 2, 3):
        log.write({"step": step, "loss": float(step)})
    log.close()
    resumed = MetricsLog(tmp_path, resume_step=1, sinks=open_trackers(["tensorboard"], tmp_path, {}, resume_step=1))
    resumed.write({"step": 2, "loss": 20.0})
    resumed.close()
    assert _events(tmp_path / "tensorboard")["train/loss"] == [(1, 1.0), (2, 20.0)]
    assert [r["loss"] for r in read_metrics(tmp_path)] == [1.0, 20.0]


def test_a_tracker_that_is_not_installed_stops_before_loading(tiny_overrides, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match="'wandb', but its library is not installed. Install it with: pip install"):
        train(None, tiny_overrides | {"train.report_to": ["wandb"]})
    assert not os.path.exists(tiny_overrides["output_dir"])  # nothing written, no model loaded
    args = [f"--{k}={json.dumps(v) if isinstance(v, list) else v}" for k, v in tiny_overrides.items()]
    assert main(["train", *args, "--train.report_to", "[wandb]"]) == 2
    assert "pip install 'tunelab[wandb]'" in capsys.readouterr().err
    with pytest.raises(
        ConfigError, match="'train.report_to' is 'comet'; allowed values: tensorboard, mlflow, wandb, trackio"
    ):
        train(None, tiny_overrides | {"train.report_to": ["comet"]})


RECORDS = [{"step": 1, "loss": 2.5, "lr": 1e-3, "epoch": 0.5}, {"step": 2, "loss": 2.0}, {"step": 2, "eval_loss": 2.2}]


@pytest.mark.slow  # MLflow creates its SQLite schema: ~10 s
def test_mlflow_store_holds_the_metrics(tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="pip install mlflow-skinny")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    log = MetricsLog(tmp_path, sinks=open_trackers(["mlflow"], tmp_path, {"train": {"lr": 1e-3}}))
    for record in RECORDS:
        log.write(record)
    sink = log.sinks[0]
    log.close()
    history = sink.client.get_metric_history(sink.run_id, "train_loss")
    assert [(m.step, m.value) for m in history] == [(1, 2.5), (2, 2.0)]
    assert sink.client.get_metric_history(sink.run_id, "eval_loss")[0].value == 2.2
    run = sink.client.get_run(sink.run_id)
    assert run.info.status == "FINISHED" and run.data.params["train.lr"] == "0.001"
    assert (tmp_path / "mlflow.db").is_file()


def test_wandb_offline_run_is_written_under_the_run_dir(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="pip install wandb")
    for var in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    log = MetricsLog(tmp_path, sinks=open_trackers(["wandb"], tmp_path, {"train": {"lr": 1e-3}}))
    for record in RECORDS:
        log.write(record)
    run = log.sinks[0].run
    # W&B commits a step when the next one starts: step 1's loss is in the summary, step 2's (shared with the
    # eval record) is committed by finish()
    assert run.settings.mode == "offline" and run.summary["train/loss"] == 2.5 and run.summary["train/lr"] == 1e-3
    log.close()
    assert list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))


def test_trackio_keeps_the_metrics_locally(tmp_path, monkeypatch):
    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))  # read when trackio is first imported
    trackio = pytest.importorskip("trackio", reason="pip install trackio")
    from trackio.sqlite_storage import SQLiteStorage

    if not str(trackio.utils.TRACKIO_DIR).startswith(str(tmp_path)):
        pytest.skip("trackio was imported earlier in this session with another TRACKIO_DIR")
    monkeypatch.setenv("TRACKIO_PROJECT", "tunelab-test")
    (tmp_path / "run").mkdir()  # the run directory exists before its trackers open (they keep their ids in it)
    log = MetricsLog(tmp_path, sinks=open_trackers(["trackio"], tmp_path / "run", {"train": {"lr": 1e-3}}))
    for record in RECORDS:
        log.write(record)
    log.close()
    logs = SQLiteStorage.get_logs("tunelab-test", "run")
    assert [(r["step"], r["train/loss"]) for r in logs if "train/loss" in r] == [(1, 2.5), (2, 2.0)]


def test_scalar_names():
    assert _scalars({"step": 3, "loss": 1.0, "eval_loss": 2.0, "note": "x", "flag": True}) == (
        3,
        {"train/loss": 1.0, "eval/loss": 2.0},
    )


def test_every_eval_metric_is_filed_under_eval():
    # a mixture's per-source losses and a staged run's earlier stages are eval figures too, not training ones
    record = {"step": 4, "eval_loss": 2.0, "eval_loss/chat": 2.1, "eval_loss/stage-1": 2.4, "eval_accuracy": 0.5}
    assert _scalars(record)[1] == {
        "eval/loss": 2.0,
        "eval/loss/chat": 2.1,
        "eval/loss/stage-1": 2.4,
        "eval/accuracy": 0.5,
    }


class _FakeMlflow:
    """The part of MlflowClient the sink uses, over an in-memory store shared by every client."""

    def __init__(self):
        self.runs, self.metrics, self.ended = {}, [], []

    def client(self, tracking_uri):
        store = self

        class Client:
            def get_experiment_by_name(self, name):
                return None

            def create_experiment(self, name):
                return "0"

            def create_run(self, experiment_id, run_name):
                run_id = f"run{len(store.runs) + 1}"
                store.runs[run_id] = "RUNNING"
                return types.SimpleNamespace(info=types.SimpleNamespace(run_id=run_id))

            def update_run(self, run_id, status):
                if run_id not in store.runs:
                    raise store.MlflowException(f"no run {run_id}")
                store.runs[run_id] = status

            def log_batch(self, run_id, metrics=(), params=()):
                store.metrics += [(run_id, m[0], m[3]) for m in metrics]

            def set_terminated(self, run_id, status="FINISHED"):
                store.runs[run_id] = status
                store.ended.append(status)

            def get_run(self, run_id):
                if run_id not in store.runs:
                    raise store.MlflowException(f"no run {run_id}")
                return types.SimpleNamespace(info=types.SimpleNamespace(status=store.runs[run_id]))

        return Client()

    class MlflowException(Exception):
        pass


@pytest.fixture
def fake_mlflow(monkeypatch):
    store = _FakeMlflow()
    modules = {
        "mlflow": types.ModuleType("mlflow"),
        "mlflow.tracking": types.SimpleNamespace(MlflowClient=store.client),
        "mlflow.entities": types.SimpleNamespace(
            Param=lambda k, v: (k, v), Metric=lambda key, value, ts, step: (key, value, ts, step)
        ),
        "mlflow.exceptions": types.SimpleNamespace(MlflowException=_FakeMlflow.MlflowException),
    }
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return store


def test_a_resumed_run_continues_its_mlflow_run(tmp_path, fake_mlflow):
    sink = SINKS["mlflow"](TrackTo(tmp_path), {"train": {"lr": 1.0}}, None)
    sink.log({"step": 1, "loss": 2.0})
    sink.close()
    resumed = SINKS["mlflow"](TrackTo(tmp_path), {"train": {"lr": 1.0}}, 1)
    assert resumed.run_id == sink.run_id and fake_mlflow.runs == {sink.run_id: "RUNNING"}  # one run, running again
    resumed.log({"step": 2, "loss": 1.5})
    resumed.close()
    assert fake_mlflow.metrics == [(sink.run_id, "train_loss", 1), (sink.run_id, "train_loss", 2)]
    assert json.loads((tmp_path / "trackers.json").read_text()) == {"mlflow": {"run_id": sink.run_id, "store": None}}
    fake_mlflow.runs.clear()  # the store lost the run (another $MLFLOW_TRACKING_URI, a deleted database): a new one
    assert SINKS["mlflow"](TrackTo(tmp_path), {}, 2).run_id == "run1" and fake_mlflow.runs == {"run1": "RUNNING"}
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    SINKS["mlflow"](TrackTo(fresh), {}, None)  # a run started anew gets its own MLflow run
    assert len(fake_mlflow.runs) == 2


def test_steps_trained_again_on_resume_are_not_logged_twice_to_a_reopened_run(tmp_path, fake_mlflow, capsys):
    """A run stopped at step 4 after the checkpoint of step 2 trains steps 3 and 4 again on resume: MLflow's
    reopened run was given them again, two points for each step. TensorBoard drops its events after the checkpoint
    and takes them again; so does a tracker run started anew."""
    pytest.importorskip("tensorboard", reason="pip install tensorboard")

    def trackers(resume_step):
        return [SINKS[name](TrackTo(tmp_path), {}, resume_step) for name in ("mlflow", "tensorboard")]

    log = MetricsLog(tmp_path, sinks=trackers(None))
    for step in (1, 2, 3, 4):
        log.write({"step": step, "loss": float(step)})
    log.close(RuntimeError("stopped"))
    resumed = MetricsLog(tmp_path, resume_step=2, sinks=trackers(2))
    assert "mlflow: steps 3-4 were logged before the run stopped" in capsys.readouterr().out
    for step in (3, 4, 5):
        resumed.write({"step": step, "loss": float(step)})
    resumed.close()
    assert [step for _, key, step in fake_mlflow.metrics if key == "train_loss"] == [1, 2, 3, 4, 5]
    assert _events(tmp_path / "tensorboard")["train/loss"] == [(s, float(s)) for s in (1, 2, 3, 4, 5)]
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4, 5]

    fake_mlflow.runs.clear()  # the store lost the run: the new one gets every step the resumed run logs
    fake_mlflow.metrics.clear()
    again = MetricsLog(tmp_path, resume_step=3, sinks=trackers(3))
    assert "were logged before" not in capsys.readouterr().out
    for step in (4, 5):
        again.write({"step": step, "loss": float(step)})
    again.close()
    assert [step for _, key, step in fake_mlflow.metrics if key == "train_loss"] == [4, 5]


def _fake_library(monkeypatch, name):
    calls = []

    def init(**kwargs):
        calls.append(kwargs)
        return types.SimpleNamespace(id=kwargs.get("id") or f"id{len(calls)}", log=lambda *a, **k: None)

    monkeypatch.setitem(sys.modules, name, types.SimpleNamespace(init=init))
    return calls


def test_a_resumed_run_continues_its_wandb_run_online(tmp_path, monkeypatch):
    calls = _fake_library(monkeypatch, "wandb")
    monkeypatch.setenv("WANDB_MODE", "online")
    SINKS["wandb"](TrackTo(tmp_path), {"train": {"lr": 1.0}}, None)
    SINKS["wandb"](TrackTo(tmp_path), {"train": {"lr": 1.0}}, 3)
    assert "id" not in calls[0] and calls[1]["id"] == "id1" and calls[1]["resume"] == "allow"
    monkeypatch.setenv("WANDB_MODE", "offline")  # W&B cannot resume offline: a new run, not an ignored `resume`
    SINKS["wandb"](TrackTo(tmp_path), {}, 3)
    assert "id" not in calls[2] and "resume" not in calls[2]


def test_a_resumed_run_continues_its_trackio_run(tmp_path, monkeypatch):
    calls = _fake_library(monkeypatch, "trackio")
    monkeypatch.setenv("TRACKIO_PROJECT", "first")
    SINKS["trackio"](TrackTo(tmp_path), {}, None)
    monkeypatch.setenv("TRACKIO_PROJECT", "second")  # the run stays in the project it started in
    SINKS["trackio"](TrackTo(tmp_path), {}, 3)
    assert calls[0]["resume"] == "never"
    assert (calls[1]["project"], calls[1]["name"], calls[1]["resume"]) == ("first", tmp_path.name, "allow")


@pytest.mark.slow  # MLflow creates its SQLite schema: ~10 s
def test_a_resumed_run_is_one_mlflow_run_in_the_store(tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="pip install mlflow-skinny")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    log = MetricsLog(tmp_path, sinks=open_trackers(["mlflow"], tmp_path, {"train": {"lr": 1e-3}}))
    log.write({"step": 1, "loss": 2.5})
    log.close()
    resumed = MetricsLog(tmp_path, resume_step=1, sinks=open_trackers(["mlflow"], tmp_path, {}, resume_step=1))
    resumed.write({"step": 2, "loss": 2.0})
    sink = resumed.sinks[0]
    resumed.close()
    experiment = sink.client.get_experiment_by_name("tunelab")
    assert len(sink.client.search_runs([experiment.experiment_id])) == 1
    history = sink.client.get_metric_history(sink.run_id, "train_loss")
    assert [(m.step, m.value) for m in history] == [(1, 2.5), (2, 2.0)]
    assert sink.client.get_run(sink.run_id).info.status == "FINISHED"


def test_a_later_stage_continues_the_staged_runs_mlflow_run_after_the_earlier_steps(tmp_path, fake_mlflow):
    first = SINKS["mlflow"](TrackTo(tmp_path), {}, None)
    first.log({"step": 3, "loss": 2.0})
    first.close()
    second = SINKS["mlflow"](TrackTo(tmp_path, offset=3, continues=True), {}, None)  # stage 2, after 3 steps
    second.log({"step": 1, "loss": 1.0})
    assert second.run_id == first.run_id and len(fake_mlflow.runs) == 1
    assert fake_mlflow.metrics == [(first.run_id, "train_loss", 3), (first.run_id, "train_loss", 4)]


@pytest.mark.parametrize("stop", [None, "crash", "ctrl-c"])
def test_a_staged_runs_tracker_runs_end_once_as_the_run_did(tiny_overrides, fake_trackers, monkeypatch, stop):
    """Stage 1 ended the staged run's MLflow run FINISHED and finished its W&B and Trackio runs, and a run that then
    failed or was interrupted before stage 2 trained (here: as stage 2 starts) left them so; stage 2 then started a
    second W&B run where W&B could not resume the first (offline). The stages now share one run of each tracker, which
    ends once: with the last stage, or as the run did."""
    import tunelab
    from tunelab.training import stages

    fake_mlflow, wandb_runs, trackio_runs = fake_trackers
    overrides = tiny_overrides | {
        "train.report_to": ["mlflow", "wandb", "trackio"],
        "stages": [{"train": {"max_steps": 1}}, {"train": {"max_steps": 1}}],
    }
    real = stages._run_stage

    def run_stage(plan, here, *args, **kwargs):
        if stop and here.name == "stage-2":
            raise RuntimeError("disk full") if stop == "crash" else KeyboardInterrupt()
        return real(plan, here, *args, **kwargs)

    monkeypatch.setattr(stages, "_run_stage", run_stage)
    if stop:
        with pytest.raises(RuntimeError if stop == "crash" else KeyboardInterrupt):
            tunelab.train(None, overrides)
    else:
        tunelab.train(None, overrides)
    assert len(fake_mlflow.runs) == 1
    assert fake_mlflow.ended == [{None: "FINISHED", "crash": "FAILED", "ctrl-c": "KILLED"}[stop]]
    assert {step for _, key, step in fake_mlflow.metrics if key == "train_loss"} == ({1} if stop else {1, 2})
    assert len(wandb_runs) == 1 and len(trackio_runs) == 1
    assert wandb_runs[0].finished == [{"exit_code": {None: 0, "crash": 1, "ctrl-c": 130}[stop]}]
    assert trackio_runs[0].finished == [{}]
    assert [a["level"] for a in trackio_runs[0].alerts] == {None: [], "crash": ["error"], "ctrl-c": ["warn"]}[stop]
    for run in (wandb_runs[0], trackio_runs[0]):  # stage 2's steps after stage 1's, in the same run
        assert sorted({step for step, keys in run.logged if "train/loss" in keys}) == ([1] if stop else [1, 2])


def test_a_staged_runs_tensorboard_gets_each_stages_config_once(tmp_path):
    """A later stage reuses the writer the first opened; its config text is written at its own first step."""
    pytest.importorskip("tensorboard", reason="pip install tensorboard")
    held: dict = {}
    first = open_trackers(["tensorboard"], TrackTo(tmp_path, held=held, last=False), {"stage": 1})
    first[0].close()  # paused: the run goes on
    assert not first[0].closed
    second = open_trackers(["tensorboard"], TrackTo(tmp_path, offset=3, continues=True, held=held), {"stage": 2})
    assert second[0] is first[0] and second[0].offset == 3
    second[0].close()
    assert second[0].closed
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    assert [t.step for t in events.Tensors("config/text_summary")] == [0, 3]


class _Ended:
    """A W&B or Trackio run that keeps how it was finished and the alerts it was sent."""

    def __init__(self, id):
        self.id, self.finished, self.alerts, self.logged = id, [], [], []

    def log(self, scalars, step=None):
        self.logged.append((step, set(scalars)))

    def finish(self, **kwargs):
        self.finished.append(kwargs)

    def alert(self, **kwargs):
        self.alerts.append(kwargs)


@pytest.fixture
def fake_trackers(monkeypatch, fake_mlflow):
    """MLflow, W&B and Trackio stand-ins, found as installed: (the MLflow store, the W&B runs, the Trackio runs)."""
    runs = {"wandb": [], "trackio": []}
    for library, started in runs.items():

        def init(started=started, **kwargs):
            started.append(_Ended(f"id{len(started) + 1}"))
            return started[-1]

        level = types.SimpleNamespace(WARN="warn", ERROR="error")
        monkeypatch.setitem(sys.modules, library, types.SimpleNamespace(init=init, AlertLevel=level))
    real = importlib.util.find_spec
    fakes = {"mlflow", "wandb", "trackio"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name in fakes else real(name, *a))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    return fake_mlflow, runs["wandb"], runs["trackio"]


ENDINGS = [  # the exception that stopped the run -> (MLflow status, W&B exit code, Trackio alert level)
    (None, ("FINISHED", 0, None)),
    (RuntimeError("CUDA out of memory"), ("FAILED", 1, "error")),
    (TrainingStopped("non-finite losses"), ("FAILED", 3, "error")),
    (Interrupted("interrupted after step 2", 2, None), ("KILLED", 130, "warn")),
    (KeyboardInterrupt(), ("KILLED", 130, "warn")),
]


@pytest.mark.parametrize("error, ended", ENDINGS, ids=["finished", "crash", "guard", "ctrl-c", "ctrl-c-twice"])
def test_each_tracker_run_ends_as_the_run_did(tmp_path, fake_trackers, error, ended):
    """A run that crashed or was interrupted was marked FINISHED in MLflow and finished with exit code 0 in W&B."""
    store, wandb_runs, trackio_runs = fake_trackers
    log = MetricsLog(tmp_path, sinks=open_trackers(["mlflow", "wandb", "trackio"], tmp_path, {}))
    log.write({"step": 1, "loss": 2.0})
    log.close(error)
    log.close()  # a second close ends nothing again
    status, code, level = ended
    assert list(store.runs.values()) == [status]
    assert wandb_runs[0].finished == [{"exit_code": code}]
    assert trackio_runs[0].finished == [{}]
    assert [a["level"] for a in trackio_runs[0].alerts] == ([level] if level else [])
    if level:
        assert trackio_runs[0].alerts[0]["text"].startswith(type(error).__name__)


def _crash(monkeypatch):
    real, calls = loop.train_step, {"n": 0}

    def step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("CUDA out of memory")
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", step)


def _ctrl_c(monkeypatch):
    real, calls = loop.train_step, {"n": 0}

    def step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            signal.raise_signal(signal.SIGINT)  # Ctrl-C during step 2: it completes, is saved, and the run stops
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", step)


def _full_disk(monkeypatch):
    def save_final(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(finish, "save_final", save_final)


@pytest.mark.parametrize(
    "stop, raised, ended",
    [
        (_crash, RuntimeError, ("FAILED", 1, "error")),
        (_ctrl_c, Interrupted, ("KILLED", 130, "warn")),
        (_full_disk, OSError, ("FAILED", 1, "error")),  # after the steps, while saving the result
    ],
    ids=["crash", "ctrl-c", "save-fails"],
)
def test_a_run_that_crashes_or_is_interrupted_is_not_finished_in_its_trackers(
    tiny_overrides, fake_trackers, monkeypatch, stop, raised, ended
):
    """`tunelab train` ended its trackers' runs as finished whatever stopped it: MLflow showed a crashed or
    interrupted run FINISHED beside the runs that were, and W&B one that exited 0."""
    store, wandb_runs, trackio_runs = fake_trackers
    real_step = loop.train_step
    stop(monkeypatch)
    overrides = tiny_overrides | {"train.max_steps": 3, "train.report_to": ["mlflow", "wandb", "trackio"]}
    with pytest.raises(raised):
        train(None, overrides)
    status, code, level = ended
    assert list(store.runs.values()) == [status]
    assert wandb_runs[0].finished == [{"exit_code": code}]
    assert [a["level"] for a in trackio_runs[0].alerts] == [level] and trackio_runs[0].finished == [{}]
    if stop is _ctrl_c:  # resumed, the same MLflow run goes on and finishes
        monkeypatch.setattr(loop, "train_step", real_step)
        train(None, overrides, resume=True)
        assert list(store.runs.values()) == ["FINISHED"]


@pytest.mark.parametrize("step", ['"3"', "null", "-1", "true"])
def test_a_metrics_record_whose_step_is_not_a_count_is_refused_naming_its_line(tmp_path, step):
    """A metrics.jsonl edited by hand: resume (which keeps or drops each record by its step) and the readers stopped
    in a TypeError traceback."""
    from tunelab.errors import RunDirError

    path = tmp_path / "metrics.jsonl"
    path.write_text(f'{{"step": 1, "loss": 2.0}}\n{{"step": {step}, "loss": 1.0}}\n')
    with pytest.raises(RunDirError, match=r"metrics.jsonl, line 2: field 'step'"):
        MetricsLog(tmp_path, resume_step=2)
    with pytest.raises(RunDirError, match=r"line 2: field 'step'"):
        read_metrics(tmp_path)
    assert path.read_text().count("\n") == 2  # nothing dropped from the file


def test_a_resumed_run_reopens_the_trackio_run_it_started_not_an_older_one_of_its_name(tmp_path, monkeypatch):
    """A run whose folder name its Trackio project already held (the run it replaced, or runs/x/a beside runs/y/a)
    got a new name from Trackio (resume="never"), but trackers.json kept the folder's: --resume reopened the older
    run and logged the resumed steps into it."""
    existing = {tmp_path.name}
    calls = []

    def init(**kwargs):
        calls.append(kwargs)
        name = kwargs["name"]
        if kwargs["resume"] == "never" and name in existing:
            name = "dainty-sunset-2"  # as Trackio does: a generated name instead
        existing.add(name)
        return types.SimpleNamespace(name=name, log=lambda *a, **k: None)

    monkeypatch.setitem(sys.modules, "trackio", types.SimpleNamespace(init=init))
    SINKS["trackio"](TrackTo(tmp_path), {}, None)
    SINKS["trackio"](TrackTo(tmp_path), {}, 3)
    assert (calls[1]["name"], calls[1]["resume"]) == ("dainty-sunset-2", "allow")


def _tracker_modules(monkeypatch) -> list:
    """Stand-ins for wandb, mlflow and trackio that record every run they are asked to start."""
    import importlib.machinery

    started = []

    def init(**kwargs):
        started.append(kwargs)
        return types.SimpleNamespace(id="id1", log=lambda *a, **k: None, finish=lambda **k: None)

    for name in ("wandb", "mlflow", "trackio"):
        module = types.ModuleType(name)
        module.__spec__ = importlib.machinery.ModuleSpec(name, None)
        module.init = init
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setitem(
        sys.modules, "mlflow.tracking", types.SimpleNamespace(MlflowClient=lambda **k: started.append(k))
    )
    return started


def test_tracker_credentials_in_the_environment_report_nothing_unless_report_to_asks(
    tiny_overrides, monkeypatch, capsys
):
    """A user's $WANDB_API_KEY, $MLFLOW_TRACKING_URI or $TRACKIO_SPACE_ID must not send a run anywhere unless
    train.report_to names that tracker; one it names says at the start where it reports and why (W&B went online
    with $WANDB_API_KEY set, without a word)."""
    started = _tracker_modules(monkeypatch)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "key")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    monkeypatch.setenv("TRACKIO_SPACE_ID", "someone/space")
    train(None, tiny_overrides | {"train.max_steps": 1})
    out = capsys.readouterr().out
    assert started == [] and not any(f"report_to {name}:" in out for name in ("wandb", "mlflow", "trackio"))
    train(None, tiny_overrides | {"train.max_steps": 1, "train.report_to": ["wandb"], "overwrite": True})
    out = capsys.readouterr().out
    assert "report_to wandb: Weights & Biases online, project tunelab ($WANDB_API_KEY is set" in out
    assert [call["mode"] for call in started] == ["online"]
    monkeypatch.delenv("WANDB_API_KEY")
    train(None, tiny_overrides | {"train.max_steps": 1, "train.report_to": ["wandb"], "overwrite": True})
    assert "report_to wandb: Weights & Biases offline in " in capsys.readouterr().out
    assert started[-1]["mode"] == "offline"


def test_each_tracker_names_where_it_reports(tmp_path, monkeypatch):
    from tunelab.training.tracking import destination

    for var in ("MLFLOW_TRACKING_URI", "WANDB_MODE", "WANDB_API_KEY", "TRACKIO_SPACE_ID", "TRACKIO_PROJECT"):
        monkeypatch.delenv(var, raising=False)
    assert destination("mlflow", tmp_path) == (
        f"MLflow SQLite store {tmp_path / 'mlflow.db'} (local; $MLFLOW_TRACKING_URI would name another)"
    )
    assert "local database" in destination("trackio", tmp_path)
    assert str(tmp_path / "tensorboard") in destination("tensorboard", tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    monkeypatch.setenv("TRACKIO_SPACE_ID", "someone/space")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert destination("mlflow", tmp_path) == "MLflow at http://tracking.example:5000 (from $MLFLOW_TRACKING_URI)"
    assert "online to the Hugging Face Space someone/space (from $TRACKIO_SPACE_ID)" in destination("trackio", tmp_path)
    assert destination("wandb", tmp_path).startswith("Weights & Biases disabled")
