"""Label propagation (Iscen et al., CVPR 2019) from the labeled pool positions over the kNN graph, and pseudo-labels.

Array contract: positions and labels int64; right-hand sides Y and solutions Z `[n, C]` (one column per class)
float32; pseudo-labels `[n]` int64, certainty weights `[n]` float32, class weights `[C]` float32. Randomness:
none (an argmax tie goes to the lower class). Pure: no file I/O; caller mistakes raise ValueError / TypeError.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from alctl.propagate.graph import GraphSpec, diffusion
from alctl.propagate.solver import Diffusion, _check_solver_args

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Propagation:
    """Result of label propagation over the pool."""

    labels: np.ndarray  # [n] int64 pseudo-label per pool position (labeled rows keep their given label)
    weights: np.ndarray  # [n] float32 certainty ω in [0, 1]; labeled rows 1.0; unreached rows 0.0
    class_weights: np.ndarray  # [C] float32, inversely proportional to class frequency among labels (labeled + pseudo)
    scores: np.ndarray  # [n, C] float32, the solution Z
    iterations: int  # CG iterations used


WEIGHT_SCALES = ("max", "none")


def pseudo_labels(
    z: np.ndarray, labeled: np.ndarray, labels: np.ndarray, num_classes: int, weight_scale: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels [n], weights [n], class_weights [C]) from Z, vectorised.

    z `[n, C]`; labeled `[n_l]` int positions with given labels `[n_l]`. Pseudo-label = argmax of the row
    (first column on ties). Certainty ω = 1 - H(ẑ)/log C with ẑ the row with negatives clipped to 0 and
    L1-normalised (Iscen et al.); a row with no positive entry (unreached) gets ω = 0. weight_scale (one of
    `WEIGHT_SCALES`) "max"
    then divides every ω by the largest ω over all rows, as the authors' code does (the most certain row
    weighs 1, so an uncertain propagation from few labels still trains on U); "none" keeps ω as it is.
    Labeled rows take their given label and ω = 1. Class weights (`class_weights`): count_c = positions
    labeled (given or pseudo) c, w_c = (n / C) / count_c, and 0 for a class with count 0. labels int64,
    weights float32 in [0, 1], class_weights float32.
    """
    zz = np.asarray(z)
    lab = np.asarray(labeled)
    given = np.asarray(labels)
    c = int(num_classes)
    if zz.ndim != 2 or zz.shape[1] != c or c < 1:
        raise ValueError(f"pseudo_labels: z must be [n, num_classes={num_classes}], got {zz.shape}")
    n = zz.shape[0]
    if lab.ndim != 1 or given.shape != lab.shape:
        raise ValueError(f"pseudo_labels: labeled and labels must be 1-D of equal length, got {lab.shape} and {given.shape}")
    if lab.size and (not np.issubdtype(lab.dtype, np.integer) or not np.issubdtype(given.dtype, np.integer)):
        raise ValueError("pseudo_labels: labeled and labels must be integer arrays")
    if lab.size and (lab.min() < 0 or lab.max() >= n or given.min() < 0 or given.max() >= c):
        raise ValueError("pseudo_labels: a labeled position or label is out of range")
    if not np.isfinite(zz).all():
        raise ValueError("pseudo_labels: z holds NaN or inf")
    if weight_scale not in WEIGHT_SCALES:
        raise ValueError(f"pseudo_labels: weight_scale must be one of {', '.join(WEIGHT_SCALES)}, got {weight_scale!r}")
    out = zz.argmax(axis=1).astype(np.int64) if n else np.zeros(0, np.int64)
    pos = np.maximum(zz, 0, dtype=np.float32)
    total = pos.sum(axis=1, dtype=np.float64)
    reached = total > 0
    # H(ẑ) with ẑ = pos / total: log(total) - sum(pos log pos) / total, one logarithm per entry.
    logs = np.zeros(pos.shape, dtype=np.float32)
    np.log(pos, out=logs, where=pos > 0)
    logs *= pos
    safe = np.where(reached, total, 1.0)
    ent = np.log(safe) - logs.sum(axis=1, dtype=np.float64) / safe
    if c > 1:
        w = np.where(reached, 1.0 - ent / math.log(c), 0.0)
    else:
        w = reached.astype(np.float64)
    np.clip(w, 0.0, 1.0, out=w)
    top = float(w.max(initial=0.0)) if weight_scale == "max" else 0.0
    if top > 0:
        w /= top
    out[lab] = given
    w[lab] = 1.0
    from alctl.train.sampling import class_weights  # here, not at the top: alctl.train loads torch

    return out, w.astype(np.float32), class_weights(out, c)


def _positions(labeled: np.ndarray, labels: np.ndarray, n: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """labeled / labels as int64 after range, uniqueness and shape checks (ValueError)."""
    lab = np.asarray(labeled)
    given = np.asarray(labels)
    if lab.ndim != 1 or given.shape != lab.shape:
        raise ValueError(f"labeled and labels must be 1-D of equal length, got {lab.shape} and {given.shape}")
    if lab.size and (not np.issubdtype(lab.dtype, np.integer) or not np.issubdtype(given.dtype, np.integer)):
        raise ValueError(f"labeled and labels must be integer arrays, got {lab.dtype} and {given.dtype}")
    lab, given = lab.astype(np.int64), given.astype(np.int64)
    if lab.size and (lab.min() < 0 or lab.max() >= n):
        raise ValueError(f"labeled positions must lie in [0, {n - 1}]")
    if lab.size and (given.min() < 0 or given.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes - 1}]")
    if np.unique(lab).size != lab.size:
        raise ValueError("labeled positions must be unique")
    return lab, given


def _num_classes(num_classes: int) -> int:
    """num_classes as an int (ValueError unless a positive integer)."""
    c = int(num_classes)
    if c < 1 or c != num_classes:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    return c


def label_propagation(
    features: np.ndarray | torch.Tensor,
    labeled: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    graph: GraphSpec,
    weight_scale: str,
) -> Propagation:
    """kNN graph on L2-normalised features [n, D] + propagation from labeled positions [n_l] with labels [n_l].

    `diffusion(features, graph)` (features: numpy array or torch tensor, n >= 2), then `propagate_labels`
    with graph.tol / graph.max_iter and `weight_scale` (one of `WEIGHT_SCALES`). Arguments are checked
    before the kNN search.
    """
    c = _num_classes(num_classes)
    if not isinstance(graph, GraphSpec):
        raise TypeError(f"label_propagation: graph must be a GraphSpec, got {type(graph).__name__}")
    n = int(features.shape[0])
    if n < 2:
        raise ValueError(f"label_propagation: needs at least 2 pool rows, got {n}")
    lab, given = _positions(labeled, labels, n, c)
    op = diffusion(features, graph)
    return _propagate(op, lab, given, c, graph.tol, graph.max_iter, weight_scale)


def propagate_labels(
    op: Diffusion, labeled: np.ndarray, labels: np.ndarray, num_classes: int, tol: float, max_iter: int,
    weight_scale: str,
) -> Propagation:
    """Label propagation on a built operator: Z = op.solve(Y, tol, max_iter), then `pseudo_labels`.

    Y `[n, C]` has 1/|L_c| on the labeled rows of class c (a class without labeled rows: a zero column of
    Y and of Z); labeled `[n_l]` int positions in [0, op.n), labels `[n_l]` int in [0, num_classes).
    """
    c = _num_classes(num_classes)
    _, tol, max_iter = _check_solver_args(op.alpha, tol, max_iter)
    lab, given = _positions(labeled, labels, op.n, c)
    return _propagate(op, lab, given, c, tol, max_iter, weight_scale)


def _propagate(
    op: Diffusion, labeled: np.ndarray, labels: np.ndarray, num_classes: int, tol: float, max_iter: int,
    weight_scale: str,
) -> Propagation:
    """`propagate_labels` on checked arguments (labeled / labels int64)."""
    n, c = op.n, num_classes
    counts = np.bincount(labels, minlength=c)
    y = np.zeros((n, c), dtype=np.float32)
    y[labeled, labels] = (1.0 / counts[labels]).astype(np.float32)  # only classes that have labeled rows
    z, its = op.solve(y, tol, max_iter)
    out, w, cw = pseudo_labels(z, labeled, labels, c, weight_scale)
    return Propagation(labels=out, weights=w, class_weights=cw, scores=z, iterations=its)
