"""Long-tailed pools for simulations: keep fewer images of each successive class (the test split stays whole)."""

from __future__ import annotations

import dataclasses

import numpy as np

from alctl.data.images import DatasetSplits, channel_stats
from alctl.config.facts import long_tail_counts

__all__ = ["long_tail_counts", "long_tailed"]


def long_tailed(ds: DatasetSplits, ratio: float, seed: int) -> DatasetSplits:
    """The dataset with its pool cut to the long-tailed profile (`long_tail_counts`; which images of a class stay:
    a uniform draw seeded by `seed`, in pool order) and its channel statistics recomputed; sample ids unchanged,
    the test split untouched."""
    labels = ds.train_labels.numpy()
    counts = np.bincount(labels[labels >= 0], minlength=ds.num_classes)
    keep_n = long_tail_counts(counts, ratio)
    rng = np.random.default_rng(seed)
    keep = np.zeros(len(labels), dtype=bool)
    for c in range(ds.num_classes):
        rows = np.flatnonzero(labels == c)
        keep[np.sort(rng.permutation(rows)[: keep_n[c]])] = True
    rows = np.flatnonzero(keep)
    images = ds.train_images[rows]
    mean, std = channel_stats(images)
    return dataclasses.replace(
        ds, train_images=images, train_labels=ds.train_labels[rows], train_ids=ds.train_ids[rows],
        train_paths=None if ds.train_paths is None else [ds.train_paths[i] for i in rows],
        mean=mean, std=std)
