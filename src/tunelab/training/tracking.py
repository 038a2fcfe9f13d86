"""Experiment trackers: every record the metrics log writes also goes to TensorBoard, MLflow, Weights & Biases or
Trackio, through each project's own library (`train.report_to: [tensorboard, mlflow, wandb, trackio]`).

Each tracker is a sink with `log(record)` and `close(error=None)`; `training/metrics.MetricsLog` calls them, so
the training loop knows nothing of them. Records keep their names: `loss`, `lr`, `grad_norm`, `tokens_per_s`, `epoch`,
`elapsed_s` under `train/`, every `eval_*` figure under `eval/` (`eval_loss` as `eval/loss`, a mixture's
`eval_loss/<source>` and a staged run's `eval_loss/stage-j` as `eval/loss/<source>`), against the optimizer step.

Where they write, offline by default:
- tensorboard: RUN_DIR/tensorboard (torch.utils.tensorboard); `tensorboard --logdir RUN_DIR/tensorboard`.
- mlflow: the store in $MLFLOW_TRACKING_URI, else a local SQLite store, RUN_DIR/mlflow.db (MLflow 3 retired its
  file store); `mlflow ui --backend-store-uri sqlite:///RUN_DIR/mlflow.db`.
- wandb: online only when $WANDB_MODE says so or $WANDB_API_KEY is set, else offline under RUN_DIR/wandb
  (`wandb sync` uploads it later).
- trackio: its local database (Trackio is local-first; $TRACKIO_DIR moves it); `trackio show`. With
  $TRACKIO_SPACE_ID set, Trackio itself sends the run to that Hugging Face Space.
Only the trackers train.report_to lists are opened, whatever the environment holds ($WANDB_API_KEY or
$MLFLOW_TRACKING_URI alone sends nothing anywhere), and each says at the start where it reports (`destination`):
online or not, and which variable made it so.
A tracker that is not installed is a ConfigError naming the pip command, raised when the config is loaded.

How the run ended reaches the trackers that keep it (`close(error)`, with the exception that stopped the run): a run
that finished is FINISHED in MLflow and exits 0 in W&B; one stopped by an error (a crash, the non-finite guard) is
FAILED in MLflow and exits in W&B with the code `tunelab train` exits with (1, or 3 for the guard); one interrupted
(Ctrl-C, SIGTERM) is KILLED in MLflow and exits 130 in W&B (143 after SIGTERM). Trackio's runs have no status: an
error alert (a warning for an interrupt) says why the run ended before it is finished. TensorBoard's event files have no place for it.

A resumed run continues its tracker runs rather than starting new ones: each tracker that starts a run records
its id in RUN_DIR/trackers.json ({"mlflow": {"run_id", "store"}, "wandb": {"id"}, "trackio": {"project", "name"}}),
and on resume the run is reopened from it. TensorBoard needs no id (its events are in RUN_DIR/tensorboard; those past
the checkpoint are purged). W&B resumes a run online only: offline it ignores `resume` (wandb/wandb#2423), so an
offline run resumed gets a new W&B run. The steps logged after the checkpoint, which the resumed run trains again,
are not logged to MLflow, W&B or Trackio a second time (training/metrics.py): they keep every point they were given.

A staged run (training/stages.py) has one set of tracker runs, in the run directory, not one per stage directory:
each stage logs there (`TrackTo`), its steps after the steps of the stages before it, as the run's metrics.jsonl
counts them, and continues the tracker runs the first stage started. Within one process the stages share the same
open tracker runs (`TrackTo.held`): an earlier stage's end only pauses them, and they end once, with the last stage,
or as the run ended when it stops before (between stages too: a stage that finished does not make a run FINISHED in
MLflow or finish it in W&B). So an offline W&B run, which cannot be resumed, is still one run for all the stages
trained in one command.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.atomic import write_json
from tunelab.config import check_trackers
from tunelab.errors import Interrupted, TunelabError

PROJECT = "tunelab"
TRACKER_RUNS = "trackers.json"


def _runs(run_dir: Path) -> dict:
    path = run_dir / TRACKER_RUNS
    try:
        kept = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except ValueError:  # torn or edited: the trackers start new runs, as a run without the file does
        return {}
    return kept if isinstance(kept, dict) else {}


def kept_run(run_dir: Path, name: str) -> dict:
    """What tracker `name` recorded in run_dir/trackers.json of the run it started ({} when nothing)."""
    kept = _runs(run_dir).get(name)
    return kept if isinstance(kept, dict) else {}


def _keep_run(run_dir: Path, name: str, value: dict) -> None:
    write_json(run_dir / TRACKER_RUNS, _runs(run_dir) | {name: value})


@dataclass(frozen=True)
class TrackTo:
    """Where a run's trackers write, and from which step. A plain run: its own directory, its steps as they are. A
    stage of a staged run: the run directory, with `offset` (the steps of the stages before) added to every step,
    and `continues` (every stage after the first, and any stage of a resumed run) to reopen the tracker runs kept
    in trackers.json as a resumed run does."""

    run_dir: Path
    offset: int = 0
    continues: bool = False
    last: bool = True  # False for a staged run's earlier stages: their tracker runs stay open for the next stage
    # a staged run's open sinks by tracker name, shared by its stages (None: a plain run, whose sinks are its own)
    held: dict | None = field(default=None, compare=False)

    def purge_step(self, resume_step: int | None) -> int | None:
        """The first step this process logs: events from it on, written before, are stale (TensorBoard drops them)."""
        if resume_step is not None:
            return self.offset + resume_step + 1
        return self.offset + 1 if self.continues else None

    def reopens(self, resume_step: int | None) -> bool:
        return resume_step is not None or self.continues


def wandb_mode() -> tuple[str, str]:
    """W&B's mode for a run (online, offline, disabled, ...) and the variable that chose it."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"], "$WANDB_MODE"
    if os.environ.get("WANDB_API_KEY"):
        return "online", "$WANDB_API_KEY is set; WANDB_MODE=offline keeps it local"
    return "offline", "neither $WANDB_MODE nor $WANDB_API_KEY is set; `wandb sync` uploads it"


def destination(name: str, run_dir: Path) -> str:
    """Where tracker `name` sends a run's metrics from `run_dir`, online or not, and why (said at the start)."""
    if name == "tensorboard":
        return f"TensorBoard event files in {run_dir / 'tensorboard'} (local)"
    if name == "mlflow":
        store = os.environ.get("MLFLOW_TRACKING_URI")
        if store:
            return f"MLflow at {store} (from $MLFLOW_TRACKING_URI)"
        return f"MLflow SQLite store {run_dir / 'mlflow.db'} (local; $MLFLOW_TRACKING_URI would name another)"
    if name == "wandb":
        mode, why = wandb_mode()
        project = os.environ.get("WANDB_PROJECT", PROJECT)
        if mode in ("offline", "dryrun"):
            return f"Weights & Biases offline in {run_dir / 'wandb'} ({why})"
        if mode == "disabled":
            return f"Weights & Biases disabled, nothing logged ({why})"
        return f"Weights & Biases {mode}, project {project} ({why})"
    if name == "trackio":
        project = os.environ.get("TRACKIO_PROJECT", PROJECT)
        space = os.environ.get("TRACKIO_SPACE_ID")
        if space:
            return f"Trackio project {project}, online to the Hugging Face Space {space} (from $TRACKIO_SPACE_ID)"
        return f"Trackio project {project} in its local database ($TRACKIO_DIR, else ~/.cache/huggingface/trackio)"
    raise ValueError(f"unknown tracker {name!r}")


def _interrupted(error: BaseException | None) -> bool:
    return isinstance(error, Interrupted | KeyboardInterrupt)


def mlflow_status(error: BaseException | None) -> str:
    """The mlflow.entities.RunStatus of a run that ended on `error` (None: it finished)."""
    if error is None:
        return "FINISHED"
    return "KILLED" if _interrupted(error) else "FAILED"


def exit_code(error: BaseException | None) -> int:
    """The exit code `tunelab train` ends with after `error` (None: it finished); W&B marks a non-zero one failed."""
    if error is None:
        return 0
    if isinstance(error, TunelabError):
        return error.exit_code
    return getattr(error, "exit_code", 130) if _interrupted(error) else 1


def _why(error: BaseException) -> str:
    """The error's type and first line, for a tracker that takes a message (Trackio's alert)."""
    lines = str(error).strip().splitlines()
    return type(error).__name__ + (f": {lines[0]}" if lines else "")


def _scalars(record: dict, offset: int = 0) -> tuple[int, dict[str, float]]:
    """(step + offset, {tracker name: value}) for the numeric fields of a metrics record."""
    out = {}
    for key, value in record.items():
        if key == "step" or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        # eval_loss -> eval/loss, eval_loss/<source> -> eval/loss/<source>: every evaluation figure under eval/
        out[f"eval/{key.removeprefix('eval_')}" if key.startswith("eval_") else f"train/{key}"] = float(value)
    return int(record["step"]) + offset, out


class _Sink:
    """What the tracker sinks share: the step offset of their stage, and a close that ends the tracker's run once,
    except that a staged run's earlier stage only pauses it (`_end` is each tracker's own ending)."""

    offset = 0
    last = True
    closed = False

    def _place(self, to: TrackTo) -> None:
        self.offset, self.last = to.offset, to.last

    def next_stage(self, to: TrackTo, config: dict) -> None:
        """Go on logging for the next stage of a staged run, its steps after the earlier stages' (`to.offset`)."""
        self._place(to)

    def close(self, error: BaseException | None = None) -> None:
        if self.closed or (error is None and not self.last):
            return
        self.closed = True
        self._end(error)

    def _end(self, error: BaseException | None) -> None:
        raise NotImplementedError


class TensorBoardSink(_Sink):
    name = "tensorboard"
    keeps_logged_steps = False  # on resume the events after the checkpoint are dropped: the re-done steps are logged

    def __init__(self, to: TrackTo, config: dict, resume_step: int | None):
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: on resume, events after the checkpoint are dropped, as metrics.jsonl drops its records (and a
        # stage started again drops what it logged before)
        self.writer = SummaryWriter(str(to.run_dir / "tensorboard"), purge_step=to.purge_step(resume_step))
        self._place(to)
        if resume_step is None:
            self._config_text(config)

    def _config_text(self, config: dict) -> None:
        """The config at the first step (each stage's at its own)."""
        import yaml

        self.writer.add_text("config", "```\n" + yaml.safe_dump(config, sort_keys=False) + "```", self.offset)

    def next_stage(self, to: TrackTo, config: dict) -> None:
        self._place(to)
        self._config_text(config)

    def log(self, record: dict) -> None:
        step, scalars = _scalars(record, self.offset)
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()  # visible to a running `tensorboard` at once, and on disk if the run is killed

    def close(self, error: BaseException | None = None) -> None:
        self.writer.flush()  # paused between stages, or ended
        super().close(error)

    def _end(self, error: BaseException | None) -> None:
        self.writer.close()


def _flat(config: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for key, value in config.items():
        if isinstance(value, dict) and value and prefix == "":
            out.update(_flat(value, f"{key}."))
        else:
            out[f"{prefix}{key}"] = str(value)[:500]  # MLflow caps parameter values at 500 characters
    return out


class MLflowSink(_Sink):
    name = "mlflow"

    def __init__(self, to: TrackTo, config: dict, resume_step: int | None):
        from mlflow.tracking import MlflowClient

        run_dir = to.run_dir
        self._place(to)
        store = os.environ.get("MLFLOW_TRACKING_URI")  # None: the run directory's own SQLite store
        uri = _mlflow_uri(run_dir, store)
        self.client = MlflowClient(tracking_uri=uri)  # a client object: no process-wide active run
        kept = kept_run(run_dir, "mlflow") if to.reopens(resume_step) else {}
        reopened = self._reopen(kept["run_id"], uri) if kept.get("run_id") and kept.get("store") == store else None
        self.run_id = reopened or self._start(run_dir, config)
        self.keeps_logged_steps = reopened is not None  # the reopened run holds what it was given before the stop
        if not reopened:
            _keep_run(run_dir, "mlflow", {"run_id": self.run_id, "store": store})

    def _reopen(self, run_id: str, uri: str) -> str | None:
        """The resumed run's MLflow run, marked running again; None when the store no longer has it."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.update_run(run_id, status="RUNNING")
        except MlflowException:
            print(f"mlflow: the run's MLflow run {run_id} is not in {uri}; logging to a new one", flush=True)
            return None
        return run_id

    def _start(self, run_dir: Path, config: dict) -> str:
        from mlflow.entities import Param

        experiment = self.client.get_experiment_by_name(PROJECT)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(PROJECT)
        run_id = self.client.create_run(experiment_id, run_name=run_dir.resolve().name).info.run_id
        self.client.log_batch(run_id, params=[Param(k, v) for k, v in _flat(config).items()])
        return run_id

    def log(self, record: dict) -> None:
        from mlflow.entities import Metric

        step, scalars = _scalars(record, self.offset)
        now = int(time.time() * 1000)
        metrics = [Metric(key.replace("/", "_"), value, now, step) for key, value in scalars.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def _end(self, error: BaseException | None) -> None:
        self.client.set_terminated(self.run_id, status=mlflow_status(error))


def _mlflow_uri(run_dir: Path, store: str | None) -> str:
    return store or f"sqlite:///{(run_dir / 'mlflow.db').resolve()}"


def end_running_tracker_runs(run_dir: Path, error: BaseException) -> None:
    """A staged run stopped before this process opened its trackers (a resumed run whose stage failed to start):
    an MLflow run that an earlier process left running (killed outright) ends as this one did (FAILED, or KILLED for
    an interrupt). The runs this process opened end through `end_held`."""
    kept = kept_run(run_dir, "mlflow")
    if not kept.get("run_id"):
        return
    try:
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient
    except ImportError:
        return
    client = MlflowClient(tracking_uri=_mlflow_uri(run_dir, kept.get("store")))
    try:
        if client.get_run(kept["run_id"]).info.status == "RUNNING":
            client.set_terminated(kept["run_id"], status=mlflow_status(error))
    except MlflowException:  # the store no longer has the run
        pass


class WandbSink(_Sink):
    name = "wandb"

    def __init__(self, to: TrackTo, config: dict, resume_step: int | None):
        import wandb

        run_dir = to.run_dir
        self._place(to)
        mode = wandb_mode()[0]
        kept = kept_run(run_dir, "wandb") if to.reopens(resume_step) else {}
        # W&B resumes online runs only (offline it ignores `resume`): an offline run resumed starts a new W&B run
        again = kept.get("id") if mode not in ("offline", "dryrun", "disabled") else None
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", PROJECT),
            name=run_dir.resolve().name,
            dir=str(run_dir),
            config=None if again else config,  # a resumed run keeps the config it started with
            mode=mode,
            reinit="create_new",
            **({"id": again, "resume": "allow"} if again else {}),
        )
        self.keeps_logged_steps = again is not None
        if not again:
            _keep_run(run_dir, "wandb", {"id": self.run.id})

    def log(self, record: dict) -> None:
        step, scalars = _scalars(record, self.offset)
        self.run.log(scalars, step=step)

    def _end(self, error: BaseException | None) -> None:
        self.run.finish(exit_code=exit_code(error))


class TrackioSink(_Sink):
    name = "trackio"

    def __init__(self, to: TrackTo, config: dict, resume_step: int | None):
        import trackio

        run_dir = to.run_dir
        self._place(to)
        kept = kept_run(run_dir, "trackio") if to.reopens(resume_step) else {}
        project = kept.get("project") or os.environ.get("TRACKIO_PROJECT", PROJECT)
        name = kept.get("name") or run_dir.resolve().name
        # Trackio resumes a run by its project and name; "allow" starts it anew when its database lacks it
        self.run = trackio.init(
            project=project, name=name, config=config, resume="allow" if kept.get("name") else "never"
        )
        self.keeps_logged_steps = bool(kept.get("name"))
        # the name the run got: with resume="never", Trackio names it anew when the project already has one of this
        # name (a run this one replaced, a folder of the same name elsewhere), which --resume would otherwise reopen
        _keep_run(run_dir, "trackio", {"project": project, "name": getattr(self.run, "name", None) or name})

    def log(self, record: dict) -> None:
        step, scalars = _scalars(record, self.offset)
        self.run.log(scalars, step=step)

    def _end(self, error: BaseException | None) -> None:
        alert = getattr(self.run, "alert", None)  # Trackio's alerts came after its first releases
        if error is not None and alert is not None:
            from trackio import AlertLevel

            stopped = _interrupted(error)
            title, level = ("run interrupted", AlertLevel.WARN) if stopped else ("run failed", AlertLevel.ERROR)
            alert(title=title, text=_why(error), level=level)
        self.run.finish()


SINKS = {"tensorboard": TensorBoardSink, "mlflow": MLflowSink, "wandb": WandbSink, "trackio": TrackioSink}


def open_trackers(
    names: list[str], where: Path | TrackTo, config: dict[str, Any], resume_step: int | None = None
) -> list:
    """One sink per tracker named in train.report_to (checked again here: the API accepts configs built in code),
    writing into `where`: a run directory, or a stage's place in its staged run's (TrackTo). Each opened says where
    it reports. No name, no tracker: the environment alone ($WANDB_API_KEY, $MLFLOW_TRACKING_URI) opens none."""
    check_trackers(names)
    to = where if isinstance(where, TrackTo) else TrackTo(Path(where))
    sinks = []
    for name in names:
        sink = to.held.get(name) if to.held is not None else None
        if sink is None or sink.closed:
            print(f"report_to {name}: {destination(name, to.run_dir)}", flush=True)
            sink = SINKS[name](to, config, resume_step)
        else:  # a staged run's later stage: the tracker run an earlier stage paused
            sink.next_stage(to, config)
        if to.held is not None:
            to.held[name] = sink
        sinks.append(sink)
    return sinks


def end_held(held: dict, error: BaseException) -> None:
    """A staged run stopped (in a stage, or between two): the tracker runs its stages held open (`TrackTo.held`) end
    as it did."""
    for sink in held.values():
        sink.close(error)
