"""Fit / evaluate / extract features, pure (no file I/O): images uint8 [N, C, H, W], labels int64 [N], probs [n, C], features [n, D].

Modules: `compute` (Compute: precision, memory format, torch.compile), `spec` (TrainSpec, Targets, FitState, Semi,
Consistency, optimizer and learning-rate schedule), `losses` (weighted, FixMatch / FlexMatch consistency), `loop`
(epoch batches, `fit`), `predict` (predict, MC dropout, evaluate), `sampling` (class weights, certainty sampling).
"""

from __future__ import annotations

from alctl.train.compute import COMPILE_BACKEND, FP32, PRECISIONS, Compute
from alctl.train.loop import _epoch_batches, _flat_targets, _mixed_batches, _plain_batches, check_finite, fit
from alctl.train.losses import consistency_loss, flexible_thresholds, weighted_loss
from alctl.train.predict import evaluate, evaluate_predictions, predict, predict_mc
from alctl.train.sampling import class_weights, sample_by_certainty
from alctl.train.spec import (
    Consistency,
    FitState,
    Semi,
    Targets,
    TrainSpec,
    cosine_lr,
    learning_rate,
    make_optimizer,
    total_epochs,
)

__all__ = [
    "PRECISIONS", "COMPILE_BACKEND", "FP32", "Compute", "TrainSpec", "Targets", "FitState", "Consistency", "Semi",
    "make_optimizer", "cosine_lr", "total_epochs", "learning_rate", "weighted_loss", "consistency_loss",
    "flexible_thresholds", "check_finite", "fit", "predict", "predict_mc", "evaluate", "evaluate_predictions",
    "class_weights", "sample_by_certainty",
]
# Private names that tests and benchmarks reach through the package. COMPILE_BACKEND is read at
# call time in `compute`: patch alctl.train.compute.COMPILE_BACKEND, not this copy.
__all__ += ["_plain_batches", "_mixed_batches", "_epoch_batches", "_flat_targets"]
