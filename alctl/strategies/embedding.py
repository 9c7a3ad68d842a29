"""Embedding strategies: BADGE (Ash et al. 2020), k-means++ seeding on gradient embeddings.

Array contract: probs `[n_u, C]` float32 softmax rows following view.unlabeled (numpy, or a torch tensor brought
to the host at entry); features `[n, D]` float32 L2-normalised, one row per pool position (numpy or a torch
tensor on any device: only the unlabeled rows `[n_u, D]` come to the host); residuals a = p - onehot(argmax p)
`[n_u, C]` and feature rows f `[n_u, D]` float64; the gradient embedding g = a ⊗ f `[n_u, C*D]` is never
built; picks `[b]` int64 pool positions in pick order; scores `[n_u]` float32 following view.unlabeled.
Non-finite features: FloatingPointError. Randomness: only `rng` (one uniform draw per pick after the first).
Pure: no file I/O.
"""

from __future__ import annotations

import numpy as np

from alctl.strategies.base import (
    EMPTY,
    PoolView,
    Selection,
    StrategyParams,
    check_budget,
    check_view,
    host_probs,
    host_rows,
    make_selection,
)

__all__ = ["gradient_residuals", "kmeanspp_kron", "badge_select"]


def gradient_residuals(probs: np.ndarray) -> np.ndarray:
    """p - onehot(argmax p) of each row of probs `[n, C]` → `[n, C]` float64 (argmax: the first of equal maxima):
    the gradient of the cross-entropy with the predicted label w.r.t. the logits."""
    a = np.array(probs, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"gradient_residuals: probs must be [n, C], got shape {a.shape}")
    if a.shape[0]:
        a[np.arange(a.shape[0]), a.argmax(axis=1)] -= 1.0
    return a


def _sq_dist_to(a: np.ndarray, f: np.ndarray, g_sq: np.ndarray, j: int) -> np.ndarray:
    """||g_i - g_j||^2 `[n]` float64 for every row i, with g = a ⊗ f: ||g_i||^2 + ||g_j||^2 - 2 <a_i, a_j> <f_i, f_j>
    (<a_i ⊗ f_i, a_j ⊗ f_j> = <a_i, a_j> <f_i, f_j>), clipped at 0."""
    d = (a @ a[j]) * (f @ f[j])
    d *= -2.0
    d += g_sq
    d += g_sq[j]
    return np.maximum(d, 0.0, out=d)


def kmeanspp_kron(
    a: np.ndarray, f: np.ndarray, budget: int, rng: np.random.Generator, order: np.ndarray | None = None
) -> np.ndarray:
    """k-means++ seeding (Arthur & Vassilvitskii 2007) of the rows g_i = a_i ⊗ f_i of a `[n, C]` and f `[n, D]`
    → `budget` row indices `[budget]` int64 in pick order, as BADGE's `init_centers` does it.

    First pick: the row of largest ||g_i|| (BADGE's code; equal norms: the first in `order`, default row order).
    Each later pick is drawn with probability proportional to D²_i, the squared distance of g_i to its nearest
    pick so far: u = rng.random() * sum(D²), the first row whose running sum of D² (row order) exceeds u.
    Picked rows have D² = 0, so they are never drawn again; should every row left be at distance 0 of a pick
    (duplicates, or every residual 0), the next pick is the first row left in `order` (no draw).
    Work O(n (C + D)) per pick: a running `[n]` minimum of D², updated with the last pick only, through
    ||g_i - g_j||² = ||a_i||²||f_i||² + ||a_j||²||f_j||² - 2 <a_i, a_j> <f_i, f_j>; float64 throughout.
    """
    a = np.ascontiguousarray(a, dtype=np.float64)
    f = np.ascontiguousarray(f, dtype=np.float64)
    n = a.shape[0]
    if a.ndim != 2 or f.ndim != 2 or f.shape[0] != n:
        raise ValueError(f"kmeanspp_kron: a [n, C] and f [n, D] must share n, got {a.shape} and {f.shape}")
    b = int(budget)
    if not 0 <= b <= n:
        raise ValueError(f"kmeanspp_kron: budget {budget} outside [0, {n}]")
    if b == 0:
        return EMPTY.copy()
    rank = np.arange(n) if order is None else np.argsort(np.asarray(order), kind="stable").argsort(kind="stable")
    g_sq = np.einsum("ij,ij->i", a, a) * np.einsum("ij,ij->i", f, f)  # [n] ||g_i||^2
    top = np.flatnonzero(g_sq == g_sq.max())
    picks = np.empty(b, dtype=np.int64)
    picks[0] = top[np.argmin(rank[top])]
    min_d2 = _sq_dist_to(a, f, g_sq, int(picks[0]))
    min_d2[picks[0]] = 0.0
    free = np.ones(n, dtype=bool)
    free[picks[0]] = False
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):  # memory-bound products: more threads only spin
        _draw_rest(a, f, g_sq, min_d2, free, picks, rank, rng)
    return picks


def _draw_rest(a: np.ndarray, f: np.ndarray, g_sq: np.ndarray, min_d2: np.ndarray, free: np.ndarray,
               picks: np.ndarray, rank: np.ndarray, rng: np.random.Generator) -> None:
    """k-means++ picks 1..b-1 into `picks` `[b]` (see `kmeanspp_kron`), updating min_d2 `[n]` and free `[n]`."""
    n = a.shape[0]
    for t in range(1, picks.shape[0]):
        cum = np.cumsum(min_d2)
        if cum[-1] > 0.0:
            i = int(np.searchsorted(cum, rng.random() * cum[-1], side="right"))  # min_d2[i] > 0
            if i == n:  # u rounded up to the total: the last row of positive D²
                i = int(np.flatnonzero(min_d2)[-1])
        else:
            left = np.flatnonzero(free)
            i = int(left[np.argmin(rank[left])])
        picks[t] = i
        free[i] = False
        np.minimum(min_d2, _sq_dist_to(a, f, g_sq, i), out=min_d2)
        min_d2[i] = 0.0


def badge_select(view: PoolView, budget: int, rng: np.random.Generator, params: StrategyParams) -> Selection:
    """BADGE (Ash et al. 2020): k-means++ seeding (`kmeanspp_kron`) over the gradient embeddings
    g_i = (p_i - onehot(argmax p_i)) ⊗ f_i of U, f_i = the L2-normalised pooled features of alctl's model.

    BADGE takes the penultimate layer's features, the input of the last linear layer; with model.l2_features
    (the default) that input is exactly f (up to the learned scale, which scales every distance alike and leaves
    the draws unchanged); without it, the raw features would be. Equal norms at the first pick: lower pool
    position. Scores `[n_u]` float32: the gradient embedding norm ||g_i|| = ||p_i - e_i|| ||f_i|| (the first pick
    has the largest; the others are drawn, not ranked)."""
    view = host_probs(view)
    b = check_budget(view, budget)
    check_view(view, need_probs=True, need_features=True)
    unl = np.asarray(view.unlabeled, dtype=np.int64)
    a = gradient_residuals(view.probs)
    f = host_rows(view.features, unl).astype(np.float64)
    scores = np.sqrt(np.einsum("ij,ij->i", a, a) * np.einsum("ij,ij->i", f, f))
    picks = kmeanspp_kron(a, f, b, rng, order=unl)
    return make_selection(unl[picks], scores)
