"""Forward passes without training: probabilities `[n, C]` float32, features `[n, D]` float32, accuracy and loss."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from alctl.augment import normalize
from alctl.train.compute import FP32, Compute


@torch.no_grad()
def predict(
    model: nn.Module, images: torch.Tensor, mean: Sequence[float], std: Sequence[float], batch_size: int = 512,
    compute: Compute = FP32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax probabilities [n, C] and L2-normalised features [n, D] of images [n, C, H, W] (float32 whatever
    compute's precision, on the images' device), eval mode."""
    model.eval()
    compute.prepare_model(model)
    forward = compute.forward(model)
    probs, feats = [], []
    for i in range(0, images.shape[0], batch_size):
        with compute.autocast(images.device):
            logits, f = forward(compute.prepare_input(normalize(images[i : i + batch_size], mean, std)))
        probs.append(torch.softmax(logits.float(), dim=1))
        feats.append(F.normalize(f.float(), dim=1))
    if not probs:
        c = getattr(model, "num_classes", 0)
        d = getattr(model, "feature_dim", 0)
        return torch.zeros(0, c, device=images.device), torch.zeros(0, d, device=images.device)
    return torch.cat(probs), torch.cat(feats)


# The modules MC dropout switches to train mode (everything else stays in eval mode).
_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


@torch.no_grad()
def predict_mc(
    model: nn.Module, images: torch.Tensor, mean: Sequence[float], std: Sequence[float], passes: int,
    batch_size: int = 512, compute: Compute = FP32,
) -> torch.Tensor:
    """Softmax probabilities [passes, n, C] float32 (on the images' device) of `passes` stochastic forward passes of
    images [n, C, H, W] with dropout on and every other module in eval mode (batch norm uses its running
    statistics): MC dropout (Gal & Ghahramani 2016). Dropout draws from torch's global generator, batch by batch
    and pass by pass within a batch: the caller seeds it. Every module's train / eval mode is restored after. `compute`
    sets the precision of the passes (the probabilities are float32 whatever it says)."""
    if int(passes) < 1:
        raise ValueError(f"predict_mc: passes must be >= 1, got {passes}")
    compute.prepare_model(model)
    forward = compute.forward(model)
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        for m in model.modules():
            if isinstance(m, _DROPOUT):
                m.train()
        out: torch.Tensor | None = None
        for i in range(0, images.shape[0], batch_size):
            x = compute.prepare_input(normalize(images[i : i + batch_size], mean, std))
            for t in range(int(passes)):
                with compute.autocast(images.device):
                    logits = forward(x)[0]
                p = torch.softmax(logits.float(), dim=1)
                if out is None:
                    out = torch.empty(int(passes), images.shape[0], p.shape[1], device=images.device)
                out[t, i : i + p.shape[0]] = p
    finally:
        for m, mode in modes:
            m.training = mode
    if out is None:
        return torch.zeros(int(passes), 0, getattr(model, "num_classes", 0), device=images.device)
    return out


@torch.no_grad()
def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 512,
    compute: Compute = FP32,
) -> tuple[float, float]:
    """Top-1 accuracy in [0, 1] and mean cross-entropy of the model on (images [n, C, H, W], labels [n]), its
    forward passes as `compute` says."""
    accuracy, loss, _ = evaluate_predictions(model, images, labels, mean, std, batch_size, compute)
    return accuracy, loss


def evaluate_predictions(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 512,
    compute: Compute = FP32,
) -> tuple[float, float, np.ndarray]:
    """`evaluate`'s accuracy and loss, and the predicted classes [n] int64 (numpy) they come from."""
    probs, _ = predict(model, images, mean, std, batch_size, compute)
    labels = labels.to(probs.device)
    predicted = probs.argmax(1)
    accuracy = float((predicted == labels).float().mean().item())
    loss = float(F.nll_loss(torch.log(probs.clamp_min(1e-12)), labels).item())
    return accuracy, loss, predicted.cpu().numpy().astype(np.int64)
