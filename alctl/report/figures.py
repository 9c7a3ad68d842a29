"""The report's figures, pure functions over points and rows: AUC, labels saved, paired differences (at each
number of labels and of the AUC), the best variant."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from alctl.report.points import (_VARIANT_ORDER, Point, Row, _by_setting, _extra, _random, _references,
                                 _settings_by_run, summarise)


def _sorted_curve(labels: np.ndarray, accuracy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(labels [n], accuracy [n]) as float64 sorted by labels (stable); ValueError unless both are the same
    non-empty [n]."""
    x = np.asarray(labels, dtype=np.float64)
    y = np.asarray(accuracy, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape or x.size == 0:
        raise ValueError(f"labels {x.shape} and accuracy {y.shape} must be the same non-empty [n]")
    order = np.argsort(x, kind="stable")
    return x[order], y[order]


def area_under_curve(labels: np.ndarray, accuracy: np.ndarray) -> float:
    """Trapezoidal area under accuracy(labels) divided by the labels range: a mean accuracy over the range, in the
    accuracy's unit. One point (or a zero range): its (mean) accuracy."""
    x, y = _sorted_curve(labels, accuracy)
    span = x[-1] - x[0]
    if span == 0:
        return float(y.mean())
    return float(np.sum((y[1:] + y[:-1]) / 2.0 * np.diff(x)) / span)


def labels_to_reach(labels: np.ndarray, accuracy: np.ndarray, target: float) -> tuple[float, str]:
    """The smallest number of labels at which the piecewise-linear curve accuracy(labels) reaches target, and its
    relation: "=" (reached at a point or between two), "<=" (the first point is already above: its labels),
    ">" (never reached: the largest labels)."""
    x, y = _sorted_curve(labels, accuracy)
    tol = 1e-9  # a mean equal to one of Random's points, up to rounding, is reached there
    for i in range(len(x)):
        if y[i] >= target - tol:
            if abs(y[i] - target) <= tol:
                return float(x[i]), "="
            if i == 0:
                return float(x[0]), "<="
            return float(x[i - 1] + (target - y[i - 1]) * (x[i] - x[i - 1]) / (y[i] - y[i - 1])), "="
    return float(x[-1]), ">"


def mean_interval(differences: np.ndarray, confidence: float = 0.95) -> tuple[float, float | None, int]:
    """(mean, half-width of the two-sided t-interval t(1 - (1 - confidence) / 2, n - 1) * sd / sqrt(n), n); the
    half-width is None when n < 2."""
    from scipy import stats

    d = np.asarray(differences, dtype=np.float64)
    if d.ndim != 1 or d.size == 0:
        raise ValueError(f"differences {d.shape} must be a non-empty [n]")
    n = int(d.size)
    if n < 2:
        return float(d.mean()), None, n
    half = float(stats.t.ppf(1.0 - (1.0 - confidence) / 2.0, n - 1) * d.std(ddof=1) / math.sqrt(n))
    return float(d.mean()), half, n


@dataclass(frozen=True)
class Area:
    """Area under the budget curve of one setting: mean ± std over repetitions of each one's trapezoidal mean
    accuracy over its labels range."""

    run: str
    setting: str
    strategy: str
    variant: str
    labels_min: int
    labels_max: int
    cycles: int  # the cycles every repetition has
    auc_mean: float  # percent
    auc_std: float  # percent, sample std (0 for a single repetition)
    repetitions: int


def auc_table(points: list[Point]) -> list[Area]:
    """Area under the budget curve per run and setting, over the cycles every repetition has (repetitions with a
    missing accuracy left out; settings without any left out)."""
    out = []
    for (run, setting), pts in _by_setting(points).items():
        reps: dict[int, dict[int, Point]] = {}
        for p in pts:
            reps.setdefault(p.rep, {})[p.cycle] = p
        common = sorted(set.intersection(*(set(c) for c in reps.values())))
        if not common:
            continue
        areas, lows, highs = [], [], []
        for curve in reps.values():
            x = np.array([curve[c].n_labeled for c in common])
            y = np.array([curve[c].accuracy for c in common])
            if np.isnan(y).any():
                continue
            areas.append(area_under_curve(x, y))
            lows.append(x.min())
            highs.append(x.max())
        if not areas:
            continue
        a = np.array(areas)
        out.append(Area(run=run, setting=setting, strategy=pts[0].strategy, variant=pts[0].variant,
                        labels_min=int(np.round(np.mean(lows))), labels_max=int(np.round(np.mean(highs))),
                        cycles=len(common), auc_mean=float(a.mean()),
                        auc_std=float(a.std(ddof=1)) if len(a) > 1 else 0.0, repetitions=len(a)))
    return out


@dataclass(frozen=True)
class LabelsSaved:
    """How many labels Random (same run, variant and other settings) needs to reach a setting's mean accuracy at
    one of its numbers of labels, by linear interpolation of Random's mean curve."""

    run: str
    setting: str
    strategy: str
    variant: str
    cycle: int
    n_labeled: int
    accuracy_mean: float  # percent
    random_setting: str
    random_labels: float  # labels Random needs; with relation "<=" its smallest, with ">" its largest labels
    relation: str  # "=" | "<=" | ">"
    saved: float  # random_labels - n_labeled, with the same relation


def labels_saved(rows: list[Row]) -> list[LabelsSaved]:
    """For every row whose strategy is not Random and whose run has Random with the same variant and other
    settings: the labels Random needs to reach its mean accuracy, and the labels saved."""
    groups: dict[tuple[str, str], list[Row]] = {}
    for r in rows:
        groups.setdefault((r.run, r.setting), []).append(r)
    out = []
    for (run, setting), group in groups.items():
        ref = _random(setting)
        if ref == setting or group[0].strategy == "random" or (run, ref) not in groups:
            continue
        curve = sorted((r.n_labeled, r.accuracy_mean) for r in groups[run, ref] if not np.isnan(r.accuracy_mean))
        if not curve:
            continue
        x, y = np.array([c[0] for c in curve]), np.array([c[1] for c in curve])
        for r in group:
            if np.isnan(r.accuracy_mean):
                continue
            need, relation = labels_to_reach(x, y, r.accuracy_mean)
            out.append(LabelsSaved(run=run, setting=setting, strategy=r.strategy, variant=r.variant, cycle=r.cycle,
                                   n_labeled=r.n_labeled, accuracy_mean=r.accuracy_mean, random_setting=ref,
                                   random_labels=need, relation=relation, saved=need - r.n_labeled))
    return out


@dataclass(frozen=True)
class Paired:
    """Mean over repetitions of the per-repetition accuracy difference (setting - reference) at one number of
    labels, with its 95% t-interval (None with fewer than 2 pairs)."""

    run: str
    setting: str
    strategy: str
    variant: str
    against: str  # plain: the same strategy's plain variant | random: Random of the same variant | lp: the same
    # setting with label propagation as +SEMI (for another +SEMI method)
    reference_setting: str
    reference_strategy: str
    reference_variant: str
    cycle: int
    n_labeled: int
    difference_mean: float  # points
    ci_low: float | None
    ci_high: float | None
    pairs: int  # repetitions present in both, matched by repetition index


def paired(points: list[Point]) -> list[Paired]:
    """Paired differences against the plain variant, against Random and, for FixMatch, against label propagation
    (same run and other settings), at every number of labels both have; repetitions matched by index, those without
    an accuracy left out."""
    groups = _by_setting(points)
    # (run, setting) -> n_labeled -> rep -> point
    curves: dict[tuple[str, str], dict[int, dict[int, Point]]] = {}
    for key, pts in groups.items():
        for p in pts:
            curves.setdefault(key, {}).setdefault(p.n_labeled, {})[p.rep] = p
    present = _settings_by_run(groups)
    out = []
    for (run, setting), pts in groups.items():
        for against, ref in _references(setting, present[run]):
            if (run, ref) not in curves:
                continue
            mine, theirs = curves[run, setting], curves[run, ref]
            first = groups[run, ref][0]
            for n in sorted(mine):
                reps = sorted(set(mine[n]) & set(theirs.get(n, {})))
                d = np.array([mine[n][k].accuracy - theirs[n][k].accuracy for k in reps])
                d = d[~np.isnan(d)]
                if d.size == 0:
                    continue
                mean, half, count = mean_interval(d)
                out.append(Paired(run=run, setting=setting, strategy=pts[0].strategy, variant=pts[0].variant,
                                  against=against, reference_setting=ref, reference_strategy=first.strategy,
                                  reference_variant=first.variant, cycle=min(p.cycle for p in mine[n].values()),
                                  n_labeled=n, difference_mean=mean,
                                  ci_low=None if half is None else mean - half,
                                  ci_high=None if half is None else mean + half, pairs=count))
    return out


@dataclass(frozen=True)
class PairedArea:
    """Mean over repetitions of the per-repetition difference of the area under the budget curve (setting -
    reference, over the cycles every repetition of both has), with its 95% t-interval (None with fewer than 2)."""

    run: str
    setting: str
    strategy: str
    variant: str
    against: str  # plain | random | lp, as in Paired
    reference_setting: str
    reference_strategy: str
    reference_variant: str
    labels_min: int
    labels_max: int
    cycles: int
    difference_mean: float  # points of AUC
    ci_low: float | None
    ci_high: float | None
    pairs: int


def paired_auc(points: list[Point]) -> list[PairedArea]:
    """Paired AUC differences against the same references as `paired`: per repetition index present in both, the
    area over the cycles that every repetition of both settings has (repetitions with a missing accuracy there
    left out); none where they share fewer than one cycle."""
    groups = _by_setting(points)
    present = _settings_by_run(groups)
    out = []
    for (run, setting), pts in groups.items():
        for against, ref in _references(setting, present[run]):
            if (run, ref) not in groups:
                continue
            curves: dict[str, dict[int, dict[int, Point]]] = {setting: {}, ref: {}}
            for name in (setting, ref):
                for p in groups[run, name]:
                    curves[name].setdefault(p.rep, {})[p.cycle] = p
            common = sorted(set.intersection(*(set(c) for name in curves for c in curves[name].values())))
            reps = sorted(set(curves[setting]) & set(curves[ref]))
            if not common or not reps:
                continue
            diffs, lows, highs = [], [], []
            for k in reps:
                areas = []
                for name in (setting, ref):
                    x = np.array([curves[name][k][c].n_labeled for c in common])
                    y = np.array([curves[name][k][c].accuracy for c in common])
                    areas.append(float("nan") if np.isnan(y).any() else area_under_curve(x, y))
                    lows.append(x.min())
                    highs.append(x.max())
                diffs.append(areas[0] - areas[1])
            d = np.array(diffs)
            d = d[~np.isnan(d)]
            if d.size == 0:
                continue
            mean, half, count = mean_interval(d)
            first = groups[run, ref][0]
            out.append(PairedArea(run=run, setting=setting, strategy=pts[0].strategy, variant=pts[0].variant,
                                  against=against, reference_setting=ref, reference_strategy=first.strategy,
                                  reference_variant=first.variant, labels_min=int(np.round(np.mean(lows))),
                                  labels_max=int(np.round(np.mean(highs))), cycles=len(common),
                                  difference_mean=mean, ci_low=None if half is None else mean - half,
                                  ci_high=None if half is None else mean + half, pairs=count))
    return out


@dataclass(frozen=True)
class Winner:
    """The variant with the highest mean accuracy among those of one strategy at one cycle."""

    run: str
    strategy: str  # with the other swept parameters, as in the table
    cycle: int
    n_labeled: int
    variant: str
    accuracy_mean: float  # percent
    margin: float  # points above the next best variant
    runner_up: str


def winners(rows: list[Row]) -> list[Winner]:
    """For every run, strategy (and other swept parameters) and cycle that has more than one variant, the variant
    with the highest mean accuracy and its margin over the next one."""
    groups: dict[tuple[str, str, int], list[Row]] = {}
    for r in rows:
        if not np.isnan(r.accuracy_mean):
            groups.setdefault((r.run, f"{r.strategy}{_extra(r)}", r.cycle), []).append(r)
    out = []
    for (run, strategy, cycle), group in groups.items():
        if len({r.variant for r in group}) < 2:
            continue
        best, second = sorted(group, key=lambda r: (-r.accuracy_mean, _VARIANT_ORDER.get(r.variant.split()[0], 9)))[:2]
        out.append(Winner(run, strategy, cycle, best.n_labeled, best.variant, best.accuracy_mean,
                          best.accuracy_mean - second.accuracy_mean, second.variant))
    return out


@dataclass(frozen=True)
class Figures:
    """Everything a report shows; the renderers only format it."""

    rows: list[Row]
    auc: list[Area] = field(default_factory=list)
    auc_paired: list[PairedArea] = field(default_factory=list)
    labels_saved: list[LabelsSaved] = field(default_factory=list)
    paired: list[Paired] = field(default_factory=list)
    winners: list[Winner] = field(default_factory=list)
    metric: str = "accuracy"  # the test figure every table holds (accuracy | balanced_accuracy | macro_f1)
    # (run, setting) on a skewed pool -> (its rarest class, that class's pool images)
    rarest: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)


TABLES: dict[str, type] = {"rows": Row, "auc": Area, "auc_paired": PairedArea, "labels_saved": LabelsSaved,
                           "paired": Paired, "winners": Winner}  # json keys / csv `table` values, in output order


def figures(points: list[Point], metric: str = "accuracy") -> Figures:
    """All figures of a report from the repetitions' points (whose `accuracy` holds the test figure `metric`)."""
    rows = summarise(points)
    return Figures(rows=rows, auc=auc_table(points), auc_paired=paired_auc(points), labels_saved=labels_saved(rows),
                   paired=paired(points), winners=winners(rows), metric=metric, rarest=_skewed_settings(points))


def _skewed_settings(points: list[Point]) -> dict[tuple[str, str], tuple[int, int]]:
    """Settings whose pool is skewed (`_rarest`; a run may sweep pools): (run, setting) -> (rarest class, its pool
    images)."""
    out: dict[tuple[str, str], tuple[int, int]] = {}
    for p in points:
        if p.rarest_class is not None and (p.run, p.setting) not in out:
            out[p.run, p.setting] = (p.rarest_class, p.rarest_pool)  # type: ignore[assignment]
    return out


_METRIC_NAMES = {"accuracy": "accuracy", "balanced_accuracy": "balanced accuracy", "macro_f1": "macro-F1"}
