"""Smoke test of benchmarks/bench_train.py at a tiny size: both loops train on the same batches and report figures."""

from __future__ import annotations

import argparse
from types import ModuleType

import numpy as np
import pytest
import torch

from tests.checks import load_benchmark


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    """The benchmark script, imported from its path (benchmarks/ is not a package)."""
    return load_benchmark("bench_train")


def _args(**over: object) -> argparse.Namespace:
    base = {"n": 160, "width": 0.0625, "batch": 32, "labeled_per_batch": 12, "labeled": 20, "precision": "auto",
            "channels_last": "auto", "compile": False, "workers": 0, "k": 5, "translate": 2, "eval_batch": 64,
            "seed": 0, "jobs_steps": None}
    base.update(over)
    return argparse.Namespace(**base)


def test_both_loops_train_on_the_same_batches(bench: ModuleType) -> None:
    from alctl.train import _mixed_batches

    args = _args()
    pool = bench.make_pool(args.n, args.labeled, 0)
    targets = bench.make_targets(pool)
    assert pool["images"].shape == (160, 3, 32, 32) and pool["images"].dtype == np.uint8
    ref = bench.reference_batches(targets, args, 7, None)
    ours = _mixed_batches(20, 140, 32, 12, None, torch.Generator().manual_seed(7))
    pos = np.concatenate([targets.labeled_pos, targets.pseudo_pos])
    assert ref == [pos[b.numpy()].tolist() for b in ours]
    assert bench.epoch_images(140, args) == sum(len(b) for b in ref) == 140 + 7 * 12


def test_each_loop_reports_its_figures_on_the_cpu(bench: ModuleType) -> None:
    args = _args()
    cpu = torch.device("cpu")
    ours = bench.run_alctl(args, cpu)
    ref = bench.run_reference(args, cpu)
    assert ours["train_images"] == ref["train_images"] == bench.epoch_images(140, args)
    assert ours["compute"] == {"precision": "fp32", "channels_last": False, "compile": False}  # CPU default
    for r in (ours, ref):
        assert r["train_s"] > 0 and r["feature_s"] > 0 and r["peak_mib"] > 0 and r["knn_shape"] == [160, 5]
    train_flops, eval_flops = ours["flops"]
    assert train_flops > 2 * eval_flops > 0
