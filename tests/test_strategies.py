"""Acquisition functions: known answers on hand-made pools, coreset against the authors' O(N^2) greedy (both
the numpy and the torch path), the registry and the contract every strategy keeps (the strategies added for
issue 19 have their own references in test_strategy_zoo.py)."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
import torch
from scipy.spatial import distance_matrix

from alctl.propagate import GraphSpec
from alctl.strategies import (
    NAMES,
    PoolView,
    Selection,
    StrategyParams,
    entropy,
    get_strategy,
    kcenter_greedy,
    needs,
    select,
)
from alctl.strategies import geometry as geo
from alctl.strategies.registry import NEED_KINDS, POWER_BASES
from alctl.strategies.params import CealParams, ProbCoverParams
from alctl.strategies.scores import ceal_keep, ceal_limit

# The manifest's defaults, written out: the strategies have none of their own.
GRAPH = GraphSpec(k=50, gamma=3.0, alpha=0.99, tol=1e-6, max_iter=20, knn="exact")
PARAMS = StrategyParams(graph=GRAPH, sections={"ceal": CealParams(cap=None, balanced=False)})  # the paper's CEAL


def _normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make_view(n: int = 60, n_labeled: int = 10, num_classes: int = 4, dim: int = 8, seed: int = 0, cycle: int = 0,
              passes: int = 5) -> PoolView:
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n).astype(np.int64)
    labeled, unlabeled = np.sort(perm[:n_labeled]), np.sort(perm[n_labeled:])
    logits = rng.normal(size=(unlabeled.shape[0], num_classes)) * 3
    mc_logits = logits[None] + rng.normal(size=(passes, unlabeled.shape[0], num_classes))
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs = (probs / probs.sum(1, keepdims=True)).astype(np.float32)
    mc_probs = np.exp(mc_logits - mc_logits.max(2, keepdims=True))
    mc_probs = (mc_probs / mc_probs.sum(2, keepdims=True)).astype(np.float32)
    return PoolView(
        mc_probs=mc_probs,
        probs=probs,
        features=_normalise(rng.normal(size=(n, dim))),
        labeled=labeled,
        unlabeled=unlabeled,
        labels=rng.integers(0, num_classes, n_labeled).astype(np.int64),
        num_classes=num_classes,
        cycle=cycle,
    )


def naive_kcenter(features: np.ndarray, labeled: np.ndarray, unlabeled: np.ndarray, budget: int) -> list[int]:
    """Greedy k-center as the authors' code does it: a full distance matrix, then one column per pick."""
    x = features[unlabeled]
    if len(labeled):
        min_d = distance_matrix(x, features[labeled]).min(axis=1)
        picks = []
    else:  # same documented start as kcenter_greedy: farthest from the candidates' mean
        first = int(np.argmax(distance_matrix(x, x.astype(np.float64).mean(0, keepdims=True)).ravel()))
        min_d = distance_matrix(x, x[first : first + 1]).ravel()
        picks = [first]
    for _ in range(budget - len(picks)):
        i = int(np.argmax(min_d))
        picks.append(i)
        min_d = np.minimum(min_d, distance_matrix(x, x[i : i + 1]).ravel())
    return [int(unlabeled[i]) for i in picks]


# --------------------------------------------------------------------------- entropy


def test_entropy_uniform_is_log_c_and_one_hot_is_zero():
    for c in (2, 10, 100):
        assert entropy(np.full((3, c), 1.0 / c, dtype=np.float32)) == pytest.approx([math.log(c)] * 3, rel=1e-6)
    one_hot = np.eye(5, dtype=np.float32)
    h = entropy(one_hot)
    assert np.all(np.isfinite(h)) and np.all(h == 0.0)
    assert entropy(np.array([[0.5, 0.5, 0.0]])) == pytest.approx([math.log(2)])


# --------------------------------------------------------------------------- uncertainty


def test_uncertainty_picks_most_uncertain_rows_in_order():
    probs = np.array(
        [
            [1.0, 0.0, 0.0],  # H = 0
            [1 / 3, 1 / 3, 1 / 3],  # log 3 = 1.0986  (most uncertain)
            [0.5, 0.5, 0.0],  # 0.693
            [0.8, 0.1, 0.1],  # 0.639
            [0.4, 0.4, 0.2],  # 1.055  (second)
        ],
        dtype=np.float32,
    )
    unlabeled = np.array([10, 3, 7, 0, 5], dtype=np.int64)
    view = PoolView(probs, _normalise(np.ones((11, 2))), np.array([1, 2], dtype=np.int64), unlabeled,
                    np.array([0, 1], dtype=np.int64), 3, 0)
    sel = select("uncertainty", view, 3, np.random.default_rng(0), PARAMS)
    assert sel.chosen.tolist() == [3, 5, 7]
    assert sel.scores.dtype == np.float32 and sel.scores.shape == (5,)
    assert sel.scores[1] == pytest.approx(math.log(3), rel=1e-6)
    assert sel.pseudo_positions.size == 0 and sel.pseudo_labels.size == 0


def test_uncertainty_ties_broken_by_position():
    probs = np.full((4, 2), 0.5, dtype=np.float32)
    view = PoolView(probs, np.zeros((10, 2), np.float32), np.zeros(0, np.int64),
                    np.array([9, 4, 6, 2], dtype=np.int64), np.zeros(0, np.int64), 2, 0)
    assert select("uncertainty", view, 3, np.random.default_rng(0), PARAMS).chosen.tolist() == [2, 4, 6]


# --------------------------------------------------------------------------- random


def test_random_is_seeded_and_consistent_with_scores():
    view = make_view(n=200, n_labeled=50)
    a = select("random", view, 20, np.random.default_rng(7), PARAMS)
    b = select("random", view, 20, np.random.default_rng(7), PARAMS)
    c = select("random", view, 20, np.random.default_rng(8), PARAMS)
    assert np.array_equal(a.chosen, b.chosen) and np.array_equal(a.scores, b.scores)
    assert not np.array_equal(a.chosen, c.chosen)
    assert not np.isin(a.chosen, view.labeled).any()
    # chosen = the top-b scores, highest first
    order = np.argsort(-a.scores, kind="stable")[:20]
    assert a.chosen.tolist() == view.unlabeled[order].tolist()


def test_random_is_uniform_over_unlabeled():
    view = make_view(n=30, n_labeled=10)
    counts = np.zeros(30, dtype=np.int64)
    rng = np.random.default_rng(123)
    trials = 4000
    for _ in range(trials):
        counts[get_strategy("random")(view, 5, rng, PARAMS).chosen] += 1
    assert counts[view.labeled].sum() == 0
    expected = trials * 5 / 20
    u = counts[view.unlabeled]
    chi2 = float(((u - expected) ** 2 / expected).sum())
    assert chi2 < 45.3  # chi-square, 19 degrees of freedom, p = 0.001


# --------------------------------------------------------------------------- coreset


@pytest.mark.parametrize("seed,n_labeled", [(0, 20), (1, 1), (2, 150)])
def test_coreset_matches_naive_greedy_kcenter(seed, n_labeled):
    view = make_view(n=300, n_labeled=n_labeled, dim=16, seed=seed)
    budget = 40
    sel = select("coreset", view, budget, np.random.default_rng(0), PARAMS)
    assert sel.chosen.tolist() == naive_kcenter(view.features, view.labeled, view.unlabeled, budget)


@pytest.mark.parametrize("max_pops", [0, 2, None])
@pytest.mark.parametrize("dim", [2, 16])
def test_coreset_lazy_and_full_updates_match_naive(monkeypatch, max_pops, dim):
    # max_pops=0 switches to one full update per pick at once, 2 part-way, None (default rule) stays lazy
    monkeypatch.setattr(geo, "_LAZY_MAX_POPS", max_pops)
    for n_labeled in (0, 15):
        view = make_view(n=300, n_labeled=n_labeled, dim=dim, seed=dim + n_labeled)
        if dim == 2:  # normalised 2-D points all sit on the circle, as far from their mean: use the plane
            feats = np.random.default_rng(dim).normal(size=(300, 2)).astype(np.float32)
            view = dataclasses.replace(view, features=feats)
        sel = select("coreset", view, 60, np.random.default_rng(0), PARAMS)
        assert sel.chosen.tolist() == naive_kcenter(view.features, view.labeled, view.unlabeled, 60)
        order = np.argsort(-sel.scores.astype(np.float64), kind="stable")
        assert view.unlabeled[order[:60]].tolist() == sel.chosen.tolist()


def test_coreset_matches_naive_without_labeled_set():
    view = make_view(n=200, n_labeled=0, dim=16, seed=3)
    sel = select("coreset", view, 25, np.random.default_rng(0), PARAMS)
    assert sel.chosen.tolist() == naive_kcenter(view.features, view.labeled, view.unlabeled, 25)
    x = view.features[view.unlabeled].astype(np.float64)
    assert sel.chosen[0] == view.unlabeled[np.argmax(np.linalg.norm(x - x.mean(0), axis=1))]
    assert sel.scores[np.searchsorted(view.unlabeled, sel.chosen[0])] == np.inf
    assert np.isfinite(np.delete(sel.scores, np.searchsorted(view.unlabeled, sel.chosen[0]))).all()
    # budget 0: every score is the distance to the mean
    zero = select("coreset", view, 0, np.random.default_rng(0), PARAMS)
    assert zero.chosen.size == 0
    assert zero.scores == pytest.approx(np.linalg.norm(x - x.mean(0), axis=1), rel=1e-6)


def test_coreset_scores_replay_the_picks():
    view = make_view(n=300, n_labeled=30, dim=16, seed=4)
    sel = select("coreset", view, 25, np.random.default_rng(0), PARAMS)
    order = np.argsort(-sel.scores.astype(np.float64), kind="stable")
    assert view.unlabeled[order[:25]].tolist() == sel.chosen.tolist()
    # a leftover's score is its distance to the nearest labeled-or-picked image
    centers = view.features[np.concatenate([view.labeled, sel.chosen])]
    rest = np.setdiff1d(view.unlabeled, sel.chosen)
    expected = distance_matrix(view.features[rest], centers).min(1)
    got = sel.scores[np.searchsorted(view.unlabeled, rest)]
    assert got == pytest.approx(expected, abs=1e-5)


def test_coreset_prefers_unlabeled_clusters():
    rng = np.random.default_rng(5)
    n_clusters, per, dim = 6, 40, 16
    centers = _normalise(rng.normal(size=(n_clusters, dim)))
    feats = _normalise(np.repeat(centers, per, axis=0) + 0.03 * rng.normal(size=(n_clusters * per, dim)))
    cluster = np.repeat(np.arange(n_clusters), per)
    labeled = np.concatenate([np.flatnonzero(cluster == c)[:5] for c in range(3)]).astype(np.int64)
    unlabeled = np.setdiff1d(np.arange(n_clusters * per), labeled).astype(np.int64)
    view = PoolView(np.full((unlabeled.size, 3), 1 / 3, np.float32), feats, labeled, unlabeled,
                    np.zeros(labeled.size, np.int64), 3, 1)
    sel = select("coreset", view, 3, np.random.default_rng(0), PARAMS)
    assert sorted(cluster[sel.chosen].tolist()) == [3, 4, 5]


def test_kcenter_memory_is_linear_in_the_pool():
    rng = np.random.default_rng(6)
    n, dim, n_l = 12000, 8, 6000
    feats = _normalise(rng.normal(size=(n, dim)))
    labeled = np.arange(n_l, dtype=np.int64)
    unlabeled = np.arange(n_l, n, dtype=np.int64)
    tracemalloc.start()
    try:
        picks, scores = kcenter_greedy(feats, labeled, unlabeled, 10)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    full_matrix = (n - n_l) * n_l * 4  # what one unlabeled x labeled float32 matrix would take
    assert peak < full_matrix / 2, (peak, full_matrix)
    assert picks.shape == (10,) and scores.shape == (n - n_l,)


def test_kcenter_blocks_do_not_change_the_answer(monkeypatch):
    view = make_view(n=400, n_labeled=70, dim=16, seed=9)
    ref = kcenter_greedy(view.features, view.labeled, view.unlabeled, 30)
    monkeypatch.setattr(geo, "_BLOCK_ROWS", 16)
    monkeypatch.setattr(geo, "_BLOCK_COLS", 7)
    small = kcenter_greedy(view.features, view.labeled, view.unlabeled, 30)
    assert np.array_equal(ref[0], small[0])
    assert np.allclose(ref[1], small[1], atol=1e-5)


def test_kcenter_exact_duplicates_are_picked_once():
    base = _normalise(np.random.default_rng(10).normal(size=(20, 4)))
    feats = np.concatenate([base, base])  # every point twice
    picks, _ = kcenter_greedy(feats, np.array([0], np.int64), np.arange(1, 40, dtype=np.int64), 39)
    assert np.unique(picks).size == 39


@pytest.mark.parametrize("n_labeled,dim,duplicates", [(20, 16, False), (0, 8, False), (0, 16, True), (1, 2, False),
                                                      (40, 4, True)])
def test_kcenter_torch_path_picks_equal_numpy_path(n_labeled, dim, duplicates):
    # the CUDA path (one full update per pick, float64 re-measurement of near-ties), run here on a CPU tensor
    rng = np.random.default_rng(dim + n_labeled)
    n = 400
    feats = _normalise(rng.normal(size=(n, dim)))
    if duplicates:  # exact ties: the float64 re-measurement decides, first in candidates order
        feats[n // 2 :] = feats[: n - n // 2]
    perm = rng.permutation(n).astype(np.int64)
    labeled, unlabeled = np.sort(perm[:n_labeled]), np.sort(perm[n_labeled:])
    for budget in (0, 1, 150):
        ref_picks, ref_scores = kcenter_greedy(feats, labeled, unlabeled, budget)
        picks, scores = geo._kcenter_torch(torch.from_numpy(feats), labeled, unlabeled, budget)
        assert np.array_equal(picks, ref_picks)
        assert scores.dtype == np.float32 and scores.shape == ref_scores.shape
        assert np.array_equal(np.isinf(scores), np.isinf(ref_scores))
        finite = np.isfinite(ref_scores)
        # distances of unit vectors from 2 - 2 cos in float32 resolve no better than sqrt(4 x 2^-23) ~ 7e-4 near
        # 0: both paths round there, and how depends on the CPU's kernels (dim 2, 150 picks: 4.9e-4 vs 3.5e-4 on
        # an AMD EPYC), so near-zero scores agree to 1e-3; the picks above must be identical whatever the rounding
        assert np.allclose(scores[finite], ref_scores[finite], rtol=1e-5, atol=1e-3)
        order = np.argsort(-scores.astype(np.float64), kind="stable")
        assert unlabeled[order[:budget]].tolist() == picks.tolist()


# --------------------------------------------------------------------------- ceal


def _ceal_view(cycle: int) -> PoolView:
    probs = np.array(
        [
            [0.25, 0.25, 0.25, 0.25],  # H/log C = 1     uncertain -> chosen
            [0.997, 0.001, 0.001, 0.001],  # 0.0169     confident
            [0.001, 0.001, 0.99, 0.008],  # 0.0432     confident unless the threshold decayed
            [0.4, 0.3, 0.2, 0.1],  # 0.92        neither
            [0.001, 0.999, 0.0, 0.0],  # 0.0057     confident
        ],
        dtype=np.float32,
    )
    unl = np.array([4, 8, 2, 6, 0], dtype=np.int64)
    return PoolView(probs, np.zeros((10, 2), np.float32), np.array([1, 3], np.int64), unl,
                    np.array([0, 1], np.int64), 4, cycle)


def test_ceal_pseudo_labels_only_confident_rows():
    sel = select("ceal", _ceal_view(0), 1, np.random.default_rng(0), PARAMS)
    assert sel.chosen.tolist() == [4]
    assert sel.pseudo_positions.tolist() == [0, 2, 8]
    assert sel.pseudo_labels.tolist() == [1, 2, 0]
    assert not np.isin(sel.chosen, sel.pseudo_positions).any()
    assert np.array_equal(sel.scores, entropy(_ceal_view(0).probs).astype(np.float32))


def test_ceal_threshold_decays_with_cycle():
    # 0.1 - 0.00033 * 200 = 0.034 < 0.0432: the row at position 2 drops out
    sel = select("ceal", _ceal_view(200), 1, np.random.default_rng(0), PARAMS)
    assert sel.pseudo_positions.tolist() == [0, 8]
    # threshold floored at 0: nothing is pseudo-labelled
    assert select("ceal", _ceal_view(1000), 1, np.random.default_rng(0), PARAMS).pseudo_positions.size == 0
    # other parameters
    params = PARAMS.updated("ceal", threshold=0.01, decay=0.001)
    sel = select("ceal", _ceal_view(1), 1, np.random.default_rng(0), params)
    assert sel.pseudo_positions.tolist() == [0]


def test_ceal_never_pseudo_labels_a_chosen_row():
    sel = select("ceal", _ceal_view(0), 5, np.random.default_rng(0), PARAMS)  # every row chosen
    assert sorted(sel.chosen.tolist()) == [0, 2, 4, 6, 8] and sel.pseudo_positions.size == 0


# active.ceal.cap / balanced: the kept pseudo-labels. Rows follow `unl`; each confident row is [1 - 2e, e, e] rolled
# to its class, so its normalised entropy grows with e: the confidence order is e's (pos 2 and 4 tie at 0.0015).
_CAP_ROWS = [  # (pool position, e or None for the uniform row, predicted class)
    (10, None, 0),  # uniform: the most uncertain, chosen first
    (3, 0.004, 0), (7, 0.001, 0), (1, 0.003, 0), (12, 0.002, 1), (5, 0.005, 0), (9, 0.006, 2),
    (4, 0.0015, 0), (2, 0.0015, 0),
    (11, 0.2, 0),  # [0.6, 0.2, 0.2]: H / log 3 = 0.865, above the threshold; chosen second with budget 2
]
# confidence order of the 8 confident rows: 7, 2, 4 (tie: lower position first), 12, 1, 3, 5, 9


def _cap_view() -> PoolView:
    probs = np.array([np.full(3, 1 / 3) if e is None else np.roll([1 - 2 * e, e, e], c) for _, e, c in _CAP_ROWS],
                     dtype=np.float32)
    unl = np.array([pos for pos, _, _ in _CAP_ROWS], dtype=np.int64)
    return PoolView(probs, None, np.array([6, 8], np.int64), unl, np.array([0, 1], np.int64), 3, 0)


def _capped(cap: float | None, balanced: bool = False, budget: int = 1) -> Selection:
    params = PARAMS.updated("ceal", threshold=0.5, decay=0.0, cap=cap, balanced=balanced)
    return select("ceal", _cap_view(), budget, np.random.default_rng(0), params)


def test_ceal_cap_view_has_the_intended_confidence_order():
    view = _cap_view()
    norm = entropy(view.probs) / math.log(3)
    confident = view.unlabeled[norm < 0.5]
    order = np.lexsort((confident, norm[norm < 0.5]))
    assert confident[order].tolist() == [7, 2, 4, 12, 1, 3, 5, 9]
    assert _capped(None).pseudo_positions.tolist() == [1, 2, 3, 4, 5, 7, 9, 12]  # no cap: every confident row


@pytest.mark.parametrize("cap, budget, want", [
    (1.0, 1, [2, 4, 7]),  # ceil(1.0 x (2 labeled + 1 chosen)) = 3, the most confident
    (0.5, 1, [2, 7]),  # ceil(1.5) = 2: of the tie at 0.0015, position 2 before 4
    (2.0, 1, [1, 2, 3, 4, 7, 12]),  # 6
    (1.0, 2, [2, 4, 7, 12]),  # the next training's labels: 2 labeled + 2 chosen = 4
    (10.0, 1, [1, 2, 3, 4, 5, 7, 9, 12]),  # min(8 found, 30)
    (0.0, 1, []),  # no pseudo-label: Uncertainty
])
def test_ceal_cap_keeps_the_most_confident_up_to_the_cap(cap: float, budget: int, want: list[int]):
    sel = _capped(cap, budget=budget)
    n_labels = 2 + budget
    assert len(sel.pseudo_positions) == min(8, math.ceil(cap * n_labels))
    assert sel.pseudo_positions.tolist() == want  # by pool position, as without a cap
    labels = {pos: c for pos, _, c in _CAP_ROWS}
    assert sel.pseudo_labels.tolist() == [labels[p] for p in want]
    assert sel.chosen.tolist() == [10, 11][:budget] and sel.pseudo_positions.dtype == np.int64


@pytest.mark.parametrize("cap, want", [
    (2.0, [2, 7, 9, 12]),  # kept 6, quota ceil(6 / 3) = 2: class 0 gives 7 and 2, classes 1 and 2 their one row
    (None, [2, 4, 7, 9, 12]),  # kept 8, quota 3: 7, 2, 4 of class 0
    (1.0, [7, 9, 12]),  # kept 3, quota 1: the most confident of each class
])
def test_ceal_balanced_keeps_at_most_ceil_kept_over_c_per_predicted_class(cap: float | None, want: list[int]):
    sel = _capped(cap, balanced=True)
    assert sel.pseudo_positions.tolist() == want
    labels = {pos: c for pos, _, c in _CAP_ROWS}
    assert sel.pseudo_labels.tolist() == [labels[p] for p in want]
    kept = 8 if cap is None else min(8, math.ceil(cap * 3))
    assert np.bincount(sel.pseudo_labels, minlength=3).max() <= math.ceil(kept / 3)


def _naive_keep(norm: np.ndarray, pos: np.ndarray, lab: np.ndarray, c: int, limit: int | None,
                balanced: bool) -> list[int]:
    """ceal_keep written as a loop over the candidates in confidence order."""
    kept = len(norm) if limit is None else min(len(norm), limit)
    quota = math.ceil(kept / c) if balanced else len(norm)
    taken: dict[int, int] = {}
    out: list[int] = []
    for i in sorted(range(len(norm)), key=lambda i: (norm[i], pos[i])):
        if len(out) < kept and taken.get(int(lab[i]), 0) < quota:
            out.append(i)
            taken[int(lab[i])] = taken.get(int(lab[i]), 0) + 1
    return out


@pytest.mark.parametrize("seed", range(6))
def test_ceal_keep_matches_a_loop_on_skewed_classes(seed: int):
    rng = np.random.default_rng(seed)
    m, c = int(rng.integers(0, 200)), int(rng.integers(2, 7))
    lab = rng.choice(c, size=m, p=np.r_[0.7, np.full(c - 1, 0.3 / (c - 1))]).astype(np.int64)  # one class dominates
    norm = rng.integers(0, 20, size=m) / 40.0  # many ties
    pos = rng.permutation(10 * m + 1)[:m].astype(np.int64)
    for limit in (None, 0, 1, m // 3, m, 2 * m + 5):
        for balanced in (False, True):
            got = ceal_keep(norm, pos, lab, c, limit, balanced)
            assert got.tolist() == _naive_keep(norm, pos, lab, c, limit, balanced), (limit, balanced)
            if balanced and m:
                kept = m if limit is None else min(m, limit)
                assert np.bincount(lab[got], minlength=c).max(initial=0) <= math.ceil(kept / c)


def test_ceal_limit_reads_the_cap_as_written():
    assert ceal_limit(None, 30) is None
    assert (ceal_limit(0.1, 30), ceal_limit(0.7, 10), ceal_limit(1.5, 3), ceal_limit(0.0, 9)) == (3, 7, 5, 0)
    assert ceal_limit(0.01, 1) == 1  # any positive cap allows one


def test_ceal_without_cap_and_balance_is_the_paper():
    assert (PARAMS.of("ceal").cap, PARAMS.of("ceal").balanced) == (None, False)
    uncapped = select("ceal", _cap_view(), 1, np.random.default_rng(0),
                      PARAMS.updated("ceal", threshold=0.5, decay=0.0))
    big = _capped(1000.0)
    assert uncapped.pseudo_positions.tolist() == big.pseudo_positions.tolist() == [1, 2, 3, 4, 5, 7, 9, 12]


def test_strategy_params_reject_bad_values():
    # each strategy's model bounds its values (pydantic's ValidationError is a ValueError naming the field)
    with pytest.raises(ValueError, match="threshold"):
        PARAMS.updated("ceal", threshold=2.0, decay=0.0)
    with pytest.raises(ValueError, match="decay"):
        PARAMS.updated("ceal", decay=-1.0)
    for bad in (-0.5, math.inf, math.nan):
        with pytest.raises(ValueError, match="cap"):
            PARAMS.updated("ceal", cap=bad)
    with pytest.raises(ValueError, match="balanced"):
        PARAMS.updated("ceal", balanced="sometimes")
    with pytest.raises(TypeError, match="GraphSpec"):
        dataclasses.replace(PARAMS, graph={"k": 50})
    with pytest.raises(ValueError, match="base"):
        PARAMS.updated("power", base="coreset")
    for bad in (0.0, -1.0, math.inf):
        with pytest.raises(ValueError, match="exponent"):
            PARAMS.updated("power", exponent=bad)
    for bad in (0.0, 2.5):
        with pytest.raises(ValueError, match="delta"):
            PARAMS.updated("probcover", delta=bad)
    with pytest.raises(TypeError, match=r"sections\['power'\] must be a PowerParams"):
        StrategyParams(graph=GRAPH, sections={"power": CealParams()})
    with pytest.raises(TypeError, match="'coreset' is not a strategy with parameters"):
        StrategyParams(graph=GRAPH, sections={"coreset": CealParams()})
    with pytest.raises(TypeError, match="StrategyParams"):
        select("ceal", _ceal_view(0), 1, np.random.default_rng(0), {"threshold": 0.1})
    assert StrategyParams(graph=GRAPH).of("probcover") == ProbCoverParams()  # absent: the model's defaults


# --------------------------------------------------------------------------- registry and contract


def test_registry_lists_every_strategy_once_with_its_needs():
    assert NAMES == ("random", "uncertainty", "coreset", "ceal", "jlp", "margin", "least-confidence", "bald", "power",
                     "badge", "class-balanced", "typiclust", "probcover")
    expected = {"random": set(), "uncertainty": {"probs"}, "coreset": {"features"}, "ceal": {"probs"},
                "jlp": {"features", "graph"}, "margin": {"probs"}, "least-confidence": {"probs"},
                "bald": {"mc_probs"}, "power": {"probs", "mc_probs"}, "badge": {"probs", "features"},
                "class-balanced": {"probs"}, "typiclust": {"features"}, "probcover": {"features"}}
    for name in NAMES:
        assert callable(get_strategy(name))
        assert needs(name) == frozenset(expected[name])
        assert needs(name) <= NEED_KINDS
    # power sampling reads what its base reads
    for base in POWER_BASES:
        assert needs("power", PARAMS.updated("power", base=base)) == needs(base)
        assert needs(base, PARAMS.updated("power", base=base)) == needs(base)


def test_unknown_strategy_lists_valid_names():
    for call in (get_strategy, needs):
        with pytest.raises(ValueError) as err:
            call("vaal")
        assert str(err.value) == ("unknown strategy 'vaal'; valid: random, uncertainty, coreset, ceal, jlp, margin,"
                                  " least-confidence, bald, power, badge, class-balanced, typiclust, probcover")
    with pytest.raises(ValueError, match="unknown strategy"):
        select("vaal", make_view(), 1, np.random.default_rng(0), PARAMS)


def test_no_import_cycle_and_no_manifest_import():
    code = (
        "import sys; import alctl.propagate; "
        "assert not any(m.startswith('alctl.strategies') for m in sys.modules), 'propagate imports strategies'; "
        "import alctl.strategies.registry; "
        "assert 'alctl.config' not in sys.modules and 'alctl.errors' not in sys.modules, sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("name", NAMES)
def test_budget_larger_than_pool_is_a_value_error(name):
    view = make_view(n=30, n_labeled=10)
    with pytest.raises(ValueError, match="budget"):
        select(name, view, 21, np.random.default_rng(0), PARAMS)
    with pytest.raises(ValueError, match="budget"):
        get_strategy(name)(view, 21, np.random.default_rng(0), PARAMS)


@pytest.mark.parametrize("name", NAMES)
def test_selection_contract(name):
    view = make_view(n=120, n_labeled=20, seed=11)
    for budget in (0, 1, 17, 100):
        sel = select(name, view, budget, np.random.default_rng(1), PARAMS)
        assert isinstance(sel, Selection)
        assert sel.chosen.dtype == np.int64 and sel.chosen.shape == (budget,)
        assert np.unique(sel.chosen).size == budget
        assert np.isin(sel.chosen, view.unlabeled).all()
        assert sel.scores.shape == view.unlabeled.shape and sel.scores.dtype == np.float32
        assert np.isfinite(sel.scores).all()
        assert sel.pseudo_positions.shape == sel.pseudo_labels.shape
        assert np.isin(sel.pseudo_positions, view.unlabeled).all()


@pytest.mark.parametrize("name,base", [(name, "bald") for name in NAMES] + [("power", b) for b in POWER_BASES[1:]])
def test_fields_a_strategy_does_not_need_may_be_none(name, base):
    params = PARAMS.updated("power", base=base)
    view = make_view(n=120, n_labeled=20, seed=12)
    full = select(name, view, 10, np.random.default_rng(2), params)
    wanted = needs(name, params)
    slim = dataclasses.replace(view, probs=view.probs if "probs" in wanted else None,
                               features=view.features if "features" in wanted else None,
                               mc_probs=view.mc_probs if "mc_probs" in wanted else None)
    got = select(name, slim, 10, np.random.default_rng(2), params)
    for field in ("chosen", "scores", "pseudo_positions", "pseudo_labels"):
        assert np.array_equal(getattr(got, field), getattr(full, field))
    if wanted:
        with pytest.raises(ValueError, match="got None"):
            select(name, dataclasses.replace(view, probs=None, features=None, mc_probs=None), 10,
                   np.random.default_rng(2), params)


@pytest.mark.parametrize("name", NAMES)
def test_torch_cpu_inputs_give_bit_identical_selections(name):
    view = make_view(n=300, n_labeled=30, dim=16, seed=13, cycle=2)
    ref = select(name, view, 25, np.random.default_rng(3), PARAMS)
    tview = dataclasses.replace(view, probs=torch.from_numpy(view.probs), features=torch.from_numpy(view.features),
                                mc_probs=torch.from_numpy(view.mc_probs))
    got = select(name, tview, 25, np.random.default_rng(3), PARAMS)
    for field in ("chosen", "scores", "pseudo_positions", "pseudo_labels"):
        assert np.array_equal(getattr(got, field), getattr(ref, field))
        assert getattr(got, field).dtype == getattr(ref, field).dtype


def test_exact_refinement_matches_scipy_distances():
    rng = np.random.default_rng(12)
    rows, centers = _normalise(rng.normal(size=(7, 32))), _normalise(rng.normal(size=(50, 32)))
    c_sq = (centers.astype(np.float64) ** 2).sum(1).astype(np.float32)
    got = geo._exact_min_dist(rows, centers, c_sq, 1e-4)
    assert np.array_equal(got, distance_matrix(rows, centers).min(axis=1))
    on_torch = geo._exact_min_dist_t(torch.from_numpy(rows), torch.from_numpy(centers), torch.from_numpy(c_sq), 1e-4)
    assert np.allclose(on_torch.numpy(), got, rtol=1e-15, atol=0)


def test_non_finite_inputs_are_reported():
    view = make_view(n=40, n_labeled=5)
    bad = PoolView(np.full_like(view.probs, np.nan), view.features, view.labeled, view.unlabeled,
                   view.labels, view.num_classes, 0)
    for name in ("uncertainty", "ceal", "margin", "least-confidence", "badge"):
        with pytest.raises(FloatingPointError, match="NaN or inf .did training diverge"):
            select(name, bad, 3, np.random.default_rng(0), PARAMS)
    feats = view.features.copy()
    feats[view.unlabeled[0], 0] = np.inf
    bad = PoolView(view.probs, feats, view.labeled, view.unlabeled, view.labels, view.num_classes, 0)
    for name in ("coreset", "jlp", "badge", "typiclust", "probcover"):
        with pytest.raises(FloatingPointError, match="NaN or inf .did training diverge"):
            select(name, bad, 3, np.random.default_rng(0), PARAMS)
    mc = view.mc_probs.copy()
    mc[1, 2, 0] = np.nan
    for name in ("bald", "power"):
        with pytest.raises(FloatingPointError, match="NaN or inf .did training diverge"):
            select(name, dataclasses.replace(view, mc_probs=mc), 3, np.random.default_rng(0), PARAMS)
    with pytest.raises(FloatingPointError, match="NaN"):
        geo._kcenter_torch(torch.from_numpy(feats), view.labeled, view.unlabeled, 3)
