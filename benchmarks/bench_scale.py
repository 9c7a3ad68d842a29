"""How each step's cost grows with the pool: 4,000, 15,000 and 60,000 MNIST images (issue 29).

For each pool size n (the first n images of a seeded permutation of MNIST's 60,000 training images, `make
data-mnist`), each step runs alone in its own fresh subprocess, so that its peak memory is its own:
  features   a forward pass of every pool image (the +SEMI graph's and the selection's features; the 13-layer
             network at --width, untrained: the cost does not depend on the weights)
  knn        the exact 50-nearest-neighbour search of those features (faiss, as `semi.knn: exact`)
  propagate  label propagation from --labeled labels (graph + CG, all classes at once)
  coreset    CoreSet's greedy k-center picks of --budget images
  badge      BADGE's k-means++ on the gradient embeddings of --budget images
  typiclust  TypiClust's clustering into labels + budget clusters and its typical picks
  epoch      one training epoch over every pool image (batch 64, translation 2): a +SEMI epoch that sees them all
  parquet    the pool and scores tables of a cycle written (atomic Parquet writes, n rows each)
Per step: seconds (wall clock of the call), peak memory (VmHWM after - VmRSS before, the high-water mark reset
first) and the growth exponent between consecutive sizes, log(t2 / t1) / log(n2 / n1) (1 = linear, 2 =
quadratic; n log n gives about 1.1 here). With --cycle it also runs one +SEMI cycle end to end on the whole pool of
60,000 (`alctl cycle` on a small manifest) and prints its seconds per step from metrics.parquet.

    python benchmarks/bench_scale.py [--sizes 4000 15000 60000 --width 0.125 --labeled 100 --budget 100 --cycle]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from procmem import reset_peak, status_kib  # benchmarks/procmem.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("features", "knn", "propagate", "coreset", "badge", "typiclust", "epoch", "parquet")


def mnist_pool(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MNIST's training set in a seeded permutation: images uint8 [60000, 1, 28, 28], labels and ids int64; a pool
    of n images is its first n rows."""
    sys.path.insert(0, str(ROOT))
    from alctl.data import load_dataset

    ds = load_dataset("mnist", root=str(ROOT / "data"))
    order = np.random.default_rng(seed).permutation(len(ds.train_labels))
    return ds.train_images[order].numpy(), ds.train_labels[order].numpy(), ds.train_ids[order].numpy()


def _worker(step: str, data: Path, width: float, labeled: int, budget: int) -> dict[str, float]:
    """Run one step on the saved pool; its seconds and peak memory (MiB)."""
    import torch

    from alctl import store
    from alctl.models import build_model
    from alctl.propagate import GraphSpec, label_propagation
    from alctl.strategies import PoolView, StrategyParams, select
    from alctl.train import FP32, Targets, TrainSpec, fit, predict

    torch.manual_seed(0)
    z = np.load(data)
    images, labels = torch.from_numpy(z["images"]), z["labels"]
    n = len(labels)
    lab = np.sort(np.random.default_rng(1).choice(n, labeled, replace=False)).astype(np.int64)
    unl = np.setdiff1d(np.arange(n), lab).astype(np.int64)
    graph = GraphSpec(k=50, gamma=3.0, alpha=0.99, tol=1e-6, max_iter=20, knn="exact")
    mean, std = (0.1307,), (0.3081,)
    feats = probs = None
    if step not in ("features", "epoch", "parquet"):
        feats, probs = z["features"], z["probs"]
    model = build_model(1, 10, width=width)
    view = None if feats is None else PoolView(probs=probs[unl], features=feats, labeled=lab, unlabeled=unl,
                                              labels=labels[lab], num_classes=10, cycle=0)
    params = StrategyParams(graph=graph)
    if step in ("features", "epoch"):  # warm-up: torch's first convolutions pick their kernels, not timed
        warm = build_model(1, 10, width=width)
        warm(images[:64].float()).__getitem__(0).sum().backward()
        predict(warm, images[:64], mean, std, 64, FP32)
    reset_peak()
    before = status_kib("VmRSS")
    t0 = time.perf_counter()
    if step == "features":
        p, f = predict(model, images, mean, std, 512, FP32)
        np.savez(data.with_suffix(".features.npz"), features=f.numpy(), probs=p.numpy())
    elif step == "knn":
        from alctl.knn import knn_search

        knn_search(np.ascontiguousarray(feats), 50)
    elif step == "propagate":
        label_propagation(feats, lab, labels[lab], 10, graph, "max")
    elif step in ("coreset", "badge", "typiclust"):
        select(step, view, budget, np.random.default_rng(0), params)
    elif step == "epoch":
        spec = TrainSpec(epochs=1, batch_size=64, lr=0.05, rampdown_epochs=2, momentum=0.9, nesterov=True,
                         weight_decay=5e-4, translate=2, flip=False, min_steps=1, eval_batch_size=512)
        fit(model, images, Targets(labeled_pos=np.arange(n, dtype=np.int64), labeled_y=labels.astype(np.int64)),
            spec, mean, std, torch.Generator().manual_seed(0))
    elif step == "parquet":
        import pyarrow as pa

        out = Path(tempfile.mkdtemp())
        pool = pa.table({"sample_id": z["ids"], "label": labels, "labeled_cycle": np.full(n, -1, np.int32),
                         "label_source": pa.array(["oracle"] * n)})
        scores = pa.table({"cycle": np.zeros(n, np.int32), "sample_id": z["ids"], "strategy": pa.array(["random"] * n),
                           "score": np.random.default_rng(0).random(n).astype(np.float32),
                           "selected": np.zeros(n, bool)})
        store.write_table(out / "pool.parquet", "pool", pool)
        store.write_table(out / "scores.parquet", "scores", scores)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "peak_mib": (status_kib("VmHWM") - before) / 1024}


def run_step(step: str, data: Path, args: argparse.Namespace) -> dict[str, float]:
    """The step in a fresh subprocess (its own peak memory)."""
    cmd = [sys.executable, __file__, "--worker", step, "--data", str(data), "--width", str(args.width),
           "--labeled", str(args.labeled), "--budget", str(args.budget)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return json.loads(out.stdout.strip().splitlines()[-1])


def cycle_end_to_end(width: float) -> dict[str, float]:
    """One +SEMI cycle on the whole MNIST pool (60,000) through `alctl cycle`; its metrics row's seconds."""
    import pyarrow.parquet as pq
    import yaml

    work = Path(tempfile.mkdtemp())
    (work / "data").symlink_to(ROOT / "data")
    manifest = {"name": "scale", "output": str(work / "runs"), "repetitions": 1,
                "dataset": {"name": "mnist", "root": str(work / "data")},
                "model": {"width": width}, "train": {"epochs": 2, "batch_size": 64, "rampdown_epochs": 3},
                "active": {"initial": 100, "budget": 100, "cycles": 1},
                "semi": {"method": "label-propagation", "features": "model", "k": 50, "phase2_epochs": 2,
                         "every": 1, "batch_size": 128, "labeled_per_batch": 32, "unlabeled_per_epoch": 6400}}
    path = work / "scale.yaml"
    path.write_text(yaml.safe_dump(manifest))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "alctl.cli", "cycle", str(path), "--quiet"], check=True, cwd=work,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - t0
    (row,) = pq.read_table(next((work / "runs").glob("scale/tasks/**/metrics.parquet"))).to_pylist()
    return {"wall": wall, **{k: row[k] for k in ("seconds_train", "seconds_propagate", "seconds_eval",
                                                 "seconds_total", "peak_memory_mb")}}


def main() -> None:
    """Measure every step at every size and print the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[4000, 15000, 60000])
    ap.add_argument("--width", type=float, default=0.125)
    ap.add_argument("--labeled", type=int, default=100)
    ap.add_argument("--budget", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cycle", action="store_true", help="also one +SEMI cycle end to end on the 60,000 pool")
    ap.add_argument("--worker", choices=STEPS, help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(_worker(args.worker, args.data, args.width, args.labeled, args.budget)))
        return
    results: dict[int, dict[str, dict[str, float]]] = {}
    images, labels, ids = mnist_pool(args.seed)  # read once; each size takes its first n rows
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            data = Path(tmp) / f"pool{n}.npz"
            np.savez(data, images=images[:n], labels=labels[:n], ids=ids[:n])
            results[n] = {}
            for step in STEPS:
                if step == "knn":  # the features step saved them beside the pool
                    z = dict(np.load(data))
                    z.update(np.load(data.with_suffix(".features.npz")))
                    np.savez(data, **z)
                results[n][step] = run_step(step, data, args)
                print(f"n={n:>6} {step:<10} {results[n][step]['seconds']:8.2f} s  "
                      f"{results[n][step]['peak_mib']:8.1f} MiB", flush=True)
    sizes = args.sizes
    head = "| step | " + " | ".join(f"{n:,} s (MiB)" for n in sizes) + " | " + " | ".join(
        f"exponent {a // 1000}k→{b // 1000}k" for a, b in zip(sizes, sizes[1:])) + " |"
    print("\n" + head + "\n|---|" + "---:|" * (2 * len(sizes) - 1))
    for step in STEPS:
        cells = [f"{results[n][step]['seconds']:.2f} ({results[n][step]['peak_mib']:.0f})" for n in sizes]
        growth = [math.log(max(results[b][step]["seconds"], 1e-6) / max(results[a][step]["seconds"], 1e-6))
                  / math.log(b / a) for a, b in zip(sizes, sizes[1:])]
        print(f"| {step} | " + " | ".join(cells) + " | " + " | ".join(f"{g:.2f}" for g in growth) + " |")
    if args.cycle:
        print("\n+SEMI cycle end to end on 60,000 images:", json.dumps(cycle_end_to_end(args.width)))


if __name__ == "__main__":
    main()
