"""One function per command: read the store, call the pure modules, write the store; every step resumable."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import resource
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from alctl import manifest as mf
from alctl import runtime, store
from alctl.data import DatasetSplits, load_dataset
from alctl.errors import Preempted, UserError
from alctl.models import ConvLarge, build_model
from alctl.strategies import PoolView, Selection, get_strategy, select
from alctl.train import FitState, Semi, Targets, TrainSpec, evaluate, fit, make_optimizer, predict

# ----------------------------------------------------------------------------- context


@dataclass
class Ui:
    """Console output: one log line per cycle, rich progress bars when on a terminal."""

    console: Console
    quiet: bool = False

    def line(self, text: str) -> None:
        """Print a log line unless quiet."""
        if not self.quiet:
            self.console.print(text, highlight=False, markup=False, soft_wrap=True)

    def warn(self, text: str) -> None:
        """Print a warning line, even when quiet."""
        self.console.print(f"warning: {text}", highlight=False, markup=False, soft_wrap=True)

    @contextmanager
    def progress(self) -> Iterator[Progress]:
        """A rich progress display, disabled off a terminal or when quiet."""
        prog = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=self.console, disable=self.quiet or not self.console.is_terminal, transient=True,
        )
        with prog:
            yield prog


@functools.lru_cache(maxsize=4)
def _dataset(key: str, where: str) -> DatasetSplits:
    """Load (once per process) a dataset from its config's canonical JSON; `where` (the root as an absolute
    path) only keys the cache, so that a relative root read from another working directory is loaded anew."""
    d = mf.DatasetConfig.model_validate_json(key)
    return load_dataset(
        d.name, root=d.root, download=d.download, image_size=d.image_size, channels=d.channels,
        pool=d.pool, labeled=d.labeled, test=d.test, truth=d.truth, classes=d.classes,
    )


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


def train_spec(config: mf.Manifest) -> TrainSpec:
    """TrainSpec from the manifest's train section."""
    t = config.train
    return TrainSpec(
        epochs=t.epochs, batch_size=t.batch_size, lr=t.lr, rampdown_epochs=t.rampdown_epochs, momentum=t.momentum,
        nesterov=t.nesterov, weight_decay=t.weight_decay, translate=t.translate, flip=t.flip, min_steps=t.min_steps,
        eval_batch_size=t.eval_batch_size,
    )


def task_config_hash(config: mf.Manifest) -> str:
    """Hash of what determines a task's results (the resolved config without name/output/sweep/repetitions/scheduler)."""
    neutral = {"name": "", "output": "", "sweep": {}, "repetitions": 1, "scheduler": mf.SchedulerConfig()}
    return mf.manifest_hash(config.model_copy(update=neutral))


def select_task(tasks: list[mf.Task], index: int | None) -> list[mf.Task]:
    """The tasks to run: one by --task / scheduler index, else all."""
    source = "--task"
    if index is None:
        index, source = runtime.scheduler_task_index()
    if index is None:
        return tasks
    if not 0 <= index < len(tasks):
        raise UserError(f"{source}: index {index} is outside the plan (0..{len(tasks) - 1}, {len(tasks)} tasks)")
    return [tasks[index]]


def write_run_manifest(m: mf.Manifest) -> Path:
    """Write runs/<name>/manifest.yaml (resolved) and manifest.sha256 atomically; returns the run directory.
    First, a task directory of the run holding another configuration of its task is a user error, raised before
    anything is written (the run's manifest is what `report` reads the finished tasks back with)."""
    for task in mf.tasks(m):
        _check_task_dir(task, task_dir(task), write=False)
    run = mf.run_dir(m)
    store.atomic_write_bytes(run / "manifest.yaml", mf.to_yaml(m).encode())
    store.atomic_write_bytes(run / "manifest.sha256", (mf.manifest_hash(m) + "\n").encode())
    return run


def task_dir(task: mf.Task) -> Path:
    """runs/<name>/tasks/<task-key>."""
    return mf.run_dir(task.config) / "tasks" / task.key


def _check_task_dir(task: mf.Task, tdir: Path, write: bool = True) -> str:
    """Compare the task's resolved config with the one recorded in tdir, or (write) record it there when none is;
    a different config in the same directory is a user error. Returns the config hash."""
    h = task_config_hash(task.config)
    marker = tdir / "task.sha256"
    if marker.is_file():
        old = marker.read_text().strip()
        if old != h:
            raise UserError(
                f"{tdir}: holds results of another configuration (task hash {old}, manifest now gives {h});"
                " use another `name:`/`output:` or remove that directory"
            )
    elif write:
        store.atomic_write_bytes(tdir / "task.yaml", mf.to_yaml(task.config).encode())
        store.atomic_write_bytes(marker, (h + "\n").encode())
    return h


def task_lock(task: mf.Task) -> store.Lock:
    """The exclusive lock of one task directory."""
    return store.Lock(task_dir(task) / ".lock", f"task {task.index} ({task.key})")


# ----------------------------------------------------------------------------- pool state


def initial_labeled(labels: np.ndarray, n: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Balanced random initial set: n // C per class, the remainder to randomly chosen classes; positions [n]."""
    per_class = np.full(num_classes, n // num_classes)
    per_class[rng.choice(num_classes, n % num_classes, replace=False)] += 1
    chosen = []
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        if per_class[c] > len(members):
            raise UserError(f"active.initial: {n} needs {per_class[c]} images of class {c}, the pool has {len(members)}")
        chosen.append(rng.choice(members, per_class[c], replace=False))
    return np.sort(np.concatenate(chosen)).astype(np.int64)


PENDING = "pending"  # label_source of images selected for a human annotator and not answered yet


@dataclass
class PoolState:
    """Current pool as arrays aligned with the dataset's train positions."""

    label: np.ndarray  # [N] int64, -1 while unknown
    labeled_cycle: np.ndarray  # [N] int32: cycle whose training first uses the label; -1 = not selected
    source: np.ndarray  # [N] object str: initial | oracle | human | pending | ""

    @classmethod
    def empty(cls, n: int) -> "PoolState":
        """A pool of n images, none selected."""
        return cls(np.full(n, -1, np.int64), np.full(n, -1, np.int32), np.full(n, "", dtype=object))

    def labeled_at(self, cycle: int) -> np.ndarray:
        """Positions whose label is known and used by the training of `cycle` [n_l]."""
        return np.flatnonzero((self.labeled_cycle >= 0) & (self.labeled_cycle <= cycle) & (self.label >= 0))

    @property
    def unlabeled(self) -> np.ndarray:
        """Positions never selected: the candidates of an acquisition [n_u]."""
        return np.flatnonzero(self.labeled_cycle < 0)

    def pending(self, cycle: int | None = None) -> np.ndarray:
        """Positions selected for a person and not labeled yet (for `cycle` when given) [m]."""
        mask = self.source == PENDING
        if cycle is not None:
            mask &= self.labeled_cycle == cycle
        return np.flatnonzero(mask)

    def mark_selected(self, positions: np.ndarray, cycle: int) -> None:
        """Record a selection whose labels the next `cycle` will use; labels come with `apply_labels`."""
        self.labeled_cycle[positions] = cycle
        self.label[positions] = -1
        self.source[positions] = PENDING

    def apply_labels(self, positions: np.ndarray, labels: np.ndarray, source: str) -> None:
        """An annotator's answers (simulated oracle, person, or the initial set) for selected positions."""
        self.label[positions] = labels
        self.source[positions] = source

    def rollback(self, cycle: int) -> None:
        """Forget selections made for cycles after `cycle` (work of an unfinished cycle)."""
        later = self.labeled_cycle > cycle
        self.label[later] = -1
        self.labeled_cycle[later] = -1
        self.source[later] = ""


def positions_of(ds: DatasetSplits, sample_ids: np.ndarray) -> np.ndarray:
    """Pool positions of sample ids (every id must exist) [m]."""
    ids = ds.train_ids.numpy()
    order = np.argsort(ids)
    return order[np.searchsorted(ids, sample_ids, sorter=order)]


def read_pool(ts: store.TaskStore, ds: DatasetSplits) -> PoolState | None:
    """The pool table mapped onto dataset positions (None when absent)."""
    if not ts.exists("pool"):
        return None
    t = ts.read("pool")
    pos = positions_of(ds, t["sample_id"].to_numpy())
    state = PoolState.empty(len(ds.train_ids))
    state.label[pos] = t["label"].to_numpy()
    state.labeled_cycle[pos] = t["labeled_cycle"].to_numpy()
    state.source[pos] = np.asarray(t["label_source"].to_pylist(), dtype=object)
    return state


def write_pool(ts: store.TaskStore, ds: DatasetSplits, state: PoolState) -> None:
    """Write the pool table (all pool images, dataset order)."""
    ts.write(
        "pool",
        store.to_table(
            "pool",
            {"sample_id": ds.train_ids.numpy(), "label": state.label, "labeled_cycle": state.labeled_cycle,
             "label_source": state.source.tolist()},
        ),
    )


def new_pool(config: mf.Manifest, task: mf.Task, ds: DatasetSplits) -> PoolState:
    """The cycle-0 pool: the dataset's labeled tree, else a balanced random set (simulated oracle), else a random
    set left pending for a person to label."""
    truth = ds.train_labels.numpy()
    pool = PoolState.empty(len(truth))
    if ds.initial_positions is not None and len(ds.initial_positions):
        init = np.asarray(ds.initial_positions, dtype=np.int64)
        pool.mark_selected(init, 0)
        pool.apply_labels(init, truth[init], "initial")
        return pool
    rng = runtime.rng(config.seed, task.rep, 0, "initial")
    if config.active.oracle == "human" and (truth < 0).any():
        init = np.sort(rng.choice(len(truth), config.active.initial, replace=False)).astype(np.int64)
        pool.mark_selected(init, 0)
        return pool
    init = initial_labeled(truth, config.active.initial, ds.num_classes, rng)
    pool.mark_selected(init, 0)
    pool.apply_labels(init, truth[init], "initial")
    return pool


def rollback_tables(ts: store.TaskStore, done: int) -> None:
    """Drop rows of cycles >= done (an unfinished cycle), keeping CEAL pseudo-labels that cycle done-1 wrote."""
    for name in ("scores", "pseudo"):
        if not ts.exists(name):
            continue
        t = ts.read(name)
        cyc = t["cycle"].to_numpy()
        keep = cyc < done
        if name == "pseudo":
            keep |= (cyc == done) & (t["epoch"].to_numpy() < 0)
        if not keep.all():
            ts.write(name, t.filter(pa.array(keep)))


def finished_cycles(ts: store.TaskStore) -> int:
    """Number of cycles whose metrics row exists (cycles are finished in order)."""
    cycles = ts.read("metrics")["cycle"].to_numpy()
    return int(cycles.max()) + 1 if len(cycles) else 0


# ----------------------------------------------------------------------------- models and checkpoints


def _peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process (CUDA: allocated on the device; CPU: max resident set)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def strategy_params(config: mf.Manifest) -> dict[str, Any]:
    """Parameters handed to the acquisition function."""
    return {
        "threshold": config.active.ceal.threshold, "decay": config.active.ceal.decay,
        "k": config.semi.k, "alpha": config.semi.alpha, "gamma": config.semi.gamma,
        "tol": config.semi.tol, "max_iter": config.semi.max_iter, "knn": config.semi.knn,
    }


def new_model(
    config: mf.Manifest, ds: DatasetSplits, rep: int, cycle: int, device: torch.device,
    encoder: dict[str, torch.Tensor] | None = None,
) -> ConvLarge:
    """A freshly initialised network for one cycle (seeded from seed, repetition, cycle), from `encoder` when +PRE."""
    runtime.seed_torch(config.seed, rep, cycle, "init")
    model = build_model(ds.train_images.shape[1], ds.num_classes, config.model.width, config.model.dropout)
    if encoder is not None:
        from alctl.pretrain import load_encoder

        load_encoder(model, encoder)
    return model.to(device)


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """torch.save to a temporary sibling, then rename: a checkpoint is whole or absent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp"
    torch.save(payload, tmp)
    tmp.replace(path)


def _rng_states(device: torch.device) -> dict[str, Any]:
    """Global torch RNG states (dropout) to checkpoint."""
    states: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def _set_rng_states(states: dict[str, Any], device: torch.device) -> None:
    """Restore global torch RNG states saved by `_rng_states`."""
    torch.set_rng_state(states["cpu"])
    if device.type == "cuda" and "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"], device)


def _targets_dict(t: Targets) -> dict[str, Any]:
    """Targets as plain arrays for a checkpoint."""
    return {"labeled_pos": t.labeled_pos, "labeled_y": t.labeled_y, "pseudo_pos": t.pseudo_pos, "pseudo_y": t.pseudo_y,
            "pseudo_w": t.pseudo_w, "class_w": t.class_w}


# ----------------------------------------------------------------------------- pre-training (+PRE)


def pretrain_key(config: mf.Manifest, ds: DatasetSplits) -> str:
    """Hash of what determines the encoder: dataset, input shape, model, augmentation, pretrain settings, seed."""
    payload = {
        "dataset": config.dataset.model_dump(mode="json"), "input": list(ds.train_images.shape[1:]),
        "model": config.model.model_dump(mode="json"),
        "augment": {"translate": config.train.translate, "flip": config.train.flip},
        "pretrain": config.pretrain.model_dump(mode="json", exclude={"method", "weights"}), "seed": config.seed,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _encoder_settings(config: mf.Manifest, ds: DatasetSplits, key: str) -> dict[str, Any]:
    """What an encoder file records about itself, compared when it is loaded."""
    return {"key": key, "dataset": config.dataset.name, "input": list(ds.train_images.shape[1:]),
            "width": config.model.width, "pretrain": config.pretrain.model_dump(mode="json", exclude={"weights"}),
            "seed": config.seed}


def pretrain_paths(config: mf.Manifest, key: str) -> dict[str, Path]:
    """Files of one pre-training under runs/<name>/pretrain/."""
    base = mf.run_dir(config) / "pretrain"
    return {"weights": base / f"{key}.pt", "settings": base / f"{key}.yaml", "metrics": base / f"{key}.parquet",
            "checkpoint": base / f"{key}.ckpt.pt", "lock": base / f"{key}.lock"}


def _load_encoder_file(path: Path, config: mf.Manifest, ds: DatasetSplits) -> dict[str, torch.Tensor]:
    """Encoder weights from a file written by `alctl pretrain`, checked against the task's dataset and model."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise UserError(f"pretrain.weights: {path} not found; run `alctl pretrain MANIFEST` or fix the path") from None
    except Exception as exc:  # unreadable / not a torch file
        raise UserError(f"pretrain.weights: {path} is not an alctl encoder file ({type(exc).__name__})") from None
    if not isinstance(payload, dict) or "encoder" not in payload:
        raise UserError(f"pretrain.weights: {path} is not an alctl encoder file (no 'encoder' entry)")
    saved = payload.get("settings", {})
    want = {"dataset": config.dataset.name, "input": list(ds.train_images.shape[1:]), "width": config.model.width}
    for name, value in want.items():
        if saved.get(name) != value:
            raise UserError(
                f"pretrain.weights: {path} was pre-trained with {name} {saved.get(name)!r}, this task has {value!r};"
                " pre-train for this configuration (`alctl pretrain MANIFEST`) or use matching weights"
            )
    return payload["encoder"]


def ensure_pretrained(
    config: mf.Manifest, ds: DatasetSplits, device: torch.device, ui: Ui, stop: Callable[[], bool]
) -> tuple[dict[str, torch.Tensor], float]:
    """The encoder weights of a +PRE task, training (or resuming) DeepCluster once under a lock if missing.

    Returns (weights, seconds spent pre-training in this call). Concurrent tasks wait for the one that trains.
    """
    if config.pretrain.weights is not None:
        return _load_encoder_file(Path(config.pretrain.weights), config, ds), 0.0
    key = pretrain_key(config, ds)
    paths = pretrain_paths(config, key)
    if paths["weights"].is_file():
        return _load_encoder_file(paths["weights"], config, ds), 0.0
    lock = store.Lock(paths["lock"], f"pre-training {key}")
    lock.wait(on_wait=lambda owner: ui.line(
        f"pre-training {key} is running in process {owner.get('pid')} on {owner.get('host')}; waiting for it"))
    try:
        if paths["weights"].is_file():  # finished by the process we waited for
            return _load_encoder_file(paths["weights"], config, ds), 0.0
        started = time.perf_counter()
        _run_pretrain(config, ds, device, key, paths, ui, stop, lock)
        return _load_encoder_file(paths["weights"], config, ds), time.perf_counter() - started
    finally:
        lock.release()


def _run_pretrain(
    config: mf.Manifest, ds: DatasetSplits, device: torch.device, key: str, paths: dict[str, Path], ui: Ui,
    stop: Callable[[], bool], lock: store.Lock,
) -> None:
    """DeepCluster from scratch or from its last finished epoch; writes weights, settings and per-epoch metrics."""
    from alctl.pretrain import PretrainSpec, PretrainState, deepcluster, encoder_state

    p, t = config.pretrain, config.train
    spec = PretrainSpec(
        epochs=p.epochs, clusters=p.clusters_per_class * ds.num_classes, kmeans_iters=p.kmeans_iters, lr=p.lr,
        batch_size=p.batch_size, pca=p.pca, translate=t.translate, flip=t.flip, eval_batch_size=t.eval_batch_size,
    )
    runtime.seed_torch(config.seed, 0, 0, "pretrain-init")
    model = build_model(ds.train_images.shape[1], ds.num_classes, config.model.width, config.model.dropout).to(device)
    state = None
    if paths["checkpoint"].is_file():
        ckpt = torch.load(paths["checkpoint"], map_location=device, weights_only=False)
        model.reset_classifier(spec.clusters)
        model.load_state_dict(ckpt["model"])
        state = ckpt["state"]
        ui.line(f"pre-training {key}: resuming after epoch {state.epoch}/{spec.epochs}")
    truth = ds.train_labels.numpy()
    labels = truth if (truth >= 0).all() else None
    settings = _encoder_settings(config, ds, key)
    store.atomic_write_bytes(paths["settings"], json.dumps(settings, indent=2).encode())

    def on_epoch(st: PretrainState, m: ConvLarge) -> None:
        save_checkpoint(paths["checkpoint"], {"model": m.state_dict(), "state": st})
        e = st.history[-1]
        store.append_table(paths["metrics"], "pretrain", store.to_table("pretrain", {
            "epoch": [e.epoch], "kmeans_loss": [e.kmeans_loss], "nmi_previous": [e.nmi_previous],
            "nmi_labels": [e.nmi_labels], "reseeded": [e.reseeded], "train_loss": [e.train_loss],
            "seconds": [e.seconds], "seconds_kmeans": [e.seconds_kmeans]}))
        lock.beat()
        nmi = "" if e.nmi_labels is None else f", NMI to labels {e.nmi_labels:.3f}"
        ui.line(f"pre-training {key} epoch {e.epoch + 1}/{spec.epochs}: k-means loss {e.kmeans_loss:.4g}{nmi},"
                f" {e.seconds:.1f}s")

    if state is not None and paths["metrics"].is_file():  # drop rows of an epoch that was not checkpointed
        rows = store.read_table(paths["metrics"], "pretrain")
        keep = rows["epoch"].to_numpy() < state.epoch
        store.write_table(paths["metrics"], "pretrain", rows.filter(pa.array(keep)))
    elif state is None:
        paths["metrics"].unlink(missing_ok=True)
    images = ds.train_images.to(device)
    final = deepcluster(model, images, ds.mean, ds.std, spec, config.seed, labels=labels, state=state,
                        on_epoch=on_epoch, should_stop=stop)
    if final.epoch < spec.epochs:
        raise Preempted(f"pre-training {key} stopped after epoch {final.epoch}/{spec.epochs}; rerun to resume")
    save_checkpoint(paths["weights"], {"encoder": encoder_state(model), "settings": settings})
    paths["checkpoint"].unlink(missing_ok=True)


def pretrain_command(manifest_path: str | Path, ui: Ui) -> int:
    """`alctl pretrain`: train every distinct encoder the manifest's +PRE tasks need; returns how many were trained."""
    m, all_tasks = plan(manifest_path)
    seen: set[str] = set()
    trained = 0
    with runtime.Preemption() as stop:
        for t in all_tasks:
            if t.config.pretrain.method == "none" or t.config.pretrain.weights is not None:
                continue
            ds = dataset_for(t.config)
            key = pretrain_key(t.config, ds)
            if key in seen:
                continue
            seen.add(key)
            write_run_manifest(m)
            device = runtime.choose_device(t.config.train.device)
            path = pretrain_paths(t.config, key)["weights"]
            if path.is_file():
                ui.line(f"pre-training {key}: already done ({path})")
                continue
            _, seconds = ensure_pretrained(t.config, ds, device, ui, stop)
            trained += 1
            ui.line(f"pre-training {key}: wrote {path} in {seconds:.1f}s")
    if not seen:
        raise UserError("pretrain.method: no task of this manifest uses deepcluster (set pretrain.method or sweep it)")
    return trained


# ----------------------------------------------------------------------------- label propagation (+SEMI)


@dataclass
class PropagationOutcome:
    """A propagation over the pool, with its pseudo-label accuracy when the truth is known."""

    epoch: int
    labels: np.ndarray  # [N] int64 per pool position
    weights: np.ndarray  # [N] float32
    class_weights: np.ndarray  # [C] float32
    unlabeled: np.ndarray  # [n_u] positions that received pseudo-labels
    accuracy: float | None = None
    accuracy_top_half: float | None = None


def propagate_pool(
    config: mf.Manifest, ds: DatasetSplits, model: ConvLarge, images: torch.Tensor, labeled: np.ndarray,
    labels: np.ndarray, epoch: int,
) -> PropagationOutcome:
    """Features of every pool image from `model`, label propagation from `labeled`, pseudo-label accuracy."""
    from alctl.propagate import label_propagation

    _, feats = predict(model, images, ds.mean, ds.std, config.train.eval_batch_size)
    features: Any = feats if feats.is_cuda else np.ascontiguousarray(feats.numpy(), dtype=np.float32)
    s = config.semi
    prop = label_propagation(features, labeled, labels, ds.num_classes, k=s.k, alpha=s.alpha, gamma=s.gamma,
                             tol=s.tol, max_iter=s.max_iter, knn=s.knn, weight_scale=s.weight_scale)
    unlabeled = np.setdiff1d(np.arange(len(prop.labels)), labeled)
    out = PropagationOutcome(epoch, prop.labels, prop.weights, prop.class_weights, unlabeled)
    truth = ds.train_labels.numpy()[unlabeled]
    known = truth >= 0
    if known.any():
        u, w = unlabeled[known], prop.weights[unlabeled[known]]
        correct = prop.labels[u] == truth[known]
        out.accuracy = float(correct.mean())
        top = np.argsort(-w, kind="stable")[: max(1, len(u) // 2)]
        out.accuracy_top_half = float(correct[top].mean())
    return out


def _pseudo_rows(cycle: int, epoch: int, ids: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> pa.Table:
    """Rows of pseudo.parquet."""
    n = len(ids)
    return store.to_table(
        "pseudo",
        {"cycle": np.full(n, cycle, np.int32), "epoch": np.full(n, epoch, np.int32), "sample_id": ids,
         "pseudo_label": labels, "weight": weights.astype(np.float32)},
    )


def _replace_pseudo(ts: store.TaskStore, rows: pa.Table, cycle: int, epoch: int) -> None:
    """Write pseudo rows of (cycle, epoch), replacing earlier rows of the same pair."""
    old = ts.read("pseudo")
    keep = ~((old["cycle"].to_numpy() == cycle) & (old["epoch"].to_numpy() == epoch))
    ts.write("pseudo", pa.concat_tables([old.filter(pa.array(keep)), rows]))


# ----------------------------------------------------------------------------- one cycle


@dataclass
class CycleResult:
    """What one cycle produced."""

    accuracy: float
    loss: float
    n_labeled: int
    n_pseudo: int
    seconds: dict[str, float]
    selection: Selection | None
    propagation: PropagationOutcome | None = None


@dataclass
class TaskContext:
    """Everything one task's cycles share."""

    task: mf.Task
    config: mf.Manifest
    ds: DatasetSplits
    ts: store.TaskStore
    device: torch.device
    images: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    encoder: dict[str, torch.Tensor] | None
    stop: Callable[[], bool]
    lock: store.Lock | None = None
    on_epoch: Callable[[], None] = lambda: None
    seconds_pretrain: float = 0.0


def _ceal_targets(ctx: TaskContext, targets: Targets, cycle: int) -> int:
    """Add CEAL's pseudo-labels chosen at the previous selection to `targets`; returns how many."""
    if ctx.config.active.strategy != "ceal" or not ctx.ts.exists("pseudo"):
        return 0
    t = ctx.ts.read("pseudo")
    mask = (t["cycle"].to_numpy() == cycle) & (t["epoch"].to_numpy() < 0)
    if not mask.any():
        return 0
    targets.pseudo_pos = positions_of(ctx.ds, t["sample_id"].to_numpy()[mask]).astype(np.int64)
    targets.pseudo_y = t["pseudo_label"].to_numpy()[mask].astype(np.int64)
    targets.pseudo_w = np.ones(len(targets.pseudo_pos), np.float32)
    return len(targets.pseudo_pos)


def _train(ctx: TaskContext, pool: PoolState, cycle: int, seconds: dict[str, float]) -> tuple[ConvLarge, int, PropagationOutcome | None]:
    """Train the cycle's model (resuming from checkpoints/train.pt when it belongs to this cycle)."""
    config, ds, device = ctx.config, ctx.ds, ctx.device
    labeled = pool.labeled_at(cycle)
    targets = Targets(labeled_pos=labeled, labeled_y=pool.label[labeled])
    n_pseudo = _ceal_targets(ctx, targets, cycle)
    model = new_model(config, ds, ctx.task.rep, cycle, device, ctx.encoder)
    gen = runtime.torch_generator(config.seed, ctx.task.rep, cycle, "train", device="cpu")
    spec = train_spec(config)
    ckpt_path = ctx.ts.checkpoints / "train.pt"
    h = task_config_hash(config)
    last_prop: list[PropagationOutcome] = []
    resume: FitState | None = None
    if ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        if ckpt.get("cycle") == cycle and ckpt.get("task_hash") == h:
            model.load_state_dict(ckpt["model"])
            optimizer = make_optimizer(model, spec)
            optimizer.load_state_dict(ckpt["optimizer"])
            gen.set_state(ckpt["generator"])
            _set_rng_states(ckpt["rng"], device)
            resume = FitState(epoch=ckpt["epoch"], model=model, optimizer=optimizer, targets=Targets(**ckpt["targets"]),
                              step=ckpt["step"], batches=ckpt["batches"])
            seconds.update(ckpt["seconds"])
            if ckpt.get("propagation") is not None:
                last_prop.append(ckpt["propagation"])

    semi = None
    if config.semi.method == "label-propagation":
        s = config.semi

        def refresh(epoch: int) -> Targets:
            from alctl.propagate import class_weights, sample_by_certainty

            t0 = time.perf_counter()
            prop = propagate_pool(config, ds, model, ctx.images, labeled, pool.label[labeled], epoch)
            last_prop[:] = [prop]
            u = prop.unlabeled
            if s.selection == "prob":
                rng = runtime.rng(config.seed, ctx.task.rep, cycle, f"pseudo-subset-{epoch}")
                u = u[sample_by_certainty(prop.weights[u], s.fraction, rng)]
            cw = class_weights(np.concatenate([pool.label[labeled], prop.labels[u]]), ds.num_classes)
            seconds["propagate"] = seconds.get("propagate", 0.0) + time.perf_counter() - t0
            return Targets(labeled_pos=labeled, labeled_y=pool.label[labeled], pseudo_pos=u, pseudo_y=prop.labels[u],
                           pseudo_w=prop.weights[u], class_w=cw)

        semi = Semi(refresh=refresh, every=s.every, warmup=s.warmup, batch_size=s.batch_size,
                    labeled_per_batch=s.labeled_per_batch, unlabeled_per_epoch=s.unlabeled_per_epoch,
                    phase2_epochs=s.phase2_epochs, phase2_lr=s.phase2_lr)

    started = time.perf_counter()
    base = seconds.get("train", 0.0) + seconds.get("propagate", 0.0)
    seconds["carried"] = base  # spent on this cycle by earlier processes (resumed from a checkpoint); in its total

    def checkpoint(state: FitState) -> None:
        elapsed = base + time.perf_counter() - started
        seconds["train"] = elapsed - seconds.get("propagate", 0.0)
        save_checkpoint(ckpt_path, {
            "cycle": cycle, "task_hash": h, "epoch": state.epoch, "step": state.step, "batches": state.batches,
            "model": model.state_dict(), "optimizer": state.optimizer.state_dict(), "generator": gen.get_state(),
            "rng": _rng_states(device), "targets": _targets_dict(state.targets), "seconds": dict(seconds),
            "propagation": last_prop[0] if last_prop else None,
        })
        if ctx.lock is not None:
            ctx.lock.beat()

    def on_epoch(state: FitState) -> None:
        checkpoint(state)
        ctx.on_epoch()

    state = fit(model, ctx.images, targets, spec, ds.mean, ds.std, gen, semi=semi, resume=resume, on_epoch=on_epoch,
                should_stop=ctx.stop)
    if state.stopped:
        checkpoint(state)
        where = f"epoch {state.epoch}" + (f" step {state.step}" if state.step else "")
        raise Preempted(f"task {ctx.task.index} ({ctx.task.key}) stopped at cycle {cycle} {where}; checkpoint saved,"
                        " rerun the same command to resume")
    seconds["train"] = base + time.perf_counter() - started - seconds.get("propagate", 0.0)
    prop = last_prop[0] if last_prop else None
    if semi is not None:
        n_pseudo = len(state.targets.pseudo_pos)  # pseudo-labeled images used since the last propagation
    return model, n_pseudo, prop


def _run_cycle(ctx: TaskContext, pool: PoolState, cycle: int, last: bool) -> CycleResult:
    """Train from scratch (or the encoder) on the labeled set (+ pseudo-labels), evaluate, select unless last."""
    config, ds, ts = ctx.config, ctx.ds, ctx.ts
    seconds: dict[str, float] = {}
    model, n_pseudo, prop = _train(ctx, pool, cycle, seconds)

    t0 = time.perf_counter()
    if len(ctx.test_labels):
        accuracy, loss = evaluate(model, ctx.test_images, ctx.test_labels, ds.mean, ds.std, config.train.eval_batch_size)
    else:  # an image folder without a test tree
        accuracy, loss = float("nan"), float("nan")
    seconds["eval"] = time.perf_counter() - t0
    save_checkpoint(ts.checkpoints / "model.pt",
                    {"model": model.state_dict(), "cycle": cycle, "task_hash": task_config_hash(config)})
    if prop is not None:
        u = prop.unlabeled
        _replace_pseudo(ts, _pseudo_rows(cycle, prop.epoch, ds.train_ids.numpy()[u], prop.labels[u], prop.weights[u]),
                        cycle, prop.epoch)

    selection = None
    if not last:
        t0 = time.perf_counter()
        selection = acquire(config, ctx.task, ds, pool, model, ctx.images, cycle)
        write_selection(ts, ds, config, pool, selection, cycle)
        seconds["select"] = time.perf_counter() - t0
    return CycleResult(accuracy, loss, len(pool.labeled_at(cycle)), n_pseudo, seconds, selection, prop)


def _waiting_message(task: mf.Task, manifest_path: str | Path, n: int, cycle: int) -> str:
    """What a person must do for a task that waits for labels."""
    return (
        f"[task {task.index} {task.key}] waiting for labels: {n} images selected for cycle {cycle} are not labeled yet."
        f" Export them with `alctl select {manifest_path} --task {task.index} --export DIR`, fill the label column"
        f" of DIR/to_label.csv, import it with `alctl label {manifest_path} --task {task.index} --labels"
        f" DIR/to_label.csv`, then rerun `alctl cycle {manifest_path}`"
    )


def _check_oracle(config: mf.Manifest, ds: DatasetSplits) -> None:
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


def run_task(task: mf.Task, ui: Ui, manifest_path: str | Path, max_cycles: int | None = None,
             stop: Callable[[], bool] = lambda: False) -> int:
    """Run (or resume) one task's cycles under its lock; returns the number of cycles run now."""
    config = task.config
    tdir = task_dir(task)
    ds = dataset_for(config)
    device = runtime.choose_device(config.train.device)
    h = _check_task_dir(task, tdir)
    ts = store.TaskStore(tdir)
    total = config.active.cycles if max_cycles is None else min(max_cycles, config.active.cycles)
    tag = f"[task {task.index} {task.key}]"
    with task_lock(task) as lock:
        done = finished_cycles(ts)
        if done >= total:
            ui.line(f"{tag} finished: {done}/{config.active.cycles} cycles already done, nothing to do")
            return 0
        for line in ds.skipped:
            ui.warn(f"skipped unreadable image {line}")
        truth = ds.train_labels.numpy()
        pool = read_pool(ts, ds)
        if pool is None:
            pool = new_pool(config, task, ds)
            write_pool(ts, ds, pool)
        else:
            # an interrupted cycle may have written its selection before its metrics row: undo it and redo the cycle
            pool.rollback(done)
            write_pool(ts, ds, pool)
            rollback_tables(ts, done)

        encoder, seconds_pretrain = None, 0.0
        if config.pretrain.method != "none":
            encoder, seconds_pretrain = ensure_pretrained(config, ds, device, ui, stop)
        ctx = TaskContext(task, config, ds, ts, device, ds.train_images.to(device), ds.test_images.to(device),
                          ds.test_labels.to(device), encoder, stop, lock, seconds_pretrain=seconds_pretrain)
        ran = 0
        with ui.progress() as prog:
            bar = prog.add_task(f"task {task.index}", total=total * mf.cycle_epochs(config),
                                completed=done * mf.cycle_epochs(config))
            ctx.on_epoch = lambda: prog.advance(bar)
            for cycle in range(done, total):
                if len(pool.pending(cycle)):
                    break  # a person has not labeled this cycle's images yet
                started = time.perf_counter()
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                res = _run_cycle(ctx, pool, cycle, last=cycle == config.active.cycles - 1)
                if res.selection is not None:
                    chosen = res.selection.chosen
                    pool.mark_selected(chosen, cycle + 1)
                    if config.active.oracle == "simulated":
                        pool.apply_labels(chosen, truth[chosen], "oracle")  # the simulated oracle answers
                    write_pool(ts, ds, pool)
                res.seconds["total"] = time.perf_counter() - started + res.seconds.get("carried", 0.0)
                _write_metrics(ctx, cycle, res, h, ctx.seconds_pretrain if cycle == done else 0.0)
                (ts.checkpoints / "train.pt").unlink(missing_ok=True)
                ran += 1
                acc = "n/a (no test images)" if np.isnan(res.accuracy) else f"{100 * res.accuracy:.2f}%"
                pl = "" if res.propagation is None or res.propagation.accuracy is None else (
                    f", pseudo-labels {100 * res.propagation.accuracy:.1f}% correct")
                ui.line(
                    f"{tag} cycle {cycle}: {res.n_labeled} labels, accuracy {acc}{pl}"
                    f" | train {res.seconds.get('train', 0):.1f}s propagate {res.seconds.get('propagate', 0):.1f}s"
                    f" eval {res.seconds.get('eval', 0):.1f}s select {res.seconds.get('select', 0):.1f}s"
                    f" total {res.seconds['total']:.1f}s"
                )
                if stop():
                    raise Preempted(f"task {task.index} ({task.key}) stopped after cycle {cycle}; rerun to resume")
        waiting = pool.pending()
        if len(waiting):
            ui.line(_waiting_message(task, manifest_path, len(waiting), int(pool.labeled_cycle[waiting].max())))
    return ran


def _write_metrics(ctx: TaskContext, cycle: int, res: CycleResult, h: str, seconds_pretrain: float) -> None:
    """Append the cycle's metrics row: the mark that the cycle is finished."""
    task, config, prop = ctx.task, ctx.config, res.propagation
    row = {
        "task": [task.index], "task_key": [task.key], "strategy": [config.active.strategy],
        "variant": [task.variant], "rep": [task.rep], "cycle": [cycle], "n_labeled": [res.n_labeled],
        "n_pseudo": [res.n_pseudo], "accuracy": [res.accuracy], "loss": [res.loss],
        "pseudo_accuracy": [None if prop is None else prop.accuracy],
        "pseudo_accuracy_top_half": [None if prop is None else prop.accuracy_top_half],
        "seconds_pretrain": [seconds_pretrain], "seconds_train": [res.seconds.get("train", 0.0)],
        "seconds_eval": [res.seconds.get("eval", 0.0)], "seconds_propagate": [res.seconds.get("propagate", 0.0)],
        "seconds_select": [res.seconds.get("select", 0.0)], "seconds_total": [res.seconds["total"]],
        "peak_memory_mb": [_peak_memory_mb(ctx.device)], "device": [str(ctx.device)], "manifest_hash": [h],
        "finished_at": [datetime.now(timezone.utc)],
    }
    ctx.ts.append("metrics", store.to_table("metrics", row))


# ----------------------------------------------------------------------------- acquisition


_NEEDS = {"random": set(), "uncertainty": {"probs"}, "ceal": {"probs"}, "coreset": {"features"}, "jlp": {"features"}}


def acquire(
    config: mf.Manifest, task: mf.Task, ds: DatasetSplits, pool: PoolState, model: ConvLarge, images: torch.Tensor,
    cycle: int,
) -> Selection:
    """Run the task's acquisition function on the current model: b pool positions out of the never-selected ones."""
    needs = _NEEDS.get(config.active.strategy, {"probs", "features"})
    labeled = pool.labeled_at(cycle)
    unlabeled = pool.unlabeled
    n, c = len(pool.label), ds.num_classes
    probs_u = np.zeros((len(unlabeled), c), np.float32)
    feats = np.zeros((n, 1), np.float32)
    if needs:
        probs, f = predict(model, images, ds.mean, ds.std, config.train.eval_batch_size)
        probs_u = probs[torch.from_numpy(unlabeled).to(probs.device)].cpu().numpy().astype(np.float32)
        feats = np.ascontiguousarray(f.cpu().numpy().astype(np.float32))
    view = PoolView(probs=probs_u, features=feats, labeled=labeled.astype(np.int64), unlabeled=unlabeled.astype(np.int64),
                    labels=pool.label[labeled].astype(np.int64), num_classes=c, cycle=cycle)
    rng = runtime.rng(config.seed, task.rep, cycle, "select")
    return select(config.active.strategy, view, config.active.budget, rng, strategy_params(config))


def write_selection(
    ts: store.TaskStore, ds: DatasetSplits, config: mf.Manifest, pool: PoolState, sel: Selection, cycle: int
) -> None:
    """Append the cycle's scores (every candidate, selected flag) and CEAL's pseudo-labels for the next cycle."""
    unlabeled = pool.unlabeled
    ids = ds.train_ids.numpy()
    selected = np.isin(unlabeled, sel.chosen)
    n = len(unlabeled)
    ts.append(
        "scores",
        store.to_table(
            "scores",
            {"cycle": np.full(n, cycle, np.int32), "sample_id": ids[unlabeled],
             "strategy": [config.active.strategy] * n, "score": sel.scores.astype(np.float32), "selected": selected},
        ),
    )
    if len(sel.pseudo_positions):
        p = sel.pseudo_positions
        ts.append("pseudo", _pseudo_rows(cycle + 1, -1, ids[p], sel.pseudo_labels, np.ones(len(p), np.float32)))


# ----------------------------------------------------------------------------- commands


def plan(manifest_path: str | Path) -> tuple[mf.Manifest, list[mf.Task]]:
    """Load and validate a manifest and expand its tasks."""
    m = mf.load(manifest_path)
    for t in mf.tasks(m):
        get_strategy(t.config.active.strategy)
    return m, mf.tasks(m)


def cycle_command(manifest_path: str | Path, task: int | None, cycles: int | None, ui: Ui) -> int:
    """`alctl cycle`: run or resume the chosen tasks; returns the number of cycles run."""
    m, all_tasks = plan(manifest_path)
    chosen = select_task(all_tasks, task)
    for t in chosen:  # fail early (exit 2) on missing data, before anything is written
        _check_oracle(t.config, dataset_for(t.config))
    write_run_manifest(m)
    ran = 0
    with runtime.Preemption() as stop:
        for t in chosen:
            ran += run_task(t, ui, manifest_path, cycles, stop)
    if ran == 0 and len(chosen) > 1:
        ui.line(f"run {mf.run_dir(m)}: no cycle left to run for its {len(chosen)} tasks, nothing to do")
    return ran


def _require_model(task: mf.Task, ts: store.TaskStore, manifest_path: str | Path) -> Path:
    """The path of the task's trained model; UserError (exit 2) when there is none yet."""
    path = ts.checkpoints / "model.pt"
    if not path.is_file():
        raise UserError(f"{path}: no trained model yet; run `alctl cycle {manifest_path} --task {task.index}` first")
    return path


def load_task_model(task: mf.Task, ds: DatasetSplits, ts: store.TaskStore, device: torch.device,
                    manifest_path: str | Path) -> tuple[ConvLarge, int]:
    """The task's current model (latest finished cycle) and that cycle; exit 2 when none is trained yet."""
    path = _require_model(task, ts, manifest_path)
    ckpt = torch.load(path, map_location=device, weights_only=True)
    if ckpt.get("task_hash") != task_config_hash(task.config):
        raise UserError(f"{path}: trained with another configuration (hash {ckpt.get('task_hash')}); rerun `alctl cycle`")
    model = new_model(task.config, ds, task.rep, int(ckpt["cycle"]), device)
    model.load_state_dict(ckpt["model"])
    return model, int(ckpt["cycle"])


def _one_task(manifest_path: str | Path, task: int | None) -> mf.Task:
    """Exactly one task, from --task or the scheduler's index."""
    _, all_tasks = plan(manifest_path)
    chosen = select_task(all_tasks, task)
    if len(chosen) > 1:  # no index given, and several tasks
        raise UserError(f"--task: required, the manifest has {len(all_tasks)} tasks (0..{len(all_tasks) - 1})")
    return chosen[0]


def select_command(manifest_path: str | Path, task_index: int | None, export: Path | None, ui: Ui) -> np.ndarray:
    """`alctl select`: the images to label next (the pending selection of a human-oracle task, else one acquisition
    on the current model), printed and with --export written as to_label.csv + contact_sheet.png; positions [b]."""
    task = _one_task(manifest_path, task_index)
    if export is not None:
        _check_export_dir(export)
    config = task.config
    ds = dataset_for(config)
    device = runtime.choose_device(config.train.device)
    ts = store.TaskStore(task_dir(task))
    pool = read_pool(ts, ds)
    images = ds.train_images.to(device)
    pending = np.zeros(0, np.int64) if pool is None else pool.pending()
    model: ConvLarge | None = None
    if len(pending) and not (ts.checkpoints / "model.pt").is_file():  # the initial set, before any training
        chosen, score_of = pending, {}
        what = "the initial set, waiting for labels"
    elif len(pending):
        model, cycle = load_task_model(task, ds, ts, device, manifest_path)
        chosen = pending
        scores = ts.read("scores")
        last = scores.filter(pa.array(scores["cycle"].to_numpy() == cycle))
        score_of = dict(zip(last["sample_id"].to_pylist(), last["score"].to_pylist()))
        what = f"selected at cycle {cycle}, waiting for labels"
    else:
        model, cycle = load_task_model(task, ds, ts, device, manifest_path)
        assert pool is not None  # a model implies a pool
        sel = acquire(config, task, ds, pool, model, images, cycle)
        chosen = sel.chosen
        ids_u = ds.train_ids.numpy()[pool.unlabeled]
        score_of = dict(zip(ids_u.tolist(), sel.scores.tolist()))
        what = f"next acquisition ({config.active.strategy}) on the cycle-{cycle} model"
    ids = ds.train_ids.numpy()[chosen]
    ui.line(f"[task {task.index} {task.key}] {len(chosen)} images to label, {what}:")
    ui.line(" ".join(str(int(i)) for i in ids))
    if export is not None:
        import_cmd = f"alctl label {manifest_path} --task {task.index} --labels {export / 'to_label.csv'}"
        _check_export_dir(export, ids, import_cmd)
        export_selection(export, ds, model, images, chosen, score_of)
        then = ("this task's oracle is simulated (active.oracle), so `alctl cycle` labels these itself: nothing to"
                " import" if config.active.oracle == "simulated" else f"fill the label column and run `{import_cmd}`")
        ui.line(f"wrote {export / 'to_label.csv'} and {export / 'contact_sheet.png'}; {then}")
    return chosen


def _check_export_dir(export: Path, ids: np.ndarray | None = None, import_hint: str = "") -> None:
    """--export must be a directory or not exist yet; given the sample ids about to be exported [b], its
    to_label.csv, if any, must hold no filled-in label for any of them (a person's work not imported yet is never
    overwritten; UserError naming the import command otherwise)."""
    if export.exists() and not export.is_dir():
        raise UserError(f"--export: {export} is a file; give a directory (to_label.csv and contact_sheet.png go there)")
    sheet = export / "to_label.csv"
    if ids is None or not sheet.is_file():
        return
    from alctl.labels import filled_ids

    try:
        filled = filled_ids(sheet) & set(ids.tolist())
    except UserError as exc:
        raise UserError(f"--export: {sheet} exists but is not a labels sheet ({exc.problems[0]}); move it away"
                        " first") from None
    if filled:
        raise UserError(f"--export: {sheet} already holds {len(filled)} filled-in label(s) of these images; import"
                        f" them with `{import_hint}` or move the file away, then export again")


def export_selection(
    export: Path, ds: DatasetSplits, model: ConvLarge | None, images: torch.Tensor, chosen: np.ndarray,
    score_of: dict[int, float],
) -> None:
    """to_label.csv (sample_id, path, score, the model's top-3 predictions, empty label column) and a contact
    sheet; without a model yet (the initial set) the prediction columns are empty."""
    import csv
    import io

    from alctl.sheet import contact_sheet

    ids = ds.train_ids.numpy()[chosen]
    sub = images[torch.from_numpy(chosen).to(images.device)]
    k = min(3, ds.num_classes)
    if model is not None:
        probs, _ = predict(model, sub, ds.mean, ds.std)
        top_p, top_c = (a.cpu().numpy() for a in probs.topk(k, dim=1))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["sample_id", "path", "score"] + [f"{h}{j}" for j in range(1, k + 1) for h in ("top", "p")]
                    + ["label"])
    paths = ds.train_paths
    captions = []
    for row, (sid, pos) in enumerate(zip(ids.tolist(), chosen.tolist())):
        if model is None:
            preds, guess = [""] * (2 * k), ""
        else:
            preds = [v for j in range(k) for v in (ds.classes[int(top_c[row, j])], f"{float(top_p[row, j]):.4f}")]
            guess = f"\n{preds[0]} {float(top_p[row, 0]):.2f}"
        score = score_of.get(int(sid))
        writer.writerow([sid, "" if paths is None else paths[pos], "" if score is None else f"{score:.6g}"] + preds
                        + [""])
        captions.append(f"{sid}{guess}")
    store.atomic_write_bytes(export / "to_label.csv", buf.getvalue().encode())
    contact_sheet(sub.cpu(), captions, export / "contact_sheet.png")


def label_command(manifest_path: str | Path, task_index: int | None, labels_file: Path, ui: Ui) -> int:
    """`alctl label`: import a person's labels for the pending selection; all-or-nothing; returns rows imported."""
    from alctl.labels import read_labels

    task = _one_task(manifest_path, task_index)
    config = task.config
    ds = dataset_for(config)
    ts = store.TaskStore(task_dir(task))
    with task_lock(task):
        pool = read_pool(ts, ds)
        if pool is None:
            raise UserError(f"--task: task {task.index} has not started; run `alctl cycle {manifest_path}` first")
        pending = pool.pending()
        sample_ids, labels = read_labels(labels_file, ds.train_ids.numpy(), ds.train_ids.numpy()[pending], ds.classes)
        pos = positions_of(ds, sample_ids)
        pool.apply_labels(pos, labels, "human")
        write_pool(ts, ds, pool)
    left = len(pool.pending())
    ui.line(f"[task {task.index} {task.key}] imported {len(pos)} labels from {labels_file};"
            + (f" {left} selected images still wait for labels" if left else
               f" the selection is complete: run `alctl cycle {manifest_path}` to continue"))
    return len(pos)


def propagate_command(manifest_path: str | Path, task_index: int | None, ui: Ui) -> PropagationOutcome:
    """`alctl propagate`: label propagation with the task's current model; writes pseudo rows and pseudo accuracy."""
    task = _one_task(manifest_path, task_index)
    config = task.config
    ds = dataset_for(config)
    device = runtime.choose_device(config.train.device)
    ts = store.TaskStore(task_dir(task))
    _require_model(task, ts, manifest_path)  # refused before the lock: a refusal writes nothing
    with task_lock(task):
        model, cycle = load_task_model(task, ds, ts, device, manifest_path)  # the latest, under the lock
        pool = read_pool(ts, ds)
        assert pool is not None
        labeled = pool.labeled_at(cycle)
        t0 = time.perf_counter()
        prop = propagate_pool(config, ds, model, ds.train_images.to(device), labeled, pool.label[labeled],
                              mf.cycle_epochs(config))
        seconds = time.perf_counter() - t0
        u = prop.unlabeled
        _replace_pseudo(ts, _pseudo_rows(cycle, prop.epoch, ds.train_ids.numpy()[u], prop.labels[u], prop.weights[u]),
                        cycle, prop.epoch)
        kept = ""
        if prop.accuracy is not None and ts.exists("metrics"):
            # fill the cycle's pseudo-label accuracy where its training recorded none (a plain task; null stays
            # null elsewhere); a +SEMI task's own value, measured on the propagation its training used, is kept
            metrics = ts.read("metrics")
            new = {"pseudo_accuracy": prop.accuracy, "pseudo_accuracy_top_half": prop.accuracy_top_half}
            old = {name: metrics[name].to_numpy(zero_copy_only=False).astype(np.float64) for name in new}
            this = metrics["cycle"].to_numpy() == cycle
            rows = this & np.isnan(old["pseudo_accuracy"])
            if rows.any():
                for name, value in new.items():
                    metrics = metrics.set_column(metrics.schema.get_field_index(name), name,
                                                 pa.array(np.where(rows, value, old[name]), pa.float64(), from_pandas=True))
                ts.write("metrics", metrics)
            elif this.any():
                kept = "; metrics keep the accuracy already recorded for that cycle"
    acc = "" if prop.accuracy is None else (
        f"; pseudo-labels {100 * prop.accuracy:.2f}% correct, {100 * (prop.accuracy_top_half or 0):.2f}% among the"
        f" most certain half{kept}")
    ui.line(f"[task {task.index} {task.key}] cycle-{cycle} model: propagated {len(labeled)} labels to {len(u)} images"
            f" in {seconds:.1f}s{acc}; wrote {ts.path('pseudo')}")
    return prop
