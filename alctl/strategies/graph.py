"""Graph strategies: jLP (Siméoni et al., ICPR 2020), selection by diffusion over the kNN graph of the features.

Array contract: features `[n, D]` float32 L2-normalised, one row per pool position, as a numpy array or a
torch tensor (a CUDA tensor stays there for the kNN search; only sims / ids come to the host); the
diffusion operator is `alctl.propagate.Diffusion`; f `[n]` float64 diffusion values; picks `[b]` int64
pool positions in pick order; scores `[n_u]` float32 following view.unlabeled. Non-finite features:
FloatingPointError. Randomness: none (ties go to the lower pool position). Pure: no file I/O.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from alctl.propagate.graph import diffusion
from alctl.propagate.solver import Diffusion
from alctl.strategies.base import (
    NON_FINITE_FEATURES,
    PoolView,
    Selection,
    StrategyParams,
    check_budget,
    check_view,
    is_tensor,
    make_selection,
)

if TYPE_CHECKING:
    import torch

__all__ = ["jlp_select"]

# The most columns of (I - alpha W_n)^-1 kept between blocks.
_JLP_CACHE_BYTES = 256 << 20


def _jlp_greedy(
    op: Diffusion, sources: np.ndarray, candidates: np.ndarray, budget: int, tol: float, max_iter: int,
    block: int | None = None, increment_atol: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greedy jLP on a built operator: (picks [budget] int64 positions in pick order, f at each pick's
    turn [budget] float64, final f [n] float64). See `jlp_select` for what it computes; sources [n_l] and
    candidates [n_u] are int64 pool positions.

    block: columns solved ahead together (default `op.block_cols` per worker thread of the operator).
    increment_atol: solve each increment column e_p to the absolute residual the full solve of that
    turn stops at, tol * ||q_t|| (True), or to tol relative to ||e_p|| = 1 (False; tighter)."""
    n = op.n
    block = op.block_cols * op.workers if block is None else max(1, int(block))
    q = np.zeros((n, 1), dtype=np.float32)
    q[sources, 0] = 1.0
    f = op.solve(q, tol, max_iter)[0][:, 0].astype(np.float64)
    avail = np.zeros(n, dtype=bool)
    avail[candidates] = True
    avail[sources] = False
    n_sources = int(np.count_nonzero(q))
    picks = np.empty(budget, dtype=np.int64)
    pick_f = np.empty(budget, dtype=np.float64)
    cache: dict[int, np.ndarray] = {}
    cached = np.zeros(n, dtype=bool)
    max_cached = max(block, _JLP_CACHE_BYTES // max(4 * n, 1))
    for t in range(budget):
        fm = np.where(avail, f, np.inf)
        p = int(np.argmin(fm))
        if not cached[p]:
            # Speculate: the next picks are most likely the lowest f; solve their columns together.
            fm[cached] = np.inf
            fm[p] = -np.inf  # p is in the block even among tied values
            size = min(block, int(np.count_nonzero(avail & ~cached)))
            want = np.argpartition(fm, size - 1)[:size] if size < n else np.arange(n)
            want = want[np.lexsort((want, fm[want]))]  # p first, then by f (lower position on ties)
            e = np.zeros((n, size), dtype=np.float32)
            e[want, np.arange(size)] = 1.0
            col_tol = tol * math.sqrt(max(n_sources + t, 1)) if increment_atol else tol
            cols = op.solve(e, col_tol, max_iter)[0]
            for j, i in enumerate(want.tolist()):
                cache[i] = cols[:, j].copy()
            cached[want] = True
            if len(cache) > max_cached:  # drop the columns least likely to be needed: highest f
                keys = np.fromiter(cache.keys(), dtype=np.int64)
                for i in keys[np.argsort(f[keys], kind="stable")[max_cached:]].tolist():
                    del cache[i]
                    cached[i] = False
        picks[t] = p
        pick_f[t] = f[p]
        f += cache.pop(p)
        cached[p] = False
        avail[p] = False
    return picks, pick_f, f


def jlp_select(view: PoolView, budget: int, rng: np.random.Generator, params: StrategyParams) -> Selection:
    """jLP: diffuse from the labeled set, pick the unlabeled image least reached, add it to the sources, repeat b
    times; the picks of the authors' b cold CG solves, computed incrementally (docs/internals.md, jLP).

    The graph and solver are `params.graph`; ties go to the lower pool position; `rng` is not used. Scores
    `[n_u]` float32 follow view.unlabeled: -f at the pick's turn for the picks, -f after all picks for the rest,
    with the picks first in pick order."""
    b = check_budget(view, budget)
    check_view(view, need_features=True)
    spec = params.graph
    feats = _graph_features(view.features)
    n = int(feats.shape[0])
    unl = np.asarray(view.unlabeled, dtype=np.int64)
    lab = np.asarray(view.labeled, dtype=np.int64)
    if n < 2:
        scores = np.zeros(unl.shape[0], dtype=np.float32)
        return make_selection(unl[:b], scores)
    op = diffusion(feats, spec)
    picks, pick_f, f = _jlp_greedy(op, lab, unl, b, spec.tol, spec.max_iter)
    return make_selection(picks, _jlp_scores(unl, picks, pick_f, f))


def _graph_features(features: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """The features for the kNN search: a CUDA tensor as a contiguous float32 tensor on its device, anything
    else as a C-contiguous float32 numpy array; FloatingPointError when they hold NaN or inf."""
    if is_tensor(features):
        import torch

        if features.device.type != "cpu":
            feats = features.detach().to(torch.float32).contiguous()
            if not bool(torch.isfinite(feats).all()):
                raise FloatingPointError(NON_FINITE_FEATURES)
            return feats
        features = features.detach().numpy()
    feats = np.ascontiguousarray(features, dtype=np.float32)
    if not np.isfinite(feats).all():
        raise FloatingPointError(NON_FINITE_FEATURES)
    return feats


def _jlp_scores(unl: np.ndarray, picks: np.ndarray, pick_f: np.ndarray, f: np.ndarray) -> np.ndarray:
    """-f per unlabeled row [n_u] float32; picks score -f at their turn, nudged (by float32 ulps where
    needed) to decrease strictly along the picks and to stay above every leftover, so that sorting by
    score replays the picks."""
    scores = (-f[unl]).astype(np.float32)
    if picks.size:
        ordered = np.maximum.accumulate((-pick_f)[::-1])[::-1].astype(np.float32)
        ties = np.flatnonzero(ordered[1:] >= ordered[:-1])
        if ties.size:  # float32 ties between picks: a pass over the picks after the first one
            for j in range(int(ties[0]) + 1, ordered.size):
                if ordered[j] >= ordered[j - 1]:
                    ordered[j] = np.nextafter(ordered[j - 1], np.float32(-np.inf))
        scores = np.minimum(scores, np.nextafter(ordered[-1], np.float32(-np.inf)))
        scores[np.searchsorted(unl, picks) if _is_sorted(unl) else _where(unl, picks)] = ordered
    return scores


def _is_sorted(a: np.ndarray) -> bool:
    """True when `a` is strictly increasing."""
    return bool(a.size < 2 or np.all(a[1:] > a[:-1]))


def _where(unl: np.ndarray, picks: np.ndarray) -> np.ndarray:
    """Rows of `unl` holding each of `picks`."""
    order = np.argsort(unl, kind="stable")
    return order[np.searchsorted(unl[order], picks)]
