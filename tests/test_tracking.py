"""MLflow tracking (manifest `tracking.mlflow`): one run per task, resumed, read back with MlflowClient; the task
hash unchanged; a one-line exit 2 when MLflow is not installed."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from alctl.config import identity
from alctl import config as mf
from alctl import tracking
from alctl.console import silent
from alctl.engine import commands
from alctl.engine.cycle import run_task
from alctl.engine.workspace import task_config_hash
from alctl.errors import ManifestError, Preempted

needs_mlflow = pytest.mark.skipif(importlib.util.find_spec("mlflow") is None,
                                  reason="MLflow is not installed (pip install 'alctl[mlflow]'; the test extra has it)")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # SQLAlchemy's, inside MLflow's store

SMALL: dict[str, Any] = {
    "repetitions": 1,
    "train": {"epochs": 2, "rampdown_epochs": 3},
    "active": {"cycles": 2},
}


def _uri(workdir: Path) -> str:
    """A SQLite tracking store under the test's directory."""
    return f"sqlite:///{workdir / 'mlflow' / 'mlflow.db'}"


def _client(uri: str) -> Any:
    """An MlflowClient of the store."""
    mlflow_tracking = pytest.importorskip("mlflow.tracking")
    return mlflow_tracking.MlflowClient(tracking_uri=uri)


def _runs(uri: str, experiment: str = "tiny") -> list[Any]:
    """Every MLflow run of the experiment."""
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None
    return client.search_runs([exp.experiment_id])


def _task_dir(path: Path, index: int = 0) -> Path:
    """A task's directory."""
    m = mf.load(path)
    return mf.run_dir(m) / "tasks" / mf.tasks(m)[index].key


def _steps(uri: str, run_id: str, key: str = "accuracy") -> list[int]:
    """The steps of a metric's history, in order."""
    return sorted(int(m.step) for m in _client(uri).get_metric_history(run_id, key))


def test_tracking_leaves_the_task_hash_unchanged(write_manifest) -> None:
    base = mf.load(write_manifest())
    tracked = mf.load(write_manifest({"tracking": {"mlflow": "sqlite:///x.db"}}, name="t.yaml"))
    tracked = tracked.model_copy(update={"name": base.name})
    assert [task_config_hash(t.config) for t in mf.tasks(base)] == [
        task_config_hash(t.config) for t in mf.tasks(tracked)]
    assert all("tracking" not in p for t in mf.tasks(tracked) for p in identity.task_fields(t.config))


def test_tracking_is_set_once_per_run_and_needs_a_uri(write_manifest) -> None:
    with pytest.raises(ManifestError, match="sweep.tracking.mlflow: set once per run"):
        mf.load(write_manifest({"sweep": {"tracking.mlflow": ["sqlite:///a.db", "sqlite:///b.db"]}}))
    with pytest.raises(ManifestError, match="tracking.mlflow: empty"):
        mf.load(write_manifest({"tracking": {"mlflow": "  "}}))


def test_params_are_dotted_json_scalars_cut_to_the_limit() -> None:
    config = mf.parse({"name": "x", "dataset": {"name": "imagefolder", "pool": "p", "image_size": 8,
                                                "classes": [f"class-{i:04d}" for i in range(100)]},
                       "active": {"oracle": "human"}, "tracking": {"mlflow": "sqlite:///x.db"}})
    params = tracking.flat_params(config)
    assert params["active.strategy"] == "random" and params["train.epochs"] == "200"
    assert params["train.nesterov"] == "true" and params["pretrain.weights"] == "null"
    assert params["scheduler.time"] == "24:00:00" and params["name"] == "x"
    assert len(params["dataset.classes"]) == tracking.PARAM_VALUE_LIMIT and params["dataset.classes"].endswith("...")
    assert not any(k.startswith(("tracking", "sweep")) for k in params)


def test_a_rows_metrics_are_its_non_null_metric_columns_ceals_pseudo_labels_included() -> None:
    row = {"task": 1, "task_key": "strategy=ceal/rep=0", "strategy": "ceal", "cycle": 1, "n_labeled": 20,
           "n_pseudo": 766, "accuracy": 0.5, "loss": float("nan"), "pseudo_accuracy": 0.9,
           "pseudo_accuracy_top_half": None, "seconds_total": 1.5}
    assert tracking.row_metrics(row) == {"n_labeled": 20.0, "n_pseudo": 766.0, "accuracy": 0.5,
                                         "pseudo_accuracy": 0.9, "seconds_total": 1.5}


def test_per_class_figures_are_logged_one_metric_per_class() -> None:
    row = {"n_labeled": 20, "accuracy": 0.5, "balanced_accuracy": 0.4, "macro_f1": float("nan"),
           "recall_per_class": [1.0, None, 0.25], "labeled_per_class": [15, 0, 5]}
    assert tracking.row_metrics(row) == {
        "n_labeled": 20.0, "accuracy": 0.5, "balanced_accuracy": 0.4, "recall_class_0": 1.0, "recall_class_2": 0.25,
        "labeled_class_0": 15.0, "labeled_class_1": 0.0, "labeled_class_2": 5.0}


@needs_mlflow
def test_one_run_per_task_with_params_tags_metrics_and_artifacts(write_manifest, workdir: Path) -> None:
    uri = _uri(workdir)
    path = write_manifest({**SMALL, "tracking": {"mlflow": uri},
                           "sweep": {"active.strategy": ["random", "uncertainty"]}})
    commands.cycle_command(path, None, None, silent())
    runs = _runs(uri)
    assert len(runs) == 2
    client = _client(uri)
    for index, task in enumerate(mf.tasks(mf.load(path))):
        tdir = _task_dir(path, index)
        record = json.loads((tdir / tracking.RUN_FILE).read_text())
        run = client.get_run(record["run_id"])
        assert run.info.status == "FINISHED" and record["tracking_uri"] == uri
        assert run.data.params["active.strategy"] == task.config.active.strategy
        assert run.data.params["train.epochs"] == "2" and run.data.params["dataset.name"] == "digits"
        tags = run.data.tags
        assert tags["task_key"] == task.key and tags["task"] == str(index) and tags["variant"] == "plain"
        assert tags["repetition"] == "0" and tags["run"] == "tiny"
        metrics = pq.read_table(tdir / "metrics.parquet").to_pydict()
        history = sorted(client.get_metric_history(run.info.run_id, "accuracy"), key=lambda m: m.step)
        assert [m.step for m in history] == [0, 1]
        assert [m.value for m in history] == pytest.approx(metrics["accuracy"])
        labels = sorted(client.get_metric_history(run.info.run_id, "n_labeled"), key=lambda m: m.step)
        assert [m.value for m in labels] == [10, 20]
        assert _steps(uri, run.info.run_id, "seconds_total") == [0, 1]
        assert _steps(uri, run.info.run_id, "seconds_select") == [0, 1]
        assert _steps(uri, run.info.run_id, "pseudo_accuracy") == []  # plain: no pseudo-labels, nothing logged
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"metrics.parquet", "pool.parquet", "scores.parquet", "task.yaml"} <= artifacts
    # artifacts lie beside the database, not in the working directory
    assert (workdir / "mlflow" / "mlartifacts" / "tiny").is_dir() and not (workdir / "mlruns").exists()


@needs_mlflow
def test_a_resumed_task_continues_its_run(write_manifest, workdir: Path) -> None:
    uri = _uri(workdir)
    path = write_manifest({**SMALL, "tracking": {"mlflow": uri}})
    commands.cycle_command(path, None, 1, silent())
    (run,) = _runs(uri)
    assert run.info.status == "SCHEDULED" and _steps(uri, run.info.run_id) == [0]
    commands.cycle_command(path, None, None, silent())
    commands.cycle_command(path, None, None, silent())  # finished: nothing to run, nothing logged twice
    (again,) = _runs(uri)
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
    assert _steps(uri, run.info.run_id) == [0, 1] and _steps(uri, run.info.run_id, "n_labeled") == [0, 1]
    metrics = pq.read_table(_task_dir(path) / "metrics.parquet").to_pydict()
    history = sorted(_client(uri).get_metric_history(run.info.run_id, "accuracy"), key=lambda m: m.step)
    assert [m.value for m in history] == pytest.approx(metrics["accuracy"])


@needs_mlflow
def test_a_stopped_task_is_killed_then_continued_to_finished(write_manifest, workdir: Path) -> None:
    uri = _uri(workdir)
    path = write_manifest({**SMALL, "tracking": {"mlflow": uri}})
    task = mf.tasks(mf.load(path))[0]
    with pytest.raises(Preempted):  # SIGTERM/SIGUSR1 as run_task sees them
        run_task(task, silent(), path, None, stop=lambda: True)
    (run,) = _runs(uri)
    assert run.info.status == "KILLED" and _steps(uri, run.info.run_id) == []
    commands.cycle_command(path, None, None, silent())
    (again,) = _runs(uri)
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
    assert _steps(uri, run.info.run_id) == [0, 1]


@needs_mlflow
def test_cycles_the_run_lacks_are_logged_when_it_reopens(write_manifest, workdir: Path) -> None:
    uri = _uri(workdir)
    untracked = write_manifest(SMALL)
    commands.cycle_command(untracked, None, 1, silent())  # cycle 0 before tracking was on: same task hash
    path = write_manifest({**SMALL, "tracking": {"mlflow": uri}})
    with pytest.MonkeyPatch.context() as mp:  # the process dies between a cycle's metrics row and its logging
        mp.setattr(tracking.MlflowTracker, "cycle_finished", lambda self: None)
        mp.setattr(tracking.MlflowTracker, "close", lambda self, status: None)
        commands.cycle_command(path, None, None, silent())
    (run,) = _runs(uri)
    assert _steps(uri, run.info.run_id) == [0]  # logged when the run opened; cycle 1's row never reached it
    commands.cycle_command(path, None, None, silent())
    (again,) = _runs(uri)
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
    assert _steps(uri, run.info.run_id) == [0, 1]


def test_mlflow_not_installed_is_one_line_exit_2(write_manifest, workdir: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from alctl.cli import app

    path = write_manifest({**SMALL, "tracking": {"mlflow": _uri(workdir)}})
    monkeypatch.setitem(sys.modules, "mlflow", None)
    res = CliRunner().invoke(app, ["cycle", str(path)])
    assert res.exit_code == 2, res.output
    assert res.output.strip() == "error: tracking.mlflow: MLflow is not installed; pip install 'alctl[mlflow]'"
    assert not (workdir / "runs").exists()  # refused before anything was written or trained
    res = CliRunner().invoke(app, ["validate", str(path)])
    assert res.exit_code == 0 and "alctl cycle exits 2 here: MLflow is not installed" in " ".join(res.output.split())
