"""The loop: balanced initial set, determinism, store contents, resume after interruption."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from rich.console import Console

from alctl import config as mf
from alctl import report, tracking
from alctl.console import Ui, silent
from alctl.engine import commands, tables
from alctl.engine.cycle import run_task
from alctl.engine.workspace import dataset_for
from alctl.errors import Preempted, UserError


def _ui():  # noqa: ANN202
    return silent()


def _task_dir(path: Path, index: int = 0) -> Path:
    m = mf.load(path)
    return mf.run_dir(m) / "tasks" / mf.tasks(m)[index].key


def test_initial_set_is_balanced() -> None:
    labels = np.repeat(np.arange(10), 50)
    rng = np.random.default_rng(0)
    init = tables.initial_labeled(labels, 23, 10, rng)
    counts = np.bincount(labels[init], minlength=10)
    assert len(np.unique(init)) == 23 and counts.min() == 2 and counts.max() == 3


def test_store_contents_after_a_run(write_manifest) -> None:
    path = write_manifest({"repetitions": 1, "active": {"strategy": "uncertainty"}})
    commands.cycle_command(path, None, None, _ui())
    tdir = _task_dir(path)
    pool = pq.read_table(tdir / "pool.parquet").to_pydict()
    cycles = np.array(pool["labeled_cycle"])
    assert (cycles == 0).sum() == 10 and (cycles == 1).sum() == 10 and (cycles == 2).sum() == 10
    assert set(np.array(pool["label_source"])[cycles == 1]) == {"oracle"}
    scores = pq.read_table(tdir / "scores.parquet").to_pydict()
    assert sorted(set(scores["cycle"])) == [0, 1]  # no selection after the last cycle
    sel0 = np.array(scores["selected"])[np.array(scores["cycle"]) == 0]
    assert sel0.sum() == 10 and len(sel0) == 1397 - 10
    metrics = pq.read_table(tdir / "metrics.parquet").to_pydict()
    assert metrics["n_labeled"] == [10, 20, 30] and all(s > 0 for s in metrics["seconds_train"])
    assert (mf.run_dir(mf.load(path)) / "manifest.yaml").is_file()


def test_same_manifest_same_selections(write_manifest, workdir: Path) -> None:
    path = write_manifest({"repetitions": 1, "active": {"strategy": "coreset", "cycles": 2}})
    commands.cycle_command(path, None, None, _ui())
    first = pq.read_table(_task_dir(path) / "pool.parquet")
    other = write_manifest({"repetitions": 1, "name": "again", "active": {"strategy": "coreset", "cycles": 2}},
                           name="again.yaml")
    commands.cycle_command(other, None, None, _ui())
    assert pq.read_table(_task_dir(other) / "pool.parquet").equals(first)


def test_interrupted_after_cycle_1_then_resumed_equals_uninterrupted(write_manifest) -> None:
    extra = {"repetitions": 1, "active": {"strategy": "ceal", "cycles": 4, "ceal": {"threshold": 0.9}}}
    straight = write_manifest({**extra, "name": "straight"}, name="straight.yaml")
    commands.cycle_command(straight, None, None, _ui())
    resumed = write_manifest({**extra, "name": "resumed"}, name="resumed.yaml")
    assert commands.cycle_command(resumed, None, 2, _ui()) == 2  # stops after cycles 0 and 1
    assert pq.read_table(_task_dir(resumed) / "metrics.parquet").num_rows == 2
    assert commands.cycle_command(resumed, None, None, _ui()) == 2  # resumes at cycle 2
    assert commands.cycle_command(resumed, None, None, _ui()) == 0  # finished: a no-op
    for table in ("pool", "scores", "pseudo"):
        a = pq.read_table(_task_dir(straight) / f"{table}.parquet")
        b = pq.read_table(_task_dir(resumed) / f"{table}.parquet")
        assert a.equals(b), table
    columns = ["accuracy", "n_pseudo", "pseudo_accuracy"]
    metrics_a = pq.read_table(_task_dir(straight) / "metrics.parquet").select(columns)
    assert pq.read_table(_task_dir(resumed) / "metrics.parquet").select(columns).equals(metrics_a)


def test_half_written_cycle_is_rolled_back(write_manifest) -> None:
    """A kill after the selection was written but before the metrics row: the cycle is redone identically."""
    path = write_manifest({"repetitions": 1, "active": {"cycles": 3}})
    commands.cycle_command(path, None, 2, _ui())
    tdir = _task_dir(path)
    full_pool = pq.read_table(tdir / "pool.parquet")
    metrics = pq.read_table(tdir / "metrics.parquet")
    pq.write_table(metrics.slice(0, 1), tdir / "metrics.parquet")  # as if cycle 1 never wrote its row
    commands.cycle_command(path, None, 2, _ui())
    assert pq.read_table(tdir / "pool.parquet").equals(full_pool)
    assert pq.read_table(tdir / "metrics.parquet")["cycle"].to_pylist() == [0, 1]


def test_changed_configuration_in_same_run_dir_is_refused(write_manifest) -> None:
    path = write_manifest({"repetitions": 1, "active": {"cycles": 1}})
    commands.cycle_command(path, None, None, _ui())
    run = mf.run_dir(mf.load(path))
    before = {f: (run / f).read_bytes() for f in ("manifest.yaml", "manifest.sha256")}
    rows = report.aggregate([run])
    path = write_manifest({"repetitions": 1, "active": {"cycles": 1}, "train": {"lr": 0.01}})
    with pytest.raises(UserError, match="holds results of another configuration"):
        commands.cycle_command(path, None, None, _ui())
    # refused before anything was written: the run's manifest, and what report reads back with it, are intact
    assert {f: (run / f).read_bytes() for f in before} == before
    assert report.aggregate([run]) == rows and len(rows) == 1


def test_ceal_pseudo_labels_are_counted_scored_and_reported_after_a_resume(write_manifest) -> None:
    path = write_manifest({"repetitions": 1, "train": {"epochs": 2, "rampdown_epochs": 3},
                           "active": {"cycles": 2, "ceal": {"threshold": 1.0, "paper": True}},  # all but the chosen
                           "sweep": {"active.strategy": ["random", "ceal"]}})
    plain, ceal = mf.tasks(mf.load(path))
    assert (plain.config.active.strategy, ceal.config.active.strategy) == ("random", "ceal")
    commands.cycle_command(path, plain.index, None, _ui())
    commands.cycle_command(path, ceal.index, 1, _ui())  # cycle 0, whose selection pseudo-labels cycle 1's images
    with pytest.raises(Preempted):
        run_task(ceal, _ui(), path, None, stop=lambda: True)  # stopped after cycle 1's first epoch
    tdir = _task_dir(path, ceal.index)
    assert (tdir / "checkpoints" / "train.pt").is_file()
    out = io.StringIO()
    commands.cycle_command(path, ceal.index, None, Ui(console=Console(file=out, width=400)))  # resumes cycle 1

    # the accuracy recomputed from pseudo.parquet and the dataset's labels, joined by sample id
    pseudo = pq.read_table(tdir / "pseudo.parquet").to_pydict()
    rows = (np.array(pseudo["cycle"]) == 1) & (np.array(pseudo["epoch"]) == tables.CEAL_EPOCH)
    ds = dataset_for(ceal.config)
    ids, labels = ds.train_ids.numpy(), ds.train_labels.numpy()
    order = np.argsort(ids)
    truth = labels[order[np.searchsorted(ids, np.array(pseudo["sample_id"])[rows], sorter=order)]]
    n, want = int(rows.sum()), float(np.mean(np.array(pseudo["pseudo_label"])[rows] == truth))
    assert n > 0 and (truth >= 0).all()
    metrics = pq.read_table(tdir / "metrics.parquet").to_pylist()
    assert [m["n_pseudo"] for m in metrics] == [0, n]
    assert metrics[0]["pseudo_accuracy"] is None and metrics[1]["pseudo_accuracy"] == pytest.approx(want)
    assert [m["pseudo_accuracy_top_half"] for m in metrics] == [None, None]  # CEAL's weights are all 1
    assert tracking.row_metrics(metrics[1])["pseudo_accuracy"] == pytest.approx(want)  # what MLflow gets
    assert "cycle 1: 20 labels, accuracy " in out.getvalue()
    assert f", {n} pseudo-labels {100 * want:.1f}% correct | train " in out.getvalue()

    run = mf.run_dir(mf.load(path))
    agg = {(r.strategy, r.cycle): r for r in report.aggregate([run])}
    assert agg["ceal", 1].n_pseudo_mean == n and agg["ceal", 1].pseudo_accuracy_mean == pytest.approx(100 * want)
    assert agg["random", 1].n_pseudo_mean == 0 and agg["random", 1].pseudo_accuracy_mean is None
    text, _ = report.report(run, "markdown")
    section = text.split("Pseudo-labels:")[1]
    assert f"| tiny | ceal{report._extra(agg['ceal', 1])} | plain | 0 | {n} ({100 * want:.1f}%) |" in section
    assert "| random" not in section  # a setting without pseudo-labels has no line


def test_ceal_cap_and_weight_reach_the_stored_pseudo_labels_and_the_training_targets(write_manifest) -> None:
    import torch

    from alctl.engine.cycle import CycleTraining, TaskContext
    from alctl.engine.workspace import task_dir

    path = write_manifest({"repetitions": 1, "train": {"epochs": 2, "rampdown_epochs": 3},
                           "active": {"strategy": "ceal", "cycles": 2,
                                      "ceal": {"threshold": 1.0, "cap": 0.5, "balanced": False, "weight": 0.5}}})
    (task,) = mf.tasks(mf.load(path))
    commands.cycle_command(path, task.index, 1, _ui())  # cycle 0 and its selection, which pseudo-labels cycle 1's
    tdir = _task_dir(path, task.index)
    pseudo = pq.read_table(tdir / "pseudo.parquet").to_pydict()
    assert set(pseudo["cycle"]) == {1} and set(pseudo["epoch"]) == {tables.CEAL_EPOCH}
    # cap 0.5 x cycle 1's 20 labels (10 initial + 10 chosen) = 10, the lowest-entropy unchosen candidates
    assert len(pseudo["sample_id"]) == 10 and set(pseudo["weight"]) == {0.5}
    scores = pq.read_table(tdir / "scores.parquet").to_pydict()
    cand = [(s, i) for s, i, sel in zip(scores["score"], scores["sample_id"], scores["selected"]) if not sel]
    cand.sort()
    assert len(cand) > 10 and cand[9][0] < cand[10][0]  # no tie at the cut
    assert set(pseudo["sample_id"]) == {i for _, i in cand[:10]}

    ds = dataset_for(task.config)
    ctx = TaskContext(task, ds, tables.TaskTables(task_dir(task), ds), torch.device("cpu"), None, lambda: False)
    training = CycleTraining(ctx, ctx.tables.read_pool(), 1)  # cycle 1's targets, before any step
    t = training.targets
    assert len(t.labeled_pos) == 20 and training.n_pseudo == len(t.pseudo_pos) == 10
    assert t.pseudo_w.dtype == np.float32 and t.pseudo_w.tolist() == [0.5] * 10
    assert sorted(ds.train_ids.numpy()[t.pseudo_pos].tolist()) == sorted(pseudo["sample_id"])

