"""What a finished cycle leaves behind besides its tables' rows of pool, scores and pseudo-labels: its result,
its metrics row and its log line."""

from __future__ import annotations

import resource
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from alctl.engine.steps import PropagationOutcome
from alctl.metrics import ClassFigures
from alctl.strategies import Selection

if TYPE_CHECKING:  # the cycle builds the context these functions read
    from alctl.engine.cycle import TaskContext


@dataclass
class CycleResult:
    """What one cycle produced."""

    accuracy: float
    loss: float
    n_labeled: int
    n_pseudo: int
    seconds: dict[str, float]
    selection: Selection | None
    propagation: PropagationOutcome | None = None
    pseudo_accuracy: float | None = None  # of the pseudo-labels (propagation's or CEAL's) where the truth is known
    figures: ClassFigures | None = None  # per-class test figures (None without a test set)
    labeled_per_class: np.ndarray | None = None  # [C] int64 labeled images of each class this cycle trained on
    model_state: dict[str, torch.Tensor] = field(default_factory=dict)  # the trained model, for model.pt


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process (CUDA: allocated on the device; CPU: max resident set)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _pool_per_class(ctx: TaskContext) -> list[int] | None:
    """Pool images of each class [C] where every pool image's true class is known (a simulation); else None."""
    truth = ctx.ds.train_labels.numpy()
    if (truth < 0).any():
        return None
    return np.bincount(truth, minlength=ctx.ds.num_classes)[: ctx.ds.num_classes].tolist()


def metrics_row(ctx: TaskContext, cycle: int, res: CycleResult, seconds_pretrain: float) -> dict[str, object]:
    """The cycle's metrics row."""
    task, prop, s = ctx.task, res.propagation, res.seconds
    return {
        "task": task.index, "task_key": task.key, "strategy": ctx.config.active.strategy, "variant": task.variant,
        "rep": task.rep, "cycle": cycle, "n_labeled": res.n_labeled, "n_pseudo": res.n_pseudo,
        "accuracy": res.accuracy, "loss": res.loss,
        "balanced_accuracy": None if res.figures is None else res.figures.balanced_accuracy,
        "macro_f1": None if res.figures is None else res.figures.macro_f1,
        "recall_per_class": None if res.figures is None else [None if np.isnan(r) else float(r)
                                                              for r in res.figures.recall],
        "labeled_per_class": None if res.labeled_per_class is None else res.labeled_per_class.tolist(),
        "pool_per_class": _pool_per_class(ctx),
        "pseudo_accuracy": res.pseudo_accuracy,
        "pseudo_accuracy_top_half": None if prop is None else prop.accuracy_top_half,
        "seconds_pretrain": seconds_pretrain, "seconds_train": s.get("train", 0.0), "seconds_eval": s.get("eval", 0.0),
        "seconds_propagate": s.get("propagate", 0.0), "seconds_select": s.get("select", 0.0),
        "seconds_total": s["total"], "peak_memory_mb": peak_memory_mb(ctx.device), "device": str(ctx.device),
        "manifest_hash": ctx.hash,
    }


def cycle_line(tag: str, cycle: int, res: CycleResult, fixmatch: bool = False) -> str:
    """The log line of a finished cycle (`fixmatch`: the pseudo-labels are the model's confident predictions)."""
    s = res.seconds
    acc = "n/a (no test images)" if np.isnan(res.accuracy) else f"{100 * res.accuracy:.2f}%"
    correct = "" if res.pseudo_accuracy is None else f" {100 * res.pseudo_accuracy:.1f}% correct"
    if fixmatch:
        pl = f", {res.n_pseudo} confident predictions{correct}"
    elif res.propagation is not None:  # its accuracy is over every propagated label, not only the n_pseudo used
        pl = f", pseudo-labels{correct}" if correct else ""
    else:
        pl = f", {res.n_pseudo} pseudo-labels{correct}" if res.n_pseudo else ""
    return (f"{tag} cycle {cycle}: {res.n_labeled} labels, accuracy {acc}{pl} | train {s.get('train', 0):.1f}s"
            f" propagate {s.get('propagate', 0):.1f}s eval {s.get('eval', 0):.1f}s select {s.get('select', 0):.1f}s"
            f" total {s['total']:.1f}s")
