"""Batched tensor augmentation on the training device: normalise, translate with reflection, flip; images [n, C, H, W]."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 [n, C, H, W] -> float32 per-channel normalised, on the images' device."""
    m = torch.as_tensor(mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    return (images.float() / 255.0 - m) / s


def translate(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by a random (dx, dy) in [-max_shift, max_shift] with reflection padding; x float [n, C, H, W]."""
    if max_shift <= 0:
        return x
    n, c, h, w = x.shape
    t = min(max_shift, h - 1, w - 1)
    padded = F.pad(x, (t, t, t, t), mode="reflect")
    offsets = torch.randint(0, 2 * t + 1, (2, n), generator=generator, device=generator.device).to(x.device)
    rows = offsets[0][:, None] + torch.arange(h, device=x.device)[None, :]  # [n, H]
    cols = offsets[1][:, None] + torch.arange(w, device=x.device)[None, :]  # [n, W]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chan = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chan, rows[:, None, :, None], cols[:, None, None, :]]


def flip(x: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Flip each image horizontally with probability p; x float [n, C, H, W]."""
    mask = torch.rand(x.shape[0], generator=generator, device=generator.device).to(x.device) < p
    return torch.where(mask[:, None, None, None], x.flip(-1), x)


def augment(x: torch.Tensor, max_shift: int, do_flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Random translation then optional flip of a whole batch; x float [n, C, H, W]."""
    x = translate(x, max_shift, generator)
    return flip(x, generator) if do_flip else x
