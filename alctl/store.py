"""The only Parquet I/O: table schemas as constants, atomic writes, reads, and task directories."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

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
TABLES: dict[str, pa.Schema] = {"pool": POOL, "scores": SCORES, "pseudo": PSEUDO, "metrics": METRICS}


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write bytes to `path` atomically: temporary file in the same directory, fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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
        schema = TABLES[name]
        if not self.exists(name):
            return schema.empty_table()
        return pq.read_table(self.path(name), schema=schema)

    def write(self, name: str, table: pa.Table) -> None:
        """Replace a table atomically after checking its schema."""
        schema = TABLES[name]
        if not table.schema.equals(schema, check_metadata=False):
            table = table.select(schema.names).cast(schema)
        atomic_write_table(self.path(name), table)

    def append(self, name: str, table: pa.Table) -> None:
        """Append rows (read + concatenate + atomic replace: the file is whole after every call)."""
        existing = self.read(name)
        self.write(name, pa.concat_tables([existing, table.select(existing.schema.names).cast(existing.schema)]))

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
