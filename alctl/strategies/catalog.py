"""The one list of acquisition functions, without torch: each entry's name, what it reads from the model, where
its function lives and its parameter model (the manifest section `active.<name>`). The manifest's schema, the
plan and the engine's `StrategyParams` derive from it; `registry` imports the functions.

Needs are names from NEED_KINDS: probs = the softmax `[n_u, C]` of the model on U, mc_probs = the softmax
`[T, n_u, C]` of T forward passes with dropout on (MC dropout), features = the feature rows `[n, D]` of the whole
pool, graph = the kNN graph on those features (so also features). How to add a strategy: docs/strategies.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from alctl.strategies.params import (
    POWER_BASES,
    BaldParams,
    CealParams,
    ClassBalancedParams,
    PowerParams,
    ProbCoverParams,
)

__all__ = ["Entry", "ENTRIES", "NAMES", "NEEDS", "NEED_KINDS", "POWER_BASES", "COLD_START_NAMES", "PARAMS", "needs"]

NEED_KINDS = frozenset({"probs", "mc_probs", "features", "graph"})


@dataclass(frozen=True)
class Entry:
    """One acquisition function: its manifest name, what it reads, `module:function` under alctl.strategies, its
    parameter model (None: it has none), and whether it can pick the initial set before any label."""

    name: str
    needs: frozenset[str]
    function: str
    params: type[BaseModel] | None = None
    cold_start: bool = False


# In the order the report lists them (the paper's five first).
ENTRIES: tuple[Entry, ...] = (
    Entry("random", frozenset(), "scores:random_select"),
    Entry("uncertainty", frozenset({"probs"}), "scores:uncertainty_select"),
    Entry("coreset", frozenset({"features"}), "geometry:coreset_select"),
    Entry("ceal", frozenset({"probs"}), "scores:ceal_select", CealParams),
    Entry("jlp", frozenset({"features", "graph"}), "graph:jlp_select"),
    Entry("margin", frozenset({"probs"}), "scores:margin_select"),
    Entry("least-confidence", frozenset({"probs"}), "scores:least_confidence_select"),
    Entry("bald", frozenset({"mc_probs"}), "scores:bald_select", BaldParams),
    # what a base may read; `needs(name, base)` narrows it to the base's
    Entry("power", frozenset({"probs", "mc_probs"}), "scores:power_select", PowerParams),
    Entry("badge", frozenset({"probs", "features"}), "embedding:badge_select"),
    Entry("class-balanced", frozenset({"probs"}), "scores:class_balanced_select", ClassBalancedParams),
    Entry("typiclust", frozenset({"features"}), "coverage:typiclust_select", cold_start=True),
    Entry("probcover", frozenset({"features"}), "coverage:probcover_select", ProbCoverParams, cold_start=True),
)
NAMES: tuple[str, ...] = tuple(e.name for e in ENTRIES)
NEEDS: dict[str, frozenset[str]] = {e.name: e.needs for e in ENTRIES}
PARAMS: dict[str, type[BaseModel]] = {e.name: e.params for e in ENTRIES if e.params is not None}
COLD_START_NAMES: tuple[str, ...] = tuple(e.name for e in ENTRIES if e.cold_start)


def needs(name: str, power_base: str | None = None) -> frozenset[str]:
    """What strategy `name` reads (a subset of NEED_KINDS); for power with `power_base`, what that base reads.
    Unknown names raise ValueError listing the valid ones."""
    if not isinstance(name, str) or name not in NEEDS:
        raise ValueError(f"unknown strategy {name!r}; valid: {', '.join(NAMES)}")
    if name == "power" and power_base is not None:
        return needs(power_base)
    return NEEDS[name]
