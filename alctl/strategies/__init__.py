"""Acquisition functions (random, uncertainty, coreset, ceal, jlp, margin, least-confidence, bald, power, badge,
typiclust, probcover): a pool view in, the chosen pool positions and scores out.

Modules: `base` (PoolView, Selection, StrategyParams, the shared checks), `scores` (random, uncertainty,
margin, least confidence, BALD, power sampling, CEAL), `geometry` (CoreSet: greedy k-center), `embedding`
(BADGE: k-means++ on gradient embeddings), `coverage` (TypiClust, ProbCover), `graph` (jLP over the kNN
graph, on `alctl.propagate.diffusion`), `registry` (the one list of strategies, `select`). Array contracts:
see `base`. Import order is base → families → registry; nothing here imports alctl.manifest.
"""

from __future__ import annotations

from alctl.strategies.base import PoolView, Selection, StrategyFn, StrategyParams
from alctl.strategies.geometry import kcenter_greedy
from alctl.strategies.registry import NAMES, get_strategy, needs, select
from alctl.strategies.scores import entropy

__all__ = [
    "NAMES",
    "PoolView",
    "Selection",
    "StrategyFn",
    "StrategyParams",
    "entropy",
    "get_strategy",
    "kcenter_greedy",
    "needs",
    "select",
]
