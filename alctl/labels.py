"""Annotation files a person fills in: read `sample_id,label` CSV rows and check them against the pending selection."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from alctl.data.classes import class_index
from alctl.errors import UserError

MAX_LINES = 50  # problems listed before "... and N more"


def _filled(path: Path, option: str) -> list[tuple[int, str, str]]:
    """(line, sample_id text, label text) of each row of a labels CSV whose label is filled in, stripped; the
    header needs sample_id and label columns (any case, any order). UserError (naming `option`) when the file
    cannot be read or lacks those columns."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UserError(f"{option}: {path} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{option}: cannot read {path} ({type(exc).__name__})") from None
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


def read_labels(
    path: Path, pool_ids: np.ndarray, pending_ids: np.ndarray, classes: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """(sample_ids [m] int64, labels [m] int64) of a labels CSV (header with sample_id and label columns; other
    columns ignored; rows with an empty label are not labeled yet and skipped). Every bad row is reported, one
    line each, in a single UserError, and nothing is returned then: unknown ids, ids not waiting for a label,
    unknown classes, conflicting duplicates, an empty file."""
    path = Path(path)
    pool = set(pool_ids.tolist())
    pending = set(pending_ids.tolist())
    problems: list[str] = []
    answers: dict[int, tuple[int, int]] = {}  # sample_id -> (label, line)
    for line, raw_id, raw_label in _filled(path, "--labels"):
        try:
            sid = int(raw_id)
        except ValueError:
            problems.append(f"{path}:{line}: sample_id {raw_id!r} is not an integer")
            continue
        label = class_index(raw_label, classes)
        if sid not in pool:
            problems.append(f"{path}:{line}: sample_id {sid} is not in the pool")
        elif sid not in pending:
            problems.append(f"{path}:{line}: sample_id {sid} is not waiting for a label (not in the pending selection)")
        if label is None:
            problems.append(f"{path}:{line}: unknown class {raw_label!r}; valid: {', '.join(classes)} or 0..{len(classes) - 1}")
            continue
        if sid in answers and answers[sid][0] != label:
            first = answers[sid][1]
            problems.append(f"{path}:{line}: sample_id {sid} labeled {classes[label]!r} here and"
                            f" {classes[answers[sid][0]]!r} on line {first}")
            continue
        answers.setdefault(sid, (label, line))
    if not problems and not answers:
        problems.append(f"{path}: no labels: every row's label column is empty")
    if problems:
        more = len(problems) - MAX_LINES
        raise UserError(*(problems[:MAX_LINES] + ([f"... and {more} more problems"] if more > 0 else [])))
    ids = np.fromiter(answers, dtype=np.int64, count=len(answers))
    labels = np.array([answers[int(i)][0] for i in ids], dtype=np.int64)
    return ids, labels
