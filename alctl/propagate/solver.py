"""The diffusion operator of a normalised graph, p -> (I - alpha W_n) p, and its inverse by batched conjugate gradient.

Array contract: the normalised graph W_n `[n, n]` float32 CSR, symmetric, zero diagonal (`alctl.propagate.graph`);
right-hand sides Y and solutions Z `[n, C]` (one column per class, or per diffusion source) float32. Randomness:
none. Pure: no file I/O; caller mistakes raise ValueError.

The linear solves are conjugate gradient on (I - alpha W_n) Z = Y for all columns at once: each column
follows the iteration of scipy.sparse.linalg.cg (own step sizes, own stopping test
||r_c|| < tol ||y_c||, at most max_iter iterations), with float32 vectors, float64 dot products and step
sizes, and one sparse matrix-matrix product per iteration for all the columns still running (made
block by block, <= 16 columns each: narrow dense blocks stay in cache). Sparse products run in torch
with the process's intra-op thread setting; everything else is single-threaded numpy. Measured timings
of these choices: benchmarks/README.md.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import scipy.sparse

# Sparse products take at most this many dense columns at a time (CG keeps its vectors in such blocks).
_BLOCK_COLS = 16
# Narrower blocks go through scipy's CSR product (torch's is slower for 1-3 columns).
_TORCH_MIN_COLS = 4
# Graphs with fewer stored entries are multiplied in the calling thread only.
_PARALLEL_MIN_NNZ = 1 << 18
# Column dot products: float32 partial sums over this many rows, then float64.
_DOT_BLOCK = 256
_ONES_ROW = np.ones((1, _DOT_BLOCK), dtype=np.float32)  # sums runs of _DOT_BLOCK rows in `_coldot`
# CG compacts its working arrays to the running columns once this fraction of them has stopped.
_COMPACT_FRACTION = 0.25


class Diffusion:
    """The propagation operator of a normalised graph: p ↦ (I - alpha W_n) p, and its inverse by batched CG.

    Attributes: `n` (nodes), `alpha`, `csr` (W_n as `[n, n]` float32 scipy CSR), `workers` (threads of the
    sparse products). `solve(b, tol, max_iter)` takes b `[n, m]` and returns (x `[n, m]` float32 with
    (I - alpha W_n) x ≈ b column by column, CG iterations of the longest-running column).

    Products work on column blocks: a block is a C-contiguous float32 [n, w] array with w <= `_BLOCK_COLS`
    (a narrow dense block stays in cache). W_n is a torch CSR tensor (int32 indices); with T = torch's
    intra-op thread count > 1 and a large enough graph, its rows are cut into 4 T slices that T worker
    threads (one OpenMP thread each) take in turn: unlike torch's own OpenMP split, a worker that loses its
    core to another process only delays its current slice. Blocks narrower than `_TORCH_MIN_COLS` use
    scipy's single-threaded product. Timings of these choices: benchmarks/README.md.
    """

    block_cols: int = _BLOCK_COLS  # columns per dense block of a sparse product (the width CG works in)

    def __init__(self, wn: scipy.sparse.spmatrix, alpha: float, workers: int | None = None) -> None:
        """Operator of W_n `[n, n]` (any scipy sparse, cast to float32 CSR) and alpha; workers None = automatic."""
        import torch

        w = scipy.sparse.csr_matrix(wn, dtype=np.float32)
        self.n = int(w.shape[0])
        self.alpha = float(alpha)
        self.csr = w
        if workers is None:
            workers = torch.get_num_threads() if w.nnz >= _PARALLEL_MIN_NNZ else 1
        self.workers = max(1, int(workers))
        index = np.int32 if w.nnz < 2**31 else np.int64
        indptr, indices = w.indptr.astype(index, copy=False), w.indices.astype(index, copy=False)
        data = np.ascontiguousarray(w.data, dtype=np.float32)
        self.whole = _torch_csr(indptr, indices, data, w.shape)
        self.slices: list[tuple[int, int, Any]] = []
        if self.workers > 1:  # row slices share the arrays of the whole matrix
            cuts = np.linspace(0, self.n, 4 * self.workers + 1).astype(np.int64)
            for a, b in zip(cuts[:-1].tolist(), cuts[1:].tolist()):
                if b > a:
                    lo, hi = int(indptr[a]), int(indptr[b])
                    crow = indptr[a : b + 1] - indptr[a]
                    self.slices.append((a, b, _torch_csr(crow, indices[lo:hi], data[lo:hi], (b - a, self.n))))

    def apply(self, p: np.ndarray, out: np.ndarray, threads: bool = True) -> None:
        """out[j] = (I - alpha W_n) p[j] for each block j of p [g, n_rows >= n, w] (rows past n left alone);
        threads=False: in the calling thread only (a pool worker)."""
        import torch

        n = self.n
        for j in range(p.shape[0]):
            if p.shape[2] < _TORCH_MIN_COLS:
                out[j, :n] = self.csr @ p[j, :n]
                out[j, :n] *= -self.alpha
                out[j, :n] += p[j, :n]
                continue
            pj = torch.from_numpy(p[j, :n])
            oj = torch.from_numpy(out[j, :n])
            if not threads or not self.slices:
                torch.addmm(pj, self.whole, pj, beta=1.0, alpha=-self.alpha, out=oj)
                continue

            def one(part: tuple[int, int, Any], pj: Any = pj, oj: Any = oj) -> None:
                """Rows a:b of the product, from that row slice of W_n."""
                a, b, mat = part
                torch.addmm(pj[a:b], mat, pj, beta=1.0, alpha=-self.alpha, out=oj[a:b])

            list(_pool(self.workers).map(one, self.slices))

    def solve(self, b: np.ndarray, tol: float, max_iter: int, x0: np.ndarray | None = None) -> tuple[np.ndarray, int]:
        """CG on all columns of b [n, m] (optional warm start x0 [n, m]) → (x [n, m] float32, iterations)."""
        bb = np.ascontiguousarray(b, dtype=np.float32)
        xx = None if x0 is None else np.array(x0, dtype=np.float32, order="C")
        return _cg(self, bb, tol, max_iter, xx)


def _torch_csr(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, shape: tuple[int, int]) -> Any:
    """A torch sparse CSR tensor on the given CSR arrays (shared, not copied)."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        return torch.sparse_csr_tensor(
            torch.from_numpy(indptr), torch.from_numpy(indices), torch.from_numpy(data), size=shape, check_invariants=False
        )


_POOLS: dict[int, Any] = {}


def _pool(workers: int) -> Any:
    """A lasting pool of `workers` threads, each limited to one OpenMP thread (torch's intra-op pool)."""
    if workers not in _POOLS:
        from concurrent.futures import ThreadPoolExecutor

        _POOLS[workers] = ThreadPoolExecutor(workers, thread_name_prefix="alctl-spmm", initializer=_one_openmp_thread)
    return _POOLS[workers]


def _one_openmp_thread() -> None:
    """Worker initializer: this thread's OpenMP regions (torch, MKL) use one thread."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="openmp")


class _Blocks:
    """Layout of k columns as g blocks [g, n_rows, w] (w <= _BLOCK_COLS, the last block padded with unused
    columns); n_rows = n rounded up to a multiple of _DOT_BLOCK, the extra rows zero."""

    def __init__(self, n: int, k: int) -> None:
        self.n, self.k = n, k
        self.g = max(1, -(-k // _BLOCK_COLS))
        self.w = max(1, -(-k // self.g))
        self.rows = -(-n // _DOT_BLOCK) * _DOT_BLOCK

    def pack(self, a: np.ndarray) -> np.ndarray:
        """[n, k] → [g, rows, w] float32 (copy)."""
        out = np.zeros((self.g, self.rows, self.w), dtype=np.float32)
        for j in range(self.g):
            cols = a[:, j * self.w : (j + 1) * self.w]
            out[j, : self.n, : cols.shape[1]] = cols
        return out

    def unpack(self, blocks: np.ndarray) -> np.ndarray:
        """[g, rows, w] → [n, k] (copy)."""
        return blocks[:, : self.n].transpose(1, 0, 2).reshape(self.n, self.g * self.w)[:, : self.k]

    def flat(self, v: np.ndarray, fill: float) -> np.ndarray:
        """Per-column values [k] → [g * w], the unused columns set to `fill`."""
        out = np.full(self.g * self.w, fill, dtype=np.float64)
        out[: self.k] = v
        return out


def _coldot(a: np.ndarray, b: np.ndarray, tmp: np.ndarray) -> np.ndarray:
    """Column dot products of blocks [g, rows, w] float32 → [g * w] float64 (tmp: scratch of their shape):
    float32 sums over runs of `_DOT_BLOCK` rows (one small matrix product per run) added in float64
    (relative error ~1e-7; one float32 sum over 50,000 rows errs by ~1e-5, which made CG drift from
    scipy's by 4e-5 on weakly reached rows)."""
    g, rows, w = a.shape
    np.multiply(a, b, out=tmp)
    part = np.matmul(_ONES_ROW, tmp.reshape(g * rows // _DOT_BLOCK, _DOT_BLOCK, w))  # [runs, 1, w]
    return part.reshape(g, rows // _DOT_BLOCK, w).sum(axis=1, dtype=np.float64).reshape(g * w)


def _scale(a: np.ndarray, v: np.ndarray, out: np.ndarray) -> None:
    """out = a * v per column, for blocks a, out [g, rows, w] and v [w] (the same for every block): v is
    tiled over `_DOT_BLOCK` rows so that numpy multiplies long contiguous runs (faster than
    broadcasting [w] over rows of w = 10)."""
    w = a.shape[2]
    tiled = np.tile(np.asarray(v, dtype=np.float32).reshape(w), _DOT_BLOCK)
    np.multiply(a.reshape(-1, _DOT_BLOCK * w), tiled, out=out.reshape(-1, _DOT_BLOCK * w))


def _cg(op: Diffusion, b: np.ndarray, tol: float, max_iter: int, x0: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Batched conjugate gradient on float32 b [n, m]: column c runs scipy's cg iteration on its own
    (step sizes from its own dot products, stop once ||r_c|| < tol ||b_c||, at most max_iter steps;
    a zero column gives a zero solution), all columns sharing one sparse product per iteration.
    The columns sit in blocks of <= `_BLOCK_COLS`; an iteration runs block by block (direction update,
    sparse product, step, residual) so that each block's vectors are reused while in cache. Vectors are
    float32, dot products and step sizes float64. Columns that have stopped are dropped from the blocks
    once they are `_COMPACT_FRACTION` of them. Returns (x [n, m] float32, iterations of the longest-running column)."""
    n, m = b.shape
    x = np.zeros(b.shape, dtype=np.float32) if x0 is None else x0
    bnorm = np.sqrt(np.einsum("ij,ij->j", b, b, dtype=np.float64))
    work = np.flatnonzero(bnorm > 0)
    if x0 is not None:
        x[:, bnorm == 0] = 0.0
    if work.size == 0 or max_iter <= 0:
        return x, 0
    lay = _Blocks(n, work.size)
    rs = lay.pack(b[:, work])
    if x0 is not None and x[:, work].any():
        xs = lay.pack(x[:, work])
        q = np.zeros(rs.shape, dtype=np.float32)
        op.apply(xs, out=q)
        rs -= q
    else:
        xs = np.zeros(rs.shape, dtype=np.float32)
    atol = lay.flat(tol * bnorm[work], np.inf)  # unused columns never run
    p = np.zeros(rs.shape, dtype=np.float32)  # np.zeros maps zero pages lazily; zeros_like writes them
    q = np.zeros(rs.shape, dtype=np.float32)
    tmp = np.zeros(rs.shape, dtype=np.float32)  # scratch of step_block
    rr = _coldot(rs, rs, tmp)
    rho_prev = np.ones_like(rr)
    its = 0
    for it in range(max_iter):
        live = np.sqrt(rr) >= atol
        n_live = int(live.sum())
        if n_live == 0:
            break
        stopped = lay.k - n_live
        if stopped and stopped >= _COMPACT_FRACTION * lay.k:
            # Write back the columns that stopped; go on with the others only.
            keep = np.flatnonzero(live[: lay.k])
            x[:, work] = lay.unpack(xs)
            new = _Blocks(n, keep.size)
            xs, rs, p = (new.pack(lay.unpack(a)[:, keep]) for a in (xs, rs, p))
            q = np.zeros(rs.shape, dtype=np.float32)
            tmp = np.zeros(rs.shape, dtype=np.float32)
            work, atol = work[keep], new.flat(atol[keep], np.inf)
            rr, rho_prev = new.flat(rr[keep], 0.0), new.flat(rho_prev[keep], 1.0)
            lay = new
            live = np.zeros(lay.g * lay.w, dtype=bool)
            live[: lay.k] = True
        its += 1
        beta = np.zeros_like(rr)
        np.divide(rr, rho_prev, out=beta, where=live & (rho_prev > 0))
        beta = beta.astype(np.float32).reshape(lay.g, lay.w)
        rr_next = np.empty_like(rr)

        def step_block(j: int, threads: bool, first: bool = it == 0, lay: _Blocks = lay, live: np.ndarray = live,
                       rr: np.ndarray = rr, beta: np.ndarray = beta, rr_next: np.ndarray = rr_next,
                       p: np.ndarray = p, q: np.ndarray = q, rs: np.ndarray = rs, xs: np.ndarray = xs,
                       tmp: np.ndarray = tmp) -> None:
            """One CG iteration for the columns of block j (they depend on no other block)."""
            cols = slice(j * lay.w, (j + 1) * lay.w)
            pj, qj, rj, xj = p[j : j + 1], q[j : j + 1], rs[j : j + 1], xs[j : j + 1]
            tj = tmp[j : j + 1]
            if first:
                pj[:] = rj
            else:
                _scale(pj, beta[j], out=pj)
                pj += rj
            op.apply(pj, out=qj, threads=threads)
            pq = _coldot(pj, qj, tj)
            step = np.zeros(lay.w)
            np.divide(rr[cols], pq, out=step, where=live[cols] & (pq > 0))
            _scale(pj, step, out=tj)
            xj += tj
            _scale(qj, step, out=tj)
            rj -= tj
            rr_next[cols] = _coldot(rj, rj, tj)

        if op.workers > 1 and lay.g > 1:  # whole blocks to the workers (numpy releases the GIL)
            list(_pool(op.workers).map(lambda j: step_block(j, False), range(lay.g)))
        else:  # one block: its sparse product split by rows over the workers
            for j in range(lay.g):
                step_block(j, True)
        rho_prev, rr = rr, rr_next
    x[:, work] = lay.unpack(xs)
    return x, its


def _check_solver_args(alpha: float, tol: float, max_iter: int) -> tuple[float, float, int]:
    """(alpha, tol, max_iter) as numbers after range checks (ValueError)."""
    alpha, tol = float(alpha), float(tol)
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"alpha must be in [0, 1), got {alpha}")
    if not (tol >= 0.0 and math.isfinite(tol)):
        raise ValueError(f"tol must be a finite number >= 0, got {tol}")
    if isinstance(max_iter, bool) or int(max_iter) != max_iter or max_iter < 0:
        raise ValueError(f"max_iter must be an integer >= 0, got {max_iter!r}")
    return alpha, tol, int(max_iter)


def solve(
    wn: scipy.sparse.spmatrix, y: np.ndarray, alpha: float, tol: float, max_iter: int, x0: np.ndarray | None = None
) -> tuple[np.ndarray, int]:
    """Solve (I - alpha W_n) Z = Y for all columns at once (batched/block conjugate gradient); Z [n, C].

    wn `[n, n]` sparse symmetric with ||W_n|| <= 1 (as `normalized_graph` gives), y `[n, C]` or `[n]`,
    optional warm start x0 of y's shape. Column c is scipy.sparse.linalg.cg(I - alpha W_n, y[:, c],
    x0=x0[:, c], rtol=tol, maxiter=max_iter) run in float32: same iterates, same stopping rule relative
    to ||y_c|| (a zero column stays zero). Returns (Z float32 of y's shape, iterations of the
    longest-running column).
    """
    alpha, tol, max_iter = _check_solver_args(alpha, tol, max_iter)
    if not scipy.sparse.issparse(wn) or wn.ndim != 2 or wn.shape[0] != wn.shape[1]:
        raise ValueError(f"solve: wn must be a square sparse matrix, got {type(wn).__name__} {getattr(wn, 'shape', None)}")
    yy = np.asarray(y)
    vector = yy.ndim == 1
    y2 = yy[:, None] if vector else yy
    if y2.ndim != 2 or y2.shape[0] != wn.shape[0]:
        raise ValueError(f"solve: y must be [{wn.shape[0]}, C] or [{wn.shape[0]}], got {yy.shape}")
    if not np.isfinite(y2).all():
        raise ValueError("solve: y holds NaN or inf")
    x2 = None
    if x0 is not None:
        xx = np.asarray(x0)
        if xx.shape != yy.shape:
            raise ValueError(f"solve: x0 must have y's shape {yy.shape}, got {xx.shape}")
        x2 = xx[:, None] if vector else xx
    op = Diffusion(wn, alpha)
    z, its = op.solve(y2, tol, max_iter, x2)
    return (z[:, 0] if vector else z), its
