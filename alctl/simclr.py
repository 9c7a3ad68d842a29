"""SimCLR (Chen et al. 2020) contrastive pre-training of the paper's network on the pool, pure (no file I/O); BYOL
(Grill et al. 2020) on the same loop, views and report.

Two random views of every image (`augment.views`) go through the network's body and a projection head. SimCLR
(`spec.objective: simclr`): the NT-Xent loss (lightly's `NTXentLoss`, temperature `spec.temperature`) pulls the
two views of one image together and pushes the other 2(b - 1) images of the batch away. BYOL (`byol`): no
negatives; a predictor on the online projection regresses a momentum teacher's projection of the other view
(lightly's BYOL heads and negative cosine similarity), the teacher an exponential moving average of the online
body and head. The heads (and the teacher) are dropped afterwards: the encoder is the body, as DeepCluster's is.

Array contracts:
    images    uint8 [N, C, H, W] on the training device; labels int64 [N] (only to report NMI)
    features  float32 [N, D], L2-normalised rows (the network's pooled features)
Randomness comes only from `seed`: epoch e draws from generators seeded by (seed, e), so resuming from the state
after epoch e continues exactly as an uninterrupted run would. Dropout is off while pre-training (SimCLR has none).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import torch
from lightly.loss import NegativeCosineSimilarity, NTXentLoss
from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead, SimCLRProjectionHead
from lightly.models.utils import update_momentum
from sklearn.metrics import normalized_mutual_info_score
from torch import nn

from alctl.augment import ViewSpec, views
from alctl.models import ConvLarge
from alctl.pretrain import (EpochStats, Probe, check_pool, cluster_features, epoch_seed, kmeans, probe_accuracy,
                            seeded_global_rng)
from alctl.train.loop import check_finite

# tags of the per-epoch random streams (seed, epoch, tag); 100+ keeps them apart from DeepCluster's
_TAG_ORDER, _TAG_VIEWS, _TAG_KMEANS, _TAG_HEAD = 100, 101, 102, 103


@dataclass(frozen=True)
class SimclrSpec:
    """SimCLR settings, built from the manifest (`engine.settings.simclr_spec`)."""

    epochs: int  # passes over the pool
    batch_size: int  # images per step (2 x batch_size views)
    lr: float  # AdamW's initial learning rate, cosine ramp-down to 0 over every step
    weight_decay: float
    temperature: float  # NT-Xent temperature
    projection_dim: int  # output of the projection head (its hidden layer has the feature dimension)
    views: ViewSpec  # the augmentation between the two views
    clusters: int  # k-means clusters of the per-epoch NMI report (the number of classes)
    eval_batch_size: int
    objective: Literal["simclr", "byol"] = "simclr"  # NT-Xent | BYOL (predictor + momentum teacher)
    momentum: float = 0.99  # byol: the teacher's momentum at the first step, cosine up to 1 at the last


@dataclass
class SimclrState:
    """What must be checkpointed besides the encoder weights to resume after an interrupted run."""

    epoch: int  # epochs finished
    optimizer: dict  # AdamW state_dict over the body and the head
    head: dict  # the projection head's state_dict (byol: projection, predictor and teacher)
    history: list[EpochStats] = field(default_factory=list)


def projection_head(feature_dim: int, projection_dim: int) -> nn.Module:
    """SimCLR's projection head: feature_dim -> feature_dim (BN, ReLU) -> projection_dim (lightly's module)."""
    return SimCLRProjectionHead(feature_dim, feature_dim, projection_dim)


class _Ntxent(nn.Module):
    """SimCLR's objective: the projection head and NT-Xent; its state_dict is the head's."""

    def __init__(self, model: ConvLarge, spec: SimclrSpec) -> None:
        super().__init__()
        self.head = projection_head(model.feature_dim, spec.projection_dim)
        self.loss_fn = NTXentLoss(temperature=spec.temperature)

    def saved(self) -> nn.Module:
        """The module whose state_dict is checkpointed."""
        return self.head

    def trained(self) -> list[nn.Parameter]:
        """Parameters the optimizer updates besides the body's."""
        return list(self.head.parameters())

    def loss(self, model: ConvLarge, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
        """NT-Xent of the two views' projections; v1, v2 float [b, C, H, W]."""
        z = self.head(model.features(torch.cat([v1, v2])))
        return self.loss_fn(z[: len(v1)], z[len(v1):])

    def after_step(self, model: ConvLarge, t: float) -> None:
        """Nothing to do after an optimizer step."""


class _Byol(nn.Module):
    """BYOL's objective: online projection + predictor, a momentum teacher (body + projection), symmetric
    negative cosine similarity."""

    def __init__(self, model: ConvLarge, spec: SimclrSpec) -> None:
        super().__init__()
        d, hidden = model.feature_dim, 4 * model.feature_dim
        self.projection = BYOLProjectionHead(d, hidden, spec.projection_dim)
        self.predictor = BYOLPredictionHead(spec.projection_dim, hidden, spec.projection_dim)
        self.teacher_body = copy.deepcopy(model)
        self.teacher_projection = copy.deepcopy(self.projection)
        for p in [*self.teacher_body.parameters(), *self.teacher_projection.parameters()]:
            p.requires_grad_(False)
        self.momentum = spec.momentum
        self.loss_fn = NegativeCosineSimilarity()

    def saved(self) -> nn.Module:
        """The module whose state_dict is checkpointed (heads and teacher)."""
        return self

    def trained(self) -> list[nn.Parameter]:
        """Parameters the optimizer updates besides the body's (the teacher follows by momentum)."""
        return [*self.projection.parameters(), *self.predictor.parameters()]

    def loss(self, model: ConvLarge, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
        """Symmetric BYOL loss: each view's prediction against the teacher's projection of the other."""
        n = len(v1)
        p = self.predictor(self.projection(model.features(torch.cat([v1, v2]))))
        with torch.no_grad():
            z = self.teacher_projection(self.teacher_body.features(torch.cat([v2, v1])))
        return 0.5 * (self.loss_fn(p[:n], z[:n]) + self.loss_fn(p[n:], z[n:]))

    def after_step(self, model: ConvLarge, t: float) -> None:
        """Teacher <- m x teacher + (1 - m) x online, m cosine from spec.momentum to 1 over the run (t in [0, 1])."""
        m = 1.0 - (1.0 - self.momentum) * 0.5 * (1.0 + math.cos(math.pi * t))
        update_momentum(model, self.teacher_body, m)
        update_momentum(self.projection, self.teacher_projection, m)


_OBJECTIVES: dict[str, type[_Ntxent] | type[_Byol]] = {"simclr": _Ntxent, "byol": _Byol}


@contextmanager
def _no_dropout(model: nn.Module) -> Iterator[None]:
    """Dropout layers of `model` set to p = 0 inside the block, restored after."""
    layers = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    saved = [m.p for m in layers]
    for m in layers:
        m.p = 0.0
    try:
        yield
    finally:
        for m, p in zip(layers, saved):
            m.p = p


def check_spec(spec: SimclrSpec, n: int) -> None:
    """ValueError for settings SimCLR cannot run with on a pool of n images."""
    if spec.epochs < 1 or spec.batch_size < 2 or spec.projection_dim < 1 or spec.eval_batch_size < 1:
        raise ValueError("simclr: epochs, projection_dim and eval_batch_size must be >= 1 and batch_size >= 2")
    if not (spec.lr > 0 and spec.temperature > 0 and spec.weight_decay >= 0):
        raise ValueError(f"simclr: lr and temperature must be > 0, weight_decay >= 0, got {spec.lr}, "
                         f"{spec.temperature}, {spec.weight_decay}")
    if spec.objective not in _OBJECTIVES or not 0 <= spec.momentum < 1:
        raise ValueError(f"simclr: objective must be one of {sorted(_OBJECTIVES)} and momentum in [0, 1), got"
                         f" {spec.objective!r}, {spec.momentum}")
    if n < 2:
        raise ValueError(f"simclr: needs at least 2 images, got {n}")
    if not 1 <= spec.clusters <= n:
        raise ValueError(f"simclr: clusters must be in [1, {n}], got {spec.clusters}")


def simclr(
    model: ConvLarge,
    images: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    spec: SimclrSpec,
    seed: int,
    *,
    labels: np.ndarray | None = None,
    state: SimclrState | None = None,
    on_epoch: Callable[[SimclrState, ConvLarge], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    probe: Probe | None = None,
) -> SimclrState:
    """Run (or resume from `state`) SimCLR on uint8 images [N, C, H, W] with `model` on their device; on_epoch is
    called after every finished epoch (the engine checkpoints there), should_stop before each.

    Each epoch is a shuffled pass in batches of spec.batch_size (the last partial batch dropped when another
    remains); AdamW over the body and the head, lr cosine over all steps. After each epoch: the NT-Xent loss,
    a k-means of the features into spec.clusters (its loss, and the NMI with `labels` when given) and the
    `probe`'s kNN accuracy (when given): the same report as DeepCluster's. A non-finite loss or weights raise
    FloatingPointError naming the epoch, before on_epoch sees it.
    """
    labels = check_pool(images, labels)
    n = int(images.shape[0])
    check_spec(spec, n)
    device = images.device
    batch = min(spec.batch_size, n)
    steps_per_epoch = max(1, n // batch)
    total_steps = spec.epochs * steps_per_epoch

    with seeded_global_rng(device, epoch_seed(seed, 0, _TAG_HEAD)):
        objective = _OBJECTIVES[spec.objective](model, spec).to(device)
    head = objective.saved()
    params = list(model.parameters()) + objective.trained()
    optimizer = torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)
    if state is None:
        state = SimclrState(epoch=0, optimizer=copy.deepcopy(optimizer.state_dict()),
                            head=copy.deepcopy(head.state_dict()))
    else:
        head.load_state_dict(state.head)
        optimizer.load_state_dict(copy.deepcopy(state.optimizer))
        state = replace(state, history=list(state.history))

    for epoch in range(state.epoch, spec.epochs):
        if should_stop is not None and should_stop():
            break
        t0 = time.perf_counter()
        order = torch.randperm(n, generator=torch.Generator().manual_seed(epoch_seed(seed, epoch, _TAG_ORDER)))
        gen = torch.Generator(device=device).manual_seed(epoch_seed(seed, epoch, _TAG_VIEWS))
        model.train()
        objective.train()
        total = torch.zeros((), device=device)
        with _no_dropout(model), _no_dropout(objective):
            for step in range(steps_per_epoch):
                t = (epoch * steps_per_epoch + step) / total_steps
                for group in optimizer.param_groups:
                    group["lr"] = spec.lr * 0.5 * (1.0 + math.cos(math.pi * t))
                b = order[step * batch: (step + 1) * batch].to(device)
                x = images[b]
                loss = objective.loss(model, views(x, mean, std, spec.views, gen), views(x, mean, std, spec.views, gen))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                objective.after_step(model, (epoch * steps_per_epoch + step + 1) / total_steps)
                total += loss.detach()
        mean_loss = float(total) / steps_per_epoch
        check_finite(model, not math.isfinite(mean_loss), epoch, spec.epochs)

        feats = cluster_features(model, images, mean, std, spec.eval_batch_size)
        t1 = time.perf_counter()
        km = kmeans(feats, spec.clusters, 10, epoch_seed(seed, epoch, _TAG_KMEANS))
        seconds_kmeans = time.perf_counter() - t1
        stats = EpochStats(
            epoch=epoch, kmeans_loss=km.loss, nmi_previous=None,
            nmi_labels=None if labels is None else float(normalized_mutual_info_score(labels, km.assign)),
            reseeded=km.reseeded, train_loss=mean_loss, seconds=time.perf_counter() - t0,
            seconds_kmeans=seconds_kmeans,
            knn_accuracy=None if probe is None else probe_accuracy(model, images, mean, std, probe,
                                                                   spec.eval_batch_size),
        )
        state = SimclrState(epoch=epoch + 1, optimizer=copy.deepcopy(optimizer.state_dict()),
                            head=copy.deepcopy(head.state_dict()), history=[*state.history, stats])
        if on_epoch is not None:
            on_epoch(state, model)
    return state
