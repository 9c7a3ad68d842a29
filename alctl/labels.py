"""Annotation files a person fills in: read `sample_id,label` CSV rows; check any annotations (CSV rows, Label Studio's)
against the pending selection."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alctl.data.classes import class_index
from alctl.errors import UserError

MAX_LINES = 50  # problems listed before "... and N more"


def read_labels_text(path: Path, option: str) -> str:
    """The text of a labels file a person gave (BOM dropped); a one-line UserError naming `option` when it is
    missing or unreadable."""
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UserError(f"{option}: {path} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{option}: cannot read {path} ({type(exc).__name__})") from None


def _filled(path: Path, option: str) -> list[tuple[int, str, str]]:
    """(line, sample_id text, label text) of each row of a labels CSV whose label is filled in, stripped; the
    header needs sample_id and label columns (any case, any order). UserError (naming `option`) when the file
    cannot be read or lacks those columns."""
    text = read_labels_text(path, option)
    rows = [(line, r) for line, r in enumerate(csv.reader(text.splitlines()), start=1) if any(c.strip() for c in r)]
    if not rows:
        raise UserError(f"{path}: empty file; expected a header `sample_id,label` and one row per labeled image")
    header = [h.strip().lower() for h in rows[0][1]]
    missing = [c for c in ("sample_id", "label") if c not in header]
    if missing:
        raise UserError(f"{path}:{rows[0][0]}: missing column(s) {', '.join(missing)} in the header"
                        f" (got {','.join(rows[0][1])})")
    i_id, i_label = header.index("sample_id"), header.index("label")
    out = []
    for line, row in rows[1:]:
        cells = row + [""] * (max(i_id, i_label) + 1 - len(row))
        if cells[i_label].strip():
            out.append((line, cells[i_id].strip(), cells[i_label].strip()))
    return out


def filled_ids(path: Path) -> set[int]:
    """The sample ids whose label is filled in, in a labels CSV read as `read_labels` reads it (rows whose id is
    not an integer are left out); UserError when it cannot be read as one."""
    ids = set()
    for _, raw_id, _ in _filled(Path(path), "--export"):
        try:
            ids.add(int(raw_id))
        except ValueError:
            continue
    return ids


@dataclass(frozen=True)
class Answer:
    """One label given for one image, and where it was read (a CSV row, a Label Studio annotation)."""

    where: str  # prefix of its problem lines, e.g. "out/to_label.csv:3" or "export.json: task 17 annotation 4"
    ref: str  # how a conflicting answer names this one, e.g. "line 3" or "task 17 annotation 4"
    raw_id: str  # the sample id as written
    raw_label: str  # a class name or index as written


def check_answers(
    answers: Sequence[Answer], pool_ids: np.ndarray, pending_ids: np.ndarray, classes: list[str],
    problems: Sequence[str] = (), empty: str = "no labels",
) -> tuple[np.ndarray, np.ndarray]:
    """(sample_ids [m] int64, labels [m] int64) of answers checked against the pending selection: every bad answer
    (an id that is not an integer, not in the pool or not waiting for a label, an unknown class, a conflicting
    duplicate) is one problem line; with any problem (those already found by the reader, `problems`, first) or no
    answer at all (`empty`), a single UserError listing them and nothing is returned."""
    pool = set(pool_ids.tolist())
    pending = set(pending_ids.tolist())
    found = list(problems)
    kept: dict[int, tuple[int, str]] = {}  # sample_id -> (label, ref of its first answer)
    for a in answers:
        try:
            sid = int(a.raw_id)
        except ValueError:
            found.append(f"{a.where}: sample_id {a.raw_id!r} is not an integer")
            continue
        label = class_index(a.raw_label, classes)
        if sid not in pool:
            found.append(f"{a.where}: sample_id {sid} is not in the pool")
        elif sid not in pending:
            found.append(f"{a.where}: sample_id {sid} is not waiting for a label (not in the pending selection)")
        if label is None:
            found.append(f"{a.where}: unknown class {a.raw_label!r}; valid: {', '.join(classes)} or"
                         f" 0..{len(classes) - 1}")
            continue
        if sid in kept and kept[sid][0] != label:
            found.append(f"{a.where}: sample_id {sid} labeled {classes[label]!r} here and"
                         f" {classes[kept[sid][0]]!r} on {kept[sid][1]}")
            continue
        kept.setdefault(sid, (label, a.ref))
    if not found and not kept:
        found.append(empty)
    if found:
        more = len(found) - MAX_LINES
        raise UserError(*(found[:MAX_LINES] + ([f"... and {more} more problems"] if more > 0 else [])))
    ids = np.fromiter(kept, dtype=np.int64, count=len(kept))
    labels = np.array([kept[int(i)][0] for i in ids], dtype=np.int64)
    return ids, labels


def read_labels(
    path: Path, pool_ids: np.ndarray, pending_ids: np.ndarray, classes: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """(sample_ids [m] int64, labels [m] int64) of a labels CSV (header with sample_id and label columns; other
    columns ignored; rows with an empty label are not labeled yet and skipped). Every bad row is reported, one
    line each, in a single UserError, and nothing is returned then: unknown ids, ids not waiting for a label,
    unknown classes, conflicting duplicates, an empty file."""
    path = Path(path)
    answers = [Answer(f"{path}:{line}", f"line {line}", raw_id, raw_label)
               for line, raw_id, raw_label in _filled(path, "--labels")]
    return check_answers(answers, pool_ids, pending_ids, classes,
                         empty=f"{path}: no labels: every row's label column is empty")
