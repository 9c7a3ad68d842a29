"""k nearest neighbours by inner product: exact (pruned products or faiss), IVF, HNSW on the CPU; products on CUDA.

Array contract: features `[n, D]` float32, C-contiguous, L2-normalised rows (one per pool position);
sims `[n, k]` float32, each row in descending order; ids `[n, k]` int64 row positions of the neighbours.
A row never lists itself: the search asks for k + 1 neighbours and drops each row's own id, or, when a
row does not list itself (exact duplicates, ties, an approximate index), its last column. Pure: no file I/O.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["METHODS", "knn_search"]

METHODS = ("exact", "ivf", "hnsw")

# Unit-norm check at entry: |‖x‖² - 1| must stay below this (float32 normalisation is ~1e-7 off).
_NORM_TOL = 1e-3
# Torch path: one block of similarities holds at most this many float32 entries (1 GiB).
_TORCH_BLOCK_ENTRIES = 1 << 28
# Approximate indexes. IVF: nlist = 4 sqrt(n) lists, of which nprobe are visited.
_IVF_NPROBE_MIN = 16
_IVF_NPROBE_FRACTION = 1 / 16
# HNSW: neighbours per node, construction and search beam widths.
_HNSW_M = 32
_HNSW_EF_CONSTRUCTION = 80
_HNSW_EF_SEARCH_MIN = 128
# Pruned exact search (CPU, n >= _PRUNED_MIN_N, k <= _PRUNED_MAX_K; see _pruned_exact). Threshold sample:
# _SAMPLE_FRACTION n rows, threshold rank mean + _SAMPLE_Z sd + 1, taken among the maxima of _SAMPLE_GROUP
# columns. Cells: _CELLS_PER_SQRT_N sqrt(n) of them, at least _CELL_MIN_POINTS points each, spherical k-means
# on _KMEANS_POINTS_PER_CELL points per cell for _KMEANS_ITER iterations; tried first on _ESTIMATE_ROWS rows,
# made for all only when that trial skips at least _ESTIMATE_WORTH of the pairs (the trial errs high: 0.56
# for 0.31 measured), used only when they skip at least _PRUNE_WORTH (measured at n = 50,000: the cell pass
# is as fast as the unpruned pass over rows sorted by threshold at 0.3). Products of about _CHUNK_ENTRIES
# similarities: cell pass in row blocks of _BLOCK_ROWS_SPARSE rows, slabs of at most _BLOCK_ROWS_DENSE;
# sorted pass in blocks of _SORTED_ROWS x _SORTED_WIDTH. Kept entries in buckets of _BUCKET_ROWS rows.
# _BOUND_MARGIN covers float32 rounding in the bounds and products. More than _CANDIDATE_BUDGET times the
# expected number of kept entries: faiss does it all.
_PRUNED_MIN_N = 10_000
_PRUNED_MAX_K = 255
_SAMPLE_FRACTION = 1 / 16
_SAMPLE_Z = 2.5
_SAMPLE_GROUP = 8
_CELLS_PER_SQRT_N = 1.0
_CELL_MIN_POINTS = 32
_KMEANS_POINTS_PER_CELL = 32
_KMEANS_ITER = 8
_CHUNK_ENTRIES = 1 << 20
_COLUMN_GROUP = 64
_BLOCK_ROWS_DENSE = 1024
_BLOCK_ROWS_SPARSE = 128
_PRUNE_WORTH = 0.3
_ESTIMATE_WORTH = 0.5
_SORTED_ROWS = 512
_SORTED_WIDTH = 2048
_ESTIMATE_ROWS = 4096
_BOUND_MARGIN = 1e-4
_CANDIDATE_BUDGET = 2.0
_BUCKET_ROWS = 1 << 12


def knn_search(features: Any, k: int, method: str = "exact", *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """k nearest neighbours by inner product, self-match excluded: sims [n, k] float32 (descending), ids [n, k] int64.

    `features` is a float32 `[n, D]` numpy array (C-contiguous, finite, L2-normalised rows) or a torch
    tensor: on CUDA an exact search runs there (blocked matrix products + top-k); a CPU tensor, or a
    CUDA one with an approximate method, takes the numpy path. `method`: "exact" (on the CPU: for
    n >= 10,000 and k <= 255 a pruned exact search, which multiplies each pair of rows once and skips
    pairs of k-means cells that a triangle-inequality bound rules out, see `_pruned_exact`; otherwise
    faiss IndexFlatIP; both give the exact neighbours, up to the order of equally similar ones and
    last-bit rounding), "ivf" (IndexIVFFlat, nlist ≈ 4 sqrt(n)) or "hnsw" (IndexHNSWFlat, inner product,
    built serially); approximate indexes are trained / seeded from `seed`, so the same seed gives the
    same neighbours on the same machine and thread count. Rows an approximate index answers with fewer
    than k + 1 neighbours are searched exactly. Caller mistakes (dtype, shape, contiguity, non-finite or
    non-normalised rows, k outside [1, n - 1], unknown method) raise ValueError.
    """
    if method not in METHODS:
        raise ValueError(f"knn_search: unknown method {method!r}; valid: {', '.join(METHODS)}")
    if _is_torch(features):
        if features.device.type == "cuda" and method == "exact":
            _check_tensor(features, k)
            return _torch_exact(features, k)
        features = features.detach().cpu().numpy()
    x = _check_array(features, k)
    if method == "exact":
        if x.shape[0] >= _PRUNED_MIN_N and k <= _PRUNED_MAX_K:
            sims, ids, _ = _pruned_exact(x, k)
            return _drop_self(sims, ids)
        return _faiss_exact(x, k)
    if method == "ivf":
        sims, ids = _faiss_ivf(x, k, seed)
    else:
        sims, ids = _faiss_hnsw(x, k, seed)
    return _fill_missing(x, k, sims, ids)


# --------------------------------------------------------------------------- checks


def _is_torch(obj: Any) -> bool:
    """True for a torch.Tensor (without importing torch when it is not one)."""
    return type(obj).__module__.split(".")[0] == "torch" and hasattr(obj, "device")


def _check_k(n: int, k: Any) -> int:
    """k as an int in [1, n - 1], else ValueError."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= int(k) < n:
        raise ValueError(f"knn_search: k must be an integer in [1, n - 1] = [1, {n - 1}], got {k!r}")
    return int(k)


def _check_array(x: Any, k: int) -> np.ndarray:
    """The features as they are, after the entry checks (dtype, 2-D, contiguity, finite, unit rows, k)."""
    if not isinstance(x, np.ndarray):
        raise ValueError(f"knn_search: features must be a numpy array or a torch tensor, got {type(x).__name__}")
    if x.dtype != np.float32:
        raise ValueError(f"knn_search: features must be float32, got {x.dtype}")
    if x.ndim != 2 or x.shape[1] < 1:
        raise ValueError(f"knn_search: features must be [n, D] with D >= 1, got shape {x.shape}")
    if not x.flags.c_contiguous:
        raise ValueError("knn_search: features must be C-contiguous (use np.ascontiguousarray)")
    _check_k(x.shape[0], k)
    sq = np.einsum("ij,ij->i", x, x)  # also NaN / inf for a non-finite row
    if not np.isfinite(sq).all():
        raise ValueError("knn_search: features hold NaN or inf")
    if np.abs(sq - 1.0).max(initial=0.0) > _NORM_TOL:
        raise ValueError("knn_search: feature rows must be L2-normalised")
    return x


def _check_tensor(x: Any, k: int) -> None:
    """The same entry checks on a torch tensor (run on its device)."""
    import torch

    if x.dtype != torch.float32:
        raise ValueError(f"knn_search: features must be float32, got {x.dtype}")
    if x.ndim != 2 or x.shape[1] < 1:
        raise ValueError(f"knn_search: features must be [n, D] with D >= 1, got shape {tuple(x.shape)}")
    if not x.is_contiguous():
        raise ValueError("knn_search: features must be contiguous (use .contiguous())")
    _check_k(x.shape[0], k)
    sq = (x * x).sum(dim=1)
    if not bool(torch.isfinite(sq).all()):
        raise ValueError("knn_search: features hold NaN or inf")
    if x.shape[0] and float((sq - 1.0).abs().max()) > _NORM_TOL:
        raise ValueError("knn_search: feature rows must be L2-normalised")


# --------------------------------------------------------------------------- self-match removal


def _drop_self(sims: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """From [n, k + 1] results, drop each row's own id (its first occurrence), or its last column when the
    row does not list itself; → [n, k] float32 sims, [n, k] int64 ids, order kept."""
    n, k1 = ids.shape
    own = ids == np.arange(n, dtype=ids.dtype)[:, None]
    drop = np.where(own.any(axis=1), own.argmax(axis=1), k1 - 1)
    keep = np.ones((n, k1), dtype=bool)
    keep[np.arange(n), drop] = False
    k = k1 - 1
    return (
        np.ascontiguousarray(sims[keep].reshape(n, k), dtype=np.float32),
        np.ascontiguousarray(ids[keep].reshape(n, k), dtype=np.int64),
    )


# --------------------------------------------------------------------------- faiss (CPU)


def _faiss_exact(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact search with faiss IndexFlatIP."""
    import faiss

    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    sims, ids = index.search(x, k + 1)
    return _drop_self(sims, ids)


def _faiss_ivf(x: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """IndexIVFFlat by inner product: nlist ≈ 4 sqrt(n) lists (k-means seeded from `seed`), nprobe of them visited."""
    import faiss

    n, dim = x.shape
    nlist = max(1, min(round(4 * math.sqrt(n)), n // 39))
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = int(seed) & 0x7FFFFFFF
    index.train(x)
    index.add(x)
    index.nprobe = min(nlist, max(_IVF_NPROBE_MIN, math.ceil(nlist * _IVF_NPROBE_FRACTION)))
    sims, ids = index.search(x, k + 1)
    return sims, ids


def _faiss_hnsw(x: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """IndexHNSWFlat by inner product; node levels drawn from a generator seeded with `seed`. The graph is
    built with one thread: faiss's parallel insertion order follows thread timing, so only a serial build
    gives the same graph (hence the same neighbours) for the same seed; the search runs in parallel."""
    import faiss
    from threadpoolctl import threadpool_limits

    index = faiss.IndexHNSWFlat(x.shape[1], _HNSW_M, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.rng = faiss.RandomGenerator(int(seed) & 0x7FFFFFFF)
    index.hnsw.efConstruction = _HNSW_EF_CONSTRUCTION
    with threadpool_limits(limits=1, user_api="openmp"):
        index.add(x)
    index.hnsw.efSearch = max(_HNSW_EF_SEARCH_MIN, 2 * (k + 1))
    sims, ids = index.search(x, k + 1)
    return sims, ids


def _fill_missing(x: np.ndarray, k: int, sims: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows an approximate index answered with fewer than k + 1 ids (-1 padding) get an exact search; then
    the self-match is dropped."""
    short = np.flatnonzero((ids < 0).any(axis=1))
    if short.size:
        import faiss

        index = faiss.IndexFlatIP(x.shape[1])
        index.add(x)
        sims[short], ids[short] = index.search(np.ascontiguousarray(x[short]), k + 1)
    return _drop_self(sims, ids)


# --------------------------------------------------------------------------- torch (CUDA; CPU for tests)


def _torch_exact(x: Any, k: int, block_rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact search on `x`'s device: blocks of rows times all rows (one matrix product each), torch.topk
    of k + 1, self-match dropped; returns numpy arrays. Runs on any device (tests use the CPU)."""
    import torch

    n = x.shape[0]
    rows = block_rows or max(1, min(n, _TORCH_BLOCK_ENTRIES // max(n, 1)))
    sims = torch.empty((n, k + 1), dtype=torch.float32, device=x.device)
    ids = torch.empty((n, k + 1), dtype=torch.int64, device=x.device)
    with torch.no_grad():
        for start in range(0, n, rows):
            block = x[start : start + rows] @ x.T  # [rows, n]
            top = torch.topk(block, k + 1, dim=1, largest=True, sorted=True)
            sims[start : start + rows] = top.values
            ids[start : start + rows] = top.indices
    return _drop_self(sims.cpu().numpy(), ids.cpu().numpy())


# --------------------------------------------------------------------------- pruned exact search (CPU)


@dataclass
class _PruneStats:
    """What `_pruned_exact` did: sizes, the share of the similarity matrix it computed, why it fell back (if it did)."""

    n: int = 0
    sample: int = 0  # rows of the threshold sample (multiplied with every row first)
    threshold_rank: int = 0  # a row's threshold is its j-th best sample similarity
    cells: int = 0  # k-means cells of the other rows
    blocks: int = 0  # row blocks of the symmetric pass
    estimated_pruned: float = 0.0  # that share as tried on a subsample (below _ESTIMATE_WORTH: no cells)
    pruned_pairs: float = 0.0  # share of the cross-cell point pairs the bounds skipped
    products: int = 0  # dot products computed (one serves both rows of a pair outside the diagonal blocks)
    entries: int = 0  # entries of the n x n similarity matrix those products gave
    candidates: int = 0  # entries kept (>= the row's threshold)
    refined_rows: int = 0  # rows left with fewer than k + 1 kept entries, searched again by brute force
    fallback: str = ""  # non-empty: the whole search went to faiss IndexFlatIP, and why
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per stage

    @property
    def work(self) -> float:
        """Share of the n² similarities computed: 1 without any pruning (at about half the products)."""
        return self.entries / max(self.n * self.n, 1)


def _pruned_exact(x: np.ndarray, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, _PruneStats]:
    """Exact top-(k + 1) by inner product, own row included: sims [n, k + 1] float32 descending, ids [n, k + 1] int64.

    1. Thresholds: s ≈ n / 16 random rows are multiplied with every row; row q's threshold t_q is the j-th
       best of the maxima of 8 groups of its s sample similarities (at most its j-th best one), j = mean
       + 2.5 sd + 1 of the number of sample rows among its k + 1 nearest (binomial), so t_q lies below its
       (k + 1)-th best similarity for nearly every row, and about j n / s entries per row reach it (the
       sample's products serve both directions too).
    2. Cells, where they pay: a seeded k-means splits the other rows (about sqrt(n) cells: mean c_J, radius
       r_J = max |x - c_J| over the cell); for unit q and x in J, q.x <= q.c_J + |q| r_J (a float32
       margin added), and a cell pair (I, J) is skipped when that bound stays below t_q for every q of I
       against J and of J against I. Tried first on 4,096 rows; used when it skips >= 30% of the pairs.
    3. Symmetric pass, each pair once (one product serves the entry (q, x) of row q and (x, q) of row x);
       every entry >= its row's threshold is kept. With cells: blocks of consecutive cells times themselves
       and the later cells they need. Without: the other rows in descending order of threshold, in
       blocks compared with one scalar each (the smallest threshold of the block), then checked exactly.
    4. Per row, the k + 1 best kept entries. A row holding >= k + 1 of them holds its true top k + 1 (every
       entry >= t_q was either kept or bounded below t_q); rows with fewer are searched again by brute force.
    Any partition, order and thresholds give the same result (up to the order of equal similarities and
    last-bit rounding of the products); they only decide the work. Without pruning the pass still computes
    each pair once, about half of brute force's products. More than twice the expected number of kept
    entries (heavy ties, duplicates) aborts to faiss IndexFlatIP for all rows (stats.fallback says so).
    Products run in `omp_get_max_threads()` Python threads with one BLAS thread each, so that filtering
    overlaps the products, into per-thread buffers. Memory: the kept entries, 12 bytes each (about
    3 (k + 1) per row for k = 50), two copies of x, and per thread about 5 MiB of buffers.
    """
    import faiss
    from threadpoolctl import threadpool_limits

    workers = max(1, int(faiss.omp_get_max_threads()))
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            return _pruned_run(x, k, seed, pool)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # after an abort, queued products are dropped


def _pruned_run(
    x: np.ndarray, k: int, seed: int, pool: ThreadPoolExecutor
) -> tuple[np.ndarray, np.ndarray, _PruneStats]:
    """The body of `_pruned_exact`, its products run in `pool`."""
    n, dim = x.shape
    k1 = k + 1
    stats = _PruneStats(n=n)
    clock = [time.perf_counter()]

    def lap(stage: str) -> None:
        now = time.perf_counter()
        stats.seconds[stage] = stats.seconds.get(stage, 0.0) + now - clock[0]
        clock[0] = now

    rng = np.random.default_rng(seed)
    scratch = _Scratch()

    # 1. the threshold sample, a multiple of the column group; work positions: the sample, then the other
    # rows (in row order until step 2 orders them)
    s = min(n, max(k1, math.ceil(_SAMPLE_FRACTION * n / _COLUMN_GROUP) * _COLUMN_GROUP))
    frac = s / n
    mean = k1 * frac
    j = min(s, max(1, math.ceil(mean + _SAMPLE_Z * math.sqrt(mean * (1.0 - frac)) + 1.0)))
    stats.sample, stats.threshold_rank = s, j
    sample = np.sort(rng.choice(n, s, replace=False))
    perm = np.concatenate([sample, np.setdiff1d(np.arange(n), sample, assume_unique=True)])
    xp = np.ascontiguousarray(x[perm])
    tau = np.empty(n, dtype=np.float32)
    expected = j / frac  # kept entries per row, about
    kept = _Kept(n, budget=int(_CANDIDATE_BUDGET * expected * n))
    rows_per = kept.rows_per

    # 1b. every row times the sample, the sample's own rows first (their thresholds are the column
    # thresholds of all the others, which see the sample sorted by threshold)
    step = max(1, _CHUNK_ENTRIES // s)
    sample_cols: tuple[np.ndarray, np.ndarray, np.ndarray | None] = (xp[:s], np.arange(s), None)
    for lo, hi in ((0, s), (s, n)):
        jobs = [(r0, min(hi, r0 + step)) for r0 in range(lo, hi, step)]
        for out in pool.map(lambda rr: _sample_job(xp, tau, rr[0], rr[1], j, sample_cols, rows_per, scratch), jobs):
            if not kept.add(out, stats):
                return _fallback(x, k, stats, "too many entries over the thresholds (ties?)")
        if lo == 0:
            order = np.argsort(-tau[:s], kind="stable")
            sample_cols = (np.ascontiguousarray(xp[order]), order, tau[order])
    stats.entries += (n - s) * s  # the column direction of the sample stage
    if kept.count > _CANDIDATE_BUDGET * 2 * j * n:  # about 2 j per row expected here: ties, duplicates
        return _fallback(x, k, stats, "too many entries over the thresholds (ties?)")
    lap("sample")

    def reorder(rest_order: np.ndarray) -> None:
        """Put the other rows in rest_order [n - s] (positions among them): xp, tau, perm and the kept entries."""
        nonlocal xp, tau, perm
        new = np.concatenate([np.arange(s), s + rest_order])  # new work position -> old
        xp, tau, perm = np.ascontiguousarray(xp[new]), tau[new], perm[new]
        old_to_new = np.empty(n, dtype=np.int64)
        old_to_new[new] = np.arange(n)
        kept.renumber(old_to_new)

    # 2. the order of the other rows for the pass: cells (when a trial on a subsample says the bounds skip
    # enough pairs) ordered along a nearest-neighbour chain, else descending thresholds
    stats.estimated_pruned = _estimate_pruned(xp[s:], tau[s:], rng)
    need = np.zeros((0, 0), dtype=bool)
    starts = np.zeros(1, dtype=np.int64)
    if stats.estimated_pruned >= _ESTIMATE_WORTH:
        lab, cent, size, radius = _cells(xp[s:], rng)
        by_cell = np.argsort(lab, kind="stable")
        stats.cells = cent.shape[0]
        starts = s + np.concatenate([[0], np.cumsum(size)])  # cell J: work positions [starts[J], starts[J + 1])
        lap("cells")
        rest = s + by_cell
        need, stats.pruned_pairs = _needed_pairs(np.ascontiguousarray(xp[rest]), tau[rest], cent, size, radius)
        lap("bounds")
        if stats.pruned_pairs >= _PRUNE_WORTH:
            reorder(by_cell)
    if stats.pruned_pairs < _PRUNE_WORTH:
        reorder(np.argsort(-tau[s:], kind="stable"))
        lap("order")

    # 3. symmetric pass. Little to prune: all pairs of the other rows, in descending order of threshold
    # (see `_sorted_job`). Else row blocks of consecutive cells (at least _BLOCK_ROWS_SPARSE rows), each cut
    # into slabs of at most _BLOCK_ROWS_DENSE rows; a slab times itself (its diagonal square), the rest of its
    # block and the later cells the block needs (long runs of consecutive cells in place, short ones gathered)
    if stats.pruned_pairs < _PRUNE_WORTH:
        # row blocks and column chunks end on multiples of _SORTED_ROWS and _SORTED_WIDTH (divisors of
        # _BUCKET_ROWS), so that each lies in one bucket
        row_edges = [s, *range(-(-(s + 1) // _SORTED_ROWS) * _SORTED_ROWS, n, _SORTED_ROWS), n]
        sorted_jobs = []
        for a, b in zip(row_edges[:-1], row_edges[1:]):
            col_edges = [b, *range(-(-(b + 1) // _SORTED_WIDTH) * _SORTED_WIDTH, n, _SORTED_WIDTH), n]
            sorted_jobs.append((a, b, a, b))
            sorted_jobs.extend((a, b, c, d) for c, d in zip(col_edges[:-1], col_edges[1:]) if c < d)
        stats.blocks = len(row_edges) - 1
        outs = pool.map(lambda job: _sorted_job(xp, tau, *job, rows_per, scratch), sorted_jobs)
    else:
        m = stats.cells
        edges = [0]
        for c in range(m):
            if starts[c + 1] - starts[edges[-1]] >= _BLOCK_ROWS_SPARSE and c + 1 < m:
                edges.append(c + 1)
        edges.append(m)
        stats.blocks = len(edges) - 1
        pair_jobs: list[tuple[int, int, slice | np.ndarray | None]] = []
        for ca, cb in zip(edges[:-1], edges[1:]):
            a, b = int(starts[ca]), int(starts[cb])
            later = need[ca:cb, cb:].any(axis=0)
            flips = np.flatnonzero(np.diff(np.concatenate([[0], later.astype(np.int8), [0]])))
            runs = [(int(starts[cb + e0]), int(starts[cb + e1])) for e0, e1 in zip(flips[::2], flips[1::2])]
            slabs = -(-(b - a) // _BLOCK_ROWS_DENSE)
            cuts = [a + (b - a) * i // slabs for i in range(slabs + 1)]
            for u, v in zip(cuts[:-1], cuts[1:]):
                pair_jobs.append((u, v, None))
                pair_jobs.extend(_column_jobs(u, v, ([(v, b)] if v < b else []) + runs))
        outs = pool.map(lambda job: _pair_job(xp, tau, *job, rows_per, scratch), pair_jobs)
    for out in outs:
        if not kept.add(out, stats):
            return _fallback(x, k, stats, "too many entries over the thresholds (ties?)")
    lap("pass")

    # 4. the k + 1 best kept entries of each row; rows with fewer are searched again
    stats.candidates = kept.count
    out_s, out_i, count = kept.top(k1, pool, perm)
    lap("top")
    short_rows = perm[count < k1]
    stats.refined_rows = int(short_rows.size)
    step = max(1, _CHUNK_ENTRIES // n)
    chunks = [short_rows[i : i + step] for i in range(0, short_rows.size, step)]
    for rows, (r_sims, r_ids) in zip(chunks, pool.map(lambda rows: _brute_top(x, rows, k1), chunks)):
        out_s[rows], out_i[rows] = r_sims, r_ids
    lap("refine")
    return out_s, out_i, stats


def _estimate_pruned(xr: np.ndarray, t: np.ndarray, rng: np.random.Generator) -> float:
    """The share of cross-cell pairs the bounds would skip, tried on cells of at most _ESTIMATE_ROWS random
    rows of xr [r, D] (thresholds t [r]). Its cells are fewer and hold fewer points (smaller radii) than the
    real ones; measured at n = 50,000 it errs high (0.56 for 0.31, 0.23 for 0.06)."""
    r = xr.shape[0]
    sub = np.sort(rng.choice(r, min(r, _ESTIMATE_ROWS), replace=False))
    xs, ts = xr[sub], t[sub]
    lab, cent, size, radius = _cells(xs, rng)
    order = np.argsort(lab, kind="stable")
    return _needed_pairs(np.ascontiguousarray(xs[order]), ts[order], cent, size, radius)[1]


def _needed_pairs(xc: np.ndarray, tc: np.ndarray, cent: np.ndarray, size: np.ndarray,
                  radius: np.ndarray) -> tuple[np.ndarray, float]:
    """Which pairs of cells the pass needs, for rows xc [r, D] in cell order (thresholds tc [r]; cells of
    `_cells`: means cent [m, D], sizes [m], radii [m]): (I, J) is needed when q.c_J + |q| r_J + margin >= t_q
    for some q of one cell against the other. Returns need [m, m] bool (symmetric) and the share of the
    cross-cell point pairs it skips."""
    m, dim = cent.shape
    need = np.zeros((m, m), dtype=bool)
    starts = np.concatenate([[0], np.cumsum(size)])
    norms = np.sqrt(np.einsum("ij,ij->i", xc, xc, dtype=np.float64)).astype(np.float32)
    margin = _BOUND_MARGIN + 4 * dim * float(np.finfo(np.float32).eps)
    reach = (radius * float(norms.max(initial=1.0)) + margin).astype(np.float32)  # [m]
    cent32 = cent.astype(np.float32)
    cells_per = max(1, _CHUNK_ENTRIES // max(m * int(size.max()), 1))
    for c0 in range(0, m, cells_per):
        c1 = min(m, c0 + cells_per)
        lo, hi = starts[c0], starts[c1]
        bound = xc[lo:hi] @ cent32.T + reach[None, :]  # [rows, m]
        hit = bound >= tc[lo:hi, None]
        need[c0:c1] = np.logical_or.reduceat(hit, starts[c0:c1] - lo, axis=0)
    need |= need.T
    cross = np.triu(np.outer(size, size).astype(np.float64), 1)
    return need, 1.0 - float(cross[need].sum()) / max(float(cross.sum()), 1.0)


def _column_jobs(u: int, v: int, runs: list[tuple[int, int]]) -> list[tuple[int, int, slice | np.ndarray]]:
    """Jobs (u, v, columns) covering the column ranges `runs` for rows [u, v), each of about _CHUNK_ENTRIES
    products (widths a multiple of _COLUMN_GROUP, but for the last of a run): long runs as slices, short
    ones together as index arrays."""
    width = max(_COLUMN_GROUP, _CHUNK_ENTRIES // (v - u) // _COLUMN_GROUP * _COLUMN_GROUP)
    jobs: list[tuple[int, int, slice | np.ndarray]] = []
    short: list[np.ndarray] = []
    short_len = 0
    for lo, hi in runs:
        if hi - lo >= width // 4:
            jobs.extend((u, v, slice(c0, min(hi, c0 + width))) for c0 in range(lo, hi, width))
            continue
        short.append(np.arange(lo, hi))
        short_len += hi - lo
        if short_len >= width:
            jobs.append((u, v, np.concatenate(short)))
            short, short_len = [], 0
    if short:
        jobs.append((u, v, np.concatenate(short)))
    return jobs


class _Kept:
    """Entries kept by the thresholds, as (rows, similarities, columns) in work positions, in buckets of
    _BUCKET_ROWS consecutive rows (so that `_top_rows` can sort keys carrying the entry's index, and the
    pass's aligned jobs put each direction's entries in one bucket)."""

    def __init__(self, n: int, budget: int) -> None:
        self.n = n
        self.budget = budget
        self.rows_per = _BUCKET_ROWS
        self.count = 0
        self.buckets: list[list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = [
            [] for _ in range(-(-n // _BUCKET_ROWS))
        ]

    def add(self, out: tuple[_Parts, int, int], stats: _PruneStats) -> bool:
        """Add one job's entries and its product counts; False once the budget is exceeded."""
        parts, products, entries = out
        stats.products += products
        stats.entries += entries
        for bucket, rows, vals, cols in parts:
            self.buckets[bucket].append((rows, vals, cols))
            self.count += rows.size
        return self.count <= self.budget

    def _take(self, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Bucket b's entries as three arrays (rows int32, similarities float32, columns int32), emptying it."""
        parts, self.buckets[b] = self.buckets[b], []
        if not parts:
            return np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.int32)
        return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))  # type: ignore[return-value]

    def renumber(self, old_to_new: np.ndarray) -> None:
        """Move the entries kept so far to new work positions: rows and columns through old_to_new [n]."""
        taken = [self._take(b) for b in range(len(self.buckets))]
        rows, vals, cols = (np.concatenate([t[i] for t in taken]) for i in range(3))
        del taken
        out: _Parts = []
        _bucketed(out, old_to_new[rows], vals, old_to_new[cols], self.rows_per)
        for bucket, r, v, c in out:
            self.buckets[bucket].append((r, v, c))

    def top(self, k1: int, pool: ThreadPoolExecutor, perm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per row the k1 best kept entries, rows and columns mapped through perm [n] (work position -> row):
        sims [n, k1] float32 descending (-inf padded), ids [n, k1] int64 (-1 padded), and the number of
        entries kept per work position [n]; buckets in parallel in `pool`."""
        n = self.n
        sims = np.full((n, k1), -np.inf, dtype=np.float32)
        ids = np.full((n, k1), -1, dtype=np.int64)
        count = np.zeros(n, dtype=np.int64)

        def one(b: int) -> None:
            rows, vals, cols = self._take(b)
            lo = b * self.rows_per
            _top_rows(lo, min(n, lo + self.rows_per), rows - lo, vals, cols, k1, perm, sims, ids, count)

        list(pool.map(one, range(len(self.buckets))))
        return sims, ids, count


def _top_rows(lo: int, hi: int, rows: np.ndarray, vals: np.ndarray, cols: np.ndarray, k1: int, perm: np.ndarray,
              sims: np.ndarray, ids: np.ndarray, count: np.ndarray) -> None:
    """Work positions [lo, hi) of `_Kept.top`, from their entries (rows [m] counted from lo, similarities
    [m], columns [m]): writes the rows perm[lo:hi] of sims and ids, and count[lo:hi]. Each row's k1-th best
    entry comes from a plain sort of packed keys (see `_pack`); the entries at least that good are then
    sorted too, each key carrying the entry's index in its low bits in place of the high bits of the row
    (an argsort, several times slower, only when they do not fit in 64 bits). Without ties at the cuts,
    row i holds the next min(count, k1) sorted entries; where every row holds k1, whole rows are written."""
    r = hi - lo
    key = _pack(rows, vals)
    num = np.bincount(rows, minlength=r)
    count[lo:hi] = num
    take = np.minimum(num, k1)
    last = np.where(num > 0, np.cumsum(num) - num + take - 1, 0)
    cut = np.sort(key)[last] if key.size else np.zeros(r, dtype=np.uint64)
    sel = np.flatnonzero(key <= cut[rows])
    key = key[sel]
    idx_bits = max(1, (sel.size - 1).bit_length())
    if max(1, (r - 1).bit_length()) + 32 + idx_bits <= 64:
        key = np.sort(((key >> np.uint64(32)) << np.uint64(32 + idx_bits)) | ((key & np.uint64(0xFFFFFFFF))
                      << np.uint64(idx_bits)) | np.arange(sel.size, dtype=np.uint64))
        o = (key & np.uint64((1 << idx_bits) - 1)).view(np.int64)  # a view: astype here cost 15x a shift
        vals = _unpack(key >> np.uint64(idx_bits))
    else:
        o = np.argsort(key)
        vals = _unpack(key[o])
    order = sel[o]  # the selected entries' indices among all, by row, then similarity descending
    if sel.size == int(take.sum()):
        if int(take.min(initial=k1)) == k1:
            sims[perm[lo:hi]] = vals.reshape(r, k1)
            ids[perm[lo:hi]] = perm[cols[order]].reshape(r, k1)
            return
        rows_s, per_row = np.repeat(np.arange(r), take), take
    else:  # ties at a cut: more than k1 selected in some rows
        rows_s = rows[order].astype(np.int64)
        per_row = np.bincount(rows_s, minlength=r)
    pos = np.arange(rows_s.size) - (np.cumsum(per_row) - per_row)[rows_s]
    top = np.flatnonzero(pos < k1)
    flat = perm[lo + rows_s[top]] * k1 + pos[top]
    sims.reshape(-1)[flat] = vals[top]
    ids.reshape(-1)[flat] = perm[cols[order[top]]]


def _brute_top(x: np.ndarray, rows: np.ndarray, k1: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k1 of the given rows [r] of x [n, D] against all rows: sims [r, k1] float32 descending,
    ids [r, k1] int64."""
    s = x[rows] @ x.T  # [r, n]
    part = np.argpartition(s, s.shape[1] - k1, axis=1)[:, s.shape[1] - k1 :]
    vals = np.take_along_axis(s, part, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    return np.take_along_axis(vals, order, axis=1), np.take_along_axis(part, order, axis=1).astype(np.int64)


def _desc_bits(bits: np.ndarray) -> np.ndarray:
    """d: float32 bits (as int32 [m]) -> int32 [m] whose uint32 reading orders the floats descending (its own
    inverse): a non-negative float has all bits but the sign flipped, a negative one is kept."""
    return bits ^ (~(bits >> 31) & np.int32(0x7FFFFFFF))


def _low_words(key: np.ndarray) -> np.ndarray:
    """The low 32 bits of uint64 keys [m] as uint32 [m] (a strided view on a little-endian machine)."""
    if sys.byteorder == "little":
        return key.view(np.uint32)[0::2]
    return (key & np.uint64(0xFFFFFFFF)).astype(np.uint32)


def _pack(rows: np.ndarray, vals: np.ndarray) -> np.ndarray:
    """Keys row << 32 | d(val) as uint64 [m] (rows [m] in [0, 2^32), vals float32 [m]), see `_desc_bits`,
    so that sorting the keys orders by row, then by similarity, largest first."""
    desc = _desc_bits(np.ascontiguousarray(vals, dtype=np.float32).view(np.int32)).view(np.uint32)
    if sys.byteorder == "little":
        words = np.empty(2 * desc.size, dtype=np.uint32)
        words[0::2], words[1::2] = desc, rows
        return words.view(np.uint64)
    return (rows.astype(np.uint64) << np.uint64(32)) | desc.astype(np.uint64)


def _unpack(key: np.ndarray) -> np.ndarray:
    """The float32 similarities [m] of packed keys (d of `_pack` undone)."""
    return _desc_bits(_low_words(key).view(np.int32)).view(np.float32)


def _cells(x: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A k-means partition of x [r, D] into m ≈ sqrt(r) non-empty cells, numbered along a nearest-neighbour
    chain of their means: cell ids [r] int64, means [m, D] float64, sizes [m], radii [m] float64 (the largest
    distance of a member to its mean). Spherical k-means on a sample of the rows, a few seeded iterations:
    it only has to be a partition, its quality only decides how much gets pruned."""
    r, dim = x.shape
    m = max(1, min(r // _CELL_MIN_POINTS, round(_CELLS_PER_SQRT_N * math.sqrt(r))))
    train = x[rng.choice(r, min(r, _KMEANS_POINTS_PER_CELL * m), replace=False)]
    cent = train[rng.choice(train.shape[0], m, replace=False)].copy()
    for _ in range(_KMEANS_ITER):
        a = np.argmax(train @ cent.T, axis=1)
        o = np.argsort(a, kind="stable")
        used, at = np.unique(a[o], return_index=True)
        sums = np.add.reduceat(train[o], at, axis=0)
        cent[used] = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-30)
    lab = np.empty(r, dtype=np.int64)
    step = max(1, _CHUNK_ENTRIES // m)
    for r0 in range(0, r, step):
        lab[r0 : r0 + step] = np.argmax(x[r0 : r0 + step] @ cent.T, axis=1)
    used, lab = np.unique(lab, return_inverse=True)
    m = used.size
    order = np.argsort(lab, kind="stable")
    size = np.bincount(lab, minlength=m)
    first = np.concatenate([[0], np.cumsum(size)[:-1]])
    xs = x[order]
    means = np.empty((m, dim))
    radius = np.empty(m)
    for c, (a, b) in enumerate(zip(first, first + size)):  # float64, cell by cell
        members = xs[a:b].astype(np.float64)
        means[c] = members.mean(axis=0)
        members -= means[c]
        radius[c] = np.sqrt(np.einsum("ij,ij->i", members, members).max())
    chain = _chain_order(means)
    rank = np.empty(m, dtype=np.int64)
    rank[chain] = np.arange(m)
    return rank[lab], means[chain], size[chain], radius[chain]


def _chain_order(cent: np.ndarray) -> np.ndarray:
    """An order of the cells [m, D] as a greedy nearest-neighbour chain through their means, starting at cell 0,
    so that the cells a block needs tend to be consecutive."""
    m = cent.shape[0]
    sim = cent @ cent.T
    order = np.empty(m, dtype=np.int64)
    free = np.ones(m, dtype=bool)
    cur = 0
    for i in range(m):
        order[i] = cur
        free[cur] = False
        if i + 1 < m:
            cur = int(np.argmax(np.where(free, sim[cur], -np.inf)))
    return order


# (bucket, rows int32 [m], sims float32 [m], columns int32 [m])
_Parts = list[tuple[int, np.ndarray, np.ndarray, np.ndarray]]


class _Scratch(threading.local):
    """Per-thread work buffers, reused from job to job: a fresh multi-megabyte array per product costs page
    faults (measured at n = 50,000, two threads: the products of the pass alone 2.2-2.5 s into reused
    buffers, 2.9-5.4 s into fresh arrays)."""

    def get(self, name: str, shape: tuple[int, int], dtype: type) -> np.ndarray:
        """A buffer of `shape` and `dtype` for this thread (its contents are whatever the last job left)."""
        size = shape[0] * shape[1]
        buf = self.__dict__.get(name)
        if buf is None or buf.size < size or buf.dtype != dtype:
            buf = np.empty(max(size, _CHUNK_ENTRIES), dtype=dtype)
            self.__dict__[name] = buf
        return buf[:size].reshape(shape)


def _product(scratch: _Scratch, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a [r, D] @ b[w, D].T into this thread's product buffer: [r, w] float32 (valid until its next product)."""
    out = scratch.get("product", (a.shape[0], b.shape[0]), np.float32)
    return np.matmul(a, b.T, out=out)


def _sample_job(xp: np.ndarray, tau: np.ndarray, r0: int, r1: int, j: int,
                sample: tuple[np.ndarray, np.ndarray, np.ndarray | None], rows_per: int,
                scratch: _Scratch) -> tuple[_Parts, int, int]:
    """Rows [r0, r1) times the sample, given as (rows [s, D], their positions [s], their thresholds [s] or
    None): sets tau[r0:r1] to each row's threshold, keeps the entries >= the row's threshold and, given the
    sample's thresholds (rows outside the sample), those >= the column's, as entries of the sample row.
    The threshold is the j-th best of the maxima of _SAMPLE_GROUP-column groups (strided): j distinct
    entries reach it, so it is at most the j-th best entry (and nearly always equal), for a partition
    _SAMPLE_GROUP times shorter. Returns (kept parts, products, entries)."""
    xs, col_ids, t_cols = sample
    blk = _product(scratch, xp[r0:r1], xs)  # [r, s]
    r, s = blk.shape
    g = _SAMPLE_GROUP if s % _SAMPLE_GROUP == 0 and s // _SAMPLE_GROUP >= 2 * j else 1
    best = blk.reshape(r, g, s // g).max(axis=1) if g > 1 else blk  # np.partition below copies
    t_rows = np.partition(best, best.shape[1] - j, axis=1)[:, best.shape[1] - j]
    tau[r0:r1] = t_rows
    return _threshold(blk, r0, col_ids, t_rows, t_cols, rows_per, scratch), blk.size, blk.size


def _pair_job(xp: np.ndarray, tau: np.ndarray, a: int, b: int, cols: slice | np.ndarray | None,
              rows_per: int, scratch: _Scratch) -> tuple[_Parts, int, int]:
    """Rows [a, b) times the columns `cols` (None: the diagonal block [a, b) itself, row direction only, as it
    holds both entries of each pair), gathered in descending order of threshold (see `_threshold`).
    Returns (kept parts, products, entries)."""
    xi = xp[a:b]
    if cols is None:
        blk = _product(scratch, xi, xi)
        return _threshold(blk, a, np.arange(a, b), tau[a:b], None, rows_per, scratch), blk.size, blk.size
    col_ids = np.arange(cols.start, cols.stop) if isinstance(cols, slice) else cols
    col_ids = col_ids[np.argsort(-tau[col_ids], kind="stable")]
    blk = _product(scratch, xi, xp[col_ids])
    return _threshold(blk, a, col_ids, tau[a:b], tau[col_ids], rows_per, scratch), blk.size, 2 * blk.size


def _sorted_job(xp: np.ndarray, tau: np.ndarray, a: int, b: int, c: int, d: int, rows_per: int,
                scratch: _Scratch) -> tuple[_Parts, int, int]:
    """The unpruned pass over rows in descending order of threshold (xp [n, D], tau [n]): rows [a, b) times
    rows [c, d), c >= b (both directions kept), or c == a, d == b (the diagonal block, row direction only);
    neither range crosses a multiple of rows_per (each direction's entries go to one bucket).
    Thresholds fall along both ranges, so one scalar comparison with the smallest of them, tau[b - 1] or
    tau[d - 1], passes little more than the entries kept; those are then checked exactly.
    Returns (kept parts, products, entries)."""
    blk = _product(scratch, xp[a:b], xp[c:d])
    mask = scratch.get("mask", blk.shape, np.bool_)
    np.greater_equal(blk, min(tau[b - 1], tau[d - 1]), out=mask)
    diagonal = c == a
    parts = _keep(blk, mask, a, np.arange(c, d), tau[a:b], None if diagonal else tau[c:d], rows_per)
    return parts, blk.size, blk.size if diagonal else 2 * blk.size


def _threshold(blk: np.ndarray, row0: int, col_ids: np.ndarray, t_rows: np.ndarray, t_cols: np.ndarray | None,
               rows_per: int, scratch: _Scratch) -> _Parts:
    """Entries of blk [r, w] (rows row0 + i, columns col_ids [w]) >= t_rows [r], as parts (see `_keep`); given
    t_cols [w], also those >= t_cols, as entries of the column's row (row and column swapped). With t_cols,
    one cheap pass compares each entry with the smaller of its row's threshold and the smallest threshold of
    its group of _COLUMN_GROUP columns (tight, as the columns come in descending order of threshold); what
    passes is then checked exactly."""
    r, w = blk.shape
    g = _COLUMN_GROUP
    mask = scratch.get("mask", (r, w), np.bool_)
    if t_cols is None:
        np.greater_equal(blk, t_rows[:, None], out=mask)
    elif w % g == 0:
        low = np.minimum(t_rows[:, None], t_cols.reshape(-1, g).min(axis=1)[None, :])  # [r, w / g]
        np.greater_equal(blk.reshape(r, w // g, g), low[:, :, None], out=mask.reshape(r, w // g, g))
    else:  # a full [r, w] threshold matrix (broadcasting t_cols into the comparison is slow in numpy)
        np.greater_equal(blk, np.minimum(t_rows[:, None], t_cols[None, :]), out=mask)
    return _keep(blk, mask, row0, col_ids, t_rows, t_cols, rows_per)


def _keep(blk: np.ndarray, mask: np.ndarray, row0: int, col_ids: np.ndarray, t_rows: np.ndarray,
          t_cols: np.ndarray | None, rows_per: int) -> _Parts:
    """The entries of blk [r, w] (rows row0 + i, columns col_ids [w]) where mask [r, w] holds (a cheap first
    comparison), checked exactly: those >= t_rows [r] and, given t_cols [w], those >= t_cols as entries of the
    column's row; as (bucket, int32 rows, float32 sims, int32 columns) per bucket of rows_per rows."""
    w = blk.shape[1]
    p = np.flatnonzero(mask)
    i = p // w
    c = p - i * w
    v = blk.reshape(-1)[p]
    rows, cols = row0 + i, col_ids[c]
    mine = np.flatnonzero(v >= t_rows[i])
    parts: _Parts = []
    _bucketed(parts, rows[mine], v[mine], cols[mine], rows_per)
    if t_cols is not None:
        theirs = np.flatnonzero(v >= t_cols[c])
        _bucketed(parts, cols[theirs], v[theirs], rows[theirs], rows_per)
    return parts


def _bucketed(parts: _Parts, rows: np.ndarray, vals: np.ndarray, cols: np.ndarray, rows_per: int) -> None:
    """Append the entries (rows, vals, cols [m]) to parts as (bucket, int32 rows, float32 sims, int32 columns),
    one per bucket of rows_per rows they fall in."""
    if not rows.size:
        return
    rows, cols = rows.astype(np.int32), cols.astype(np.int32)
    first, last = int(rows.min()) // rows_per, int(rows.max()) // rows_per
    if first == last:
        parts.append((first, rows, vals, cols))
        return
    bucket = rows // rows_per  # a stable radix sort of the bucket numbers when they fit in 16 bits
    o = np.argsort(bucket.astype(np.uint16) if last < 1 << 16 else bucket, kind="stable")
    rows, vals, cols, bucket = rows[o], vals[o], cols[o], bucket[o]
    cuts = np.concatenate([[0], np.flatnonzero(np.diff(bucket)) + 1, [rows.size]])
    for lo, hi in zip(cuts[:-1], cuts[1:]):
        parts.append((int(bucket[lo]), rows[lo:hi], vals[lo:hi], cols[lo:hi]))


def _fallback(x: np.ndarray, k: int, stats: _PruneStats, reason: str) -> tuple[np.ndarray, np.ndarray, _PruneStats]:
    """faiss IndexFlatIP top-(k + 1) of every row, the reason recorded in stats."""
    import faiss

    stats.fallback = reason
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    sims, ids = index.search(x, k + 1)
    return sims, ids, stats
