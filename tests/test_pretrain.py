"""DeepCluster pre-training: k-means, re-seeding, uniform sampling, encoder weights, resume, a short run on digits."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import normalized_mutual_info_score

from alctl import config as mf
from alctl.data import load_dataset
from alctl.engine import settings
from alctl.models import ConvLarge
from alctl.pretrain import (
    PretrainSpec,
    PretrainState,
    Probe,
    cluster_features,
    deepcluster,
    encoder_state,
    kmeans,
    load_encoder,
    pca_whiten,
    probe_accuracy,
    reseed_empty,
    uniform_cluster_sampler,
)


def _pspec(**kw: object) -> PretrainSpec:
    """The manifest's pretrain defaults (10 classes) with `kw` changed."""
    return dataclasses.replace(settings.pretrain_spec(mf.Manifest(), 10), **kw)


def _blobs(n_per: int, k: int, dim: int, spread: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalised Gaussian blobs around k random unit centers: features [k*n_per, dim] float32, labels [k*n_per]."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((k, dim))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    labels = np.repeat(np.arange(k), n_per)
    x = centers[labels] + spread * rng.standard_normal((len(labels), dim)) / math.sqrt(dim)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), labels


@pytest.fixture(scope="module")
def digits():
    """scikit-learn's digits as uint8 [N, 1, 8, 8] (train split)."""
    return load_dataset("digits")


# --------------------------------------------------------------------------- k-means


def test_kmeans_recovers_planted_clusters() -> None:
    x, labels = _blobs(200, 10, 32, 0.3, seed=0)
    res = kmeans(x, 10, 20, seed=3)
    assert res.assign.dtype == np.int64 and res.assign.shape == (len(x),)
    assert res.centroids.dtype == np.float32 and res.centroids.shape == (10, 32)
    assert normalized_mutual_info_score(labels, res.assign) > 0.9
    assert np.isfinite(res.loss) and res.loss > 0
    # loss is the mean squared distance to the assigned centroid
    expected = float(((x - res.centroids[res.assign]) ** 2).sum(1).mean())
    assert res.loss == pytest.approx(expected, rel=1e-5)
    again = kmeans(x, 10, 20, seed=3)
    np.testing.assert_array_equal(res.assign, again.assign)
    np.testing.assert_array_equal(res.centroids, again.centroids)


def test_kmeans_rejects_more_clusters_than_points() -> None:
    x, _ = _blobs(2, 3, 8, 0.1, seed=0)
    with pytest.raises(ValueError, match="k=7, n=6"):
        kmeans(x, 7, 5, seed=0)


def test_reseed_empty_splits_the_largest_cluster() -> None:
    x, labels = _blobs(30, 4, 16, 0.3, seed=1)
    # clusters 0 and 1 merged into id 0 (the largest), ids 1 and 4 empty, 2 and 3 as planted; K = 5
    assign = np.where(labels == 1, 0, labels).astype(np.int64)
    centroids = np.stack([x[assign == c].mean(0) if (assign == c).any() else np.zeros(16) for c in range(5)])
    centroids = centroids.astype(np.float32)
    rng = np.random.default_rng(0)
    new_assign, new_centroids, count = reseed_empty(x, assign, centroids, rng)
    assert count == 2
    sizes = np.bincount(new_assign, minlength=5)
    assert (sizes > 0).all() and sizes.sum() == len(x)
    # the untouched clusters keep their members and centroids
    for c in (2, 3):
        np.testing.assert_array_equal(new_assign == c, assign == c)
        np.testing.assert_array_equal(new_centroids[c], centroids[c])
    # re-seeded clusters came only out of the merged one, centroids are the means of their members
    assert set(np.unique(new_assign[assign == 0])) == {0, 1, 4}
    for c in range(5):
        np.testing.assert_allclose(new_centroids[c], x[new_assign == c].mean(0), rtol=1e-5, atol=1e-6)
    # input arrays untouched; nothing to do without empty clusters
    assert (np.bincount(assign, minlength=5) == 0).sum() == 2
    same_assign, same_centroids, zero = reseed_empty(x, new_assign, new_centroids, rng)
    assert zero == 0
    np.testing.assert_array_equal(same_assign, new_assign)


def test_reseed_empty_identical_points() -> None:
    x = np.ones((6, 4), np.float32)
    assign = np.zeros(6, np.int64)
    centroids = np.ones((2, 4), np.float32)
    new_assign, _, count = reseed_empty(x, assign, centroids, np.random.default_rng(0))
    assert count == 1 and np.bincount(new_assign, minlength=2).tolist() == [3, 3]


def test_pca_whiten_shape_and_norm() -> None:
    x, labels = _blobs(100, 5, 32, 0.3, seed=2)
    y = pca_whiten(x, 8)
    assert y.shape == (500, 8) and y.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), 1.0, rtol=1e-5)
    assert normalized_mutual_info_score(labels, kmeans(y, 5, 20, seed=0).assign) > 0.9
    with pytest.raises(ValueError, match="pca dimension"):
        pca_whiten(x, 64)


# --------------------------------------------------------------------------- sampler


def test_uniform_cluster_sampler_exact_counts() -> None:
    sizes = [50, 3, 0, 20, 7, 0]
    assign = np.repeat(np.arange(len(sizes)), sizes)
    np.random.default_rng(0).shuffle(assign)
    n_samples = 103  # 4 non-empty clusters: share 25, 3 of them get one more
    idx = uniform_cluster_sampler(assign, n_samples, torch.Generator().manual_seed(0))
    assert idx.dtype == torch.int64 and idx.shape == (n_samples,)
    drawn = np.bincount(assign[idx.numpy()], minlength=len(sizes))
    assert drawn[2] == 0 and drawn[5] == 0
    assert sorted(drawn[[0, 1, 3, 4]].tolist()) == [25, 26, 26, 26]
    # a cluster larger than its share: no repeats; a smaller one: every member share // size or +1 times
    members_0 = idx.numpy()[assign[idx.numpy()] == 0]
    assert len(np.unique(members_0)) == len(members_0)
    per_member_1 = np.bincount(idx.numpy()[assign[idx.numpy()] == 1], minlength=len(assign))[assign == 1]
    assert set(per_member_1.tolist()) <= {drawn[1] // 3, drawn[1] // 3 + 1} and per_member_1.sum() == drawn[1]
    # seeded and shuffled
    same = uniform_cluster_sampler(assign, n_samples, torch.Generator().manual_seed(0))
    other = uniform_cluster_sampler(assign, n_samples, torch.Generator().manual_seed(1))
    assert torch.equal(idx, same) and not torch.equal(idx, other)
    assert not torch.equal(idx, idx.sort().values)


def test_uniform_cluster_sampler_exact_division_and_small() -> None:
    assign = np.array([0, 0, 0, 1, 2, 2])
    idx = uniform_cluster_sampler(assign, 9, torch.Generator().manual_seed(3))
    assert np.bincount(assign[idx.numpy()]).tolist() == [3, 3, 3]
    assert sorted(idx[assign[idx.numpy()] == 0].tolist()) == [0, 1, 2]
    assert idx[assign[idx.numpy()] == 1].tolist() == [3, 3, 3]
    few = uniform_cluster_sampler(assign, 2, torch.Generator().manual_seed(3))
    assert len(np.unique(assign[few.numpy()])) == 2


# --------------------------------------------------------------------------- encoder weights


def test_encoder_state_loads_into_other_classifier() -> None:
    torch.manual_seed(0)
    src = ConvLarge(1, 50, width=0.125)
    with torch.no_grad():  # make the batch-norm statistics non-default too
        for name, buf in src.named_buffers():
            if name.endswith("running_mean"):
                buf.add_(0.5)
    saved = encoder_state(src)
    assert saved and not any(k.startswith("classifier") for k in saved)
    assert any(k.endswith("running_mean") for k in saved)

    torch.manual_seed(1)
    dst = ConvLarge(1, 10, width=0.125)
    fresh_head = {k: v.clone() for k, v in dst.classifier.state_dict().items()}
    load_encoder(dst, saved)
    dst_state = dst.state_dict()
    for k, v in saved.items():
        assert torch.equal(dst_state[k], v), k
    for k, v in dst.classifier.state_dict().items():
        assert torch.equal(v, fresh_head[k]), k
    assert dst.classifier.out_features == 10
    # the saved tensors are copies: training the source does not change them
    with torch.no_grad():
        next(src.parameters()).add_(1.0)
    assert torch.equal(dst_state[next(iter(saved))], saved[next(iter(saved))])


@pytest.mark.parametrize("other", [{"width": 0.25, "in_channels": 1}, {"width": 0.125, "in_channels": 3}])
def test_load_encoder_mismatch_names_key_and_shapes(other: dict) -> None:
    saved = encoder_state(ConvLarge(1, 10, width=0.125))
    dst = ConvLarge(other["in_channels"], 10, width=other["width"])
    with pytest.raises(ValueError) as info:
        load_encoder(dst, saved)
    msg = str(info.value)
    first = next(k for k in saved if tuple(saved[k].shape) != tuple(dst.state_dict()[k].shape))
    assert repr(first) in msg
    assert str(tuple(saved[first].shape)) in msg and str(tuple(dst.state_dict()[first].shape)) in msg


def test_load_encoder_missing_key() -> None:
    saved = encoder_state(ConvLarge(1, 10, width=0.125))
    saved.pop(next(iter(saved)))
    with pytest.raises(ValueError, match="missing"):
        load_encoder(ConvLarge(1, 10, width=0.125), saved)


# --------------------------------------------------------------------------- deepcluster


def _strip_seconds(state: PretrainState) -> list[dict]:
    """History without the wall-clock fields."""
    return [{k: v for k, v in dataclasses.asdict(s).items() if not k.startswith("seconds")} for s in state.history]


def test_resume_after_interrupted_epoch_matches_straight_run(digits) -> None:
    images = digits.train_images[:192]
    labels = digits.train_labels[:192].numpy()
    spec = _pspec(epochs=3, clusters=8, kmeans_iters=5, batch_size=32, translate=1, flip=True)
    kw = dict(mean=digits.mean, std=digits.std, spec=spec, seed=7, labels=labels)

    def fresh(init_seed: int) -> ConvLarge:
        torch.manual_seed(init_seed)
        return ConvLarge(1, 10, width=0.125, dropout=0.5)

    straight_model = fresh(0)
    straight = deepcluster(straight_model, images, **kw)
    assert straight.epoch == 3 and len(straight.history) == 3

    # interrupted run: stop after the first epoch, keep what on_epoch saw (as the pipeline's checkpoint would)
    captured: dict = {}

    def on_epoch(state: PretrainState, model: ConvLarge) -> None:
        captured["state"], captured["weights"] = state, encoder_state(model)

    part = deepcluster(fresh(0), images, **kw, on_epoch=on_epoch, should_stop=lambda: "state" in captured)
    assert part.epoch == 1 and captured["state"].epoch == 1

    # resume in a new model (another init, another head size) from the checkpoint
    buffers_before = [v["momentum_buffer"].clone() for v in captured["state"].body_optimizer["state"].values()]
    assert buffers_before
    resumed_model = fresh(123)
    load_encoder(resumed_model, captured["weights"])
    resumed = deepcluster(resumed_model, images, **kw, state=captured["state"])
    assert resumed.epoch == 3
    for k, v in encoder_state(straight_model).items():
        assert torch.equal(encoder_state(resumed_model)[k], v), k
    assert _strip_seconds(resumed) == _strip_seconds(straight)
    np.testing.assert_array_equal(resumed.previous_assign, straight.previous_assign)
    # the captured state was not mutated by the resumed run
    assert len(captured["state"].history) == 1
    buffers_after = [v["momentum_buffer"] for v in captured["state"].body_optimizer["state"].values()]
    assert all(torch.equal(a, b) for a, b in zip(buffers_before, buffers_after))

    # an exception in on_epoch leaves the last delivered state usable the same way
    seen: list[PretrainState] = []

    def crash(state: PretrainState, model: ConvLarge) -> None:
        seen.append(state)
        if state.epoch == 2:
            raise KeyboardInterrupt

    crash_model = fresh(0)
    with pytest.raises(KeyboardInterrupt):
        deepcluster(crash_model, images, **kw, on_epoch=crash)
    again = deepcluster(crash_model, images, **kw, state=seen[-1])
    for k, v in encoder_state(straight_model).items():
        assert torch.equal(encoder_state(crash_model)[k], v), k
    assert _strip_seconds(again) == _strip_seconds(straight)
    # nothing left to do once every epoch is finished
    assert deepcluster(crash_model, images, **kw, state=again).epoch == 3


def test_deepcluster_on_digits(digits) -> None:
    images, labels = digits.train_images, digits.train_labels.numpy()
    spec = _pspec(epochs=2, clusters=5 * digits.num_classes, kmeans_iters=10, batch_size=64, translate=1, pca=8)
    torch.manual_seed(0)
    model = ConvLarge(1, digits.num_classes, width=0.125)
    calls: list[int] = []
    state = deepcluster(
        model, images, digits.mean, digits.std, spec, seed=0, labels=labels,
        on_epoch=lambda s, m: calls.append(s.epoch),
    )
    assert calls == [1, 2] and state.epoch == 2
    assert state.previous_assign.shape == (len(images),) and state.previous_assign.dtype == np.int64
    assert model.classifier.out_features == 50
    first, second = state.history
    assert first.nmi_previous is None and 0.0 < second.nmi_previous <= 1.0
    for s in state.history:
        assert math.isfinite(s.kmeans_loss) and s.kmeans_loss > 0
        assert math.isfinite(s.train_loss) and s.train_loss > 0
        assert 0.0 < s.nmi_labels <= 1.0
        assert s.seconds >= s.seconds_kmeans >= 0.0
    feats = cluster_features(model, images[:100], digits.mean, digits.std, batch_size=32, pca=None)
    assert feats.shape == (100, model.feature_dim) and feats.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, rtol=1e-5)


def test_deepcluster_rejects_bad_settings(digits) -> None:
    model = ConvLarge(1, 10, width=0.125)
    images = digits.train_images[:20]
    with pytest.raises(ValueError, match="clusters"):
        deepcluster(model, images, digits.mean, digits.std, _pspec(epochs=1, clusters=21), seed=0)
    with pytest.raises(ValueError, match="pca"):
        deepcluster(model, images, digits.mean, digits.std, _pspec(epochs=1, clusters=4, pca=1000), seed=0)
    with pytest.raises(ValueError, match="uint8"):
        deepcluster(model, images.float(), digits.mean, digits.std, _pspec(epochs=1, clusters=4), seed=0)


def test_probe_measures_the_encoder_without_changing_its_training(digits) -> None:
    images, labels = digits.train_images[:256], digits.train_labels[:256].numpy()
    probe = Probe(digits.test_images[:100], digits.test_labels[:100].numpy(), labels, digits.num_classes)
    spec = _pspec(epochs=2, clusters=20, kmeans_iters=5, batch_size=32, translate=1)
    models = []
    for p in (None, probe):
        torch.manual_seed(0)
        models.append(ConvLarge(1, 10, width=0.125))
        state = deepcluster(models[-1], images, digits.mean, digits.std, spec, seed=3, labels=labels, probe=p)
    for k, v in encoder_state(models[0]).items():
        assert torch.equal(encoder_state(models[1])[k], v), k
    accs = [e.knn_accuracy for e in state.history]
    assert all(0.1 < a <= 1.0 for a in accs)  # far above chance (0.1) on digits
    assert accs[-1] == probe_accuracy(models[1], images, digits.mean, digits.std, probe, 64)


def test_passes_draw_that_many_pool_sizes_of_images_per_clustering(digits) -> None:
    images = digits.train_images[:96]
    seen: list[list[int]] = []
    for passes in (1, 3):
        torch.manual_seed(0)
        model = ConvLarge(1, 10, width=0.125)
        sizes: list[int] = []
        model.register_forward_hook(lambda m, args, out: sizes.append(args[0].shape[0]) if m.training else None)
        deepcluster(model, images, digits.mean, digits.std, _pspec(epochs=2, clusters=6, kmeans_iters=3,
                                                                      batch_size=32, passes=passes), seed=1)
        seen.append(sizes)
    assert seen[0] == [32] * 6 and seen[1] == [32] * 18  # 2 epochs x passes x 96 images in batches of 32


# --------------------------------------------------------------------------- the authors' recipe


def test_rethinking_recipe_keeps_one_head_and_one_cosine_nesterov_optimizer(digits, monkeypatch) -> None:
    images = digits.train_images[:128]
    heads: dict[str, list[int]] = {}
    states: dict[str, PretrainState] = {}
    for recipe in ("deepcluster", "rethinking"):
        torch.manual_seed(0)
        model = ConvLarge(1, 10, width=0.125)
        heads[recipe] = []
        spec = _pspec(epochs=3, clusters=6, kmeans_iters=3, batch_size=32, recipe=recipe, lr=0.05)
        states[recipe] = deepcluster(model, images, digits.mean, digits.std, spec, seed=1,
                                     on_epoch=lambda s, m, r=recipe: heads[r].append(id(m.classifier)))
        assert model.classifier.out_features == 6
        groups = states[recipe].body_optimizer["param_groups"]
        if recipe == "rethinking":
            assert len(set(heads[recipe])) == 1  # the same head from epoch to epoch
            assert len(groups[0]["params"]) == len(list(model.parameters()))  # head included
            assert groups[0]["nesterov"] and 0 < groups[0]["lr"] < 0.05 * 0.5 * (1 + math.cos(math.pi * 2.5 / 3))
        else:
            assert len(set(heads[recipe])) == 3  # a fresh head every epoch
            assert len(groups[0]["params"]) == len(list(model.parameters())) - len(list(model.classifier.parameters()))
            assert groups[0]["lr"] == 0.05 and not groups[0]["nesterov"]

    # images are drawn uniformly, not per cluster
    def no_cluster_sampling(*args: object, **kw: object) -> torch.Tensor:
        raise AssertionError("the rethinking recipe draws images uniformly")

    monkeypatch.setattr("alctl.pretrain.uniform_cluster_sampler", no_cluster_sampling)
    torch.manual_seed(0)
    deepcluster(ConvLarge(1, 10, width=0.125), images, digits.mean, digits.std,
                _pspec(epochs=1, clusters=6, kmeans_iters=3, batch_size=32, recipe="rethinking"), seed=1)
    with pytest.raises(AssertionError, match="uniformly"):
        deepcluster(ConvLarge(1, 10, width=0.125), images, digits.mean, digits.std,
                    _pspec(epochs=1, clusters=6, kmeans_iters=3, batch_size=32), seed=1)


def test_rethinking_recipe_resumes_exactly_from_the_whole_model(digits) -> None:
    images = digits.train_images[:128]
    spec = _pspec(epochs=3, clusters=6, kmeans_iters=3, batch_size=32, recipe="rethinking", translate=1, flip=True)
    torch.manual_seed(0)
    straight_model = ConvLarge(1, 10, width=0.125)
    straight = deepcluster(straight_model, images, digits.mean, digits.std, spec, seed=4)
    captured: dict = {}

    def on_epoch(state: PretrainState, model: ConvLarge) -> None:
        captured["state"] = state
        captured["weights"] = {k: v.clone() for k, v in model.state_dict().items()}  # the pipeline's checkpoint

    torch.manual_seed(0)
    deepcluster(ConvLarge(1, 10, width=0.125), images, digits.mean, digits.std, spec, seed=4, on_epoch=on_epoch,
                should_stop=lambda: "state" in captured)
    torch.manual_seed(99)
    resumed_model = ConvLarge(1, 10, width=0.125)
    resumed_model.reset_classifier(6)
    resumed_model.load_state_dict(captured["weights"])
    resumed = deepcluster(resumed_model, images, digits.mean, digits.std, spec, seed=4, state=captured["state"])
    for k, v in straight_model.state_dict().items():
        assert torch.equal(resumed_model.state_dict()[k], v), k
    assert _strip_seconds(resumed) == _strip_seconds(straight)
    with pytest.raises(ValueError, match="6-way head"):  # resuming into a model without its head is refused
        deepcluster(ConvLarge(1, 10, width=0.125), images, digits.mean, digits.std, spec, seed=4,
                    state=captured["state"])


def test_cluster_features_of_augmented_images(digits) -> None:
    torch.manual_seed(0)
    model = ConvLarge(1, 10, width=0.125)
    images = digits.train_images[:64]
    clean = cluster_features(model, images, digits.mean, digits.std, 32)
    same = cluster_features(model, images, digits.mean, digits.std, 32, augmentation=(0, False, torch.Generator()))
    np.testing.assert_array_equal(clean, same)
    a, b = (cluster_features(model, images, digits.mean, digits.std, 32,
                             augmentation=(2, True, torch.Generator().manual_seed(5))) for _ in range(2))
    np.testing.assert_array_equal(a, b)  # seeded
    assert not np.allclose(a, clean)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-5)
