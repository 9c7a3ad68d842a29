"""Annotation files a person fills in: read `sample_id,label` CSV rows and check them against the pending selection."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from alctl.errors import UserError

MAX_LINES = 50  # problems listed before "... and N more"


def _class_index(value: str, classes: list[str]) -> int | None:
    """A label given by class name, else by integer index; None when it is neither."""
    if value in classes:
        return classes.index(value)
    try:
        index = int(value)
    except ValueError:
        return None
    return index if 0 <= index < len(classes) else None


def read_labels(
    path: Path, pool_ids: np.ndarray, pending_ids: np.ndarray, classes: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """(sample_ids [m] int64, labels [m] int64) of a labels CSV (header with sample_id and label columns; other
    columns ignored; rows with an empty label are not labeled yet and skipped). Every bad row is reported, one
    line each, in a single UserError, and nothing is returned then: unknown ids, ids not waiting for a label,
    unknown classes, conflicting duplicates, an empty file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UserError(f"--labels: {path} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"--labels: cannot read {path} ({type(exc).__name__})") from None
    rows = list(csv.reader(text.splitlines()))
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if not rows:
        raise UserError(f"{path}: empty file; expected a header `sample_id,label` and one row per labeled image")
    header = [h.strip().lower() for h in rows[0]]
    missing = [c for c in ("sample_id", "label") if c not in header]
    if missing:
        raise UserError(f"{path}:1: missing column(s) {', '.join(missing)} in the header (got {','.join(rows[0])})")
    i_id, i_label = header.index("sample_id"), header.index("label")
    pool = set(pool_ids.tolist())
    pending = set(pending_ids.tolist())
    problems: list[str] = []
    answers: dict[int, tuple[int, int]] = {}  # sample_id -> (label, line)
    for line, row in enumerate(rows[1:], start=2):
        cells = row + [""] * (max(i_id, i_label) + 1 - len(row))
        raw_id, raw_label = cells[i_id].strip(), cells[i_label].strip()
        if raw_label == "":
            continue
        try:
            sid = int(raw_id)
        except ValueError:
            problems.append(f"{path}:{line}: sample_id {raw_id!r} is not an integer")
            continue
        label = _class_index(raw_label, classes)
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
