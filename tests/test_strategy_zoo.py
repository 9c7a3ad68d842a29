"""The strategies of issue 19 (margin, least confidence, BALD, power sampling, BADGE, TypiClust, ProbCover): each
against a straightforward loop reference on small inputs (identical picks), a known ranking on synthetic pools,
MC dropout passes of the engine, and the manifest fields behind them."""

from __future__ import annotations

import dataclasses
import math
import tracemalloc
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from alctl import config as mf
from alctl.engine import settings, steps
from alctl.errors import ManifestError
from alctl.models import build_model
from alctl.propagate import GraphSpec
from alctl.strategies import NAMES, PoolView, StrategyParams, needs, select
from alctl.strategies import coverage as cov
from alctl.strategies.embedding import gradient_residuals, kmeanspp_kron
from alctl.strategies.params import CealParams
from alctl.strategies.registry import POWER_BASES
from alctl.strategies.scores import bald_scores, entropy, least_confidence_scores, margin_scores
from alctl.train import predict, predict_mc

GRAPH = GraphSpec(k=50, gamma=3.0, alpha=0.99, tol=1e-6, max_iter=20, knn="exact")
PARAMS = StrategyParams(graph=GRAPH, sections={"ceal": CealParams(cap=None, balanced=False)})  # the paper's CEAL
TINY = float(np.finfo(np.float64).tiny)


def _normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(logits - logits.max(axis, keepdims=True))
    return (e / e.sum(axis, keepdims=True)).astype(np.float32)


def random_view(n: int = 200, n_labeled: int = 20, num_classes: int = 5, dim: int = 8, passes: int = 6,
                seed: int = 0) -> PoolView:
    """Shuffled pool positions, probs and MC passes of random logits, L2-normalised Gaussian features."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n).astype(np.int64)
    labeled, unlabeled = np.sort(perm[:n_labeled]), perm[n_labeled:]  # unlabeled in no particular order
    logits = rng.normal(size=(unlabeled.size, num_classes)) * 2
    mc = _softmax(logits[None] + rng.normal(size=(passes, unlabeled.size, num_classes)))
    return PoolView(probs=_softmax(logits), features=_normalise(rng.normal(size=(n, dim))), labeled=labeled,
                    unlabeled=unlabeled, labels=rng.integers(0, num_classes, n_labeled).astype(np.int64),
                    num_classes=num_classes, cycle=1, mc_probs=mc)


def ref_top(scores: list[float], unlabeled: np.ndarray, budget: int) -> list[int]:
    """The budget highest float32 scores, equal ones by lower pool position: a sort of tuples."""
    order = sorted(range(len(scores)), key=lambda i: (-float(np.float32(scores[i])), int(unlabeled[i])))
    return [int(unlabeled[i]) for i in order[:budget]]


# --------------------------------------------------------------------------- loop references of the scores


def ref_margin(row: np.ndarray) -> float:
    top = sorted((float(v) for v in row), reverse=True)
    return 1.0 - (top[0] - top[1])


def ref_least_confidence(row: np.ndarray) -> float:
    return 1.0 - max(float(v) for v in row)


def ref_entropy(row: list[float]) -> float:
    return -sum(v * math.log(v) for v in row if v > 0)


def ref_bald(passes: np.ndarray) -> float:
    """H(mean over passes) - mean over passes of H, for one image's passes [T, C]."""
    t, c = passes.shape
    mean = [sum(float(passes[i, j]) for i in range(t)) / t for j in range(c)]
    return max(0.0, ref_entropy(mean) - sum(ref_entropy([float(v) for v in passes[i]]) for i in range(t)) / t)


REF_SCORE = {
    "margin": lambda view, i: ref_margin(view.probs[i]),
    "least-confidence": lambda view, i: ref_least_confidence(view.probs[i]),
    "uncertainty": lambda view, i: ref_entropy([float(v) for v in view.probs[i]]),
    "bald": lambda view, i: ref_bald(view.mc_probs[:, i]),
}


# --------------------------------------------------------------------------- margin, least confidence, BALD


@pytest.mark.parametrize("name", ["margin", "least-confidence", "bald"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_score_strategies_match_their_loop_reference(name, seed):
    view = random_view(seed=seed)
    ref = [REF_SCORE[name](view, i) for i in range(view.unlabeled.size)]
    for budget in (0, 1, 37, view.unlabeled.size):
        sel = select(name, view, budget, np.random.default_rng(0), PARAMS)
        assert sel.chosen.tolist() == ref_top(ref, view.unlabeled, budget)
        assert sel.scores == pytest.approx(np.array(ref), rel=1e-6, abs=1e-7)


def ref_class_balanced(scores: np.ndarray, predicted: np.ndarray, unlabeled: np.ndarray, labeled_counts: np.ndarray,
                       budget: int) -> list[int]:
    """Round robin by a loop: per class a queue by score (equal: lower position); each round visits the classes
    by (labels so far, class index) and takes the head of every non-empty queue."""
    queues = {c: sorted((i for i in range(len(scores)) if predicted[i] == c),
                        key=lambda i: (-float(scores[i]), int(unlabeled[i]))) for c in range(len(labeled_counts))}
    picks: list[int] = []
    while len(picks) < min(budget, len(scores)):
        for c in sorted(queues, key=lambda c: (int(labeled_counts[c]), c)):
            if queues[c] and len(picks) < budget:
                picks.append(int(unlabeled[queues[c].pop(0)]))
    return picks


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("base", ["margin", "uncertainty", "least-confidence"])
def test_class_balanced_matches_a_round_robin_loop(seed, base):
    view = random_view(seed=seed)
    params = PARAMS.updated("class-balanced", base=base)
    score = {"margin": margin_scores, "uncertainty": entropy, "least-confidence": least_confidence_scores}[base]
    ref_scores = score(view.probs).astype(np.float32)
    counts = np.bincount(view.labels, minlength=view.num_classes)
    for budget in (0, 1, 7, 37, view.unlabeled.size):
        sel = select("class-balanced", view, budget, np.random.default_rng(0), params)
        assert sel.chosen.tolist() == ref_class_balanced(ref_scores, view.probs.argmax(1), view.unlabeled, counts,
                                                         budget)
        assert sel.scores == pytest.approx(ref_scores, abs=1e-7)


def test_class_balanced_gives_a_rarely_predicted_class_its_share():
    # 8 images predicted class 0 (all uncertain), 2 predicted class 1 (confident), 1 predicted class 2 (confident):
    # margin alone takes four images of class 0; class-balanced takes one of each class first, the class with fewer
    # labels first in a round.
    probs = np.array([[0.5, 0.45, 0.05]] * 8 + [[0.1, 0.85, 0.05], [0.05, 0.9, 0.05], [0.05, 0.05, 0.9]],
                     dtype=np.float32)
    probs[:8, 0] += np.linspace(0, 0.04, 8, dtype=np.float32)  # class 0's margins differ: row 0 the least sure
    probs[:8, 1] -= np.linspace(0, 0.04, 8, dtype=np.float32)
    unl = np.arange(10, 21, dtype=np.int64)
    labels = np.array([0, 0, 1, 2, 2], dtype=np.int64)  # class 1 has the fewest labels
    view = PoolView(probs, None, np.arange(5, dtype=np.int64), unl, labels, 3, 1)
    assert select("margin", view, 4, np.random.default_rng(0), PARAMS).chosen.tolist() == [10, 11, 12, 13]
    chosen = select("class-balanced", view, 4, np.random.default_rng(0), PARAMS).chosen.tolist()
    # round 1: class 1 (1 label: its less sure image), class 0, class 2; round 2 again from class 1 (its other one)
    assert chosen == [18, 10, 20, 19]
    assert select("class-balanced", view, 6, np.random.default_rng(0), PARAMS).chosen.tolist()[4:] == [11, 12]


def test_margin_and_least_confidence_known_ranking():
    probs = np.array([
        [0.50, 0.49, 0.01],  # margin 0.01: first;  1 - p1 = 0.50: second
        [0.98, 0.01, 0.01],  # margin 0.97: last;   0.02: last
        [0.40, 0.30, 0.30],  # margin 0.10: second; 0.60: first
        [0.70, 0.20, 0.10],  # margin 0.50: third;  0.30: third
    ], dtype=np.float32)
    unl = np.array([9, 2, 5, 0], dtype=np.int64)
    view = PoolView(probs, None, np.array([1], np.int64), unl, np.array([0], np.int64), 3, 0)
    margin = select("margin", view, 4, np.random.default_rng(0), PARAMS)
    assert margin.chosen.tolist() == [9, 5, 0, 2]
    assert margin.scores == pytest.approx([0.99, 0.03, 0.9, 0.5], abs=1e-6)  # 1 - (p1 - p2)
    least = select("least-confidence", view, 4, np.random.default_rng(0), PARAMS)
    assert least.chosen.tolist() == [5, 9, 0, 2]
    assert least.scores == pytest.approx([0.5, 0.02, 0.6, 0.3], abs=1e-6)
    # equal scores: lower pool position first
    flat = PoolView(np.full((3, 2), 0.5, np.float32), None, np.zeros(0, np.int64), np.array([7, 3, 5], np.int64),
                    np.zeros(0, np.int64), 2, 0)
    for name in ("margin", "least-confidence"):
        assert select(name, flat, 2, np.random.default_rng(0), PARAMS).chosen.tolist() == [3, 5]
    assert margin_scores(np.eye(3)) == pytest.approx([0.0, 0.0, 0.0])
    assert least_confidence_scores(np.full((1, 4), 0.25)) == pytest.approx([0.75])


def test_bald_prefers_disagreeing_passes_over_aleatoric_uncertainty():
    mc = np.array([
        [[1.0, 0.0], [0.5, 0.5], [1.0, 0.0], [0.9, 0.1]],  # pass 1 of images A, B, C, D
        [[1.0, 0.0], [0.5, 0.5], [0.0, 1.0], [0.1, 0.9]],  # pass 2
    ], dtype=np.float32)
    unl = np.array([4, 1, 8, 6], dtype=np.int64)
    view = PoolView(mc.mean(0), None, np.zeros(0, np.int64), unl, np.zeros(0, np.int64), 2, 0, mc_probs=mc)
    sel = select("bald", view, 4, np.random.default_rng(0), PARAMS)
    # C: confident passes that disagree (log 2); D: less confident disagreement; A (sure) and B (both passes
    # 50/50: uncertainty of the data, not of the weights) have none: equal, lower position first
    assert sel.chosen.tolist() == [8, 6, 1, 4]
    h = lambda p: -p * math.log(p) - (1 - p) * math.log(1 - p)  # noqa: E731
    assert sel.scores == pytest.approx([0.0, 0.0, math.log(2), math.log(2) - h(0.9)], abs=1e-6)
    # entropy of the mean ranks B with C: it cannot tell them apart
    assert entropy(mc.mean(0)) == pytest.approx([0.0, math.log(2), math.log(2), math.log(2)], abs=1e-6)
    assert bald_scores(np.repeat(mc[:1], 5, axis=0)) == pytest.approx(np.zeros(4))  # identical passes: 0


def test_bald_chunks_do_not_change_the_scores(monkeypatch):
    from alctl.strategies import scores as sc

    view = random_view(n=300, passes=7, seed=5)
    ref = bald_scores(view.mc_probs)
    monkeypatch.setattr(sc, "_BALD_CHUNK", 50)
    assert np.array_equal(bald_scores(view.mc_probs), ref)


def test_bald_reads_torch_passes_and_checks_their_shape():
    view = random_view(seed=3)
    ref = select("bald", view, 10, np.random.default_rng(0), PARAMS)
    got = select("bald", dataclasses.replace(view, mc_probs=torch.from_numpy(view.mc_probs)), 10,
                 np.random.default_rng(0), PARAMS)
    assert np.array_equal(got.chosen, ref.chosen) and np.array_equal(got.scores, ref.scores)
    with pytest.raises(ValueError, match=r"PoolView.mc_probs: expected \[T >= 1, 180, C\]"):
        select("bald", dataclasses.replace(view, mc_probs=view.mc_probs[:, :5]), 3, np.random.default_rng(0), PARAMS)
    with pytest.raises(ValueError, match="PoolView.mc_probs: 4 columns for num_classes=5"):
        select("bald", dataclasses.replace(view, mc_probs=view.mc_probs[:, :, :4]), 3, np.random.default_rng(0),
               PARAMS)


# --------------------------------------------------------------------------- power sampling


def ref_power(view: PoolView, base: str, exponent: float, seed: int, budget: int) -> list[int]:
    """The same Gumbel keys (one rng.gumbel draw per unlabeled row), built and picked one by one in a loop."""
    gumbel = np.random.default_rng(seed).gumbel(size=view.unlabeled.size)
    keys = [exponent * math.log(max(REF_SCORE[base](view, i), TINY)) + float(gumbel[i])
            for i in range(view.unlabeled.size)]
    left = list(range(view.unlabeled.size))
    picks = []
    for _ in range(budget):
        best = max(left, key=lambda i: (keys[i], -int(view.unlabeled[i])))
        picks.append(int(view.unlabeled[best]))
        left.remove(best)
    return picks


@pytest.mark.parametrize("base", POWER_BASES)
@pytest.mark.parametrize("exponent", [0.5, 1.0, 4.0])
def test_power_matches_a_loop_over_the_same_gumbel_keys(base, exponent):
    view = random_view(seed=7)
    params = PARAMS.updated("power", base=base, exponent=exponent)
    for seed, budget in ((0, 25), (1, 1), (2, view.unlabeled.size)):
        sel = select("power", view, budget, np.random.default_rng(seed), params)
        assert sel.chosen.tolist() == ref_power(view, base, exponent, seed, budget)
        # scores are the keys: sorting them replays the picks
        order = np.lexsort((view.unlabeled, -sel.scores.astype(np.float64)))
        assert view.unlabeled[order[:budget]].tolist() == sel.chosen.tolist()


def test_power_frequencies_follow_score_to_the_exponent():
    # least confidence on two classes: scores 1 - p1 = 0.1, 0.2, 0.3, 0.4; weights score^2
    p1 = np.array([0.9, 0.8, 0.7, 0.6])
    probs = np.stack([p1, 1 - p1], axis=1).astype(np.float32)
    unl = np.array([3, 0, 2, 1], dtype=np.int64)
    view = PoolView(probs, None, np.zeros(0, np.int64), unl, np.zeros(0, np.int64), 2, 0)
    params = PARAMS.updated("power", base="least-confidence", exponent=2.0)
    w = (1 - probs[:, 0].astype(np.float64)) ** 2
    trials = 12000
    counts: dict[tuple[int, int], int] = {}
    for seed in range(trials):
        chosen = select("power", view, 2, np.random.default_rng(seed), params).chosen.tolist()
        key = (int(np.flatnonzero(unl == chosen[0])[0]), int(np.flatnonzero(unl == chosen[1])[0]))
        counts[key] = counts.get(key, 0) + 1
    # ordered pairs of sequential draws without replacement: P(i then j) = w_i / W * w_j / (W - w_i)
    chi2 = 0.0
    for i in range(4):
        for j in range(4):
            if i != j:
                expected = trials * w[i] / w.sum() * w[j] / (w.sum() - w[i])
                chi2 += (counts.get((i, j), 0) - expected) ** 2 / expected
    assert chi2 < 31.3  # chi-square, 11 degrees of freedom, p = 0.001


def test_power_large_exponent_is_the_top_b_and_zero_scores_come_last():
    view = random_view(seed=8)
    top = select("margin", view, 10, np.random.default_rng(0), PARAMS).chosen
    params = PARAMS.updated("power", base="margin", exponent=1e4)
    assert sorted(select("power", view, 10, np.random.default_rng(5), params).chosen.tolist()) == sorted(top.tolist())
    # one-hot predictions have score 0 (weight 0): drawn only after every positive one, keys stay finite
    probs = np.array([[1, 0], [0.6, 0.4], [0, 1], [0.9, 0.1]], dtype=np.float32)
    unl = np.arange(4, dtype=np.int64)
    onehot = PoolView(probs, None, np.zeros(0, np.int64), unl, np.zeros(0, np.int64), 2, 0)
    for base in ("margin", "least-confidence", "uncertainty"):
        params = PARAMS.updated("power", base=base, exponent=1.0)
        for seed in range(20):
            sel = select("power", onehot, 4, np.random.default_rng(seed), params)
            assert sorted(sel.chosen[:2].tolist()) == [1, 3] and np.isfinite(sel.scores).all()


# --------------------------------------------------------------------------- BADGE


def ref_badge(view: PoolView, budget: int, rng: np.random.Generator) -> list[int]:
    """BADGE's init_centers on the explicit gradient embeddings [n_u, C*D]: every distance recomputed per pick."""
    unl = view.unlabeled
    probs = view.probs.astype(np.float64)
    feats = view.features[unl].astype(np.float64)
    rows = []
    for i in range(unl.size):
        a = probs[i].copy()
        a[int(np.argmax(probs[i]))] -= 1.0
        rows.append(np.kron(a, feats[i]))
    g = np.stack(rows)  # [n_u, C * D]
    norms = np.sqrt((g**2).sum(axis=1))
    picks = [min(np.flatnonzero(norms == norms.max()).tolist(), key=lambda i: unl[i])][:budget]
    while len(picks) < budget:
        d2 = cdist(g, g[picks], "sqeuclidean").min(axis=1)
        d2[picks] = 0.0
        cum = np.cumsum(d2)
        if cum[-1] > 0:
            picks.append(int(np.searchsorted(cum, rng.random() * cum[-1], side="right")))
        else:
            picks.append(min(set(range(unl.size)) - set(picks), key=lambda i: unl[i]))
    return [int(unl[i]) for i in picks]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_badge_matches_explicit_embedding_reference(seed):
    view = random_view(n=150, n_labeled=15, num_classes=4, dim=6, seed=seed)
    for budget in (0, 1, 30, 135):
        sel = select("badge", view, budget, np.random.default_rng(seed + 10), PARAMS)
        assert sel.chosen.tolist() == ref_badge(view, budget, np.random.default_rng(seed + 10))
    # scores: the gradient embedding norms; the first pick has the largest
    a = gradient_residuals(view.probs)
    f_norm = np.linalg.norm(view.features[view.unlabeled], axis=1)
    assert sel.scores == pytest.approx(np.linalg.norm(a, axis=1) * f_norm, rel=1e-6)
    assert sel.chosen[0] == view.unlabeled[np.argmax(sel.scores)]


def test_badge_spreads_over_feature_clusters_and_starts_from_the_most_uncertain():
    rng = np.random.default_rng(4)
    n_clusters, per, dim = 4, 25, 16
    centers = np.eye(dim)[:n_clusters]
    feats = _normalise(np.repeat(centers, per, axis=0) + 1e-3 * rng.normal(size=(n_clusters * per, dim)))
    cluster = np.repeat(np.arange(n_clusters), per)
    perm = rng.permutation(n_clusters * per)  # pool positions shuffled against the clusters
    feats, cluster = feats[perm], cluster[perm]
    probs = _softmax(np.array([1.0, 0.5, 0.0]) + 0.01 * rng.normal(size=(feats.shape[0], 3)))
    most_uncertain = 37
    probs[most_uncertain] = [0.34, 0.33, 0.33]
    unl = np.arange(feats.shape[0], dtype=np.int64)
    view = PoolView(probs, feats, np.zeros(0, np.int64), unl, np.zeros(0, np.int64), 3, 0)
    for seed in range(10):
        sel = select("badge", view, n_clusters, np.random.default_rng(seed), PARAMS)
        assert sel.chosen[0] == most_uncertain
        assert sorted(cluster[sel.chosen].tolist()) == [0, 1, 2, 3]
    # every prediction one-hot: every embedding is 0, nothing to draw from: lowest positions, no repeat
    flat = dataclasses.replace(view, probs=np.eye(3, dtype=np.float32)[rng.integers(0, 3, feats.shape[0])],
                               unlabeled=unl[::-1].copy())
    assert select("badge", flat, 5, np.random.default_rng(0), PARAMS).chosen.tolist() == [0, 1, 2, 3, 4]


def test_kmeanspp_never_repeats_on_duplicates():
    rng = np.random.default_rng(9)
    a = rng.normal(size=(10, 3))
    f = _normalise(rng.normal(size=(10, 4))).astype(np.float64)
    a, f = np.concatenate([a, a]), np.concatenate([f, f])  # every embedding twice
    picks = kmeanspp_kron(a, f, 20, np.random.default_rng(1))
    assert np.unique(picks).size == 20
    assert set(picks[:10] % 10) == set(range(10))  # one of each pair before any duplicate


# --------------------------------------------------------------------------- TypiClust


def ref_typicality(x: np.ndarray) -> np.ndarray:
    """Typicality of each row of x within x: 1 / (mean distance to its min(20, m - 1) nearest others + 1e-5)."""
    m = x.shape[0]
    if m == 1:
        return np.zeros(1)
    d = cdist(x.astype(np.float64), x.astype(np.float64))
    k = min(20, m - 1)
    return np.array([1.0 / (np.sort(np.delete(d[i], i))[:k].sum() / k + 1e-5) for i in range(m)])


def ref_typiclust(features: np.ndarray, clusters: np.ndarray, labeled: np.ndarray, unlabeled: np.ndarray,
                  budget: int) -> list[int]:
    """The authors' loop: clusters by (labeled count, -size, id), one pick per visit, typicality recomputed among
    the cluster's unlabeled images left at each visit, the order restarted while picks are missing."""
    lab = [int(p) for p in labeled if clusters[p] >= 0]
    ids = sorted(set(clusters[unlabeled].tolist()) | set(clusters[lab].tolist()))
    n_lab = {c: sum(1 for p in lab if clusters[p] == c) for c in ids}
    size = {c: n_lab[c] + sum(1 for p in unlabeled if clusters[p] == c) for c in ids}
    order = sorted((c for c in ids if any(clusters[p] == c for p in unlabeled)), key=lambda c: (n_lab[c], -size[c], c))
    left = sorted(int(p) for p in unlabeled)
    picks: list[int] = []
    while len(picks) < budget:
        for c in order:
            if len(picks) == budget:
                break
            members = [p for p in left if clusters[p] == c]
            if not members:
                continue
            typ = ref_typicality(features[members])
            best = max(range(len(members)), key=lambda j: (typ[j], -members[j]))
            picks.append(members[best])
            left.remove(members[best])
    return picks


def _clustered_pool(seed: int, n: int = 400, n_clusters: int = 30, n_labeled: int = 40) -> tuple[np.ndarray, ...]:
    """Random features and random cluster ids of uneven sizes (singletons included), shuffled positions."""
    rng = np.random.default_rng(seed)
    feats = _normalise(rng.normal(size=(n, 8)))
    weights = rng.dirichlet(np.full(n_clusters, 0.5))
    clusters = rng.choice(n_clusters, size=n, p=weights).astype(np.int64) * 3 + 5  # ids need not be 0..K-1
    perm = rng.permutation(n).astype(np.int64)
    return feats, clusters, np.sort(perm[:n_labeled]), perm[n_labeled:]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_typiclust_pick_matches_the_authors_loop(seed):
    feats, clusters, lab, unl = _clustered_pool(seed)
    for budget in (0, 1, 12, 45, 120):  # 45 and 120: more picks than clusters, the order starts again
        picks, typ = cov.typiclust_pick(feats, clusters, lab, unl, budget)
        assert picks.tolist() == ref_typiclust(feats, clusters, lab, unl, budget)
    for c in np.unique(clusters[unl]):
        rows = np.flatnonzero(clusters[unl] == c)
        assert typ[rows] == pytest.approx(ref_typicality(feats[unl[rows]]), rel=1e-9)


def test_typicality_blocks_do_not_change_it(monkeypatch):
    feats, clusters, _, unl = _clustered_pool(3, n=300, n_clusters=4)
    ref = cov.typicality(feats[unl], clusters[unl])
    monkeypatch.setattr(cov, "_BLOCK", 40)  # row blocks inside one cluster's matrix
    assert cov.typicality(feats[unl], clusters[unl]) == pytest.approx(ref, rel=1e-9)
    for c in np.unique(clusters[unl]):
        rows = np.flatnonzero(clusters[unl] == c)
        assert ref[rows] == pytest.approx(ref_typicality(feats[unl[rows]]), rel=1e-9)


def test_typiclust_picks_the_core_of_the_largest_uncovered_clusters():
    rng = np.random.default_rng(11)
    sizes, dim = (40, 30, 20, 10), 8
    centers = 5.0 * np.eye(dim)[: len(sizes)]
    feats, blob = [], []
    for c, size in enumerate(sizes):
        pts = centers[c] + rng.normal(size=(size, dim))
        pts[size // 2] = centers[c]  # the blob's core: its most typical point
        feats.append(pts)
        blob += [c] * size
    feats, blob = np.concatenate(feats).astype(np.float32), np.array(blob, dtype=np.int64)
    perm = rng.permutation(blob.size)
    feats, blob = feats[perm], blob[perm]
    core = [int(np.flatnonzero(np.all(feats == centers[c].astype(np.float32), axis=1))[0]) for c in range(len(sizes))]
    labeled = np.flatnonzero(blob == 0)[:2]  # the largest blob is covered
    unl = np.setdiff1d(np.arange(blob.size), labeled)
    picks, _ = cov.typiclust_pick(feats, blob, labeled, unl, 3)
    assert picks.tolist() == [core[1], core[2], core[3]]  # largest uncovered first
    picks, _ = cov.typiclust_pick(feats, blob, labeled, unl, 4)
    assert picks.tolist() == [core[1], core[2], core[3], core[0]]  # then the covered one


def test_typiclust_select_is_seeded_by_rng():
    view = random_view(n=300, n_labeled=30, dim=8, seed=12)
    a = select("typiclust", view, 20, np.random.default_rng(3), PARAMS)
    b = select("typiclust", view, 20, np.random.default_rng(3), PARAMS)
    assert np.array_equal(a.chosen, b.chosen) and np.array_equal(a.scores, b.scores)
    nodes = np.concatenate([view.labeled, view.unlabeled])
    assign = cov.typiclust_clusters(view.features[nodes], view.labeled.size + 20, 7)
    assert assign.shape == (nodes.size,) and assign.min() >= 0 and assign.max() < view.labeled.size + 20
    assert np.array_equal(assign, cov.typiclust_clusters(view.features[nodes], view.labeled.size + 20, 7))


# --------------------------------------------------------------------------- ProbCover


def ref_probcover(features: np.ndarray, labeled: np.ndarray, unlabeled: np.ndarray, delta: float,
                  budget: int) -> list[int]:
    """Dense greedy: the full matrix of closed delta-balls, gains recounted for every candidate at every pick."""
    nodes = sorted(set(labeled.tolist()) | set(unlabeled.tolist()))
    x = features[nodes].astype(np.float64)
    ball = cdist(x, x, "sqeuclidean") <= delta**2
    where = {p: i for i, p in enumerate(nodes)}
    covered = np.zeros(len(nodes), dtype=bool)
    for p in labeled:
        covered |= ball[where[int(p)]]
    left = sorted(where[int(p)] for p in unlabeled)
    picks = []
    for _ in range(budget):
        gains = {i: int((ball[i] & ~covered).sum()) for i in left}
        best = max(left, key=lambda i: (gains[i], -i))
        picks.append(nodes[best])
        left.remove(best)
        covered |= ball[best]
    return picks


@pytest.mark.parametrize("seed,delta", [(0, 0.6), (1, 0.9), (2, 0.3), (3, 1.2)])
def test_probcover_matches_dense_greedy(seed, delta):
    view = random_view(n=250, n_labeled=25, dim=4, seed=seed)
    params = PARAMS.updated("probcover", delta=delta)
    for budget in (0, 1, 20, 225):
        sel = select("probcover", view, budget, np.random.default_rng(0), params)
        assert sel.chosen.tolist() == ref_probcover(view.features, view.labeled, view.unlabeled, delta, budget)
    # scores replay the picks: gains at their turn, non-increasing
    sel = select("probcover", view, 20, np.random.default_rng(0), params)
    order = np.lexsort((view.unlabeled, -sel.scores.astype(np.float64)))
    assert view.unlabeled[order[:20]].tolist() == sel.chosen.tolist()


def _dense_purity(x: np.ndarray, assign: np.ndarray, delta: float) -> float:
    """Share of closed delta-balls whose members all share the centre's cluster (a dense reference)."""
    ball = cdist(x, x) <= delta
    return float(np.mean([(assign[ball[i]] == assign[i]).all() for i in range(len(x))]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_purity_delta_is_the_largest_radius_with_95_percent_pure_balls(seed):
    from alctl.strategies.coverage import purity_delta, typiclust_clusters

    rng = np.random.default_rng(seed)
    x = _normalise(np.repeat(np.eye(6)[:3], 60, axis=0) + 0.35 * rng.normal(size=(180, 6))).astype(np.float32)
    delta = purity_delta(x, 3, seed=7)
    assign = typiclust_clusters(x, 3, 7)  # the same k-means
    d = cdist(x.astype(np.float64), x.astype(np.float64))
    r = np.where(assign[:, None] != assign[None, :], d, np.inf).min(axis=1)  # purity changes only at these radii
    assert _dense_purity(x, assign, delta) >= 0.95
    assert np.isclose(r, delta).any()
    assert _dense_purity(x, assign, float(r[r > delta + 1e-9].min())) < 0.95  # the next radius up breaks the rule
    # one cluster: every ball is pure
    assert purity_delta(x, 1, seed=0) == 2.0


def test_probcover_auto_delta_uses_the_purity_rule():
    from alctl.strategies.coverage import purity_delta

    view = random_view(n=200, n_labeled=10, dim=4, seed=4)
    auto = PARAMS.updated("probcover", delta="auto")
    sel = select("probcover", view, 15, np.random.default_rng(3), auto)
    nodes = np.union1d(view.labeled, view.unlabeled)
    delta = purity_delta(np.asarray(view.features)[nodes], max(2, view.num_classes),
                         int(np.random.default_rng(3).integers(0, 2**31 - 1)))
    fixed = select("probcover", view, 15, np.random.default_rng(3), PARAMS.updated("probcover", delta=delta))
    assert sel.chosen.tolist() == fixed.chosen.tolist()
    assert mf.Manifest.model_validate({"dataset": {"name": "digits"},
                                       "active": {"probcover": {"delta": "auto"}}}).active.probcover.delta == "auto"
    with pytest.raises(ManifestError, match="active.probcover.delta"):
        mf.parse({"dataset": {"name": "digits"}, "active": {"probcover": {"delta": "wide"}}})


def test_probcover_known_ranking():
    rng = np.random.default_rng(13)
    sizes, dim = (30, 20, 10, 5), 8
    feats = _normalise(np.repeat(np.eye(dim)[: len(sizes)], sizes, axis=0) + 0.01 * rng.normal(size=(sum(sizes), dim)))
    blob = np.repeat(np.arange(len(sizes)), sizes)
    perm = rng.permutation(blob.size)
    feats, blob = feats[perm], blob[perm]
    labeled = np.flatnonzero(blob == 0)[:1]  # one label covers the largest blob
    unl = np.setdiff1d(np.arange(blob.size), labeled)
    view = PoolView(None, feats, labeled, unl, np.zeros(1, np.int64), 4, 0)
    params = PARAMS.updated("probcover", delta=0.3)
    sel = select("probcover", view, 4, np.random.default_rng(0), params)
    # each pick covers its whole blob; equal gains: lower position; then every gain is 0: lowest position left
    first = [int(np.flatnonzero(blob == c)[0]) for c in (1, 2, 3)]
    rest = int(np.setdiff1d(unl, first)[0])
    assert sel.chosen.tolist() == [*first, rest]
    assert sel.scores[np.searchsorted(unl, sel.chosen)].tolist() == [20, 10, 5, 0]
    assert np.count_nonzero(sel.scores) == 3


def test_coverage_graph_balls_are_closed_and_exact_at_the_boundary():
    eps = 2.0**-20
    x = np.array([[0, 0], [0.5, 0], [1, 0], [0, 0.5 + eps], [0, 0]], dtype=np.float32)
    indptr, indices = cov.coverage_graph(x, 0.5)
    rows = [sorted(indices[indptr[i] : indptr[i + 1]].tolist()) for i in range(5)]
    assert rows == [[0, 1, 4], [0, 1, 2, 4], [1, 2], [3], [0, 1, 4]]


def test_probcover_chunks_do_not_change_the_answer_and_edges_are_capped(monkeypatch):
    view = random_view(n=300, n_labeled=20, dim=4, seed=14)
    params = PARAMS.updated("probcover", delta=0.8)
    ref = select("probcover", view, 30, np.random.default_rng(0), params)
    monkeypatch.setattr(cov, "_RANGE_ROWS", 7)
    monkeypatch.setattr(cov, "_GATHER", 50)
    got = select("probcover", view, 30, np.random.default_rng(0), params)
    assert np.array_equal(got.chosen, ref.chosen) and np.array_equal(got.scores, ref.scores)
    monkeypatch.setattr(cov, "_MAX_EDGES", 500)
    with pytest.raises(ValueError, match="lower active.probcover.delta"):
        select("probcover", view, 3, np.random.default_rng(0), params)


def test_probcover_memory_follows_the_edges_not_the_pool_squared():
    rng = np.random.default_rng(15)
    n = 12000
    feats = _normalise(rng.normal(size=(n, 8)))
    view = PoolView(None, feats, np.arange(100, dtype=np.int64), np.arange(100, n, dtype=np.int64),
                    np.zeros(100, np.int64), 10, 0)
    params = PARAMS.updated("probcover", delta=0.3)
    tracemalloc.start()
    try:
        sel = select("probcover", view, 50, np.random.default_rng(0), params)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sel.chosen.shape == (50,)
    assert peak < n * n * 4 / 20, peak  # a dense float32 distance matrix would take n * n * 4 bytes


# --------------------------------------------------------------------------- MC dropout passes (engine)


def _tiny_model(dropout: float) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(1, 10, width=0.0625, dropout=dropout)


def _images(n: int = 23) -> torch.Tensor:
    return torch.randint(0, 256, (n, 1, 8, 8), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)


def test_predict_mc_turns_on_dropout_only_and_restores_modes():
    images = _images()
    model = _tiny_model(0.0)  # no dropout: every pass is the eval-mode prediction (batch norm in eval mode)
    model.train()
    stats = {k: v.clone() for k, v in model.state_dict().items()}
    out = predict_mc(model, images, (0.5,), (0.25,), passes=3, batch_size=10)
    assert out.shape == (3, 23, 10) and out.dtype == torch.float32
    assert all(m.training for m in model.modules())  # modes restored
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in stats.items())  # running stats untouched
    ref, _ = predict(model, images, (0.5,), (0.25,), 10)
    for t in range(3):
        assert torch.allclose(out[t], ref, atol=1e-6)
    model = _tiny_model(0.5)
    model.eval()
    out = predict_mc(model, images, (0.5,), (0.25,), passes=4, batch_size=10)
    assert not any(m.training for m in model.modules())
    assert not torch.allclose(out[0], out[1])  # dropout on
    assert torch.allclose(out.sum(dim=2), torch.ones(4, 23), atol=1e-5)
    assert predict_mc(model, images[:0], (0.5,), (0.25,), passes=2).shape == (2, 0, 10)


def test_mc_dropout_probs_are_seeded_and_leave_the_global_generator_alone():
    config = mf.parse({"dataset": {"name": "digits"}, "train": {"eval_batch_size": 7, "device": "cpu"},
                       "active": {"strategy": "bald", "bald": {"passes": 3}}})
    ds = SimpleNamespace(mean=(0.5,), std=(0.25,))
    model, images = _tiny_model(0.5), _images()
    unl = np.array([3, 0, 9, 12, 20], dtype=np.int64)
    state = torch.get_rng_state()
    a = steps.mc_dropout_probs(config, 1, ds, model, images, unl, 2)
    assert torch.equal(torch.get_rng_state(), state)
    b = steps.mc_dropout_probs(config, 1, ds, model, images, unl, 2)
    c = steps.mc_dropout_probs(config, 1, ds, model, images, unl, 3)
    assert a.shape == (3, 5, 10) and torch.equal(a, b) and not torch.equal(a, c)
    # the rows are the unlabeled images, in `unlabeled` order (seen without dropout: every pass is predict's)
    plain = _tiny_model(0.0)
    plain.load_state_dict(model.state_dict())
    ref, _ = predict(plain, images, (0.5,), (0.25,))
    got = steps.mc_dropout_probs(config, 1, ds, plain, images, unl, 2)
    assert torch.allclose(got, ref[torch.from_numpy(unl)].expand(3, -1, -1), atol=1e-6)


# --------------------------------------------------------------------------- manifest and settings


def test_manifest_fields_and_strategy_params():
    m = mf.parse({"active": {"strategy": "power"}})
    assert (m.active.bald.passes, m.active.power.base, m.active.power.exponent, m.active.probcover.delta) == (
        20, "bald", 1.0, 0.75)
    p = settings.strategy_params(mf.parse({"active": {"power": {"base": "margin", "exponent": 3.0},
                                                      "probcover": {"delta": 0.5}}}))
    assert (p.of("power").base, p.of("power").exponent, p.of("probcover").delta) == ("margin", 3.0, 0.5)
    assert needs("power", p) == frozenset({"probs"}) and needs("power", settings.strategy_params(m)) == {"mc_probs"}
    assert tuple(mf.PowerConfig.model_fields["base"].annotation.__args__) == POWER_BASES
    for field in ("bald", "power", "probcover"):
        assert mf.ActiveConfig.model_fields[field].description


@pytest.mark.parametrize("section,message", [
    ({"bald": {"passes": 1}}, r"active\.bald\.passes: Input should be greater than or equal to 2"),
    ({"power": {"exponent": 0}}, r"active\.power\.exponent: Input should be greater than 0"),
    ({"power": {"base": "coreset"}}, r"active\.power\.base: Input should be 'bald', 'uncertainty', 'margin'"),
    ({"probcover": {"delta": 2.5}}, r"active\.probcover\.delta: must be a number in \(0, 2\] or auto, got 2\.5"),
    ({"probcover": {"radius": 1}}, r"active\.probcover\.radius: unknown key \(valid here: delta\)"),
])
def test_manifest_bounds(section, message):
    with pytest.raises(ManifestError, match=message):
        mf.parse({"active": section})


def test_bald_without_dropout_is_refused():
    for active in ({"strategy": "bald"}, {"strategy": "power", "power": {"base": "bald"}}):
        with pytest.raises(ManifestError, match="model.dropout is 0"):
            mf.parse({"active": active, "model": {"dropout": 0}})
    mf.parse({"active": {"strategy": "power", "power": {"base": "margin"}}, "model": {"dropout": 0}})


def test_a_sweep_over_every_strategy_validates():
    m = mf.parse({"dataset": {"name": "digits"}, "repetitions": 1, "sweep": {"active.strategy": list(NAMES)}})
    assert [t.config.active.strategy for t in mf.tasks(m)] == list(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_acquire_gives_each_strategy_what_it_needs(name):
    # the engine's acquisition step on an untrained tiny model: only the wiring (needs, MC passes, params) is tested
    config = mf.parse({"dataset": {"name": "digits"}, "train": {"eval_batch_size": 16, "device": "cpu"},
                       "active": {"strategy": name, "initial": 10, "budget": 6, "bald": {"passes": 3},
                                  "probcover": {"delta": 0.1}}, "semi": {"k": 5}})
    images = _images(40)
    labeled = np.arange(0, 40, 4, dtype=np.int64)
    unl = np.setdiff1d(np.arange(40), labeled)
    pool = SimpleNamespace(labeled_at=lambda cycle: labeled, unlabeled=unl, label=np.arange(40) % 10)
    ds = SimpleNamespace(mean=(0.5,), std=(0.25,), num_classes=10)
    model = _tiny_model(0.5)
    state = torch.get_rng_state()
    a = steps.acquire(config, 0, ds, pool, model, images, 1)
    b = steps.acquire(config, 0, ds, pool, model, images, 1)
    assert torch.equal(torch.get_rng_state(), state)
    assert a.chosen.shape == (6,) and np.isin(a.chosen, unl).all() and a.scores.shape == unl.shape
    assert np.array_equal(a.chosen, b.chosen) and np.array_equal(a.scores, b.scores)


def test_the_schema_and_the_engine_derive_each_strategys_section_from_the_catalog() -> None:
    from alctl.strategies import catalog, registry

    assert tuple(s.name for s in registry.STRATEGIES) == catalog.NAMES
    assert all(s.fn.__name__ == e.function.split(":")[1] for s, e in zip(registry.STRATEGIES, catalog.ENTRIES))
    sections = {name: f.annotation for name, f in mf.ActiveConfig.model_fields.items()
                if f.annotation in catalog.PARAMS.values()}
    assert sections == catalog.PARAMS  # active.<name> is the strategy's own model, nothing listed by hand
    m = mf.parse({"active": {"power": {"base": "margin"}}})
    p = settings.strategy_params(m)
    assert set(p.sections) == set(catalog.PARAMS) and p.of("power") is m.active.power
    assert catalog.COLD_START_NAMES == ("typiclust", "probcover")
