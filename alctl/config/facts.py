"""What alctl knows of the named datasets before reading a file (one table: classes, pool and test sizes,
channels), and the pool a long-tailed cut leaves (numpy only)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DatasetFacts:
    """A named dataset as alctl stores it: classes, pool (train split) and test images, channels."""

    classes: int
    pool: int
    test: int
    channels: int


# The one table of what alctl knows of the named datasets before any file is read.
FACTS: dict[str, DatasetFacts] = {
    "mnist5k": DatasetFacts(10, 4000, 1000, 1),
    "digits": DatasetFacts(10, 1397, 400, 1),
    "mnist": DatasetFacts(10, 60000, 10000, 1),
    "svhn": DatasetFacts(10, 73257, 26032, 3),
    "cifar10": DatasetFacts(10, 50000, 10000, 3),
    "cifar100": DatasetFacts(100, 50000, 10000, 3),
}
# Views of it: (classes, pool size) for the cross-field checks; channels as stored (imagefolder: RGB unless
# dataset.channels is 1); test-split sizes for the plan.
DATASET_FACTS: dict[str, tuple[int, int]] = {name: (f.classes, f.pool) for name, f in FACTS.items()}
NATIVE_CHANNELS: dict[str, int] = {**{name: f.channels for name, f in FACTS.items()}, "imagefolder": 3}
TEST_SIZES: dict[str, int] = {name: f.test for name, f in FACTS.items()}


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

