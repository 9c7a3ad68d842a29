"""What every dataset loader shares: the `DatasetSplits` record, uint8 image transforms and statistics."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from alctl.errors import UserError

CHUNK = 4096  # images per chunk for resizing and statistics (bounded float memory)


@dataclass
class DatasetSplits:
    """Train pool and test split of one dataset, as uint8 tensors."""

    name: str
    classes: list[str]
    train_images: torch.Tensor  # uint8 [N, C, H, W]
    train_labels: torch.Tensor  # int64 [N]
    train_ids: torch.Tensor  # int64 [N] stable sample ids (never positions after filtering)
    test_images: torch.Tensor  # uint8 [M, C, H, W]
    test_labels: torch.Tensor  # int64 [M]
    mean: tuple[float, ...]  # per-channel mean of train_images in [0, 1] scale
    std: tuple[float, ...]  # per-channel std, same scale
    train_paths: list[str] | None = None  # imagefolder: [N] file path of each row, POSIX, relative to root
    initial_positions: np.ndarray | None = None  # imagefolder: int64 [L] rows of train_* from the labeled tree
    skipped: list[str] = field(default_factory=list)  # "path: reason" per file that could not be decoded

    @property
    def num_classes(self) -> int:
        """Number of classes (length of `classes`)."""
        return len(self.classes)


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and population std of uint8 images [N, C, H, W] on the [0, 1] scale.

    Returns two tuples of C floats; (0.0, ...) and (1.0, ...) when there are no pixels.
    """
    n, c = images.shape[0], images.shape[1]
    count = n * images.shape[2] * images.shape[3]
    if count == 0:
        return tuple([0.0] * c), tuple([1.0] * c)
    total = torch.zeros(c, dtype=torch.float64)
    squares = torch.zeros(c, dtype=torch.float64)
    for start in range(0, n, CHUNK):
        chunk = images[start : start + CHUNK].to(torch.float64)
        total += chunk.sum(dim=(0, 2, 3))
        squares += chunk.square().sum(dim=(0, 2, 3))
    mean = total / count
    var = (squares / count - mean.square()).clamp_min(0.0)
    return tuple(float(v) for v in mean / 255.0), tuple(float(v) for v in var.sqrt() / 255.0)


def fit_size(images: torch.Tensor, size: int | None) -> torch.Tensor:
    """uint8 [N, C, H, W] -> uint8 [N, C, size, size]: zero-pad centrally up to `size`, or antialiased-resize
    down to it (a mixed shape is padded to a square first); None or the native size returns `images` itself."""
    if size is None:
        return images
    size = int(size)
    h, w = images.shape[2], images.shape[3]
    if (h, w) == (size, size):
        return images
    if h <= size and w <= size:
        top, left = (size - h) // 2, (size - w) // 2
        out = torch.zeros((*images.shape[:2], size, size), dtype=images.dtype)
        out[:, :, top : top + h, left : left + w] = images
        return out
    if h < size or w < size:  # mixed (one side grows, one shrinks): pad to square first
        side = max(h, w)
        images = fit_size(images, side)
    parts = []
    for start in range(0, images.shape[0], CHUNK):
        chunk = images[start : start + CHUNK].to(torch.float32)
        small = F.interpolate(chunk, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        parts.append(small.round_().clamp_(0, 255).to(torch.uint8))
    if not parts:
        return torch.zeros((0, images.shape[1], size, size), dtype=torch.uint8)
    return torch.cat(parts)


def fit_channels(images: torch.Tensor, channels: int | None, name: str) -> torch.Tensor:
    """uint8 [N, C, H, W] -> [N, channels, H, W]: a single channel replicated to 3; same count (or None) returns
    `images` itself; 3 -> 1 is a UserError naming dataset `name`."""
    if channels is None or int(channels) == images.shape[1]:
        return images
    if images.shape[1] == 1 and int(channels) == 3:
        return images.expand(-1, 3, -1, -1).contiguous()
    raise UserError(
        f"dataset.channels: {name} has {images.shape[1]} channels and cannot be reduced to {channels}; "
        f"use channels: {images.shape[1]} or leave it unset"
    )


def one_line(exc: BaseException, limit: int = 240) -> str:
    """An exception as a single line `Type: message` of at most `limit` characters (torchvision's and Pillow's
    messages span several lines)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = f"{type(exc).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 3] + "..."
