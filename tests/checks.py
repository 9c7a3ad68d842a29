"""Checks shared by test modules."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def kept_and_direct_propagation(path: Path, features: Any) -> tuple[list[int], list[int], dict[str, list]]:
    """For the single task of manifest `path` after its cycle 0: the pseudo-labels kept in pseudo.parquet and those
    of a direct propagation over `features(task, ds)` [N, D] from the same labeled set, both over the unlabeled
    positions in pool order, and the pseudo table itself."""
    from alctl import config as mf
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


def load_benchmark(name: str) -> Any:
    """A script of benchmarks/ imported from its path as module `name` (benchmarks/ is not a package; the
    folder goes on sys.path for the helper modules the scripts import beside them)."""
    import importlib.util
    import sys

    folder = Path(__file__).resolve().parents[1] / "benchmarks"
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def digits_human_manifest(folder: Path, name: str) -> Path:
    """A one-task digits manifest (human oracle, uncertainty, 2 cycles, tiny training) writing under `folder`."""
    import yaml

    from tests.conftest import TINY, deep_update

    data = deep_update(TINY, {"name": name, "output": str(folder / "runs"), "repetitions": 1,
                              "train": {"epochs": 2, "min_steps": 3, "rampdown_epochs": 3},
                              "active": {"cycles": 2, "strategy": "uncertainty", "oracle": "human"}})
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def single_task_dir(manifest: Path) -> Path:
    """The task directory of a one-task manifest."""
    from alctl import config as mf

    m = mf.load(manifest)
    return mf.run_dir(m) / "tasks" / mf.tasks(m)[0].key


def pool_table(manifest: Path) -> dict[str, list[Any]]:
    """The pool.parquet of a one-task manifest as columns."""
    import pyarrow.parquet as pq

    return pq.read_table(single_task_dir(manifest) / "pool.parquet").to_pydict()
