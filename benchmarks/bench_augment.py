"""SimCLR's views: alctl.augment.views (a handful of batched tensor operations) against kornia's augmentation
pipeline with the same transforms (random resized crop, rotation, flip, colour jitter, grey), same device, same
batch, measured in one run.

Both take uint8 images [n, C, H, W] and return normalised float32 views. kornia is the field's library for
batched augmentation on the device (`pip install 'alctl[bench]'`); alctl keeps its own code only if it is faster.

    python benchmarks/bench_augment.py [--batch 512] [--repeats 20] [--device cpu]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from alctl.augment import ViewSpec, view_spec, views  # noqa: E402


def kornia_pipeline(spec: ViewSpec, size: int, channels: int, mean: list[float], std: list[float]) -> torch.nn.Module:
    """kornia's equivalent of `views` for `spec`: the same crop, rotation, flip and jitter ranges."""
    import kornia.augmentation as K

    steps: list[torch.nn.Module] = [
        K.RandomResizedCrop((size, size), scale=(spec.min_area, 1.0), ratio=(1 / spec.max_aspect, spec.max_aspect)),
        K.RandomRotation(degrees=spec.max_rotation, p=1.0),
    ]
    if spec.flip:
        steps.append(K.RandomHorizontalFlip())
    steps.append(K.ColorJitter(spec.brightness, spec.contrast, spec.saturation, spec.hue, p=spec.jitter_p))
    if channels == 3:
        steps.append(K.RandomGrayscale(p=spec.grayscale_p))
    steps.append(K.Normalize(mean=torch.tensor(mean), std=torch.tensor(std)))
    return K.AugmentationSequential(*steps)


def timed(fn: object, repeats: int, device: torch.device) -> float:
    """Seconds per call of fn() (after two warm-up calls), synchronising CUDA."""
    for _ in range(2):
        fn()  # type: ignore[operator]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t = time.perf_counter()
    for _ in range(repeats):
        fn()  # type: ignore[operator]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - t) / repeats


def main() -> None:
    """Time both on grey 28-pixel and colour 32-pixel batches; print images/s and the ratio."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    print(f"views of {args.batch} images on {device}, {args.repeats} repeats, threads {torch.get_num_threads()}")
    for channels, size in ((1, 28), (3, 32)):
        spec = view_spec(size, channels, flip=channels == 3)
        mean, std = [0.5] * channels, [0.25] * channels
        images = torch.randint(0, 256, (args.batch, channels, size, size), dtype=torch.uint8, device=device)
        gen = torch.Generator(device=device).manual_seed(0)
        ours = timed(lambda: views(images, mean, std, spec, gen), args.repeats, device)
        pipeline = kornia_pipeline(spec, size, channels, mean, std).to(device)
        theirs = timed(lambda: pipeline(images.float() / 255.0), args.repeats, device)
        print(f"{channels} x {size} x {size}: alctl {args.batch / ours:,.0f} img/s ({1e3 * ours:.1f} ms), kornia"
              f" {args.batch / theirs:,.0f} img/s ({1e3 * theirs:.1f} ms): alctl {theirs / ours:.1f}x")


if __name__ == "__main__":
    main()
