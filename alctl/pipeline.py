"""One function per command: read the store, call the pure modules, write the store; every step resumable."""

from __future__ import annotations

import functools
import logging
import resource
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from alctl import manifest as mf
from alctl import runtime, store
from alctl.data import DatasetSplits, load_dataset
from alctl.errors import UserError
from alctl.models import ConvLarge, build_model
from alctl.strategies import PoolView, Selection, get_strategy, select
from alctl.train import Targets, TrainSpec, evaluate, fit, predict

log = logging.getLogger("alctl")


# ----------------------------------------------------------------------------- context


@dataclass
class Ui:
    """Console output: one log line per cycle, rich progress bars when on a terminal."""

    console: Console
    quiet: bool = False

    def line(self, text: str) -> None:
        """Print a log line unless quiet."""
        if not self.quiet:
            self.console.print(text, highlight=False, markup=False)

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
def _dataset(name: str, root: str, download: bool, image_size: int | None, channels: int | None) -> DatasetSplits:
    """Load (once per process) a dataset through the registry."""
    return load_dataset(name, root=root, download=download, image_size=image_size, channels=channels)


def dataset_for(config: mf.Manifest) -> DatasetSplits:
    """The dataset of a task configuration."""
    d = config.dataset
    return _dataset(d.name, d.root, d.download, d.image_size, d.channels)


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
    if index is None:
        index = runtime.scheduler_task_index()
    if index is None:
        return tasks
    if not 0 <= index < len(tasks):
        raise UserError(f"--task: index {index} is outside the plan (0..{len(tasks) - 1}, {len(tasks)} tasks)")
    return [tasks[index]]


def write_run_manifest(m: mf.Manifest) -> Path:
    """Write runs/<name>/manifest.yaml (resolved) and manifest.sha256 atomically; returns the run directory."""
    run = mf.run_dir(m)
    store.atomic_write_bytes(run / "manifest.yaml", mf.to_yaml(m).encode())
    store.atomic_write_bytes(run / "manifest.sha256", (mf.manifest_hash(m) + "\n").encode())
    return run


def _check_task_dir(task: mf.Task, tdir: Path) -> str:
    """Write or compare the task's resolved config; a different config in the same directory is a user error."""
    h = task_config_hash(task.config)
    marker = tdir / "task.sha256"
    if marker.is_file():
        old = marker.read_text().strip()
        if old != h:
            raise UserError(
                f"{tdir}: holds results of another configuration (task hash {old}, manifest now gives {h});"
                " use another `name:`/`output:` or remove that directory"
            )
    else:
        store.atomic_write_bytes(tdir / "task.yaml", mf.to_yaml(task.config).encode())
        store.atomic_write_bytes(marker, (h + "\n").encode())
    return h


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


@dataclass
class PoolState:
    """Current pool as arrays aligned with the dataset's train positions."""

    label: np.ndarray  # [N] int64, -1 unlabeled
    labeled_cycle: np.ndarray  # [N] int32, -1 unlabeled
    source: np.ndarray  # [N] object str

    @property
    def labeled(self) -> np.ndarray:
        """Positions of labeled images [n_l]."""
        return np.flatnonzero(self.labeled_cycle >= 0)

    @property
    def unlabeled(self) -> np.ndarray:
        """Positions of unlabeled images [n_u]."""
        return np.flatnonzero(self.labeled_cycle < 0)

    def rollback(self, cycle: int) -> None:
        """Forget labels acquired for cycles after `cycle` (work of an unfinished cycle)."""
        later = self.labeled_cycle > cycle
        self.label[later] = -1
        self.labeled_cycle[later] = -1
        self.source[later] = ""


def read_pool(ts: store.TaskStore, ds: DatasetSplits) -> PoolState | None:
    """The pool table mapped onto dataset positions (None when absent)."""
    if not ts.exists("pool"):
        return None
    t = ts.read("pool")
    ids = ds.train_ids.numpy()
    order = np.argsort(ids)
    pos = order[np.searchsorted(ids, t["sample_id"].to_numpy(), sorter=order)]
    n = len(ids)
    state = PoolState(np.full(n, -1, np.int64), np.full(n, -1, np.int32), np.full(n, "", dtype=object))
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


# ----------------------------------------------------------------------------- one cycle


def _peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process (CUDA: allocated on the device; CPU: max resident set)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def strategy_params(config: mf.Manifest) -> dict[str, float]:
    """Parameters handed to the acquisition function."""
    return {
        "threshold": config.active.ceal.threshold, "decay": config.active.ceal.decay,
        "k": config.semi.k, "alpha": config.semi.alpha, "gamma": config.semi.gamma,
        "tol": config.semi.tol, "max_iter": config.semi.max_iter,
    }


def new_model(config: mf.Manifest, ds: DatasetSplits, rep: int, cycle: int, device: torch.device) -> ConvLarge:
    """A freshly initialised network for one cycle (seeded from seed, repetition, cycle)."""
    runtime.seed_torch(config.seed, rep, cycle, "init")
    model = build_model(ds.train_images.shape[1], ds.num_classes, config.model.width, config.model.dropout)
    return model.to(device)


@dataclass
class CycleResult:
    """What one cycle produced."""

    accuracy: float
    loss: float
    n_labeled: int
    n_pseudo: int
    seconds: dict[str, float]
    selection: Selection | None


def _pseudo_rows(cycle: int, epoch: int, ids: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> pa.Table:
    """Rows of pseudo.parquet for one cycle."""
    n = len(ids)
    return store.to_table(
        "pseudo",
        {"cycle": np.full(n, cycle, np.int32), "epoch": np.full(n, epoch, np.int32), "sample_id": ids,
         "pseudo_label": labels, "weight": weights.astype(np.float32)},
    )


def run_task(task: mf.Task, ui: Ui, max_cycles: int | None = None) -> int:
    """Run (or resume) one task's cycles; returns the number of cycles run now."""
    config = task.config
    run = mf.run_dir(config)
    tdir = run / "tasks" / task.key
    ds = dataset_for(config)
    device = runtime.choose_device(config.train.device)
    h = _check_task_dir(task, tdir)
    ts = store.TaskStore(tdir)
    total = config.active.cycles if max_cycles is None else min(max_cycles, config.active.cycles)
    done = finished_cycles(ts)
    tag = f"[task {task.index} {task.key}]"
    if done >= total:
        ui.line(f"{tag} finished: {done}/{config.active.cycles} cycles already done, nothing to do")
        return 0

    labels_true = ds.train_labels.numpy()
    pool = read_pool(ts, ds)
    if pool is None:
        rng = runtime.rng(config.seed, task.rep, 0, "initial")
        init = initial_labeled(labels_true, config.active.initial, ds.num_classes, rng)
        n = len(labels_true)
        pool = PoolState(np.full(n, -1, np.int64), np.full(n, -1, np.int32), np.full(n, "", dtype=object))
        pool.label[init] = labels_true[init]
        pool.labeled_cycle[init] = 0
        pool.source[init] = "initial"
        write_pool(ts, ds, pool)
    else:
        # an interrupted cycle may have written its selection before its metrics row: undo it and redo the cycle
        pool.rollback(done)
        write_pool(ts, ds, pool)
        rollback_tables(ts, done)

    images = ds.train_images.to(device)
    test_images, test_labels = ds.test_images.to(device), ds.test_labels.to(device)
    ran = 0
    with ui.progress() as prog:
        bar = prog.add_task(f"task {task.index}", total=total * config.train.epochs, completed=done * config.train.epochs)
        for cycle in range(done, total):
            started = time.perf_counter()
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            res = _run_cycle(config, task, ds, pool, ts, cycle, device, images, test_images, test_labels,
                             lambda: prog.advance(bar), last=cycle == config.active.cycles - 1)
            if res.selection is not None:
                chosen = res.selection.chosen
                pool.label[chosen] = labels_true[chosen]  # the simulated oracle answers
                pool.labeled_cycle[chosen] = cycle + 1
                pool.source[chosen] = "oracle"
                write_pool(ts, ds, pool)
            res.seconds["total"] = time.perf_counter() - started
            row = {
                "task": [task.index], "task_key": [task.key], "strategy": [config.active.strategy],
                "variant": [task.variant], "rep": [task.rep], "cycle": [cycle],
                "n_labeled": [res.n_labeled],
                "n_pseudo": [res.n_pseudo], "accuracy": [res.accuracy], "loss": [res.loss],
                "seconds_train": [res.seconds.get("train", 0.0)], "seconds_eval": [res.seconds.get("eval", 0.0)],
                "seconds_propagate": [res.seconds.get("propagate", 0.0)],
                "seconds_select": [res.seconds.get("select", 0.0)], "seconds_pretrain": [0.0],
                "seconds_total": [res.seconds["total"]], "peak_memory_mb": [_peak_memory_mb(device)],
                "device": [str(device)], "manifest_hash": [h], "finished_at": [datetime.now(timezone.utc)],
            }
            ts.append("metrics", store.to_table("metrics", row))
            ran += 1
            ui.line(
                f"{tag} cycle {cycle}: {row['n_labeled'][0]} labels, accuracy {100 * res.accuracy:.2f}%"
                f" | train {res.seconds.get('train', 0):.1f}s eval {res.seconds.get('eval', 0):.1f}s"
                f" select {res.seconds.get('select', 0):.1f}s total {res.seconds['total']:.1f}s"
            )
    return ran


def _run_cycle(
    config: mf.Manifest,
    task: mf.Task,
    ds: DatasetSplits,
    pool: PoolState,
    ts: store.TaskStore,
    cycle: int,
    device: torch.device,
    images: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    on_epoch: Callable[[], None],
    last: bool,
) -> CycleResult:
    """Train from scratch on the labeled set (+ pseudo-labels), evaluate, and select unless it is the last cycle."""
    seconds: dict[str, float] = {}
    labeled = np.flatnonzero((pool.labeled_cycle >= 0) & (pool.labeled_cycle <= cycle))
    targets = Targets(labeled_pos=labeled, labeled_y=pool.label[labeled])
    n_pseudo = 0
    if config.active.strategy == "ceal" and ts.exists("pseudo"):
        t = ts.read("pseudo")
        mask = (t["cycle"].to_numpy() == cycle) & (t["epoch"].to_numpy() < 0)
        if mask.any():
            ids = ds.train_ids.numpy()
            order = np.argsort(ids)
            pos = order[np.searchsorted(ids, t["sample_id"].to_numpy()[mask], sorter=order)]
            targets.pseudo_pos = pos.astype(np.int64)
            targets.pseudo_y = t["pseudo_label"].to_numpy()[mask].astype(np.int64)
            targets.pseudo_w = np.ones(len(pos), np.float32)
            n_pseudo = len(pos)

    model = new_model(config, ds, task.rep, cycle, device)
    gen = runtime.torch_generator(config.seed, task.rep, cycle, "train", device="cpu")
    t0 = time.perf_counter()
    fit(model, images, targets, train_spec(config), ds.mean, ds.std, gen, on_epoch=lambda _s: on_epoch())
    seconds["train"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    accuracy, loss = evaluate(model, test_images, test_labels, ds.mean, ds.std, config.train.eval_batch_size)
    seconds["eval"] = time.perf_counter() - t0
    save_checkpoint(ts.checkpoints / "model.pt",
                    {"model": model.state_dict(), "cycle": cycle, "task_hash": task_config_hash(config)})

    selection = None
    if not last:
        t0 = time.perf_counter()
        selection = acquire(config, task, ds, pool, model, images, cycle)
        write_selection(ts, ds, config, pool, selection, cycle)
        seconds["select"] = time.perf_counter() - t0
    return CycleResult(accuracy, loss, len(labeled), n_pseudo, seconds, selection)


def save_checkpoint(path: Path, payload: dict) -> None:
    """torch.save to a temporary sibling, then rename: a checkpoint is whole or absent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp"
    torch.save(payload, tmp)
    tmp.replace(path)


def acquire(
    config: mf.Manifest, task: mf.Task, ds: DatasetSplits, pool: PoolState, model: ConvLarge, images: torch.Tensor,
    cycle: int,
) -> Selection:
    """Run the task's acquisition function on the current model: b pool positions out of U."""
    probs, feats = predict(model, images, ds.mean, ds.std, config.train.eval_batch_size)
    labeled = np.flatnonzero((pool.labeled_cycle >= 0) & (pool.labeled_cycle <= cycle))
    unlabeled = np.setdiff1d(np.arange(len(pool.label)), labeled)
    view = PoolView(
        probs=probs[torch.from_numpy(unlabeled).to(probs.device)].cpu().numpy().astype(np.float32),
        features=np.ascontiguousarray(feats.cpu().numpy().astype(np.float32)),
        labeled=labeled.astype(np.int64), unlabeled=unlabeled.astype(np.int64),
        labels=pool.label[labeled].astype(np.int64), num_classes=ds.num_classes, cycle=cycle,
    )
    rng = runtime.rng(config.seed, task.rep, cycle, "select")
    return select(config.active.strategy, view, config.active.budget, rng, strategy_params(config))


def write_selection(
    ts: store.TaskStore, ds: DatasetSplits, config: mf.Manifest, pool: PoolState, sel: Selection, cycle: int
) -> None:
    """Append the cycle's scores (every candidate, selected flag) and CEAL's pseudo-labels for the next cycle."""
    labeled = np.flatnonzero((pool.labeled_cycle >= 0) & (pool.labeled_cycle <= cycle))
    unlabeled = np.setdiff1d(np.arange(len(pool.label)), labeled)
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
    get_strategy(m.active.strategy)
    return m, mf.tasks(m)


def cycle_command(manifest_path: str | Path, task: int | None, cycles: int | None, ui: Ui) -> int:
    """`alctl cycle`: run or resume the chosen tasks; returns the number of cycles run."""
    m, all_tasks = plan(manifest_path)
    chosen = select_task(all_tasks, task)
    for t in chosen:  # fail early (exit 2) on missing data, before anything is written
        dataset_for(t.config)
    write_run_manifest(m)
    ran = 0
    for t in chosen:
        ran += run_task(t, ui, cycles)
    if ran == 0 and len(chosen) > 1:
        ui.line(f"run {mf.run_dir(m)} is finished: all {len(chosen)} tasks done, nothing to do")
    return ran


def load_task_model(task: mf.Task, ds: DatasetSplits, ts: store.TaskStore, device: torch.device) -> tuple[ConvLarge, int]:
    """The task's current model (latest finished cycle) and that cycle; exit 2 when none is trained yet."""
    path = ts.checkpoints / "model.pt"
    if not path.is_file():
        raise UserError(f"{path}: no trained model yet; run `alctl cycle MANIFEST --task {task.index}` first")
    ckpt = torch.load(path, map_location=device, weights_only=True)
    if ckpt.get("task_hash") != task_config_hash(task.config):
        raise UserError(f"{path}: trained with another configuration (hash {ckpt.get('task_hash')}); rerun `alctl cycle`")
    model = new_model(task.config, ds, task.rep, int(ckpt["cycle"]), device)
    model.load_state_dict(ckpt["model"])
    return model, int(ckpt["cycle"])


def _one_task(manifest_path: str | Path, task: int | None) -> mf.Task:
    """Exactly one task, from --task or the scheduler's index."""
    _, all_tasks = plan(manifest_path)
    if task is None and runtime.scheduler_task_index() is None and len(all_tasks) > 1:
        raise UserError(f"--task: required, the manifest has {len(all_tasks)} tasks (0..{len(all_tasks) - 1})")
    return select_task(all_tasks, task)[0]


def select_command(manifest_path: str | Path, task_index: int | None, export: Path | None, ui: Ui) -> Selection:
    """`alctl select`: the next b images to label according to the task's current model; optional CSV export."""
    task = _one_task(manifest_path, task_index)
    config = task.config
    ds = dataset_for(config)
    device = runtime.choose_device(config.train.device)
    ts = store.TaskStore(mf.run_dir(config) / "tasks" / task.key)
    pool = read_pool(ts, ds)
    model, _ = load_task_model(task, ds, ts, device)
    assert pool is not None  # a model implies a pool
    current = int(pool.labeled_cycle.max())
    images = ds.train_images.to(device)
    sel = acquire(config, task, ds, pool, model, images, current)
    ids = ds.train_ids.numpy()
    unlabeled = np.flatnonzero(pool.labeled_cycle < 0)
    score_of = dict(zip(unlabeled.tolist(), sel.scores.tolist()))
    ui.line(f"[task {task.index} {task.key}] {len(sel.chosen)} images to label next ({config.active.strategy}):")
    ui.line(" ".join(str(int(ids[p])) for p in sel.chosen))
    if export is not None:
        probs, _ = predict(model, images[torch.from_numpy(sel.chosen).to(device)], ds.mean, ds.std)
        top_p, top_c = probs.topk(min(3, ds.num_classes), dim=1)
        lines = ["sample_id,score,top1,p1,top2,p2,top3,p3"]
        for k, p in enumerate(sel.chosen):
            preds = ",".join(f"{ds.classes[int(c)]},{float(q):.4f}" for c, q in zip(top_c[k], top_p[k]))
            lines.append(f"{int(ids[p])},{score_of[int(p)]:.6g},{preds}")
        store.atomic_write_bytes(export / "to_label.csv", ("\n".join(lines) + "\n").encode())
        ui.line(f"wrote {export / 'to_label.csv'}")
    return sel
