"""Writers of small real-format dataset files (MNIST IDX, CIFAR pickles, SVHN .mat) for tests.

Every image encodes its label: each pixel is label_pixel(label) (+ channel index for the
3-channel formats), so tests can check that images and labels stay aligned.
"""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np


def label_pixel(label: int | np.ndarray) -> int | np.ndarray:
    """The constant pixel value that images of class `label` carry (0..9 -> 10..190, mod 256)."""
    return (np.asarray(label) * 20 + 10) % 256


def _images(labels: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """uint8 images [n, *shape] filled with label_pixel(label)."""
    values = label_pixel(labels).astype(np.uint8)
    return np.broadcast_to(values.reshape(-1, *([1] * len(shape))), (labels.shape[0], *shape)).copy()


def _labels(n: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """n labels covering every class when n allows it, in shuffled order."""
    return rng.permutation(np.arange(n) % num_classes).astype(np.int64)


def _write_idx(path: Path, array: np.ndarray) -> None:
    """Write an IDX file: magic (0, 0, dtype 0x08 = ubyte, ndim), big-endian dims, raw bytes."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def write_mnist_idx(root: str | Path, n_train: int, n_test: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Write uncompressed MNIST IDX files under root/MNIST/raw; return the labels written."""
    raw = Path(root) / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = _labels(n, 10, rng)
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", _images(labels, (28, 28)))  # magic 2051
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels.astype(np.uint8))  # magic 2049
        out[prefix] = labels
    return out


def write_cifar(
    root: str | Path, n_train: int, n_test: int, rng: np.random.Generator, hundred: bool = False
) -> dict[str, np.ndarray]:
    """Write CIFAR-10 (or -100) python pickle batches under root; return the labels written.

    Like the originals (Python 2 pickles read by torchvision with encoding='latin1'), keys are
    str and data is uint8 [n, 3072] in channel-major (R plane, G plane, B plane) order.
    Images are label_pixel(label) with channel c offset by c, so CHW order is checkable.
    """
    num_classes = 100 if hundred else 10
    labels_train = _labels(n_train, num_classes, rng)
    labels_test = _labels(n_test, num_classes, rng)

    def batch(labels: np.ndarray) -> np.ndarray:
        images = _images(labels, (3, 32, 32)).astype(np.int64)
        images += np.arange(3).reshape(1, 3, 1, 1)
        return (images % 256).astype(np.uint8).reshape(labels.shape[0], 3072)

    def dump(path: Path, obj: dict) -> None:
        with open(path, "wb") as f:
            pickle.dump(obj, f, protocol=2)

    if hundred:
        folder = Path(root) / "cifar-100-python"
        folder.mkdir(parents=True, exist_ok=True)
        dump(folder / "train", {"data": batch(labels_train), "fine_labels": labels_train.tolist(), "coarse_labels": [0] * n_train})
        dump(folder / "test", {"data": batch(labels_test), "fine_labels": labels_test.tolist(), "coarse_labels": [0] * n_test})
        dump(folder / "meta", {"fine_label_names": [f"fine{i}" for i in range(100)], "coarse_label_names": ["c"]})
    else:
        folder = Path(root) / "cifar-10-batches-py"
        folder.mkdir(parents=True, exist_ok=True)
        for i, part in enumerate(np.array_split(np.arange(n_train), 5), start=1):
            dump(folder / f"data_batch_{i}", {"data": batch(labels_train[part]), "labels": labels_train[part].tolist()})
        dump(folder / "test_batch", {"data": batch(labels_test), "labels": labels_test.tolist()})
        names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
        dump(folder / "batches.meta", {"label_names": names, "num_vis": 3072, "num_cases_per_batch": 10000})
    return {"train": labels_train, "test": labels_test}


def write_svhn(root: str | Path, n_train: int, n_test: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Write SVHN train_32x32.mat / test_32x32.mat (X [32,32,3,N] uint8, y [N,1], 10 = digit 0).

    Returns the digit labels (0..9) written; channel c of each image is label_pixel + c.
    """
    from scipy.io import savemat

    folder = Path(root)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        digits = _labels(n, 10, rng)
        images = _images(digits, (32, 32, 3)).astype(np.int64) + np.arange(3)  # N,H,W,C
        x = np.ascontiguousarray(images.astype(np.uint8).transpose(1, 2, 3, 0))  # H,W,C,N
        y = np.where(digits == 0, 10, digits).astype(np.uint8).reshape(-1, 1)
        savemat(folder / f"{split}_32x32.mat", {"X": x, "y": y})
        out[split] = digits
    return out
