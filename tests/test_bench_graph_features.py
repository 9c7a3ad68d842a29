"""benchmarks/bench_graph_features.py: the pseudo-label accuracy it prints is label propagation's."""

from __future__ import annotations

import numpy as np

from alctl import propagate
from tests.checks import load_benchmark


def test_pseudo_accuracy_is_the_propagations_on_the_unlabeled_rows() -> None:
    bench = load_benchmark("bench_graph_features")
    rng = np.random.default_rng(0)
    centres = np.eye(3, 8, dtype=np.float32) * 4
    truth = np.repeat(np.arange(3), 40)
    x = centres[truth] + rng.normal(size=(120, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    spec = propagate.GraphSpec(k=5, gamma=3.0, alpha=0.99, tol=1e-6, max_iter=50, knn="exact")
    sets = [np.array([0, 40, 80]), np.array([1, 41, 81])]
    want = []
    for labeled in sets:
        prop = propagate.label_propagation(x, labeled, truth[labeled], 3, spec, "max")
        rest = np.setdiff1d(np.arange(120), labeled)
        want.append(100 * np.mean(prop.labels[rest] == truth[rest]))
    assert bench.pseudo_accuracy(x, truth, sets, spec) == np.mean(want) > 90  # well-separated clusters
    noise = rng.normal(size=(120, 8)).astype(np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    assert bench.pseudo_accuracy(noise, truth, sets, spec) < 60  # features that carry no class
