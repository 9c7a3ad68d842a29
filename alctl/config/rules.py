"""The `auto` values: settings decided in code from the task's own facts (image size and channels, whether it has
an encoder, who labels), never from a dataset's name."""

from __future__ import annotations

from typing import TYPE_CHECKING

from alctl.config.facts import NATIVE_CHANNELS
from alctl.strategies.catalog import COLD_START_NAMES


if TYPE_CHECKING:
    from alctl.config.schema import ActiveConfig, DatasetConfig, Manifest, SimclrConfig, TrainConfig

# ----------------------------------------------------------------------------- auto settings: rules from the images

ImageShape = tuple[int, int, int]  # (channels, height, width) of the pool images


def image_channels(d: DatasetConfig) -> int:
    """Channels of the pool images the dataset section gives (dataset.channels, else the native ones)."""
    return d.channels if d.channels is not None else NATIVE_CHANNELS[d.name]


def translate(t: TrainConfig, shape: ImageShape) -> int:
    """train.translate in pixels; auto = max(1, round(side / 14)) of the larger image side (about 7%)."""
    return t.translate if t.translate != "auto" else max(1, round(max(shape[1], shape[2]) / 14))


def flip(t: TrainConfig, shape: ImageShape) -> bool:
    """train.flip; auto = flips for colour (3-channel) images only."""
    return t.flip if t.flip != "auto" else shape[0] == 3


def l2_features(config: Manifest) -> bool:
    """model.l2_features; auto = the cosine head when the network starts from a pre-trained encoder (+PRE)."""
    value = config.model.l2_features
    return config.pretrain.method != "none" if value == "auto" else bool(value)


def semi_features(config: Manifest, shape: ImageShape) -> str:
    """semi.features resolved: auto = with +PRE, encoder+pixels for grey images and encoder for colour ones;
    without, pixels for grey images and model for colour ones."""
    value = config.semi.features
    if value != "auto":
        return value
    grey = shape[0] == 1
    if config.pretrain.method != "none":
        return "encoder+pixels" if grey else "encoder"
    return "pixels" if grey else "model"


def simclr_epochs(s: SimclrConfig, pool: int) -> int:
    """pretrain.simclr.epochs; auto = max(1, round(steps x batch_size / pool)), about `steps` steps on any pool."""
    return s.epochs if s.epochs != "auto" else max(1, round(s.steps * s.batch_size / max(pool, 1)))


def initial_strategy(a: ActiveConfig) -> str:
    """active.initial_strategy; auto = balanced with a simulated oracle, random with a human one."""
    if a.initial_strategy != "auto":
        return a.initial_strategy
    return "balanced" if a.oracle == "simulated" else "random"


def encoder_method(config: Manifest) -> str | None:
    """The pre-training whose encoder a task needs: pretrain.method for +PRE; for a cold start on an encoder's
    features, active.initial_features (encoder: DeepCluster's when the task has no pretrain.method); else None."""
    a = config.active
    cold = a.initial_strategy in COLD_START_NAMES and a.initial_features != "pixels"
    if cold and a.initial_features in ("deepcluster", "simclr"):
        if config.pretrain.method not in ("none", a.initial_features):
            return config.pretrain.method  # cross-field rules refuse this pairing; the task's own encoder
        return a.initial_features
    if config.pretrain.method != "none":
        return config.pretrain.method
    return "deepcluster" if cold else None


def uses_encoder(config: Manifest) -> bool:
    """Whether a task needs a pre-trained encoder: +PRE, or a cold start on an encoder's features."""
    return encoder_method(config) is not None
