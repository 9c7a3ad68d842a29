"""Geometric strategies: CoreSet (Sener & Savarese 2018), i.e. greedy k-center on the features.

Array contract: features `[n, D]` float32 (cast if not), one row per pool position, as a numpy array or a
torch tensor (a CPU tensor takes the numpy path; a CUDA tensor is used on its device and only the scores
`[n_c]` come back); centers / candidates int64 pool positions; picks `[b]` int64 pool positions in pick
order; scores `[n_c]` float32 following the candidates. Non-finite features: FloatingPointError. Pure: no
file I/O. Measured timings behind the tuning constants: benchmarks/README.md.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np

from alctl.strategies.base import (
    EMPTY,
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

__all__ = ["kcenter_greedy", "coreset_select"]

# Block shape of the initial candidates x centers distance computation: one float32 block is
# _BLOCK_ROWS * _BLOCK_COLS * 4 bytes (32 MiB), whatever the pool size.
_BLOCK_ROWS = 2048
_BLOCK_COLS = 4096
# At most this many near-tied candidates are re-checked in float64 per greedy step (see kcenter_greedy).
_MAX_REFINE = 4096
# Lazy greedy k-center brings stale candidates up to date one at a time; a full update costs about
# n_candidates * (D + 24) / 50,000 of those (measured ratio). When the lazy updates done so far exceed
# that per pick (plus a slack of 8 picks' worth), the rest of the run does one full update per pick.
# None = that rule; an int fixes the per-pick allowance (tests).
_LAZY_MAX_POPS: int | None = None


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
    features: np.ndarray | torch.Tensor, centers: np.ndarray, candidates: np.ndarray, budget: int
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy k-center (Sener & Savarese 2018): `budget` times, pick the candidate farthest (Euclidean) from its
    nearest center, then make it a center; the picks of exact greedy k-center on the float32 features.

    features `[n, D]` (float32 numpy array or torch tensor; a CUDA tensor runs on its device), centers /
    candidates: int pool positions. Returns (picked positions `[budget]` int64 in pick order, scores
    `[len(candidates)]` float32 following `candidates`: a pick's distance to its nearest center when picked, any
    other candidate's after all picks, so sorting by score replays the picks). No centers: the first pick is the
    candidate farthest from the candidates' mean (score +inf). ValueError on a bad shape. How it stays linear in
    memory and exact: docs/internals.md, Greedy k-center."""
    if is_tensor(features):
        shape = tuple(features.shape)
    else:
        features = np.asarray(features)
        shape = features.shape
    if len(shape) != 2:
        raise ValueError(f"kcenter_greedy: features must be [n, D], got shape {shape}")
    cand = np.asarray(candidates, dtype=np.int64).ravel()
    cent = np.asarray(centers, dtype=np.int64).ravel()
    b = int(budget)
    if b < 0 or b > cand.shape[0]:
        raise ValueError(f"kcenter_greedy: budget {budget} outside [0, {cand.shape[0]}]")
    if cand.shape[0] == 0:
        return EMPTY.copy(), np.zeros(0, dtype=np.float32)
    if is_tensor(features):
        if features.device.type != "cpu":
            return _kcenter_torch(features, cent, cand, b)
        features = features.detach().numpy()
    return _kcenter_numpy(features, cent, cand, b)


def _kcenter_numpy(feats: np.ndarray, cent: np.ndarray, cand: np.ndarray, b: int) -> tuple[np.ndarray, np.ndarray]:
    """`kcenter_greedy` on host arrays (checked arguments, at least one candidate): lazy greedy, see there."""
    n_c = cand.shape[0]
    x = np.ascontiguousarray(feats[cand], dtype=np.float32)  # [n_c, D] candidate rows
    dim = x.shape[1]
    center_rows = np.empty((cent.shape[0] + b, dim), dtype=np.float32)  # [n_l + b, D] centers, then picks
    center_rows[: cent.shape[0]] = feats[cent]
    if not (np.isfinite(x).all() and np.isfinite(center_rows[: cent.shape[0]]).all()):
        raise FloatingPointError(NON_FINITE_FEATURES)
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
    # spinning threads on a busy machine (benchmarks/README.md).
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


# --------------------------------------------------------------------------- greedy k-center on a device


@contextmanager
def _ieee_float32_matmul() -> Iterator[None]:
    """CUDA float32 matrix products in full float32 precision (no TF32) inside the block, as the float32
    rounding bound of `kcenter_greedy` assumes; the process's setting is restored after."""
    import torch

    mm = torch.backends.cuda.matmul
    if hasattr(mm, "fp32_precision"):  # torch >= 2.9; reading allow_tf32 after the new API was used raises
        old = mm.fp32_precision
        mm.fp32_precision = "ieee"
        try:
            yield
        finally:
            mm.fp32_precision = old
    else:
        old_flag = mm.allow_tf32
        mm.allow_tf32 = False
        try:
            yield
        finally:
            mm.allow_tf32 = old_flag


def _sq_norms_t(x: torch.Tensor) -> torch.Tensor:
    """Squared row norms of float32 `x` `[m, D]`, summed in float64, returned as float32 (on x's device)."""
    import torch

    out = torch.empty(x.shape[0], dtype=torch.float32, device=x.device)
    for s in range(0, x.shape[0], _BLOCK_ROWS * 4):
        blk = x[s : s + _BLOCK_ROWS * 4].double()
        out[s : s + blk.shape[0]] = (blk * blk).sum(dim=1)
    return out


def _min_sq_into_t(min_sq: torch.Tensor, x: torch.Tensor, x_sq: torch.Tensor, centers: torch.Tensor,
                   c_sq: torch.Tensor) -> None:
    """`_min_sq_into` on torch tensors: min_sq <- min(min_sq, ||x - nearest center||^2) in float32 blocks."""
    import torch

    for cs in range(0, centers.shape[0], _BLOCK_COLS):
        cblk = centers[cs : cs + _BLOCK_COLS]
        csq = c_sq[cs : cs + _BLOCK_COLS]
        for rs in range(0, x.shape[0], _BLOCK_ROWS):
            g = x[rs : rs + _BLOCK_ROWS] @ cblk.T  # [rows, cols] float32
            g *= -2.0
            g += csq[None, :]
            part = g.amin(dim=1)
            part += x_sq[rs : rs + _BLOCK_ROWS]
            torch.minimum(min_sq[rs : rs + _BLOCK_ROWS], part, out=min_sq[rs : rs + _BLOCK_ROWS])


def _exact_min_dist_t(rows: torch.Tensor, centers: torch.Tensor, c_sq: torch.Tensor, window: float) -> torch.Tensor:
    """`_exact_min_dist` on torch tensors: float64 distance `[m]` of each row to its nearest center, measured
    as sqrt(sum((c - r)^2)) only for the centers within `window` of the row's float32 minimum."""
    import torch

    r_sq = _sq_norms_t(rows)
    best = torch.empty(rows.shape[0], dtype=torch.float64, device=rows.device)
    chunk = max(1, (1 << 22) // max(1, centers.shape[0]))
    pair_chunk = max(1, (1 << 22) // max(1, rows.shape[1]))  # (row, center) pairs differenced at once
    for rs in range(0, rows.shape[0], chunk):
        r = rows[rs : rs + chunk]
        d = r @ centers.T  # [rows, centers] float32
        d *= -2.0
        d += c_sq[None, :]
        d += r_sq[rs : rs + chunk, None]
        limit = d.amin(dim=1) + window
        ri, ci = torch.nonzero(d <= limit[:, None], as_tuple=True)
        out = torch.full((r.shape[0],), math.inf, dtype=torch.float64, device=rows.device)
        for ps in range(0, ri.shape[0], pair_chunk):
            pr, pc = ri[ps : ps + pair_chunk], ci[ps : ps + pair_chunk]
            diff = centers[pc].double() - r[pr].double()
            out.scatter_reduce_(0, pr, (diff * diff).sum(dim=1), reduce="amin")
        best[rs : rs + r.shape[0]] = out
    return best.sqrt()


def _kcenter_torch(features: torch.Tensor, cent: np.ndarray, cand: np.ndarray, b: int) -> tuple[np.ndarray, np.ndarray]:
    """`kcenter_greedy` on `features`' device (checked arguments, at least one candidate): every pick updates
    every candidate's squared distance with one matrix-vector product, then takes the argmax; near-ties
    within the float32 rounding window are re-measured in float64 there. Runs on any device (tests use
    the CPU); only the picks and the final scores come to the host."""
    import torch

    dev = features.device
    with torch.no_grad(), _ieee_float32_matmul():
        feats = features.detach()
        n_c, n_centers = cand.shape[0], cent.shape[0]
        x = feats[torch.from_numpy(cand).to(dev)].to(torch.float32).contiguous()  # [n_c, D] candidate rows
        dim = x.shape[1]
        center_rows = torch.empty((n_centers + b, dim), dtype=torch.float32, device=dev)  # centers, then picks
        center_rows[:n_centers] = feats[torch.from_numpy(cent).to(dev)]
        if not (bool(torch.isfinite(x).all()) and bool(torch.isfinite(center_rows[:n_centers]).all())):
            raise FloatingPointError(NON_FINITE_FEATURES)
        x_sq = _sq_norms_t(x)
        c_sq = torch.empty(n_centers + b, dtype=torch.float32, device=dev)
        c_sq[:n_centers] = _sq_norms_t(center_rows[:n_centers])
        max_sq = float(torch.cat([x_sq, c_sq[:n_centers]]).max())
        window = 2.0 * (dim + 4) * 2.0**-24 * 4.0 * max(max_sq, np.finfo(np.float32).tiny)

        picked: list[int] = []
        pick_score: list[float] = []
        if n_centers:
            min_sq = torch.full((n_c,), math.inf, dtype=torch.float32, device=dev)
            _min_sq_into_t(min_sq, x, x_sq, center_rows[:n_centers], c_sq[:n_centers])
        else:
            # No center: start from the candidate farthest from the candidates' mean (exact, float64).
            step = _BLOCK_ROWS * 4
            mean = torch.zeros(dim, dtype=torch.float64, device=dev)
            for rs in range(0, n_c, step):
                mean += x[rs : rs + step].double().sum(dim=0)
            mean /= n_c
            d_mean = torch.empty(n_c, dtype=torch.float64, device=dev)
            for rs in range(0, n_c, step):
                d_mean[rs : rs + step] = ((x[rs : rs + step].double() - mean) ** 2).sum(dim=1)
            min_sq = d_mean.float()  # the scores when nothing is picked
            if b:
                first = int(torch.argmax(d_mean))
                picked.append(first)
                pick_score.append(math.inf)
                min_sq.fill_(math.inf)
                center_rows[0], c_sq[0] = x[first], x_sq[first]
                n_centers = 1
                _min_sq_into_t(min_sq, x, x_sq, center_rows[:1], c_sq[:1])
                min_sq[first] = -math.inf

        for _ in range(len(picked), b):
            i = int(torch.argmax(min_sq))  # the first of equal maxima
            top = float(min_sq[i])
            near_mask = min_sq >= top - window
            count = int(near_mask.sum())
            if count == 1 or count > _MAX_REFINE:
                score = math.sqrt(max(top, 0.0))
            else:
                near = torch.nonzero(near_mask).flatten()  # ascending: candidates order
                exact = _exact_min_dist_t(x[near], center_rows[:n_centers], c_sq[:n_centers], window)
                k = int(torch.argmax(exact))
                i, score = int(near[k]), float(exact[k])
            picked.append(i)
            pick_score.append(score)
            center_rows[n_centers], c_sq[n_centers] = x[i], x_sq[i]
            n_centers += 1
            d = torch.mv(x, x[i])
            d *= -2.0
            d += x_sq
            d += x_sq[i]
            torch.minimum(min_sq, d, out=min_sq)
            min_sq[i] = -math.inf  # a picked candidate is never picked again
        min_host = min_sq.cpu().numpy()
    return _finish(cand, np.asarray(picked, dtype=np.int64), np.asarray(pick_score, dtype=np.float64), min_host)


# --------------------------------------------------------------------------- strategy


def coreset_select(view: PoolView, budget: int, rng: np.random.Generator, params: StrategyParams) -> Selection:
    """CoreSet: greedy k-center on the features from the labeled set (`kcenter_greedy`); scores as it returns them."""
    b = check_budget(view, budget)
    check_view(view, need_features=True)
    chosen, scores = kcenter_greedy(view.features, view.labeled, view.unlabeled, b)
    return make_selection(chosen, scores)
