"""Acquisition functions (random, uncertainty, coreset, ceal, jlp, margin, least-confidence, bald, power, badge,
typiclust, probcover): a pool view in, the chosen pool positions and scores out.

Modules: `base` (PoolView, Selection, StrategyParams, the shared checks), `scores` (random, uncertainty,
margin, least confidence, BALD, power sampling, CEAL), `geometry` (CoreSet: greedy k-center), `embedding`
(BADGE: k-means++ on gradient embeddings), `coverage` (TypiClust, ProbCover), `graph` (jLP over the kNN
graph, on `alctl.propagate.diffusion`), `catalog` (names and needs, torch-free), `registry` (names paired with
functions, `select`). Array contracts: see `base`. Import order is catalog → base → families → registry; nothing
here imports alctl.config.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "PoolView": "base", "Selection": "base", "StrategyFn": "base", "StrategyParams": "base",
    "kcenter_greedy": "geometry", "NAMES": "registry", "get_strategy": "registry", "needs": "registry",
    "select": "registry", "entropy": "scores",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """The package's names, imported on first use: `alctl.strategies.catalog` (names and needs, no torch) can then
    be read without loading torch and the strategy families."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'alctl.strategies' has no attribute {name!r}")
    return getattr(importlib.import_module(f"alctl.strategies.{_EXPORTS[name]}"), name)
