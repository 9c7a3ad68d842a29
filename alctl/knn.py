"""k nearest neighbours by inner product: exact (pruned products or faiss), IVF, HNSW on the CPU; products on CUDA.

Array contract: features `[n, D]` float32, C-contiguous, L2-normalised rows (one per pool position);
sims `[n, k]` float32, each row in descending order; ids `[n, k]` int64 row positions of the neighbours.
A row never lists itself: the search asks for k + 1 neighbours and drops each row's own id, or, when a
row does not list itself (exact duplicates, ties, an approximate index), its last column. Pure: no file I/O.
"""

from __future__ import annotations

import math
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
# _SAMPLE_FRACTION n rows, threshold rank mean + _SAMPLE_Z sd + 1.
# Cells: _CELLS_PER_SQRT_N sqrt(n) of them, at least _CELL_MIN_POINTS points each, spherical k-means on
# _KMEANS_POINTS_PER_CELL points per cell for _KMEANS_ITER iterations. Products of about _CHUNK_ENTRIES
# similarities; row blocks of _BLOCK_ROWS_DENSE rows when the bounds skip less than _PRUNE_WORTH of the
# pairs, else of _BLOCK_ROWS_SPARSE (finer pruning). _BOUND_MARGIN covers float32 rounding in the bounds
# and products. More than _CANDIDATE_BUDGET times the expected number of kept entries: faiss does it all.
_PRUNED_MIN_N = 10_000
_PRUNED_MAX_K = 255
_SAMPLE_FRACTION = 1 / 16
_SAMPLE_Z = 2.5
_CELLS_PER_SQRT_N = 1.0
_CELL_MIN_POINTS = 32
_KMEANS_POINTS_PER_CELL = 32
_KMEANS_ITER = 8
_CHUNK_ENTRIES = 1 << 20
_COLUMN_GROUP = 64
_BLOCK_ROWS_DENSE = 1024
_BLOCK_ROWS_SPARSE = 128
_PRUNE_WORTH = 0.3
_BOUND_MARGIN = 1e-4
_CANDIDATE_BUDGET = 2.0


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
       best of its s sample similarities, j = mean + 2.5 sd + 1 of the number of sample rows among its
       k + 1 nearest (binomial), so t_q lies below its (k + 1)-th best similarity for nearly every row,
       and about j n / s entries per row reach it (the sample's products serve both directions too).
    2. Cells: the other rows are split by a small seeded k-means (about sqrt(n) cells: mean c_J, radius
       r_J = max |x - c_J| over the cell); for unit q and x in J, q.x <= q.c_J + |q| r_J (a float32
       margin added). A cell pair (I, J) is skipped when that bound stays below t_q for every q of I
       against J and of J against I.
    3. Symmetric pass: blocks of consecutive cells times themselves and the later cells they need (one
       product serves the entry (q, x) of row q and (x, q) of row x); every entry >= its row's threshold
       is kept.
    4. Per row, the k + 1 best kept entries. A row holding >= k + 1 of them holds its true top k + 1 (every
       entry >= t_q was either kept or bounded below t_q); rows with fewer are searched again by brute force.
    Any partition and any thresholds give the same result (up to the order of equal similarities and
    last-bit rounding of the products); they only decide the work. Without pruning the pass still computes
    each pair once, about half of brute force's products. More than twice the expected number of kept
    entries (heavy ties, duplicates) aborts to faiss IndexFlatIP for all rows (stats.fallback says so).
    Products run in `omp_get_max_threads()` Python threads with one BLAS thread each, so that filtering
    overlaps the products. Memory: the kept entries, 12 bytes each (about 3 (k + 1) per row for k = 50).
    """
    import faiss
    from threadpoolctl import threadpool_limits

    workers = max(1, int(faiss.omp_get_max_threads()))
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            return _pruned_run(x, k, seed, pool, workers)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # after an abort, queued products are dropped


def _pruned_run(
    x: np.ndarray, k: int, seed: int, pool: ThreadPoolExecutor, workers: int
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

    # 1. the threshold sample (multiplied below, once the cells have fixed the work order), a multiple of
    # the column group
    s = min(n, max(k1, math.ceil(_SAMPLE_FRACTION * n / _COLUMN_GROUP) * _COLUMN_GROUP))
    frac = s / n
    mean = k1 * frac
    j = min(s, max(1, math.ceil(mean + _SAMPLE_Z * math.sqrt(mean * (1.0 - frac)) + 1.0)))
    stats.sample, stats.threshold_rank = s, j
    sample = np.sort(rng.choice(n, s, replace=False))
    rest = np.setdiff1d(np.arange(n), sample, assume_unique=True)

    # 2. cells of the other rows, ordered along a nearest-neighbour chain; work order: sample, then cells
    xr = x[rest]
    lab, cent, size, radius = _cells(xr, rng)
    order = np.argsort(lab, kind="stable")
    perm = np.concatenate([sample, rest[order]])
    xp = np.ascontiguousarray(x[perm])
    del xr
    lap("cells")
    m = cent.shape[0]
    starts = s + np.concatenate([[0], np.cumsum(size)])  # cell J: work positions [starts[J], starts[J + 1])
    stats.cells = m
    tau = np.empty(n, dtype=np.float32)
    expected = j / frac  # kept entries per row, about
    buckets = max(workers, math.ceil(expected * n / (1 << 20)))  # about 1M kept entries each
    kept = _Kept(n, budget=int(_CANDIDATE_BUDGET * expected * n), buckets=buckets)
    rows_per = kept.rows_per

    # 1b. every row times the sample, the sample's own rows first (their thresholds are the column
    # thresholds of all the others, which see the sample sorted by threshold)
    step = max(1, _CHUNK_ENTRIES // s)
    sample_cols: tuple[np.ndarray, np.ndarray, np.ndarray | None] = (xp[:s], np.arange(s), None)
    for lo, hi in ((0, s), (s, n)):
        jobs = [(r0, min(hi, r0 + step)) for r0 in range(lo, hi, step)]
        for out in pool.map(lambda rr: _sample_job(xp, tau, rr[0], rr[1], j, sample_cols, rows_per), jobs):
            if not kept.add(out, stats):
                return _fallback(x, k, stats, "too many entries over the thresholds (ties?)")
        if lo == 0:
            order = np.argsort(-tau[:s], kind="stable")
            sample_cols = (np.ascontiguousarray(xp[order]), order, tau[order])
    stats.entries += (n - s) * s  # the column direction of the sample stage
    if kept.count > _CANDIDATE_BUDGET * 2 * j * n:  # about 2 j per row expected here: ties, duplicates
        return _fallback(x, k, stats, "too many entries over the thresholds (ties?)")
    lap("sample")

    # 2b. which cell pairs are needed: q.c_J + |q| r_J + margin >= t_q for some q of one cell against the other
    need = np.zeros((m, m), dtype=bool)
    xrest = xp[s:]
    norms = np.sqrt(np.einsum("ij,ij->i", xrest, xrest, dtype=np.float64)).astype(np.float32)
    margin = _BOUND_MARGIN + 4 * dim * float(np.finfo(np.float32).eps)
    reach = (radius * float(norms.max(initial=1.0)) + margin).astype(np.float32)  # [m]
    cent32 = cent.astype(np.float32)
    cells_per = max(1, _CHUNK_ENTRIES // max(m * int(size.max()), 1))
    for c0 in range(0, m, cells_per):
        c1 = min(m, c0 + cells_per)
        lo, hi = starts[c0] - s, starts[c1] - s
        bound = xrest[lo:hi] @ cent32.T + reach[None, :]  # [rows, m]
        hit = bound >= tau[s + lo : s + hi, None]
        need[c0:c1] = np.logical_or.reduceat(hit, starts[c0:c1] - s - lo, axis=0)
    need |= need.T
    cross = np.triu(np.outer(size, size).astype(np.float64), 1)
    stats.pruned_pairs = 1.0 - float(cross[need].sum()) / max(float(cross.sum()), 1.0)
    lap("bounds")

    # 3. symmetric pass: row blocks of consecutive cells (tall when little is pruned), each cut into slabs of
    # at most _BLOCK_ROWS_DENSE rows; a slab times itself (its diagonal square), the rest of its block and
    # the later cells the block needs (long runs of consecutive cells in place, short ones gathered)
    min_rows = _BLOCK_ROWS_DENSE if stats.pruned_pairs < _PRUNE_WORTH else _BLOCK_ROWS_SPARSE
    edges = [0]
    for c in range(m):
        if starts[c + 1] - starts[edges[-1]] >= min_rows and c + 1 < m:
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
    for out in pool.map(lambda job: _pair_job(xp, tau, *job, rows_per), pair_jobs):
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
    """Entries kept by the thresholds, as packed keys (row << 32 | similarity bits ordered descending, see
    `_pack`) and column positions, in work positions, in buckets of `rows_per` consecutive rows."""

    def __init__(self, n: int, budget: int, buckets: int) -> None:
        self.n = n
        self.budget = budget
        self.rows_per = max(1, -(-n // buckets))
        self.count = 0
        self.buckets: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(-(-n // self.rows_per))]

    def add(self, out: tuple[_Parts, int, int], stats: _PruneStats) -> bool:
        """Add one job's entries and its product counts; False once the budget is exceeded."""
        parts, products, entries = out
        stats.products += products
        stats.entries += entries
        for bucket, key, cols in parts:
            self.buckets[bucket].append((key, cols))
            self.count += key.size
        return self.count <= self.budget

    def top(self, k1: int, pool: ThreadPoolExecutor, perm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per row the k1 best kept entries, rows and columns mapped through perm [n] (work position -> row):
        sims [n, k1] float32 descending (-inf padded), ids [n, k1] int64 (-1 padded), and the number of
        entries kept per work position [n]; buckets in parallel in `pool`."""
        n = self.n
        sims = np.full((n, k1), -np.inf, dtype=np.float32)
        ids = np.full((n, k1), -1, dtype=np.int64)
        count = np.zeros(n, dtype=np.int64)

        def one(b: int) -> None:
            parts, self.buckets[b] = self.buckets[b], []
            key = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, dtype=np.uint64)
            cols = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, dtype=np.int32)
            del parts
            _top_rows(b * self.rows_per, min(n, (b + 1) * self.rows_per), key, cols, k1, perm, sims, ids, count)

        list(pool.map(one, range(len(self.buckets))))
        return sims, ids, count


def _top_rows(lo: int, hi: int, key: np.ndarray, cols: np.ndarray, k1: int, perm: np.ndarray, sims: np.ndarray,
              ids: np.ndarray, count: np.ndarray) -> None:
    """Work positions [lo, hi) of `_Kept.top`, from their packed keys [m] and columns [m]: writes the rows
    perm[lo:hi] of sims and ids, and count[lo:hi]. Each row's k1-th best key comes from a plain sort of the
    keys (fast); only the entries at least that good are then argsorted."""
    rows = (key >> np.uint64(32)).astype(np.int64) - lo
    num = np.bincount(rows, minlength=hi - lo)
    count[lo:hi] = num
    last = np.where(num > 0, np.cumsum(num) - num + np.minimum(num, k1) - 1, 0)
    cut = np.sort(key)[last] if key.size else np.zeros(hi - lo, dtype=np.uint64)
    sel = key <= cut[rows]
    key, cols, rows = key[sel], cols[sel], rows[sel]
    o = np.argsort(key)
    key, cols, rows = key[o], cols[o], rows[o]
    num = np.bincount(rows, minlength=hi - lo)
    pos = np.arange(rows.size) - (np.cumsum(num) - num)[rows]
    top = pos < k1
    dest = perm[lo + rows[top]]
    sims[dest, pos[top]] = _unpack(key[top])
    ids[dest, pos[top]] = perm[cols[top]]


def _brute_top(x: np.ndarray, rows: np.ndarray, k1: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k1 of the given rows [r] of x [n, D] against all rows: sims [r, k1] float32 descending,
    ids [r, k1] int64."""
    s = x[rows] @ x.T  # [r, n]
    part = np.argpartition(s, s.shape[1] - k1, axis=1)[:, s.shape[1] - k1 :]
    vals = np.take_along_axis(s, part, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    return np.take_along_axis(vals, order, axis=1), np.take_along_axis(part, order, axis=1).astype(np.int64)


def _pack(rows: np.ndarray, vals: np.ndarray) -> np.ndarray:
    """Keys row << 32 | d(val) as uint64 [m], where d maps float32 bits to uint32 in descending order of
    value, so that sorting the keys orders by row, then by similarity, largest first."""
    bits = vals.view(np.uint32)
    desc = np.where(bits >> 31, bits, ~bits & np.uint32(0x7FFFFFFF))
    return (rows.astype(np.uint64) << np.uint64(32)) | desc.astype(np.uint64)


def _unpack(key: np.ndarray) -> np.ndarray:
    """The float32 similarities [m] of packed keys (the inverse of d in `_pack`)."""
    desc = (key & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    return np.where(desc >> 31, desc, ~desc & np.uint32(0x7FFFFFFF)).view(np.float32)


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


_Parts = list[tuple[int, np.ndarray, np.ndarray]]  # (bucket, packed keys uint64 [m], columns int32 [m])


def _sample_job(xp: np.ndarray, tau: np.ndarray, r0: int, r1: int, j: int,
                sample: tuple[np.ndarray, np.ndarray, np.ndarray | None], rows_per: int) -> tuple[_Parts, int, int]:
    """Rows [r0, r1) times the sample, given as (rows [s, D], their positions [s], their thresholds [s] or
    None): sets tau[r0:r1] to each row's j-th best, keeps the entries >= the row's threshold and, given the
    sample's thresholds (rows outside the sample), those >= the column's, as entries of the sample row.
    Returns (kept parts, products, entries)."""
    xs, col_ids, t_cols = sample
    blk = xp[r0:r1] @ xs.T  # [r, s]
    s = blk.shape[1]
    t_rows = np.partition(blk, s - j, axis=1)[:, s - j]
    tau[r0:r1] = t_rows
    return _threshold(blk, r0, col_ids, t_rows, t_cols, rows_per), blk.size, blk.size


def _pair_job(xp: np.ndarray, tau: np.ndarray, a: int, b: int, cols: slice | np.ndarray | None,
              rows_per: int) -> tuple[_Parts, int, int]:
    """Rows [a, b) times the columns `cols` (None: the diagonal block [a, b) itself, row direction only, as it
    holds both entries of each pair), gathered in descending order of threshold (see `_threshold`).
    Returns (kept parts, products, entries)."""
    xi = xp[a:b]
    if cols is None:
        blk = xi @ xi.T
        return _threshold(blk, a, np.arange(a, b), tau[a:b], None, rows_per), blk.size, blk.size
    col_ids = np.arange(cols.start, cols.stop) if isinstance(cols, slice) else cols
    col_ids = col_ids[np.argsort(-tau[col_ids], kind="stable")]
    blk = xi @ xp[col_ids].T
    return _threshold(blk, a, col_ids, tau[a:b], tau[col_ids], rows_per), blk.size, 2 * blk.size


def _threshold(blk: np.ndarray, row0: int, col_ids: np.ndarray, t_rows: np.ndarray, t_cols: np.ndarray | None,
               rows_per: int) -> _Parts:
    """Entries of blk [r, w] (rows row0 + i, columns col_ids [w]) >= t_rows [r], as (bucket, packed keys,
    columns) per bucket of rows_per rows; given t_cols [w], also those >= t_cols, as entries of the
    column's row (row and column swapped). With t_cols, one cheap pass compares each entry with the smaller
    of its row's threshold and the smallest threshold of its group of _COLUMN_GROUP columns (tight, as the
    columns come in descending order of threshold); what passes is then checked exactly."""
    r, w = blk.shape
    g = _COLUMN_GROUP
    if t_cols is None:
        mask = blk >= t_rows[:, None]
    elif w % g == 0:
        low = np.minimum(t_rows[:, None], t_cols.reshape(-1, g).min(axis=1)[None, :])  # [r, w / g]
        mask = blk.reshape(r, w // g, g) >= low[:, :, None]
    else:  # a full [r, w] threshold matrix (broadcasting t_cols into the comparison is slow in numpy)
        mask = blk >= np.minimum(t_rows[:, None], t_cols[None, :])
    p = np.flatnonzero(mask)
    i = p // w
    c = p - i * w
    v = blk.reshape(-1)[p]
    rows, cols = row0 + i, col_ids[c]
    mine = v >= t_rows[i]
    parts: _Parts = []
    if t_cols is None:
        _bucketed(parts, rows[mine], v[mine], cols[mine], rows_per)
    else:
        theirs = v >= t_cols[c]
        _bucketed(parts, np.concatenate([rows[mine], cols[theirs]]), np.concatenate([v[mine], v[theirs]]),
                  np.concatenate([cols[mine], rows[theirs]]), rows_per)
    return parts


def _bucketed(parts: _Parts, rows: np.ndarray, vals: np.ndarray, cols: np.ndarray, rows_per: int) -> None:
    """Append the entries (rows, vals, cols [m]) to parts as (bucket, packed keys, int32 columns), one per
    bucket of rows_per rows they fall in."""
    if not rows.size:
        return
    bucket = rows // rows_per
    key = _pack(rows, vals)
    cols = cols.astype(np.int32)
    first, last = int(bucket.min()), int(bucket.max())
    if first == last:
        parts.append((first, key, cols))
    elif last - first < 4:  # a block's columns span few buckets
        for b in range(first, last + 1):
            inside = bucket == b
            parts.append((b, key[inside], cols[inside]))
    else:
        o = np.argsort(bucket, kind="stable")
        key, cols, bucket = key[o], cols[o], bucket[o]
        cuts = np.concatenate([[0], np.flatnonzero(np.diff(bucket)) + 1, [rows.size]])
        for lo, hi in zip(cuts[:-1], cuts[1:]):
            parts.append((int(bucket[lo]), key[lo:hi], cols[lo:hi]))


def _fallback(x: np.ndarray, k: int, stats: _PruneStats, reason: str) -> tuple[np.ndarray, np.ndarray, _PruneStats]:
    """faiss IndexFlatIP top-(k + 1) of every row, the reason recorded in stats."""
    import faiss

    stats.fallback = reason
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    sims, ids = index.search(x, k + 1)
    return sims, ids, stats
