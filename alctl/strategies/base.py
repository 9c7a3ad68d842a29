"""What every acquisition function shares: the pool view in, the selection out, the strategy parameters
and the checks of a call.

Array contract: probs `[n_u, C]` float32 softmax rows following `unlabeled` (a numpy array or a torch
tensor on any device; None when the strategy does not read them); mc_probs `[T, n_u, C]` float32 softmax
rows of T stochastic (MC dropout) forward passes, same rows and devices (None when not read); features
`[n, D]` float32 L2-normalised, one row per pool position (a numpy array or a torch tensor on any device;
None when not read); positions and labels int64 numpy; scores `[n_u]` float32 following `unlabeled`, higher = picked
first; `chosen` `[b]` int64 pool positions in pick order. Caller mistakes raise ValueError / TypeError;
NaN or inf in the model's outputs raise FloatingPointError. Pure: no file I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel

from alctl.propagate.graph import GraphSpec
from alctl.strategies.catalog import PARAMS, POWER_BASES

if TYPE_CHECKING:
    import torch

__all__ = [
    "PoolView", "Selection", "StrategyParams", "StrategyFn", "check_budget", "check_view", "host_probs",
    "host_mc_probs", "host_rows", "is_tensor", "make_selection", "EMPTY", "POWER_BASES",
]

EMPTY = np.zeros(0, dtype=np.int64)
NON_FINITE_PROBS = "selection: the model's probabilities hold NaN or inf (did training diverge?)"
NON_FINITE_FEATURES = "selection: the features hold NaN or inf (did training diverge?)"


@dataclass(frozen=True)
class PoolView:
    """What a strategy may read about the pool at one cycle."""

    # [n_u, C] float32 softmax of the current model on U (rows follow `unlabeled`); None if not needed
    probs: np.ndarray | torch.Tensor | None
    # [n, D] float32 L2-normalised features of EVERY pool image (rows = pool positions); None if not needed
    features: np.ndarray | torch.Tensor | None
    labeled: np.ndarray  # [n_l] int64 pool positions that are labeled
    unlabeled: np.ndarray  # [n_u] int64 pool positions that are unlabeled
    labels: np.ndarray  # [n_l] int64 labels of `labeled`
    num_classes: int
    cycle: int
    # [T, n_u, C] float32 softmax of T forward passes with dropout on (MC dropout; rows follow `unlabeled`);
    # None if not needed
    mc_probs: np.ndarray | torch.Tensor | None = None


@dataclass(frozen=True)
class Selection:
    """A strategy's answer."""

    chosen: np.ndarray  # [b] int64 pool positions (subset of unlabeled), in pick order
    scores: np.ndarray  # [n_u] float32 score of each unlabeled row; higher = picked first
    pseudo_positions: np.ndarray  # [m] int64 pool positions given pseudo-labels for the next training (CEAL), else empty
    pseudo_labels: np.ndarray  # [m] int64
    pseudo_weights: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))  # [m] float32 loss weights


@dataclass(frozen=True)
class StrategyParams:
    """What the acquisition functions read besides the pool view: each strategy's own parameters (its manifest
    section `active.<name>`, an instance of the model `catalog.PARAMS[name]`; absent = that model's defaults) and
    the kNN graph and solver jLP diffuses on (the semi section's). Checked at construction (TypeError)."""

    graph: GraphSpec
    sections: Mapping[str, BaseModel] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Type checks: a GraphSpec, and for each strategy with parameters an instance of its model."""
        if not isinstance(self.graph, GraphSpec):
            raise TypeError(f"StrategyParams.graph must be a GraphSpec, got {type(self.graph).__name__}")
        for name, section in self.sections.items():
            model = PARAMS.get(name)
            if model is None:
                raise TypeError(f"StrategyParams.sections: {name!r} is not a strategy with parameters"
                                f" ({', '.join(PARAMS)})")
            if not isinstance(section, model):
                raise TypeError(f"StrategyParams.sections[{name!r}] must be a {model.__name__}, got"
                                f" {type(section).__name__}")

    def of(self, name: str) -> Any:  # noqa: ANN401 - the model of `name`
        """Strategy `name`'s parameters: its section, or its model's defaults when none was given."""
        section = self.sections.get(name)
        return section if section is not None else PARAMS[name]()

    def updated(self, name: str, **values: Any) -> "StrategyParams":  # noqa: ANN401
        """A copy with some of strategy `name`'s parameters changed, validated by its model (pydantic's
        ValidationError, a ValueError, names a bad value)."""
        section = PARAMS[name].model_validate({**self.of(name).model_dump(), **values})
        return replace(self, sections={**self.sections, name: section})


StrategyFn = Callable[[PoolView, int, np.random.Generator, StrategyParams], Selection]


def is_tensor(obj: Any) -> bool:
    """True for a torch.Tensor (without importing torch when it is not one)."""
    return type(obj).__module__.split(".")[0] == "torch" and hasattr(obj, "device")


def host_probs(view: PoolView) -> PoolView:
    """The view with torch probs brought to the host as a float32 numpy array (numpy probs are left as they are)."""
    if not is_tensor(view.probs):
        return view
    return replace(view, probs=view.probs.detach().cpu().numpy().astype(np.float32))


def host_mc_probs(view: PoolView) -> PoolView:
    """The view with torch mc_probs brought to the host as a float32 numpy array (numpy ones are left as they are)."""
    if not is_tensor(view.mc_probs):
        return view
    return replace(view, mc_probs=view.mc_probs.detach().cpu().numpy().astype(np.float32))


def host_rows(features: np.ndarray | torch.Tensor, rows: np.ndarray) -> np.ndarray:
    """Rows `rows` `[m]` of features `[n, D]` as a C-contiguous float32 numpy array `[m, D]` (a tensor's rows are
    gathered on its device first); FloatingPointError when they hold NaN or inf."""
    idx = np.asarray(rows, dtype=np.int64)
    if is_tensor(features):
        import torch

        out = features.detach()[torch.from_numpy(idx).to(features.device)].to(torch.float32).cpu().numpy()
    else:
        out = np.asarray(features)[idx]
    out = np.ascontiguousarray(out, dtype=np.float32)
    if not np.isfinite(out).all():
        raise FloatingPointError(NON_FINITE_FEATURES)
    return out


def check_budget(view: PoolView, budget: int) -> int:
    """The budget as an int; a ValueError when it is not a whole number >= 0 or exceeds what U still holds."""
    n_u = int(np.asarray(view.unlabeled).shape[0])
    b = int(budget)
    if b != budget or b < 0:
        raise ValueError(f"budget: must be a whole number >= 0, got {budget!r}")
    if b > n_u:
        raise ValueError(f"budget: {b} images asked at cycle {view.cycle} but only {n_u} unlabeled images are left")
    return b


def _shape(arr: Any) -> tuple[int, ...]:
    """Shape of a numpy array, array-like or torch tensor (a tensor stays on its device)."""
    return tuple(arr.shape) if is_tensor(arr) else np.asarray(arr).shape


def check_view(
    view: PoolView, *, need_probs: bool = False, need_features: bool = False, need_mc_probs: bool = False
) -> None:
    """Shape / dtype / disjointness checks of a pool view (a failure is a caller bug: ValueError); non-finite
    probs or mc_probs: FloatingPointError. need_probs / need_mc_probs expect host arrays (see `host_probs`,
    `host_mc_probs`); features may be a tensor."""
    unl = np.asarray(view.unlabeled)
    lab = np.asarray(view.labeled)
    problems = []
    for name, arr in (("unlabeled", unl), ("labeled", lab)):
        if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
            problems.append(f"PoolView.{name}: expected a 1-D int64 array, got {arr.dtype} {arr.shape}")
    if np.asarray(view.labels).shape != lab.shape:
        problems.append(f"PoolView.labels: shape {np.asarray(view.labels).shape} != labeled {lab.shape}")
    if need_probs:
        probs = np.asarray(view.probs)
        if view.probs is None:
            problems.append("PoolView.probs: this strategy reads the probabilities, got None")
        elif probs.ndim != 2 or probs.shape[0] != unl.shape[0]:
            problems.append(f"PoolView.probs: expected [{unl.shape[0]}, C], got {probs.shape}")
        elif probs.shape[1] != view.num_classes or view.num_classes < 2:
            problems.append(f"PoolView.probs: {probs.shape[1]} columns for num_classes={view.num_classes} (needs >= 2)")
        elif not np.isfinite(probs).all():
            raise FloatingPointError(NON_FINITE_PROBS)
    if need_mc_probs:
        mc = np.asarray(view.mc_probs)
        if view.mc_probs is None:
            problems.append("PoolView.mc_probs: this strategy reads MC dropout probabilities, got None")
        elif mc.ndim != 3 or mc.shape[0] < 1 or mc.shape[1] != unl.shape[0]:
            problems.append(f"PoolView.mc_probs: expected [T >= 1, {unl.shape[0]}, C], got {mc.shape}")
        elif mc.shape[2] != view.num_classes or view.num_classes < 2:
            problems.append(f"PoolView.mc_probs: {mc.shape[2]} columns for num_classes={view.num_classes} (needs >= 2)")
        elif not np.isfinite(mc).all():
            raise FloatingPointError(NON_FINITE_PROBS)
    if need_features:
        top = max(int(unl.max(initial=-1)), int(lab.max(initial=-1)))
        if view.features is None:
            problems.append("PoolView.features: this strategy reads the features, got None")
        elif len(shape := _shape(view.features)) != 2 or shape[0] <= top:
            problems.append(f"PoolView.features: expected [n > {top}, D], got {shape}")
    if not problems and (unl.size or lab.size):
        if min(int(unl.min(initial=0)), int(lab.min(initial=0))) < 0:
            problems.append("PoolView: negative pool position")
        else:
            n = max(int(unl.max(initial=-1)), int(lab.max(initial=-1))) + 1
            counts = np.bincount(np.concatenate([unl, lab]).astype(np.int64), minlength=n)
            if counts.max(initial=0) > 1:
                problems.append("PoolView: a pool position is repeated or both labeled and unlabeled")
    if problems:
        raise ValueError("; ".join(problems))


def make_selection(
    chosen: np.ndarray, scores: np.ndarray, pseudo_pos: np.ndarray | None = None, pseudo_lab: np.ndarray | None = None,
    pseudo_weight: float = 1.0,
) -> Selection:
    """A Selection with the contract's dtypes: chosen [b] int64, scores [n_u] float32, pseudo-labels [m] int64 for
    the next training, each weighing `pseudo_weight` in its loss ([m] float32)."""
    pos = EMPTY.copy() if pseudo_pos is None else np.ascontiguousarray(pseudo_pos, dtype=np.int64)
    return Selection(
        chosen=np.ascontiguousarray(chosen, dtype=np.int64),
        scores=np.ascontiguousarray(scores, dtype=np.float32),
        pseudo_positions=pos,
        pseudo_labels=EMPTY.copy() if pseudo_lab is None else np.ascontiguousarray(pseudo_lab, dtype=np.int64),
        pseudo_weights=np.full(len(pos), pseudo_weight, dtype=np.float32),
    )
