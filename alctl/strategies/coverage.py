"""Coverage strategies for low budgets: TypiClust (Hacohen et al. 2022) and ProbCover (Yehuda et al. 2022).

Array contract: features `[n, D]` float32 L2-normalised, one row per pool position (numpy or a torch tensor on
any device; only the rows of the labeled and unlabeled images come to the host, float32); x `[m, D]` such
rows; clusters `[n]` int64 cluster id per pool position (-1 = in no cluster); typicality `[m]` float64; the
ProbCover graph is CSR over nodes 0..m-1: indptr `[m + 1]` int64, indices `[E]` int32; picks `[b]` int64 pool
positions in pick order; scores `[n_u]` float32 following view.unlabeled. Non-finite features:
FloatingPointError. Randomness: TypiClust seeds its k-means from `rng`; ProbCover uses none (ties go to the
lower pool position). Pure: no file I/O.
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
    host_rows,
    make_selection,
)

__all__ = [
    "typiclust_clusters", "typicality", "typiclust_pick", "typiclust_select", "coverage_graph", "probcover_greedy",
    "purity_delta", "probcover_select",
]

# TypiClust: neighbours of the typicality (Hacohen et al.: 20), the constant the authors' code adds to the mean
# distance (so that duplicates stay finite), faiss k-means iterations.
_TYPICALITY_K = 20
_TYPICALITY_EPS = 1e-5
_KMEANS_ITERS = 20
# Entries of one float64 distance block of the typicality (32 MiB).
_BLOCK = 1 << 22
# ProbCover: query rows per faiss range search, edges gathered at once, and the most edges the graph may hold
# (int32 indices: 4 GiB).
_RANGE_ROWS = 1024
_GATHER = 1 << 24
_MAX_EDGES = 1 << 30
# ProbCover's automatic radius: the share of pure balls it keeps (the paper's alpha = 0.95).
PURITY = 0.95


# --------------------------------------------------------------------------- TypiClust


def typiclust_clusters(x: np.ndarray, n_clusters: int, seed: int) -> np.ndarray:
    """faiss k-means of the rows x `[m, D]` into n_clusters (every row used, `_KMEANS_ITERS` iterations, seeded)
    → the cluster of each row `[m]` int64 (nearest final centroid)."""
    import faiss

    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"typiclust_clusters: x must be [m, D], got shape {x.shape}")
    m, d = x.shape
    if not 1 <= int(n_clusters) <= m:
        raise ValueError(f"typiclust_clusters: needs 1 <= n_clusters <= m, got n_clusters={n_clusters}, m={m}")
    km = faiss.Kmeans(d, int(n_clusters), niter=_KMEANS_ITERS, seed=int(seed) & 0x7FFFFFFF, verbose=False,
                      max_points_per_centroid=10_000_000, min_points_per_centroid=1)
    km.train(x)
    _, nearest = km.index.search(x, 1)
    return nearest[:, 0].astype(np.int64)


def typicality(x: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Typicality of each row of x `[m, D]` within its group (`groups` `[m]` ints) → `[m]` float64:
    1 / (mean Euclidean distance to its k = min(20, m_g - 1) nearest other rows of the group + 1e-5); 0 for a
    row alone in its group.

    Vectorised over groups: groups are bucketed by size rounded up to a power of two s, and each bucket's
    squared distances are batched `[groups, rows, s]` float64 matrices (||a||² + ||b||² - 2ab; symmetrised when a
    group's matrix fits one block, so equidistant pairs tie exactly; padding columns at +inf), at most `_BLOCK`
    entries at a time; the k smallest are found on squared distances and only they are square-rooted. The
    products are small: one BLAS thread (more only spin on a busy machine, benchmarks/README.md)."""
    from threadpoolctl import threadpool_limits

    x = np.asarray(x, dtype=np.float64)
    g = np.asarray(groups)
    m = g.shape[0]
    if x.ndim != 2 or x.shape[0] != m:
        raise ValueError(f"typicality: x [m, D] and groups [m] disagree: {x.shape}, {g.shape}")
    out = np.zeros(m, dtype=np.float64)
    if m == 0:
        return out
    order = np.argsort(g, kind="stable")
    _, starts, counts = np.unique(g[order], return_index=True, return_counts=True)
    padded = np.left_shift(1, np.ceil(np.log2(counts)).astype(np.int64))
    sq_all = np.einsum("ij,ij->i", x, x)
    with threadpool_limits(limits=1, user_api="blas"):
        for s in np.unique(padded[counts > 1]).tolist():
            sel = np.flatnonzero((padded == s) & (counts > 1))
            rows_per = max(1, min(s, _BLOCK // s))  # rows of a group per block
            groups_per = max(1, _BLOCK // (s * max(s, x.shape[1]))) if rows_per == s else 1  # also bounds [g, s, D]
            col = np.arange(s)
            for c0 in range(0, sel.size, groups_per):
                grp = sel[c0 : c0 + groups_per]
                cnt = counts[grp]
                valid = col[None, :] < cnt[:, None]  # [g, s]
                idx = order[np.where(valid, starts[grp][:, None] + col[None, :], starts[grp][:, None])]  # pads: row 0
                xs = x[idx]  # [g, s, D]
                sq = sq_all[idx]  # [g, s]
                sq_col = np.where(valid, sq, np.inf)  # padding columns: never among the nearest
                k = np.minimum(_TYPICALITY_K, cnt - 1)  # [g] >= 1
                kmax = int(k.max())
                for r0 in range(0, s, rows_per):
                    r = min(rows_per, s - r0)
                    d2 = np.matmul(xs[:, r0 : r0 + r], xs.transpose(0, 2, 1))  # [g, r, s]
                    d2 *= -2.0
                    d2 += sq[:, r0 : r0 + r, None]
                    d2 += sq_col[:, None, :]
                    if r == s:
                        d2 += d2.transpose(0, 2, 1).copy()
                        d2 *= 0.5
                    d2[:, np.arange(r), r0 + np.arange(r)] = np.inf  # itself
                    near = np.partition(d2, kmax - 1, axis=2)[:, :, :kmax]
                    near.sort(axis=2)
                    np.maximum(near, 0.0, out=near)
                    np.sqrt(near, out=near)
                    kth = np.broadcast_to((k - 1)[:, None, None], (grp.size, r, 1))
                    total = np.take_along_axis(np.cumsum(near, axis=2), kth, axis=2)[:, :, 0]
                    typ = 1.0 / (total / k[:, None] + _TYPICALITY_EPS)
                    keep = valid[:, r0 : r0 + r]
                    out[idx[:, r0 : r0 + r][keep]] = typ[keep]
    return out


def typiclust_pick(
    features: np.ndarray, clusters: np.ndarray, labeled: np.ndarray, unlabeled: np.ndarray, budget: int
) -> tuple[np.ndarray, np.ndarray]:
    """TypiClust's choice for given clusters: (picks `[budget]` int64 pool positions in pick order, typicality of
    each unlabeled image within its cluster `[n_u]` float64).

    features `[n, D]` (numpy or tensor), clusters `[n]` (the cluster of each pool position; every unlabeled one
    must have one; labeled ones with -1 count in none). Clusters holding an unlabeled image are ordered as the
    authors' code does: fewest labeled images first (uncovered clusters first), then the largest (labeled +
    unlabeled), then the lower cluster id; pick i goes to the i-th of them: its unlabeled image of highest
    typicality (`typicality` among the cluster's unlabeled images; equal: lower pool position). With fewer such
    clusters than the budget, the order starts again over what is left, typicality recomputed without the picks.
    """
    unl = np.asarray(unlabeled, dtype=np.int64)
    lab = np.asarray(labeled, dtype=np.int64)
    cl = np.asarray(clusters, dtype=np.int64)
    b = int(budget)
    if not 0 <= b <= unl.size:
        raise ValueError(f"typiclust_pick: budget {budget} outside [0, {unl.size}]")
    cl_u, cl_l = cl[unl], cl[lab]
    if (cl_u < 0).any():
        raise ValueError("typiclust_pick: every unlabeled image needs a cluster (got -1)")
    x = host_rows(features, unl).astype(np.float64)
    typ = typicality(x, cl_u)
    if b == 0:
        return EMPTY.copy(), typ
    ids, inv = np.unique(np.concatenate([cl_u, cl_l[cl_l >= 0]]), return_inverse=True)
    cu, cl_lab = inv[: unl.size], inv[unl.size :]
    n_clusters = ids.size
    n_lab = np.bincount(cl_lab, minlength=n_clusters)
    size = np.bincount(cu, minlength=n_clusters) + n_lab
    order = np.lexsort((ids, -size, n_lab))
    rank = np.empty(n_clusters, dtype=np.int64)
    rank[order] = np.arange(n_clusters)
    picks: list[np.ndarray] = []
    n_picked = 0
    left = np.ones(unl.size, dtype=bool)
    cur = typ
    while n_picked < b:
        avail = np.bincount(cu[left], minlength=n_clusters) > 0
        visit = order[avail[order]][: b - n_picked]
        rows = np.flatnonzero(left & np.isin(cu, visit))
        rows = rows[np.lexsort((unl[rows], -cur[rows], cu[rows]))]  # by cluster, best first
        best = rows[np.concatenate([[True], cu[rows][1:] != cu[rows][:-1]])]
        best = best[np.argsort(rank[cu[best]], kind="stable")]
        picks.append(best)
        n_picked += best.size
        left[best] = False
        if n_picked < b:  # another round over what is left
            cur = np.zeros(unl.size, dtype=np.float64)
            cur[left] = typicality(x[left], cu[left])
    return unl[np.concatenate(picks)], typ


def _checked(view: PoolView, budget: int) -> tuple[int, np.ndarray, np.ndarray]:
    """The budget and the labeled `[n_l]` / unlabeled `[n_u]` int64 positions of a view whose features are checked."""
    b = check_budget(view, budget)
    check_view(view, need_features=True)
    return b, np.asarray(view.labeled, dtype=np.int64), np.asarray(view.unlabeled, dtype=np.int64)


def typiclust_select(view: PoolView, budget: int, rng: np.random.Generator, params: StrategyParams) -> Selection:
    """TypiClust (Hacohen et al. 2022): k-means of the labeled and unlabeled images' features into |L| + b clusters
    (`typiclust_clusters`, seeded from `rng`), then the most typical unlabeled image of each of the b largest
    uncovered clusters (`typiclust_pick`). Scores `[n_u]` float32: typicality within the image's cluster (the
    picks are per-cluster maxima, not the b highest overall).

    Departures from the authors' code, which follow the paper: no cap of 500 clusters, no skipping of clusters
    of 5 images or fewer, k = min(20, size - 1) neighbours (their code: min(20, size // 2)), Euclidean
    distances (their faiss IndexFlatL2: squared ones), faiss k-means (theirs: scikit-learn)."""
    b, lab, unl = _checked(view, budget)
    if unl.size == 0:
        return make_selection(EMPTY, np.zeros(0, dtype=np.float32))
    nodes = np.concatenate([lab, unl])
    x = host_rows(view.features, nodes)
    assign = typiclust_clusters(x, max(1, lab.size + b), int(rng.integers(0, 2**31 - 1)))
    clusters = np.full(int(nodes.max()) + 1, -1, dtype=np.int64)
    clusters[nodes] = assign
    picks, typ = typiclust_pick(view.features, clusters, lab, unl, b)
    return make_selection(picks, typ)


# --------------------------------------------------------------------------- ProbCover


def coverage_graph(x: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """The closed delta-balls of the rows of x `[m, D]` as a CSR graph (indptr `[m + 1]` int64, indices `[E]`
    int32): j is in row i iff sum((x_i - x_j)^2) <= delta^2 in float64 (so i is in its own row, and j in row i iff
    i in row j).

    faiss range search (IndexFlatL2, float32, `_RANGE_ROWS` queries at a time) finds the pairs within delta^2 plus
    a float32 rounding window; those within the window of delta^2 are re-measured in float64. Memory: O(E); a
    ValueError past `_MAX_EDGES` edges (delta too large for the pool)."""
    import faiss

    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"coverage_graph: x must be [m, D], got shape {x.shape}")
    m, d = x.shape
    r2 = float(delta) ** 2
    indptr = np.zeros(m + 1, dtype=np.int64)
    if m == 0:
        return indptr, np.zeros(0, dtype=np.int32)
    max_sq = float(np.einsum("ij,ij->i", x, x, dtype=np.float64).max())
    window = 2.0 * (d + 4) * 2.0**-24 * 4.0 * max(max_sq, np.finfo(np.float32).tiny)
    index = faiss.IndexFlatL2(d)
    index.add(x)
    parts: list[np.ndarray] = []
    total = 0
    for q0 in range(0, m, _RANGE_ROWS):
        q = x[q0 : q0 + _RANGE_ROWS]
        lims, dist, ids = index.range_search(q, r2 + window)
        row = np.repeat(np.arange(q0, q0 + q.shape[0]), np.diff(lims.astype(np.int64)))
        keep = dist < r2 - window
        check = np.flatnonzero(~keep)
        if check.size:
            diff = x[row[check]].astype(np.float64) - x[ids[check]].astype(np.float64)
            keep[check] = np.einsum("ij,ij->i", diff, diff) <= r2
        indptr[q0 + 1 : q0 + q.shape[0] + 1] = np.bincount(row[keep] - q0, minlength=q.shape[0])
        parts.append(ids[keep].astype(np.int32))
        total += parts[-1].size
        if total > _MAX_EDGES:
            raise ValueError(f"probcover: delta {delta} puts more than {_MAX_EDGES} pairs of images within reach;"
                             " lower active.probcover.delta")
    np.cumsum(indptr, out=indptr)
    return indptr, np.concatenate(parts)


def _ball_counts(indptr: np.ndarray, indices: np.ndarray, nodes: np.ndarray, m: int) -> np.ndarray:
    """For each node x `[m]` int64: how many of `nodes` have x in their ball (in chunks of `_GATHER` edges)."""
    out = np.zeros(m, dtype=np.int64)
    nodes = np.asarray(nodes, dtype=np.int64)
    lens = indptr[nodes + 1] - indptr[nodes]
    ends = np.cumsum(lens)
    s = 0
    while s < nodes.size:
        e = max(s + 1, int(np.searchsorted(ends, (ends[s - 1] if s else 0) + _GATHER, side="right")))
        starts, ln = indptr[nodes[s:e]], lens[s:e]
        n_edges = int(ln.sum())
        if n_edges:
            offs = np.repeat(starts - (np.cumsum(ln) - ln), ln) + np.arange(n_edges)
            out += np.bincount(indices[offs], minlength=m)
        s = e
    return out


def probcover_greedy(
    indptr: np.ndarray, indices: np.ndarray, sources: np.ndarray, candidates: np.ndarray, budget: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greedy max coverage on a symmetric ball graph (`coverage_graph`): the balls of `sources` cover from the
    start; `budget` times, the candidate whose ball holds the most uncovered nodes is picked (equal: the lower
    node) and its ball covered. → (picks `[budget]` int64 nodes in pick order, each pick's gain at its turn
    `[budget]` int64, every node's gain after the picks `[m]` int64). With every node covered the gains are 0
    and the lowest candidate left is picked. O(E) in all plus O(m) per pick."""
    m = indptr.shape[0] - 1
    cand = np.asarray(candidates, dtype=np.int64)
    b = int(budget)
    if not 0 <= b <= cand.size:
        raise ValueError(f"probcover_greedy: budget {budget} outside [0, {cand.size}]")
    covered = np.zeros(m, dtype=bool)
    src = np.asarray(sources, dtype=np.int64)
    if src.size:
        covered[_ball_counts(indptr, indices, src, m) > 0] = True
    gain = np.diff(indptr) - _ball_counts(indptr, indices, np.flatnonzero(covered), m)
    avail = np.zeros(m, dtype=bool)
    avail[cand] = True
    picks = np.empty(b, dtype=np.int64)
    pick_gain = np.empty(b, dtype=np.int64)
    for t in range(b):
        p = int(np.argmax(np.where(avail, gain, -1)))
        picks[t], pick_gain[t] = p, gain[p]
        avail[p] = False
        ball = indices[indptr[p] : indptr[p + 1]]
        new = ball[~covered[ball]].astype(np.int64)
        if new.size:
            covered[new] = True
            gain -= _ball_counts(indptr, indices, new, m)
    return picks, pick_gain, gain


def purity_delta(x: np.ndarray, n_clusters: int, seed: int, purity: float = PURITY) -> float:
    """ProbCover's choice of radius (Yehuda et al. 2022, sec. 4.1): the largest delta such that at least `purity`
    of the closed delta-balls around the rows of x `[m, D]` are pure, a ball being pure when every row in it
    shares its centre's k-means cluster (`typiclust_clusters` with n_clusters = the number of classes, seeded).

    Exact, with no grid of candidates: the ball of row i is pure iff delta < r_i, r_i = its distance to the
    nearest row of another cluster (faiss IndexFlatL2 over the other clusters' rows, per cluster), so the answer
    is the largest r_j with #{i: r_i > r_j} >= purity * m (float64 distances; a floor of 1e-6 when 5% of the rows
    or more sit on another cluster's). One cluster only: 2.0 (every ball is pure)."""
    import faiss

    x = np.ascontiguousarray(x, dtype=np.float32)
    m = x.shape[0]
    k = max(1, min(int(n_clusters), m))
    assign = typiclust_clusters(x, k, seed) if k > 1 else np.zeros(m, dtype=np.int64)
    r = np.full(m, np.inf)
    for c in np.unique(assign).tolist():
        inside = assign == c
        if inside.all():
            break
        index = faiss.IndexFlatL2(x.shape[1])
        index.add(x[~inside])
        _, nearest = index.search(x[inside], 1)
        diff = x[inside].astype(np.float64) - x[~inside][nearest[:, 0]].astype(np.float64)
        r[inside] = np.sqrt(np.einsum("ij,ij->i", diff, diff))
    if not np.isfinite(r).any():
        return 2.0
    s = np.sort(r)
    pure = m - np.searchsorted(s, s, side="right")  # rows whose ball of radius s_j is pure
    ok = s[(pure >= purity * m) & np.isfinite(s)]
    return float(min(2.0, max(float(ok.max()) if ok.size else 0.0, 1e-6)))


def probcover_select(view: PoolView, budget: int, rng: np.random.Generator, params: StrategyParams) -> Selection:
    """ProbCover (Yehuda et al. 2022): greedy max coverage of the labeled and unlabeled images by balls of radius
    active.probcover.delta (Euclidean distance between L2-normalised features) around the picks; balls around
    labeled images cover from the start (`coverage_graph`, `probcover_greedy`; equal gains: lower pool position).

    delta auto: the radius by the paper's purity rule (`purity_delta`, the k-means of the
    labeled and unlabeled images into max(2, C) clusters seeded from `rng`), recomputed at every selection since
    the features change. Scores `[n_u]` float32: a pick's gain (newly covered images) at its turn, any other
    image's gain after every pick, so that sorting by score (equal: lower position) replays the picks. `rng` is
    used only for that k-means."""
    b, lab, unl = _checked(view, budget)
    if unl.size == 0:
        return make_selection(EMPTY, np.zeros(0, dtype=np.float32))
    nodes = np.union1d(lab, unl)  # pool position order: node order breaks ties
    x = host_rows(view.features, nodes)
    delta = params.of("probcover").delta
    delta = None if delta == "auto" else float(delta)
    if delta is None:
        delta = purity_delta(x, max(2, view.num_classes), int(rng.integers(0, 2**31 - 1)))
    indptr, indices = coverage_graph(x, delta)
    cand = np.searchsorted(nodes, unl)
    picks, pick_gain, gain = probcover_greedy(indptr, indices, np.searchsorted(nodes, lab), cand, b)
    row = np.full(nodes.size, -1, dtype=np.int64)
    row[cand] = np.arange(unl.size)
    scores = gain[cand].astype(np.float32)
    scores[row[picks]] = pick_gain
    return make_selection(nodes[picks], scores)
