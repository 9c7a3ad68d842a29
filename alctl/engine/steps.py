"""The model-dependent steps of a cycle: label propagation over the pool (+SEMI) and acquisition.

Features `[N, D]` float32 L2-normalised and probabilities `[n_u, C]` stay on the model's device; positions are
int64 numpy arrays of pool positions.
"""

from __future__ import annotations

import math

from dataclasses import dataclass

import numpy as np
import torch

from alctl import config as mf
from alctl import runtime
from alctl.data import DatasetSplits
from alctl.engine import settings
from alctl.engine.tables import PoolState
from alctl.errors import AlctlError, UserError
from alctl.models import ConvLarge
from alctl.propagate.labels import label_propagation
from alctl.strategies import PoolView, Selection, needs, select
from alctl.train.predict import predict, predict_mc


@dataclass
class PropagationOutcome:
    """A propagation over the pool, with its pseudo-label accuracy when the truth is known."""

    epoch: int
    labels: np.ndarray  # [N] int64 per pool position
    weights: np.ndarray  # [N] float32
    class_weights: np.ndarray  # [C] float32
    unlabeled: np.ndarray  # [n_u] positions that received pseudo-labels
    accuracy: float | None = None
    accuracy_top_half: float | None = None

    ARRAYS = ("labels", "weights", "class_weights", "unlabeled")

    def to_plain(self) -> dict[str, object]:
        """The outcome as tensors and numbers (for a weights_only checkpoint)."""
        out: dict[str, object] = {name: torch.from_numpy(np.ascontiguousarray(getattr(self, name)))
                                  for name in self.ARRAYS}
        out.update(epoch=self.epoch, accuracy=self.accuracy, accuracy_top_half=self.accuracy_top_half)
        return out

    @classmethod
    def from_plain(cls, d: dict[str, object]) -> "PropagationOutcome":
        """Inverse of `to_plain`."""
        arrays = {name: d[name].cpu().numpy() for name in cls.ARRAYS}  # type: ignore[union-attr]
        return cls(epoch=int(d["epoch"]), accuracy=d["accuracy"], accuracy_top_half=d["accuracy_top_half"],  # type: ignore[arg-type]
                   **arrays)


def pool_features(config: mf.Manifest, ds: DatasetSplits, model: ConvLarge, images: torch.Tensor) -> torch.Tensor:
    """L2-normalised features [N, D] float32 of every pool image from `model`, on the images' device (forward passes
    in the train section's precision)."""
    _, feats = predict(model, images, ds.mean, ds.std, config.train.eval_batch_size,
                       settings.compute(config.train, images.device))
    return feats


def pixel_features(images: torch.Tensor) -> torch.Tensor:
    """The images themselves as features: uint8 [N, C, H, W] -> float32 [N, C*H*W], centred on the pool mean and
    L2-normalised (the space scikit-learn's LabelSpreading works in), on the images' device."""
    x = images.reshape(images.shape[0], -1).float()
    x = x - x.mean(dim=0, keepdim=True)
    return torch.nn.functional.normalize(x, dim=1)


def joined_features(parts: list[torch.Tensor]) -> torch.Tensor:
    """L2-normalised feature blocks [N, D_i] side by side, scaled by 1/sqrt(blocks): [N, sum D_i], unit rows whose
    dot product is the mean of the blocks' cosines (one block is returned as it is)."""
    if len(parts) == 1:
        return parts[0]
    return torch.cat(parts, dim=1) / math.sqrt(len(parts))


def pseudo_label_accuracy(labels: np.ndarray, truth: np.ndarray) -> float | None:
    """The fraction of pseudo-labels [m] equal to the truth [m] where it is known (>= 0); None where none is."""
    known = truth >= 0
    return float((labels[known] == truth[known]).mean()) if known.any() else None


def propagate_pool(
    config: mf.Manifest, ds: DatasetSplits, feats: torch.Tensor, labeled: np.ndarray, labels: np.ndarray, epoch: int,
) -> PropagationOutcome:
    """Label propagation over the pool's features [N, D] from `labeled` [n_l] with `labels` [n_l], and the
    pseudo-labels' accuracy where the truth is known."""
    features = feats if feats.is_cuda else np.ascontiguousarray(feats.numpy(), dtype=np.float32)
    prop = label_propagation(features, labeled, labels, ds.num_classes, settings.graph_spec(config.semi),
                             config.semi.weight_scale)
    unlabeled = np.setdiff1d(np.arange(len(prop.labels)), labeled)
    return _scored(PropagationOutcome(epoch, prop.labels, prop.weights, prop.class_weights, unlabeled), ds)


def _scored(out: PropagationOutcome, ds: DatasetSplits) -> PropagationOutcome:
    """`out` with the accuracy of its pseudo-labels on out.unlabeled where the truth is known, and that of the half
    with the largest weights (ties by position)."""
    truth = ds.train_labels.numpy()[out.unlabeled]
    known = truth >= 0
    if known.any():
        u = out.unlabeled[known]
        correct = out.labels[u] == truth[known]
        out.accuracy = float(correct.mean())
        top = np.argsort(-out.weights[u], kind="stable")[: max(1, len(u) // 2)]
        out.accuracy_top_half = float(correct[top].mean())
    return out


def confident_predictions(
    config: mf.Manifest, ds: DatasetSplits, model: ConvLarge, images: torch.Tensor, labeled: np.ndarray, epoch: int,
) -> PropagationOutcome:
    """FixMatch's pseudo-labels at the end of training: the model's predictions on the unlabeled pool images
    (no augmentation) whose top probability reaches semi.fixmatch.threshold, the images FixMatch's loss would
    train on; weights = that probability; their accuracy where the truth is known (top half: the more confident
    half). images uint8 [N, C, H, W], labeled [n_l] positions."""
    probs, _ = predict(model, images, ds.mean, ds.std, config.train.eval_batch_size,
                       settings.compute(config.train, images.device))
    confidence, guess = (t.cpu().numpy() for t in probs.max(dim=1))
    n = len(confidence)
    unlabeled = np.setdiff1d(np.arange(n), labeled)
    kept = unlabeled[confidence[unlabeled] >= config.semi.fixmatch.threshold]
    weights = np.zeros(n, np.float32)
    weights[kept] = confidence[kept]
    return _scored(PropagationOutcome(epoch, guess.astype(np.int64), weights, np.ones(ds.num_classes, np.float32),
                                      kept), ds)


def acquire(
    config: mf.Manifest, rep: int, ds: DatasetSplits, pool: PoolState, model: ConvLarge, images: torch.Tensor,
    cycle: int,
) -> Selection:
    """Run the task's acquisition function on the current model: b pool positions out of the never-selected ones.
    Only what the strategy needs is computed, and it stays on the model's device."""
    name, budget = config.active.strategy, config.active.budget
    labeled, unlabeled = pool.labeled_at(cycle), pool.unlabeled
    if budget > len(unlabeled):
        raise UserError(f"active.budget: {budget} images asked at cycle {cycle} but only {len(unlabeled)} unlabeled"
                        " images are left; lower active.budget or active.cycles")
    params = settings.strategy_params(config)
    wanted = needs(name, params)
    probs_u = feats = mc_probs = None
    if wanted & {"probs", "features", "graph"}:
        probs, f = predict(model, images, ds.mean, ds.std, config.train.eval_batch_size,
                           settings.compute(config.train, images.device))
        probs_u = probs[torch.from_numpy(unlabeled).to(probs.device)] if "probs" in wanted else None
        feats = f if wanted & {"features", "graph"} else None
    if "mc_probs" in wanted:
        mc_probs = mc_dropout_probs(config, rep, ds, model, images, unlabeled, cycle)
    view = PoolView(probs=probs_u, features=feats, labeled=labeled.astype(np.int64),
                    unlabeled=unlabeled.astype(np.int64), labels=pool.label[labeled].astype(np.int64),
                    num_classes=ds.num_classes, cycle=cycle, mc_probs=mc_probs)
    rng = runtime.rng(config.seed, rep, cycle, "select")
    try:
        return select(name, view, budget, rng, params)
    except FloatingPointError as exc:
        raise AlctlError(str(exc)) from None


def mc_dropout_probs(
    config: mf.Manifest, rep: int, ds: DatasetSplits, model: ConvLarge, images: torch.Tensor, unlabeled: np.ndarray,
    cycle: int,
) -> torch.Tensor:
    """Softmax [T, n_u, C] float32 of T = active.bald.passes forward passes over the `unlabeled` pool positions with
    dropout on and batch norm in eval mode (`train.predict_mc`), on the images' device. Dropout is seeded from
    (seed, rep, cycle, "bald"), so the same manifest gives the same passes; torch's global generators (CPU and
    the images' CUDA device) are restored afterwards, and so is the model's mode."""
    dev = images.device
    devices = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        runtime.seed_torch(config.seed, rep, cycle, "bald")
        return predict_mc(model, images[torch.from_numpy(unlabeled).to(dev)], ds.mean, ds.std,
                          config.active.bald.passes, config.train.eval_batch_size, settings.compute(config.train, dev))
