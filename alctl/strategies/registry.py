"""The catalog's acquisition functions, imported; `needs` says what one reads and `select` runs one.

`needs` holds names from {"probs", "mc_probs", "features", "graph"}: probs = the softmax `[n_u, C]` of the
model on U, mc_probs = the softmax `[T, n_u, C]` of T forward passes on U with dropout on (MC dropout),
features = the feature rows `[n, D]` of the whole pool, graph = builds the kNN graph on those features (so
also needs them). Power sampling reads what its base score reads (`needs(name, params)`). A PoolView's
fields that a strategy does not need may be None. Names, needs, functions and parameter models come from
`catalog` (torch-free: the manifest's schema reads it); this module imports the functions. Unknown names raise
ValueError.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import numpy as np
import torch

from alctl.strategies.base import PoolView, Selection, StrategyFn, StrategyParams, check_budget
from alctl.strategies.catalog import COLD_START_NAMES, ENTRIES, NAMES, NEED_KINDS, POWER_BASES, Entry
from alctl.strategies.catalog import needs as catalog_needs

__all__ = [
    "Strategy", "STRATEGIES", "NAMES", "NEED_KINDS", "POWER_BASES", "COLD_START_NAMES", "needs", "get_strategy", "select",
    "cold_start",
]


@dataclass(frozen=True)
class Strategy:
    """One acquisition function: its manifest name, the function, what it reads."""

    name: str
    fn: StrategyFn
    needs: frozenset[str]


def _function(entry: Entry) -> StrategyFn:
    """The function a catalog entry names (`module:function` under alctl.strategies)."""
    module, attr = entry.function.split(":")
    return getattr(importlib.import_module(f"alctl.strategies.{module}"), attr)


STRATEGIES: tuple[Strategy, ...] = tuple(Strategy(e.name, _function(e), e.needs) for e in ENTRIES)
_BY_NAME = {s.name: s for s in STRATEGIES}


def _entry(name: str) -> Strategy:
    """The registry entry of `name`; a ValueError listing the valid names otherwise."""
    entry = _BY_NAME.get(name) if isinstance(name, str) else None
    if entry is None:
        raise ValueError(f"unknown strategy {name!r}; valid: {', '.join(NAMES)}")
    return entry


def needs(name: str, params: StrategyParams | None = None) -> frozenset[str]:
    """What strategy `name` reads: a subset of NEED_KINDS ("graph" implies "features"). For "power", with
    `params` the needs of its base score (active.power.base); without, everything a base may read."""
    _entry(name)
    return catalog_needs(name, params.of("power").base if params is not None else None)


def get_strategy(name: str) -> StrategyFn:
    """The acquisition function registered under `name`: fn(view, budget, rng, params) -> Selection."""
    return _entry(name).fn


def select(name: str, view: PoolView, budget: int, rng: np.random.Generator, params: StrategyParams) -> Selection:
    """Run strategy `name` on `view` for `budget` images and check its answer against the Selection contract
    (a broken contract is a RuntimeError: a bug of the strategy)."""
    fn = get_strategy(name)
    if not isinstance(params, StrategyParams):
        raise TypeError(f"select: params must be a StrategyParams, got {type(params).__name__}")
    b = check_budget(view, budget)
    sel = fn(view, b, rng, params)
    unl = np.asarray(view.unlabeled, dtype=np.int64)
    chosen = np.asarray(sel.chosen)
    problems = []
    if chosen.shape != (b,):
        problems.append(f"chosen has shape {chosen.shape}, expected ({b},)")
    elif np.unique(chosen).shape[0] != b or not np.isin(chosen, unl).all():
        problems.append("chosen repeats a position or holds one that is not unlabeled")
    if np.asarray(sel.scores).shape != unl.shape:
        problems.append(f"scores has shape {np.asarray(sel.scores).shape}, expected {unl.shape}")
    if not (np.asarray(sel.pseudo_positions).shape == np.asarray(sel.pseudo_labels).shape
            == np.asarray(sel.pseudo_weights).shape):
        problems.append("pseudo_positions, pseudo_labels and pseudo_weights differ in shape")
    if problems:
        raise RuntimeError(f"strategy '{name}' broke the Selection contract: " + "; ".join(problems))
    return sel


def cold_start(
    name: str, features: np.ndarray | torch.Tensor, n: int, rng: np.random.Generator, params: StrategyParams,
    num_classes: int,
) -> np.ndarray:
    """The initial set chosen by `name` (one of COLD_START_NAMES) on features `[N, D]` of every pool image (rows =
    pool positions, L2-normalised) with nothing labeled yet → `[n]` int64 pool positions in pick order
    (num_classes: the clusters of ProbCover's automatic radius; no label is read)."""
    if name not in COLD_START_NAMES:
        raise ValueError(f"cold start: {name!r} cannot pick an initial set; valid: {', '.join(COLD_START_NAMES)}")
    every = np.arange(int(features.shape[0]), dtype=np.int64)
    view = PoolView(probs=None, features=features, labeled=np.zeros(0, dtype=np.int64), unlabeled=every,
                    labels=np.zeros(0, dtype=np.int64), num_classes=num_classes, cycle=0)
    return np.asarray(select(name, view, n, rng, params).chosen, dtype=np.int64)
