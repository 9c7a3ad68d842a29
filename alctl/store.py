"""The only Parquet I/O: table schemas as constants, atomic writes, reads, and task directories."""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from alctl.errors import TaskLockedError, UserError

POOL = pa.schema(
    [
        ("sample_id", pa.int64()),
        ("label", pa.int64()),  # the label given by the annotator; -1 while unlabeled
        ("labeled_cycle", pa.int32()),  # cycle whose training first used the label; -1 = unlabeled
        ("label_source", pa.string()),  # initial | oracle | human ; "" while unlabeled
    ]
)
SCORES = pa.schema(
    [
        ("cycle", pa.int32()),
        ("sample_id", pa.int64()),
        ("strategy", pa.string()),
        ("score", pa.float32()),
        ("selected", pa.bool_()),
    ]
)
PSEUDO = pa.schema(
    [
        ("cycle", pa.int32()),
        ("epoch", pa.int32()),
        ("sample_id", pa.int64()),
        ("pseudo_label", pa.int64()),
        ("weight", pa.float32()),
    ]
)
METRICS = pa.schema(
    [
        ("task", pa.int32()),
        ("task_key", pa.string()),
        ("strategy", pa.string()),
        ("variant", pa.string()),
        ("rep", pa.int32()),
        ("cycle", pa.int32()),
        ("n_labeled", pa.int64()),
        ("n_pseudo", pa.int64()),
        ("accuracy", pa.float64()),
        ("loss", pa.float64()),
        ("pseudo_accuracy", pa.float64()),  # accuracy of pseudo-labels on U (null when none)
        ("pseudo_accuracy_top_half", pa.float64()),  # same among the most certain half
        ("seconds_pretrain", pa.float64()),
        ("seconds_train", pa.float64()),
        ("seconds_eval", pa.float64()),
        ("seconds_propagate", pa.float64()),
        ("seconds_select", pa.float64()),
        ("seconds_total", pa.float64()),
        ("peak_memory_mb", pa.float64()),
        ("device", pa.string()),
        ("manifest_hash", pa.string()),
        ("finished_at", pa.timestamp("s", tz="UTC")),
    ]
)
PRETRAIN = pa.schema(
    [
        ("epoch", pa.int32()),
        ("kmeans_loss", pa.float64()),
        ("nmi_previous", pa.float64()),  # NMI between this epoch's clusters and the previous epoch's (null at 0)
        ("nmi_labels", pa.float64()),  # NMI between clusters and the true labels (null when unknown)
        ("reseeded", pa.int32()),  # empty clusters re-seeded
        ("train_loss", pa.float64()),
        ("seconds", pa.float64()),
        ("seconds_kmeans", pa.float64()),
        ("knn_accuracy", pa.float64()),  # test accuracy of a kNN vote on the encoder's features (null when unknown)
    ]
)
TABLES: dict[str, pa.Schema] = {
    "pool": POOL, "scores": SCORES, "pseudo": PSEUDO, "metrics": METRICS, "pretrain": PRETRAIN,
}


def _umask() -> int:
    """The process umask (read without changing it for long)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temp_file(path: Path) -> tuple[int, str]:
    """A temporary file beside `path`, readable like any file the user creates (mkstemp's 0600 relaxed by umask).
    A file standing where a folder of `path` should be is a UserError naming it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocking = next((p for p in [path.parent, *path.parent.parents] if p.exists() and not p.is_dir()), path.parent)
        raise UserError(f"{blocking}: is a file, but {path} needs a folder there") from None
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_umask())
    return fd, tmp


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write bytes to `path` atomically: temporary file in the same directory, fsync, rename."""
    fd, tmp = _temp_file(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_table(path: Path, table: pa.Table) -> None:
    """Write a Parquet table atomically (never a half-written file under `path`)."""
    fd, tmp = _temp_file(path)
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def to_table(name: str, columns: dict[str, Any]) -> pa.Table:
    """Build a table of the named schema from column arrays/lists (missing nullable columns become null)."""
    schema = TABLES[name]
    n = len(next(iter(columns.values()))) if columns else 0
    arrays = []
    for field in schema:
        if field.name in columns:
            arrays.append(pa.array(columns[field.name], type=field.type))
        else:
            arrays.append(pa.nulls(n, type=field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def read_table(path: Path, name: str) -> pa.Table:
    """Read the table file `path` cast to schema `name`; an absent file is an empty table."""
    schema = TABLES[name]
    if not Path(path).is_file():
        return schema.empty_table()
    return pq.read_table(path, schema=schema)


def write_table(path: Path, name: str, table: pa.Table) -> None:
    """Replace the table file `path` atomically after casting to schema `name`."""
    schema = TABLES[name]
    if not table.schema.equals(schema, check_metadata=False):
        table = table.select(schema.names).cast(schema)
    atomic_write_table(Path(path), table)


def append_table(path: Path, name: str, table: pa.Table) -> None:
    """Append rows (read + concatenate + atomic replace: the file is whole after every call)."""
    existing = read_table(path, name)
    write_table(path, name, pa.concat_tables([existing, table.select(existing.schema.names).cast(existing.schema)]))


class TaskStore:
    """Tables of one task directory: runs/<name>/tasks/<task-key>/."""

    def __init__(self, root: Path) -> None:
        """Bind to a task directory (created on first write)."""
        self.root = Path(root)

    def path(self, name: str) -> Path:
        """Path of a table file."""
        return self.root / f"{name}.parquet"

    def exists(self, name: str) -> bool:
        """True when the table has been written."""
        return self.path(name).is_file()

    def read(self, name: str) -> pa.Table:
        """Read a table, cast to its schema; an absent table is empty."""
        return read_table(self.path(name), name)

    def write(self, name: str, table: pa.Table) -> None:
        """Replace a table atomically after checking its schema."""
        write_table(self.path(name), name, table)

    def append(self, name: str, table: pa.Table) -> None:
        """Append rows atomically."""
        append_table(self.path(name), name, table)

    @property
    def checkpoints(self) -> Path:
        """Directory of model checkpoints."""
        return self.root / "checkpoints"


def read_metrics_dataset(run: Path) -> pa.Table:
    """Every task's metrics.parquet under runs/<name>/tasks/** as one table."""
    files = sorted(Path(run).glob("tasks/**/metrics.parquet"))
    if not files:
        return METRICS.empty_table()
    return pa.concat_tables([pq.read_table(f, schema=METRICS) for f in files])


# ----------------------------------------------------------------------------- locks

STALE_SECONDS = 600.0  # a lock of another host whose heartbeat is older than this is taken over


def _pid_alive(pid: int) -> bool:
    """True when a process with this pid exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Lock:
    """An exclusive lock file (pid, host, start time) with heartbeats; a dead owner's lock is taken over.

    Same host: the owner is alive when its pid exists. Other host (shared run directory): the lock is stale when
    its heartbeat (file mtime, refreshed by `beat()`) is older than STALE_SECONDS.
    """

    def __init__(self, path: Path, what: str) -> None:
        """Bind to a lock path; `what` names the locked thing in messages."""
        self.path = Path(path)
        self.what = what
        self.held = False

    def owner(self) -> dict[str, Any] | None:
        """The current owner record, or None when the file vanished or is unreadable (being written)."""
        try:
            return json.loads(self.path.read_text())
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            return None

    def is_stale(self, owner: dict[str, Any]) -> bool:
        """True when the owner is dead (same host) or silent for STALE_SECONDS (other host)."""
        if owner.get("host") == socket.gethostname():
            return not _pid_alive(int(owner.get("pid", -1)))
        try:
            return time.time() - self.path.stat().st_mtime > STALE_SECONDS
        except FileNotFoundError:
            return True

    def try_acquire(self) -> dict[str, Any] | None:
        """Take the lock; returns None on success, else the live owner's record."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self.owner()
                if owner is None:
                    time.sleep(0.05)
                    continue
                if not self.is_stale(owner):
                    return owner
                # take a stale lock over: only one contender wins the rename
                grave = self.path.with_name(f"{self.path.name}.stale.{os.getpid()}")
                try:
                    os.replace(self.path, grave)
                except FileNotFoundError:
                    continue
                grave.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(json.dumps(record))
            self.held = True
            return None
        owner = self.owner()
        return owner or {"pid": "?", "host": "?", "since": "?"}

    def acquire(self) -> "Lock":
        """Take the lock or raise TaskLockedError (exit 2) naming the owner."""
        owner = self.try_acquire()
        if owner is not None:
            raise TaskLockedError(
                f"{self.what} is being run by process {owner.get('pid')} on {owner.get('host')} since"
                f" {owner.get('since')} (lock {self.path}); wait for it, or remove the lock if that process is gone"
            )
        return self

    def wait(self, poll: float = 1.0, on_wait: Any = None) -> "Lock":
        """Take the lock, waiting (polling) while a live owner holds it; on_wait(owner) is called once."""
        told = False
        while (owner := self.try_acquire()) is not None:
            if not told and on_wait is not None:
                on_wait(owner)
                told = True
            time.sleep(poll)
        return self

    def beat(self) -> None:
        """Refresh the heartbeat (mtime) of a held lock."""
        if self.held:
            os.utime(self.path, None)

    def release(self) -> None:
        """Remove the lock if this process holds it."""
        if self.held:
            owner = self.owner()
            if owner is not None and owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
                self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> "Lock":
        """Acquire (exit 2 when held elsewhere)."""
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        """Release."""
        self.release()
