"""k nearest neighbours by inner product: exact (faiss flat on the CPU, products + top-k on CUDA), IVF, HNSW.

Array contract: features `[n, D]` float32, C-contiguous, finite, L2-normalised rows (one per pool position),
as a numpy array or a torch tensor; sims `[n, k]` float32, each row in descending order; ids `[n, k]` int64
row positions of the neighbours. A row never lists itself: the search asks for k + 1 neighbours and drops
each row's own id, or, when a row does not list itself (exact duplicates, ties, an approximate index), its
last column. Caller mistakes raise ValueError. Pure: no file I/O.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["METHODS", "knn_search", "knn_vote"]

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


def knn_search(features: Any, k: int, method: str = "exact", *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """k nearest neighbours by inner product, self-match excluded: sims [n, k] float32 (descending), ids [n, k] int64.

    `features`: a float32 `[n, D]` numpy array (C-contiguous, finite, L2-normalised rows) or a torch tensor
    of the same. `method`: "exact" (the default: on a CUDA tensor, blocked matrix products + torch.topk on
    that device; otherwise faiss IndexFlatIP on the CPU; both give the exact neighbours, up to the order of
    equally similar ones and last-bit rounding), or the opt-in approximate indexes "ivf" (IndexIVFFlat,
    nlist ≈ 4 sqrt(n)) and "hnsw" (IndexHNSWFlat, inner product, built serially), which run on the CPU (a
    CUDA tensor is copied there). Approximate indexes are trained / seeded from `seed`, so the same seed gives
    the same neighbours on the same machine and thread count; rows they answer with fewer than k + 1
    neighbours are searched exactly. A CPU tensor is used through `.numpy()` without a copy. Caller
    mistakes (dtype, shape, contiguity, non-finite or non-normalised rows, k outside [1, n - 1], unknown
    method) raise ValueError.
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
    """Exact search with faiss IndexFlatIP on the CPU (x as checked) → sims [n, k] float32, ids [n, k] int64."""
    import faiss

    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    sims, ids = index.search(x, k + 1)
    return _drop_self(sims, ids)


def _faiss_ivf(x: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """IndexIVFFlat by inner product: nlist ≈ 4 sqrt(n) lists (k-means seeded from `seed`), nprobe of them visited;
    → raw sims [n, k + 1] float32, ids [n, k + 1] int64 (self included, -1 where a row is short)."""
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
    gives the same graph (hence the same neighbours) for the same seed; the search runs in parallel.
    → raw sims [n, k + 1] float32, ids [n, k + 1] int64 (self included, -1 where a row is short)."""
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


# --------------------------------------------------------------------------- torch (CUDA; any device)


def _torch_exact(x: Any, k: int, block_rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact search on `x`'s device (a float32 [n, D] tensor, as checked): blocks of `block_rows` rows (default:
    at most _TORCH_BLOCK_ENTRIES similarities a block) times all rows, torch.topk of k + 1, self-match dropped;
    → numpy sims [n, k] float32, ids [n, k] int64. Runs on any device (tests use the CPU)."""
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


# --------------------------------------------------------------------------- kNN classifier (diagnostics)


def knn_vote(train: np.ndarray, train_labels: np.ndarray, queries: np.ndarray, k: int, num_classes: int) -> np.ndarray:
    """Class of each query row by a vote of its k nearest train rows, each weighted by its similarity.

    train `[n, D]` and queries `[m, D]` float32 L2-normalised rows, train_labels `[n]` int64 in [0, num_classes);
    returns `[m]` int64. Exact search (faiss IndexFlatIP); k is capped at n; a vote's weight is
    max(similarity, 0) + 1e-6, so equal similarities fall back to counts and ties to the lower class.
    """
    import faiss

    x = np.ascontiguousarray(train, dtype=np.float32)
    q = np.ascontiguousarray(queries, dtype=np.float32)
    y = np.asarray(train_labels, dtype=np.int64)
    if x.ndim != 2 or q.ndim != 2 or x.shape[1] != q.shape[1] or y.shape != (x.shape[0],):
        raise ValueError(f"knn_vote: train [n, D], labels [n], queries [m, D] expected, got {x.shape}, {y.shape},"
                         f" {q.shape}")
    if x.shape[0] == 0 or k < 1:
        raise ValueError(f"knn_vote: needs train rows and k >= 1, got n = {x.shape[0]}, k = {k}")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"knn_vote: train_labels must lie in [0, {num_classes - 1}]")
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    sims, ids = index.search(q, min(int(k), x.shape[0]))
    votes = np.zeros((q.shape[0], num_classes), dtype=np.float64)
    rows = np.repeat(np.arange(q.shape[0]), ids.shape[1])
    np.add.at(votes, (rows, y[ids.ravel()]), np.maximum(sims.ravel(), 0.0) + 1e-6)
    return votes.argmax(axis=1).astype(np.int64)
