"""Fit / evaluate / extract features, pure (no file I/O): images uint8 [N, C, H, W], labels int64 [N], probs [n, C], features [n, D]."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from alctl.augment import augment, normalize


@dataclass(frozen=True)
class TrainSpec:
    """Optimisation settings of one cycle (mirrors manifest.TrainConfig)."""

    epochs: int = 200
    batch_size: int = 32
    lr: float = 0.2
    rampdown_epochs: int = 210
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 2e-4
    translate: int = 4
    flip: bool = False
    min_steps: int = 0
    eval_batch_size: int = 512


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
    """What a callback sees after each epoch (for checkpoints and preemption)."""

    epoch: int  # epochs finished
    model: nn.Module
    optimizer: torch.optim.Optimizer
    targets: Targets


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


def _plain_batches(n: int, n_labeled: int, spec: TrainSpec, generator: torch.Generator) -> list[torch.Tensor]:
    """Index batches over n items for one epoch of max(ceil(n_labeled / batch), min_steps) shuffled batches.

    The epoch length follows the labeled set, so extra pseudo-labeled items (CEAL) are sampled alongside the
    labeled ones instead of multiplying the cost of a cycle.
    """
    bs = min(spec.batch_size, n)
    steps = max(math.ceil(max(n_labeled, 1) / bs), spec.min_steps, 1)
    order = torch.cat([torch.randperm(n, generator=generator) for _ in range(math.ceil(steps * bs / n))])
    return [order[i * bs : (i + 1) * bs] for i in range(steps)]


def _mixed_batches(
    n_l: int, n_p: int, batch_size: int, labeled_per_batch: int, generator: torch.Generator
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One pass over the pseudo-labeled items, each batch completed with labeled items cycled in shuffled order."""
    per_pseudo = batch_size - labeled_per_batch
    steps = max(1, math.ceil(n_p / per_pseudo))
    p_order = torch.randperm(n_p, generator=generator)
    need = steps * labeled_per_batch
    l_order = torch.cat([torch.randperm(n_l, generator=generator) for _ in range(math.ceil(need / n_l))])
    return [
        (l_order[i * labeled_per_batch : (i + 1) * labeled_per_batch], p_order[i * per_pseudo : (i + 1) * per_pseudo])
        for i in range(steps)
    ]


def fit(
    model: nn.Module,
    images: torch.Tensor,
    targets: Targets,
    spec: TrainSpec,
    mean: Sequence[float],
    std: Sequence[float],
    generator: torch.Generator,
    *,
    refresh: Callable[[int], Targets] | None = None,
    refresh_every: int = 1,
    mix: tuple[int, int] | None = None,
    start_epoch: int = 0,
    optimizer_state: dict | None = None,
    on_epoch: Callable[[FitState], None] | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> FitState:
    """Train `model` for spec.epochs epochs on images[targets] (on the images' device) and return the final state.

    refresh(epoch) recomputes pseudo-targets every `refresh_every` epochs (label propagation); mix=(batch, labeled)
    mixes labeled and pseudo-labeled images in each batch; otherwise labeled and pseudo-labeled images are
    shuffled together in batches of spec.batch_size. Resumes at start_epoch with optimizer_state.
    """
    device = images.device
    optimizer = make_optimizer(model, spec)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    state = FitState(epoch=start_epoch, model=model, optimizer=optimizer, targets=targets)
    for epoch in range(start_epoch, spec.epochs):
        if refresh is not None and (epoch - start_epoch) % refresh_every == 0:
            state.targets = refresh(epoch)
        t = state.targets
        pos = np.concatenate([t.labeled_pos, t.pseudo_pos]).astype(np.int64)
        ys = np.concatenate([t.labeled_y, t.pseudo_y]).astype(np.int64)
        ws = np.concatenate([np.ones(len(t.labeled_pos), np.float32), t.pseudo_w.astype(np.float32)])
        pos_t, ys_t, ws_t = (torch.from_numpy(a).to(device) for a in (pos, ys, ws))
        class_w = None if t.class_w is None else torch.as_tensor(t.class_w, dtype=torch.float32, device=device)
        n_l = len(t.labeled_pos)
        if mix is not None and len(t.pseudo_pos) > 0:
            batches = [
                torch.cat([lb, pb + n_l]) for lb, pb in _mixed_batches(n_l, len(t.pseudo_pos), mix[0], mix[1], generator)
            ]
        else:
            batches = _plain_batches(len(pos), n_l, spec, generator)
        model.train()
        for step, b in enumerate(batches):
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(epoch + step / len(batches), spec)
            b = b.to(device)
            x = augment(normalize(images[pos_t[b]], mean, std), spec.translate, spec.flip, generator)
            logits, _ = model(x)
            per_sample = F.cross_entropy(logits, ys_t[b], weight=class_w, reduction="none")
            loss = (per_sample * ws_t[b]).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if on_step is not None:
                on_step(step + 1, len(batches))
        state.epoch = epoch + 1
        if on_epoch is not None:
            on_epoch(state)
    return state


@torch.no_grad()
def predict(
    model: nn.Module, images: torch.Tensor, mean: Sequence[float], std: Sequence[float], batch_size: int = 512
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax probabilities [n, C] and L2-normalised features [n, D] (float32, on the images' device), eval mode."""
    model.eval()
    probs, feats = [], []
    for i in range(0, images.shape[0], batch_size):
        logits, f = model(normalize(images[i : i + batch_size], mean, std))
        probs.append(torch.softmax(logits.float(), dim=1))
        feats.append(F.normalize(f.float(), dim=1))
    if not probs:
        c = getattr(model, "num_classes", 0)
        d = getattr(model, "feature_dim", 0)
        return torch.zeros(0, c, device=images.device), torch.zeros(0, d, device=images.device)
    return torch.cat(probs), torch.cat(feats)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 512,
) -> tuple[float, float]:
    """Top-1 accuracy in [0, 1] and mean cross-entropy of the model on (images [n, C, H, W], labels [n])."""
    probs, _ = predict(model, images, mean, std, batch_size)
    labels = labels.to(probs.device)
    accuracy = float((probs.argmax(1) == labels).float().mean().item())
    loss = float(F.nll_loss(torch.log(probs.clamp_min(1e-12)), labels).item())
    return accuracy, loss
