"""MLflow tracking of tasks (manifest `tracking.mlflow`): one MLflow run per task, continued when the task resumes.

Pure wiring around `mlflow.tracking.MlflowClient` (no global fluent state). A task's MLflow run is created the
first time the task runs with tracking on and its id recorded in the task directory (`mlflow.json`); a resumed
task reopens it. Metrics are the task's metrics.parquet rows, one MLflow step per cycle, logged when the row is
appended (the mark that a cycle is finished, so a redone cycle is never logged twice); on opening, the rows the
MLflow run lacks (a crash between the two writes, tracking added to a run that already has cycles) are logged
first. Artifacts are the task's Parquet tables and resolved configuration, uploaded again after every cycle.
MLflow is an optional extra (`pip install 'alctl[mlflow]'`); nothing here imports it unless tracking is on.

A password in the tracking URI (http://user:secret@host) is given to the MLflow client and nowhere else: every
line alctl prints and every file it writes (manifest.yaml, task.yaml, mlflow.json, Kubernetes specs) holds the URI
with the password replaced by *** (`shown_uri`). Jobs that run from such a copy need the credentials in
MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD, where MLflow reads them, which is the better place anyway.
"""

from __future__ import annotations

import importlib.util
import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlparse, urlsplit

from alctl import config as mf
from alctl import store
from alctl.console import Ui
from alctl.errors import Preempted, UserError
from alctl.safe_text import redact_url, terminal

RUN_FILE = "mlflow.json"  # in the task directory: {"tracking_uri", "experiment_id", "run_id"}
INSTALL = "pip install 'alctl[mlflow]'"
# metrics.parquet columns logged as MLflow metrics (step = cycle); null or NaN values are left out
METRIC_COLUMNS = (
    "n_labeled", "n_pseudo", "accuracy", "loss", "pseudo_accuracy", "pseudo_accuracy_top_half",
    "seconds_pretrain", "seconds_train", "seconds_propagate", "seconds_eval", "seconds_select", "seconds_total",
    "peak_memory_mb", "balanced_accuracy", "macro_f1",
)
PER_CLASS_COLUMNS = {"recall_per_class": "recall_class", "labeled_per_class": "labeled_class"}  # -> <name>_<c>
MARKER = "n_labeled"  # the metric every logged cycle has: its steps are the cycles an MLflow run already holds
ARTIFACTS = ("pool.parquet", "scores.parquet", "pseudo.parquet", "metrics.parquet", "task.yaml")
PARAM_VALUE_LIMIT = 500  # characters: what every MLflow server version accepts (recent ones take 6000)
PARAMS_PER_BATCH = 100  # MLflow's limit of params (and tags) in one log_batch call
METRICS_PER_BATCH = 1000  # MLflow's limit of metrics in one log_batch call
_DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")  # tracking stores that need SQLAlchemy and Alembic


CREDENTIALS_HINT = ("put the user name and password in MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD rather than"
                    " in tracking.mlflow")


def shown_uri(uri: str) -> str:
    """A tracking URI as alctl prints and stores it: its password replaced by ***, control characters escaped."""
    return terminal(redact_url(uri))


def has_password(uri: str) -> bool:
    """Whether a tracking URI carries a password in its user-info (http://user:secret@host)."""
    try:
        return urlsplit(uri).password is not None
    except ValueError:
        return False


def scrub(text: str, uri: str) -> str:
    """`text` (e.g. an MLflow error message) with the URI's password, as given or percent-decoded or -encoded,
    replaced by ***."""
    try:
        password = urlsplit(uri).password
    except ValueError:
        return text
    if not password:
        return text
    for form in sorted({password, unquote(password), quote(unquote(password), safe="")}, key=len, reverse=True):
        if form:
            text = text.replace(form, "***")
    return text


def missing_packages(uri: str) -> str | None:
    """The one-line problem when MLflow (or, for a database URI, SQLAlchemy/Alembic) is not installed, else None."""
    needed = ["mlflow"]
    if urlparse(uri).scheme.split("+")[0].lower() in _DATABASE_SCHEMES:
        needed += ["sqlalchemy", "alembic"]
    absent = [name for name in needed if importlib.util.find_spec(name) is None]
    if not absent:
        return None
    if "mlflow" in absent:
        return f"tracking.mlflow: MLflow is not installed; {INSTALL}"
    return f"tracking.mlflow: {' and '.join(absent)} (for a database store) not installed; {INSTALL}"


def require(config: mf.Manifest) -> None:
    """UserError (exit 2) when the configuration tracks with MLflow and MLflow is not installed; else nothing."""
    uri = config.tracking.mlflow
    if uri is not None and (problem := missing_packages(uri)) is not None:
        raise UserError(problem)


def flat_params(config: mf.Manifest) -> dict[str, str]:
    """The task's resolved configuration as MLflow params: dotted keys (e.g. active.strategy), values as YAML/JSON
    scalars (strings as they are), cut to PARAM_VALUE_LIMIT characters. `sweep` (empty once resolved) and
    `tracking` are left out."""
    out: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), inner)
            return
        text = value if isinstance(value, str) else json.dumps(value)
        out[prefix] = text if len(text) <= PARAM_VALUE_LIMIT else text[: PARAM_VALUE_LIMIT - 3] + "..."

    walk("", config.model_dump(mode="json", exclude={"sweep", "tracking"}))
    return out


def experiment_name(config: mf.Manifest) -> str:
    """The MLflow experiment of a run's tasks: the run's name."""
    return config.name or "run"


def run_tags(task: mf.Task) -> dict[str, str]:
    """The tags of a task's MLflow run: run name, task index and key, strategy, variant, repetition."""
    config = task.config
    return {
        "run": experiment_name(config), "task": str(task.index), "task_key": task.key,
        "strategy": config.active.strategy, "variant": task.variant, "repetition": str(task.rep),
    }


def _first_line(exc: BaseException) -> str:
    """An exception as one line: its type and the first line of its message."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def row_metrics(row: dict[str, Any]) -> dict[str, float]:
    """The MLflow metrics of a metrics.parquet row: its METRIC_COLUMNS as floats and its per-class lists as one
    metric per class (`recall_class_3`, `labeled_class_3`), null and NaN values left out."""
    values: dict[str, Any] = {key: row.get(key) for key in METRIC_COLUMNS}
    for column, prefix in PER_CLASS_COLUMNS.items():
        values.update({f"{prefix}_{c}": v for c, v in enumerate(row.get(column) or [])})
    return {key: float(v) for key, v in values.items() if v is not None and not math.isnan(float(v))}


def _artifact_location(uri: str, experiment: str) -> str | None:
    """Where a new experiment's artifacts go: for a local SQLite store, mlartifacts/<experiment> beside the
    database file (MLflow's default is ./mlruns under whatever the working directory is); else the server's
    default (None)."""
    if not uri.startswith("sqlite:///"):
        return None
    db = uri[len("sqlite:///"):].split("?")[0]
    if not db or db == ":memory:":
        return None
    return (Path(db).resolve().parent / "mlartifacts" / experiment).as_uri()


class Tracker:
    """A task's tracking while it runs; this base class tracks nothing (tracking.mlflow: null)."""

    def cycle_finished(self) -> None:
        """A cycle's metrics row was just appended: log what the tracker lacks."""

    def close(self, status: str) -> None:
        """The task's process is done with it (status: FINISHED, SCHEDULED, KILLED or FAILED)."""


class MlflowTracker(Tracker):
    """One task's MLflow run, created or reopened from the task directory's mlflow.json."""

    def __init__(self, task: mf.Task, tdir: Path, ui: Ui) -> None:
        """Open the task's MLflow run (creating the experiment and run when needed), log its params and tags, then
        the finished cycles and artifacts it lacks. UserError when MLflow is missing or refuses the URI."""
        require(task.config)
        try:
            from mlflow.exceptions import MlflowException  # noqa: PLC0415 - an optional extra
            from mlflow.tracking import MlflowClient  # noqa: PLC0415
        except ImportError as exc:  # found but broken
            raise UserError(f"tracking.mlflow: MLflow cannot be imported ({exc}); {INSTALL}") from None
        self.task, self.tdir, self.ui = task, tdir, ui
        self.uri: str = task.config.tracking.mlflow or ""  # the real URI: for the client only
        self.shown = shown_uri(self.uri)  # what is printed and stored
        self.tag = f"[task {task.index} {task.key}]"
        try:
            self.client = MlflowClient(tracking_uri=self.uri)
            self.run_id, self.logged = self._open_run()
            self._log_params_and_tags()
        except MlflowException as exc:
            hint = f" ({CREDENTIALS_HINT})" if has_password(self.uri) else ""
            raise UserError(f"tracking.mlflow: {self.shown}: {self._first_line(exc)}{hint}") from None
        ui.line(f"{self.tag} MLflow run {self.run_id} ({self.shown}, experiment {experiment_name(task.config)})")
        self._sync_or_warn()

    def _experiment_id(self) -> str:
        """The id of the experiment named after the run, created when absent."""
        from mlflow.exceptions import MlflowException  # noqa: PLC0415

        name = experiment_name(self.task.config)
        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            try:
                return str(self.client.create_experiment(name, artifact_location=_artifact_location(self.uri, name)))
            except MlflowException:  # another task created it in the meantime
                experiment = self.client.get_experiment_by_name(name)
                if experiment is None:
                    raise
        if experiment.lifecycle_stage == "deleted":
            raise UserError(f"tracking.mlflow: {self.shown}: experiment {name!r} is deleted; restore it"
                            f" (mlflow experiments restore --experiment-id {experiment.experiment_id}) or purge it")
        return str(experiment.experiment_id)

    def _open_run(self) -> tuple[str, set[int]]:
        """The run recorded in mlflow.json for this tracking URI when it still exists (marked RUNNING again) and the
        cycles it holds; else a new run, recorded there, holding none."""
        path = self.tdir / RUN_FILE
        recorded: dict[str, Any] = {}
        if path.is_file():
            try:
                recorded = json.loads(path.read_text())
            except (OSError, ValueError):
                recorded = {}
        stored = redact_url(self.uri)  # mlflow.json never holds the password
        if recorded.get("tracking_uri") in (stored, self.uri) and recorded.get("run_id"):
            run = self._existing_run(str(recorded["run_id"]))
            if run is not None:
                if recorded["tracking_uri"] != stored:  # written before passwords were kept out of it
                    self._record(path, str(recorded.get("experiment_id")), run.info.run_id)
                self.client.update_run(run.info.run_id, status="RUNNING")
                steps = {int(m.step) for m in self.client.get_metric_history(run.info.run_id, MARKER)}
                return run.info.run_id, steps
        experiment_id = self._experiment_id()
        run = self.client.create_run(experiment_id, run_name=f"{self.task.index}:{self.task.key}",
                                     tags=run_tags(self.task))
        self._record(path, experiment_id, run.info.run_id)
        return run.info.run_id, set()

    def _record(self, path: Path, experiment_id: str, run_id: str) -> None:
        """Write mlflow.json: the tracking URI (password redacted), the experiment and the run."""
        record = {"tracking_uri": redact_url(self.uri), "experiment_id": experiment_id, "run_id": run_id}
        store.atomic_write_bytes(path, (json.dumps(record, indent=1) + "\n").encode())

    def _first_line(self, exc: BaseException) -> str:
        """An exception as one line (`_first_line`), the tracking URI's password scrubbed."""
        return terminal(scrub(_first_line(exc), self.uri), limit=300)

    def _existing_run(self, run_id: str) -> Any:
        """The MLflow run of that id when it exists and is not deleted, else None."""
        from mlflow.exceptions import MlflowException  # noqa: PLC0415

        try:
            run = self.client.get_run(run_id)
        except MlflowException:
            return None
        return None if run.info.lifecycle_stage == "deleted" else run

    def _log_params_and_tags(self) -> None:
        """Log the params the run lacks (a param once logged cannot change in MLflow) and set every tag."""
        from mlflow.entities import Param, RunTag  # noqa: PLC0415

        have = self.client.get_run(self.run_id).data.params
        params = [Param(k, v) for k, v in flat_params(self.task.config).items() if k not in have]
        tags = [RunTag(k, v) for k, v in run_tags(self.task).items()]
        for i in range(0, len(params), PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=params[i:i + PARAMS_PER_BATCH])
        self.client.log_batch(self.run_id, tags=tags)

    def sync(self) -> None:
        """Log the metrics rows of finished cycles the run does not hold yet (step = cycle, timestamp = when the
        cycle finished) and upload the task's tables."""
        from mlflow.entities import Metric  # noqa: PLC0415

        rows = store.read_table(self.tdir / "metrics.parquet", "metrics").to_pylist()
        new = sorted((r for r in rows if int(r["cycle"]) not in self.logged), key=lambda r: int(r["cycle"]))
        metrics: list[Metric] = []
        for row in new:
            finished = row.get("finished_at")
            stamp = int((finished if isinstance(finished, datetime) else datetime.now()).timestamp() * 1000)
            metrics += [Metric(key, value, stamp, int(row["cycle"])) for key, value in row_metrics(row).items()]
        # the marker metric of a cycle goes last in its batch, so a cycle counted as held holds all its metrics
        metrics.sort(key=lambda m: (m.step, m.key == MARKER))
        for i in range(0, len(metrics), METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + METRICS_PER_BATCH])
        self.logged.update(int(r["cycle"]) for r in new)
        for name in ARTIFACTS:
            if (self.tdir / name).is_file():
                self.client.log_artifact(self.run_id, str(self.tdir / name))

    def _sync_or_warn(self) -> None:
        """sync(), a failure of which is a warning: a tracking server's trouble never stops training (the next
        cycle, or the next run of the task, logs what is missing)."""
        try:
            self.sync()
        except Exception as exc:  # noqa: BLE001 - whatever the tracking client raises
            self.ui.warn(f"{self.tag} MLflow: {self._first_line(exc)}; the next cycle or run retries")

    def cycle_finished(self) -> None:
        """Log the cycle just finished and upload the tables (a failure is a warning)."""
        self._sync_or_warn()

    def close(self, status: str) -> None:
        """Log what is missing and set the run's status: FINISHED (every cycle done), SCHEDULED (cycles left: rerun
        to continue), KILLED (stopped by a signal) or FAILED; failures are warnings."""
        self._sync_or_warn()
        try:
            if status == "SCHEDULED":
                self.client.update_run(self.run_id, status=status)
            else:
                self.client.set_terminated(self.run_id, status=status)
        except Exception as exc:  # noqa: BLE001
            self.ui.warn(f"{self.tag} MLflow: could not set the run's status to {status}: {self._first_line(exc)}")


@contextmanager
def tracked(task: mf.Task, tdir: Path, ui: Ui) -> Iterator[Tracker]:
    """The task's tracker while its process runs it (a no-op Tracker when tracking is off); on leaving, its MLflow
    run is FINISHED when every cycle is done, SCHEDULED when cycles are left, KILLED when a signal or Ctrl-C
    stopped it, FAILED on an error."""
    if task.config.tracking.mlflow is None:
        yield Tracker()
        return
    tracker = MlflowTracker(task, tdir, ui)
    status = "FAILED"
    try:
        yield tracker
        done = store.read_table(tdir / "metrics.parquet", "metrics")["cycle"].to_pylist()
        status = "FINISHED" if len(set(done)) >= task.config.active.cycles else "SCHEDULED"
    except (Preempted, KeyboardInterrupt):
        status = "KILLED"
        raise
    finally:
        tracker.close(status)
