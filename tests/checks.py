"""Checks shared by test modules."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def kept_and_direct_propagation(path: Path, features: Any) -> tuple[list[int], list[int], dict[str, list]]:
    """For the single task of manifest `path` after its cycle 0: the pseudo-labels kept in pseudo.parquet and those
    of a direct propagation over `features(task, ds)` [N, D] from the same labeled set, both over the unlabeled
    positions in pool order, and the pseudo table itself."""
    from alctl import manifest as mf
    from alctl.engine.steps import propagate_pool
    from alctl.engine.tables import TaskTables
    from alctl.engine.workspace import dataset_for, task_dir

    (task,) = mf.tasks(mf.load(path))
    ds = dataset_for(task.config)
    tables = TaskTables(task_dir(task), ds)
    pool = tables.read_pool()
    assert pool is not None
    labeled = pool.labeled_at(0)
    want = propagate_pool(task.config, ds, features(task, ds), labeled, pool.label[labeled], 0)
    pseudo = tables.store.read("pseudo").to_pydict()
    got = dict(zip(pseudo["sample_id"], pseudo["pseudo_label"]))
    kept = [got[int(i)] for i in ds.train_ids.numpy()[want.unlabeled]]
    return kept, want.labels[want.unlabeled].tolist(), pseudo
