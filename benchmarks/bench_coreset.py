"""Greedy k-center (coreset) benchmark: alctl.strategies.kcenter_greedy vs the authors' scipy baseline.

Baseline = the straightforward implementation of the reference code: scipy.spatial.distance_matrix of
unlabeled x labeled for the initial nearest-center distances, then per pick
distance_matrix(unlabeled, new_center) and np.minimum.

Each method runs in its own fresh subprocess on the same features (written once to a temporary .npz),
so that its peak memory can be read without the other's allocations:
  peak memory = VmHWM (peak resident set) after the call - VmRSS just before it, with the high-water
  mark reset (/proc/self/clear_refs = 5) before the call. It counts every allocation of the call
  (numpy, BLAS buffers, scipy temporaries), not the input features already in memory.
Times are wall-clock of the call alone (perf_counter); alctl's is the median of --repeat runs in the
same subprocess, the baseline runs once. Both methods must return identical picks.

--device cuda hands alctl the features as a CUDA tensor (its on-device path, see kcenter_greedy); its peak
is then the CUDA memory allocated by the call (torch.cuda.max_memory_allocated), not the host's.

    python benchmarks/bench_coreset.py [--n 50000 --dim 128 --labeled 1000 --budget 1000] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from procmem import reset_peak, status_kib  # benchmarks/procmem.py, beside this script


def baseline_kcenter(
    features: np.ndarray, labeled: np.ndarray, unlabeled: np.ndarray, budget: int, timings: dict | None = None
) -> np.ndarray:
    """The authors' way: full unlabeled x labeled distance matrix, then one distance column per pick."""
    from scipy.spatial import distance_matrix

    t0 = time.perf_counter()
    x = features[unlabeled]
    min_d = distance_matrix(x, features[labeled]).min(axis=1)
    if timings is not None:
        timings["init_seconds"] = time.perf_counter() - t0
    picks = []
    for _ in range(budget):
        i = int(np.argmax(min_d))
        picks.append(i)
        min_d = np.minimum(min_d, distance_matrix(x, x[i : i + 1]).ravel())
    return unlabeled[np.asarray(picks, dtype=np.int64)]


def _worker(method: str, data: str, budget: int, out: str, repeat: int, device: str) -> None:
    """Run one method on the saved features; write picks and figures for the parent."""
    blob = np.load(data)
    timings: dict = {}
    features, labeled, unlabeled = blob["features"], blob["labeled"], blob["unlabeled"]
    cuda = method == "fast" and device != "cpu"
    if method == "fast":
        from alctl.strategies import kcenter_greedy

        if cuda:
            import torch

            features = torch.from_numpy(features).to(device)
            torch.cuda.synchronize(device)
        kcenter_greedy(features[:2000], labeled[:0], np.arange(2000), 2)  # warm-up: imports, BLAS threads
        fn = lambda: kcenter_greedy(features, labeled, unlabeled, budget)[0]  # noqa: E731
    else:
        baseline_kcenter(features[:2000], np.arange(10), np.arange(10, 2000), 2)  # same warm-up
        fn = lambda: baseline_kcenter(features, labeled, unlabeled, budget, timings)  # noqa: E731
    reset = reset_peak()
    rss0 = status_kib("VmRSS")
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        alloc0 = torch.cuda.memory_allocated(device)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        picks = fn()  # numpy picks: the call has synchronised with the device
        times.append(time.perf_counter() - t0)
    hwm = status_kib("VmHWM")
    peak_mib = (torch.cuda.max_memory_allocated(device) - alloc0) / 2**20 if cuda else (hwm - rss0) / 1024
    np.save(out + ".npy", picks)
    Path(out + ".json").write_text(
        json.dumps({"times": times, "seconds": float(np.median(times)), "peak_mib": peak_mib,
                    "hwm_reset": reset, **timings})
    )


def _run(method: str, data: str, budget: int, tmp: str, repeat: int, device: str) -> tuple[np.ndarray, dict]:
    out = os.path.join(tmp, method)
    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, __file__, "--worker", method, "--data", data, "--budget", str(budget), "--out", out,
           "--repeat", str(repeat), "--device", device]
    subprocess.run(cmd, check=True, env=env)
    return np.load(out + ".npy"), json.loads(Path(out + ".json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50000, help="pool size")
    ap.add_argument("--dim", type=int, default=128, help="feature dimension")
    ap.add_argument("--labeled", type=int, default=1000, help="labeled images (initial centers)")
    ap.add_argument("--budget", type=int, default=1000, help="picks")
    ap.add_argument("--baseline-budget", type=int, default=None,
                    help="run the baseline for only this many picks and extrapolate its time linearly (said in the output)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of alctl's kcenter_greedy (median reported); the baseline runs once")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="cpu (numpy arrays) or a CUDA device (alctl gets a tensor there)")
    ap.add_argument("--worker", choices=["fast", "baseline"], help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        _worker(args.worker, args.data, args.budget, args.out, args.repeat, args.device)
        return

    rng = np.random.default_rng(args.seed)
    feats = rng.standard_normal((args.n, args.dim), dtype=np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    perm = rng.permutation(args.n).astype(np.int64)
    labeled, unlabeled = np.sort(perm[: args.labeled]), np.sort(perm[args.labeled :])
    base_budget = args.budget if args.baseline_budget is None else min(args.baseline_budget, args.budget)

    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    print(f"greedy k-center: n={args.n} dim={args.dim} float32 L2-normalised (Gaussian), labeled={args.labeled}, "
          f"budget={args.budget}; cpus={os.cpu_count()} OMP_NUM_THREADS={threads}; alctl on {args.device}")
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "pool.npz")
        np.savez(data, features=feats, labeled=labeled, unlabeled=unlabeled)
        fast_picks, fast = _run("fast", data, args.budget, tmp, max(1, args.repeat), args.device)
        base_picks, base = _run("baseline", data, base_budget, tmp, 1, "cpu")

    same = np.array_equal(fast_picks[:base_budget], base_picks)
    base_seconds = base["seconds"]
    note = ""
    if base_budget < args.budget:
        # Only the pick loop scales with the budget: initial matrix + loop time * budget / measured picks.
        init = base["init_seconds"]
        base_seconds = init + (base["seconds"] - init) * args.budget / base_budget
        note = (f"  (EXTRAPOLATED: measured {base['seconds']:.1f} s for {base_budget} picks, of which "
                f"{init:.1f} s initial matrix; pick loop scaled linearly to {args.budget})")
    runs = ", ".join(f"{t:.2f}" for t in fast["times"])
    where = " (CUDA)" if args.device != "cpu" else ""
    print(f"alctl kcenter_greedy : {fast['seconds']:8.2f} s   peak {fast['peak_mib']:8.1f} MiB{where}   "
          f"(median of {len(fast['times'])} runs: {runs} s)")
    print(f"baseline (scipy)     : {base_seconds:8.2f} s   peak {base['peak_mib']:8.1f} MiB{note}")
    print(f"  baseline initial unlabeled x labeled matrix: {base['init_seconds']:.2f} s")
    print(f"speed-up             : {base_seconds / fast['seconds']:8.1f} x")
    print(f"identical picks      : {same} (first {base_budget} of {args.budget})")
    print("peak = VmHWM - VmRSS before the call, fresh subprocess per method"
          + ("" if fast["hwm_reset"] and base["hwm_reset"] else " (WARNING: could not reset VmHWM; peaks are upper bounds)"))
    if not same:
        raise SystemExit("picks differ")


if __name__ == "__main__":
    main()
