"""Label propagation and jLP: known answers on hand-made data, the block solver against scipy's cg, jLP against cold solves."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import scipy.sparse
import torch
from scipy.sparse.linalg import cg

from alctl.knn import knn_search
from alctl.propagate import (
    Diffusion,
    GraphSpec,
    Propagation,
    diffusion,
    diffusion_from_knn,
    label_propagation,
    normalized_graph,
    propagate_labels,
    pseudo_labels,
    solve,
)
from alctl.strategies import PoolView, StrategyParams, select
from alctl.strategies.graph import _jlp_greedy, _jlp_scores, jlp_select

# The manifest's defaults, written out: propagation and jLP have none of their own.
GRAPH = GraphSpec(k=50, gamma=3.0, alpha=0.99, tol=1e-6, max_iter=20, knn="exact")


def graph(**changes: object) -> GraphSpec:
    """GRAPH with some fields changed."""
    return dataclasses.replace(GRAPH, **changes)


def params(**changes: object) -> StrategyParams:
    """Strategy parameters whose graph is GRAPH with some fields changed."""
    return StrategyParams(graph=graph(**changes))


def _normalise(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x / np.linalg.norm(x, axis=1, keepdims=True), dtype=np.float32)


def clustered(n: int, dim: int, clusters: int, noise: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian clusters around random unit centres (L2-normalised float32 rows) and the cluster ids."""
    rng = np.random.default_rng(seed)
    centres = _normalise(rng.normal(size=(clusters, dim)))
    y = rng.integers(0, clusters, n)
    return _normalise(centres[y] + noise * rng.normal(size=(n, dim)) / math.sqrt(dim)), y.astype(np.int64)


def arc(n: int) -> np.ndarray:
    """n points evenly spaced on a quarter of the unit circle: a chain whose neighbours are known."""
    theta = np.linspace(0.0, math.pi / 2, n)
    return _normalise(np.stack([np.cos(theta), np.sin(theta)], axis=1))


def scipy_columns(wn, y: np.ndarray, alpha: float, tol: float, max_iter: int, x0=None) -> np.ndarray:
    """The per-class reference: scipy.sparse.linalg.cg one column at a time, float64."""
    a = scipy.sparse.eye(wn.shape[0]) - alpha * wn.astype(np.float64)
    cols = []
    for c in range(y.shape[1]):
        start = None if x0 is None else x0[:, c].astype(np.float64)
        cols.append(cg(a, y[:, c].astype(np.float64), x0=start, rtol=tol, maxiter=max_iter)[0])
    return np.stack(cols, axis=1)


# --------------------------------------------------------------------------- graph


def test_normalized_graph_matches_dense_reference():
    rng = np.random.default_rng(0)
    n, k = 40, 6
    sims = rng.uniform(-0.3, 1.0, size=(n, k)).astype(np.float32)
    ids = np.stack([rng.choice(n, k, replace=False) for _ in range(n)]).astype(np.int64)
    ids[5, 2] = 5  # a self-loop, to be dropped
    wn = normalized_graph(sims, ids, 3.0)
    a = np.zeros((n, n))
    for i in range(n):
        for j in range(k):
            if ids[i, j] != i:
                a[i, ids[i, j]] += max(float(sims[i, j]), 0.0) ** 3
    w = a + a.T
    d = w.sum(1)
    inv = np.where(d > 0, 1 / np.sqrt(np.where(d > 0, d, 1)), 0)
    ref = inv[:, None] * w * inv[None, :]
    assert isinstance(wn, scipy.sparse.csr_matrix) and wn.dtype == np.float32 and wn.shape == (n, n)
    assert np.allclose(wn.toarray(), ref, atol=1e-6)
    assert np.all(wn.diagonal() == 0)
    assert abs(wn - wn.T).max() == 0


def test_normalized_graph_checks():
    with pytest.raises(ValueError, match="both be"):
        normalized_graph(np.ones((3, 2), np.float32), np.zeros((3, 3), np.int64), 3.0)
    with pytest.raises(ValueError, match="ids must lie"):
        normalized_graph(np.ones((3, 2), np.float32), np.full((3, 2), 3), 3.0)
    with pytest.raises(ValueError, match="gamma"):
        normalized_graph(np.ones((3, 2), np.float32), np.zeros((3, 2), np.int64), 0.0)


# --------------------------------------------------------------------------- solver


def _graph(n: int = 1500, seed: int = 1):
    x, y = clustered(n, 16, 6, 2.0, seed=seed)
    sims, ids = knn_search(x, 15)
    return normalized_graph(sims, ids, 3.0), y


@pytest.mark.parametrize("max_iter", [20, 7])
def test_block_solve_matches_per_class_scipy_cg(max_iter):
    wn, y = _graph()
    rng = np.random.default_rng(2)
    lab = rng.choice(y.size, 40, replace=False)
    c = 40  # more columns than one block, so several blocks and padding run
    rhs = np.zeros((y.size, c), dtype=np.float32)
    rhs[lab, np.arange(40) % c] = rng.uniform(0.5, 1.5, 40)
    rhs[:, 5] = 0.0  # a class without labels
    z, its = solve(wn, rhs, 0.99, 1e-6, max_iter)
    ref = scipy_columns(wn, rhs, 0.99, 1e-6, max_iter)
    assert z.shape == rhs.shape and z.dtype == np.float32
    assert np.abs(z - ref).max() <= 1e-5 * max(1.0, np.abs(ref).max())
    assert np.all(z[:, 5] == 0)
    assert its == max_iter


def test_block_solve_stops_columns_at_their_tolerance():
    wn, y = _graph(800, seed=3)
    rhs = np.zeros((y.size, 20), dtype=np.float32)
    rhs[np.arange(20) * 7, np.arange(20)] = 1.0
    rhs[:, 3] *= 1e-3  # scale does not change when a column stops (relative tolerance)
    z, its = solve(wn, rhs, 0.9, 1e-4, 500)
    ref = scipy_columns(wn, rhs, 0.9, 1e-4, 500)
    assert np.abs(z - ref).max() <= 1e-5 * np.abs(ref).max()
    assert its < 500
    a = scipy.sparse.eye(y.size) - 0.9 * wn.astype(np.float64)
    res = np.linalg.norm(a @ z - rhs, axis=0) / np.linalg.norm(rhs, axis=0)
    assert res.max() < 1e-4 * 1.01


def test_solve_warm_start_and_vector():
    wn, y = _graph(600, seed=4)
    rng = np.random.default_rng(5)
    rhs = np.zeros((y.size, 3), dtype=np.float32)
    rhs[rng.choice(y.size, 9, replace=False), np.arange(9) % 3] = 1.0
    x0 = rng.uniform(0, 0.05, size=rhs.shape).astype(np.float32)
    z, _ = solve(wn, rhs, 0.99, 1e-6, 6, x0=x0)
    ref = scipy_columns(wn, rhs, 0.99, 1e-6, 6, x0=x0)
    assert np.abs(z - ref).max() <= 1e-5
    v, _ = solve(wn, rhs[:, 1], 0.99, 1e-6, 20)
    assert v.shape == (y.size,)
    assert np.abs(v - scipy_columns(wn, rhs[:, 1:2], 0.99, 1e-6, 20)[:, 0]).max() <= 1e-5
    with pytest.raises(ValueError, match="alpha"):
        solve(wn, rhs, 1.0, 1e-6, 20)
    with pytest.raises(ValueError, match="y must be"):
        solve(wn, rhs[:10], 0.99, 1e-6, 20)
    with pytest.raises(ValueError, match="x0"):
        solve(wn, rhs, 0.99, 1e-6, 20, x0=x0[:, :2])


# --------------------------------------------------------------------------- label propagation


def test_two_separated_clusters_one_label_each():
    rng = np.random.default_rng(6)
    a = _normalise(np.array([1.0, 0, 0]) + 0.05 * rng.normal(size=(150, 3)))
    b = _normalise(np.array([0, 1.0, 0]) + 0.05 * rng.normal(size=(150, 3)))
    x = np.ascontiguousarray(np.concatenate([a, b]))
    truth = np.repeat([0, 1], 150)
    prop = label_propagation(x, np.array([3, 200]), np.array([0, 1]), 2, graph(k=10), "max")
    assert isinstance(prop, Propagation)
    assert np.array_equal(prop.labels, truth)
    assert prop.labels.dtype == np.int64 and prop.weights.dtype == np.float32
    assert prop.scores.shape == (300, 2) and prop.scores.dtype == np.float32
    assert prop.weights[[3, 200]].tolist() == [1.0, 1.0]
    assert np.all((prop.weights >= 0) & (prop.weights <= 1))
    assert prop.class_weights == pytest.approx([1.0, 1.0])
    assert prop.iterations == 20


def test_most_certain_points_are_nearest_to_the_labels():
    n = 400
    x = arc(n)  # a chain: labels at both ends, the middle is the least certain
    prop = label_propagation(x, np.array([0, n - 1]), np.array([0, 1]), 2, graph(k=10, tol=1e-8, max_iter=500), "max")
    dist = np.minimum(np.arange(n), n - 1 - np.arange(n))  # hops to the nearest label
    unl = np.arange(1, n - 1)
    w = prop.weights[unl]
    assert np.all((prop.weights >= 0) & (prop.weights <= 1))
    assert np.array_equal(prop.labels, (np.arange(n) >= n // 2).astype(np.int64))
    most = unl[np.argsort(-w, kind="stable")[:10]]
    least = unl[np.argsort(w, kind="stable")[:10]]
    assert dist[most].max() <= 10
    assert dist[least].min() >= 190
    order = np.argsort(dist[unl], kind="stable")  # certainty falls with the distance to the labels
    assert np.corrcoef(np.argsort(np.argsort(w[order])), np.arange(unl.size))[0, 1] < -0.99


def test_unreached_rows_get_zero_weight():
    n = 400  # 20 iterations of a k = 10 chain reach ~100 positions from each labeled end
    prop = label_propagation(arc(n), np.array([0, n - 1]), np.array([0, 1]), 2, graph(k=10), "max")
    zero = np.flatnonzero(np.all(prop.scores <= 0, axis=1))
    assert zero.size > 50
    assert np.all(prop.weights[zero] == 0.0)
    assert np.all(prop.weights[np.setdiff1d(np.arange(n), zero)] > 0)


def test_class_without_labeled_images():
    x, y = clustered(600, 12, 3, 1.5, seed=7)
    lab = np.concatenate([np.flatnonzero(y == 0)[:5], np.flatnonzero(y == 1)[:5]])
    prop = label_propagation(x, lab, y[lab], 3, graph(k=10), "max")
    for arr in (prop.scores, prop.weights, prop.class_weights):
        assert np.all(np.isfinite(arr))
    assert np.all(prop.scores[:, 2] == 0)
    assert prop.class_weights[2] == 0.0
    assert not np.any(prop.labels == 2)
    counts = np.bincount(prop.labels, minlength=3)
    assert prop.class_weights[:2] == pytest.approx(600 / 3 / counts[:2])


def test_label_propagation_checks():
    x, _ = clustered(50, 4, 2, 1.0)
    with pytest.raises(ValueError, match="labels must lie"):
        label_propagation(x, np.array([1]), np.array([5]), 2, GRAPH, "max")
    with pytest.raises(ValueError, match="unique"):
        label_propagation(x, np.array([1, 1]), np.array([0, 0]), 2, GRAPH, "max")
    with pytest.raises(ValueError, match="labeled positions"):
        label_propagation(x, np.array([50]), np.array([0]), 2, GRAPH, "max")
    with pytest.raises(ValueError, match="float32"):
        label_propagation(x.astype(np.float64), np.array([1]), np.array([0]), 2, GRAPH, "max")
    with pytest.raises(ValueError, match="weight_scale"):
        label_propagation(x, np.array([1]), np.array([0]), 2, GRAPH, "mean")
    with pytest.raises(TypeError, match="GraphSpec"):
        label_propagation(x, np.array([1]), np.array([0]), 2, {"k": 10}, "max")
    small = label_propagation(x[:4].copy(), np.array([0]), np.array([1]), 2, GRAPH, "max")  # k clipped to n - 1
    assert small.labels.shape == (4,)


def test_graph_spec_rejects_bad_values():
    # the manifest schema bounds these for users; the pure constructor still refuses them (ValueError)
    for field, value in (("k", 2.5), ("k", 0), ("k", True), ("gamma", 0.0), ("alpha", 1.5), ("tol", -1.0),
                         ("max_iter", 2.5), ("knn", "annoy")):
        with pytest.raises(ValueError, match=field):
            graph(**{field: value})


def test_label_propagation_is_diffusion_then_propagate_labels():
    x, y = clustered(500, 8, 3, 1.5, seed=15)
    lab = np.arange(0, 500, 25)
    spec = graph(k=10)
    whole = label_propagation(x, lab, y[lab], 3, spec, "max")
    sims, ids = knn_search(x, 10)
    for op in (diffusion(x, spec), diffusion_from_knn(sims, ids, spec), diffusion(torch.from_numpy(x), spec)):
        assert isinstance(op, Diffusion) and op.n == 500
        parts = propagate_labels(op, lab, y[lab], 3, spec.tol, spec.max_iter, "max")
        for field in ("labels", "weights", "class_weights", "scores"):
            assert np.array_equal(getattr(parts, field), getattr(whole, field))
        assert parts.iterations == whole.iterations
    on_tensor = label_propagation(torch.from_numpy(x), lab, y[lab], 3, spec, "max")
    assert np.array_equal(on_tensor.scores, whole.scores) and np.array_equal(on_tensor.labels, whole.labels)
    with pytest.raises(ValueError, match="labeled positions"):
        propagate_labels(diffusion(x, spec), np.array([500]), np.array([0]), 3, 1e-6, 20, "max")
    with pytest.raises(ValueError, match="at least 2"):
        diffusion(x[:1], spec)


def test_pseudo_labels_by_hand():
    z = np.array(
        [
            [0.9, 0.1, 0.0],  # labeled as class 2: keeps label, weight 1
            [0.5, 0.5, 0.0],  # H = log 2
            [0.2, -0.1, 0.6],  # negatives clipped: p = (0.25, 0, 0.75)
            [0.0, 0.0, 0.0],  # unreached
            [-0.1, -0.2, -0.3],  # unreached (nothing positive)
            [1.0, 0.0, 0.0],  # one-hot: most certain
        ],
        dtype=np.float32,
    )
    labels, w, cw = pseudo_labels(z, np.array([0]), np.array([2]), 3, "none")
    assert labels.tolist() == [2, 0, 2, 0, 0, 0]
    def h(*p: float) -> float:
        """Natural-log entropy."""
        return -sum(v * math.log(v) for v in p if v > 0)

    raw = 1 - np.array([h(0.9, 0.1), h(0.5, 0.5), h(0.25, 0.75), math.log(3), math.log(3), 0.0]) / math.log(3)
    raw[[3, 4]] = 0.0
    assert w[1:].tolist() == pytest.approx(raw[1:].tolist(), abs=1e-6)  # weight_scale none: 1 - H/log C
    assert w[0] == 1.0 and w[3] == 0.0 and w[4] == 0.0
    # the authors' code (default): divided by the largest weight over all rows, labeled rows computed too
    raw_all = raw.copy()
    raw_all[0] = 1 - h(0.9, 0.1) / math.log(3)
    labels_max, w_max, _ = pseudo_labels(z[:5], np.array([0]), np.array([2]), 3, "max")  # no one-hot row: max < 1
    assert raw_all[:5].max() < 0.75 and labels_max.tolist() == labels[:5].tolist()
    assert w_max[1:].tolist() == pytest.approx((raw[1:5] / raw_all[:5].max()).tolist(), abs=1e-6)
    assert w_max[0] == 1.0
    counts = np.array([4, 0, 2])
    assert cw.tolist() == pytest.approx([6 / 3 / 4, 0.0, 6 / 3 / 2])
    assert labels.dtype == np.int64 and w.dtype == np.float32 and cw.dtype == np.float32
    assert counts.sum() == 6


# --------------------------------------------------------------------------- jLP


def cold_jlp(wn, labeled: np.ndarray, unlabeled: np.ndarray, budget: int, alpha: float, tol: float, max_iter: int) -> list[int]:
    """The authors' loop: one cold CG solve of all sources per pick; the least reached unlabeled image."""
    a = scipy.sparse.eye(wn.shape[0]) - alpha * wn.astype(np.float64)
    q = np.zeros(wn.shape[0])
    q[labeled] = 1.0
    allowed = np.zeros(wn.shape[0], dtype=bool)
    allowed[unlabeled] = True
    picks: list[int] = []
    for _ in range(budget):
        f, _ = cg(a, q, rtol=tol, maxiter=max_iter)
        p = int(np.argmin(np.where(allowed, f, np.inf)))
        picks.append(p)
        allowed[p] = False
        q[p] = 1.0
    return picks


def _view(x: np.ndarray, labeled: np.ndarray, num_classes: int = 3) -> PoolView:
    n = x.shape[0]
    unl = np.setdiff1d(np.arange(n), labeled).astype(np.int64)
    probs = np.full((unl.size, num_classes), 1.0 / num_classes, dtype=np.float32)
    return PoolView(probs, x, np.sort(labeled).astype(np.int64), unl, np.zeros(labeled.size, np.int64), num_classes, 0)


def test_jlp_fast_picks_equal_cold_picks():
    x, _ = clustered(1200, 16, 5, 2.0, seed=8)
    lab = np.random.default_rng(9).choice(1200, 25, replace=False)
    view = _view(x, lab)
    sel = jlp_select(view, 40, np.random.default_rng(0), params(k=15, tol=1e-10, max_iter=1000))
    sims, ids = knn_search(x, 15)
    wn = normalized_graph(sims, ids, 3.0)
    assert sel.chosen.tolist() == cold_jlp(wn, view.labeled, view.unlabeled, 40, 0.99, 1e-10, 1000)
    # the blocks prepared ahead change the cost, not the picks
    op = Diffusion(wn, 0.99)
    for block in (1, 3, 40):
        picks, _, _ = _jlp_greedy(op, view.labeled, view.unlabeled, 40, 1e-10, 1000, block=block)
        assert picks.tolist() == sel.chosen.tolist()


def test_jlp_with_protocol_settings_agrees_with_cold_solves_here():
    # tol 1e-6 and 20 iterations: the solves stop before converging; on this pool both agree anyway
    x, _ = clustered(1500, 16, 5, 2.0, seed=10)
    lab = np.random.default_rng(11).choice(1500, 30, replace=False)
    view = _view(x, lab)
    sel = jlp_select(view, 25, np.random.default_rng(0), params(k=20))
    sims, ids = knn_search(x, 20)
    assert sel.chosen.tolist() == cold_jlp(normalized_graph(sims, ids, 3.0), view.labeled, view.unlabeled, 25, 0.99, 1e-6, 20)


def test_jlp_picks_least_reached_on_a_path():
    # path 0 - 1 - ... - 6, source at 0: the far end is least reached, then the middle of 0..6
    n = 7
    w = scipy.sparse.diags([np.ones(n - 1), np.ones(n - 1)], [-1, 1], format="csr")
    d = np.asarray(w.sum(1)).ravel()
    wn = scipy.sparse.csr_matrix(w.multiply(1 / np.sqrt(np.outer(d, d))), dtype=np.float32)
    op = Diffusion(wn, 0.99)
    picks, pick_f, f = _jlp_greedy(op, np.array([0]), np.arange(1, n), 2, 1e-12, 200)
    assert picks.tolist() == [6, 3]
    dense = np.linalg.inv(np.eye(n) - 0.99 * wn.toarray().astype(np.float64))
    assert f == pytest.approx(dense @ np.isin(np.arange(n), [0, 6, 3]).astype(float), rel=1e-5)
    assert pick_f[0] == pytest.approx((dense @ np.eye(n)[0])[6], rel=1e-5)


def test_jlp_prefers_a_component_without_sources():
    x = _normalise(np.concatenate([np.tile([1.0, 0, 0], (30, 1)), np.tile([0, 1.0, 0], (10, 1))])
                   + 0.01 * np.random.default_rng(12).normal(size=(40, 3)))
    view = _view(x, np.array([0, 1, 2]))
    sel = jlp_select(view, 1, np.random.default_rng(0), params(k=5))
    assert sel.chosen[0] >= 30  # unreached: f = 0


def test_jlp_scores_replay_the_picks():
    x, _ = clustered(300, 8, 4, 2.0, seed=13)
    view = _view(x, np.arange(0, 300, 30))
    sel = select("jlp", view, 12, np.random.default_rng(0), params(k=10))
    order = np.argsort(-sel.scores.astype(np.float64), kind="stable")
    assert view.unlabeled[order[:12]].tolist() == sel.chosen.tolist()
    assert sel.scores.dtype == np.float32 and np.isfinite(sel.scores).all()
    zero = select("jlp", view, 0, np.random.default_rng(0), params(k=10))
    assert zero.chosen.size == 0 and zero.scores.shape == view.unlabeled.shape


def test_jlp_on_a_torch_tensor_equals_numpy():
    x, _ = clustered(400, 8, 4, 2.0, seed=16)
    view = _view(x, np.arange(0, 400, 40))
    ref = jlp_select(view, 15, np.random.default_rng(0), params(k=10))
    got = jlp_select(dataclasses.replace(view, features=torch.from_numpy(x)), 15, np.random.default_rng(0), params(k=10))
    assert np.array_equal(got.chosen, ref.chosen) and np.array_equal(got.scores, ref.scores)


def test_jlp_scores_break_float32_ties_in_pick_order():
    unl = np.array([2, 4, 5, 7, 9], dtype=np.int64)
    f = np.zeros(10)
    f[unl] = [3.0, 1.0, 1.0, 1.0, 2.0]
    picks = np.array([7, 5, 4], dtype=np.int64)  # equal f at their turns
    scores = _jlp_scores(unl, picks, np.array([1.0, 1.0, 1.0]), f)
    order = np.argsort(-scores.astype(np.float64), kind="stable")
    assert unl[order[:3]].tolist() == [7, 5, 4]
    assert scores.dtype == np.float32 and len(set(scores.tolist())) == 5


def test_threaded_row_slices_give_the_same_products():
    wn, y = _graph(900, seed=14)
    rhs = np.zeros((y.size, 20), dtype=np.float32)
    rhs[np.arange(20) * 11, np.arange(20)] = 1.0
    one, its1 = Diffusion(wn, 0.99, workers=1).solve(rhs, 1e-6, 20)
    three, its3 = Diffusion(wn, 0.99, workers=3).solve(rhs, 1e-6, 20)
    assert its1 == its3 and np.allclose(one, three, atol=1e-7)
    assert np.abs(one - scipy_columns(wn, rhs, 0.99, 1e-6, 20)).max() <= 1e-5


def test_sample_by_certainty_draws_half_never_zero_weights_and_favours_certain_rows() -> None:
    from alctl.propagate import class_weights, sample_by_certainty

    w = np.r_[np.zeros(100), np.full(100, 0.05), np.full(100, 1.0)].astype(np.float32)
    counts = np.zeros(300)
    for seed in range(50):
        idx = sample_by_certainty(w, 0.2, np.random.default_rng(seed))
        assert len(idx) == 60 and np.unique(idx).size == 60 and np.all(np.diff(idx) > 0)
        counts[idx] += 1
    assert counts[:100].sum() == 0  # weight 0: never pseudo-labeled
    assert counts[200:].mean() > 5 * counts[100:200].mean()
    assert len(sample_by_certainty(np.zeros(10), 0.5, np.random.default_rng(0))) == 0
    assert len(sample_by_certainty(w, 1.0, np.random.default_rng(0))) == 200  # at most the rows of weight > 0
    assert np.allclose(class_weights(np.array([0, 0, 0, 1]), 3), [4 / 3 / 3, 4 / 3, 0.0])
