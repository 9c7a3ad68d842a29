"""Acquisition functions (random, uncertainty, coreset, ceal, jlp): a pool view in, the chosen pool positions and scores out.

Array contract: probs `[n_u, C]` float32 softmax rows following `unlabeled`; features `[n, D]` float32
L2-normalised, one row per pool position; positions and labels int64; scores `[n_u]` float32 following
`unlabeled`, higher = picked first; `chosen` `[b]` int64 pool positions in pick order. Pure: no file I/O.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from alctl.errors import AlctlError, UserError

__all__ = [
    "PoolView",
    "Selection",
    "StrategyFn",
    "STRATEGIES",
    "get_strategy",
    "select",
    "entropy",
    "kcenter_greedy",
]

# Block shape of the initial candidates x centers distance computation: one float32 block is
# _BLOCK_ROWS * _BLOCK_COLS * 4 bytes (32 MiB), whatever the pool size.
_BLOCK_ROWS = 2048
_BLOCK_COLS = 4096
# At most this many near-tied candidates are re-checked in float64 per greedy step (see kcenter_greedy).
_MAX_REFINE = 4096
# Lazy greedy k-center brings stale candidates up to date one at a time (~15 us each); a full update
# costs about n_candidates * (D + 24) / 50,000 of those. When the lazy updates done so far exceed that
# per pick (plus a slack of 8 picks' worth), the rest of the run does one full update per pick.
# None = that rule; an int fixes the per-pick allowance (tests).
_LAZY_MAX_POPS: int | None = None


@dataclass(frozen=True)
class PoolView:
    """What a strategy may read about the pool at one cycle."""

    probs: np.ndarray  # [n_u, C] float32 softmax of the current model on U (rows follow `unlabeled`)
    features: np.ndarray  # [n, D] float32 L2-normalised features of EVERY pool image (rows = pool positions)
    labeled: np.ndarray  # [n_l] int64 pool positions that are labeled
    unlabeled: np.ndarray  # [n_u] int64 pool positions that are unlabeled
    labels: np.ndarray  # [n_l] int64 labels of `labeled`
    num_classes: int
    cycle: int


@dataclass(frozen=True)
class Selection:
    """A strategy's answer."""

    chosen: np.ndarray  # [b] int64 pool positions (subset of unlabeled), in pick order
    scores: np.ndarray  # [n_u] float32 score of each unlabeled row; higher = picked first
    pseudo_positions: np.ndarray  # [m] int64 pool positions given pseudo-labels for the next training (CEAL), else empty
    pseudo_labels: np.ndarray  # [m] int64


StrategyFn = Callable[[PoolView, int, np.random.Generator, Mapping[str, float]], Selection]

_EMPTY = np.zeros(0, dtype=np.int64)


# --------------------------------------------------------------------------- helpers


def entropy(probs: np.ndarray) -> np.ndarray:
    """Natural-log entropy of each row of `probs` `[n, C]` → `[n]` float64; 0·log 0 counts as 0."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"entropy: probs must be [n, C], got shape {p.shape}")
    logp = np.log(np.where(p > 0, p, 1.0))
    return -np.einsum("ij,ij->i", p, logp)


def check_budget(view: PoolView, budget: int) -> int:
    """The budget as an int; a UserError when it is negative or larger than what U still holds."""
    n_u = int(np.asarray(view.unlabeled).shape[0])
    b = int(budget)
    if b != budget or b < 0:
        raise UserError(f"active.budget: must be a whole number >= 0, got {budget!r}")
    if b > n_u:
        raise UserError(
            f"active.budget: {b} images asked at cycle {view.cycle} but only {n_u} unlabeled images are left; "
            "lower active.budget or active.cycles"
        )
    return b


def check_view(view: PoolView, *, need_probs: bool = False, need_features: bool = False) -> None:
    """Shape / dtype / disjointness checks of a pool view (a failure is a caller bug: ValueError)."""
    unl = np.asarray(view.unlabeled)
    lab = np.asarray(view.labeled)
    problems = []
    for name, arr in (("unlabeled", unl), ("labeled", lab)):
        if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
            problems.append(f"PoolView.{name}: expected a 1-D int64 array, got {arr.dtype} {arr.shape}")
    if np.asarray(view.labels).shape != lab.shape:
        problems.append(f"PoolView.labels: shape {np.asarray(view.labels).shape} != labeled {lab.shape}")
    if need_probs:
        probs = np.asarray(view.probs)
        if probs.ndim != 2 or probs.shape[0] != unl.shape[0]:
            problems.append(f"PoolView.probs: expected [{unl.shape[0]}, C], got {probs.shape}")
        elif probs.shape[1] != view.num_classes or view.num_classes < 2:
            problems.append(f"PoolView.probs: {probs.shape[1]} columns for num_classes={view.num_classes} (needs >= 2)")
        elif not np.isfinite(probs).all():
            raise AlctlError("selection: the model's probabilities hold NaN or inf (did training diverge?)")
    if need_features:
        feats = np.asarray(view.features)
        top = max(int(unl.max(initial=-1)), int(lab.max(initial=-1)))
        if feats.ndim != 2 or feats.shape[0] <= top:
            problems.append(f"PoolView.features: expected [n > {top}, D], got {feats.shape}")
    if not problems and (unl.size or lab.size):
        if min(int(unl.min(initial=0)), int(lab.min(initial=0))) < 0:
            problems.append("PoolView: negative pool position")
        else:
            n = max(int(unl.max(initial=-1)), int(lab.max(initial=-1))) + 1
            counts = np.bincount(np.concatenate([unl, lab]).astype(np.int64), minlength=n)
            if counts.max(initial=0) > 1:
                problems.append("PoolView: a pool position is repeated or both labeled and unlabeled")
    if problems:
        raise ValueError("; ".join(problems))


def _top_b(scores: np.ndarray, positions: np.ndarray, budget: int) -> np.ndarray:
    """Positions of the `budget` highest scores, highest first; equal scores: lower pool position first."""
    if budget == 0:
        return _EMPTY.copy()
    order = np.lexsort((positions, -scores.astype(np.float64)))
    return positions[order[:budget]].astype(np.int64)


def make_selection(
    chosen: np.ndarray, scores: np.ndarray, pseudo_pos: np.ndarray | None = None, pseudo_lab: np.ndarray | None = None
) -> Selection:
    """A Selection with the contract's dtypes: chosen [b] int64, scores [n_u] float32, pseudo [m] int64."""
    return Selection(
        chosen=np.ascontiguousarray(chosen, dtype=np.int64),
        scores=np.ascontiguousarray(scores, dtype=np.float32),
        pseudo_positions=_EMPTY.copy() if pseudo_pos is None else np.ascontiguousarray(pseudo_pos, dtype=np.int64),
        pseudo_labels=_EMPTY.copy() if pseudo_lab is None else np.ascontiguousarray(pseudo_lab, dtype=np.int64),
    )


# Manifest field of each strategy parameter, for messages.
PARAM_FIELDS = {"threshold": "active.ceal.threshold", "decay": "active.ceal.decay", "k": "semi.k",
                "alpha": "semi.alpha", "gamma": "semi.gamma", "tol": "semi.tol", "max_iter": "semi.max_iter"}


def number_param(params: Mapping[str, float], key: str, default: float, lo: float, hi: float) -> float:
    """params[key] (default when absent) as a float in [lo, hi]; a UserError naming the manifest field otherwise."""
    field = PARAM_FIELDS.get(key, key)
    value = params.get(key, default)
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{field}: expected a number, got {value!r}") from None
    if not (lo <= value <= hi) or math.isnan(value):
        raise UserError(f"{field}: must be in [{lo}, {hi}], got {value}")
    return value


# --------------------------------------------------------------------------- greedy k-center


def _sq_norms(x: np.ndarray) -> np.ndarray:
    """Squared row norms of float32 `x`, summed in float64, returned as float32."""
    out = np.empty(x.shape[0], dtype=np.float32)
    for s in range(0, x.shape[0], _BLOCK_ROWS * 4):
        blk = x[s : s + _BLOCK_ROWS * 4].astype(np.float64)
        out[s : s + blk.shape[0]] = np.einsum("ij,ij->i", blk, blk)
    return out


def _exact_min_dist(rows: np.ndarray, centers: np.ndarray, c_sq: np.ndarray, window: float) -> np.ndarray:
    """Exact distance of each float32 row of `rows` to its nearest row of `centers`, as
    sqrt(sum((c - r)^2)) in float64 (the same sum scipy's distance_matrix does). float32 squared
    distances (`c_sq` = squared center norms) shortlist the centers within `window` of each row's
    float32 minimum; only those are measured exactly. Works on row chunks of <= 2^22 distances."""
    r_sq = _sq_norms(rows)
    best = np.empty(rows.shape[0], dtype=np.float64)
    chunk = max(1, (1 << 22) // max(1, centers.shape[0]))
    for rs in range(0, rows.shape[0], chunk):
        r = rows[rs : rs + chunk]
        d = np.empty((r.shape[0], centers.shape[0]), dtype=np.float32)
        for cs in range(0, centers.shape[0], _BLOCK_COLS):
            blk = d[:, cs : cs + _BLOCK_COLS]
            np.matmul(r, centers[cs : cs + _BLOCK_COLS].T, out=blk)
            blk *= -2.0
            blk += c_sq[cs : cs + _BLOCK_COLS][None, :]
        d += r_sq[rs : rs + chunk, None]
        limit = d.min(axis=1) + window
        for i in range(r.shape[0]):
            close = np.flatnonzero(d[i] <= limit[i])
            diff = centers[close].astype(np.float64) - r[i].astype(np.float64)
            best[rs + i] = np.sum(diff**2, axis=-1).min()
    return np.sqrt(best)


def kcenter_greedy(
    features: np.ndarray, centers: np.ndarray, candidates: np.ndarray, budget: int
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy k-center (Sener & Savarese 2018): `budget` times, pick the candidate farthest (Euclidean)
    from its nearest center, then make it a center.

    features `[n, D]` (cast to float32), centers / candidates: int pool positions (rows of `features`).
    Returns (picked positions `[budget]` int64 in pick order, score `[len(candidates)]` float32 following
    `candidates`). A picked candidate's score is its distance to the nearest center when it was picked;
    any other candidate's score is its distance to the nearest center after all picks, so sorting by
    score puts the picks first, in pick order (ties only at equal distances; the pick order is authoritative).

    With no centers at all, the first pick is the candidate farthest from the mean of the candidates
    (first in `candidates` order on ties); its score is +inf, the distance to the nearest of no center.
    With no centers and budget 0, every score is the distance to that mean.

    Memory is linear in the pool (no candidates x centers matrix): squared distances are float32
    ||a||^2 + ||b||^2 - 2ab computed in `_BLOCK_ROWS x _BLOCK_COLS` blocks, once against the initial
    centers and once at the end against the picks. In between the greedy is lazy: each candidate keeps
    an upper bound of its squared min-distance (distances only shrink) and a heap brings up to date
    only the candidates whose bound reaches the top; should that touch too many candidates per pick
    (`_LAZY_MAX_POPS`), the rest of the run updates every candidate with one matrix-vector product
    per pick instead. Both give the same picks.

    The picks are those of exact greedy k-center on the float32 features: float32 distances only
    shortlist the farthest candidates; whenever more than one lies within the float32 rounding bound
    of the maximum, those are re-measured in float64 with direct differences (as
    scipy.spatial.distance_matrix does) and the first, in `candidates` order, of the exact maxima is
    taken, as `np.argmax` on exact distances would. (With more than `_MAX_REFINE` such near-ties at
    one step, the float32 maximum is taken instead.) Scores of candidates that are not picked carry the
    float32 error of the formula, about 1e-7 * max ||a||^2 on squared distances.
    """
    feats = np.asarray(features)
    if feats.ndim != 2:
        raise ValueError(f"kcenter_greedy: features must be [n, D], got shape {feats.shape}")
    cand = np.asarray(candidates, dtype=np.int64).ravel()
    cent = np.asarray(centers, dtype=np.int64).ravel()
    b = int(budget)
    if b < 0 or b > cand.shape[0]:
        raise ValueError(f"kcenter_greedy: budget {budget} outside [0, {cand.shape[0]}]")
    n_c = cand.shape[0]
    if n_c == 0:
        return _EMPTY.copy(), np.zeros(0, dtype=np.float32)

    x = np.ascontiguousarray(feats[cand], dtype=np.float32)  # [n_c, D] candidate rows
    dim = x.shape[1]
    center_rows = np.empty((cent.shape[0] + b, dim), dtype=np.float32)  # [n_l + b, D] centers, then picks
    center_rows[: cent.shape[0]] = feats[cent]
    if not (np.isfinite(x).all() and np.isfinite(center_rows[: cent.shape[0]]).all()):
        raise AlctlError("selection: the features hold NaN or inf (did training diverge?)")
    x_sq = _sq_norms(x)
    n_centers = cent.shape[0]
    c_sq = np.empty(cent.shape[0] + b, dtype=np.float32)
    c_sq[:n_centers] = _sq_norms(center_rows[:n_centers])

    # Bound on |float32 squared distance - exact| (recursive-summation bound of the dot product plus
    # the three additions); a window of twice that around the float32 maximum holds every exact maximum.
    max_sq = float(max(x_sq.max(initial=0.0), c_sq[:n_centers].max(initial=0.0)))
    window = 2.0 * (dim + 4) * 2.0**-24 * 4.0 * max(max_sq, np.finfo(np.float32).tiny)

    picked = np.empty(b, dtype=np.int64)
    pick_score = np.empty(b, dtype=np.float64)
    start = 0
    if n_centers:
        min_sq = np.full(n_c, np.inf, dtype=np.float32)
        _min_sq_into(min_sq, x, x_sq, center_rows[:n_centers], c_sq[:n_centers])
    else:
        # No center: start from the candidate farthest from the candidates' mean (exact, float64).
        step = _BLOCK_ROWS * 4
        mean = np.zeros(dim, dtype=np.float64)
        for rs in range(0, n_c, step):
            mean += x[rs : rs + step].astype(np.float64).sum(axis=0)
        mean /= n_c
        d_mean = np.empty(n_c, dtype=np.float64)
        for rs in range(0, n_c, step):
            d_mean[rs : rs + step] = np.sum((x[rs : rs + step].astype(np.float64) - mean) ** 2, axis=-1)
        min_sq = d_mean.astype(np.float32)  # the scores when nothing is picked
        if b:
            first = int(np.argmax(d_mean))
            picked[0], pick_score[0] = first, math.inf
            start = 1
            min_sq[:] = np.inf
            center_rows[0], c_sq[0] = x[first], x_sq[first]
            n_centers = 1
            _min_sq_into(min_sq, x, x_sq, center_rows[:1], c_sq[:1])
            min_sq[first] = -np.inf
    if start >= b:
        return _finish(cand, picked, pick_score, min_sq)

    # Lazy greedy: min_sq[i] is an upper bound, exact (in float32) for the centers before last[i];
    # distances only shrink, so only candidates whose bound reaches the top need bringing up to date.
    # The per-pick products are small or memory-bound: one BLAS thread does them as well, and avoids
    # spinning threads on a busy machine (measured 1.5 ms vs 8 ms per 49,000 x 128 matrix-vector
    # product on 2 shared cores).
    from threadpoolctl import threadpool_limits

    lazy_from = n_centers  # centers from here on are not yet in every min_sq
    per_pick = max(2, n_c * (dim + 24) // 50_000) if _LAZY_MAX_POPS is None else _LAZY_MAX_POPS
    pops_left = 8 * per_pick  # lazy updates allowed before switching to full ones
    last = np.full(n_c, n_centers, dtype=np.int64)
    heap = [(-v, i) for i, v in enumerate(min_sq.tolist()) if v != -math.inf]
    heapq.heapify(heap)
    lazy = True
    with threadpool_limits(limits=1, user_api="blas"):
        for t in range(start, b):
            near = None
            if lazy:
                pops_left += per_pick
                popped: list[int] = []
                best = -math.inf
                while heap and -heap[0][0] >= best - window:
                    i = heapq.heappop(heap)[1]
                    if last[i] < n_centers:
                        new = center_rows[last[i] : n_centers] @ x[i]
                        new *= -2.0
                        new += c_sq[last[i] : n_centers]
                        min_sq[i] = min(float(min_sq[i]), float(new.min()) + float(x_sq[i]))
                        last[i] = n_centers
                    popped.append(i)
                    best = max(best, float(min_sq[i]))
                    if len(popped) > pops_left:
                        break
                pops_left -= len(popped)
                if pops_left < 0:
                    # The bounds are too loose here: bring every candidate up to date and go on with
                    # one full matrix-vector product per pick.
                    _min_sq_into(min_sq, x, x_sq, center_rows[lazy_from:n_centers], c_sq[lazy_from:n_centers])
                    min_sq[picked[:t]] = -np.inf
                    lazy, heap = False, []
                else:
                    cand_near = np.array(sorted(popped), dtype=np.int64)
                    near = cand_near[min_sq[cand_near] >= best - window]
                    top = best
            if not lazy:
                i = int(np.argmax(min_sq))
                top = float(min_sq[i])
                near = np.flatnonzero(min_sq >= top - window)
            if near.shape[0] == 1 or near.shape[0] > _MAX_REFINE:
                i = int(near[0]) if near.shape[0] == 1 else int(near[np.argmax(min_sq[near])])
                score = math.sqrt(max(top, 0.0))
            else:
                exact = _exact_min_dist(x[near], center_rows[:n_centers], c_sq[:n_centers], window)
                k = int(np.argmax(exact))
                i, score = int(near[k]), float(exact[k])
            picked[t], pick_score[t] = i, score
            center_rows[n_centers], c_sq[n_centers] = x[i], x_sq[i]
            n_centers += 1
            if lazy:
                for j in popped:
                    if j != i:
                        heapq.heappush(heap, (-float(min_sq[j]), j))
            else:
                _update(min_sq, x, x_sq, i)
            min_sq[i] = -np.inf  # a picked candidate is never picked again

    if lazy:  # final distances of every candidate (multi-threaded blocked products)
        _min_sq_into(min_sq, x, x_sq, center_rows[lazy_from:n_centers], c_sq[lazy_from:n_centers])
        min_sq[picked] = -np.inf
    return _finish(cand, picked, pick_score, min_sq)


def _finish(cand: np.ndarray, picked: np.ndarray, pick_score: np.ndarray, min_sq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(picked positions, float32 scores): picks score their distance when picked, the rest their final one."""
    scores = np.sqrt(np.maximum(min_sq, 0.0, dtype=np.float32))
    if picked.shape[0]:
        # Exact greedy k-center scores never increase along the picks and the leftovers end below the
        # last pick; enforce it against float32 rounding so that sorting by score replays the picks.
        ordered = np.maximum.accumulate(pick_score[::-1])[::-1].astype(np.float32)
        scores = np.minimum(scores, ordered[-1])
        scores[picked] = ordered
    return cand[picked], scores.astype(np.float32)


def _min_sq_into(min_sq: np.ndarray, x: np.ndarray, x_sq: np.ndarray, centers: np.ndarray, c_sq: np.ndarray) -> None:
    """min_sq <- min(min_sq, squared distance of each row of x to its nearest row of `centers`), float32,
    in `_BLOCK_ROWS x _BLOCK_COLS` blocks with ||a||^2 + ||b||^2 - 2ab."""
    for cs in range(0, centers.shape[0], _BLOCK_COLS):
        cblk = centers[cs : cs + _BLOCK_COLS]
        csq = c_sq[cs : cs + _BLOCK_COLS]
        for rs in range(0, x.shape[0], _BLOCK_ROWS):
            g = x[rs : rs + _BLOCK_ROWS] @ cblk.T  # [rows, cols] float32
            g *= -2.0
            g += csq[None, :]
            part = g.min(axis=1)
            part += x_sq[rs : rs + _BLOCK_ROWS]
            np.minimum(min_sq[rs : rs + _BLOCK_ROWS], part, out=min_sq[rs : rs + _BLOCK_ROWS])


def _update(min_sq: np.ndarray, x: np.ndarray, x_sq: np.ndarray, i: int) -> None:
    """min_sq <- min(min_sq, ||x - x[i]||^2) for every candidate row, in place (one matvec)."""
    d = x @ x[i]
    d *= -2.0
    d += x_sq
    d += x_sq[i]
    np.minimum(min_sq, d, out=min_sq)


# --------------------------------------------------------------------------- strategies


def _random(view: PoolView, budget: int, rng: np.random.Generator, params: Mapping[str, float]) -> Selection:
    """b uniformly random images of U: a uniform score per row, the b highest chosen."""
    b = check_budget(view, budget)
    check_view(view)
    unl = np.asarray(view.unlabeled, dtype=np.int64)
    scores = rng.random(unl.shape[0], dtype=np.float32)
    return make_selection(_top_b(scores, unl, b), scores)


def _uncertainty(view: PoolView, budget: int, rng: np.random.Generator, params: Mapping[str, float]) -> Selection:
    """The b images of U with the highest softmax entropy."""
    b = check_budget(view, budget)
    check_view(view, need_probs=True)
    unl = np.asarray(view.unlabeled, dtype=np.int64)
    scores = entropy(view.probs).astype(np.float32)
    return make_selection(_top_b(scores, unl, b), scores)


def _coreset(view: PoolView, budget: int, rng: np.random.Generator, params: Mapping[str, float]) -> Selection:
    """Greedy k-center on the features from the labeled set (Sener & Savarese 2018)."""
    b = check_budget(view, budget)
    check_view(view, need_features=True)
    chosen, scores = kcenter_greedy(view.features, view.labeled, view.unlabeled, b)
    return make_selection(chosen, scores)


def _ceal(view: PoolView, budget: int, rng: np.random.Generator, params: Mapping[str, float]) -> Selection:
    """CEAL (Wang et al. 2017): uncertainty selection, plus pseudo-labels (argmax) on the remaining
    images of U whose normalised entropy H / log C is below max(0, threshold - decay * cycle)."""
    b = check_budget(view, budget)
    check_view(view, need_probs=True)
    threshold = number_param(params, "threshold", 0.1, 0.0, 1.0)
    decay = number_param(params, "decay", 0.00033, 0.0, 1.0)
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


def _jlp(view: PoolView, budget: int, rng: np.random.Generator, params: Mapping[str, float]) -> Selection:
    """jLP (Siméoni et al.): diffusion-based selection, implemented in `alctl.propagate.jlp_select`."""
    b = check_budget(view, budget)
    from alctl.propagate import jlp_select

    return jlp_select(view, b, rng, params)


STRATEGIES: dict[str, StrategyFn] = {
    "random": _random,
    "uncertainty": _uncertainty,
    "coreset": _coreset,
    "ceal": _ceal,
    "jlp": _jlp,
}


def get_strategy(name: str) -> StrategyFn:
    """The acquisition function registered under `name`; a UserError listing the valid names otherwise."""
    try:
        return STRATEGIES[name]
    except (KeyError, TypeError):
        raise UserError(f"active.strategy: unknown strategy '{name}'; valid: {', '.join(sorted(STRATEGIES))}") from None


def select(
    name: str,
    view: PoolView,
    budget: int,
    rng: np.random.Generator,
    params: Mapping[str, float] | None = None,
) -> Selection:
    """Run strategy `name` on `view` for `budget` images and check its answer against the contract."""
    fn = get_strategy(name)
    b = check_budget(view, budget)
    sel = fn(view, b, rng, {} if params is None else params)
    unl = np.asarray(view.unlabeled, dtype=np.int64)
    chosen = np.asarray(sel.chosen)
    problems = []
    if chosen.shape != (b,):
        problems.append(f"chosen has shape {chosen.shape}, expected ({b},)")
    elif np.unique(chosen).shape[0] != b or not np.isin(chosen, unl).all():
        problems.append("chosen repeats a position or holds one that is not unlabeled")
    if np.asarray(sel.scores).shape != unl.shape:
        problems.append(f"scores has shape {np.asarray(sel.scores).shape}, expected {unl.shape}")
    if np.asarray(sel.pseudo_positions).shape != np.asarray(sel.pseudo_labels).shape:
        problems.append("pseudo_positions and pseudo_labels differ in shape")
    if problems:
        raise RuntimeError(f"strategy '{name}' broke the Selection contract: " + "; ".join(problems))
    return sel
