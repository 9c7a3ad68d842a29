"""Smoke test of benchmarks/bench_badge_typiclust.py at a tiny size: the references pick what alctl picks."""

from __future__ import annotations

import sys
from types import ModuleType

import numpy as np
import pytest

from alctl.strategies.coverage import typiclust_pick
from tests.checks import load_benchmark

TINY = {"n": 600, "dim": 16, "classes": 10, "labeled": 50, "budget": 40}


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    """The benchmark script, imported from its path (benchmarks/ is not a package)."""
    return load_benchmark("bench_badge_typiclust")


@pytest.mark.parametrize("seed", [0, 1])
def test_references_pick_what_alctl_picks(bench: ModuleType, seed: int) -> None:
    """BADGE and TypiClust (one round, and several rounds with fewer clusters than the budget) agree exactly."""
    b = TINY["budget"]
    pool = bench.make_pool(TINY["n"], TINY["dim"], TINY["classes"], TINY["labeled"], seed)
    feats, lab, unl = pool["features"], pool["labeled"], pool["unlabeled"]
    badge = bench.alctl_badge(pool, b, seed)
    assert badge.shape == (b,) and np.unique(badge).size == b and np.isin(badge, unl).all()
    np.testing.assert_array_equal(badge, bench.reference_badge(feats, pool["probs"], unl, b, seed))
    clusters = bench.kmeans_clusters(feats, lab, unl, b, seed)
    for cl in (clusters, clusters % 7):  # 7 clusters < budget: extra rounds
        picks, typ = typiclust_pick(feats, cl, lab, unl, b)
        ref_picks, ref_typ = bench.reference_typiclust_pick(feats, cl, lab, unl, b)
        np.testing.assert_array_equal(picks, ref_picks)
        np.testing.assert_allclose(typ, ref_typ, rtol=1e-12, atol=0)
    end_to_end = bench.alctl_typiclust(pool, b, seed)
    np.testing.assert_array_equal(end_to_end, bench.reference_typiclust_pick(feats, clusters, lab, unl, b)[0])


def test_main_reports_identical_picks(bench: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    """The whole benchmark (its methods in this process) runs and prints identical picks three times."""
    argv = [f"--{k}={v}" for k, v in TINY.items()] + ["--repeat=1", "--in-process"]
    bench.main(argv)
    out = capsys.readouterr().out
    assert out.count("picks identical: yes") == 3
    assert "same clusters in the reference's end-to-end run: yes" in out
