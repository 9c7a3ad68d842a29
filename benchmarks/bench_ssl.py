"""Which self-supervised encoder for small pools: SimCLR (the recipe's) against BYOL, in one run.

Per dataset (`manifests/<dataset>-few.yaml`: the few-labels recipe's network width, views, batch, steps and
learning rate), each objective trains the same initial network on the same pool with the same views, batch,
optimizer and number of steps (`alctl.simclr.simclr` with `objective: simclr | byol`); only the loss differs
(NT-Xent with negatives; BYOL's predictor against a momentum teacher, at each momentum given). After every epoch
the same report as `alctl pretrain`: the 10-NN probe on the test images (pool labels vote) and the NMI of a
k-means into as many clusters as classes. Prints a table per dataset: the final and best probe, NMI, training
seconds and the time ratio to SimCLR, then the issue-26 targets (probe >= 97%, mnist5k in <= 15 minutes).

    python benchmarks/bench_ssl.py [--datasets digits mnist5k] [--momentum 0.99 0.996] [--lr-scale 1 5]
                                   [--threads 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from alctl import config as mf  # noqa: E402
from alctl import runtime  # noqa: E402
from alctl.engine import settings  # noqa: E402
from alctl.engine.workspace import dataset_for  # noqa: E402
from alctl.models import build_model  # noqa: E402
from alctl.pretrain import Probe  # noqa: E402
from alctl.simclr import SimclrState, simclr  # noqa: E402


def run(dataset: str, objective: str, momentum: float, lr_scale: float,
        epochs: int | None = None) -> tuple[SimclrState, float]:
    """Train one encoder from the recipe's manifest for `dataset` (its learning rate x lr_scale; `epochs` in place of
    the recipe's when given); its state (per-epoch history) and seconds."""
    config = mf.load(ROOT / "manifests" / f"{dataset}-few.yaml")
    ds = dataset_for(config)
    shape = tuple(ds.train_images.shape[1:])
    spec = settings.simclr_spec(config, ds.num_classes, shape, len(ds.train_labels))  # type: ignore[arg-type]
    spec = dataclasses.replace(spec, objective=objective, momentum=momentum, lr=spec.lr * lr_scale,
                               epochs=epochs or spec.epochs)
    runtime.seed_torch(config.seed, 0, 0, "pretrain-init")  # the engine's initial network, the same for both
    model = build_model(ds.train_images.shape[1], ds.num_classes, config.model.width, config.model.dropout)
    probe = Probe(ds.test_images, ds.test_labels.numpy(), ds.train_labels.numpy(), ds.num_classes)
    t0 = time.perf_counter()
    state = simclr(model, ds.train_images, ds.mean, ds.std, spec, config.seed, labels=ds.train_labels.numpy(),
                   probe=probe, on_epoch=lambda st, m: print(
                       f"  {dataset} {objective} m={momentum}: epoch {st.epoch}/{spec.epochs} loss"
                       f" {st.history[-1].train_loss:.4f} probe {100 * (st.history[-1].knn_accuracy or 0):.2f}%"
                       f" NMI {st.history[-1].nmi_labels:.3f} ({time.perf_counter() - t0:.0f} s)", flush=True))
    return state, time.perf_counter() - t0


def main() -> None:
    """Run the comparison and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["digits", "mnist5k"])
    parser.add_argument("--momentum", nargs="+", type=float, default=[0.99],
                        help="BYOL teacher momenta at the first step (cosine to 1)")
    parser.add_argument("--lr-scale", nargs="+", type=float, default=[1.0],
                        help="BYOL learning rates as multiples of the recipe's (pretrain.simclr.lr)")
    parser.add_argument("--epochs", type=int, default=None, help="in place of the recipe's (a quick check)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    misses = []
    for dataset in args.datasets:
        rows = []
        byol = [("byol", m, scale) for m in args.momentum for scale in args.lr_scale]
        for objective, momentum, scale in [("simclr", 0.99, 1.0), *byol]:
            state, seconds = run(dataset, objective, momentum, scale, args.epochs)
            probes = [100 * (e.knn_accuracy or 0.0) for e in state.history]
            rows.append((objective if objective == "simclr" else f"byol m={momentum} lr x{scale:g}", probes[-1],
                         max(probes),
                         state.history[-1].nmi_labels, state.epoch, seconds))
        base = rows[0][5]
        print(f"\n### {dataset}\n\n| objective | probe final % | probe best % | NMI | epochs | seconds | time / SimCLR |"
              "\n|---|---:|---:|---:|---:|---:|---:|")
        for name, final, best, nmi, epochs, seconds in rows:
            print(f"| {name} | {final:.2f} | {best:.2f} | {nmi:.3f} | {epochs} | {seconds:.0f} | {seconds / base:.2f}x |")
        top = max(rows, key=lambda r: r[1])
        if top[1] < 97.0:
            misses.append(f"{dataset}: best probe {top[1]:.2f}% ({top[0]}) < 97%")
        if dataset == "mnist5k" and top[5] > 900:
            misses.append(f"mnist5k: {top[0]} trained in {top[5]:.0f} s > 15 minutes")
    print("\ntargets: " + ("met" if not misses else "missed:\n  " + "\n  ".join(misses)))


if __name__ == "__main__":
    main()
