"""Which feature space gives label propagation the truest pseudo-labels: the encoder's, the pixels, or both joined.

The rule behind `semi.features: auto` (encoder+pixels for grey images with an encoder), measured without training:
for each encoder that `bench_low_budget.py` trained under --out (SimCLR, DeepCluster), label propagation with the
few-labels recipe's graph (semi.k, gamma, alpha) from the same balanced labeled sets as that benchmark (1, 2 and 5
labels per class, one set per seed), on

- the encoder's features (`semi.features: encoder`),
- the centred, L2-normalised pixels (`pixels`),
- both joined (`encoder+pixels`: each L2-normalised, side by side over sqrt(2)),

and the accuracy of the pseudo-labels on the unlabeled pool (mean over the seeds). Seconds, not hours: run it after
`bench_low_budget.py` has trained the encoders.

    python benchmarks/bench_graph_features.py [--datasets mnist5k digits] [--out runs-bench] [--k 10 20]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from alctl import config as mf  # noqa: E402
from alctl import propagate  # noqa: E402
from alctl.engine.cycle import new_model  # noqa: E402
from alctl.engine.pretraining import load_encoder_file, pretrain_key, pretrain_paths  # noqa: E402
from alctl.engine.steps import joined_features, pixel_features, pool_features  # noqa: E402
from alctl.engine.tables import new_pool  # noqa: E402
from alctl.engine.workspace import dataset_for  # noqa: E402

PER_CLASS = (1, 2, 5)


def pseudo_accuracy(features: np.ndarray, truth: np.ndarray, labeled_sets: list[np.ndarray],
                    spec: propagate.GraphSpec) -> float:
    """Mean accuracy (%) over the labeled sets [n_l] of label propagation's pseudo-labels on the other pool rows;
    features [N, D] float32 L2-normalised, truth [N] int64 (every label known)."""
    op = propagate.diffusion(features, spec)
    classes = int(truth.max()) + 1
    accs = []
    for labeled in labeled_sets:
        prop = propagate.propagate_labels(op, labeled, truth[labeled], classes, spec.tol, spec.max_iter, "max")
        rest = np.setdiff1d(np.arange(len(truth)), labeled)
        accs.append(100.0 * float((prop.labels[rest] == truth[rest]).mean()))
    return float(np.mean(accs))


def spaces(config: mf.Manifest) -> dict[str, np.ndarray]:
    """Feature spaces [N, D] of the pool: pixels, and per trained encoder its features and them joined to the
    pixels."""
    ds = dataset_for(config)
    pixels = pixel_features(ds.train_images)
    out = {"pixels": pixels.numpy()}
    for method in ("simclr", "deepcluster"):
        c = config.model_copy(update={"pretrain": config.pretrain.model_copy(update={"method": method})})
        path = pretrain_paths(c, pretrain_key(c, ds))["weights"]
        if not path.is_file():
            print(f"  {method}: no encoder at {path} (run bench_low_budget.py first)", flush=True)
            continue
        model = new_model(c, ds, 0, 0, torch.device("cpu"), load_encoder_file(path, c, ds))
        feats = pool_features(c, ds, model, ds.train_images)
        out[method] = feats.numpy()
        out[f"{method}+pixels"] = joined_features([feats, pixels]).numpy()
    return out


def main() -> None:
    """Parse arguments, print one line per dataset, k and feature space."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=["mnist5k", "digits"])
    ap.add_argument("--out", type=Path, default=Path("runs-bench"), help="where bench_low_budget.py trained")
    ap.add_argument("--k", nargs="+", type=int, default=None, help="graph neighbours (default: the recipe's semi.k)")
    args = ap.parse_args()
    for name in args.datasets:
        path = args.out / f"{name}-few.yaml"
        if not path.is_file():
            sys.exit(f"{path}: not found; run benchmarks/bench_low_budget.py --datasets {name} --out {args.out}")
        config = mf.load(path).model_copy(update={"sweep": None})
        ds = dataset_for(config)
        truth = ds.train_labels.numpy()
        sets = {b: [new_pool(config.model_copy(update={"active": config.active.model_copy(
            update={"initial": b * ds.num_classes})}), rep, ds).labeled_at(0) for rep in range(config.repetitions)]
            for b in PER_CLASS}
        feats = spaces(config)
        for k in args.k or [config.semi.k]:
            spec = propagate.GraphSpec(k=k, gamma=config.semi.gamma, alpha=config.semi.alpha, tol=config.semi.tol,
                                       max_iter=config.semi.max_iter, knn="exact")
            for space, f in feats.items():
                accs = " / ".join(f"{pseudo_accuracy(f, truth, sets[b], spec):.1f}" for b in PER_CLASS)
                print(f"{name} k={k} {space:20s} pseudo-label accuracy at {'/'.join(map(str, PER_CLASS))} labels per"
                      f" class: {accs}", flush=True)


if __name__ == "__main__":
    main()
