"""The loop: balanced initial set, determinism, store contents, resume after interruption."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from alctl import manifest as mf
from alctl import report
from alctl.console import silent
from alctl.engine import commands, tables
from alctl.errors import UserError


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


@pytest.mark.slow
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
    acc_a = pq.read_table(_task_dir(straight) / "metrics.parquet")["accuracy"].to_pylist()
    acc_b = pq.read_table(_task_dir(resumed) / "metrics.parquet")["accuracy"].to_pylist()
    assert acc_a == acc_b


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
