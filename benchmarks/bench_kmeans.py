"""k-means benchmark: alctl.pretrain.kmeans (faiss, all points, seeded) vs scikit-learn's Lloyd k-means.

Features: n x dim float32, drawn around `--true` random unit centers with Gaussian noise, L2-normalised
(like DeepCluster's features). For each K, both methods run `--iters` iterations from random initial
centroids in the same process on the same features:
  alctl    kmeans(features, K, iters, seed)           (faiss.Kmeans, max_points_per_centroid unbounded)
  baseline sklearn.cluster.KMeans(n_clusters=K, n_init=1, max_iter=iters, algorithm="lloyd", init="random",
           tol=0, random_state=seed)
Times are wall-clock of the call alone (perf_counter): the two methods alternate, --repeat runs each (seeds
seed, seed+1, ...), median and best reported, so that load from other processes hits both alike. Both use
--threads threads (faiss's OpenMP pool; scikit-learn's OpenMP and BLAS pools through threadpoolctl). The k-means
loss of both is the mean squared L2 distance of a point to its assigned centroid (sklearn: inertia_ / n),
median over the runs.

    python benchmarks/bench_kmeans.py [--n 50000 --dim 128 --ks 50 500 --iters 10 --repeat 5 --threads N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import faiss
import numpy as np
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_info, threadpool_limits

from alctl.pretrain import kmeans


def make_features(n: int, dim: int, n_true: int, spread: float, seed: int) -> np.ndarray:
    """Clustered synthetic features [n, dim] float32, L2-normalised rows."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n_true, dim)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    x = centers[rng.integers(n_true, size=n)] + (spread / np.sqrt(dim)) * rng.standard_normal((n, dim), np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


def run_alctl(x: np.ndarray, k: int, iters: int, seed: int) -> tuple[float, float]:
    """Seconds and loss of alctl's kmeans."""
    t0 = time.perf_counter()
    res = kmeans(x, k, iters, seed)
    return time.perf_counter() - t0, res.loss


def run_sklearn(x: np.ndarray, k: int, iters: int, seed: int) -> tuple[float, float]:
    """Seconds and loss of scikit-learn's Lloyd k-means."""
    km = KMeans(n_clusters=k, n_init=1, max_iter=iters, algorithm="lloyd", init="random", tol=0.0, random_state=seed)
    t0 = time.perf_counter()
    km.fit(x)
    return time.perf_counter() - t0, float(km.inertia_) / len(x)


def main() -> None:
    """Parse arguments, time both methods for every K, print a table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=50_000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--ks", type=int, nargs="+", default=[50, 500])
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--true", type=int, default=100, help="planted clusters in the synthetic features")
    p.add_argument("--spread", type=float, default=0.5, help="noise norm relative to the unit centers")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads for both methods")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()

    x = make_features(a.n, a.dim, a.true, a.spread, a.seed)
    faiss.omp_set_num_threads(a.threads)
    with threadpool_limits(limits=a.threads):
        pools = ", ".join(f"{i['internal_api']}:{i['num_threads']}" for i in threadpool_info())
        print(f"features {a.n} x {a.dim} float32 ({a.true} planted clusters), {a.iters} iterations, {a.repeat} runs each")
        print(f"cpus {os.cpu_count()}, load {os.getloadavg()[0]:.2f}, faiss {faiss.__version__} "
              f"omp threads {faiss.omp_get_max_threads()}, pools [{pools}]")
        print(f"{'K':>5} {'alctl s (best)':>15} {'sklearn s (best)':>17} {'speed-up':>9} {'alctl loss':>11} "
              f"{'sklearn loss':>13}")
        run_alctl(x, a.ks[0], 1, a.seed)  # warm-up: thread pools, first allocations
        run_sklearn(x, a.ks[0], 1, a.seed)
        for k in a.ks:
            ours, base = [], []
            for r in range(a.repeat):
                ours.append(run_alctl(x, k, a.iters, a.seed + r))
                base.append(run_sklearn(x, k, a.iters, a.seed + r))
            t_ours, t_base = statistics.median(t for t, _ in ours), statistics.median(t for t, _ in base)
            b_ours, b_base = min(t for t, _ in ours), min(t for t, _ in base)
            l_ours, l_base = statistics.median(v for _, v in ours), statistics.median(v for _, v in base)
            print(f"{k:>5} {t_ours:>7.3f} ({b_ours:.3f}) {t_base:>8.3f} ({b_base:.3f}) {t_base / t_ours:>8.1f}x "
                  f"{l_ours:>11.5f} {l_base:>13.5f}")

if __name__ == "__main__":
    main()
