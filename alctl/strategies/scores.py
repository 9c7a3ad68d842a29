"""Score-ranking strategies: random, uncertainty (softmax entropy) and CEAL (entropy + confident pseudo-labels).

Array contract: probs `[n_u, C]` softmax rows following view.unlabeled (numpy, or a torch tensor brought to
the host as float32 at entry); entropies float64 `[n_u]`; scores `[n_u]` float32; `chosen` `[b]` int64 pool
positions, highest score first, equal scores by lower pool position. Pure: no file I/O.
"""

from __future__ import annotations

import math

import numpy as np

from alctl.strategies.base import (
    EMPTY,
    PoolView,
    Selection,
    StrategyParams,
    check_budget,
    check_view,
    host_probs,
    make_selection,
)

__all__ = ["entropy", "random_select", "uncertainty_select", "ceal_select"]


def entropy(probs: np.ndarray) -> np.ndarray:
    """Natural-log entropy of each row of `probs` `[n, C]` → `[n]` float64; 0·log 0 counts as 0."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"entropy: probs must be [n, C], got shape {p.shape}")
    logp = np.log(np.where(p > 0, p, 1.0))
    return -np.einsum("ij,ij->i", p, logp)


def _top_b(scores: np.ndarray, positions: np.ndarray, budget: int) -> np.ndarray:
    """Positions of the `budget` highest scores, highest first; equal scores: lower pool position first."""
    if budget == 0:
        return EMPTY.copy()
    order = np.lexsort((positions, -scores.astype(np.float64)))
    return positions[order[:budget]].astype(np.int64)


def random_select(view: PoolView, budget: int, rng: np.random.Generator, params: StrategyParams) -> Selection:
    """b uniformly random images of U: a uniform float32 score per row from `rng`, the b highest chosen."""
    b = check_budget(view, budget)
    check_view(view)
    unl = np.asarray(view.unlabeled, dtype=np.int64)
    scores = rng.random(unl.shape[0], dtype=np.float32)
    return make_selection(_top_b(scores, unl, b), scores)


def uncertainty_select(view: PoolView, budget: int, rng: np.random.Generator, params: StrategyParams) -> Selection:
    """The b images of U with the highest softmax entropy (scores: the entropies as float32)."""
    view = host_probs(view)
    b = check_budget(view, budget)
    check_view(view, need_probs=True)
    unl = np.asarray(view.unlabeled, dtype=np.int64)
    scores = entropy(view.probs).astype(np.float32)
    return make_selection(_top_b(scores, unl, b), scores)


def ceal_select(view: PoolView, budget: int, rng: np.random.Generator, params: StrategyParams) -> Selection:
    """CEAL (Wang et al. 2017): uncertainty selection, plus pseudo-labels (argmax) on the remaining images of U
    whose normalised entropy H / log C is below max(0, ceal_threshold - ceal_decay * cycle), by pool position."""
    view = host_probs(view)
    b = check_budget(view, budget)
    check_view(view, need_probs=True)
    threshold, decay = float(params.ceal_threshold), float(params.ceal_decay)
    unl = np.asarray(view.unlabeled, dtype=np.int64)
    h = entropy(view.probs)
    scores = h.astype(np.float32)
    chosen = _top_b(scores, unl, b)
    limit = max(0.0, threshold - decay * view.cycle)
    confident = h / math.log(view.num_classes) < limit
    confident &= ~np.isin(unl, chosen)
    order = np.argsort(unl[confident], kind="stable")
    pseudo_pos = unl[confident][order]
    pseudo_lab = np.asarray(view.probs)[confident].argmax(axis=1)[order]
    return make_selection(chosen, scores, pseudo_pos, pseudo_lab)
