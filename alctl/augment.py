"""Batched tensor augmentation on the training device: normalise, translate with reflection, flip; and the random
views of contrastive pre-training (crop, rotation, jitter); images [n, C, H, W]."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

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


# --------------------------------------------------------------------------- two views of an image (SimCLR)

_GREY = (0.299, 0.587, 0.114)  # luma weights (ITU-R 601), as torchvision's rgb_to_grayscale


@dataclass(frozen=True)
class ViewSpec:
    """How two random views of one image differ (contrastive pre-training); `view_spec` derives it from the image."""

    min_area: float  # smallest random crop, as a fraction of the image's area (then resized back to full size)
    max_aspect: float  # crop aspect ratio drawn log-uniformly in [1 / max_aspect, max_aspect]
    max_rotation: float  # degrees, uniform in [-max_rotation, max_rotation]
    brightness: float  # intensity scaled by a factor in [1 - brightness, 1 + brightness]
    contrast: float  # distance to the image's mean scaled by a factor in [1 - contrast, 1 + contrast]
    saturation: float  # colour images: distance to the grey image scaled by [1 - saturation, 1 + saturation]
    hue: float  # colour images: hue rotated by up to hue x 360 degrees
    jitter_p: float  # probability that an image's brightness / contrast / colour are jittered at all
    grayscale_p: float  # colour images: probability of a grey view
    flip: bool  # random horizontal flips


def view_spec(size: int, channels: int, flip: bool) -> ViewSpec:
    """The augmentation of contrastive pre-training for `channels`-channel images of `size` pixels (the larger
    side), by rule: the smallest crop keeps 1 - size/56 of the area, within [0.2, 0.85] (half of a 28-pixel digit;
    a larger share of a smaller image, where one pixel is a larger part of the object; SimCLR's small-image floor
    of 0.2 from 45 pixels on); crops within 3:4..4:3; rotations up to 10 degrees; brightness and contrast jitter
    0.4; colour images also get SimCLR's saturation 0.4 / hue 0.1 jitter and a 20% chance of a grey view, which
    grey images cannot use; flips as training uses them (`flip`)."""
    if size < 1 or channels < 1:
        raise ValueError(f"view_spec: size and channels must be positive, got {size} and {channels}")
    colour = channels == 3
    return ViewSpec(min_area=float(min(0.85, max(0.2, 1.0 - size / 56.0))), max_aspect=4.0 / 3.0, max_rotation=10.0,
                    brightness=0.4, contrast=0.4, saturation=0.4 if colour else 0.0, hue=0.1 if colour else 0.0,
                    jitter_p=0.8, grayscale_p=0.2 if colour else 0.0, flip=flip)


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    """[n] float32 uniform in [low, high) drawn from `generator` (on its device)."""
    return torch.rand(n, generator=generator, device=generator.device) * (high - low) + low


def _crop_grid(n: int, shape: tuple[int, int, int, int], spec: ViewSpec, generator: torch.Generator,
               device: torch.device) -> torch.Tensor:
    """Sampling grid [n, H, W, 2] of a random resized crop, rotated, for `F.grid_sample`."""
    area = _uniform(n, spec.min_area, 1.0, generator)
    log_aspect = _uniform(n, -math.log(spec.max_aspect), math.log(spec.max_aspect), generator)
    aspect = torch.exp(log_aspect)
    sx = torch.sqrt(area * aspect).clamp(max=1.0)  # half-widths of the crop in [-1, 1] coordinates
    sy = torch.sqrt(area / aspect).clamp(max=1.0)
    tx = (1.0 - sx) * _uniform(n, -1.0, 1.0, generator)  # the crop stays inside the image
    ty = (1.0 - sy) * _uniform(n, -1.0, 1.0, generator)
    angle = _uniform(n, -spec.max_rotation, spec.max_rotation, generator) * (math.pi / 180.0)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([torch.stack([sx * cos, -sy * sin, tx], 1), torch.stack([sx * sin, sy * cos, ty], 1)], 1)
    return F.affine_grid(theta.to(device), list(shape), align_corners=False)


def _hue_rotation(angle: torch.Tensor) -> torch.Tensor:
    """[n, 3, 3] RGB matrices rotating hue by `angle` [n] radians about the grey axis (luma kept)."""
    # in YIQ space, hue is the angle of (I, Q); rotate it and come back
    to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]],
                          device=angle.device)
    to_rgb = torch.linalg.inv(to_yiq)
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot = torch.zeros(angle.shape[0], 3, 3, device=angle.device)
    rot[:, 0, 0] = 1.0
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
    return to_rgb @ rot @ to_yiq


def views(images: torch.Tensor, mean: Sequence[float], std: Sequence[float], spec: ViewSpec,
          generator: torch.Generator) -> torch.Tensor:
    """One random view of each uint8 image [n, C, H, W]: crop + rotation (bilinear, reflection at the borders),
    flip, jitter, grey; returned normalised float32 [n, C, H, W] on the images' device. Two calls give the two
    views SimCLR compares. All images of the batch in a handful of tensor operations."""
    n, c = images.shape[0], images.shape[1]
    device = images.device
    x = images.float() / 255.0
    grid = _crop_grid(n, tuple(x.shape), spec, generator, device)  # type: ignore[arg-type]
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if spec.flip:
        x = flip(x, generator)
    jitter = (torch.rand(n, generator=generator, device=generator.device) < spec.jitter_p).to(device)
    on = jitter.float().view(n, 1, 1, 1)
    b = 1.0 + _uniform(n, -spec.brightness, spec.brightness, generator).to(device).view(n, 1, 1, 1) * on
    x = x * b
    k = 1.0 + _uniform(n, -spec.contrast, spec.contrast, generator).to(device).view(n, 1, 1, 1) * on
    grey_weights = torch.tensor(_GREY, device=device).view(1, 3, 1, 1) if c == 3 else None
    level = (x * grey_weights).sum(1, keepdim=True) if grey_weights is not None else x
    x = (x - level.mean(dim=(1, 2, 3), keepdim=True)) * k + level.mean(dim=(1, 2, 3), keepdim=True)
    if c == 3:
        s = 1.0 + _uniform(n, -spec.saturation, spec.saturation, generator).to(device).view(n, 1, 1, 1) * on
        grey = (x * grey_weights).sum(1, keepdim=True)
        x = (x - grey) * s + grey
        angle = _uniform(n, -spec.hue, spec.hue, generator).to(device) * (2.0 * math.pi) * jitter.float()
        x = torch.einsum("nij,njhw->nihw", _hue_rotation(angle), x)
        to_grey = (torch.rand(n, generator=generator, device=generator.device) < spec.grayscale_p).to(device)
        grey = (x * grey_weights).sum(1, keepdim=True).expand_as(x)
        x = torch.where(to_grey.view(n, 1, 1, 1), grey, x)
    x = x.clamp(0.0, 1.0)
    m = torch.as_tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    sd = torch.as_tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return (x - m) / sd
