"""What a run costs before it starts: optimizer steps and images through the network per cycle, per task, per run.

Pure (no file I/O, no torch): counts follow the batching rules of `alctl.train` and the passes of the engine.
Images are counted as they pass the network: `train` (forward and backward, with augmentation), `features`
(forward passes over the pool for selection, propagation and k-means), `evaluate` (the test split once per
cycle). A pass of k-means, the kNN graph or the propagation itself is counted as a propagation, not as images;
the selection's own arithmetic on the features (CoreSet's greedy k-center, jLP's diffusions) is not counted.
CEAL's batches are counted with their train.batch_size pseudo-labeled images from cycle 1 on (exact once CEAL
finds a confident image, which it does unless the model is unsure of every pool image), none with active.ceal.cap 0.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from alctl.config import identity
from alctl import config as mf
from alctl.errors import UserError
from alctl.config.facts import TEST_SIZES, pool_size
from alctl.strategies.catalog import needs

# A forward pass costs about a third of a training step's forward + backward: inference images per second
# default to 3x the training throughput when only that is given.
INFERENCE_SPEEDUP = 3.0


@dataclass(frozen=True)
class CycleCost:
    """One cycle of one task."""

    cycle: int
    labels: int  # labeled images the cycle trains on
    steps: int  # optimizer steps
    train: int  # images through forward + backward
    features: int  # images through forward passes for selection and propagation
    evaluate: int  # test images
    propagations: int  # label propagations (each: kNN graph + linear solve over the pool)


@dataclass(frozen=True)
class TaskCost:
    """Every cycle of one task (the encoder's DeepCluster is counted once per run, in `PretrainCost`)."""

    cycles: list[CycleCost]
    pretrain_key: str | None  # which encoder the task needs (+PRE), None without

    @property
    def steps(self) -> int:
        """Optimizer steps of every cycle."""
        return sum(c.steps for c in self.cycles)

    @property
    def train(self) -> int:
        """Training images of every cycle."""
        return sum(c.train for c in self.cycles)

    @property
    def inference(self) -> int:
        """Feature and evaluation images of every cycle."""
        return sum(c.features + c.evaluate for c in self.cycles)


@dataclass(frozen=True)
class PretrainCost:
    """One pre-training: DeepCluster (per epoch a feature pass for k-means, `passes` training passes, the probe) or
    SimCLR (per epoch two views of the pool, the NMI k-means' and the probe's feature passes)."""

    epochs: int
    steps: int
    train: int
    features: int  # k-means features + the probe's pool and test features
    method: str = "deepcluster"  # deepcluster | simclr


@dataclass
class RunCost:
    """A whole run: its tasks and each distinct encoder once."""

    tasks: list[TaskCost]
    pretrains: dict[str, PretrainCost] = field(default_factory=dict)

    @property
    def train(self) -> int:
        """Training images of the run, DeepCluster included."""
        return sum(t.train for t in self.tasks) + sum(p.train for p in self.pretrains.values())

    @property
    def inference(self) -> int:
        """Feature and evaluation images of the run, DeepCluster included."""
        return sum(t.inference for t in self.tasks) + sum(p.features for p in self.pretrains.values())

    @property
    def pretrain_share(self) -> float:
        """DeepCluster's share of all images through the network (training images weighted x INFERENCE_SPEEDUP)."""
        dc = sum(INFERENCE_SPEEDUP * p.train + p.features for p in self.pretrains.values())
        total = INFERENCE_SPEEDUP * self.train + self.inference
        return dc / total if total else 0.0


def sizes(config: mf.Manifest) -> tuple[int, int] | None:
    """(pool images, test images) of a named dataset, its pool cut by dataset.imbalance; None for an image folder
    (known only once it is read)."""
    d = config.dataset
    pool = pool_size(d.name, None if d.imbalance is None else d.imbalance.ratio)
    if pool is None or d.name not in TEST_SIZES:
        return None
    return pool, TEST_SIZES[d.name]


def _plain_steps(n_l: int, t: mf.TrainConfig) -> tuple[int, int]:
    """(steps, images) of one epoch on n_l labeled images (train.loop._plain_batches)."""
    bs = min(t.batch_size, max(n_l, 1))
    steps = max(math.ceil(max(n_l, 1) / bs), t.min_steps, 1)
    return steps, steps * bs


def _mixed_steps(n_p: int, s: mf.SemiConfig) -> tuple[int, int]:
    """(steps, images) of one +SEMI epoch over n_p pseudo-labeled images (train.loop._mixed_batches)."""
    p = n_p if s.unlabeled_per_epoch is None else min(n_p, s.unlabeled_per_epoch)
    steps = max(1, math.ceil(p / (s.batch_size - s.labeled_per_batch)))
    return steps, steps * s.labeled_per_batch + p


def _propagations(config: mf.Manifest, refreshes: int, cycle: int, pool: int) -> tuple[int, int]:
    """(propagations, feature images) of `refreshes` label propagations in one cycle: on fixed features
    (semi.features: the encoder's and / or the pixels) one propagation, plus the encoder's pass over the pool once
    per task; on the model's features, a pass over the pool each."""
    if refreshes == 0:
        return 0, 0
    graph = mf.semi_features(config, (mf.image_channels(config.dataset), 0, 0))  # the rule reads channels only
    encoder = graph in ("encoder", "encoder+pixels") and config.pretrain.method != "none"
    if encoder or graph in ("pixels", "encoder+pixels"):
        return 1, pool if cycle == 0 and encoder else 0
    return refreshes, refreshes * pool


def cycle_cost(config: mf.Manifest, cycle: int, pool: int, test: int) -> CycleCost:
    """The cost of cycle `cycle` (0-based) of a task on a pool of `pool` images and `test` test images."""
    a, t, s = config.active, config.train, config.semi
    n_l = min(a.initial + a.budget * cycle, pool)
    plain_steps, plain_images = _plain_steps(n_l, t)
    if a.strategy == "ceal" and cycle > 0 and a.ceal.cap != 0:  # train.loop._epoch_batches: batch_size pseudo-labels a batch
        plain_images += plain_steps * t.batch_size
    steps, images, features, propagations = 0, 0, 0, 0
    if s.method == "label-propagation":
        first_mixed = t.epochs if s.phase2_epochs else min(s.warmup, t.epochs)
        mixed_epochs = (t.epochs + s.phase2_epochs) - first_mixed
        unlabeled = pool - n_l
        n_p = unlabeled if s.selection == "all" else int(round(s.fraction * unlabeled))
        # no pseudo-label (every image labeled): the epochs train on plain batches (train.loop._epoch_batches)
        m_steps, m_images = _mixed_steps(n_p, s) if n_p else (plain_steps, plain_images)
        steps += first_mixed * plain_steps + mixed_epochs * m_steps
        images += first_mixed * plain_images + mixed_epochs * m_images
        propagations, extra = _propagations(config, math.ceil(mixed_epochs / s.every) if mixed_epochs else 0, cycle,
                                            pool)
        features += extra
    elif s.method == "fixmatch":  # every unlabeled image, seen weakly and strongly (two images each), no graph
        first_mixed = t.epochs if s.phase2_epochs else min(s.warmup, t.epochs)
        mixed_epochs = (t.epochs + s.phase2_epochs) - first_mixed
        unlabeled = pool - n_l
        m_steps, m_images = _mixed_steps(unlabeled, s) if unlabeled else (plain_steps, plain_images)
        m_images += (m_images - m_steps * s.labeled_per_batch) if unlabeled else 0  # the strong views
        steps = first_mixed * plain_steps + mixed_epochs * m_steps
        images = first_mixed * plain_images + mixed_epochs * m_images
        features += pool  # the confident predictions at the end of training
        prior = min(s.fixmatch.prior_epochs, mixed_epochs)  # label propagation's prior: a refresh every `every`
        propagations, extra = _propagations(config, math.ceil(prior / s.every) if prior else 0, cycle, pool)
        features += extra
    else:
        steps, images = t.epochs * plain_steps, t.epochs * plain_images
    wanted = needs(a.strategy, a.power.base)  # power reads what its base reads
    if cycle < a.cycles - 1 and wanted & {"probs", "features", "graph"}:
        features += pool  # the selection's pass over the pool
    if cycle < a.cycles - 1 and "mc_probs" in wanted:
        features += a.bald.passes * (pool - n_l)  # MC dropout: active.bald.passes passes over the unlabeled images
    return CycleCost(cycle=cycle, labels=n_l, steps=steps, train=images, features=features, evaluate=test,
                     propagations=propagations)


def pretrain_cost(config: mf.Manifest, pool: int, test: int) -> PretrainCost:
    """The encoder's cost. DeepCluster: per epoch the k-means features of the pool, passes x pool training images,
    the probe. SimCLR: per epoch two views of every pool image (the last partial batch dropped), the features of
    the pool for the NMI k-means and the probe's."""
    p = config.pretrain
    if mf.encoder_method(config) == "simclr":
        sc = p.simclr
        epochs = mf.simclr_epochs(sc, pool)
        per_epoch = max(1, pool // min(sc.batch_size, pool))
        return PretrainCost(epochs=epochs, steps=epochs * per_epoch, train=epochs * per_epoch * min(sc.batch_size, pool) * 2,
                            features=epochs * (pool + pool + test), method="simclr")
    per_epoch = max(1, math.ceil(pool * p.passes / p.batch_size))
    return PretrainCost(epochs=p.epochs, steps=p.epochs * per_epoch, train=p.epochs * pool * p.passes,
                        features=p.epochs * (pool + pool + test))


def encoder_key(config: mf.Manifest) -> str | None:
    """What tells encoders apart in a run (`identity.encoder_fields` as text), None when no encoder is trained for
    the task (neither +PRE nor a cold start on the encoder's features, or given weights)."""
    if not mf.uses_encoder(config) or config.pretrain.weights is not None:
        return None
    return json.dumps(identity.encoder_fields(config), sort_keys=True)


def run_cost(m: mf.Manifest) -> RunCost | None:
    """The cost of every task of a manifest and of each distinct encoder; None when the pool size is unknown."""
    tasks = mf.tasks(m)
    if not tasks or any(sizes(t.config) is None for t in tasks):
        return None
    out = RunCost(tasks=[])
    for task in tasks:
        pool, test = sizes(task.config)  # type: ignore[misc]
        key = encoder_key(task.config)
        if key is not None and key not in out.pretrains:
            out.pretrains[key] = pretrain_cost(task.config, pool, test)
        out.tasks.append(TaskCost([cycle_cost(task.config, c, pool, test) for c in range(task.config.active.cycles)],
                                  key))
    return out


def throughput(value: float | None, option: str) -> float | None:
    """A measured throughput (images/s) given by `option`: None, or a finite positive number; UserError naming the
    option otherwise (nan, inf, 0 or negative would print nonsense hours)."""
    if value is not None and not math.isfinite(value):
        raise UserError(f"{option}: {value} is not a number of images per second; give a finite positive one,"
                        " e.g. 2000")
    if value is not None and value <= 0:
        raise UserError(f"{option}: {value} must be positive")
    return value


def seconds(train: int, inference: int, images_per_second: float, inference_per_second: float | None = None) -> float:
    """Estimated seconds for `train` training and `inference` forward-only images at the given throughputs."""
    if not (math.isfinite(images_per_second) and images_per_second > 0):
        raise ValueError(f"images_per_second must be > 0 and finite, got {images_per_second}")
    fwd = inference_per_second if inference_per_second else INFERENCE_SPEEDUP * images_per_second
    return train / images_per_second + inference / fwd


def task_seconds(run: RunCost, index: int, images_per_second: float,
                 inference_per_second: float | None = None) -> float:
    """Estimated seconds of task `index` alone, plus its encoder's DeepCluster when it needs one (the first task
    of an array to reach it pre-trains it)."""
    t = run.tasks[index]
    total = seconds(t.train, t.inference, images_per_second, inference_per_second)
    if t.pretrain_key is not None:
        p = run.pretrains[t.pretrain_key]
        total += seconds(p.train, p.features, images_per_second, inference_per_second)
    return total


def estimate(m: mf.Manifest, images_per_second: float, inference_per_second: float | None = None
             ) -> tuple[float, float] | None:
    """(longest task with its DeepCluster, whole run on one device) in seconds; None when the pool size is unknown."""
    cost = run_cost(m)
    if cost is None or not cost.tasks:
        return None
    longest = max(task_seconds(cost, i, images_per_second, inference_per_second) for i in range(len(cost.tasks)))
    return longest, seconds(cost.train, cost.inference, images_per_second, inference_per_second)
