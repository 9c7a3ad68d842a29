"""Runtime settings of the pure modules, built from the manifest's sections (the only home of their defaults)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from alctl import config as mf
from alctl import runtime
from alctl.augment import view_spec
from alctl.pretrain import PretrainSpec
from alctl.simclr import SimclrSpec
from alctl.propagate.graph import GraphSpec
from alctl.strategies import StrategyParams
from alctl.strategies.catalog import PARAMS as STRATEGY_PARAMS
from alctl.train.compute import FP32, Compute
from alctl.train.spec import Consistency, Semi, Targets, TrainSpec

_COMPUTE_FIELDS = {"device", "precision", "channels_last", "compile"}
ImageShape = mf.ImageShape


def compute(t: mf.TrainConfig, device: torch.device) -> Compute:
    """How training, evaluation and feature passes run on `device` (train.precision, channels_last, compile
    resolved there; UserError for a precision the device cannot run)."""
    return Compute(precision=runtime.resolve_precision(t.precision, device),
                   channels_last=runtime.resolve_channels_last(t.channels_last, device), compile=t.compile)


def train_spec(t: mf.TrainConfig, device: torch.device | None = None, shape: ImageShape = (1, 32, 32)) -> TrainSpec:
    """TrainSpec from the manifest's train section for images of `shape` (translate and flip resolved for it);
    its compute resolved for `device` (None: plain fp32)."""
    fields = t.model_dump(exclude=_COMPUTE_FIELDS | {"translate", "flip"})
    return TrainSpec(**fields, translate=mf.translate(t, shape), flip=mf.flip(t, shape),
                     compute=FP32 if device is None else compute(t, device))


def graph_spec(s: mf.SemiConfig) -> GraphSpec:
    """The kNN graph and propagation settings of the manifest's semi section."""
    return GraphSpec(k=s.k, gamma=s.gamma, alpha=s.alpha, tol=s.tol, max_iter=s.max_iter, knn=s.knn)


def strategy_params(config: mf.Manifest) -> StrategyParams:
    """What the acquisition functions read from the manifest: each strategy's own section (active.<name>, for every
    strategy the catalog gives parameters) and the semi section's graph (jLP). CEAL's weight and BALD's passes
    are read by the engine itself (`cycle.CycleTraining`, `steps.acquire`)."""
    return StrategyParams(graph=graph_spec(config.semi),
                          sections={name: getattr(config.active, name) for name in STRATEGY_PARAMS})


def pretrain_spec(config: mf.Manifest, num_classes: int, shape: ImageShape = (1, 32, 32)) -> PretrainSpec:
    """DeepCluster settings: the pretrain section, K = clusters_per_class x classes, the train section's
    augmentation (resolved for images of `shape`) and evaluation batch."""
    p, t = config.pretrain, config.train
    return PretrainSpec(
        epochs=p.epochs, clusters=p.clusters_per_class * num_classes, kmeans_iters=p.kmeans_iters, lr=p.lr,
        batch_size=p.batch_size, passes=p.passes, momentum=p.momentum, weight_decay=p.weight_decay, pca=p.pca,
        translate=mf.translate(t, shape), flip=mf.flip(t, shape), eval_batch_size=t.eval_batch_size, recipe=p.recipe,
    )


def simclr_spec(config: mf.Manifest, num_classes: int, shape: ImageShape, pool: int) -> SimclrSpec:
    """SimCLR settings: the pretrain.simclr section (epochs resolved for a pool of `pool` images), the views for
    images of `shape` (`augment.view_spec`, flips as train.flip resolves), k-means into as many clusters as classes
    for the NMI report."""
    s = config.pretrain.simclr
    return SimclrSpec(
        epochs=mf.simclr_epochs(s, pool), batch_size=s.batch_size, lr=s.lr, weight_decay=s.weight_decay, temperature=s.temperature,
        projection_dim=s.projection_dim, views=view_spec(max(shape[1], shape[2]), shape[0], mf.flip(config.train, shape)),
        clusters=num_classes, eval_batch_size=config.train.eval_batch_size,
    )


def semi_spec(config: mf.Manifest, refresh: Callable[[int], Targets], shape: ImageShape = (1, 32, 32)) -> Semi:
    """How the unlabeled images enter training (semi section), `refresh(epoch)` giving the targets: label
    propagation's pseudo-labels, or with semi.method fixmatch the unlabeled images and FixMatch's settings (its
    strong views: `augment.view_spec` for images of `shape`, flips as train.flip resolves)."""
    s = config.semi
    consistency = None
    if s.method == "fixmatch":
        strong = view_spec(max(shape[1], shape[2]), shape[0], mf.flip(config.train, shape))
        consistency = Consistency(threshold=s.fixmatch.threshold, weight=s.fixmatch.weight, strong=strong,
                                  flexible=s.fixmatch.flexible)
    return Semi(refresh=refresh, every=s.every, warmup=s.warmup, batch_size=s.batch_size,
                labeled_per_batch=s.labeled_per_batch, unlabeled_per_epoch=s.unlabeled_per_epoch,
                phase2_epochs=s.phase2_epochs, phase2_lr=s.phase2_lr, consistency=consistency,
                prior_epochs=s.fixmatch.prior_epochs if consistency is not None else 0)
