"""The losses of a training step: logits `[b, C]`, targets `[b]` int64, certainty weights `[b]`, class weights `[C]`."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from alctl.augment import augment, normalize, translate, views
from alctl.train.spec import Semi, TrainSpec


def weighted_loss(
    logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, class_w: torch.Tensor | None
) -> torch.Tensor:
    """Cross-entropy of logits [b, C] against targets [b], each term times its certainty weight [b] and its class
    weight; normalised by the batch's total class weight (as torch's weighted cross-entropy does), so that a rare
    class's large weight re-balances the batch without scaling the step. Uniform class weights: the plain mean of
    weight x cross-entropy (Iscen et al.)."""
    per_sample = F.cross_entropy(logits, targets, reduction="none") * weights
    if class_w is None:
        return per_sample.mean()
    cw = class_w[targets]
    return (per_sample * cw).sum() / cw.sum().clamp_min(1e-12)


def consistency_loss(logits_weak: torch.Tensor, logits_strong: torch.Tensor, threshold: float | torch.Tensor,
                     prior_y: torch.Tensor | None = None, prior_w: torch.Tensor | None = None) -> torch.Tensor:
    """FixMatch's unlabeled term: the mean over the batch [u] of cross-entropy(strong logits [u, C], argmax of the
    weak view's softmax) where that softmax's maximum is >= threshold (a number, or one per class [C] read at the
    argmax: FlexMatch), 0 elsewhere; no gradient through the weak view. Where a prior weight [u] is > 0 the
    target is the prior label [u] instead, with that weight. 0 for an empty batch."""
    if logits_weak.shape[0] == 0:
        return logits_strong.sum() * 0.0
    with torch.no_grad():
        confidence, guess = torch.softmax(logits_weak.detach().float(), dim=1).max(dim=1)
        bar = threshold[guess] if isinstance(threshold, torch.Tensor) else threshold
        mask = (confidence >= bar).float()
        if prior_y is not None and prior_w is not None:
            has = prior_w > 0
            guess = torch.where(has, prior_y, guess)
            mask = torch.where(has, prior_w.float(), mask)
    return (F.cross_entropy(logits_strong.float(), guess, reduction="none") * mask).mean()


def flexible_thresholds(learned: torch.Tensor, num_classes: int, threshold: float) -> torch.Tensor:
    """FlexMatch's class-wise thresholds [C] (Zhang et al. 2021, with its warm-up and convex mapping): with sigma_c
    the unlabeled images [m] whose last confident (>= threshold) prediction was class c (`learned`, -1 = none yet),
    beta_c = sigma_c / max(max_c sigma_c, images with none) and T_c = threshold x beta_c / (2 - beta_c): a class the
    model has not learned yet takes low-confidence targets, a learned one needs the full threshold."""
    sigma = torch.bincount(learned[learned >= 0], minlength=num_classes)[:num_classes].float()
    unused = (learned < 0).sum().float()
    beta = sigma / torch.maximum(sigma.max(), unused).clamp_min(1.0)
    return threshold * beta / (2.0 - beta)


def _step_loss(
    forward: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]], images: torch.Tensor, b: torch.Tensor,
    n_l: int, pos_t: torch.Tensor, ys_t: torch.Tensor, ws_t: torch.Tensor, class_w: torch.Tensor | None,
    spec: TrainSpec, mean: Sequence[float], std: Sequence[float], generator: torch.Generator, semi: Semi | None,
    learned: torch.Tensor | None = None,
) -> torch.Tensor:
    """The loss of one batch `b` (indices into the targets, labeled first: < n_l): weighted cross-entropy of the
    augmented images; with FixMatch, the labeled images' cross-entropy plus weight x `consistency_loss` of the
    unlabeled ones (>= n_l; their target weight > 0: a prior label), the labeled, weak and strong views in one forward pass (batch norm sees them all);
    with `learned` (FlexMatch, [unlabeled targets]) the thresholds are `flexible_thresholds`, and the images whose
    weak prediction passes the fixed threshold record their class there (in place)."""
    compute = spec.compute
    device = images.device
    if semi is None or semi.consistency is None or n_l == len(pos_t):  # no unlabeled image among the targets
        x = augment(normalize(images[pos_t[b]], mean, std), spec.translate, spec.flip, generator)
        with compute.autocast(device):
            logits, _ = forward(compute.prepare_input(x))
            return weighted_loss(logits.float(), ys_t[b], ws_t[b], class_w)
    c = semi.consistency
    lab, unl = b[b < n_l], b[b >= n_l]
    u_images = images[pos_t[unl]]
    x = torch.cat([
        augment(normalize(images[pos_t[lab]], mean, std), spec.translate, spec.flip, generator),
        augment(normalize(u_images, mean, std), spec.translate, spec.flip, generator),
        translate(views(u_images, mean, std, c.strong, generator), spec.translate, generator),
    ])
    with compute.autocast(device):
        logits, _ = forward(compute.prepare_input(x))
    logits = logits.float()
    n, u = len(lab), len(unl)
    loss = weighted_loss(logits[:n], ys_t[lab], ws_t[lab], class_w)
    weak = logits[n : n + u]
    bar: float | torch.Tensor = c.threshold
    if learned is not None:
        bar = flexible_thresholds(learned, logits.shape[1], c.threshold)
        with torch.no_grad():
            confidence, guess = torch.softmax(weak.detach(), dim=1).max(dim=1)
            sure = confidence >= c.threshold
            learned[(unl - n_l)[sure]] = guess[sure]
    return loss + c.weight * consistency_loss(weak, logits[n + u :], bar, ys_t[unl], ws_t[unl])
