"""Label propagation over the pool's kNN graph: `graph` (GraphSpec, W_n), `solver` (Diffusion, CG), `labels`."""

from __future__ import annotations

import importlib
from typing import Any

from alctl.propagate.graph import GraphSpec, diffusion, diffusion_from_knn, normalized_graph
from alctl.propagate.labels import WEIGHT_SCALES, Propagation, label_propagation, propagate_labels, pseudo_labels
from alctl.propagate.solver import Diffusion, solve

__all__ = [
    "GraphSpec", "Propagation", "Diffusion", "WEIGHT_SCALES", "normalized_graph", "diffusion", "diffusion_from_knn",
    "solve", "label_propagation", "propagate_labels", "pseudo_labels", "class_weights", "sample_by_certainty",
]

# Moved to alctl.train.sampling; still importable from here, loaded on first use (alctl.train loads torch).
_MOVED = {"class_weights": "alctl.train.sampling", "sample_by_certainty": "alctl.train.sampling"}


def __getattr__(name: str) -> Any:
    """`class_weights` and `sample_by_certainty` from their home, alctl.train.sampling (AttributeError otherwise)."""
    if name not in _MOVED:
        raise AttributeError(f"module 'alctl.propagate' has no attribute {name!r}")
    return getattr(importlib.import_module(_MOVED[name]), name)
