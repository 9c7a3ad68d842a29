"""What alctl knows of the named datasets before reading a file: classes, pool size, channels; and the pool a
long-tailed cut leaves (numpy only)."""

from __future__ import annotations

import numpy as np


# Known dataset facts used by cross-field checks before any file is read: (classes, pool size).
DATASET_FACTS: dict[str, tuple[int, int]] = {
    "mnist5k": (10, 4000),
    "digits": (10, 1397),
    "mnist": (10, 60000),
    "svhn": (10, 73257),
    "cifar10": (10, 50000),
    "cifar100": (100, 50000),
}
# Channels of the named datasets' images as stored (imagefolder: RGB unless dataset.channels is 1).
NATIVE_CHANNELS: dict[str, int] = {"mnist5k": 1, "digits": 1, "mnist": 1, "svhn": 3, "cifar10": 3, "cifar100": 3,
                                   "imagefolder": 3}


def long_tail_counts(counts: np.ndarray, ratio: float) -> np.ndarray:
    """Images kept per class [C] int64 of a pool with `counts` [C] per class: the exponential profile of Cao et
    al. (2019), n_c = round(n_max x ratio^(-c / (C - 1))) for class index c, n_max the largest class, at most the
    class's own count and at least 1 where it has any; ratio 1 keeps every image."""
    counts = np.asarray(counts, dtype=np.int64)
    c = len(counts)
    if ratio < 1:
        raise ValueError(f"ratio must be >= 1, got {ratio}")
    shares = ratio ** (-np.arange(c) / max(c - 1, 1))
    target = np.rint(counts.max(initial=0) * shares).astype(np.int64)
    return np.where(counts > 0, np.clip(target, 1, counts), 0)


def pool_size(name: str, imbalance_ratio: float | None = None) -> int | None:
    """Pool images of named dataset `name` (None if unknown), cut to the long-tailed profile of `imbalance_ratio`
    when given (its classes counted as equal shares of the pool: exact for mnist5k, an estimate elsewhere)."""
    facts = DATASET_FACTS.get(name)
    if facts is None:
        return None
    classes, pool = facts
    if imbalance_ratio is None:
        return pool
    return int(long_tail_counts(np.full(classes, pool // classes), imbalance_ratio).sum())

