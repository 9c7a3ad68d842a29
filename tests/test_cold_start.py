"""Cold start: active.initial_strategy picks the cycle-0 set with TypiClust or ProbCover, shared by the variants."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from alctl.config import identity
from alctl import config as mf
from alctl import plan
from alctl.console import silent
from alctl.engine import commands
from alctl.engine.steps import pixel_features
from alctl.engine.workspace import dataset_for
from alctl.strategies.base import StrategyParams
from alctl.strategies.registry import cold_start
from alctl.strategies.coverage import typiclust_select, probcover_select
from alctl.strategies.base import PoolView

PRE = {"pretrain": {"epochs": 2, "clusters_per_class": 2, "batch_size": 64}}


def _initial(path: Path) -> dict[str, np.ndarray]:
    """The cycle-0 positions of every task of a run, by task key."""
    m = mf.load(path)
    out = {}
    for t in mf.tasks(m):
        pool = pq.read_table(mf.run_dir(m) / "tasks" / t.key / "pool.parquet").to_pydict()
        out[t.key] = np.flatnonzero(np.asarray(pool["labeled_cycle"]) == 0)
    return out


def _params(delta: float = 0.75) -> StrategyParams:
    from alctl.engine import settings

    m = mf.Manifest.model_validate({"dataset": {"name": "digits"}, "active": {"probcover": {"delta": delta}}})
    return settings.strategy_params(m)


def test_cold_start_is_the_strategy_with_nothing_labeled() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    every = np.arange(300)
    view = PoolView(probs=None, features=x, labeled=np.zeros(0, np.int64), unlabeled=every,
                    labels=np.zeros(0, np.int64), num_classes=0, cycle=0)
    params = _params(0.9)
    for name, fn in (("typiclust", typiclust_select), ("probcover", probcover_select)):
        got = cold_start(name, torch.from_numpy(x), 12, np.random.default_rng(5), params, 0)
        want = fn(view, 12, np.random.default_rng(5), params).chosen
        assert np.array_equal(got, want), name
        assert len(np.unique(got)) == 12
    with pytest.raises(ValueError, match="cannot pick an initial set"):
        cold_start("uncertainty", x, 3, rng, params, 0)


def test_probcover_cold_start_covers_every_blob_once() -> None:
    """Five tight, far-apart blobs: with a radius that spans a blob, five picks take one image of each blob."""
    rng = np.random.default_rng(1)
    centres = np.eye(5, 16) * 3
    x = np.concatenate([c + 0.01 * rng.normal(size=(40, 16)) for c in centres])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    picks = cold_start("probcover", x.astype(np.float32), 5, rng, _params(0.3), 5)
    assert sorted(np.asarray(picks) // 40) == [0, 1, 2, 3, 4]


def test_typiclust_cold_start_picks_shared_by_every_variant(write_manifest) -> None:
    path = write_manifest({
        "active": {"initial_strategy": "typiclust", "initial_features": "pixels", "cycles": 2, "initial": 12},
        "sweep": {"semi.method": ["none", "label-propagation"], "active.strategy": ["random", "margin"]},
        "semi": {"k": 10, "phase2_epochs": 1}, "train": {"epochs": 2},
    })
    commands.cycle_command(path, None, None, silent())
    init = _initial(path)
    by_rep: dict[str, list[np.ndarray]] = {}
    for key, pos in init.items():
        assert len(pos) == 12
        by_rep.setdefault(key.rsplit("rep=", 1)[1], []).append(pos)
    assert set(by_rep) == {"0", "1"}
    for sets in by_rep.values():
        assert all(np.array_equal(s, sets[0]) for s in sets)
    assert not np.array_equal(by_rep["0"][0], by_rep["1"][0])  # repetitions differ
    # the set is TypiClust's on the pixels, seeded as the balanced random set is
    m = mf.load(path)
    task = mf.tasks(m)[0]
    ds = dataset_for(task.config)
    from alctl import runtime

    want = cold_start("typiclust", pixel_features(ds.train_images), 12, runtime.rng(m.seed, 0, 0, "initial"),
                      _params(), 10)
    assert np.array_equal(by_rep["0"][0], np.sort(want))


def test_encoder_cold_start_trains_the_encoder_once_for_plain_and_pre(write_manifest, workdir: Path) -> None:
    path = write_manifest({
        **PRE, "repetitions": 1,
        "active": {"initial_strategy": "probcover", "cycles": 1, "initial": 10, "probcover": {"delta": 0.6}},
        "train": {"epochs": 2}, "sweep": {"pretrain.method": ["none", "deepcluster"]},
    })
    m = mf.load(path)
    assert all(mf.uses_encoder(t.config) for t in mf.tasks(m))
    cost = plan.run_cost(m)
    assert cost is not None and len(cost.pretrains) == 1  # one encoder for both variants
    commands.cycle_command(path, None, None, silent())
    encoders = list((workdir / "runs" / "tiny" / "pretrain").glob("*[!t].pt"))
    assert len(encoders) == 1
    a, b = _initial(path).values()
    assert len(a) == 10 and np.array_equal(a, b)
    # plain still trains from scratch: its cycle-0 accuracy differs from +PRE's on the same labels
    rows = {t.key: pq.read_table(mf.run_dir(m) / "tasks" / t.key / "metrics.parquet").to_pylist()[0]
            for t in mf.tasks(m)}
    plain = next(r for k, r in rows.items() if "pretrain=none" in k)
    assert plain["variant"] == "plain" and plain["seconds_pretrain"] > 0  # the cold start trained the encoder


def test_default_initial_strategy_is_no_part_of_a_tasks_identity(write_manifest) -> None:
    base = mf.load(write_manifest())
    typi = mf.load(write_manifest({"active": {"initial_strategy": "typiclust"}}, name="t.yaml"))
    pix = mf.load(write_manifest({"active": {"initial_features": "pixels"}}, name="p.yaml"))
    assert not any(p.startswith("active.initial_") for p in identity.task_fields(base))
    assert identity.task_fields(typi).items() - identity.task_fields(base).items() == {
        ("active.initial_strategy", "typiclust")}
    assert identity.task_fields(pix).items() - identity.task_fields(base).items() == {
        ("active.initial_features", "pixels")}


def test_bad_initial_strategy_is_a_one_line_error(write_manifest) -> None:
    from typer.testing import CliRunner

    from alctl.cli import app

    path = write_manifest({"active": {"initial_strategy": "badge"}})
    res = CliRunner().invoke(app, ["validate", str(path)])
    assert res.exit_code == 2 and "initial_strategy" in res.output


def test_random_initial_sets_read_no_label_and_balanced_ones_one_per_class(write_manifest) -> None:
    from alctl.engine.tables import new_pool
    from alctl.engine.workspace import dataset_for

    cfg = mf.load(write_manifest({"active": {"initial": 10, "initial_strategy": "random"}}))
    ds = dataset_for(cfg)
    first = new_pool(cfg, 0, ds).labeled_at(0)
    shuffled = ds.train_labels.clone()
    shuffled[:] = shuffled[torch.randperm(len(shuffled), generator=torch.Generator().manual_seed(1))]
    blind = new_pool(cfg, 0, dataclasses.replace(ds, train_labels=shuffled)).labeled_at(0)
    assert first.tolist() == blind.tolist() and len(first) == 10  # the labels do not move a random draw
    balanced = mf.load(write_manifest({"active": {"initial": 10, "initial_strategy": "balanced"}}, name="b.yaml"))
    picked = new_pool(balanced, 0, ds).labeled_at(0)
    assert sorted(ds.train_labels.numpy()[picked].tolist()) == list(range(10))  # one per class
    auto = mf.load(write_manifest({"active": {"initial": 10}}, name="a.yaml"))
    assert mf.initial_strategy(auto.active) == "balanced"
    assert new_pool(auto, 0, ds).labeled_at(0).tolist() == picked.tolist()
    human = mf.parse({"active": {"oracle": "human"}})
    assert mf.initial_strategy(human.active) == "random"


def test_a_balanced_initial_set_with_a_human_oracle_is_refused_in_one_line(write_manifest) -> None:
    from typer.testing import CliRunner

    from alctl.cli import app

    path = write_manifest({"active": {"oracle": "human", "initial_strategy": "balanced"}})
    res = CliRunner().invoke(app, ["validate", str(path)])
    assert res.exit_code == 2
    assert "active.initial_strategy: balanced draws the same number of images per class from the true labels" \
        in res.output and len(res.output.strip().splitlines()) == 1
