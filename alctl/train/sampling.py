"""Training-side sampling of pseudo-labels: class weights `[C]` of labels `[m]`, rows drawn by certainty `[n]`."""

from __future__ import annotations

import numpy as np


def class_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Class weights [C] float32 inverse to class frequency among labels [m]: (m / C) / count_c, 0 when count_c = 0."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)[:num_classes]
    cw = np.zeros(num_classes, dtype=np.float64)
    np.divide(len(labels) / num_classes, counts, out=cw, where=counts > 0)
    return cw.astype(np.float32)


def sample_by_certainty(weights: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices [m] of round(fraction * n) rows drawn without replacement with probability proportional to
    their certainty weights [n] (the authors' `lp_mode: prob`); rows of weight 0 are never drawn."""
    w = np.asarray(weights, dtype=np.float64)
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    m = min(int(round(fraction * len(w))), int(np.count_nonzero(w > 0)))
    if m == 0:
        return np.zeros(0, dtype=np.int64)
    chosen = rng.choice(len(w), size=m, replace=False, p=w / w.sum())
    return np.sort(chosen).astype(np.int64)
