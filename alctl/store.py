"""The only Parquet I/O: table schemas as constants, atomic writes, reads, and task directories."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
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
        # per-class figures (added later, at the end: older files read with them null, older readers skip them)
        ("balanced_accuracy", pa.float64()),  # mean recall over the test classes
        ("macro_f1", pa.float64()),
        ("recall_per_class", pa.list_(pa.float64())),  # [C] test recall of each class (null: absent from the test)
        ("labeled_per_class", pa.list_(pa.int64())),  # [C] labeled images of each class the cycle trained on
        ("pool_per_class", pa.list_(pa.int64())),  # [C] pool images of each class (null: the truth is unknown)
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
# A malformed lock file younger than this may be one an older alctl is writing (it created the file, then wrote
# the record); it is waited for that long, then taken over. This version never leaves a partial record: every
# decision is taken under the guard and the record is written whole (temporary file + rename).
GRACE_SECONDS = 1.0
_MAX_RECORD_BYTES = 64 * 1024  # a lock record is a few dozen bytes; anything longer is not one
_MAX_PID = 2**31  # os.kill refuses larger pids; 0 and negatives address process groups, never one owner


def _pid_alive(pid: int) -> bool:
    """True when a process with this pid exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def parse_lock_record(raw: bytes) -> dict[str, Any] | None:
    """The owner record {"pid": int > 0, "host": str, "since": str} in a lock file's bytes; None when the bytes are
    empty, not JSON, or not such a record (a crash or a full disk left them, or someone else wrote them)."""
    if not raw or len(raw) > _MAX_RECORD_BYTES:
        return None
    try:
        record = json.loads(raw)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None
    if not isinstance(record, dict):
        return None
    pid, host, since = record.get("pid"), record.get("host"), record.get("since", "")
    if type(pid) is not int or not 0 < pid < _MAX_PID or not isinstance(host, str) or not host:
        return None
    if not isinstance(since, str):
        return None
    return record


class Lock:
    """An exclusive lock file (pid, host, start time) with heartbeats; a dead owner's lock is taken over.

    Same host: the owner is alive when its pid exists. Other host (shared run directory): the lock is stale when
    its heartbeat (file mtime, refreshed by `beat()`) is older than STALE_SECONDS. Every decision (take a free or
    stale lock, release) is made while holding an exclusive fcntl lock on the guard file `<lock>.guard` beside it,
    which the kernel releases when its process dies, so two contenders never both take over one dead owner's lock;
    the record is written to a temporary file and renamed over the lock, so it is never seen empty or partial.
    An empty or malformed lock file (a crash or a full disk while an older version wrote it) is taken over.
    """

    def __init__(self, path: Path, what: str) -> None:
        """Bind to a lock path; `what` names the locked thing in messages."""
        self.path = Path(path)
        self.what = what
        self.held = False

    @property
    def guard_path(self) -> Path:
        """The guard file whose fcntl lock serialises every acquire and release of this lock."""
        return self.path.with_name(f"{self.path.name}.guard")

    @contextmanager
    def _guarded(self) -> Iterator[None]:
        """Hold the guard file's exclusive fcntl lock (blocking: it is only ever held for a moment)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.guard_path, os.O_CREAT | os.O_RDWR, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the flock

    def _read(self) -> tuple[bytes, float] | None:
        """The lock file's bytes (at most one more than a record may have) and mtime; None when there is none."""
        try:
            with open(self.path, "rb") as fh:
                return fh.read(_MAX_RECORD_BYTES + 1), os.fstat(fh.fileno()).st_mtime
        except FileNotFoundError:
            return None
        except OSError as exc:  # a folder or an unreadable file where the lock should be
            raise UserError(f"{self.path}: cannot read this lock ({exc.strerror}); remove it if no alctl process"
                            f" runs {self.what}") from None

    def owner(self) -> dict[str, Any] | None:
        """The current owner record, or None when there is no lock file or it holds no valid record."""
        found = self._read()
        return None if found is None else parse_lock_record(found[0])

    def is_stale(self, owner: dict[str, Any]) -> bool:
        """True when the owner is dead (same host) or silent for STALE_SECONDS (other host)."""
        if owner.get("host") == socket.gethostname():
            pid = owner.get("pid")
            return type(pid) is not int or not 0 < pid < _MAX_PID or not _pid_alive(pid)
        try:
            return time.time() - self.path.stat().st_mtime > STALE_SECONDS
        except FileNotFoundError:
            return True

    def _live_owner(self) -> dict[str, Any] | None:
        """Under the guard: the record of a live owner, or None when the lock is free to take (absent, stale, or
        malformed and older than GRACE_SECONDS)."""
        waited = time.monotonic()
        while (found := self._read()) is not None:
            raw, mtime = found
            owner = parse_lock_record(raw)
            if owner is not None:
                return None if self.is_stale(owner) else owner
            age = time.time() - mtime
            if not 0.0 <= age < GRACE_SECONDS or time.monotonic() - waited >= GRACE_SECONDS:
                return None  # empty or malformed, and nobody is writing it
            time.sleep(0.05)
        return None

    def try_acquire(self) -> dict[str, Any] | None:
        """Take the lock; returns None on success, else the live owner's record."""
        record = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        with self._guarded():
            owner = self._live_owner()
            if owner is not None:
                return owner
            atomic_write_bytes(self.path, json.dumps(record).encode())  # replaces a stale or malformed record
            self.held = True
        return None

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
            with self._guarded():
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
