"""The cost of a run before it starts (alctl/plan.py): counts follow the batching of alctl/train/loop.py exactly."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch

from alctl import config as mf
from alctl import plan, train
from alctl.engine import settings

from tests.conftest import TINY, deep_update


def config(extra: dict[str, Any] | None = None) -> mf.Manifest:
    """The tiny digits manifest of conftest with overrides, validated."""
    return mf.parse(deep_update(TINY, extra or {}))


SEMI: dict[str, Any] = {
    "train": {"epochs": 4},
    "semi": {"method": "label-propagation", "phase2_epochs": 10, "every": 3, "batch_size": 64,
             "labeled_per_batch": 16, "k": 5},
}


def simulate_cycle(m: mf.Manifest, cycle: int, pool: int, pseudo: int | None = None) -> tuple[int, int, int]:
    """(steps, training images, propagations) of one cycle as `train.fit` batches it, without a model: the epoch
    loop of fit, with semi.refresh answering `pseudo` pseudo-labels (default: what semi.selection keeps)."""
    a, t, s = m.active, m.train, m.semi
    n_l = min(a.initial + a.budget * cycle, pool)
    spec = settings.train_spec(t)
    labels_only = train.Targets(labeled_pos=np.arange(n_l), labeled_y=np.zeros(n_l, dtype=np.int64))
    if pseudo is None:
        unlabeled = pool - n_l
        pseudo = unlabeled if s.selection == "all" else int(round(s.fraction * unlabeled))
    with_pseudo = train.Targets(
        labeled_pos=np.arange(n_l), labeled_y=np.zeros(n_l, dtype=np.int64),
        pseudo_pos=np.arange(n_l, n_l + pseudo), pseudo_y=np.zeros(pseudo, dtype=np.int64),
        pseudo_w=np.ones(pseudo, dtype=np.float32),
    )
    semi = settings.semi_spec(m, lambda epoch: with_pseudo) if s.method != "none" else None
    targets = with_pseudo if semi is None and a.strategy == "ceal" and cycle > 0 else labels_only
    generator = torch.Generator().manual_seed(0)
    steps = images = propagations = 0
    for epoch in range(train.total_epochs(spec, semi)):
        if semi is not None and semi.due(epoch, spec.epochs):
            targets = semi.refresh(epoch)
            propagations += 1
        batches = train._epoch_batches(targets, spec, semi, generator)
        steps += len(batches)
        images += sum(len(b) for b in batches)
    return steps, images, propagations


# ---------------------------------------------------------------- one epoch


@pytest.mark.parametrize("n", [1, 5, 16, 17, 33, 100])
@pytest.mark.parametrize("batch_size", [1, 16, 32])
@pytest.mark.parametrize("min_steps", [0, 3, 10])
def test_plain_steps_match_the_plain_batches_of_training(n: int, batch_size: int, min_steps: int) -> None:
    t = mf.TrainConfig(batch_size=batch_size, min_steps=min_steps)
    batches = train._plain_batches(n, settings.train_spec(t), torch.Generator().manual_seed(0))
    assert plan._plain_steps(n, t) == (len(batches), sum(len(b) for b in batches))


@pytest.mark.parametrize("n_p", [1, 47, 48, 49, 500])
@pytest.mark.parametrize("unlabeled_per_epoch", [None, 10, 48, 1000])
@pytest.mark.parametrize(("batch_size", "labeled_per_batch"), [(64, 16), (128, 50), (3, 1)])
@pytest.mark.parametrize("n_l", [7, 100])
def test_mixed_steps_match_the_mixed_batches_of_training(n_p: int, unlabeled_per_epoch: int | None, batch_size: int,
                                                         labeled_per_batch: int, n_l: int) -> None:
    s = mf.SemiConfig(batch_size=batch_size, labeled_per_batch=labeled_per_batch,
                      unlabeled_per_epoch=unlabeled_per_epoch)
    batches = train._mixed_batches(n_l, n_p, batch_size, labeled_per_batch, unlabeled_per_epoch,
                                   torch.Generator().manual_seed(0))
    assert plan._mixed_steps(n_p, s) == (len(batches), sum(len(b) for b in batches))


# ---------------------------------------------------------------- one cycle


def test_plain_cycle_counts_epochs_of_plain_steps_the_test_split_and_no_features() -> None:
    m = config()  # digits, 10 epochs of batch 16 with min_steps 5; initial 10 + budget 10 x 2; random
    costs = [plan.cycle_cost(m, c, 1397, 400) for c in range(3)]
    assert [c.labels for c in costs] == [10, 20, 30]
    assert [c.steps for c in costs] == [50, 50, 50]  # 5 steps an epoch (min_steps) x 10 epochs
    assert [c.train for c in costs] == [500, 800, 800]  # batches of min(16, n_l) images
    assert [(c.features, c.evaluate, c.propagations) for c in costs] == [(0, 400, 0)] * 3
    for c in range(3):
        assert (costs[c].steps, costs[c].train, 0) == simulate_cycle(m, c, 1397)


@pytest.mark.parametrize("strategy", ["random", "uncertainty", "coreset", "jlp", "ceal"])
def test_a_selection_that_reads_the_model_passes_over_the_pool_except_at_the_last_cycle(strategy: str) -> None:
    m = config({"active": {"strategy": strategy}})
    features = [plan.cycle_cost(m, c, 1397, 400).features for c in range(3)]
    assert features == ([0, 0, 0] if strategy == "random" else [1397, 1397, 0])


@pytest.mark.parametrize("labels", [10, 100])  # fewer labeled images than a batch, and more
def test_ceal_counts_a_batch_of_pseudo_labeled_images_per_step_after_cycle_0(labels: int) -> None:
    m = config({"active": {"strategy": "ceal", "initial": labels, "budget": labels}})
    plain = config({"active": {"initial": labels, "budget": labels}})
    for c in range(3):
        cost, base = plan.cycle_cost(m, c, 1397, 400), plan.cycle_cost(plain, c, 1397, 400)
        assert cost.steps == base.steps
        assert cost.train == base.train + (0 if c == 0 else base.steps * m.train.batch_size)
        assert (cost.steps, cost.train, 0) == simulate_cycle(m, c, 1397, pseudo=50)  # with some pseudo-labels


def test_ceal_cap_0_trains_on_labels_alone_and_other_ceal_options_leave_the_plan_alone() -> None:
    plain = config({"active": {"strategy": "uncertainty"}})
    ceal = config({"active": {"strategy": "ceal"}})
    none = config({"active": {"strategy": "ceal", "ceal": {"cap": 0}}})
    other = config({"active": {"strategy": "ceal", "ceal": {"cap": 0.5, "balanced": True, "weight": 0.5}}})
    for c in range(3):
        assert plan.cycle_cost(none, c, 1397, 400) == plan.cycle_cost(plain, c, 1397, 400)
        assert plan.cycle_cost(other, c, 1397, 400) == plan.cycle_cost(ceal, c, 1397, 400)
        assert (plan.cycle_cost(none, c, 1397, 400).steps, plan.cycle_cost(none, c, 1397, 400).train, 0) == \
            simulate_cycle(plain, c, 1397)


@pytest.mark.parametrize("strategy", ["random", "coreset"])
def test_semi_phase2_propagates_every_few_epochs_over_the_pool(strategy: str) -> None:
    m = config(deep_update(SEMI, {"active": {"strategy": strategy}}))
    pool = 1397
    for c in range(3):
        cost = plan.cycle_cost(m, c, pool, 400)
        assert cost.propagations == math.ceil(10 / 3) == 4  # phase-2 epochs 0, 3, 6, 9
        selection = pool if strategy == "coreset" and c < 2 else 0
        assert cost.features == 4 * pool + selection
        assert (cost.steps, cost.train, cost.propagations) == simulate_cycle(m, c, pool)


@pytest.mark.parametrize("semi", [
    {"phase2_epochs": 10, "every": 3},
    {"phase2_epochs": 10, "every": 1, "selection": "all"},
    {"phase2_epochs": 0, "warmup": 2, "every": 2},
    {"phase2_epochs": 0, "warmup": 0, "every": 5},
    {"phase2_epochs": 0, "warmup": 4, "every": 1},  # warmup = epochs: never mixed, never propagated
    {"phase2_epochs": 5, "unlabeled_per_epoch": 100},  # fewer than the pseudo-labels
    {"phase2_epochs": 5, "unlabeled_per_epoch": 5000},  # more than the pseudo-labels
    {"phase2_epochs": 5, "fraction": 0.1, "batch_size": 10, "labeled_per_batch": 9},
])
def test_semi_cycle_matches_the_epochs_of_training(semi: dict[str, Any]) -> None:
    m = config(deep_update(SEMI, {"semi": semi}))
    for c in range(3):
        cost = plan.cycle_cost(m, c, 300, 50)
        assert (cost.steps, cost.train, cost.propagations) == simulate_cycle(m, c, 300)


@pytest.mark.parametrize("semi", [{"phase2_epochs": 10}, {"phase2_epochs": 0, "warmup": 2},
                                  {"phase2_epochs": 5, "unlabeled_per_epoch": 100}])
def test_fixmatch_cycle_matches_training_and_counts_both_views(semi: dict[str, Any]) -> None:
    m = config(deep_update(SEMI, {"semi": {**semi, "method": "fixmatch"}}))
    pool = 300
    for c in range(3):
        cost = plan.cycle_cost(m, c, pool, 50)
        unlabeled = pool - m.active.initial - m.active.budget * c
        steps, images, _ = simulate_cycle(m, c, pool, pseudo=unlabeled)  # every unlabeled image, no graph
        s, t = m.semi, m.train
        mixed_epochs = t.epochs + s.phase2_epochs - (t.epochs if s.phase2_epochs else min(s.warmup, t.epochs))
        per_epoch = min(unlabeled, s.unlabeled_per_epoch or unlabeled)
        assert (cost.steps, cost.propagations) == (steps, 0)
        assert cost.train == images + mixed_epochs * per_epoch  # each unlabeled image once more, as its strong view
        assert cost.features >= pool  # the confident predictions over the pool


def test_semi_cycle_with_every_image_labeled_trains_on_plain_batches() -> None:
    """No unlabeled image left (initial + budget x selections = the pool): propagation finds no pseudo-label and
    training falls back to plain batches of the labels."""
    m = config(deep_update(SEMI, {"semi": {"selection": "all"}}))
    pool = 30  # labels 10, 20, 30
    cost = plan.cycle_cost(m, 2, pool, 50)
    assert cost.labels == pool
    assert (cost.steps, cost.train, cost.propagations) == simulate_cycle(m, 2, pool)


@pytest.mark.parametrize(("pretrain", "features"), [("none", "encoder"), ("deepcluster", "encoder"),
                                                     ("deepcluster", "encoder+pixels")])
def test_encoder_features_propagate_once_a_cycle_with_pre(pretrain: str, features: str) -> None:
    m = config(deep_update(SEMI, {"semi": {"features": features}, "pretrain": {"method": pretrain}}))
    pool = 1397
    costs = [plan.cycle_cost(m, c, pool, 400) for c in range(3)]
    if pretrain == "deepcluster":  # the encoder's features, once per task; fixed, so one propagation a cycle
        assert [(c.propagations, c.features) for c in costs] == [(1, pool), (1, 0), (1, 0)]
    else:  # without +PRE: the model's features, recomputed at every propagation
        assert [(c.propagations, c.features) for c in costs] == [(4, 4 * pool)] * 3


def test_pixel_features_propagate_once_a_cycle_without_a_pass_of_the_network() -> None:
    m = config(deep_update(SEMI, {"semi": {"features": "pixels"}, "active": {"strategy": "uncertainty"}}))
    costs = [plan.cycle_cost(m, c, 1397, 400) for c in range(3)]
    assert [(c.propagations, c.features) for c in costs] == [(1, 1397), (1, 1397), (1, 0)]  # the selection's only


# ---------------------------------------------------------------- tasks and runs


PRE: dict[str, Any] = {"pretrain": {"method": "deepcluster", "epochs": 2, "passes": 2, "batch_size": 64}}


def test_run_cost_counts_each_distinct_encoder_once() -> None:
    m = config(deep_update(PRE, {"sweep": {"active.strategy": ["random", "uncertainty"]}}))
    run = plan.run_cost(m)
    assert run is not None and len(run.tasks) == 4
    assert len(run.pretrains) == 1  # both strategies (and repetitions) share one encoder
    (key, p), = run.pretrains.items()
    assert {t.pretrain_key for t in run.tasks} == {key}
    assert (p.epochs, p.train, p.features) == (2, 2 * 1397 * 2, 2 * (1397 + 1397 + 400))
    assert p.steps == 2 * math.ceil(1397 * 2 / 64)
    assert run.train == sum(t.train for t in run.tasks) + p.train
    assert run.inference == sum(t.inference for t in run.tasks) + p.features
    assert 0 < run.pretrain_share < 1


def test_encoders_differ_by_their_settings_and_plain_tasks_need_none() -> None:
    run = plan.run_cost(config(deep_update(PRE, {"sweep": {"pretrain.epochs": [1, 2]}})))
    assert run is not None and len(run.pretrains) == 2
    assert sorted(p.epochs for p in run.pretrains.values()) == [1, 2]
    run = plan.run_cost(config(deep_update(PRE, {"sweep": {"pretrain.method": ["none", "deepcluster"]}})))
    assert run is not None and len(run.pretrains) == 1
    assert [t.pretrain_key is None for t in run.tasks] == [True, True, False, False]
    given = plan.run_cost(config({"pretrain": {"method": "deepcluster", "weights": "encoder.pt"}}))
    assert given is not None and given.pretrains == {} and given.pretrain_share == 0.0


def test_task_cost_sums_its_cycles() -> None:
    m = config(SEMI)
    run = plan.run_cost(m)
    assert run is not None
    t = run.tasks[0]
    cycles = [plan.cycle_cost(m, c, 1397, 400) for c in range(3)]
    assert t.cycles == cycles
    assert t.steps == sum(c.steps for c in cycles) and t.train == sum(c.train for c in cycles)
    assert t.inference == sum(c.features + c.evaluate for c in cycles)


def test_seconds_divide_training_and_forward_images_by_their_throughputs() -> None:
    assert plan.seconds(300, 900, 100) == pytest.approx(3 + 900 / 300)  # forward: 3x the training throughput
    assert plan.seconds(300, 900, 100, 450) == pytest.approx(3 + 2)
    assert plan.seconds(0, 0, 1) == 0
    for bad in (0, -1.5):
        with pytest.raises(ValueError, match="images_per_second must be > 0"):
            plan.seconds(1, 1, bad)


def test_estimate_is_the_longest_task_with_its_encoder_and_the_whole_run() -> None:
    m = config(deep_update(PRE, {"sweep": {"pretrain.method": ["none", "deepcluster"]}}))
    run = plan.run_cost(m)
    assert run is not None
    longest, total = plan.estimate(m, 50, 200)  # type: ignore[misc]
    p = next(iter(run.pretrains.values()))
    with_encoder = plan.seconds(run.tasks[2].train + p.train, run.tasks[2].inference + p.features, 50, 200)
    assert plan.task_seconds(run, 2, 50, 200) == pytest.approx(with_encoder)
    assert plan.task_seconds(run, 0, 50, 200) == pytest.approx(plan.seconds(run.tasks[0].train,
                                                                            run.tasks[0].inference, 50, 200))
    assert longest == pytest.approx(max(plan.task_seconds(run, i, 50, 200) for i in range(4)))
    assert total == pytest.approx(plan.seconds(run.train, run.inference, 50, 200))
    assert longest < total
    slower = plan.estimate(m, 25, 100)
    assert slower is not None and slower[0] == pytest.approx(2 * longest)


def test_image_folder_has_no_estimate() -> None:
    m = mf.parse({"dataset": {"name": "imagefolder", "pool": "pool", "image_size": 32, "classes": ["a", "b"]},
                  "active": {"oracle": "human"}})
    assert plan.sizes(m) is None
    assert plan.run_cost(m) is None
    assert plan.estimate(m, 100) is None
    assert plan.sizes(config()) == (1397, 400)


def test_a_sweep_that_reaches_an_image_folder_has_no_estimate() -> None:
    m = mf.parse({"dataset": {"pool": None}, "active": {"oracle": "human", "initial": 10, "budget": 10},
                  "sweep": {"dataset": [{"name": "digits"},
                                        {"name": "imagefolder", "pool": "pool", "image_size": 32, "classes": ["a", "b"]}]}})
    assert len(mf.tasks(m)) == 2 * m.repetitions
    assert plan.run_cost(m) is None and plan.estimate(m, 100) is None


@pytest.mark.parametrize(("strategy", "base"), [("bald", "bald"), ("power", "bald"), ("power", "margin")])
def test_mc_dropout_passes_count_over_the_unlabeled_images(strategy: str, base: str) -> None:
    m = config({"active": {"strategy": strategy, "power": {"base": base}, "bald": {"passes": 7}}})
    pool = 1397
    for c in range(3):
        n_u = pool - (m.active.initial + m.active.budget * c)
        want = 0 if c == 2 else (7 * n_u if base == "bald" else pool)
        assert plan.cycle_cost(m, c, pool, 400).features == want


def test_a_long_tailed_pool_is_counted_at_its_cut_size() -> None:
    m = mf.parse({"dataset": {"name": "mnist5k", "imbalance": {"ratio": 50}}})
    assert plan.sizes(m) == (1120, 1000)  # 400 images of digit 0 down to 8 of digit 9, as dataset_for cuts it
    assert plan.sizes(mf.parse({"dataset": {"name": "mnist5k"}})) == (4000, 1000)
