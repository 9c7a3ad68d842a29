"""The strategies' names and what each reads from the model, without torch: the manifest's schema and the plan
read this; `registry` pairs every name with its function and checks that both list the same names.

Needs are names from NEED_KINDS: probs = the softmax `[n_u, C]` of the model on U, mc_probs = the softmax
`[T, n_u, C]` of T forward passes with dropout on (MC dropout), features = the feature rows `[n, D]` of the whole
pool, graph = the kNN graph on those features (so also features).
"""

from __future__ import annotations

NEED_KINDS = frozenset({"probs", "mc_probs", "features", "graph"})
# name -> what it reads, in the order the report lists them (the paper's five first)
NEEDS: dict[str, frozenset[str]] = {
    "random": frozenset(),
    "uncertainty": frozenset({"probs"}),
    "coreset": frozenset({"features"}),
    "ceal": frozenset({"probs"}),
    "jlp": frozenset({"features", "graph"}),
    "margin": frozenset({"probs"}),
    "least-confidence": frozenset({"probs"}),
    "bald": frozenset({"mc_probs"}),
    "power": frozenset({"probs", "mc_probs"}),  # what a base may read; `needs(name, base)` narrows it
    "badge": frozenset({"probs", "features"}),
    "typiclust": frozenset({"features"}),
    "probcover": frozenset({"features"}),
}
NAMES: tuple[str, ...] = tuple(NEEDS)
# The scores power sampling may raise to a power: probability-based, each >= 0 (see scores.power_select).
POWER_BASES: tuple[str, ...] = ("bald", "uncertainty", "margin", "least-confidence")
# Strategies that can pick the initial set before any label or model (they read features only).
COLD_START_NAMES: tuple[str, ...] = ("typiclust", "probcover")


def needs(name: str, power_base: str | None = None) -> frozenset[str]:
    """What strategy `name` reads (a subset of NEED_KINDS); for power with `power_base`, what that base reads.
    Unknown names raise ValueError listing the valid ones."""
    if not isinstance(name, str) or name not in NEEDS:
        raise ValueError(f"unknown strategy {name!r}; valid: {', '.join(NAMES)}")
    if name == "power" and power_base is not None:
        return needs(power_base)
    return NEEDS[name]
