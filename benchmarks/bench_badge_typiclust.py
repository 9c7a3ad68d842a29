"""BADGE and TypiClust benchmark: alctl.strategies.embedding / coverage vs straightforward references.

Pool (seeded): n x dim float32 features drawn around 10 random unit centers with Gaussian noise, L2-normalised;
labeled = the first --labeled positions of a permutation, unlabeled = the rest (both sorted); softmax
probabilities `[n_u, C]` float32 of the unlabeled rows from a random linear map of their features (temperature
0.5). Budget b.

BADGE. alctl: `badge_select` (residuals a = p - onehot(argmax p), `kmeanspp_kron` on a and f without building the
gradient embedding). Reference: BADGE's `init_centers` done the plain way: the explicit gradient embedding
g = a ⊗ f as a dense `[n_u, C*D]` float64 matrix (49,000 x 1,280 = 479 MiB at the default sizes), then per pick
scipy `cdist(g, g[j], "sqeuclidean")` over that matrix and a running minimum of D²; the draws follow
`kmeanspp_kron`'s rule (first pick: largest norm, lower position on ties; then u = rng.random() * sum(D²), the
first row whose running sum exceeds u), with the same np.random.Generator seed.

TypiClust. k-means: `typiclust_clusters` of the labeled + unlabeled rows (in that order) into |L| + b clusters,
seeded as `typiclust_select` seeds it (one rng.integers(0, 2**31 - 1) draw of default_rng(--seed)); run once in
its own subprocess, and these clusters feed both picking stages. Picking stage, given the clusters: alctl's
`typiclust_pick` (typicality vectorised over size buckets of clusters) vs a reference with per-cluster Python
loops: for each cluster holding unlabeled images, its members by `np.flatnonzero(cluster == c)`, scipy `cdist`
of them, typicality 1 / (mean distance to the k = min(20, size - 1) nearest other members + 1e-5) and its argmax;
cluster order as `typiclust_pick` documents (fewest labeled, then largest, then lowest id), extra rounds over what
is left when fewer clusters than b. The reference returns what `typiclust_pick` returns, the picks and every
unlabeled image's typicality (compared too). End to end: alctl's `typiclust_select` vs k-means
(`typiclust_clusters`, same seed) + the reference picking, so that the share of k-means shows.

Each method runs in its own fresh subprocess on the same pool (written once to a temporary .npz), so that its
peak memory can be read without the other's allocations:
  peak memory = VmHWM (peak resident set) after the call - VmRSS just before it, with the high-water
  mark reset (/proc/self/clear_refs = 5) before the call. It counts every allocation of the call
  (numpy, BLAS buffers, scipy and faiss temporaries), not the input pool already in memory.
Times are wall-clock of the call alone (perf_counter); alctl's are the median of --repeat runs in the same
subprocess, the references run once. Picks must be identical (positions, in pick order); the target is
reference / alctl >= 5x (end to end both run the same k-means, so there the ratio is bounded by its share).
--blas-threads N caps numpy's and scipy's OpenBLAS threads (threadpoolctl, prefix libscipy_openblas) around
every measured call, alctl's and the references' alike; faiss's own OpenBLAS and OpenMP (k-means) keep theirs.

    python benchmarks/bench_badge_typiclust.py [--n 50000 --dim 128 --classes 10 --labeled 1000 --budget 1000]
        [--repeat 3 --seed 0 --blas-threads N]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from procmem import reset_peak, status_kib  # benchmarks/procmem.py, beside this script

if TYPE_CHECKING:
    from alctl.strategies.base import PoolView, StrategyParams

TARGET = 5.0  # reference / alctl
_BLOBS = 10  # Gaussian blobs of the features
_SPREAD = 1.0  # noise norm around a unit blob center (about)
_TEMPERATURE = 0.5  # of the softmax of the random linear map
_TYPICALITY_K = 20
_TYPICALITY_EPS = 1e-5
METHODS = ("badge_alctl", "badge_ref", "kmeans", "typiclust_alctl", "typiclust_ref")


# --------------------------------------------------------------------------- pool


def make_pool(n: int, dim: int, classes: int, labeled: int, seed: int) -> dict[str, np.ndarray]:
    """Seeded synthetic pool: clustered L2-normalised features, sorted labeled/unlabeled split, softmax probs of U."""
    if not 0 <= labeled < n:
        raise ValueError(f"make_pool: labeled must be in [0, n), got {labeled} for n={n}")
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((_BLOBS, dim))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    x = centers[rng.integers(_BLOBS, size=n)] + (_SPREAD / np.sqrt(dim)) * rng.standard_normal((n, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    features = x.astype(np.float32)
    perm = rng.permutation(n).astype(np.int64)
    lab, unl = np.sort(perm[:labeled]), np.sort(perm[labeled:])
    logits = features[unl].astype(np.float64) @ rng.standard_normal((dim, classes)) / _TEMPERATURE
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    return {"features": features, "probs": p.astype(np.float32), "labeled": lab, "unlabeled": unl}


def typiclust_seed(seed: int) -> int:
    """The k-means seed `typiclust_select` draws from default_rng(seed)."""
    return int(np.random.default_rng(seed).integers(0, 2**31 - 1))


def kmeans_clusters(features: np.ndarray, labeled: np.ndarray, unlabeled: np.ndarray, budget: int,
                    seed: int) -> np.ndarray:
    """`typiclust_select`'s clustering: cluster `[n]` int64 of each pool position (-1: in neither set)."""
    from alctl.strategies.coverage import typiclust_clusters

    nodes = np.concatenate([labeled, unlabeled])
    assign = typiclust_clusters(features[nodes], max(1, labeled.size + budget), typiclust_seed(seed))
    clusters = np.full(features.shape[0], -1, dtype=np.int64)
    clusters[nodes] = assign
    return clusters


# --------------------------------------------------------------------------- alctl


def _params() -> StrategyParams:
    """StrategyParams with the manifest's defaults (BADGE and TypiClust read none of them)."""
    from alctl.propagate import GraphSpec
    from alctl.strategies.base import StrategyParams

    graph = GraphSpec(k=50, gamma=3.0, alpha=0.99, tol=1e-6, max_iter=20, knn="exact")
    return StrategyParams(graph=graph)


def _view(pool: dict[str, np.ndarray], classes: int) -> PoolView:
    """The PoolView of the pool (labels of L: zeros, no strategy here reads them)."""
    from alctl.strategies.base import PoolView

    lab = pool["labeled"]
    return PoolView(probs=pool["probs"], features=pool["features"], labeled=lab, unlabeled=pool["unlabeled"],
                    labels=np.zeros(lab.size, dtype=np.int64), num_classes=classes, cycle=0)


def alctl_badge(pool: dict[str, np.ndarray], budget: int, seed: int) -> np.ndarray:
    """alctl's BADGE (`badge_select`, rng = default_rng(seed)) → picks `[b]` int64 pool positions in order."""
    from alctl.strategies.embedding import badge_select

    classes = pool["probs"].shape[1]
    return badge_select(_view(pool, classes), budget, np.random.default_rng(seed), _params()).chosen


def alctl_typiclust(pool: dict[str, np.ndarray], budget: int, seed: int) -> np.ndarray:
    """alctl's TypiClust end to end (`typiclust_select`, rng = default_rng(seed)) → picks `[b]` int64."""
    from alctl.strategies.coverage import typiclust_select

    classes = pool["probs"].shape[1]
    return typiclust_select(_view(pool, classes), budget, np.random.default_rng(seed), _params()).chosen


# --------------------------------------------------------------------------- references


def reference_badge(features: np.ndarray, probs: np.ndarray, unlabeled: np.ndarray, budget: int, seed: int,
                    timings: dict[str, float] | None = None) -> np.ndarray:
    """BADGE's init_centers the plain way: explicit float64 `[n_u, C*D]` gradient embedding, one cdist per pick."""
    from scipy.spatial.distance import cdist

    t0 = time.perf_counter()
    p = np.asarray(probs, dtype=np.float64)
    n_u, classes = p.shape
    a = p - np.eye(classes)[p.argmax(axis=1)]  # p - onehot(argmax p)
    f = features[unlabeled].astype(np.float64)
    g = (a[:, :, None] * f[:, None, :]).reshape(n_u, classes * f.shape[1])  # [n_u, C*D]
    if timings is not None:
        timings["embedding_seconds"] = time.perf_counter() - t0
        timings["embedding_mib"] = g.nbytes / 2**20
    b = int(budget)
    if b == 0:
        return np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng(seed)
    picks = [int(np.argmax(np.einsum("ij,ij->i", g, g)))]  # largest norm; first of equal ones = lower position
    min_d2 = cdist(g, g[picks[0] : picks[0] + 1], "sqeuclidean").ravel()
    free = np.ones(n_u, dtype=bool)
    free[picks[0]] = False
    for _ in range(1, b):
        cum = np.cumsum(min_d2)
        if cum[-1] > 0.0:
            i = int(np.searchsorted(cum, rng.random() * cum[-1], side="right"))  # first running sum > u
            if i == n_u:  # u rounded up to the total: the last row of positive D²
                i = int(np.flatnonzero(min_d2)[-1])
        else:  # every row left at distance 0 of a pick: the first free row, no draw
            i = int(np.flatnonzero(free)[0])
        picks.append(i)
        free[i] = False
        np.minimum(min_d2, cdist(g, g[i : i + 1], "sqeuclidean").ravel(), out=min_d2)
    return unlabeled[np.asarray(picks, dtype=np.int64)]


def reference_typicality(x: np.ndarray) -> np.ndarray:
    """Typicality of each row of one cluster's x `[m, D]` from its full scipy cdist matrix → `[m]` float64."""
    from scipy.spatial.distance import cdist

    m = x.shape[0]
    if m < 2:
        return np.zeros(m, dtype=np.float64)
    d = cdist(x, x)
    np.fill_diagonal(d, np.inf)
    k = min(_TYPICALITY_K, m - 1)
    return 1.0 / (np.sort(d, axis=1)[:, :k].mean(axis=1) + _TYPICALITY_EPS)


def reference_typiclust_pick(features: np.ndarray, clusters: np.ndarray, labeled: np.ndarray,
                             unlabeled: np.ndarray, budget: int) -> tuple[np.ndarray, np.ndarray]:
    """TypiClust's choice for given clusters with per-cluster Python loops → (picks `[b]`, typicality `[n_u]`)."""
    if not 0 <= budget <= unlabeled.size:
        raise ValueError(f"reference_typiclust_pick: budget {budget} outside [0, {unlabeled.size}]")
    x = features[unlabeled].astype(np.float64)
    cu = clusters[unlabeled]
    cl = clusters[labeled]
    cl = cl[cl >= 0]
    ids = np.unique(np.concatenate([cu, cl])).tolist()
    n_lab = {c: int(np.count_nonzero(cl == c)) for c in ids}
    size = {c: int(np.count_nonzero(cu == c)) + n_lab[c] for c in ids}
    order = sorted(ids, key=lambda c: (n_lab[c], -size[c], c))
    typ = np.zeros(unlabeled.size, dtype=np.float64)
    for c in order:  # every cluster's members: their typicality within it (what typiclust_pick returns)
        rows = np.flatnonzero(cu == c)
        if rows.size:
            typ[rows] = reference_typicality(x[rows])
    picks: list[int] = []
    left = np.ones(unlabeled.size, dtype=bool)
    first = True
    while len(picks) < budget:  # rounds over the clusters with images left
        chosen: list[int] = []
        for c in order:
            if len(picks) + len(chosen) == budget:
                break
            rows = np.flatnonzero((cu == c) & left)
            if rows.size:
                t = typ[rows] if first else reference_typicality(x[rows])  # later rounds: without the picks
                chosen.append(int(rows[np.argmax(t)]))  # first of equal maxima: lower pool position
        left[chosen] = False
        picks += chosen
        first = False
    return unlabeled[np.asarray(picks, dtype=np.int64)], typ


# --------------------------------------------------------------------------- measuring


def _blas_limit(threads: int | None) -> contextlib.AbstractContextManager[Any]:
    """Cap numpy's and scipy's OpenBLAS at `threads` (None: leave them as they are)."""
    if threads is None:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits={"libscipy_openblas": int(threads)})


def measure(fn: Callable[[], Any], repeat: int, blas_threads: int | None = None) -> tuple[Any, dict[str, Any]]:
    """Run fn `repeat` times → (its last result, {times, seconds (median), peak_mib, hwm_reset})."""
    reset = reset_peak()
    rss0 = status_kib("VmRSS")
    times = []
    out = None
    with _blas_limit(blas_threads):
        for _ in range(max(1, repeat)):
            t0 = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
    peak = (status_kib("VmHWM") - rss0) / 1024
    return out, {"times": times, "seconds": float(np.median(times)), "peak_mib": peak, "hwm_reset": reset}


def _warm_up(method: str) -> None:
    """Imports, BLAS and OpenMP thread pools of a method, on a tiny pool."""
    tiny = make_pool(300, 8, 3, 20, 1)
    if method == "badge_alctl":
        alctl_badge(tiny, 5, 0)
        return
    if method == "badge_ref":
        reference_badge(tiny["features"], tiny["probs"], tiny["unlabeled"], 5, 0)
        return
    clusters = kmeans_clusters(tiny["features"], tiny["labeled"], tiny["unlabeled"], 10, 0)
    if method == "typiclust_alctl":
        from alctl.strategies.coverage import typiclust_pick

        typiclust_pick(tiny["features"], clusters, tiny["labeled"], tiny["unlabeled"], 10)
        alctl_typiclust(tiny, 10, 0)
    elif method == "typiclust_ref":
        reference_typiclust_pick(tiny["features"], clusters, tiny["labeled"], tiny["unlabeled"], 10)


def _worker(method: str, data: str, budget: int, seed: int, tmp: str, repeat: int, blas: int | None) -> None:
    """Run one method on the saved pool in this fresh process; write picks and figures for the parent."""
    with np.load(data) as blob:
        pool = {k: blob[k] for k in blob.files}
    feats, lab, unl = pool["features"], pool["labeled"], pool["unlabeled"]
    with _blas_limit(blas):
        _warm_up(method)

    def timed(fn: Callable[[], Any], repeat: int) -> tuple[Any, dict[str, Any]]:
        """`measure` under --blas-threads."""
        return measure(fn, repeat, blas)

    res: dict[str, Any] = {}
    arrays: dict[str, np.ndarray] = {}
    if method == "badge_alctl":
        arrays["picks"], res["badge"] = timed(lambda: alctl_badge(pool, budget, seed), repeat)
    elif method == "badge_ref":
        timings: dict[str, float] = {}
        arrays["picks"], res["badge"] = timed(
            lambda: reference_badge(feats, pool["probs"], unl, budget, seed, timings), 1)
        res["badge"].update(timings)
    elif method == "kmeans":
        arrays["clusters"], res["kmeans"] = timed(lambda: kmeans_clusters(feats, lab, unl, budget, seed), 1)
    elif method == "typiclust_alctl":
        from alctl.strategies.coverage import typiclust_pick

        clusters = np.load(os.path.join(tmp, "kmeans_clusters.npy"))
        (arrays["pick_picks"], arrays["pick_typ"]), res["pick"] = timed(
            lambda: typiclust_pick(feats, clusters, lab, unl, budget), repeat)
        arrays["e2e_picks"], res["e2e"] = timed(lambda: alctl_typiclust(pool, budget, seed), repeat)
    elif method == "typiclust_ref":
        clusters = np.load(os.path.join(tmp, "kmeans_clusters.npy"))
        (arrays["pick_picks"], arrays["pick_typ"]), res["pick"] = timed(
            lambda: reference_typiclust_pick(feats, clusters, lab, unl, budget), 1)
        split: dict[str, float] = {}

        def e2e() -> np.ndarray:
            """k-means + the reference picking, each timed."""
            t0 = time.perf_counter()
            own = kmeans_clusters(feats, lab, unl, budget, seed)
            split["kmeans_seconds"] = time.perf_counter() - t0
            arrays["e2e_clusters"] = own
            return reference_typiclust_pick(feats, own, lab, unl, budget)[0]

        arrays["e2e_picks"], res["e2e"] = timed(e2e, 1)
        res["e2e"].update(split)
    else:
        raise ValueError(f"unknown method {method!r}")
    for name, arr in arrays.items():
        np.save(os.path.join(tmp, f"{method}_{name}.npy"), arr)
    Path(os.path.join(tmp, f"{method}.json")).write_text(json.dumps(res))


def _run(method: str, data: str, budget: int, seed: int, tmp: str, repeat: int, blas: int | None,
         in_process: bool = False) -> dict[str, Any]:
    """Run one method in a fresh subprocess (or in this one) → its figures (its arrays stay in tmp)."""
    if in_process:
        _worker(method, data, budget, seed, tmp, repeat, blas)
        return json.loads(Path(os.path.join(tmp, f"{method}.json")).read_text())
    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, __file__, "--worker", method, "--data", data, "--budget", str(budget), "--seed",
           str(seed), "--tmp", tmp, "--repeat", str(repeat)] + ([] if blas is None else ["--blas-threads", str(blas)])
    subprocess.run(cmd, check=True, env=env)
    return json.loads(Path(os.path.join(tmp, f"{method}.json")).read_text())


# --------------------------------------------------------------------------- report


def _runs(r: dict[str, Any]) -> str:
    """'(median of k runs: ...)' or '(1 run)'."""
    t = r["times"]
    return f"(median of {len(t)} runs: {', '.join(f'{s:.3f}' for s in t)} s)" if len(t) > 1 else "(1 run)"


def _compare(title: str, alctl: dict[str, Any], ref: dict[str, Any], same: bool, ref_note: str = "") -> bool:
    """Print one comparison block; True when the target is met."""
    ratio = ref["seconds"] / alctl["seconds"]
    met = ratio >= TARGET
    print(title)
    print(f"  alctl     : {alctl['seconds']:9.3f} s   peak {alctl['peak_mib']:8.1f} MiB   {_runs(alctl)}")
    print(f"  reference : {ref['seconds']:9.3f} s   peak {ref['peak_mib']:8.1f} MiB   {_runs(ref)}{ref_note}")
    print(f"  ratio (reference/alctl): {ratio:.1f}x; target >= {TARGET:g}x: {'met' if met else 'NOT met'}")
    print(f"  picks identical: {'yes' if same else 'NO'}")
    return met


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the flags; as parent: build the pool, run every method in its subprocess, compare and print."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50000, help="pool size")
    ap.add_argument("--dim", type=int, default=128, help="feature dimension D")
    ap.add_argument("--classes", type=int, default=10, help="classes C (softmax width)")
    ap.add_argument("--labeled", type=int, default=1000, help="labeled images")
    ap.add_argument("--budget", type=int, default=1000, help="picks b")
    ap.add_argument("--repeat", type=int, default=3,
                    help="runs of each alctl call (median reported); the references run once")
    ap.add_argument("--seed", type=int, default=0, help="seed of the pool, BADGE's draws and TypiClust's k-means")
    ap.add_argument("--blas-threads", type=int, default=None,
                    help="cap numpy's and scipy's OpenBLAS threads around every measured call (default: as they are)")
    ap.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)  # smoke tests: no subprocesses
    ap.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--tmp", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        _worker(args.worker, args.data, args.budget, args.seed, args.tmp, args.repeat, args.blas_threads)
        return

    pool = make_pool(args.n, args.dim, args.classes, args.labeled, args.seed)
    n_u = pool["unlabeled"].size
    env = " ".join(f"{k}={os.environ.get(k, 'unset')}" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                                  "OPENBLAS_CORETYPE"))
    blas = "as they are" if args.blas_threads is None else f"capped at {args.blas_threads}"
    print(f"BADGE + TypiClust: n={args.n} dim={args.dim} float32 L2-normalised ({_BLOBS} Gaussian blobs), "
          f"classes={args.classes}, labeled={args.labeled}, unlabeled={n_u}, budget={args.budget}, seed={args.seed}; "
          f"cpus={os.cpu_count()} {env}; numpy/scipy BLAS threads {blas}")
    res: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "pool.npz")
        np.savez(data, **pool)
        for method in METHODS:
            repeat = args.repeat if method.endswith("alctl") else 1
            res[method] = _run(method, data, args.budget, args.seed, tmp, max(1, repeat), args.blas_threads,
                               args.in_process)

        def arr(name: str) -> np.ndarray:
            """An array a worker saved."""
            return np.load(os.path.join(tmp, name + ".npy"))

        badge_same = np.array_equal(arr("badge_alctl_picks"), arr("badge_ref_picks"))
        pick_same = np.array_equal(arr("typiclust_alctl_pick_picks"), arr("typiclust_ref_pick_picks"))
        typ_diff = float(np.max(np.abs(arr("typiclust_alctl_pick_typ") - arr("typiclust_ref_pick_typ")), initial=0.0))
        e2e_same = np.array_equal(arr("typiclust_alctl_e2e_picks"), arr("typiclust_ref_e2e_picks"))
        km_same = np.array_equal(arr("kmeans_clusters"), arr("typiclust_ref_e2e_clusters"))

    ba, br = res["badge_alctl"]["badge"], res["badge_ref"]["badge"]
    met = [_compare(f"BADGE (badge_select vs explicit {n_u:,} x {args.classes * args.dim:,} float64 embedding + "
                    "cdist per pick)", ba, br, badge_same,
                    f"; building g: {br['embedding_seconds']:.2f} s, {br['embedding_mib']:.0f} MiB")]
    km = res["kmeans"]["kmeans"]
    n_clusters = args.labeled + args.budget
    print(f"TypiClust k-means (typiclust_clusters, {n_clusters:,} clusters of {args.n:,} rows): "
          f"{km['seconds']:.3f} s, peak {km['peak_mib']:.1f} MiB; "
          f"same clusters in the reference's end-to-end run: {'yes' if km_same else 'NO'}")
    ta, tr = res["typiclust_alctl"], res["typiclust_ref"]
    met.append(_compare("TypiClust picking stage, given the clusters (typiclust_pick vs per-cluster loops)",
                        ta["pick"], tr["pick"], pick_same))
    print(f"  max |typicality - reference typicality|: {typ_diff:.1e}")
    ref_km = tr["e2e"]["kmeans_seconds"]
    met.append(_compare("TypiClust end to end (typiclust_select vs typiclust_clusters + per-cluster loops)",
                        ta["e2e"], tr["e2e"], e2e_same, f"; of which k-means {ref_km:.2f} s"))
    bound = (km["seconds"] + tr["pick"]["seconds"]) / km["seconds"]
    print(f"  k-means share: the k-means run alone ({km['seconds']:.2f} s) is "
          f"{km['seconds'] / ta['e2e']['seconds']:.0%} of alctl's end-to-end median; the reference's own k-means "
          f"is {ref_km / tr['e2e']['seconds']:.0%} of its end-to-end time; with k-means shared the ratio is at most "
          f"(k-means + reference picking) / k-means = {bound:.2f}x")
    hwm = all(r.get("hwm_reset", True) for m in res.values() for r in m.values())
    print("peak = VmHWM - VmRSS before the call, "
          + ("all methods in this process (--in-process)" if args.in_process else "fresh subprocess per method")
          + ("" if hwm else " (WARNING: could not reset VmHWM; peaks are upper bounds)"))
    names = ("BADGE", "TypiClust picking", "TypiClust end to end")
    print(f"target >= {TARGET:g}x: met for: {', '.join(n for n, m in zip(names, met) if m) or 'none'}; "
          f"NOT met for: {', '.join(n for n, m in zip(names, met) if not m) or 'none'}")
    if not (badge_same and pick_same and e2e_same):
        raise SystemExit("picks differ")


if __name__ == "__main__":
    main()
