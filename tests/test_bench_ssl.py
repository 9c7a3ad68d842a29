"""benchmarks/bench_ssl.py: both objectives train the recipe's network on the pool and report the probe."""

from __future__ import annotations

import pytest

from tests.checks import load_benchmark


@pytest.mark.parametrize("objective", ["simclr", "byol"])
def test_one_epoch_of_each_objective_reports_the_probe_and_nmi(objective: str) -> None:
    bench = load_benchmark("bench_ssl")
    state, seconds = bench.run("digits", objective, 0.99, 1.0, epochs=1)
    (epoch,) = state.history
    assert state.epoch == 1 and seconds > 0
    assert 0.1 < epoch.knn_accuracy <= 1 and 0 <= epoch.nmi_labels <= 1  # 10 classes: above chance
