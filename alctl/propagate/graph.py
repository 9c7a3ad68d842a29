"""The kNN graph of the pool's features (Iscen et al., CVPR 2019) and the diffusion operator built on it.

Array contract: features `[n, D]` float32 L2-normalised, one row per pool position, as a numpy array or a
torch tensor (on CUDA the kNN search runs on the device and only sims / ids come to the host); sims `[n, k]`
float32 / ids `[n, k]` int64 from `alctl.knn.knn_search`; the normalised graph W_n `[n, n]` float32 CSR,
symmetric, zero diagonal. Graph and solver settings come in a `GraphSpec` (no defaults here: they live in the
manifest schema). Randomness: none (ties go to the lower pool position). Pure: no file I/O; caller mistakes
raise ValueError / TypeError.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse

from alctl.knn import METHODS, knn_search
from alctl.propagate.solver import Diffusion, _check_solver_args

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class GraphSpec:
    """kNN graph and solver settings (the manifest's `semi` section); checked at construction (ValueError/TypeError).

    k: neighbours per node (an integer >= 1; searched as min(k, n - 1)); gamma: affinity exponent, > 0;
    alpha: in [0, 1); tol: CG relative residual, finite >= 0; max_iter: CG iterations, integer >= 0;
    knn: a method of `alctl.knn.METHODS`.
    """

    k: int
    gamma: float
    alpha: float
    tol: float
    max_iter: int
    knn: str

    def __post_init__(self) -> None:
        """Range and type checks of every field."""
        if isinstance(self.k, bool) or not isinstance(self.k, (int, np.integer)) or self.k < 1:
            raise ValueError(f"GraphSpec.k must be an integer >= 1, got {self.k!r}")
        _check_gamma(self.gamma)
        _check_solver_args(self.alpha, self.tol, self.max_iter)
        if self.knn not in METHODS:
            raise ValueError(f"GraphSpec.knn must be one of {', '.join(METHODS)}, got {self.knn!r}")


def _check_gamma(gamma: float) -> float:
    """gamma as a float after the range check (ValueError unless a finite number > 0)."""
    value = float(gamma)
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"gamma must be a positive number, got {gamma}")
    return value


def normalized_graph(sims: np.ndarray, ids: np.ndarray, gamma: float) -> scipy.sparse.csr_matrix:
    """W_n = D^-1/2 (A + A^T) D^-1/2 with A_ij = max(s_ij, 0)^gamma, zero diagonal; [n, n] float32 CSR.

    sims `[n, k]` float (row i: similarities of i to ids[i]), ids `[n, k]` int in [0, n). Self-loops
    (ids[i, j] == i) are dropped; a node with no positive edge gets an empty row (degree 0 → 0, not inf).
    Entries of W = A + A^T sum both directions where i and j list each other.
    """
    s = np.asarray(sims)
    nb = np.asarray(ids)
    if s.ndim != 2 or nb.shape != s.shape:
        raise ValueError(f"normalized_graph: sims and ids must both be [n, k], got {s.shape} and {nb.shape}")
    if not np.issubdtype(s.dtype, np.floating) or not np.issubdtype(nb.dtype, np.integer):
        raise ValueError(f"normalized_graph: sims must be float and ids integer, got {s.dtype} and {nb.dtype}")
    gamma = _check_gamma(gamma)
    n, k = s.shape
    if nb.size and (int(nb.min()) < 0 or int(nb.max()) >= n):
        raise ValueError(f"normalized_graph: ids must lie in [0, {n - 1}]")
    if not np.isfinite(s).all():
        raise ValueError("normalized_graph: sims hold NaN or inf")
    a = np.maximum(s, 0, dtype=np.float32)
    if gamma == round(gamma) and gamma <= 8:  # repeated products: faster than a float power
        base = a.copy()
        for _ in range(int(gamma) - 1):
            a *= base
    else:
        a **= np.float32(gamma)
    a[nb == np.arange(n)[:, None]] = 0.0
    # Degrees of W = A + A^T without forming it: row sums of A plus column sums of A.
    deg = a.sum(axis=1, dtype=np.float64) + np.bincount(nb.ravel(), weights=a.ravel(), minlength=n)
    inv_sqrt = np.zeros(n, dtype=np.float64)
    np.divide(1.0, np.sqrt(deg), out=inv_sqrt, where=deg > 0)
    inv32 = inv_sqrt.astype(np.float32)
    a *= inv32[:, None]
    a *= inv32[nb]
    index_dtype = np.int32 if n * k < 2**31 else np.int64
    half = scipy.sparse.csr_matrix(
        (a.ravel(), nb.ravel().astype(index_dtype, copy=False), np.arange(0, n * k + 1, k, dtype=index_dtype)),
        shape=(n, n),
    )
    wn = (half + half.T.tocsr()).tocsr()  # sums duplicates, drops the zeros
    wn.eliminate_zeros()
    return wn


def diffusion(features: np.ndarray | torch.Tensor, spec: GraphSpec) -> Diffusion:
    """The diffusion operator of the pool's kNN graph: `knn_search(features, min(spec.k, n - 1), spec.knn)`,
    `normalized_graph(..., spec.gamma)`, then `Diffusion(W_n, spec.alpha)`.

    features `[n, D]` float32 L2-normalised, n >= 2: a numpy array or a torch tensor (CUDA: the search runs
    on the device, the operator on the host).
    """
    if not isinstance(spec, GraphSpec):
        raise TypeError(f"diffusion: spec must be a GraphSpec, got {type(spec).__name__}")
    n = int(features.shape[0])
    if n < 2:
        raise ValueError(f"diffusion: needs at least 2 pool rows, got {n}")
    sims, ids = knn_search(features, min(int(spec.k), n - 1), spec.knn)
    return diffusion_from_knn(sims, ids, spec)


def diffusion_from_knn(sims: np.ndarray, ids: np.ndarray, spec: GraphSpec) -> Diffusion:
    """`Diffusion(normalized_graph(sims, ids, spec.gamma), spec.alpha)` for a kNN search already made
    (sims / ids `[n, k]` as `knn_search` returns them; spec.k and spec.knn are not used)."""
    return Diffusion(normalized_graph(sims, ids, spec.gamma), spec.alpha)
