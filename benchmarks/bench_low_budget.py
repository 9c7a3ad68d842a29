"""Where labels are fewest: alctl plain / +SEMI / +PRE / +PRE+SEMI against what a user could do instead.

One run, per dataset (mnist5k and scikit-learn's digits), at 1, 2 and 5 labels per class, on the same balanced
labeled sets (the manifests' initial sets, one per repetition = seed):

- alctl: `manifests/<dataset>-low.yaml`, one cycle per task, the variants swept (run with `alctl cycle`, so a
  second run of this benchmark reuses the finished tasks and the DeepCluster encoder under --out);
- 1-NN on raw pixels (scikit-learn KNeighborsClassifier, the labeled images only);
- scikit-learn LabelSpreading on raw pixels (kNN kernel, k = 10, alpha = 0.99, every pool image).

Prints one table per dataset (test accuracy, mean ± std over the seeds) and the margin of alctl's best variant
over the best baseline at each budget, then the targets of issue 16: +PRE+SEMI above LabelSpreading, and +PRE
above plain, at every budget.

    python benchmarks/bench_low_budget.py [--datasets mnist5k digits] [--out runs-bench]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from alctl import manifest as mf  # noqa: E402
from alctl import store  # noqa: E402
from alctl.console import Ui  # noqa: E402
from alctl.engine.commands import cycle_command  # noqa: E402
from alctl.engine.tables import new_pool  # noqa: E402
from alctl.engine.workspace import dataset_for, task_dir  # noqa: E402

VARIANTS = ("plain", "+SEMI", "+PRE", "+PRE+SEMI")
BASELINES = ("1-NN pixels", "LabelSpreading pixels")


def pixels(images: object) -> np.ndarray:
    """uint8 images [n, C, H, W] as float32 rows [n, C*H*W] in [0, 1]."""
    return images.numpy().reshape(len(images), -1).astype(np.float32) / 255.0  # type: ignore[attr-defined]


def baselines(config: mf.Manifest, rep: int) -> dict[str, float]:
    """Test accuracy (%) of the pixel baselines on the task's initial labeled set (the same one alctl trains on)."""
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.semi_supervised import LabelSpreading

    ds = dataset_for(config)
    pool = new_pool(config, rep, ds)
    labeled = pool.labeled_at(0)
    x, x_test = pixels(ds.train_images), pixels(ds.test_images)
    y_test = ds.test_labels.numpy()
    nn1 = KNeighborsClassifier(n_neighbors=1).fit(x[labeled], pool.label[labeled])
    y = np.full(len(x), -1, dtype=np.int64)
    y[labeled] = pool.label[labeled]
    spread = LabelSpreading(kernel="knn", n_neighbors=10, alpha=0.99, max_iter=1000).fit(x, y)
    return {"1-NN pixels": 100 * float((nn1.predict(x_test) == y_test).mean()),
            "LabelSpreading pixels": 100 * float((spread.predict(x_test) == y_test).mean())}


def run(manifest: Path, out: Path) -> dict[tuple[int, str], list[float]]:
    """Run (or reuse) every task of the manifest under `out`; {(labels per class, method): accuracies (%)}."""
    m = mf.load(manifest)
    m = m.model_copy(update={"output": str(out)})
    resolved = out / manifest.name
    resolved.parent.mkdir(parents=True, exist_ok=True)
    resolved.write_text(mf.to_yaml(m))
    t0 = time.perf_counter()
    cycle_command(resolved, None, None, Ui())
    print(f"  alctl tasks of {manifest.name}: {time.perf_counter() - t0:.0f} s (0 when reused)", flush=True)
    results: dict[tuple[int, str], list[float]] = {}
    done_baselines: set[tuple[int, int]] = set()
    for task in mf.tasks(mf.load(resolved)):
        c = task.config
        per_class = c.active.initial // len(dataset_for(c).classes)
        acc = store.read_table(task_dir(task) / "metrics.parquet", "metrics")["accuracy"].to_numpy()
        results.setdefault((per_class, task.variant), []).append(100 * float(acc[0]))
        if (per_class, task.rep) not in done_baselines:  # one labeled set per budget and seed
            done_baselines.add((per_class, task.rep))
            for name, value in baselines(c, task.rep).items():
                results.setdefault((per_class, name), []).append(value)
    return results


def table(name: str, results: dict[tuple[int, str], list[float]]) -> tuple[str, list[str]]:
    """A markdown table (rows: labels per class; columns: methods) and the lines of failed targets."""
    budgets = sorted({b for b, _ in results})
    methods = [v for v in VARIANTS if any((b, v) in results for b in budgets)] + list(BASELINES)
    lines = [f"### {name}", "", "| labels per class | " + " | ".join(methods) + " | best alctl - best baseline |",
             "|---:|" + "---|" * len(methods) + "---:|"]
    misses = []
    for b in budgets:
        mean = {meth: float(np.mean(results[b, meth])) for meth in methods if (b, meth) in results}
        cells = [f"{mean[meth]:.1f} ± {np.std(results[b, meth], ddof=1) if len(results[b, meth]) > 1 else 0:.1f}"
                 for meth in methods]
        ours = max((meth for meth in VARIANTS if meth in mean), key=mean.get)
        theirs = max(BASELINES, key=mean.get)
        lines.append(f"| {b} | " + " | ".join(cells) + f" | {mean[ours] - mean[theirs]:+.1f} ({ours} vs {theirs}) |")
        if mean.get("+PRE+SEMI", -1.0) <= mean["LabelSpreading pixels"]:
            misses.append(f"{name}, {b} per class: +PRE+SEMI {mean.get('+PRE+SEMI', float('nan')):.1f} is not above"
                          f" LabelSpreading {mean['LabelSpreading pixels']:.1f}")
        if mean.get("+PRE", -1.0) <= mean.get("plain", 0.0):
            misses.append(f"{name}, {b} per class: +PRE {mean.get('+PRE', float('nan')):.1f} is not above plain"
                          f" {mean.get('plain', float('nan')):.1f}")
    n = max(len(v) for v in results.values())
    lines += ["", f"test accuracy (%), mean ± std over {n} seeds (the same balanced labeled sets for every column)"]
    return "\n".join(lines), misses


def main() -> None:
    """Parse arguments, run every dataset, print the tables and the targets."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=["mnist5k", "digits"])
    ap.add_argument("--out", type=Path, default=Path("runs-bench"), help="run directory root (reused when rerun)")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    misses: list[str] = []
    for name in args.datasets:
        manifest = ROOT / "manifests" / f"{name}-low.yaml"
        print(f"== {name}: {manifest.relative_to(ROOT)}", flush=True)
        text, miss = table(name, run(manifest, args.out))
        print(text, flush=True)
        misses += miss
    print("\ntargets: " + ("all met" if not misses else f"{len(misses)} missed"))
    for line in misses:
        print(f"  missed: {line}")


if __name__ == "__main__":
    main()
