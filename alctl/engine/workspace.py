"""A run's workspace: the task plan, task directories, configuration hashes, locks and the datasets they read."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import numpy as np

from alctl.config import identity
from alctl import config as mf
from alctl import runtime, store
from alctl.data import DatasetSplits, load_dataset
from alctl.data.imbalance import long_tailed
from alctl.errors import ManifestError, UserError
from alctl.safe_text import terminal


def plan(manifest_path: str | Path) -> tuple[mf.Manifest, list[mf.Task]]:
    """Load and validate a manifest and expand its tasks."""
    m = mf.load(manifest_path)
    return m, mf.tasks(m)


def select_task(tasks: list[mf.Task], index: int | None, per_index: int = 1) -> list[mf.Task]:
    """The tasks to run: by --task / scheduler index I, tasks I * per_index .. I * per_index + per_index - 1 (one
    task when per_index is 1; an index packs several with scheduler.tasks_per_gpu), else all."""
    source = "--task"
    if index is None:
        index, source = runtime.scheduler_task_index()
    if index is None:
        return tasks
    if per_index < 1:
        raise UserError(f"--tasks-per-index: must be at least 1, got {per_index}")
    blocks = -(-len(tasks) // per_index)
    if not 0 <= index < blocks:
        what = f"{len(tasks)} tasks" + (f" in blocks of {per_index}" if per_index > 1 else "")
        raise UserError(f"{source}: index {index} is outside the plan (0..{blocks - 1}, {what})")
    return tasks[index * per_index : (index + 1) * per_index]


def one_task(manifest_path: str | Path, task: int | None) -> mf.Task:
    """Exactly one task, from --task or the scheduler's index."""
    _, all_tasks = plan(manifest_path)
    chosen = select_task(all_tasks, task)
    if len(chosen) > 1:  # no index given, and several tasks
        raise UserError(f"--task: required, the manifest has {len(all_tasks)} tasks (0..{len(all_tasks) - 1})")
    return chosen[0]


@functools.lru_cache(maxsize=4)
def _dataset(key: str, where: str) -> DatasetSplits:
    """Load (once per process) a dataset from its config's canonical JSON; `where` (the root as an absolute
    path) only keys the cache, so that a relative root read from another working directory is loaded anew."""
    d = mf.DatasetConfig.model_validate_json(key)
    ds = load_dataset(
        d.name, root=d.root, download=d.download, image_size=d.image_size, channels=d.channels,
        pool=d.pool, labeled=d.labeled, test=d.test, truth=d.truth, classes=d.classes,
    )
    return ds if d.imbalance is None else long_tailed(ds, d.imbalance.ratio, d.imbalance.seed)


def dataset_for(config: mf.Manifest) -> DatasetSplits:
    """The dataset of a task configuration (imagefolder: checks the pool is large enough)."""
    ds = _dataset(config.dataset.model_dump_json(), os.path.abspath(config.dataset.root))
    a = config.active
    if config.dataset.name == "imagefolder":
        n = int(ds.train_labels.shape[0])
        start = len(ds.initial_positions) if ds.initial_positions is not None and len(ds.initial_positions) else a.initial
        need = start + a.budget * (a.cycles - 1)
        if need > n:
            raise UserError(
                f"active.budget: {start} initial + budget {a.budget} x {a.cycles - 1} selections = {need} exceeds"
                f" the {n} images found under dataset.pool"
            )
    return ds


def check_oracle(config: mf.Manifest, ds: DatasetSplits) -> None:
    """A simulated oracle answers from the true labels: every pool image needs one (UserError naming the first
    image without one otherwise), else it would record -1 as an oracle's answer."""
    if config.active.oracle != "simulated":
        return
    missing = np.flatnonzero(ds.train_labels.numpy() < 0)
    if len(missing):
        first = ds.train_paths[int(missing[0])] if ds.train_paths is not None else f"sample {int(ds.train_ids[missing[0]])}"
        raise UserError(
            f"dataset.truth: {len(missing)} of {len(ds.train_labels)} pool images have no true label (first: {first});"
            " active.oracle: simulated needs one for every pool image: complete the file or use active.oracle: human"
        )


def task_config_hash(config: mf.Manifest) -> str:
    """Hash of what determines a task's results: `identity.task_hash` (its settings that differ from the defaults,
    without name, output, sweep, repetitions, scheduler and tracking)."""
    return identity.task_hash(config)


def task_dir(task: mf.Task) -> Path:
    """runs/<name>/tasks/<task-key>; a UserError for a key that would lead elsewhere (absolute, or with an empty,
    . or .. component), which `manifest.task_key` never forms."""
    parts = task.key.split("/")
    if task.key.startswith("/") or any(part in ("", ".", "..") or "\\" in part or "\0" in part for part in parts):
        raise UserError(f"task {task.index}: key {terminal(task.key, limit=200)} does not name a folder inside"
                        f" {mf.run_dir(task.config) / 'tasks'}; a swept value must not hold path components")
    return mf.run_dir(task.config) / "tasks" / task.key


def check_task_dir(task: mf.Task, write: bool = True) -> str:
    """Compare the task's identity with the one recorded in its directory, or (write) record it there when none is;
    a different configuration in the same directory is a user error naming the fields that differ. A directory
    recorded under another hash (an older identity rule) whose recorded configuration (task.yaml) has the same
    identity is accepted, and (write) its hash rewritten, the old one kept as known for its checkpoints. Returns
    the hash."""
    tdir = task_dir(task)
    h = task_config_hash(task.config)
    marker = tdir / "task.sha256"
    if marker.is_file():
        hashes = marker.read_text().split()
        if not hashes or hashes[0] != h:
            recorded = _recorded_fields(tdir)
            mine = identity.task_fields(task.config)
            if recorded is None or recorded != mine:
                changed = ("; ".join(identity.differences(recorded, mine)) if recorded is not None
                           else f"task hash {hashes[0] if hashes else '(empty)'}, manifest now gives {h}")
                raise UserError(f"{tdir}: holds results of another configuration ({changed}); use another"
                                " `name:`/`output:` or remove that directory")
            if write:  # the same configuration under an older rule: accepted once, recorded under today's
                store.atomic_write_bytes(marker, ("\n".join([h, *hashes]) + "\n").encode())
    elif write:
        store.atomic_write_bytes(tdir / "task.yaml", (identity.HEADER + mf.to_yaml(task.config)).encode())
        store.atomic_write_bytes(marker, (h + "\n").encode())
    return h


def _recorded_fields(tdir: Path) -> dict[str, Any] | None:
    """The identity of the configuration recorded in a task directory (task.yaml, migrated from the identity
    version that wrote it and read with today's schema: fields added since take their defaults); None when it is
    missing or no longer reads."""
    import yaml

    try:
        text = (tdir / "task.yaml").read_text()
        data = identity.migrate(yaml.safe_load(text), identity.recorded_version(text))
        return identity.task_fields(mf.parse(data))
    except (OSError, yaml.YAMLError, ManifestError, TypeError, ValueError):
        return None


def known_hashes(task: mf.Task) -> set[str]:
    """The task's hash and the older ones its directory was recorded under (checkpoints written before an
    identity rule changed carry those)."""
    marker = task_dir(task) / "task.sha256"
    older = marker.read_text().split() if marker.is_file() else []
    return {task_config_hash(task.config), *older}


def result_keys(run: Path) -> list[str]:
    """The keys of the task directories under run/tasks that hold results (a metrics.parquet), sorted."""
    tasks_root = run / "tasks"
    if not tasks_root.is_dir():
        return []
    return sorted(f.parent.relative_to(tasks_root).as_posix() for f in tasks_root.glob("**/metrics.parquet"))


def foreign_results(m: mf.Manifest, planned: list[mf.Task]) -> str | None:
    """The one-line problem when the run directory holds results of tasks the manifest does not plan (another
    manifest with the same name and output, or an earlier version of this one with other sweep values): writing
    this manifest over the run's would hide them from `report`; None when every result is planned."""
    keys = {t.key for t in planned}
    foreign = [key for key in result_keys(mf.run_dir(m)) if key not in keys]
    if not foreign:
        return None
    shown = ", ".join(terminal(key, limit=120) for key in foreign[:3]) + (", ..." if len(foreign) > 3 else "")
    return (f"{mf.run_dir(m)}: holds results of {len(foreign)} task(s) this manifest does not plan ({shown}),"
            f" written by another manifest with name: {terminal(m.name, limit=80)} or an earlier version of this"
            " one; give this manifest its own `name:` (or `output:`), or move those task folders out of"
            f" {mf.run_dir(m) / 'tasks'} first")


def write_run_manifest(m: mf.Manifest) -> Path:
    """Write runs/<name>/manifest.yaml (resolved) and manifest.sha256 atomically; returns the run directory.
    First, a task directory of the run holding another configuration of its task, or results of a task the
    manifest does not plan, is a user error, raised before anything is written (the run's manifest is what
    `report` reads the finished tasks back with)."""
    planned = mf.tasks(m)
    for task in planned:
        check_task_dir(task, write=False)
    if (problem := foreign_results(m, planned)) is not None:
        raise UserError(problem)
    run = mf.run_dir(m)
    store.atomic_write_bytes(run / "manifest.yaml", mf.to_yaml(m).encode())
    store.atomic_write_bytes(run / "manifest.sha256", (mf.manifest_hash(m) + "\n").encode())
    return run


def task_lock(task: mf.Task) -> store.Lock:
    """The exclusive lock of one task directory."""
    return store.Lock(task_dir(task) / ".lock", f"task {task.index} ({task.key})")
