"""The 13-layer "conv-large" CNN of Laine & Aila with a width multiplier; forward gives (logits [n, C], features [n, 128*w])."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from alctl.config import layer_channels


class ConvBlock(nn.Sequential):
    """Weight-normalised conv -> batch norm -> LeakyReLU(0.1)."""

    def __init__(self, cin: int, cout: int, kernel: int, padding: int) -> None:
        """Build one conv block."""
        super().__init__(
            weight_norm(nn.Conv2d(cin, cout, kernel, padding=padding)),
            nn.BatchNorm2d(cout),
            nn.LeakyReLU(0.1),
        )


class ConvLarge(nn.Module):
    """13-layer CNN: 3x(3x3,128) pool drop 3x(3x3,256) pool drop (3x3,512 valid) (1x1,256) (1x1,128) GAP -> linear."""

    def __init__(self, in_channels: int, num_classes: int, width: float = 1.0, dropout: float = 0.5,
                 l2_features: bool = False) -> None:
        """Build the network for `in_channels`-channel images and `num_classes` outputs; with `l2_features` the
        classifier sees L2-normalised features (a cosine classifier whose scale is the weight norm's g)."""
        super().__init__()
        self.l2_features = l2_features
        c1, c2, c3, c4, c5 = (layer_channels(b, width) for b in (128, 256, 512, 256, 128))
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.width = width
        self.block1 = nn.Sequential(
            ConvBlock(in_channels, c1, 3, 1), ConvBlock(c1, c1, 3, 1), ConvBlock(c1, c1, 3, 1),
            nn.MaxPool2d(2, 2), nn.Dropout(dropout),
        )
        self.block2 = nn.Sequential(
            ConvBlock(c1, c2, 3, 1), ConvBlock(c2, c2, 3, 1), ConvBlock(c2, c2, 3, 1),
            nn.MaxPool2d(2, 2), nn.Dropout(dropout),
        )
        self.block3 = nn.Sequential(ConvBlock(c2, c3, 3, 0), ConvBlock(c3, c4, 1, 0), ConvBlock(c4, c5, 1, 0))
        self.feature_dim = c5
        self.classifier = weight_norm(nn.Linear(c5, num_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features [n, D] (not normalised) of normalised float images [n, C, H, W]."""
        x = self.block2(self.block1(x))
        if x.shape[-1] < 3 or x.shape[-2] < 3:  # tiny inputs (8x8 digits): give the valid 3x3 conv a window
            x = F.pad(x, (1, 1, 1, 1))
        x = self.block3(x)
        return x.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits [n, num_classes] and pooled features [n, D] (not normalised, whatever l2_features says)."""
        f = self.features(x)
        return self.classifier(F.normalize(f, dim=1) if self.l2_features else f), f

    def reset_classifier(self, num_classes: int | None = None) -> None:
        """Replace the classifier with a freshly initialised one (optionally of another size)."""
        n = num_classes or self.num_classes
        self.num_classes = n
        device = next(self.parameters()).device
        self.classifier = weight_norm(nn.Linear(self.feature_dim, n)).to(device)


def build_model(in_channels: int, num_classes: int, width: float = 1.0, dropout: float = 0.5,
                l2_features: bool = False) -> ConvLarge:
    """The paper's network for a dataset."""
    return ConvLarge(in_channels, num_classes, width=width, dropout=dropout, l2_features=l2_features)
