"""The `imagefolder` dataset: the user's own PNG/JPEG files, class trees and truth CSV, as a `DatasetSplits`.

Its labels are -1 where unknown; its sample ids are hashes of the file's path relative to
`root` (see `path_sample_id`), so they survive files being added or removed.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from alctl.data.classes import class_index
from alctl.data.images import DatasetSplits, channel_stats, one_line
from alctl.errors import DataMissingError, UserError

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg")  # matched case-insensitively
_UNSUPPORTED_SUFFIXES = (".gif", ".bmp", ".webp", ".tif", ".tiff")  # listed in `skipped`, not ignored
_MAX_LINES = 20  # problem lines listed before "... and N more"
_SERIAL_BELOW = 64  # files; fewer are decoded without a thread pool


def path_sample_id(relative_path: str) -> int:
    """Stable sample id of an imagefolder file: 8-byte blake2b digest of its POSIX path, top bit cleared (int63)."""
    digest = hashlib.blake2b(relative_path.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") & 0x7FFF_FFFF_FFFF_FFFF


@dataclass(frozen=True)
class _File:
    """One image file found by a scan."""

    path: Path  # as found (root / field / ...), symlinks not resolved
    rel: str  # its id path (see _rel_path)
    label: int  # class index; -1 = unknown
    labeled: bool  # came from the `labeled` tree


@dataclass(frozen=True)
class _Tree:
    """A class tree `class_name/...`: its folder, class folder names (sorted) and their images."""

    key: str  # manifest field: labeled | test
    folder: Path
    files: dict[str, list[Path]]  # class folder name -> images under it (any depth)


def _capped(lines: list[str], limit: int = _MAX_LINES) -> list[str]:
    """At most `limit` problem lines, then one "... and N more" line."""
    if len(lines) <= limit:
        return lines
    return lines[:limit] + [f"... and {len(lines) - limit} more"]


def _rel_path(path: str | Path, root: Path) -> str:
    """POSIX path of a file relative to `root` when it lies inside root, else its absolute POSIX path."""
    full = os.path.abspath(path)
    try:
        rel = os.path.relpath(full, os.path.abspath(root))
    except ValueError:  # another drive (Windows)
        return Path(full).as_posix()
    outside = rel == os.pardir or rel.startswith(os.pardir + os.sep)
    return Path(full).as_posix() if outside else Path(rel).as_posix()


def _under_root(root: Path, value: str | Path) -> Path:
    """A dataset field's path: relative to root unless absolute."""
    path = Path(value)
    return path if path.is_absolute() else root / path


def _folder(root: Path, value: str | Path, key: str) -> Path:
    """The directory a dataset field names; DataMissingError when it does not exist."""
    folder = _under_root(root, value)
    if not folder.is_dir():
        what = "is not a directory" if folder.exists() else "not found"
        raise DataMissingError(f"dataset.{key}: folder {folder} {what}; create it or fix dataset.{key} / dataset.root")
    return folder


def _is_image_name(name: str) -> bool:
    """True for a visible file name with a PNG/JPEG suffix (any case)."""
    return not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES)


def _scan(folder: Path, exclude: set[str], notes: list[str], root: Path) -> list[Path]:
    """Every PNG/JPEG under `folder` at any depth, except hidden entries and folders whose real path is excluded.

    Symlinked folders are followed, each real folder once. Unreadable folders and files in an
    unsupported image format (GIF, BMP, WebP, TIFF) are appended to `notes` as "path: reason".
    """
    found: list[Path] = []
    visited: set[str] = set()

    def unreadable(exc: OSError) -> None:
        where = exc.filename if exc.filename is not None else folder
        notes.append(f"{_rel_path(where, root)}: folder not readable ({exc.strerror or exc})")

    for dirpath, dirnames, filenames in os.walk(folder, onerror=unreadable, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in visited:
            dirnames[:] = []
            continue
        visited.add(real)
        dirnames[:] = [
            d for d in dirnames if not d.startswith(".") and os.path.realpath(os.path.join(dirpath, d)) not in exclude
        ]
        base = Path(dirpath)
        for name in filenames:
            if _is_image_name(name):
                found.append(base / name)
            elif not name.startswith(".") and name.lower().endswith(_UNSUPPORTED_SUFFIXES):
                notes.append(f"{_rel_path(base / name, root)}: unsupported image format (convert it to PNG or JPEG)")
    return found


def _scan_tree(key: str, folder: Path, exclude: set[str], notes: list[str], root: Path) -> _Tree:
    """Read a class tree; an image directly in its top folder (no class) is a UserError."""
    files: dict[str, list[Path]] = {}
    stray: list[str] = []
    with os.scandir(folder) as entries:
        ordered = sorted(entries, key=lambda e: e.name)
    for entry in ordered:
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            if os.path.realpath(entry.path) not in exclude:
                files[entry.name] = _scan(Path(entry.path), exclude, notes, root)
        elif _is_image_name(entry.name):
            stray.append(
                f"dataset.{key}: {_rel_path(entry.path, root)} is not inside a class folder;"
                f" {key} must be a tree class_name/image (move it into its class folder)"
            )
    if stray:
        raise UserError(*_capped(stray))
    return _Tree(key, folder, files)


def _short_list(names: Sequence[str], limit: int = 10) -> str:
    """Names joined by commas, the first `limit` of them."""
    return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")


def _class_names(classes: Sequence[str] | None, trees: list[_Tree], root: Path) -> list[str]:
    """Class names in index order: explicit `classes`, else the sorted union of the trees' class folders."""
    if classes is None:
        union = sorted({name for tree in trees for name in tree.files})
        if not union:
            raise UserError(
                "dataset.classes: no class folders found under dataset.labeled / dataset.test;"
                " list the class names in dataset.classes"
            )
        return union
    names = [str(c) for c in classes]
    if not names:
        raise UserError("dataset.classes: must list at least one class name (or be null to use the folder names)")
    dupes = sorted({c for c in names if names.count(c) > 1})
    if dupes:
        raise UserError(f"dataset.classes: duplicate class names {', '.join(dupes)}")
    known = set(names)
    problems = [
        f"dataset.{tree.key}: class folder {_rel_path(tree.folder / name, root)} is not in dataset.classes"
        f" ({_short_list(names)}); add it there or move its images"
        for tree in trees
        for name, paths in tree.files.items()
        if name not in known and paths
    ]
    if problems:
        raise UserError(*_capped(problems))
    return names


def _read_truth(value: str | Path, root: Path, classes: list[str], files: list[_File]) -> dict[int, int]:
    """The truth CSV (header; columns path,label) as {row of `files`: class index}.

    Paths are relative to root (or absolute); labels a class name or index. Each bad row
    (not a pool image, unknown class, conflicting duplicate or class folder) is one UserError
    line naming the CSV and its line number.
    """
    csv_path = _under_root(root, value)
    if not csv_path.is_file():
        raise DataMissingError(f"dataset.truth: file {csv_path} not found; fix dataset.truth or dataset.root")
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"dataset.truth: cannot read {csv_path} ({one_line(exc)})") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise UserError(f"dataset.truth: {csv_path} line 1: {exc}") from None
    columns = [h.strip().lower() for h in header or []]
    if "path" not in columns or "label" not in columns:
        got = ",".join(header) if header else "an empty file"
        raise UserError(f"dataset.truth: {csv_path} needs a header line with the columns path,label (got {got})")
    path_col, label_col = columns.index("path"), columns.index("label")
    position = {f.rel: i for i, f in enumerate(files)}
    example = files[0].rel
    truth: dict[int, int] = {}
    problems: list[str] = []
    try:
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            where = f"dataset.truth: {csv_path} line {reader.line_num}"
            if len(row) <= max(path_col, label_col):
                problems.append(f"{where}: expected the columns path,label, got {','.join(row)}")
                continue
            raw_path, raw_label = row[path_col].strip(), row[label_col].strip()
            pos = position.get(_rel_path(_under_root(root, raw_path), root)) if raw_path else None
            label = class_index(raw_label, classes)
            if pos is None:
                problems.append(
                    f"{where}: {raw_path!r} is not an image of the pool"
                    f" (paths are relative to dataset.root, like {example!r})"
                )
            if label is None:
                problems.append(
                    f"{where}: unknown class {raw_label!r} (a class name or index 0..{len(classes) - 1}:"
                    f" {_short_list(classes)})"
                )
            if pos is None or label is None:
                continue
            if files[pos].labeled and files[pos].label != label:
                problems.append(
                    f"{where}: {raw_path!r} is labeled {classes[label]!r} but lies in the class folder"
                    f" {classes[files[pos].label]!r}"
                )
            elif truth.setdefault(pos, label) != label:
                problems.append(f"{where}: {raw_path!r} is already labeled {classes[truth[pos]]!r} on an earlier line")
    except csv.Error as exc:
        problems.append(f"dataset.truth: {csv_path} line {reader.line_num}: {exc}")
    if problems:
        raise UserError(*_capped(problems))
    return truth


def _convert(img: Image.Image, mode: str) -> Image.Image:
    """A decoded Pillow image in `mode` (L or RGB): 16-bit grey scaled to 8 bits, alpha dropped."""
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        wide = np.asarray(img).astype(np.int64)
        img = Image.fromarray((np.clip(wide, 0, 65535) >> 8).astype(np.uint8), mode="L")
    elif img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    return img if img.mode == mode else img.convert(mode)


def _decode(path: Path, size: int, mode: str) -> np.ndarray | str:
    """One file as uint8 [S, S, C]: EXIF-upright, centre square crop, antialiased resize; or why it failed."""
    try:
        with Image.open(path, formats=("PNG", "JPEG")) as img:  # never EPS & co., which Pillow hands to Ghostscript
            img.draft("L" if mode == "L" else None, (size, size))  # JPEG: decode at a reduced scale
            img.load()
            ImageOps.exif_transpose(img, in_place=True)
            img = _convert(img, mode)
            w, h = img.size
            side = min(w, h)
            box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
            img = img.resize((size, size), Image.Resampling.BILINEAR, box=box, reducing_gap=3.0)
            array = np.asarray(img, dtype=np.uint8)
    except UnidentifiedImageError:
        try:
            empty = os.path.getsize(path) == 0
        except OSError as exc:
            return f"cannot read the file ({exc.strerror or exc})"
        return "empty file (0 bytes)" if empty else "not an image Pillow can identify (wrong suffix or corrupt header)"
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
        return one_line(exc, limit=200)
    return array.reshape(size, size, -1)


def _decode_all(paths: list[Path], size: int, mode: str) -> tuple[np.ndarray, list[str | None]]:
    """Decode files into uint8 [N, C, S, S] (zeros where failed) and, per file, None or the failure reason."""
    channels = 1 if mode == "L" else 3
    out = np.zeros((len(paths), size, size, channels), dtype=np.uint8)
    reasons: list[str | None] = [None] * len(paths)

    def one(path: Path) -> np.ndarray | str:
        return _decode(path, size, mode)

    workers = min(8, os.cpu_count() or 1)
    executor = ThreadPoolExecutor(workers, "alctl-decode") if len(paths) >= _SERIAL_BELOW and workers > 1 else None
    try:  # Pillow releases the GIL while decoding and resizing, so threads overlap
        for i, result in enumerate(executor.map(one, paths) if executor else map(one, paths)):
            if isinstance(result, str):
                reasons[i] = result
            else:
                out[i] = result
    finally:
        if executor is not None:
            executor.shutdown(cancel_futures=True)
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2)), reasons


def load_imagefolder(
    root: Path,
    pool: str | Path | None,
    labeled: str | Path | None,
    test: str | Path | None,
    truth: str | Path | None,
    classes: Sequence[str] | None,
    image_size: int | None,
    channels: int | None,
) -> DatasetSplits:
    """The user's own PNG/JPEG images (.png .jpg .jpeg, any case) as a dataset (`load_dataset` checked the
    ranges of image_size and channels).

    Train pool: every image under `pool` (any depth) plus every image of the `labeled` tree
    `class_name/...` (their rows are `initial_positions`), ordered by relative path. `test`:
    another class tree. A tree nested inside another (pool: "." with labeled/ and test/ in it)
    is left out of the outer one; hidden files and folders are ignored. Each image is decoded
    with Pillow, turned upright by its EXIF orientation, converted to L (channels 1) or RGB
    (channels 3 or null), centre-cropped to a square and resized to `image_size` with
    antialiased bilinear filtering: uint8 [N, C, S, S]. train_labels: class folder, else the
    `truth` CSV, else -1. Files that fail to decode are left out and listed in `skipped`.
    Paths (train_paths, ids, truth CSV) are POSIX and relative to root for files inside it.
    """
    if pool is None:
        raise UserError("dataset.pool: imagefolder needs the folder of unlabeled images (relative to dataset.root)")
    if image_size is None:
        raise UserError("dataset.image_size: imagefolder needs a size (pixels) to resize every image to")
    size = int(image_size)
    mode = "L" if channels is not None and int(channels) == 1 else "RGB"

    folders: dict[str, Path] = {"pool": _folder(root, pool, "pool")}
    for key, value in (("labeled", labeled), ("test", test)):
        if value is not None:
            folders[key] = _folder(root, value, key)
    real = {key: os.path.realpath(folder) for key, folder in folders.items()}
    for a, b in (("pool", "labeled"), ("pool", "test"), ("labeled", "test")):
        if a in real and b in real and real[a] == real[b]:
            raise UserError(f"dataset.{b}: {folders[b]} is the same folder as dataset.{a}; use separate folders")

    def others(key: str) -> set[str]:
        return {r for k, r in real.items() if k != key}

    notes: list[str] = []  # unreadable folders and unsupported formats, found while scanning
    pool_paths = _scan(folders["pool"], others("pool"), notes, root)
    trees = [_scan_tree(key, folders[key], others(key), notes, root) for key in ("labeled", "test") if key in folders]
    class_names = _class_names(classes, trees, root)
    index = {name: i for i, name in enumerate(class_names)}

    def tree_files(key: str) -> list[_File]:
        return [
            _File(p, _rel_path(p, root), index[name], key == "labeled")
            for tree in trees
            if tree.key == key
            for name, paths in tree.files.items()
            for p in paths
        ]

    train_files = sorted([_File(p, _rel_path(p, root), -1, False) for p in pool_paths] + tree_files("labeled"),
                         key=lambda f: f.rel)
    test_files = sorted(tree_files("test"), key=lambda f: f.rel)
    if not train_files:
        where = f"{folders['pool']}" + (f" or {folders['labeled']}" if "labeled" in folders else "")
        raise UserError(f"dataset.pool: no PNG/JPEG images under {where}")
    labels = np.array([f.label for f in train_files], dtype=np.int64)
    if truth is not None:  # checked before the (slow) decoding
        for row, label in _read_truth(truth, root, class_names, train_files).items():
            labels[row] = label

    x_train, train_reasons = _decode_all([f.path for f in train_files], size, mode)
    x_test, test_reasons = _decode_all([f.path for f in test_files], size, mode)
    failed = [
        f"{f.rel}: {reason}"
        for files, reasons in ((train_files, train_reasons), (test_files, test_reasons))
        for f, reason in zip(files, reasons)
        if reason is not None
    ]
    keep = np.array([r is None for r in train_reasons], dtype=bool)
    keep_test = np.array([r is None for r in test_reasons], dtype=bool)
    if not keep.any():
        raise UserError(
            f"dataset.pool: none of the {len(train_files)} images could be decoded (first: {failed[0]})"
        )
    kept = [f for f, k in zip(train_files, keep) if k]
    paths = [f.rel for f in kept]
    ids = np.array([path_sample_id(p) for p in paths], dtype=np.int64)
    if np.unique(ids).shape[0] != ids.shape[0]:
        first: dict[int, str] = {}
        a, b = next((first[i], p) for i, p in zip(ids.tolist(), paths) if first.setdefault(i, p) != p)
        raise UserError(f"dataset.pool: {a} and {b} hash to the same sample id; rename one of them")

    images = torch.from_numpy(np.ascontiguousarray(x_train[keep]))
    mean, std = channel_stats(images)
    return DatasetSplits(
        name="imagefolder",
        classes=class_names,
        train_images=images,
        train_labels=torch.from_numpy(labels[keep]),
        train_ids=torch.from_numpy(ids),
        test_images=torch.from_numpy(np.ascontiguousarray(x_test[keep_test])),
        test_labels=torch.from_numpy(np.array([f.label for f in test_files], dtype=np.int64)[keep_test]),
        mean=mean,
        std=std,
        train_paths=paths,
        initial_positions=np.flatnonzero([f.labeled for f in kept]).astype(np.int64),
        skipped=notes + failed,
    )
