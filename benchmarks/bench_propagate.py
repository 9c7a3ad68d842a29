"""Label propagation and jLP benchmark: alctl.knn / alctl.propagate vs the authors' straightforward way.

Data: n x 128 float32 features, L2-normalised, drawn as Gaussian clusters around C random unit centres
(noise 2.5 / sqrt(128) per coordinate: about 89% of the 50 nearest neighbours share the point's cluster
at n = 50,000, C = 10); the cluster is the class; 1,000 labeled images, balanced.

1. Label propagation, k = 50, alpha 0.99, gamma 3, tol 1e-6, max_iter 20, for C = 10 and C = 100:
   ours = knn_search (exact: the pruned exact search of alctl.knn for n >= 10,000), then graph + batched
   float32 CG + vectorised pseudo-labels
   (alctl.propagate._propagate_knn, the part of label_propagation after the search);
   baseline = the same kNN result, the graph built the authors' way (COO csr_matrix, W + W.T, diags),
   scipy.sparse.linalg.cg one class at a time in float64, then a per-sample Python loop for the
   pseudo-labels and weights (divided by their maximum, as in the authors' code). The pseudo-labels must
   be identical (asserted).
   The kNN time is printed next to faiss IndexFlatIP (the previous exact path) run in the same process,
   with whether the ids are identical (they can differ where two neighbours are equally similar up to
   float32 rounding; the largest float64 similarity gap at a differing position is printed).
2. kNN only, C = 10, by cluster noise (--noise-sweep; the rest of the benchmark uses 2.5): pruned exact
   vs faiss flat, the share of similarities the pruned search computed, and kNN + propagation against
   the 4 s target. Pruning needs clusters separated by more than their spread (at n = 50,000: about 90%
   of the cross-cell pairs skipped at noise 0.5, 68% at 0.6, under 10% from 0.7 on); on noisier data the
   search makes no cells and computes each pair once (half of faiss's products), its rows in descending
   order of threshold.
3. jLP, b = 1,000 on the C = 10 graph: ours (graph + alctl.propagate._jlp_greedy, as jlp_select runs it
   after the search) vs one cold scipy cg solve per pick as in the authors' code (its graph built
   beforehand, untimed). The cold loop runs for the first --cold-picks picks only and is extrapolated
   linearly to b (printed as such). Both are compared with each other and with --exact-picks picks
   made on converged solves.

Times are wall-clock (perf_counter) and CPU (process_time, all threads of the process) of the call
alone, after a warm-up; propagation (ours and baseline, alternately) and kNN + propagation are the
medians of --repeats runs, the rest one run each (this shared machine's speed drifts by 20-30% from
minute to minute: faiss flat took 5.7-8.2 s for the same search within one hour, and two-thread sgemm
87-179 GFLOPS within one session; so each kNN + propagation total is followed by the sgemm speed measured
right then, and the time the search's dot products alone take at that speed). Threads: both sides use the
process defaults (torch intra-op threads for our sparse products, OpenBLAS for scipy's cg vector operations
and faiss's OpenMP); --threads N sets them all to N (N = 1: a single-core comparison, robust on a shared
machine).
`--quick` runs a small smoke version.

    python benchmarks/bench_propagate.py [--quick] [--threads N] [--n 50000] [--budget 1000] [--cold-picks 100]
                                         [--noise-sweep 0.5 0.6 0.7 2.5] [--no-jlp] [--repeats 3]
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

import alctl.knn  # noqa: E402
from alctl.knn import _faiss_exact, knn_search  # noqa: E402
from alctl.propagate import _jlp_greedy, _Operator, _propagate_knn  # noqa: E402

K, ALPHA, GAMMA, TOL, MAX_ITER = 50, 0.99, 3.0, 1e-6, 20

# The pruned search's statistics of the last knn_search call (recorded by wrapping the private function).
_LAST_STATS: list[alctl.knn._PruneStats] = []
_pruned_exact = alctl.knn._pruned_exact


def _recording_pruned_exact(*args: object, **kwargs: object) -> tuple[np.ndarray, np.ndarray, alctl.knn._PruneStats]:
    """alctl.knn._pruned_exact, its statistics kept in _LAST_STATS."""
    out = _pruned_exact(*args, **kwargs)
    _LAST_STATS[:] = [out[2]]
    return out


alctl.knn._pruned_exact = _recording_pruned_exact


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
    parser.add_argument("--noise-sweep", type=float, nargs="*", default=[0.5, 0.6, 0.7, 2.5],
                        help="cluster noise levels of the kNN-only comparison (C = 10); none: skip it")
    parser.add_argument("--no-jlp", action="store_true", help="skip the jLP comparison")
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs of kNN + propagation (ours) whose median total is reported")
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
    # warm-up: imports, thread pools (faiss flat below 10,000 rows, the pruned search above)
    xw, yw = make_data(2000, 10, seed=9)
    sw, iw = knn_search(xw, 10)
    knn_search(make_data(12_000, 10, seed=9)[0], 10)
    _propagate_knn(sw, iw, np.arange(10), np.arange(10) % 10, 10, alpha=ALPHA, gamma=GAMMA, tol=TOL, max_iter=3)
    baseline_propagation(sw, iw, np.arange(10), np.arange(10) % 10, 10)

    graph10 = None
    for c in args.classes:
        x, y = make_data(args.n, c)
        lab = balanced_labels(y, c, args.labeled)
        print(f"\n== label propagation, C = {c}")
        sims, ids, t_knn = knn_versus_faiss(x)
        t_ours, t_base = [], []
        for _ in range(max(1, args.repeats)):  # alternately, so that both see the same drifts of the machine
            with Timer() as t:
                prop = _propagate_knn(sims, ids, lab, y[lab], c, alpha=ALPHA, gamma=GAMMA, tol=TOL, max_iter=MAX_ITER)
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

    if args.noise_sweep:
        print(f"\n== kNN only, C = 10, n = {args.n}, by cluster noise (the sections above use 2.5)")
        for noise in args.noise_sweep:
            x, y = make_data(args.n, 10, noise=noise)
            lab = balanced_labels(y, 10, args.labeled)
            print(f"-- noise {noise}: cos(point, its centre) ~ {1 / math.sqrt(1 + noise ** 2):.2f}")
            s_, i_, t_knn = knn_versus_faiss(x)
            with Timer() as t_prop:
                prop = _propagate_knn(s_, i_, lab, y[lab], 10, alpha=ALPHA, gamma=GAMMA, tol=TOL, max_iter=MAX_ITER)
            print(f"   accuracy of pseudo-labels {np.mean(prop.labels == y):.3f}")
            print("   " + total_line(x, lab, y[lab], 10, t_knn.wall + t_prop.wall, args.repeats, target=True))

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
        op = _Operator(wn, ALPHA)
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


def knn_versus_faiss(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, Timer]:
    """knn_search(x, K) (timed), then faiss IndexFlatIP on the same rows (timed); prints one comparison line
    and the pruned search's statistics; returns our sims [n, K], ids [n, K] and our timer."""
    _LAST_STATS.clear()
    with Timer() as t_ours:
        sims, ids = knn_search(x, K)
    with Timer() as t_flat:
        f_sims, f_ids = _faiss_exact(x, K)
    n = x.shape[0]
    same = np.array_equal(ids, f_ids)
    name = "pruned exact" if _LAST_STATS else f"knn_search: faiss flat below {alctl.knn._PRUNED_MIN_N} rows"
    line = (f"kNN ({name}) {t_ours.wall:.2f} s vs faiss flat {t_flat.wall:.2f} s "
            f"({t_flat.wall / t_ours.wall:.1f}x; CPU {t_ours.cpu:.2f} s vs {t_flat.cpu:.2f} s), "
            f"ids identical: {'yes' if same else 'no'}")
    if not same:
        r, c = np.nonzero(ids != f_ids)
        x64 = x.astype(np.float64)
        gap = np.abs(np.einsum("ij,ij->i", x64[r], x64[ids[r, c]]) - np.einsum("ij,ij->i", x64[r], x64[f_ids[r, c]]))
        line += (f" ({np.unique(r).size} of {n} rows differ, only where neighbours tie up to float32 rounding: "
                 f"largest float64 similarity gap {gap.max():.1e})" if gap.max() < 1e-6 else
                 f" ({np.unique(r).size} of {n} rows differ; largest float64 similarity gap {gap.max():.1e})")
    print(line + f"; max |sims - faiss sims| {np.abs(sims - f_sims).max():.1e}")
    if _LAST_STATS:
        st = _LAST_STATS[0]
        print(f"   pruned search: computed {st.work:.0%} of the n^2 similarities with {st.products / n ** 2:.0%} of "
              f"faiss's dot products; {st.pruned_pairs:.0%} of the cross-cell pairs skipped ({st.cells} cells); "
              f"{st.candidates / n:.0f} entries kept per row; {st.refined_rows} rows searched again"
              + (f"; FELL BACK to faiss: {st.fallback}" if st.fallback else "")
              + "; stages " + ", ".join(f"{k} {v:.2f}" for k, v in st.seconds.items()) + " s")
    return sims, ids, t_ours


def sgemm_rate(rounds: int = 40) -> tuple[float, int]:
    """This machine's float32 matrix-product speed now: (GFLOPS, threads), in the pruned search's setting (one
    Python thread per OpenMP thread, one BLAS thread each, 512 x 128 times 128 x 2048 into a reused buffer)."""
    import faiss
    from concurrent.futures import ThreadPoolExecutor
    from threadpoolctl import threadpool_limits

    workers = max(1, int(faiss.omp_get_max_threads()))
    a = np.random.default_rng(0).standard_normal((2560, 128)).astype(np.float32)

    def job(_: int) -> None:
        out = np.empty((512, 2048), dtype=np.float32)
        for _ in range(rounds):
            np.matmul(a[:512], a[512:].T, out=out)

    with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(workers) as pool:
        list(pool.map(job, range(workers)))  # warm-up
        t0 = time.perf_counter()
        list(pool.map(job, range(workers)))
        wall = time.perf_counter() - t0
    return workers * rounds * 512 * 2048 * 128 * 2 / wall / 1e9, workers


def speed_line(dim: int) -> str:
    """The machine's sgemm speed now, and the time the last pruned search's dot products alone take at it."""
    rate, workers = sgemm_rate()
    line = f"machine now: sgemm {rate:.0f} GFLOPS on {workers} threads"
    if _LAST_STATS:
        products = _LAST_STATS[0].products
        alone = products * 2 * dim / rate / 1e9
        line += f", at which the search's {products / 1e9:.2f}e9 dot products alone take {alone:.2f} s"
    return line


def median_times(timers: list[Timer]) -> tuple[float, float]:
    """Median wall and median CPU seconds of the timed runs."""
    return float(np.median([t.wall for t in timers])), float(np.median([t.cpu for t in timers]))


def total_line(x: np.ndarray, labeled: np.ndarray, labels: np.ndarray, num_classes: int, first: float,
               repeats: int, target: bool = False) -> str:
    """A report of the median wall-clock total of kNN + propagation over the first run (already timed) and
    repeats - 1 more runs of knn_search + _propagate_knn, with every run's total, whether the median is
    under the 4 s target (when `target`), and then (next line) the machine's speed (`speed_line`)."""
    totals = [first]
    for _ in range(max(0, repeats - 1)):
        with Timer() as t:
            sims, ids = knn_search(x, K)
            _propagate_knn(sims, ids, labeled, labels, num_classes, alpha=ALPHA, gamma=GAMMA, tol=TOL,
                           max_iter=MAX_ITER)
        totals.append(t.wall)
    median = float(np.median(totals))
    line = (f"total kNN + propagation (ours): median {median:.2f} s wall of {len(totals)} runs "
            f"({', '.join(f'{v:.2f}' for v in totals)})")
    if target:
        line += f" ({'under' if median < 4 else 'OVER'} the 4 s target for C = 10)"
    return f"{line}\n   {speed_line(x.shape[1])}"


def agreement(a: np.ndarray, b: np.ndarray, m: int) -> str:
    """How far two pick sequences agree over their first m picks."""
    prefix = next((j for j in range(m) if a[j] != b[j]), m)
    overlap = len(set(a[:m].tolist()) & set(b[:m].tolist())) / m
    return f"identical first {prefix} of {m} picks; same set of {m}: {overlap:.0%}"


if __name__ == "__main__":
    main()
