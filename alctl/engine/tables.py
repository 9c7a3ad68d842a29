"""A task's pool and its tables: every read, write, append and rollback rule of pool/scores/pseudo/metrics.

Arrays follow the dataset's pool positions: label `[N]` int64 (-1 unknown), labeled_cycle `[N]` int32 (-1 never
selected), source `[N]` object str. Tables are keyed by sample_id, never by position, and joined to the dataset
by sample_id on every read (`join_ids`): a row whose image is gone (an image-folder file removed or renamed) maps
onto no position; pool.parquet keeps it verbatim on every write, so a file that comes back gets its row back, and
scores / pseudo rows of gone ids are ignored. Dataset images no pool row names join as never selected. In
pseudo.parquet a row with epoch < 0 (`SELECTION_EPOCH`) holds a pseudo-label (CEAL's) chosen at the previous
selection for this cycle's training; epoch >= 0 rows are label propagation's at that epoch.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from alctl import config as mf
from alctl import runtime, store
from alctl.data import DatasetSplits
from alctl.engine import settings
from alctl.errors import AlctlError, UserError
from alctl.safe_text import terminal
from alctl.strategies.catalog import COLD_START_NAMES
from alctl.strategies.base import Selection
from alctl.strategies.registry import cold_start

PENDING = "pending"  # label_source of images selected for a human annotator and not answered yet
SELECTION_EPOCH = -1  # pseudo.parquet epoch of a selection's pseudo-labels (CEAL's; label propagation: epochs >= 0)
CEAL_EPOCH = SELECTION_EPOCH
LISTED = 5  # sample ids / file names named in a pool-change line before "... and N more"
# what a pool row whose image is gone was, by label_source (a row never selected is "never selected" whatever it says)
GONE_KINDS = {"human": "labeled by a person", "initial": "of the initial labeled set",
              "oracle": "labeled by the simulated oracle", PENDING: "selected and waiting for a label"}
NEVER_SELECTED = "never selected"


@dataclass(frozen=True)
class PoolJoin:
    """A table's sample ids joined to the dataset's by value (never by position)."""

    rows: np.ndarray  # [R] int64 dataset position of each table row; -1 where the dataset has no such image
    new: np.ndarray  # [n_new] int64 dataset positions that no table row names, ascending

    @property
    def present(self) -> np.ndarray:
        """[R] bool: the row's image is in the dataset."""
        return self.rows >= 0

    @property
    def gone(self) -> np.ndarray:
        """[g] int64 indices of the rows whose image is not in the dataset."""
        return np.flatnonzero(self.rows < 0)


def join_ids(dataset_ids: np.ndarray, table_ids: np.ndarray) -> PoolJoin:
    """Join table rows' sample ids [R] to the dataset's [N] (unique): each row's position or -1, and the positions
    no row names."""
    dataset_ids = np.asarray(dataset_ids, dtype=np.int64)
    table_ids = np.asarray(table_ids, dtype=np.int64)
    n = len(dataset_ids)
    rows = np.full(len(table_ids), -1, np.int64)
    if n and len(table_ids):
        order = np.argsort(dataset_ids, kind="stable")
        at = np.searchsorted(dataset_ids, table_ids, sorter=order)
        inside = at < n
        found = np.zeros(len(table_ids), bool)
        found[inside] = dataset_ids[order[at[inside]]] == table_ids[inside]
        rows[found] = order[at[found]]
    named = np.zeros(n, bool)
    named[rows[rows >= 0]] = True
    return PoolJoin(rows, np.flatnonzero(~named).astype(np.int64))


def _listed(items: list[str]) -> str:
    """The first LISTED items joined by commas, then "... and N more"."""
    more = len(items) - LISTED
    return ", ".join(items[:LISTED]) + (f", ... and {more} more" if more > 0 else "")


@dataclass(frozen=True)
class PoolChanges:
    """How the dataset's images differ from the stored pool (found by `TaskTables.read_pool`)."""

    gone_ids: np.ndarray  # [g] int64 sample ids of pool rows whose image is gone (rows kept in the store)
    gone_kinds: list[str]  # [g] what each of them was: labeled by a person, never selected, ...
    new_names: list[str]  # [n] file path (or sample id) of each image no pool row named: joined as never selected

    def lines(self) -> list[str]:
        """One line per change: the images gone, the images new; none when the pool matches the dataset."""
        out = []
        if len(self.gone_ids):
            counts = Counter(self.gone_kinds)
            order = [*GONE_KINDS.values(), NEVER_SELECTED]
            kinds = sorted(counts, key=lambda k: order.index(k) if k in order else len(order))
            what = kinds[0] if len(kinds) == 1 else ", ".join(f"{counts[k]} {k}" for k in kinds)
            g = len(self.gone_ids)
            ids = _listed([str(int(i)) for i in self.gone_ids])
            out.append(f"pool: {g} image{'s' * (g != 1)} gone since the last cycle ({what}: kept in the store, not"
                       f" trained on): sample id{'s' * (g != 1)} {ids}")
        if self.new_names:
            n = len(self.new_names)
            out.append(f"pool: {n} new image{'s' * (n != 1)} joined as unlabeled:"
                       f" {_listed([terminal(name, limit=200) for name in self.new_names])}")
        return out


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


def new_pool(config: mf.Manifest, rep: int, ds: DatasetSplits,
             features: Callable[[], np.ndarray | torch.Tensor] | None = None) -> PoolState:
    """The cycle-0 pool: the dataset's labeled tree, else active.initial images chosen by active.initial_strategy
    (balanced: the true labels, initial // C per class; random: uniformly, no label read; typiclust / probcover on
    `features()` `[N, D]`, asked only then), labeled by the simulated oracle, or left pending for a person (a
    human oracle without true labels). Seeded from (seed, rep, cycle 0, "initial"): never from the variant, so
    variants of one repetition share it."""
    truth = ds.train_labels.numpy()
    pool = PoolState.empty(len(truth))
    if ds.initial_positions is not None and len(ds.initial_positions):
        init = np.asarray(ds.initial_positions, dtype=np.int64)
        pool.mark_selected(init, 0)
        pool.apply_labels(init, truth[init], "initial")
        return pool
    rng = runtime.rng(config.seed, rep, 0, "initial")
    a = config.active
    pending = a.oracle == "human" and bool((truth < 0).any())
    strategy = mf.initial_strategy(a)
    if strategy in COLD_START_NAMES:
        if features is None:
            raise ValueError(f"new_pool: active.initial_strategy {strategy} needs the pool's features")
        try:
            init = np.sort(cold_start(strategy, features(), a.initial, rng, settings.strategy_params(config),
                                     ds.num_classes))
        except FloatingPointError as exc:
            raise AlctlError(f"active.initial_strategy {strategy}: {exc}") from None
    elif strategy == "random":
        init = np.sort(rng.choice(len(truth), a.initial, replace=False)).astype(np.int64)
    else:
        init = initial_labeled(truth, a.initial, ds.num_classes, rng)
    pool.mark_selected(init, 0)
    if not pending:
        pool.apply_labels(init, truth[init], "initial")
    return pool


class TaskTables:
    """The Parquet tables of one task directory, mapped onto the dataset's pool positions."""

    def __init__(self, root: Path, ds: DatasetSplits) -> None:
        """Bind to a task directory and the dataset whose sample ids its tables hold."""
        self.store = store.TaskStore(root)
        self.ds = ds
        self.ids = ds.train_ids.numpy()  # [N] int64 sample id of each pool position
        self.changes: PoolChanges | None = None  # set by read_pool: how the dataset differs from the stored pool

    @property
    def checkpoints(self) -> Path:
        """Directory of the task's checkpoints."""
        return self.store.checkpoints

    def path(self, name: str) -> Path:
        """Path of a table file."""
        return self.store.path(name)

    @property
    def pool_key(self) -> str:
        """A digest of the dataset's sample ids in position order: what position-keyed state (a training
        checkpoint's targets) is valid for."""
        return hashlib.blake2b(np.ascontiguousarray(self.ids, dtype=np.int64).tobytes(), digest_size=16).hexdigest()

    def positions(self, sample_ids: np.ndarray) -> np.ndarray:
        """Pool positions of sample ids [m]; ValueError when one is not in the dataset (check ids first)."""
        rows = join_ids(self.ids, sample_ids).rows
        if (rows < 0).any():
            raise ValueError(f"positions: {int((rows < 0).sum())} sample ids are not in the dataset's pool")
        return rows

    # ------------------------------------------------------------------ pool

    def read_pool(self) -> PoolState | None:
        """The pool table joined to the dataset by sample_id (None when absent): rows whose image is gone are left
        out (kept in the store), images no row names are never selected; `changes` says what differed."""
        if not self.store.exists("pool"):
            self.changes = None
            return None
        t = self.store.read("pool")
        join = join_ids(self.ids, t["sample_id"].to_numpy())
        here, pos = join.present, join.rows[join.present]
        state = PoolState.empty(len(self.ids))
        state.label[pos] = t["label"].to_numpy()[here]
        state.labeled_cycle[pos] = t["labeled_cycle"].to_numpy()[here]
        source = np.asarray(t["label_source"].to_pylist(), dtype=object)
        state.source[pos] = source[here]
        gone = join.gone
        cycles = t["labeled_cycle"].to_numpy()[gone]
        kinds = [NEVER_SELECTED if c < 0 else GONE_KINDS.get(str(src), f"labeled ({terminal(src, limit=40)})")
                 for c, src in zip(cycles.tolist(), source[gone].tolist())]
        paths = self.ds.train_paths
        names = [paths[p] if paths is not None else f"sample id {int(self.ids[p])}" for p in join.new.tolist()]
        self.changes = PoolChanges(t["sample_id"].to_numpy()[gone].astype(np.int64), kinds, names)
        return state

    def write_pool(self, state: PoolState) -> None:
        """Write the pool table: every dataset image in dataset order, then, verbatim, the stored rows whose image
        is gone (a file that comes back finds its row again)."""
        rows = store.to_table("pool", {
            "sample_id": self.ids, "label": state.label, "labeled_cycle": state.labeled_cycle,
            "label_source": state.source.tolist()})
        if self.store.exists("pool"):
            old = self.store.read("pool")
            gone = join_ids(self.ids, old["sample_id"].to_numpy()).gone
            if len(gone):
                rows = pa.concat_tables([rows, old.take(pa.array(gone))])
        self.store.write("pool", rows)

    # ------------------------------------------------------------------ progress and rollback

    def finished_cycles(self) -> int:
        """Number of cycles whose metrics row exists (cycles are finished in order)."""
        cycles = self.store.read("metrics")["cycle"].to_numpy()
        return int(cycles.max()) + 1 if len(cycles) else 0

    def rollback(self, done: int) -> None:
        """Drop score and pseudo rows of cycles >= done (an unfinished cycle), keeping the CEAL pseudo-labels that
        cycle done-1's selection wrote for cycle done."""
        for name in ("scores", "pseudo"):
            if not self.store.exists(name):
                continue
            t = self.store.read(name)
            cyc = t["cycle"].to_numpy()
            keep = cyc < done
            if name == "pseudo":
                keep |= (cyc == done) & (t["epoch"].to_numpy() == SELECTION_EPOCH)
            if not keep.all():
                self.store.write(name, t.filter(pa.array(keep)))

    # ------------------------------------------------------------------ scores and pseudo-labels

    def append_selection(self, cycle: int, strategy: str, unlabeled: np.ndarray, selection: Selection) -> None:
        """Append the cycle's scores (every candidate [n_u], selected flag) and the selection's pseudo-labels [m]
        for the next cycle's training (CEAL's), with their loss weights."""
        n = len(unlabeled)
        self.store.append("scores", store.to_table("scores", {
            "cycle": np.full(n, cycle, np.int32), "sample_id": self.ids[unlabeled], "strategy": [strategy] * n,
            "score": selection.scores.astype(np.float32), "selected": np.isin(unlabeled, selection.chosen)}))
        if len(selection.pseudo_positions):
            self.store.append("pseudo", self._pseudo_rows(cycle + 1, SELECTION_EPOCH, selection.pseudo_positions,
                                                          selection.pseudo_labels, selection.pseudo_weights))

    def scores_of(self, cycle: int) -> dict[int, float]:
        """sample_id -> score of the selection made at `cycle`."""
        scores = self.store.read("scores")
        rows = scores["cycle"].to_numpy() == cycle
        rows &= join_ids(self.ids, scores["sample_id"].to_numpy()).present  # gone images' scores are ignored
        last = scores.filter(pa.array(rows))
        return dict(zip(last["sample_id"].to_pylist(), last["score"].to_pylist()))

    def selection_pseudo(self, cycle: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The previous selection's pseudo-labels for the training of `cycle` (CEAL's): positions [m] int64,
        labels [m] int64 and loss weights [m] float32 (rows of images gone from the dataset are ignored)."""
        if not self.store.exists("pseudo"):
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
        t = self.store.read("pseudo")
        mask = (t["cycle"].to_numpy() == cycle) & (t["epoch"].to_numpy() == SELECTION_EPOCH)
        rows = join_ids(self.ids, t["sample_id"].to_numpy()[mask]).rows
        here = rows >= 0
        return (rows[here].astype(np.int64), t["pseudo_label"].to_numpy()[mask][here].astype(np.int64),
                t["weight"].to_numpy()[mask][here].astype(np.float32))

    def _pseudo_rows(self, cycle: int, epoch: int, positions: np.ndarray, labels: np.ndarray,
                     weights: np.ndarray) -> pa.Table:
        """Rows of pseudo.parquet for pool positions [m]."""
        n = len(positions)
        return store.to_table("pseudo", {
            "cycle": np.full(n, cycle, np.int32), "epoch": np.full(n, epoch, np.int32),
            "sample_id": self.ids[positions], "pseudo_label": labels, "weight": weights.astype(np.float32)})

    def replace_propagation(self, cycle: int, epoch: int, positions: np.ndarray, labels: np.ndarray,
                            weights: np.ndarray) -> None:
        """Write label propagation's pseudo-labels of (cycle, epoch) for positions [m], replacing earlier rows of
        the same pair."""
        old = self.store.read("pseudo")
        keep = ~((old["cycle"].to_numpy() == cycle) & (old["epoch"].to_numpy() == epoch))
        rows = self._pseudo_rows(cycle, epoch, positions, labels, weights)
        self.store.write("pseudo", pa.concat_tables([old.filter(pa.array(keep)), rows]))

    # ------------------------------------------------------------------ metrics

    def append_metrics(self, row: dict[str, Any]) -> None:
        """Append a cycle's metrics row (plain values per column; the mark that the cycle is finished)."""
        row = {**row, "finished_at": datetime.now(timezone.utc)}
        self.store.append("metrics", store.to_table("metrics", {k: [v] for k, v in row.items()}))

    def fill_pseudo_accuracy(self, cycle: int, accuracy: float, top_half: float | None) -> bool | None:
        """Fill the cycle's pseudo-label accuracy where its training recorded none (no pseudo-labels). Returns True
        when filled, False when the cycle keeps a value its training recorded, None when the cycle has no row."""
        if not self.store.exists("metrics"):
            return None
        metrics = self.store.read("metrics")
        new = {"pseudo_accuracy": accuracy, "pseudo_accuracy_top_half": top_half}
        old = {name: metrics[name].to_numpy(zero_copy_only=False).astype(np.float64) for name in new}
        this = metrics["cycle"].to_numpy() == cycle
        rows = this & np.isnan(old["pseudo_accuracy"])
        if not rows.any():
            return False if this.any() else None
        for name, value in new.items():
            metrics = metrics.set_column(metrics.schema.get_field_index(name), name,
                                         pa.array(np.where(rows, value, old[name]), pa.float64(), from_pandas=True))
        self.store.write("metrics", metrics)
        return True
