"""Per-class figures of a classifier's test predictions: balanced accuracy, macro-F1 and each class's recall
(pure numpy; the definitions are scikit-learn's, so the figures can be checked against it)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

METRICS: tuple[str, ...] = ("accuracy", "balanced_accuracy", "macro_f1")  # what `alctl report --metric` takes


@dataclass(frozen=True)
class ClassFigures:
    """Figures of one set of predictions; fractions in [0, 1], NaN where undefined (no image)."""

    accuracy: float
    balanced_accuracy: float  # mean recall over the classes present in the truth
    macro_f1: float  # mean F1 over the classes present in the truth or the predictions (F1 0 where undefined)
    recall: np.ndarray  # [C] float64 recall of each class; NaN for a class absent from the truth


def class_figures(predicted: np.ndarray, truth: np.ndarray, num_classes: int) -> ClassFigures:
    """Figures of predictions [n] int against the truth [n] int in [0, num_classes) (balanced accuracy as
    sklearn's balanced_accuracy_score, macro-F1 as its f1_score(average='macro', zero_division=0)); no image:
    every figure NaN. ValueError on shapes that differ or labels out of range."""
    p = np.asarray(predicted, dtype=np.int64).ravel()
    t = np.asarray(truth, dtype=np.int64).ravel()
    if p.shape != t.shape:
        raise ValueError(f"predicted {p.shape} and truth {t.shape} must be the same [n]")
    if p.size and (min(p.min(), t.min()) < 0 or max(p.max(), t.max()) >= num_classes):
        raise ValueError(f"labels must be in [0, {num_classes})")
    recall = np.full(num_classes, np.nan)
    if p.size == 0:
        return ClassFigures(float("nan"), float("nan"), float("nan"), recall)
    confusion = np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, -1)
    hits = np.diag(confusion).astype(np.float64)  # [C]
    support, predicted_count = confusion.sum(axis=1), confusion.sum(axis=0)  # [C] truth, [C] predictions
    present = support > 0
    recall[present] = hits[present] / support[present]
    seen = present | (predicted_count > 0)
    denominator = support + predicted_count  # F1 = 2 tp / (2 tp + fp + fn) = 2 tp / (support + predicted)
    f1 = np.divide(2.0 * hits, denominator, out=np.zeros(num_classes), where=denominator > 0)
    return ClassFigures(accuracy=float(hits.sum() / p.size), balanced_accuracy=float(recall[present].mean()),
                        macro_f1=float(f1[seen].mean()), recall=recall)
