"""Parquet store: schemas, round trips, atomic writes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from alctl import store


def test_pool_round_trip(tmp_path: Path) -> None:
    ts = store.TaskStore(tmp_path / "task")
    cols = {"sample_id": np.arange(5), "label": [3, -1, 1, -1, 0], "labeled_cycle": [0, -1, 1, -1, 0],
            "label_source": ["initial", "", "oracle", "", "initial"]}
    ts.write("pool", store.to_table("pool", cols))
    back = ts.read("pool")
    assert back.schema.equals(store.POOL)
    assert back.to_pydict() == {k: list(v) for k, v in cols.items()}


def test_append_and_missing_columns_become_null(tmp_path: Path) -> None:
    ts = store.TaskStore(tmp_path)
    assert ts.read("metrics").num_rows == 0
    ts.append("metrics", store.to_table("metrics", {"cycle": [0], "accuracy": [0.5]}))
    ts.append("metrics", store.to_table("metrics", {"cycle": [1], "accuracy": [0.7]}))
    t = ts.read("metrics")
    assert t["cycle"].to_pylist() == [0, 1] and t["accuracy"].to_pylist() == [0.5, 0.7]
    assert t["loss"].null_count == 2


def test_failed_write_leaves_previous_file_and_no_temporaries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ts = store.TaskStore(tmp_path)
    ts.write("scores", store.to_table("scores", {"cycle": [0], "sample_id": [1], "strategy": ["random"],
                                                 "score": [0.1], "selected": [True]}))

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(store.pq, "write_table", boom)
    with pytest.raises(OSError):
        ts.write("scores", store.to_table("scores", {"cycle": [1], "sample_id": [2], "strategy": ["random"],
                                                     "score": [0.2], "selected": [False]}))
    monkeypatch.undo()
    assert pq.read_table(ts.path("scores"))["cycle"].to_pylist() == [0]
    assert [p.name for p in tmp_path.iterdir()] == ["scores.parquet"]


def test_metrics_dataset_merges_tasks(tmp_path: Path) -> None:
    for key, acc in (("strategy=random/rep=0", 0.5), ("strategy=random/rep=1", 0.7)):
        store.TaskStore(tmp_path / "tasks" / key).write("metrics", store.to_table("metrics", {"cycle": [0], "accuracy": [acc]}))
    t = store.read_metrics_dataset(tmp_path)
    assert sorted(t["accuracy"].to_pylist()) == [0.5, 0.7]


def test_written_files_follow_the_umask_not_mkstemps_0600(tmp_path: Path) -> None:
    """Tasks on other machines / users of a shared runs directory must be able to read every table."""
    old = os.umask(0o022)
    try:
        store.atomic_write_bytes(tmp_path / "a.txt", b"x")
        store.TaskStore(tmp_path).write("pool", store.to_table("pool", {"sample_id": [1], "label": [2],
                                                                        "labeled_cycle": [0], "label_source": ["initial"]}))
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "pool.parquet").stat().st_mode & 0o777 == 0o644
