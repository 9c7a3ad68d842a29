"""Label propagation and jLP benchmark: alctl.knn / alctl.propagate vs the authors' straightforward way.

Data: n x 128 float32 features, L2-normalised, drawn as Gaussian clusters around C random unit centres
(noise 2.5 / sqrt(128) per coordinate: about 89% of the 50 nearest neighbours share the point's cluster
at n = 50,000, C = 10); the cluster is the class; 1,000 labeled images, balanced.

1. Label propagation, k = 50, alpha 0.99, gamma 3, tol 1e-6, max_iter 20, for C = 10 and C = 100:
   ours = knn_search (exact, alctl's default), then graph + batched float32 CG + vectorised pseudo-labels
   (alctl.propagate.diffusion_from_knn + propagate_labels, the part of label_propagation after the search);
   baseline = the same kNN result, the graph built the authors' way (COO csr_matrix, W + W.T, diags),
   scipy.sparse.linalg.cg one class at a time in float64, then a per-sample Python loop for the
   pseudo-labels and weights (divided by their maximum, as in the authors' code). The pseudo-labels must
   be identical (asserted).
   The kNN line: alctl.knn.knn_search(x, K) against faiss IndexFlatIP built here (index, add, search of
   K + 1), run alternately --repeats times in the same process; the ratio of the median wall times must be
   at most 1.1 (printed: ok / SLOWER), and whether the ids are identical (they can differ where two
   neighbours are equally similar up to float32 rounding; the largest float64 similarity gap at a
   differing position is printed). --knn-only stops after the kNN lines.
2. jLP, b = 1,000 on the C = 10 graph: ours (graph + alctl.strategies.graph._jlp_greedy, as jlp_select runs it
   after the search) vs one cold scipy cg solve per pick as in the authors' code (its graph built
   beforehand, untimed). The cold loop runs for the first --cold-picks picks only and is extrapolated
   linearly to b (printed as such). Both are compared with each other and with --exact-picks picks
   made on converged solves.

Times are wall-clock (perf_counter) and CPU (process_time, all threads of the process) of the call
alone, after a warm-up; propagation (ours and baseline, alternately) and kNN + propagation are the
medians of --repeats runs, the rest one run each (a shared machine's speed drifts from minute to minute,
see benchmarks/README.md; so each kNN + propagation total is followed by the sgemm speed measured right
then). Threads: both sides use the process defaults (torch intra-op threads for our sparse products,
OpenBLAS for scipy's cg vector operations and sgemm, faiss's OpenMP for both kNN searches); --threads N
sets them all to N (N = 1: a single-core comparison, robust on a shared machine).
`--quick` runs a small smoke version.

    python benchmarks/bench_propagate.py [--quick] [--threads N] [--n 50000] [--budget 1000] [--cold-picks 100]
                                         [--classes 10 100] [--knn-only] [--no-jlp] [--repeats 3]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse
import scipy.sparse.linalg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alctl.knn import knn_search  # noqa: E402
from alctl.propagate import Diffusion, GraphSpec, Propagation, diffusion_from_knn, propagate_labels  # noqa: E402
from alctl.strategies.graph import _jlp_greedy  # noqa: E402


def _propagate_knn(sims: np.ndarray, ids: np.ndarray, labeled: np.ndarray, labels: np.ndarray, num_classes: int,
                   max_iter: int) -> Propagation:
    """alctl's label propagation after the kNN search (graph, solve, pseudo-labels) at this benchmark's settings."""
    spec = GraphSpec(k=sims.shape[1], gamma=GAMMA, alpha=ALPHA, tol=TOL, max_iter=max_iter, knn="exact")
    return propagate_labels(diffusion_from_knn(sims, ids, spec), labeled, labels, num_classes, TOL, max_iter, "max")

K, ALPHA, GAMMA, TOL, MAX_ITER = 50, 0.99, 3.0, 1e-6, 20

KNN_LIMIT = 1.1  # knn_search may take at most this times faiss IndexFlatIP's wall time (medians)


class Timer:
    """Wall and CPU seconds of a with-block."""

    def __enter__(self) -> "Timer":
        self.w0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.w0
        self.cpu = time.process_time() - self.c0

    def __str__(self) -> str:
        return f"{self.wall:7.2f} s wall ({self.cpu:6.2f} s CPU)"


def make_data(n: int, num_classes: int, dim: int = 128, noise: float = 2.5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian clusters around random unit centres, L2-normalised float32 rows, and the cluster ids."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_classes, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    y = rng.integers(0, num_classes, n)
    x = centres[y] + noise * rng.normal(size=(n, dim)) / math.sqrt(dim)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x, dtype=np.float32), y.astype(np.int64)


def balanced_labels(y: np.ndarray, num_classes: int, n_labeled: int, seed: int = 1) -> np.ndarray:
    """n_labeled positions, n_labeled / C per class, sorted."""
    rng = np.random.default_rng(seed)
    per = n_labeled // num_classes
    return np.sort(np.concatenate([rng.choice(np.flatnonzero(y == c), per, replace=False) for c in range(num_classes)]))


# --------------------------------------------------------------------------- the authors' way


def baseline_graph(sims: np.ndarray, ids: np.ndarray, alpha: float) -> scipy.sparse.csr_matrix:
    """I - alpha W_n built as the reference code does (D ** 3 of the kNN result, COO -> CSR, W + W.T, diags)."""
    n, k = ids.shape
    d = np.maximum(sims, 0) ** GAMMA
    row_idx_rep = np.tile(np.arange(n), (k, 1)).T
    w = scipy.sparse.csr_matrix((d.flatten("F"), (row_idx_rep.flatten("F"), ids.flatten("F"))), shape=(n, n))
    w = w + w.T
    w = w - scipy.sparse.diags(w.diagonal())
    s = np.asarray(w.sum(axis=1))
    s[s == 0] = 1
    dm = scipy.sparse.diags(np.array(1.0 / np.sqrt(s)).reshape(-1))
    wn = dm * w * dm
    return scipy.sparse.eye(n) - alpha * wn


def baseline_propagation(sims: np.ndarray, ids: np.ndarray, labeled: np.ndarray, labels: np.ndarray, num_classes: int):
    """Per-class scipy CG (float64), then per-sample pseudo-labels and weights, as in the reference code."""
    n = ids.shape[0]
    a = baseline_graph(sims, ids, ALPHA)
    z = np.zeros((n, num_classes))
    for c in range(num_classes):
        cur = labeled[labels == c]
        if cur.size == 0:
            continue
        y = np.zeros(n)
        y[cur] = 1.0 / cur.shape[0]
        z[:, c], _ = scipy.sparse.linalg.cg(a, y, rtol=TOL, maxiter=MAX_ITER)
    plabels = np.zeros(n, dtype=np.int64)
    weights = np.zeros(n)
    log_c = math.log(num_classes)
    for i in range(n):
        row = np.maximum(z[i], 0)
        total = row.sum()
        plabels[i] = int(np.argmax(row))
        if total > 0:
            p = row / total
            p = p[p > 0]
            weights[i] = 1.0 - float(-(p * np.log(p)).sum()) / log_c
    weights /= weights.max()  # as the authors' code does (alctl's default weight_scale "max")
    plabels[labeled] = labels
    weights[labeled] = 1.0
    class_weights = np.zeros(num_classes)
    for c in range(num_classes):
        count = int((plabels == c).sum())
        class_weights[c] = n / num_classes / count if count else 0.0
    return plabels, weights, class_weights, z


def cold_jlp(a: scipy.sparse.csr_matrix, labeled: np.ndarray, picks: int, tol: float, max_iter: int) -> list[int]:
    """The reference jLP loop: one cold CG solve of all sources per pick, smallest f among unlabeled picked."""
    n = a.shape[0]
    q = np.zeros(n)
    q[labeled] = 1.0
    chosen: list[int] = []
    for _ in range(picks):
        f, _ = scipy.sparse.linalg.cg(a, q, rtol=tol, maxiter=max_iter)
        f[labeled] = np.inf
        f[chosen] = np.inf
        p = int(np.argmin(f))
        chosen.append(p)
        q[p] = 1.0
    return chosen


# --------------------------------------------------------------------------- main


def main() -> None:
    """Run the benchmark and print the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: n = 5000, b = 100, 30 cold picks")
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--labeled", type=int, default=1000)
    parser.add_argument("--budget", type=int, default=1000)
    parser.add_argument("--cold-picks", type=int, default=100, help="cold jLP picks actually run (then extrapolated)")
    parser.add_argument("--exact-picks", type=int, default=100,
                        help="also run this many picks on converged solves (tol 1e-12) as a reference; 0: skip")
    parser.add_argument("--classes", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op and BLAS threads for both sides (0: leave the defaults)")
    parser.add_argument("--knn-only", action="store_true",
                        help="only the kNN lines (knn_search vs faiss IndexFlatIP) for each C; no propagation, no jLP")
    parser.add_argument("--no-jlp", action="store_true", help="skip the jLP comparison")
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs of kNN + propagation (ours), and of each kNN search, whose medians are reported")
    args = parser.parse_args()
    if args.quick:
        args.n, args.budget, args.cold_picks, args.exact_picks = 5000, 100, 30, 30
    cold_picks = min(args.cold_picks, args.budget)

    import threadpoolctl
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
        threadpoolctl.threadpool_limits(args.threads)

    print(f"n = {args.n}, D = 128, k = {K}, alpha = {ALPHA}, gamma = {GAMMA}, tol = {TOL}, max_iter = {MAX_ITER}; "
          f"{args.labeled} labels (balanced); torch threads {torch.get_num_threads()}, "
          f"BLAS {[(i['internal_api'], i['num_threads']) for i in threadpoolctl.threadpool_info()]}")
    # warm-up: imports, thread pools
    xw, yw = make_data(2000, 10, seed=9)
    sw, iw = knn_search(xw, 10)
    faiss_flat(xw, 10)
    if not args.knn_only:
        _propagate_knn(sw, iw, np.arange(10), np.arange(10) % 10, 10, max_iter=3)
        baseline_propagation(sw, iw, np.arange(10), np.arange(10) % 10, 10)

    graph10 = None
    for c in args.classes:
        x, y = make_data(args.n, c)
        lab = balanced_labels(y, c, args.labeled)
        print(f"\n== {'kNN' if args.knn_only else 'label propagation'}, C = {c}")
        sims, ids, t_knn = knn_versus_faiss(x, args.repeats)
        if args.knn_only:
            continue
        t_ours, t_base = [], []
        for _ in range(max(1, args.repeats)):  # alternately, so that both see the same drifts of the machine
            with Timer() as t:
                prop = _propagate_knn(sims, ids, lab, y[lab], c, max_iter=MAX_ITER)
            t_ours.append(t)
            with Timer() as t:
                b_labels, b_weights, b_cw, b_z = baseline_propagation(sims, ids, lab, y[lab], c)
            t_base.append(t)
        same = np.array_equal(prop.labels, b_labels)
        ours_wall, ours_cpu = median_times(t_ours)
        base_wall, base_cpu = median_times(t_base)
        print(f"ours: graph + CG + pseudo       median {ours_wall:.2f} s wall ({ours_cpu:.2f} s CPU) of "
              f"{', '.join(f'{t.wall:.2f}' for t in t_ours)}   ({prop.iterations} CG iterations)")
        print(f"baseline: graph + CG + pseudo   median {base_wall:.2f} s wall ({base_cpu:.2f} s CPU) of "
              f"{', '.join(f'{t.wall:.2f}' for t in t_base)}")
        print(f"ratio without kNN (medians): {base_wall / ours_wall:.1f}x wall, {base_cpu / ours_cpu:.1f}x CPU "
              "(target >= 5x)")
        print(total_line(x, lab, y[lab], c, t_knn.wall + t_ours[0].wall, args.repeats, target=c == 10))
        print(f"pseudo-labels identical: {same}; max |Z - Z_scipy| = {np.abs(prop.scores - b_z).max():.2e} "
              f"(max |Z| {np.abs(b_z).max():.2e}); max |w - w_base| = {np.abs(prop.weights - b_weights).max():.2e}; "
              f"class weights max rel diff {np.abs(prop.class_weights - b_cw).max() / b_cw.max():.1e}; "
              f"accuracy of pseudo-labels on U {np.mean(prop.labels == y):.3f}")
        assert same, "pseudo-labels differ between ours and the baseline"
        if c == 10:
            graph10 = (sims, ids, lab)

    if graph10 is None or args.no_jlp:
        return
    sims, ids, lab = graph10
    n = ids.shape[0]
    unl = np.setdiff1d(np.arange(n), lab)
    b = args.budget
    print(f"\n== jLP, b = {b}, C = 10 graph")
    from alctl.propagate import normalized_graph

    with Timer() as t_jlp:
        wn = normalized_graph(sims, ids, GAMMA)
        op = Diffusion(wn, ALPHA)
        picks, _, _ = _jlp_greedy(op, lab, unl, b, TOL, MAX_ITER)
    print(f"ours (graph + {b} picks)          {t_jlp}")
    a = baseline_graph(sims, ids, ALPHA)
    with Timer() as t_cold:
        cold = cold_jlp(a, lab, cold_picks, TOL, MAX_ITER)
    per = t_cold.wall / cold_picks
    print(f"cold solves, first {cold_picks} picks   {t_cold}  -> {per * 1e3:.0f} ms per pick")
    est = per * b
    print(f"cold solves, {b} picks: {est:.1f} s wall, EXTRAPOLATED linearly from the first {cold_picks} picks"
          if cold_picks < b else f"cold solves, {b} picks: {est:.1f} s wall (measured)")
    print(f"ratio: {est / t_jlp.wall:.1f}x wall (target >= 5x)")
    print("agreement, ours vs cold solves: " + agreement(picks, np.asarray(cold), cold_picks))
    m = min(args.exact_picks, b)
    if m:
        exact, _, _ = _jlp_greedy(op, lab, unl, m, 1e-12, 1000, increment_atol=False)
        print(f"reference: {m} picks on converged solves (tol 1e-12, up to 1000 iterations)")
        print("agreement, ours vs converged: " + agreement(picks, exact, m))
        print("agreement, cold vs converged: " + agreement(np.asarray(cold), exact, min(m, cold_picks)))


def faiss_flat(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """faiss IndexFlatIP over the rows of x, searched for k + 1 neighbours (self included): sims, ids [n, k + 1]."""
    import faiss

    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    return index.search(x, k + 1)


def without_self(sims: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[n, k + 1] results without each row's own id (or its last column when the row does not list itself)."""
    n, k1 = ids.shape
    own = ids == np.arange(n)[:, None]
    keep = np.ones((n, k1), dtype=bool)
    keep[np.arange(n), np.where(own.any(axis=1), own.argmax(axis=1), k1 - 1)] = False
    return sims[keep].reshape(n, k1 - 1), ids[keep].reshape(n, k1 - 1)


def knn_versus_faiss(x: np.ndarray, repeats: int) -> tuple[np.ndarray, np.ndarray, Timer]:
    """knn_search(x, K) and faiss IndexFlatIP on the same rows, alternately `repeats` times (timed); prints the
    kNN line (median wall times, their ratio against KNN_LIMIT, ids identical or not); returns our sims [n, K],
    ids [n, K] and the timer of our first run."""
    t_ours, t_flat = [], []
    for _ in range(max(1, repeats)):  # alternately, so that both see the same drifts of the machine
        with Timer() as t:
            sims, ids = knn_search(x, K)
        t_ours.append(t)
        with Timer() as t:
            raw = faiss_flat(x, K)
        t_flat.append(t)
    f_sims, f_ids = without_self(*raw)
    (ours_wall, ours_cpu), (flat_wall, flat_cpu) = median_times(t_ours), median_times(t_flat)
    ratio = ours_wall / flat_wall
    n = x.shape[0]
    same = np.array_equal(ids, f_ids)
    line = (f"kNN: knn_search exact median {ours_wall:.2f} s vs faiss IndexFlatIP {flat_wall:.2f} s wall "
            f"(CPU {ours_cpu:.2f} s vs {flat_cpu:.2f} s; runs {', '.join(f'{t.wall:.2f}' for t in t_ours)} vs "
            f"{', '.join(f'{t.wall:.2f}' for t in t_flat)}): {ratio:.2f}x, "
            f"{'ok' if ratio <= KNN_LIMIT else 'SLOWER'} (limit {KNN_LIMIT}x); "
            f"ids identical: {'yes' if same else 'no'}")
    if not same:
        r, c = np.nonzero(ids != f_ids)
        x64 = x.astype(np.float64)
        gap = np.abs(np.einsum("ij,ij->i", x64[r], x64[ids[r, c]]) - np.einsum("ij,ij->i", x64[r], x64[f_ids[r, c]]))
        line += (f" ({np.unique(r).size} of {n} rows differ, only where neighbours tie up to float32 rounding: "
                 f"largest float64 similarity gap {gap.max():.1e})" if gap.max() < 1e-6 else
                 f" ({np.unique(r).size} of {n} rows differ; largest float64 similarity gap {gap.max():.1e})")
    print(line + f"; max |sims - faiss sims| {np.abs(sims - f_sims).max():.1e}")
    return sims, ids, t_ours[0]


def sgemm_rate(rounds: int = 10) -> float:
    """This machine's float32 matrix-product speed now, in GFLOPS (4096 x 128 times 128 x 4096, BLAS threads as set)."""
    a = np.random.default_rng(0).standard_normal((8192, 128)).astype(np.float32)
    out = np.empty((4096, 4096), dtype=np.float32)
    np.matmul(a[:4096], a[4096:].T, out=out)  # warm-up
    t0 = time.perf_counter()
    for _ in range(rounds):
        np.matmul(a[:4096], a[4096:].T, out=out)
    return rounds * 4096 * 4096 * 128 * 2 / (time.perf_counter() - t0) / 1e9


def median_times(timers: list[Timer]) -> tuple[float, float]:
    """Median wall and median CPU seconds of the timed runs."""
    return float(np.median([t.wall for t in timers])), float(np.median([t.cpu for t in timers]))


def total_line(x: np.ndarray, labeled: np.ndarray, labels: np.ndarray, num_classes: int, first: float,
               repeats: int, target: bool = False) -> str:
    """A report of the median wall-clock total of kNN + propagation over the first run (already timed) and
    repeats - 1 more runs of knn_search + _propagate_knn, with every run's total, whether the median is
    under the 4 s target (when `target`), and then (next line) the machine's sgemm speed (`sgemm_rate`)."""
    totals = [first]
    for _ in range(max(0, repeats - 1)):
        with Timer() as t:
            sims, ids = knn_search(x, K)
            _propagate_knn(sims, ids, labeled, labels, num_classes, max_iter=MAX_ITER)
        totals.append(t.wall)
    median = float(np.median(totals))
    line = (f"total kNN + propagation (ours): median {median:.2f} s wall of {len(totals)} runs "
            f"({', '.join(f'{v:.2f}' for v in totals)})")
    if target:
        line += f" ({'under' if median < 4 else 'OVER'} the 4 s target for C = 10)"
    return f"{line}\n   machine now: sgemm {sgemm_rate():.0f} GFLOPS"


def agreement(a: np.ndarray, b: np.ndarray, m: int) -> str:
    """How far two pick sequences agree over their first m picks."""
    prefix = next((j for j in range(m) if a[j] != b[j]), m)
    overlap = len(set(a[:m].tolist()) & set(b[:m].tolist())) / m
    return f"identical first {prefix} of {m} picks; same set of {m}: {overlap:.0%}"


if __name__ == "__main__":
    main()
