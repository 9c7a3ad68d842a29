"""What one fit is given: settings, targets (`[n_l]`, `[m]` int64 positions), its state, +SEMI, the lr schedule."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

from alctl.augment import ViewSpec
from alctl.train.compute import FP32, Compute


@dataclass(frozen=True)
class TrainSpec:
    """Optimisation settings of one cycle, built from the manifest's train section (`engine.settings.train_spec`)."""

    epochs: int
    batch_size: int
    lr: float
    rampdown_epochs: int
    momentum: float
    nesterov: bool
    weight_decay: float
    translate: int  # pixels of random translation
    flip: bool
    min_steps: int
    eval_batch_size: int
    compute: Compute = FP32  # precision, memory format, compile (resolved for the device: `engine.settings.compute`)


@dataclass
class Targets:
    """Training targets: labeled positions with labels, plus optional weighted pseudo-labels on other positions."""

    labeled_pos: np.ndarray  # [n_l] int64 rows of the image tensor
    labeled_y: np.ndarray  # [n_l] int64
    pseudo_pos: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # [m] int64
    pseudo_y: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # [m] int64
    pseudo_w: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))  # [m] float32 certainty
    class_w: np.ndarray | None = None  # [C] float32 class weights in the loss, None = uniform


@dataclass
class FitState:
    """Where training stands: after an epoch (step 0), or mid-epoch when stopped early (for checkpoints/preemption)."""

    epoch: int  # epoch in progress; equals spec.epochs when training is finished
    model: nn.Module
    optimizer: torch.optim.Optimizer
    targets: Targets
    step: int = 0  # steps of `epoch` already done
    batches: list[torch.Tensor] | None = None  # the batch order of `epoch` while it is in progress (step > 0)
    stopped: bool = False  # should_stop() ended training before spec.epochs
    scaler: torch.amp.GradScaler | None = None  # fp16: the loss scaler (its state travels with checkpoints)
    learned: torch.Tensor | None = None  # FlexMatch: [m] int64 class each unlabeled target last passed tau with, or -1


@dataclass(frozen=True)
class Consistency:
    """FixMatch (Sohn et al. 2020): the prediction on a weakly augmented view of an unlabeled image (translation,
    flips) becomes the target of a strongly augmented view (`strong`, then the same translation) where its
    confidence reaches `threshold`; that term weighs `weight` (lambda_u) against the labeled cross-entropy."""

    threshold: float  # tau in (0, 1]
    weight: float  # lambda_u >= 0
    strong: ViewSpec
    flexible: bool = False  # FlexMatch's class-wise thresholds (`flexible_thresholds`), from 0 while nothing is learned


@dataclass(frozen=True)
class Semi:
    """How unlabeled images enter training: recomputed by `refresh(epoch)` and mixed into every batch, as weighted
    pseudo-labels (label propagation) or, with `consistency`, as FixMatch's unlabeled images."""

    refresh: Callable[[int], Targets]  # epoch -> targets with pseudo-labels (label propagation) or unlabeled images
    every: int  # epochs between refreshes
    warmup: int  # epochs on labels only before the first refresh
    batch_size: int  # images per mixed batch
    labeled_per_batch: int  # labeled images in each mixed batch
    unlabeled_per_epoch: int | None  # pseudo-labeled images per epoch; None = all
    phase2_epochs: int  # > 0: Iscen et al.'s two phases, these epochs with pseudo-labels after spec.epochs
    phase2_lr: float | None  # phase 2's initial learning rate (cosine ramp-down to 0); None = spec.lr
    consistency: Consistency | None = None  # FixMatch: targets.pseudo_pos are unlabeled images; pseudo_w > 0 marks
    # a prior label (pseudo_y) that replaces the weak view's prediction
    prior_epochs: int = 0  # FixMatch: the refresh at start + prior_epochs ends the prior (see `due`)

    def start(self, plain_epochs: int) -> int:
        """The first epoch with unlabeled images: `warmup`, or with phase 2 `plain_epochs` (spec.epochs)."""
        return plain_epochs if self.phase2_epochs else self.warmup

    def due(self, epoch: int, plain_epochs: int) -> bool:
        """True when pseudo-labels are recomputed at the start of `epoch`: from `start` on, every `every` epochs,
        and at start + prior_epochs (where FixMatch's prior ends)."""
        start = self.start(plain_epochs)
        return epoch >= start and ((epoch - start) % self.every == 0
                                   or (self.prior_epochs > 0 and epoch - start == self.prior_epochs))


def make_optimizer(model: nn.Module, spec: TrainSpec) -> torch.optim.SGD:
    """SGD with (Nesterov) momentum and weight decay."""
    return torch.optim.SGD(
        model.parameters(), lr=spec.lr, momentum=spec.momentum, nesterov=spec.nesterov and spec.momentum > 0,
        weight_decay=spec.weight_decay,
    )


def cosine_lr(epoch: float, spec: TrainSpec) -> float:
    """Learning rate at a fractional epoch: cosine ramp-down reaching 0 at rampdown_epochs."""
    t = min(epoch, spec.rampdown_epochs) / spec.rampdown_epochs
    return spec.lr * 0.5 * (math.cos(math.pi * t) + 1.0)


def total_epochs(spec: TrainSpec, semi: "Semi | None") -> int:
    """Epochs of one fit: spec.epochs, plus semi's phase-2 epochs when it has them."""
    return spec.epochs + (semi.phase2_epochs if semi is not None else 0)


def learning_rate(epoch: float, spec: TrainSpec, semi: "Semi | None") -> float:
    """Learning rate at a fractional epoch: `cosine_lr` up to spec.epochs; in semi's phase 2, a fresh cosine
    ramp-down from phase2_lr (or spec.lr) to 0 over its phase2_epochs."""
    if semi is None or not semi.phase2_epochs or epoch < spec.epochs:
        return cosine_lr(epoch, spec)
    lr = spec.lr if semi.phase2_lr is None else semi.phase2_lr
    return cosine_lr(epoch - spec.epochs, replace(spec, lr=lr, rampdown_epochs=semi.phase2_epochs))
