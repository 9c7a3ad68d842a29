"""Score-ranking strategies: random, uncertainty (softmax entropy), margin, least confidence, BALD (MC dropout),
power sampling of those scores, class-balanced selection over predicted classes, and CEAL (entropy + confident pseudo-labels).

Array contract: probs `[n_u, C]` softmax rows following view.unlabeled (numpy, or a torch tensor brought to
the host as float32 at entry); mc_probs `[T, n_u, C]` softmax rows of T MC dropout passes (same rows, brought
to the host likewise); entropies and other raw scores float64 `[n_u]`; scores `[n_u]` float32; `chosen` `[b]`
int64 pool positions, highest score first, equal scores by lower pool position. Pure: no file I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction

import numpy as np

from alctl.strategies.base import (
    EMPTY,
    PoolView,
    Selection,
    StrategyParams,
    check_budget,
    check_view,
    host_mc_probs,
    host_probs,
    make_selection,
)

__all__ = [
    "entropy", "margin_scores", "least_confidence_scores", "bald_scores", "power_keys", "random_select",
    "uncertainty_select", "margin_select", "least_confidence_select", "bald_select", "power_select", "ceal_select",
    "class_balanced_order", "class_balanced_select",
    "ceal_limit", "ceal_keep",
]

# bald_scores works on row chunks of at most this many mc_probs entries (float64 temporaries of 32 MiB).
_BALD_CHUNK = 1 << 22


def entropy(probs: np.ndarray) -> np.ndarray:
    """Natural-log entropy of each row of `probs` `[n, C]` → `[n]` float64; 0·log 0 counts as 0."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"entropy: probs must be [n, C], got shape {p.shape}")
    logp = np.log(np.where(p > 0, p, 1.0))
    return -np.einsum("ij,ij->i", p, logp)


def margin_scores(probs: np.ndarray) -> np.ndarray:
    """1 - (p1 - p2), p1 >= p2 the two largest probabilities of each row of probs `[n, C >= 2]` → `[n]` float64 in [0, 1]."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"margin_scores: probs must be [n, C >= 2], got shape {p.shape}")
    top2 = np.partition(p, p.shape[1] - 2, axis=1)[:, -2:]  # [n, 2]: second largest, largest
    return 1.0 - (top2[:, 1] - top2[:, 0])


def least_confidence_scores(probs: np.ndarray) -> np.ndarray:
    """1 - max_c p_c of each row of `probs` `[n, C]` → `[n]` float64 in [0, 1 - 1/C]."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 1:
        raise ValueError(f"least_confidence_scores: probs must be [n, C], got shape {p.shape}")
    return 1.0 - p.max(axis=1)


def bald_scores(mc_probs: np.ndarray) -> np.ndarray:
    """BALD mutual information H(mean_t p_t) - mean_t H(p_t) of `mc_probs` `[T, n, C]` → `[n]` float64, clipped at 0.

    Natural logs, 0·log 0 = 0; computed in float64 on row chunks (`_BALD_CHUNK` entries), so memory stays bounded
    whatever T and n are."""
    mc = np.asarray(mc_probs)
    if mc.ndim != 3:
        raise ValueError(f"bald_scores: mc_probs must be [T, n, C], got shape {mc.shape}")
    t, n, c = mc.shape
    out = np.empty(n, dtype=np.float64)
    step = max(1, _BALD_CHUNK // max(1, t * c))
    for s in range(0, n, step):
        p = mc[:, s : s + step].astype(np.float64)  # [T, rows, C]
        plogp = p * np.log(np.where(p > 0, p, 1.0))
        mean_h = -plogp.sum(axis=2).mean(axis=0)  # [rows] mean_t H(p_t)
        out[s : s + p.shape[1]] = entropy(p.mean(axis=0)) - mean_h
    return np.maximum(out, 0.0)


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
    return _probability_select(view, budget, entropy)


def _probability_select(view: PoolView, budget: int, score: Callable[[np.ndarray], np.ndarray]) -> Selection:
    """The b images of U with the highest `score(probs)` (scores: those values as float32)."""
    view = host_probs(view)
    b = check_budget(view, budget)
    check_view(view, need_probs=True)
    unl = np.asarray(view.unlabeled, dtype=np.int64)
    scores = score(view.probs).astype(np.float32)
    return make_selection(_top_b(scores, unl, b), scores)


def margin_select(view: PoolView, budget: int, rng: np.random.Generator, params: StrategyParams) -> Selection:
    """Margin sampling (Scheffer et al. 2001): the b images of U whose two most probable classes are closest;
    scores `[n_u]` = 1 - (p1 - p2) in [0, 1]."""
    return _probability_select(view, budget, margin_scores)


def least_confidence_select(view: PoolView, budget: int, rng: np.random.Generator, params: StrategyParams) -> Selection:
    """Least confidence (Lewis & Gale 1994): the b images of U of lowest top probability; scores `[n_u]` = 1 - p1."""
    return _probability_select(view, budget, least_confidence_scores)


# The probability-based scores class-balanced selection may rank by (params.CLASS_BALANCED_BASES).
_PROB_SCORES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "margin": margin_scores, "uncertainty": entropy, "least-confidence": least_confidence_scores,
}


def class_balanced_order(
    scores: np.ndarray, predicted: np.ndarray, positions: np.ndarray, labeled_counts: np.ndarray,
) -> np.ndarray:
    """Round robin over predicted classes: round r takes the r-th highest score of every class that still has one,
    classes with fewer labels (`labeled_counts` `[C]`) first, then by class index; within a class, equal scores by
    lower pool position. scores, predicted (class indices < C), positions: `[n]` → all `[n]` positions, pick order."""
    s = np.asarray(scores, dtype=np.float64)
    pred = np.asarray(predicted, dtype=np.int64)
    pos = np.asarray(positions, dtype=np.int64)
    within = np.lexsort((pos, -s, pred))  # by class, then score descending, then position
    cls = pred[within]
    rank = np.arange(len(cls)) - np.searchsorted(cls, cls, side="left")  # rank of each image within its class
    counts = np.asarray(labeled_counts, dtype=np.int64)[cls]
    return pos[within][np.lexsort((cls, counts, rank))]


def class_balanced_select(view: PoolView, budget: int, rng: np.random.Generator, params: StrategyParams) -> Selection:
    """Class-balanced selection: the base score of `active.class-balanced.base` (margin by default) ranked within
    each class the model predicts on U, the b images picked round robin over those classes (see
    class_balanced_order), so that a class the model rarely predicts still gets its share of the budget; scores
    `[n_u]` = the base score."""
    view = host_probs(view)
    b = check_budget(view, budget)
    check_view(view, need_probs=True)
    unl = np.asarray(view.unlabeled, dtype=np.int64)
    base = params.of("class-balanced").base
    scores = _PROB_SCORES[base](view.probs).astype(np.float32)
    predicted = np.asarray(view.probs).argmax(axis=1)
    labeled_counts = np.bincount(np.asarray(view.labels, dtype=np.int64), minlength=view.num_classes)
    chosen = class_balanced_order(scores, predicted, unl, labeled_counts)[:b]
    return make_selection(chosen, scores)


def bald_select(view: PoolView, budget: int, rng: np.random.Generator, params: StrategyParams) -> Selection:
    """BALD (Houlsby et al. 2011) with MC dropout (Gal et al. 2017): the b images of U with the highest mutual
    information between prediction and weights over the T passes of view.mc_probs `[T, n_u, C]`; scores `[n_u]`."""
    view = host_mc_probs(view)
    b = check_budget(view, budget)
    check_view(view, need_mc_probs=True)
    unl = np.asarray(view.unlabeled, dtype=np.int64)
    scores = bald_scores(view.mc_probs).astype(np.float32)
    return make_selection(_top_b(scores, unl, b), scores)


# The raw score power sampling draws from, per base (each >= 0: see power_select).
_BASE_SCORES: dict[str, Callable[[PoolView], np.ndarray]] = {
    "bald": lambda view: bald_scores(view.mc_probs),
    "uncertainty": lambda view: entropy(view.probs),
    "margin": lambda view: margin_scores(view.probs),
    "least-confidence": lambda view: least_confidence_scores(view.probs),
}


def power_keys(scores: np.ndarray, exponent: float, gumbel: np.ndarray) -> np.ndarray:
    """Gumbel-top-k keys exponent * log(max(s, tiny)) + g of scores s `[n]` >= 0, Gumbel noise g `[n]` → `[n]` float64.

    tiny = the smallest normal float64, so a zero score gets a finite key below every positive score's (up to the
    noise: its weight tiny^exponent is nil)."""
    s = np.maximum(np.asarray(scores, dtype=np.float64), np.finfo(np.float64).tiny)
    return float(exponent) * np.log(s) + np.asarray(gumbel, dtype=np.float64)


def power_select(view: PoolView, budget: int, rng: np.random.Generator, params: StrategyParams) -> Selection:
    """Power sampling (Kirsch et al. 2022, baal's PowerBALD): b images of U drawn without replacement with
    probability proportional to score^exponent, score = the base's score (>= 0): active.power's base and exponent.

    Drawn by the Gumbel-top-k trick: keys `power_keys(score, exponent, g)` with g `[n_u]` = rng.gumbel(), the b
    largest keys picked, in order (distributed as b sequential draws, each proportional to score^exponent among
    the images not yet drawn). The bases' scores are made non-negative: entropy and BALD (>= 0 as they are),
    margin as 1 - (p1 - p2), least confidence as 1 - p1; a zero score (a one-hot prediction) has weight 0 and
    comes after every positive one. Scores `[n_u]` float32 = the keys, so sorting by score replays the picks."""
    power = params.of("power")
    base = power.base
    view = host_mc_probs(host_probs(view))
    b = check_budget(view, budget)
    check_view(view, need_probs=base != "bald", need_mc_probs=base == "bald")
    unl = np.asarray(view.unlabeled, dtype=np.int64)
    keys = power_keys(_BASE_SCORES[base](view), power.exponent, rng.gumbel(size=unl.shape[0]))
    order = np.lexsort((unl, -keys))
    return make_selection(unl[order[:b]], keys.astype(np.float32))


def ceal_limit(cap: float | None, n_labels: int) -> int | None:
    """The most pseudo-labels a cap allows beside `n_labels` true labels: ceil(cap x n_labels), the cap read as the
    decimal it was written as (0.1 x 30 = 3, not 4); None for no cap."""
    if cap is None:
        return None
    return math.ceil(Fraction(repr(float(cap))) * int(n_labels))


def ceal_keep(norm_entropy: np.ndarray, positions: np.ndarray, labels: np.ndarray, num_classes: int,
              limit: int | None, balanced: bool) -> np.ndarray:
    """Which confident candidates CEAL keeps: of normalised entropies [m], pool positions [m] and predicted labels
    [m] int64, the indices [k] int64 into them, most confident first (lowest entropy, ties by lower position),
    k = min(m, limit) (limit None: m). Balanced: at most ceil(min(m, limit) / num_classes) per predicted class,
    the most confident of each class, the k most confident of those (k may fall short of the limit)."""
    m = int(norm_entropy.shape[0])
    kept = m if limit is None else min(m, int(limit))
    order = np.lexsort((np.asarray(positions, dtype=np.int64), np.asarray(norm_entropy, dtype=np.float64)))
    if balanced and m:
        quota = math.ceil(kept / num_classes)
        lab = np.asarray(labels, dtype=np.int64)[order]  # [m] in confidence order
        by_class = np.argsort(lab, kind="stable")  # [m] grouped by class, confidence order kept within each
        counts = np.bincount(lab, minlength=num_classes)  # [C]
        rank = np.empty(m, dtype=np.int64)  # [m] rank of each (confidence-ordered) candidate within its class
        rank[by_class] = np.arange(m, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
        order = order[rank < quota]
    return order[:kept].astype(np.int64)


def ceal_select(view: PoolView, budget: int, rng: np.random.Generator, params: StrategyParams) -> Selection:
    """CEAL (Wang et al. 2017): uncertainty selection, plus pseudo-labels (argmax) on the remaining images of U
    whose normalised entropy H / log C is below max(0, threshold - decay * cycle), by pool position; of those, at
    most ceil(cap x (n_l + b)) (the next training's labels), the most confident (`ceal_keep`), class-balanced
    with balanced (active.ceal's fields). Without cap or balance, every confident image (the paper)."""
    view = host_probs(view)
    b = check_budget(view, budget)
    check_view(view, need_probs=True)
    ceal = params.of("ceal")
    threshold, decay = float(ceal.threshold), float(ceal.decay)
    unl = np.asarray(view.unlabeled, dtype=np.int64)
    h = entropy(view.probs)
    scores = h.astype(np.float32)
    chosen = _top_b(scores, unl, b)
    limit = max(0.0, threshold - decay * view.cycle)
    norm = h / math.log(view.num_classes)  # [n_u]
    confident = norm < limit
    confident &= ~np.isin(unl, chosen)
    rows = np.flatnonzero(confident)  # [m] rows of U
    labels = np.asarray(view.probs)[rows].argmax(axis=1)  # [m]
    if ceal.cap is not None or ceal.balanced:
        most = ceal_limit(ceal.cap, len(view.labeled) + len(chosen))
        keep = ceal_keep(norm[rows], unl[rows], labels, view.num_classes, most, bool(ceal.balanced))
        rows, labels = rows[keep], labels[keep]
    order = np.argsort(unl[rows], kind="stable")
    return make_selection(chosen, scores, unl[rows][order], labels[order], float(ceal.weight))
