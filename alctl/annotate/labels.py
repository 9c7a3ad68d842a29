"""Annotation files a person fills in: read `sample_id,label` CSV rows; check any annotations (CSV rows, Label Studio's)
against the pending selection.

Every read of a person's file is bounded: at most CSV_LIMIT bytes of a labels CSV (streamed, so memory follows the
filled-in rows, not the file) and JSON_LIMIT bytes of a JSON file (parsed whole); a file over its limit, a special
file such as /dev/zero included, is refused after reading one byte more than the limit.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from alctl.data.classes import class_index
from alctl.errors import UserError
from alctl.safe_text import csv_value, terminal

MAX_LINES = 50  # problems listed before "... and N more"
MIB = 1 << 20
# to_label.csv of a whole 60,000-image pool is ~15 MB (sample_id, a path, the score, three guesses with their
# probabilities, the label: ~250 bytes a row); 64 MiB leaves 4x for long paths and extra columns.
CSV_LIMIT = 64 * MIB
# Label Studio's JSON export of 60,000 tasks, each with an annotation and a prediction, is ~120 MB (~2 KB a task);
# 256 MiB leaves 2x for a second annotator.
JSON_LIMIT = 256 * MIB
_CHUNK = MIB
_SAMPLE_ID = re.compile(r" *([0-9]{1,19}) *")  # ASCII digits only: no "2_34", no "٣", no sign; int64 checked


def size_text(limit: int) -> str:
    """A byte count as people read it: `64 MiB`, `512 KiB`, `100 bytes`."""
    for unit, size in (("GiB", 1 << 30), ("MiB", MIB), ("KiB", 1 << 10)):
        if limit >= size and limit % size == 0:
            return f"{limit // size} {unit}"
    return f"{limit} bytes"


def read_bounded(stream: BinaryIO, limit: int) -> bytearray | None:
    """At most `limit` bytes of a binary stream (a file, an HTTP reply) read in chunks into one buffer; None when
    it holds more (one byte past the limit is the most ever read)."""
    parts = bytearray()
    while len(parts) <= limit:
        chunk = stream.read(min(_CHUNK, limit + 1 - len(parts)))
        if not chunk:
            return parts
        parts += chunk
    return None


class _TooLarge(Exception):
    """A bounded stream went past its limit."""


class _Bounded(io.RawIOBase):
    """A raw binary file that raises _TooLarge once more than `limit` bytes were read from it."""

    def __init__(self, raw: BinaryIO, limit: int) -> None:
        """Wrap an unbuffered binary file."""
        super().__init__()
        self._raw = raw
        self._left = limit

    def readable(self) -> bool:
        """A reader."""
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        """Fill `buffer` from the file, counting against the limit."""
        view = memoryview(buffer)
        n = self._raw.readinto(view[: min(len(view), self._left + 1)])  # type: ignore[attr-defined]
        n = n or 0
        self._left -= n
        if self._left < 0:
            raise _TooLarge
        return n


def _open_error(path: Path, option: str, exc: OSError) -> UserError:
    """The one line for a labels file that cannot be opened or read."""
    if isinstance(exc, FileNotFoundError):
        return UserError(f"{option}: {path} not found")
    return UserError(f"{option}: cannot read {path} ({type(exc).__name__})")


def _too_large(path: Path, option: str, limit: int) -> UserError:
    """The one line for a labels file over its size limit."""
    return UserError(f"{option}: {path} is larger than {size_text(limit)}, the most alctl reads of a labels file;"
                     " split it and import the parts one after the other")


def read_labels_text(path: Path, option: str, limit: int = JSON_LIMIT) -> str:
    """The text of a labels file a person gave (BOM dropped), at most `limit` bytes; a one-line UserError naming
    `option` when it is missing, unreadable, not UTF-8 or larger."""
    path = Path(path)
    try:
        with path.open("rb", buffering=0) as fh:
            data = read_bounded(fh, limit)  # type: ignore[arg-type]
    except OSError as exc:
        raise _open_error(path, option, exc) from None
    if data is None:
        raise _too_large(path, option, limit)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"{option}: cannot read {path} (UnicodeDecodeError: not UTF-8 text)") from None


def _csv_rows(path: Path, option: str, limit: int) -> Iterator[tuple[int, list[str]]]:
    """(line, cells) of each non-blank record of a CSV file, streamed and at most `limit` bytes; one-line
    UserErrors for a missing, unreadable, non-UTF-8, malformed or too large file."""
    try:
        raw = path.open("rb", buffering=0)
    except OSError as exc:
        raise _open_error(path, option, exc) from None
    reader = None
    try:
        with io.TextIOWrapper(io.BufferedReader(_Bounded(raw, limit)), encoding="utf-8-sig", newline="") as text:  # type: ignore[arg-type]
            reader = csv.reader(text)
            for row in reader:
                if any(c.strip() for c in row):
                    yield reader.line_num, row
    except _TooLarge:
        raise _too_large(path, option, limit) from None
    except UnicodeDecodeError:
        raise UserError(f"{option}: cannot read {path} (UnicodeDecodeError: not UTF-8 text)") from None
    except csv.Error as exc:
        line = f":{reader.line_num}" if reader is not None else ""
        raise UserError(f"{path}{line}: not a CSV row ({exc})") from None
    except OSError as exc:
        raise _open_error(path, option, exc) from None
    finally:
        raw.close()


def _filled(path: Path, option: str) -> Iterator[tuple[int, str, str]]:
    """(line, sample_id text, label text) of each row of a labels CSV whose label is filled in, stripped (and the
    quote `safe_text.csv_cell` put before a formula-like label removed), streamed; the header needs sample_id and
    label columns (any case, any order). UserError (naming `option`) when the file cannot be read, is over
    CSV_LIMIT or lacks those columns."""
    rows = _csv_rows(path, option, CSV_LIMIT)
    first = next(rows, None)
    if first is None:
        raise UserError(f"{path}: empty file; expected a header `sample_id,label` and one row per labeled image")
    header_line, header_row = first
    header = [h.strip().lower() for h in header_row]
    missing = [c for c in ("sample_id", "label") if c not in header]
    if missing:
        rows.close()
        raise UserError(f"{path}:{header_line}: missing column(s) {', '.join(missing)} in the header"
                        f" (got {terminal(','.join(header_row), limit=200)})")
    i_id, i_label = header.index("sample_id"), header.index("label")
    for line, row in rows:
        label = row[i_label].strip() if i_label < len(row) else ""
        if label:
            yield line, (row[i_id].strip() if i_id < len(row) else ""), csv_value(label)


def parse_sample_id(text: str) -> int | None:
    """The sample id written as `text`: plain ASCII decimal digits, spaces around allowed; None for anything else
    (signs, `2_34`, non-ASCII digits, fractions, values past int64)."""
    found = _SAMPLE_ID.fullmatch(text)
    value = int(found.group(1)) if found else None
    return value if value is not None and value < 2**63 else None  # image-folder ids take 19 digits


@dataclass(frozen=True)
class Unimported:
    """Filled-in rows of a labels CSV that a task does not hold: how many, and the first few."""

    count: int
    first: list[str]  # e.g. "line 3 (sample_id 17)"


def unimported_labels(path: Path, labeled: dict[int, int], classes: list[str], option: str = "--export",
                      show: int = 3) -> Unimported:
    """The filled-in rows of a labels CSV whose label the task does not hold already (`labeled`: sample_id ->
    class of every labeled image): an id that is not labeled there, another class, or a row that is not a label
    at all; those rows would be lost if the file were replaced."""
    count, first = 0, []
    for line, raw_id, raw_label in _filled(Path(path), option):
        sid = parse_sample_id(raw_id)
        if sid is not None and sid in labeled and class_index(raw_label, classes) == labeled[sid]:
            continue
        count += 1
        if len(first) < show:
            first.append(f"line {line} (sample_id {terminal(raw_id, limit=40)})")
    return Unimported(count, first)


@dataclass(frozen=True)
class Answer:
    """One label given for one image, and where it was read (a CSV row, a Label Studio annotation)."""

    where: str  # prefix of its problem lines, e.g. "out/to_label.csv:3" or "export.json: task 17 annotation 4"
    ref: str  # how a conflicting answer names this one, e.g. "line 3" or "task 17 annotation 4"
    raw_id: str  # the sample id as written
    raw_label: str  # a class name or index as written


def check_answers(
    answers: Iterable[Answer], pool_ids: np.ndarray, pending_ids: np.ndarray, classes: list[str],
    problems: Iterable[str] = (), empty: str = "no labels",
) -> tuple[np.ndarray, np.ndarray]:
    """(sample_ids [m] int64, labels [m] int64) of answers (consumed one at a time) checked against the pending
    selection: every bad answer (an id that is not a plain decimal integer, not in the pool or not waiting for a
    label, an unknown class, a conflicting duplicate) is one problem line; with any problem (those already found
    by the reader, `problems`, first) or no answer at all (`empty`), a single UserError listing the first
    MAX_LINES of them and nothing is returned."""
    pool = set(pool_ids.tolist())
    pending = set(pending_ids.tolist())
    found: list[str] = []
    more = 0

    def problem(line: str) -> None:
        nonlocal more
        if len(found) < MAX_LINES:
            found.append(line)
        else:
            more += 1

    for line in problems:
        problem(line)
    kept: dict[int, tuple[int, str]] = {}  # sample_id -> (label, ref of its first answer)
    for a in answers:
        sid = parse_sample_id(a.raw_id)
        if sid is None:
            problem(f"{a.where}: sample_id {terminal(repr(a.raw_id), limit=60)} is not an integer (write it with"
                    " the digits 0-9 only, as exported)")
            continue
        label = class_index(a.raw_label, classes)
        if sid not in pool:
            problem(f"{a.where}: sample_id {sid} is not in the pool")
        elif sid not in pending:
            problem(f"{a.where}: sample_id {sid} is not waiting for a label (not in the pending selection)")
        if label is None:
            problem(f"{a.where}: unknown class {terminal(repr(a.raw_label), limit=80)}; valid:"
                    f" {terminal(', '.join(classes))} or 0..{len(classes) - 1}")
            continue
        if sid in kept and kept[sid][0] != label:
            problem(f"{a.where}: sample_id {sid} labeled {terminal(repr(classes[label]))} here and"
                    f" {terminal(repr(classes[kept[sid][0]]))} on {kept[sid][1]}")
            continue
        kept.setdefault(sid, (label, a.ref))
    if not found and not kept:
        found.append(empty)
    if found:
        raise UserError(*(found + ([f"... and {more} more problems"] if more > 0 else [])))
    ids = np.fromiter(kept, dtype=np.int64, count=len(kept))
    labels = np.array([kept[int(i)][0] for i in ids], dtype=np.int64)
    return ids, labels


def read_labels(
    path: Path, pool_ids: np.ndarray, pending_ids: np.ndarray, classes: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """(sample_ids [m] int64, labels [m] int64) of a labels CSV (header with sample_id and label columns; other
    columns ignored; rows with an empty label are not labeled yet and skipped), read as a stream of at most
    CSV_LIMIT bytes. Every bad row is reported, one line each, in a single UserError, and nothing is returned then:
    ids that are not plain decimal integers, unknown ids, ids not waiting for a label, unknown classes, conflicting
    duplicates, an empty file."""
    path = Path(path)
    answers = (Answer(f"{path}:{line}", f"line {line}", raw_id, raw_label)
               for line, raw_id, raw_label in _filled(path, "--labels"))
    return check_answers(answers, pool_ids, pending_ids, classes,
                         empty=f"{path}: no labels: every row's label column is empty")
