"""DeepCluster (Caron et al. 2018; or the recipe of Siméoni et al.'s code), pure (no file I/O): k-means on features -> pseudo-classes -> train -> repeat.

Array contracts:
    images    uint8 [N, C, H, W] (on the training device), labels int64 [N] (only for reporting NMI)
    features  float32 [n, D], L2-normalised rows (whitened to [n, pca] first when `pca` is set)
    assign    int64 [n] cluster ids in [0, K); centroids float32 [K, D]
    samples   int64 [n_samples] row indices into images (torch, CPU)
Randomness comes only from `seed`: every epoch derives its generators from (seed, epoch), so a run resumed
from the state of epoch e continues exactly as an uninterrupted run would.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Literal, get_args

import faiss
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import normalized_mutual_info_score

from alctl.augment import augment, normalize
from alctl.knn import knn_vote
from alctl.models import ConvLarge
from alctl.train.loop import check_finite

CLASSIFIER_PREFIX = "classifier."

# tags of the per-epoch random streams (seed, epoch, tag)
_TAG_KMEANS, _TAG_RESEED, _TAG_TORCH, _TAG_SAMPLER, _TAG_FEATURES, _TAG_HEAD = 0, 1, 2, 3, 4, 5

Recipe = Literal["deepcluster", "rethinking"]  # see `deepcluster`
RECIPES: tuple[str, ...] = get_args(Recipe)


@dataclass(frozen=True)
class PretrainSpec:
    """DeepCluster settings, built from the manifest (`engine.settings.pretrain_spec`; `clusters` is the total K)."""

    epochs: int
    clusters: int  # K = clusters_per_class x number of classes
    kmeans_iters: int
    lr: float  # deepcluster: constant; rethinking: the start of a cosine ramp-down to 0 over the epochs
    batch_size: int
    passes: int  # images drawn per epoch = passes x N (one clustering each epoch)
    momentum: float
    weight_decay: float
    pca: int | None  # PCA-whiten features to this dimension before k-means; None = off
    translate: int  # pixels of random translation
    flip: bool
    eval_batch_size: int
    recipe: Recipe = "deepcluster"


@dataclass(frozen=True)
class KMeansResult:
    """Outcome of one k-means run (after empty clusters were re-seeded)."""

    assign: np.ndarray  # [n] int64
    centroids: np.ndarray  # [K, D] float32
    loss: float  # mean squared L2 distance of a point to its centroid
    reseeded: int  # empty clusters re-seeded after the last iteration


@dataclass
class EpochStats:
    """What one DeepCluster epoch reports."""

    epoch: int  # 0-based index of the epoch
    kmeans_loss: float  # mean squared distance to the assigned centroid
    nmi_previous: float | None  # NMI between this epoch's assignment and the previous one's
    nmi_labels: float | None  # NMI between clusters and true labels (when labels are given)
    reseeded: int  # empty clusters re-seeded
    train_loss: float  # mean cross-entropy on cluster ids over the epoch
    seconds: float  # wall-clock of the whole epoch
    seconds_kmeans: float  # wall-clock of k-means and re-seeding alone
    knn_accuracy: float | None = None  # the probe's accuracy after this epoch (see `Probe`), when one is given


@dataclass(frozen=True)
class Probe:
    """A diagnostic of the encoder for simulations: test images classified by a `PROBE_K`-nearest-neighbour vote
    over the pool's features and true labels. Never used for training."""

    images: torch.Tensor  # [m, C, H, W] uint8 on the training device
    labels: np.ndarray  # [m] int64 true classes
    pool_labels: np.ndarray  # [N] int64 true classes of the pool images
    num_classes: int


PROBE_K = 10  # neighbours of the probe's vote


def probe_accuracy(model: ConvLarge, pool: torch.Tensor, mean: Sequence[float], std: Sequence[float], probe: Probe,
                   batch_size: int) -> float:
    """Accuracy in [0, 1] of the probe's kNN vote on the model's L2-normalised features (eval mode, no RNG used)."""
    train = cluster_features(model, pool, mean, std, batch_size)
    test = cluster_features(model, probe.images, mean, std, batch_size)
    predicted = knn_vote(train, probe.pool_labels, test, PROBE_K, probe.num_classes)
    return float((predicted == probe.labels).mean())


@dataclass
class PretrainState:
    """What must be checkpointed (besides the encoder weights) to resume after an interrupted epoch."""

    epoch: int  # epochs finished
    body_optimizer: dict  # optimizer state_dict of the body (every parameter but the classifier; rethinking: all)
    previous_assign: np.ndarray | None  # [N] int64 assignment of the last finished epoch
    history: list[EpochStats] = field(default_factory=list)


# --------------------------------------------------------------------------- k-means


def kmeans(features: np.ndarray, k: int, iters: int, seed: int) -> KMeansResult:
    """Faiss k-means of features [n, D] float32 into k clusters (all points used, seeded), then empty clusters re-seeded."""
    x = np.ascontiguousarray(features, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"features must be 2-D [n, D], got shape {tuple(x.shape)}")
    n, d = x.shape
    if not 1 <= k <= n:
        raise ValueError(f"k-means needs 1 <= k <= n points, got k={k}, n={n}")
    if iters < 1:
        raise ValueError(f"k-means needs at least 1 iteration, got {iters}")
    km = faiss.Kmeans(
        d, k, niter=iters, seed=int(seed) & 0x7FFFFFFF, verbose=False,
        max_points_per_centroid=10_000_000,  # no subsampling (DeepCluster does the same)
        min_points_per_centroid=1,  # no warning for few points per centroid
    )
    km.train(x)
    _, nearest = km.index.search(x, 1)
    assign = nearest[:, 0].astype(np.int64)
    centroids = np.asarray(km.centroids, dtype=np.float32).reshape(k, d)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed) & 0x7FFFFFFF, _TAG_RESEED]))
    assign, centroids, count = reseed_empty(x, assign, centroids, rng)
    diff = x - centroids[assign]
    loss = float(np.einsum("ij,ij->i", diff, diff).sum(dtype=np.float64) / n)
    return KMeansResult(assign=assign, centroids=centroids, loss=loss, reseeded=count)


def reseed_empty(
    features: np.ndarray, assign: np.ndarray, centroids: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, int]:
    """Fill every empty cluster by splitting the currently largest one; returns new assign [n], centroids [K, D], count.

    The split seeds the empty cluster at a random member of the largest cluster, reassigns that cluster's members
    to the nearer of the two centroids and recomputes both as means (a random half split if one side stays empty).
    """
    x = np.asarray(features, dtype=np.float32)
    assign = np.asarray(assign, dtype=np.int64).copy()
    centroids = np.asarray(centroids, dtype=np.float32).copy()
    k = centroids.shape[0]
    if assign.shape != (x.shape[0],):
        raise ValueError(f"assign must have shape [{x.shape[0]}], got {tuple(assign.shape)}")
    counts = np.bincount(assign, minlength=k)
    if counts.shape[0] != k:
        raise ValueError(f"assign has cluster ids >= K={k}")
    empty = np.flatnonzero(counts == 0)
    if len(empty) and x.shape[0] < k:
        raise ValueError(f"cannot fill {k} clusters with {x.shape[0]} points")
    for e in empty:
        j = int(np.argmax(counts))  # has >= 2 members since n >= K and a cluster is empty
        members = np.flatnonzero(assign == j)
        pts = x[members]
        seed_pt = pts[rng.integers(len(members))]
        d_j = ((pts - centroids[j]) ** 2).sum(1)
        d_e = ((pts - seed_pt) ** 2).sum(1)
        to_e = d_e < d_j
        if to_e.all() or not to_e.any():
            to_e = np.zeros(len(members), dtype=bool)
            to_e[rng.permutation(len(members))[: len(members) // 2]] = True
        assign[members[to_e]] = e
        centroids[e] = pts[to_e].mean(0)
        centroids[j] = pts[~to_e].mean(0)
        counts[e] = int(to_e.sum())
        counts[j] -= counts[e]
    return assign, centroids, int(len(empty))


def pca_whiten(features: np.ndarray, dim: int) -> np.ndarray:
    """PCA-whiten features [n, D] to [n, dim] float32 (eigenvalue^-1/2 scaling, as faiss.PCAMatrix), rows L2-normalised."""
    x = np.asarray(features, dtype=np.float64)
    n, d = x.shape
    if not 1 <= dim <= d:
        raise ValueError(f"pca dimension must be in [1, {d}] (the feature dimension), got {dim}")
    x = x - x.mean(0, keepdims=True)
    cov = x.T @ x / max(n - 1, 1)
    evals, evecs = np.linalg.eigh(cov)  # ascending
    evals, evecs = evals[::-1][:dim], evecs[:, ::-1][:, :dim]
    evecs = evecs * np.where(evecs[np.abs(evecs).argmax(0), np.arange(dim)] < 0, -1.0, 1.0)  # deterministic signs
    eps = 1e-8 * max(float(evals[0]), 1e-30)
    y = (x @ evecs) / np.sqrt(np.clip(evals, 0.0, None) + eps)
    return _l2_normalise(y.astype(np.float32))


def _l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows of x [n, D] scaled to unit L2 norm (zero rows stay zero)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


# --------------------------------------------------------------------------- sampling and features


def uniform_cluster_sampler(assign: np.ndarray, n_samples: int, generator: torch.Generator) -> torch.Tensor:
    """Shuffled row indices [n_samples] int64, each non-empty cluster drawn n_samples // K_nonempty times (+1 for a random remainder).

    A cluster at least as large as its share is drawn without replacement; a smaller one repeats every member
    share // size times and a random share % size of them once more.
    """
    a = torch.as_tensor(np.asarray(assign, dtype=np.int64))
    if n_samples < 0:
        raise ValueError(f"n_samples must be >= 0, got {n_samples}")
    if a.numel() == 0:
        if n_samples:
            raise ValueError("cannot sample from an empty assignment")
        return torch.zeros(0, dtype=torch.int64)
    counts = torch.bincount(a)
    nonempty = torch.nonzero(counts).squeeze(1)
    k_ne = int(nonempty.numel())
    share = torch.zeros_like(counts)
    share[nonempty] = n_samples // k_ne
    extra = nonempty[torch.randperm(k_ne, generator=generator)[: n_samples % k_ne]]
    share[extra] += 1
    # random rank of every point inside its cluster: sort by (cluster, random key)
    keys = torch.rand(a.numel(), generator=generator, dtype=torch.float64)
    order = torch.argsort(a.double() * 2.0 + keys)  # cluster ids dominate, keys in [0, 1) break ties randomly
    sorted_a = a[order]
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(a.numel()) - starts[sorted_a]
    size, q = counts[sorted_a], share[sorted_a]
    copies = q // size + (rank < q % size).long()
    out = torch.repeat_interleave(order, copies)
    return out[torch.randperm(out.numel(), generator=generator)]


@torch.no_grad()
def cluster_features(
    model: ConvLarge,
    images: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 512,
    pca: int | None = None,
    augmentation: tuple[int, bool, torch.Generator] | None = None,
) -> np.ndarray:
    """Pooled features [n, D] float32 of uint8 images [n, C, H, W] in eval mode, L2-normalised (PCA-whitened to [n, pca] first if set).

    `augmentation` = (translate, flip, generator): the features of randomly translated / flipped images (the
    authors' code), instead of the clean images'."""
    model.eval()

    def batch(i: int) -> torch.Tensor:
        x = normalize(images[i : i + batch_size], mean, std)
        return x if augmentation is None else augment(x, augmentation[0], augmentation[1], augmentation[2])

    chunks = [model.features(batch(i)).float().cpu() for i in range(0, images.shape[0], batch_size)]
    feats = torch.cat(chunks).numpy() if chunks else np.zeros((0, model.feature_dim), np.float32)
    feats = _l2_normalise(feats)
    return pca_whiten(feats, pca) if pca is not None else feats


# --------------------------------------------------------------------------- weights


def encoder_state(model: ConvLarge) -> dict[str, torch.Tensor]:
    """Copies of every state tensor of the model except the classifier's (weights, batch-norm statistics)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if not k.startswith(CLASSIFIER_PREFIX)}


def encoder_problem(model: ConvLarge, weights: object) -> str | None:
    """Why `weights` cannot be `model`'s encoder (not a mapping, a key or shape mismatch, a value that is not a
    tensor, NaN or infinite values), or None when they fit."""
    if not isinstance(weights, dict):
        return f"encoder weights are a {type(weights).__name__}, not a mapping of tensors"
    own = {k: v for k, v in model.state_dict().items() if not k.startswith(CLASSIFIER_PREFIX)}
    given = {k: v for k, v in weights.items() if not str(k).startswith(CLASSIFIER_PREFIX)}
    missing = [k for k in own if k not in given]
    unexpected = [k for k in given if k not in own]
    if missing or unexpected:
        first = missing[0] if missing else unexpected[0]
        return (f"encoder weights do not match the model: {len(missing)} missing key(s), {len(unexpected)} unexpected "
                f"key(s), first {'missing' if missing else 'unexpected'}: {ascii(first)}")
    for k, v in own.items():
        if not isinstance(given[k], torch.Tensor):
            return f"encoder weight {k!r} is a {type(given[k]).__name__}, not a tensor"
        if tuple(given[k].shape) != tuple(v.shape):
            return (f"encoder weights do not match the model at {k!r}: saved shape {tuple(given[k].shape)}, "
                    f"model shape {tuple(v.shape)} (other width or channels?)")
        if given[k].is_floating_point() and not bool(torch.isfinite(given[k]).all()):
            return f"encoder weight {k!r} holds NaN or infinite values"
    return None


def load_encoder(model: ConvLarge, weights: dict[str, torch.Tensor]) -> None:
    """Load encoder weights into `model` in place, leaving its classifier untouched; weights that do not fit
    (`encoder_problem`: keys, shapes, non-tensors, NaN or infinite values) raise ValueError."""
    problem = encoder_problem(model, weights)
    if problem is not None:
        raise ValueError(problem)
    given = {k: v for k, v in weights.items() if not k.startswith(CLASSIFIER_PREFIX)}
    result = model.load_state_dict(given, strict=False)
    assert not result.unexpected_keys and all(k.startswith(CLASSIFIER_PREFIX) for k in result.missing_keys)


# --------------------------------------------------------------------------- training


def epoch_seed(seed: int, epoch: int, tag: int) -> int:
    """A 63-bit seed for one random stream of one epoch, derived from (seed, epoch, tag)."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, epoch, tag]).generate_state(2, np.uint64)[0] >> 1)


def _body_parameters(model: ConvLarge) -> list[torch.nn.Parameter]:
    """Every parameter but the classifier's, in a fixed order (the body optimizer's)."""
    return [p for n, p in model.named_parameters() if not n.startswith(CLASSIFIER_PREFIX)]


@contextmanager
def seeded_global_rng(device: torch.device, seed: int) -> Iterator[None]:
    """Seed torch's global RNG (dropout, layer init) for the block, restoring the caller's RNG state afterwards."""
    devices = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def check_pool(images: torch.Tensor, labels: np.ndarray | None) -> np.ndarray | None:
    """Check pre-training's inputs: uint8 images [N, C, H, W] and optional labels [N]; the labels flattened."""
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"images must be uint8 [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
    if labels is None:
        return None
    labels = np.asarray(labels).reshape(-1)
    if labels.shape[0] != images.shape[0]:
        raise ValueError(f"labels must have shape [{images.shape[0]}], got {labels.shape}")
    return labels


def deepcluster(
    model: ConvLarge,
    images: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    spec: PretrainSpec,
    seed: int,
    *,
    labels: np.ndarray | None = None,
    state: PretrainState | None = None,
    on_epoch: Callable[[PretrainState, ConvLarge], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    probe: Probe | None = None,
) -> PretrainState:
    """Run (or resume from `state`) DeepCluster on uint8 images [N, C, H, W]; on_epoch is called after every finished epoch (the pipeline checkpoints there).

    The model must be on the images' device; it ends with a K-way head (spec.clusters outputs). spec.recipe:

    - deepcluster (Caron et al. 2018): a fresh head every epoch with its own momentum-free SGD, the body's SGD at
      a constant lr, images drawn uniformly over the clusters, k-means on the features of clean images;
    - rethinking (the code of Siméoni et al.): one Nesterov SGD over every weight with a cosine ramp-down of the
      lr over the epochs, the head kept from epoch to epoch, images drawn uniformly (passes shuffled passes over
      the pool), k-means on the features of augmented images.

    should_stop is checked before each epoch; the returned state is that of the last finished epoch. A loss or
    weights that become NaN or infinite raise FloatingPointError naming the epoch, before on_epoch sees it. Labels int64 [N] are only used to report NMI, and `probe` only to measure the encoder after
    every epoch (EpochStats.knn_accuracy); neither is used for training.
    """
    labels = check_pool(images, labels)
    n = images.shape[0]
    k = spec.clusters
    if not 1 <= k <= n:
        raise ValueError(f"pretrain clusters must be in [1, {n}] (the number of images), got {k}")
    if spec.pca is not None and not 1 <= spec.pca <= model.feature_dim:
        raise ValueError(f"pretrain pca must be in [1, {model.feature_dim}] (the feature dimension), got {spec.pca}")
    if spec.recipe not in RECIPES:
        raise ValueError(f"pretrain recipe must be one of {RECIPES}, got {spec.recipe!r}")
    device = images.device
    rethinking = spec.recipe == "rethinking"
    if rethinking and (state is None or state.epoch == 0):
        with seeded_global_rng(device, epoch_seed(seed, 0, _TAG_HEAD)):
            model.reset_classifier(k)  # one K-way head for the whole run
    if rethinking and model.num_classes != k:
        raise ValueError(f"resuming the rethinking recipe needs the model's {k}-way head, it has {model.num_classes}")

    body_opt = torch.optim.SGD(  # rethinking: the one optimizer of every weight, head included
        list(model.parameters()) if rethinking else _body_parameters(model), lr=spec.lr, momentum=spec.momentum,
        nesterov=rethinking and spec.momentum > 0, weight_decay=spec.weight_decay,
    )
    if state is None:
        state = PretrainState(epoch=0, body_optimizer=copy.deepcopy(body_opt.state_dict()), previous_assign=None)
    else:
        body_opt.load_state_dict(copy.deepcopy(state.body_optimizer))  # load_state_dict would alias its tensors
        state = replace(state, history=list(state.history))

    for epoch in range(state.epoch, spec.epochs):
        if should_stop is not None and should_stop():
            break
        t0 = time.perf_counter()
        feature_augmentation = None
        if rethinking:
            feature_augmentation = (spec.translate, spec.flip,
                                    torch.Generator().manual_seed(epoch_seed(seed, epoch, _TAG_FEATURES)))
        feats = cluster_features(model, images, mean, std, spec.eval_batch_size, spec.pca, feature_augmentation)
        t1 = time.perf_counter()
        km = kmeans(feats, k, spec.kmeans_iters, epoch_seed(seed, epoch, _TAG_KMEANS))
        seconds_kmeans = time.perf_counter() - t1
        del feats

        generator = torch.Generator().manual_seed(epoch_seed(seed, epoch, _TAG_SAMPLER))
        if rethinking:
            order = torch.cat([torch.randperm(n, generator=generator) for _ in range(spec.passes)])
        else:
            order = uniform_cluster_sampler(km.assign, n * spec.passes, generator)
        targets = torch.from_numpy(km.assign).to(device)
        steps = max(1, math.ceil(n * spec.passes / spec.batch_size))
        batches = torch.tensor_split(order, steps)  # sizes differ by at most one: no tiny last batch

        with seeded_global_rng(device, epoch_seed(seed, epoch, _TAG_TORCH)):
            head_opt = None
            if not rethinking:
                model.reset_classifier(k)  # a fresh K-way head, initialised from (seed, epoch)
                head_opt = torch.optim.SGD(  # fresh each epoch; no momentum, as DeepCluster's top-layer optimizer
                    model.classifier.parameters(), lr=spec.lr, weight_decay=spec.weight_decay
                )
            model.train()
            total, count = 0.0, 0
            for step, b in enumerate(batches):
                if rethinking:
                    t = (epoch + step / len(batches)) / spec.epochs
                    for group in body_opt.param_groups:
                        group["lr"] = spec.lr * 0.5 * (1.0 + math.cos(math.pi * t))
                b = b.to(device)
                x = augment(normalize(images[b], mean, std), spec.translate, spec.flip, generator)
                logits, _ = model(x)
                loss = F.cross_entropy(logits, targets[b])
                body_opt.zero_grad(set_to_none=True)
                if head_opt is not None:
                    head_opt.zero_grad(set_to_none=True)
                loss.backward()
                body_opt.step()
                if head_opt is not None:
                    head_opt.step()
                total += float(loss.detach()) * b.numel()
                count += b.numel()
        check_finite(model, not math.isfinite(total), epoch, spec.epochs)  # FloatingPointError when it diverged

        prev = state.previous_assign
        stats = EpochStats(
            epoch=epoch,
            kmeans_loss=km.loss,
            nmi_previous=None if prev is None else float(normalized_mutual_info_score(prev, km.assign)),
            nmi_labels=None if labels is None else float(normalized_mutual_info_score(labels, km.assign)),
            reseeded=km.reseeded,
            train_loss=total / max(count, 1),
            seconds=time.perf_counter() - t0,
            seconds_kmeans=seconds_kmeans,
            knn_accuracy=None if probe is None else probe_accuracy(model, images, mean, std, probe,
                                                                   spec.eval_batch_size),
        )
        state = PretrainState(
            epoch=epoch + 1,
            body_optimizer=copy.deepcopy(body_opt.state_dict()),
            previous_assign=km.assign,
            history=[*state.history, stats],
        )
        if on_epoch is not None:
            on_epoch(state, model)
    return state
