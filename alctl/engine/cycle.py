"""One task's loop, resumable: train on L (+ pseudo-labels), evaluate, select b images, label them, repeat.

A cycle is finished when its metrics row exists; an interrupted cycle is rolled back and redone, resuming its
training from checkpoints/train.pt (model, optimizer, generators, targets, seconds, last propagation).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from alctl import config as mf
from alctl import runtime, tracking
from alctl.console import Ui
from alctl.data import DatasetSplits
from alctl.engine import checkpoint, settings
from alctl.engine.pretraining import ensure_pretrained
from alctl.engine.steps import (PropagationOutcome, acquire, confident_predictions, joined_features,
                                pixel_features, pool_features, propagate_pool, pseudo_label_accuracy)
from alctl.engine.tables import PoolState, TaskTables, new_pool
from alctl.engine.workspace import (check_task_dir, dataset_for, known_hashes, task_config_hash, task_dir,
                                    task_lock)
from alctl.errors import AlctlError, Preempted, UserError
from alctl.safe_text import terminal
from alctl.models import ConvLarge, build_model
from alctl.pretrain import load_encoder
from alctl.store import Lock
from alctl.metrics import class_figures
from alctl.engine.records import CycleResult, cycle_line, metrics_row
from alctl.train.loop import fit
from alctl.train.predict import evaluate_predictions
from alctl.train.sampling import class_weights, sample_by_certainty
from alctl.train.spec import FitState, Semi, Targets, make_optimizer

TARGET_ARRAYS = ("labeled_pos", "labeled_y", "pseudo_pos", "pseudo_y", "pseudo_w", "class_w")


def new_model(config: mf.Manifest, ds: DatasetSplits, rep: int, cycle: int, device: torch.device,
              encoder: dict[str, torch.Tensor] | None = None) -> ConvLarge:
    """A freshly initialised network for one cycle (seeded from seed, repetition, cycle), from `encoder` when +PRE."""
    runtime.seed_torch(config.seed, rep, cycle, "init")
    model = build_model(ds.train_images.shape[1], ds.num_classes, config.model.width, config.model.dropout,
                        mf.l2_features(config))
    if encoder is not None:
        try:
            load_encoder(model, encoder)
        except ValueError as exc:
            raise UserError(f"pretrain.weights: {exc}") from None
    return model.to(device)


def initial_features(config: mf.Manifest, ds: DatasetSplits, rep: int, device: torch.device,
                     encoder: dict[str, torch.Tensor] | None) -> torch.Tensor:
    """What active.initial_strategy picks the cycle-0 set on: L2-normalised features `[N, D]` float32 of every pool
    image from the pre-trained encoder (active.initial_features: encoder, deepcluster or simclr), or the centred
    pixels (pixels)."""
    images = ds.train_images.to(device)
    if config.active.initial_features == "pixels":
        return pixel_features(images)
    if encoder is None:
        raise ValueError("initial_features: active.initial_features encoder needs the encoder weights")
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):  # no trace on the task's draws
        model = new_model(config, ds, rep, 0, device, encoder)
    return pool_features(config, ds, model, images)


@dataclass
class TaskContext:
    """Everything one task's cycles share."""

    task: mf.Task
    ds: DatasetSplits
    tables: TaskTables
    device: torch.device
    encoder: dict[str, torch.Tensor] | None
    stop: Callable[[], bool]
    lock: Lock | None = None
    on_epoch: Callable[[], None] = lambda: None
    images: torch.Tensor = field(init=False)  # [N, C, H, W] uint8 pool images on the device
    test_images: torch.Tensor = field(init=False)  # [n_test, C, H, W] uint8 on the device
    test_labels: torch.Tensor = field(init=False)  # [n_test] int64 on the device
    hash: str = field(init=False)  # the task's configuration hash, recorded in checkpoints and metrics
    known_hashes: set[str] = field(init=False)  # it and those of an older identity rule (their checkpoints)
    _fixed_features: torch.Tensor | None = field(init=False, default=None)  # see fixed_features

    def __post_init__(self) -> None:
        """Pool and test images on the training device; the configuration hash."""
        self.images = self.ds.train_images.to(self.device)
        self.test_images, self.test_labels = self.ds.test_images.to(self.device), self.ds.test_labels.to(self.device)
        self.hash = task_config_hash(self.config)
        self.known_hashes = known_hashes(self.task)

    def fixed_features(self) -> torch.Tensor | None:
        """The features [N, D] that semi.features fixes for every propagation of the task (the +PRE encoder's, the
        pixels, or both joined), computed once; None when the graph follows the model being trained."""
        features = mf.semi_features(self.config, tuple(self.ds.train_images.shape[1:]))  # type: ignore[arg-type]
        if self._fixed_features is not None or features == "model":
            return self._fixed_features
        parts = []
        if features in ("encoder", "encoder+pixels") and self.encoder is not None:
            cuda = [self.device.index or 0] if self.device.type == "cuda" else []
            with torch.random.fork_rng(devices=cuda):  # the classifier's initialisation leaves no trace
                model = new_model(self.config, self.ds, self.task.rep, 0, self.device, self.encoder)
            parts.append(pool_features(self.config, self.ds, model, self.images))
        if features in ("pixels", "encoder+pixels"):
            parts.append(pixel_features(self.images))
        if parts:
            self._fixed_features = joined_features(parts)
        return self._fixed_features

    @property
    def config(self) -> mf.Manifest:
        """The task's resolved configuration."""
        return self.task.config


class CycleTraining:
    """The training of one cycle: model, generator, targets, the last propagation and the time spent, which a
    checkpoint carries over to the process that resumes it."""

    def __init__(self, ctx: TaskContext, pool: PoolState, cycle: int) -> None:
        """A fresh (or encoder-initialised) model for `cycle` on the pool's labels at that cycle."""
        self.ctx, self.pool, self.cycle = ctx, pool, cycle
        config = ctx.config
        self.labeled = pool.labeled_at(cycle)
        self.targets = Targets(labeled_pos=self.labeled, labeled_y=pool.label[self.labeled])
        # the previous selection's pseudo-labels (CEAL's), read again from pseudo.parquet on resume
        self.selection_accuracy: float | None = None
        pos, ys, ws = ctx.tables.selection_pseudo(cycle)
        if len(pos):
            self.targets.pseudo_pos, self.targets.pseudo_y, self.targets.pseudo_w = pos, ys, ws
            self.selection_accuracy = pseudo_label_accuracy(ys, ctx.ds.train_labels.numpy()[pos])
        self.n_pseudo = len(self.targets.pseudo_pos)
        self.model = new_model(config, ctx.ds, ctx.task.rep, cycle, ctx.device, ctx.encoder)
        self.generator = runtime.torch_generator(config.seed, ctx.task.rep, cycle, "train", device="cpu")
        self.spec = settings.train_spec(config.train, ctx.device, tuple(ctx.ds.train_images.shape[1:]))  # type: ignore[arg-type]
        self.path = ctx.tables.checkpoints / "train.pt"
        self.seconds: dict[str, float] = {}  # train and propagate, including earlier processes' share
        self.carried = 0.0  # seconds spent on this cycle by earlier processes (resumed from a checkpoint)
        self.propagation: PropagationOutcome | None = None
        self._fixed: PropagationOutcome | None = None  # the cycle's propagation on fixed features (semi.features)
        self.semi: Semi | None = None  # how unlabeled images enter training (set by run)
        self._started = 0.0

    def _resume(self) -> FitState | None:
        """The state of an interrupted training of this cycle and configuration, restored; else None."""
        if not self.path.is_file():
            return None
        ckpt = checkpoint.load(self.path, "an alctl training checkpoint", self.ctx.device)
        if ckpt.get("cycle") != self.cycle or ckpt.get("task_hash") not in self.ctx.known_hashes:
            return None
        if ckpt.get("pool_key", self.ctx.tables.pool_key) != self.ctx.tables.pool_key:
            return None  # positions of another set of pool images (see drop_stale_training)
        checkpoint.load_weights(self.model, ckpt["model"], self.path, "an alctl training checkpoint")
        with checkpoint.reading(self.path, "an alctl training checkpoint"):  # an entry of another kind: exit 2
            return self._restore(ckpt)

    def _restore(self, ckpt: checkpoint.Payload) -> FitState:
        """The optimizer, generator and RNG states, targets, seconds and propagation of a training checkpoint."""
        optimizer = make_optimizer(self.model, self.spec)
        optimizer.load_state_dict(ckpt["optimizer"])
        self.generator.set_state(ckpt["generator"].cpu())
        checkpoint.set_rng_states(ckpt["rng"], self.ctx.device)
        targets = Targets(**checkpoint.tensors_to_arrays(ckpt["targets"]))
        self.seconds.update(ckpt["seconds"])
        if ckpt.get("propagation") is not None:
            self.propagation = PropagationOutcome.from_plain(ckpt["propagation"])
        batches = ckpt["batches"]
        scaler = None
        if ckpt.get("scaler") is not None:  # fp16's loss scale, carried on
            scaler = torch.amp.GradScaler(self.ctx.device.type)
            scaler.load_state_dict(ckpt["scaler"])
        return FitState(epoch=int(ckpt["epoch"]), model=self.model, optimizer=optimizer, targets=targets,
                        step=int(ckpt["step"]), batches=None if batches is None else [b.cpu() for b in batches],
                        scaler=scaler, learned=ckpt.get("learned"))

    def _refresh(self, epoch: int) -> Targets:
        """+SEMI: label propagation on the current model's features (or, once a cycle, on the fixed features of
        semi.features); the pseudo-labeled targets of the next epochs."""
        config, s, labels = self.ctx.config, self.ctx.config.semi, self.pool.label[self.labeled]
        t0 = time.perf_counter()
        prop = self._propagate(epoch)
        u = prop.unlabeled
        if s.selection == "prob":
            rng = runtime.rng(config.seed, self.ctx.task.rep, self.cycle, f"pseudo-subset-{epoch}")
            u = u[sample_by_certainty(prop.weights[u], s.fraction, rng)]
        cw = class_weights(np.concatenate([labels, prop.labels[u]]), self.ctx.ds.num_classes) if s.class_weights else None
        self.seconds["propagate"] = self.seconds.get("propagate", 0.0) + time.perf_counter() - t0
        return Targets(labeled_pos=self.labeled, labeled_y=labels, pseudo_pos=u, pseudo_y=prop.labels[u],
                       pseudo_w=prop.weights[u], class_w=cw)

    def _propagate(self, epoch: int) -> PropagationOutcome:
        """Label propagation on the current model's features (or, once a cycle, on the fixed features of
        semi.features); kept as self.propagation."""
        config, labels = self.ctx.config, self.pool.label[self.labeled]
        if self._fixed is not None:  # fixed features (semi.features): one propagation a cycle
            prop = dataclasses.replace(self._fixed, epoch=epoch)
        elif (fixed := self.ctx.fixed_features()) is not None:
            self._fixed = propagate_pool(config, self.ctx.ds, fixed, self.labeled, labels, epoch)
            prop = self._fixed
        else:
            feats = pool_features(config, self.ctx.ds, self.model, self.ctx.images)
            prop = propagate_pool(config, self.ctx.ds, feats, self.labeled, labels, epoch)
        self.propagation = prop
        return prop

    def _unlabeled(self, epoch: int) -> Targets:
        """FixMatch: the labeled images and every unlabeled pool image (targets' pseudo_pos; no label, no weight),
        or during semi.fixmatch.prior_epochs label propagation's pseudo-labels and certainties as their prior."""
        u = np.setdiff1d(np.arange(len(self.pool.label)), self.labeled)
        y, w = np.zeros(len(u), np.int64), np.zeros(len(u), np.float32)
        semi = self.semi
        if semi is not None and epoch - semi.start(self.spec.epochs) < semi.prior_epochs:
            t0 = time.perf_counter()
            prop = self._propagate(epoch)
            y, w = prop.labels[u].astype(np.int64), prop.weights[u].astype(np.float32)
            self.seconds["propagate"] = self.seconds.get("propagate", 0.0) + time.perf_counter() - t0
        return Targets(labeled_pos=self.labeled, labeled_y=self.pool.label[self.labeled], pseudo_pos=u,
                       pseudo_y=y, pseudo_w=w)

    def _account(self) -> None:
        """seconds["train"] = time spent so far (this process and earlier ones) less propagation."""
        elapsed = self.carried + time.perf_counter() - self._started
        self.seconds["train"] = elapsed - self.seconds.get("propagate", 0.0)

    def _checkpoint(self, state: FitState) -> None:
        """Save everything needed to resume after this step (tensors, numbers, strings only)."""
        self._account()
        checkpoint.save(self.path, {
            "cycle": self.cycle, "task_hash": self.ctx.hash, "pool_key": self.ctx.tables.pool_key,
            "epoch": state.epoch, "step": state.step,
            "batches": state.batches, "model": self.model.state_dict(), "optimizer": state.optimizer.state_dict(),
            "generator": self.generator.get_state(), "rng": checkpoint.rng_states(self.ctx.device),
            "targets": checkpoint.arrays_to_tensors({k: getattr(state.targets, k) for k in TARGET_ARRAYS}),
            "seconds": dict(self.seconds),
            "propagation": None if self.propagation is None else self.propagation.to_plain(),
            "scaler": None if state.scaler is None else state.scaler.state_dict(),
            "learned": None if state.learned is None else state.learned.cpu(),
        })
        if self.ctx.lock is not None:
            self.ctx.lock.beat()

    def run(self) -> ConvLarge:
        """Train (or resume) to the end of the cycle's epochs; Preempted after a checkpoint when stopped."""
        ctx = self.ctx
        resume = self._resume()
        semi = None
        shape = tuple(ctx.ds.train_images.shape[1:])
        if ctx.config.semi.method == "label-propagation":
            semi = settings.semi_spec(ctx.config, self._refresh, shape)  # type: ignore[arg-type]
        elif ctx.config.semi.method == "fixmatch":
            semi = settings.semi_spec(ctx.config, self._unlabeled, shape)  # type: ignore[arg-type]
        self.semi = semi
        self._started = time.perf_counter()
        self.carried = self.seconds.get("train", 0.0) + self.seconds.get("propagate", 0.0)

        def on_epoch(state: FitState) -> None:
            self._checkpoint(state)
            ctx.on_epoch()

        try:
            state = fit(self.model, ctx.images, self.targets, self.spec, ctx.ds.mean, ctx.ds.std, self.generator,
                        semi=semi, resume=resume, on_epoch=on_epoch, should_stop=ctx.stop)
        except FloatingPointError as exc:  # the loss or the weights became NaN or infinite: nothing is recorded
            raise AlctlError(f"task {ctx.task.index} ({ctx.task.key}) cycle {self.cycle}: {exc}; lower train.lr"
                             f" (now {ctx.config.train.lr:g})") from None
        if state.stopped:
            self._checkpoint(state)
            where = f"epoch {state.epoch}" + (f" step {state.step}" if state.step else "")
            raise Preempted(f"task {ctx.task.index} ({ctx.task.key}) stopped at cycle {self.cycle} {where};"
                            " checkpoint saved, rerun the same command to resume")
        self._account()
        if semi is not None and semi.consistency is not None:  # the confident predictions FixMatch ends with
            self.propagation = confident_predictions(ctx.config, ctx.ds, self.model, ctx.images, self.labeled,
                                                     state.epoch - 1)
            self.n_pseudo = len(self.propagation.unlabeled)
        elif semi is not None:
            self.n_pseudo = len(state.targets.pseudo_pos)  # pseudo-labeled images used since the last propagation
        return self.model


def run_cycle(ctx: TaskContext, pool: PoolState, cycle: int, last: bool) -> CycleResult:
    """Train from scratch (or the encoder) on the labeled set (+ pseudo-labels), evaluate, select unless last;
    writes nothing but the training checkpoint (commit_cycle records the result)."""
    config, ds = ctx.config, ctx.ds
    started = time.perf_counter()
    if ctx.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(ctx.device)
    training = CycleTraining(ctx, pool, cycle)
    model = training.run()
    seconds = dict(training.seconds)
    t0 = time.perf_counter()
    figures = None
    if len(ctx.test_labels):
        accuracy, loss, predicted = evaluate_predictions(model, ctx.test_images, ctx.test_labels, ds.mean, ds.std,
                                                         config.train.eval_batch_size, training.spec.compute)
        figures = class_figures(predicted, ctx.test_labels.cpu().numpy(), ds.num_classes)
    else:  # an image folder without a test tree
        accuracy, loss = float("nan"), float("nan")
    seconds["eval"] = time.perf_counter() - t0
    prop = training.propagation
    selection = None
    if not last:
        t0 = time.perf_counter()
        selection = acquire(config, ctx.task.rep, ds, pool, model, ctx.images, cycle)
        seconds["select"] = time.perf_counter() - t0
    labeled = pool.labeled_at(cycle)
    seconds["total"] = time.perf_counter() - started + training.carried  # with earlier processes' share
    return CycleResult(accuracy, loss, len(labeled), training.n_pseudo, seconds, selection, prop,
                       training.selection_accuracy if prop is None else prop.accuracy, figures,
                       np.bincount(pool.label[labeled].astype(np.int64), minlength=ds.num_classes)[: ds.num_classes],
                       model.state_dict())


def waiting_message(task: mf.Task, manifest_path: str | Path, n: int, cycle: int) -> str:
    """What a person must do for a task that waits for labels."""
    return (
        f"[task {task.index} {task.key}] waiting for labels: {n} images selected for cycle {cycle} are not labeled yet."
        f" Export them with `alctl select {manifest_path} --task {task.index} --export DIR`, fill the label column"
        f" of DIR/to_label.csv, import it with `alctl label {manifest_path} --task {task.index} --labels"
        f" DIR/to_label.csv`, then rerun `alctl cycle {manifest_path}`"
    )


def say_pool_changes(ui: Ui, tag: str, tables: TaskTables) -> None:
    """Warn, one line each, how the dataset's images differ from the task's stored pool (after `read_pool`)."""
    for line in tables.changes.lines() if tables.changes is not None else []:
        ui.warn(terminal(f"{tag} {line}"))


def drop_stale_training(ui: Ui, tag: str, tables: TaskTables) -> None:
    """Delete checkpoints/train.pt when it was written for another set of pool images (its targets and
    propagation are pool positions, which move when image files are added or removed): that cycle trains anew."""
    path = tables.checkpoints / "train.pt"
    if not path.is_file():
        return
    recorded = checkpoint.load(path, "an alctl training checkpoint", torch.device("cpu")).get("pool_key")
    if recorded is not None and recorded != tables.pool_key:
        path.unlink()
        ui.warn(f"{tag} the interrupted training of the cycle was made on another set of pool images; that cycle"
                " is trained from the start")


def run_task(task: mf.Task, ui: Ui, manifest_path: str | Path, max_cycles: int | None = None,
             stop: Callable[[], bool] = lambda: False) -> int:
    """Run (or resume) one task's cycles under its lock; returns the number of cycles run now.

    Each cycle: train (resumable mid-epoch), evaluate, select (`run_cycle`), then `commit_cycle` records it; a
    cycle stopped before its metrics row is rolled back and redone on the next run (`start_pool`)."""
    config = task.config
    ds = dataset_for(config)
    device = runtime.choose_device(config.train.device)
    check_task_dir(task)
    tables = TaskTables(task_dir(task), ds)
    total = config.active.cycles if max_cycles is None else min(max_cycles, config.active.cycles)
    tag = f"[task {task.index} {task.key}]"
    with task_lock(task) as lock, tracking.tracked(task, task_dir(task), ui) as tracker:
        done = tables.finished_cycles()
        if done >= total:
            ui.line(f"{tag} finished: {done}/{config.active.cycles} cycles already done, nothing to do")
            return 0
        pool, encoder, seconds_pretrain = start_pool(task, ds, tables, device, ui, stop, done)
        ran = 0
        with ui.progress() as prog:
            epochs = mf.cycle_epochs(config)
            bar = prog.add_task(f"task {task.index}", total=total * epochs, completed=done * epochs)
            ctx = TaskContext(task, ds, tables, device, encoder, stop, lock, on_epoch=lambda: prog.advance(bar))
            for cycle in range(done, total):
                if len(pool.pending(cycle)):
                    break  # a person has not labeled this cycle's images yet
                res = run_cycle(ctx, pool, cycle, last=cycle == config.active.cycles - 1)
                commit_cycle(ctx, pool, cycle, res, seconds_pretrain if cycle == done else 0.0)
                tracker.cycle_finished()
                ran += 1
                ui.line(cycle_line(tag, cycle, res, config.semi.method == "fixmatch"))
                if stop():
                    raise Preempted(f"task {task.index} ({task.key}) stopped after cycle {cycle}; rerun to resume")
        waiting = pool.pending()
        if len(waiting):
            ui.line(waiting_message(task, manifest_path, len(waiting), int(pool.labeled_cycle[waiting].max())))
    return ran


def start_pool(task: mf.Task, ds: DatasetSplits, tables: TaskTables, device: torch.device, ui: Ui,
               stop: Callable[[], bool], done: int) -> tuple[PoolState, dict[str, torch.Tensor] | None, float]:
    """(the pool to run from, the +PRE encoder or None, seconds spent pre-training): a new pool with its initial
    set (a cold start trains the encoder first), or the recorded one rolled back to its `done` finished cycles
    (an interrupted cycle may have written its selection before its metrics row: undone, then redone)."""
    config, tag = task.config, f"[task {task.index} {task.key}]"
    for line in ds.skipped:
        ui.warn(f"skipped unreadable image {line}")
    pool = tables.read_pool()
    say_pool_changes(ui, tag, tables)
    drop_stale_training(ui, tag, tables)
    encoder, seconds_pretrain = None, 0.0
    if (pool is None or config.pretrain.method != "none") and mf.uses_encoder(config):
        encoder, seconds_pretrain = ensure_pretrained(config, ds, device, ui, stop)
    if pool is None:
        pool = new_pool(config, task.rep, ds, lambda: initial_features(config, ds, task.rep, device, encoder))
    else:
        pool.rollback(done)
        tables.rollback(done)
    tables.write_pool(pool)
    if config.pretrain.method == "none":
        encoder = None  # a cold start's encoder only chose the initial set: plain trains from scratch
    return pool, encoder, seconds_pretrain


def commit_cycle(ctx: TaskContext, pool: PoolState, cycle: int, res: CycleResult, seconds_pretrain: float) -> None:
    """Record a finished cycle: the only place a cycle's results are written, in the order resuming relies on:
    the model (checkpoints/model.pt), the propagation's pseudo-labels (pseudo.parquet), the selection's scores
    (scores.parquet), its images marked (and labeled by a simulated oracle) in pool.parquet, then the metrics row
    (the cycle counts as finished from here), then the training checkpoint dropped. A process stopped before the
    metrics row leaves a cycle that `start_pool` rolls back (tables.rollback, pool.rollback) and runs again."""
    tables = ctx.tables
    checkpoint.save(tables.checkpoints / "model.pt", {"model": res.model_state, "cycle": cycle,
                                                      "task_hash": ctx.hash})
    prop = res.propagation
    if prop is not None:
        u = prop.unlabeled
        tables.replace_propagation(cycle, prop.epoch, u, prop.labels[u], prop.weights[u])
    if res.selection is not None:
        tables.append_selection(cycle, ctx.config.active.strategy, pool.unlabeled, res.selection)
        chosen = res.selection.chosen
        pool.mark_selected(chosen, cycle + 1)
        if ctx.config.active.oracle == "simulated":
            pool.apply_labels(chosen, ctx.ds.train_labels.numpy()[chosen], "oracle")  # the oracle answers
        tables.write_pool(pool)
    tables.append_metrics(metrics_row(ctx, cycle, res, seconds_pretrain))
    (tables.checkpoints / "train.pt").unlink(missing_ok=True)
