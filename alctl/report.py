"""Aggregation over repetitions and rendering (markdown, csv, json, png): `figures` computes every table from
the repetitions' `Point`s (rows, auc, auc_paired, labels_saved, paired, winners); the renderers only format them.
What each table holds: docs/internals.md, Report figures."""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import pyarrow as pa

from alctl import store
from alctl.errors import UserError
from alctl.metrics import METRICS
from alctl.safe_text import terminal
from alctl.strategies.catalog import NAMES as STRATEGY_NAMES

_REP = re.compile(r"/?rep=\d+$")


@dataclass(frozen=True)
class Point:
    """One repetition of a setting at one cycle."""

    run: str
    setting: str  # task key without the repetition
    strategy: str
    variant: str
    rep: int
    cycle: int
    n_labeled: int
    accuracy: float  # percent; NaN when there is no test set
    n_pseudo: int | None = None  # pseudo-labeled images trained on; None in older metrics files
    pseudo_accuracy: float | None = None  # percent of pseudo-labels correct; None when the truth is unknown or none
    train_seconds: float | None = None  # the cycle's training, propagation included (seconds_train + _propagate)
    rarest_labeled: int | None = None  # labeled images of the pool's rarest class (None: pool counts unknown)
    rarest_class: int | None = None  # that class's index (fewest pool images; the first on ties)
    rarest_pool: int | None = None  # its images in the pool


@dataclass(frozen=True)
class Row:
    """One aggregated point: a setting at one cycle over its repetitions."""

    run: str
    setting: str  # task key without the repetition
    strategy: str
    variant: str
    cycle: int
    n_labeled: int
    accuracy_mean: float  # percent
    accuracy_std: float  # percent, sample std (0 for a single repetition)
    repetitions: int
    n_pseudo_mean: float | None = None  # over the repetitions that record it; None when none does
    pseudo_accuracy_mean: float | None = None  # percent, over the repetitions that record it; None when none does
    train_seconds_mean: float | None = None  # training + propagation seconds, over the repetitions that record it
    rarest_labeled_mean: float | None = None  # labeled images of the pool's rarest class, over the repetitions


@dataclass(frozen=True)
class TaskStatus:
    """How far one planned task of a run got."""

    run: str
    index: int
    key: str
    state: str  # finished | running | stopped | not started
    cycles_done: int
    cycles_total: int
    detail: str = ""


def task_statuses(run: Path) -> list[TaskStatus] | None:
    """Every task the run's manifest plans, with its state; None when the run has no readable manifest."""
    from alctl import manifest as mf
    from alctl.errors import ManifestError

    path = run / "manifest.yaml"
    try:
        m = mf.load(path)
    except ManifestError:
        return None
    out = []
    for t in mf.tasks(m):
        tdir = run / "tasks" / t.key
        metrics = store.read_table(tdir / "metrics.parquet", "metrics")
        done = len(np.unique(metrics["cycle"].to_numpy()))
        total = t.config.active.cycles
        lock = store.Lock(tdir / ".lock", t.key)
        owner = lock.owner() if lock.path.is_file() else None
        if done >= total:
            state, detail = "finished", ""
        elif owner is not None and not lock.is_stale(owner):
            state, detail = "running", f"process {owner.get('pid')} on {owner.get('host')}"
        elif tdir.is_dir():
            state, detail = "stopped", "failed, preempted or waiting for labels; rerun `alctl cycle` to resume"
        else:
            state, detail = "not started", ""
        out.append(TaskStatus(run.name, t.index, t.key, state, done, total, detail))
    return out


def find_runs(root: Path = Path("runs")) -> list[Path]:
    """Every run directory under root (a directory with tasks/)."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if (p / "tasks").is_dir())


def read_points(run_dirs: list[Path], finished_only: bool = True, metric: str = "accuracy") -> list[Point]:
    """Every repetition's test figure `metric` (accuracy, balanced_accuracy or macro_f1; in Point.accuracy, %) at
    every cycle of each run (finished tasks only, when the run's manifest tells which tasks are finished); a
    figure an older metrics file lacks is NaN."""
    if metric not in METRICS:
        raise UserError(f"--metric: {terminal(str(metric), limit=40)} is not one of {', '.join(METRICS)}")
    points: list[Point] = []
    for run in run_dirs:
        t = store.read_metrics_dataset(run)
        statuses = task_statuses(run) if finished_only else None
        if statuses is not None and t.num_rows:
            done = {st.key for st in statuses if st.state == "finished"}
            t = t.filter(pa.array(np.isin(np.array(t["task_key"].to_pylist(), dtype=object), list(done))))
        if t.num_rows == 0:
            continue
        task_keys = t["task_key"].to_pylist()
        acc = t[metric].to_numpy(zero_copy_only=False).astype(np.float64) * 100.0
        train = [None if a is None or b is None else a + b
                 for a, b in zip(t["seconds_train"].to_pylist(), t["seconds_propagate"].to_pylist())]
        rarest = [_rarest(lab, pool) for lab, pool in zip(t["labeled_per_class"].to_pylist(),
                                                           t["pool_per_class"].to_pylist())]
        for key, strategy, variant, rep, cycle, labels, a, n_pseudo, pseudo, seconds, rare in zip(
                task_keys, t["strategy"].to_pylist(), t["variant"].to_pylist(), t["rep"].to_pylist(),
                t["cycle"].to_pylist(), t["n_labeled"].to_pylist(), acc, t["n_pseudo"].to_pylist(),
                t["pseudo_accuracy"].to_pylist(), train, rarest):
            if rep is None:
                found = re.search(r"rep=(\d+)$", key)
                rep = int(found.group(1)) if found else 0
            setting = _REP.sub("", key)
            points.append(Point(run=run.name, setting=setting, strategy=str(strategy),
                                variant=_variant_name(str(variant), setting),
                                rep=int(rep), cycle=int(cycle), n_labeled=int(labels), accuracy=float(a),
                                n_pseudo=None if n_pseudo is None else int(n_pseudo),
                                pseudo_accuracy=None if pseudo is None or math.isnan(pseudo) else 100.0 * pseudo,
                                train_seconds=seconds, rarest_labeled=rare[0], rarest_class=rare[1],
                                rarest_pool=rare[2]))
    return points


def _rarest(labeled: list[int] | None, pool: list[int] | None) -> tuple[int | None, int | None, int | None]:
    """(labeled images of the pool's rarest class, its index, its pool images) from a metrics row's per-class
    lists; Nones when either is unknown (older files, a human oracle without true labels) or the pool is not
    skewed (its rarest class holds more than half as many images as its largest)."""
    if not labeled or not pool or len(labeled) != len(pool) or 2 * min(pool) > max(pool):
        return None, None, None
    c = int(np.argmin(pool))
    return int(labeled[c]), c, int(pool[c])


def _by_setting(points: list[Point]) -> dict[tuple[str, str], list[Point]]:
    """Points grouped by (run, setting): runs in order of appearance, settings in the paper's order."""
    groups: dict[tuple[str, str], list[Point]] = {}
    for p in points:
        groups.setdefault((p.run, p.setting), []).append(p)
    runs = list(dict.fromkeys(p.run for p in points))
    return dict(sorted(groups.items(), key=lambda kv: (runs.index(kv[0][0]), _setting_order(kv[0][1]))))


def _mean(values: list[float | int | None]) -> float | None:
    """The mean of the values that are not None; None when all are."""
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known else None


def summarise(points: list[Point]) -> list[Row]:
    """Mean ± std of accuracy over repetitions for each run, setting and cycle, with the mean number and accuracy
    of pseudo-labels."""
    rows: list[Row] = []
    for (run, setting), pts in _by_setting(points).items():
        for c in sorted({p.cycle for p in pts}):
            cp = [p for p in pts if p.cycle == c]
            a = np.array([p.accuracy for p in cp])
            a = a[~np.isnan(a)]
            rows.append(
                Row(run=run, setting=setting, strategy=cp[0].strategy, variant=cp[0].variant, cycle=c,
                    n_labeled=int(np.round(np.mean([p.n_labeled for p in cp]))),
                    accuracy_mean=float(a.mean()) if len(a) else float("nan"),
                    accuracy_std=float(a.std(ddof=1)) if len(a) > 1 else 0.0, repetitions=len(cp),
                    n_pseudo_mean=_mean([p.n_pseudo for p in cp]),
                    pseudo_accuracy_mean=_mean([p.pseudo_accuracy for p in cp]),
                    train_seconds_mean=_mean([p.train_seconds for p in cp]),
                    rarest_labeled_mean=_mean([p.rarest_labeled for p in cp]))
            )
    return rows


def aggregate(run_dirs: list[Path], finished_only: bool = True) -> list[Row]:
    """Mean ± std of test accuracy over repetitions for each run, setting and cycle (finished tasks only, when the
    run's manifest tells which tasks are finished)."""
    return summarise(read_points(run_dirs, finished_only))


_VARIANT_ORDER = {"plain": 0, "+PRE": 1, "+SEMI": 2, "+PRE+SEMI": 3}
_STRATEGY_ORDER = {name: i for i, name in enumerate(STRATEGY_NAMES)}


def _setting_order(setting: str) -> tuple:
    """Sort settings as the paper does: strategy, then variant (plain, +PRE, +SEMI, +PRE+SEMI), then the rest."""
    parts = dict(p.split("=", 1) for p in setting.split("/") if "=" in p)
    pre = parts.get("pretrain", "none") != "none"
    semi = parts.get("semi", "none") != "none"
    return (_STRATEGY_ORDER.get(parts.get("strategy", ""), len(_STRATEGY_ORDER)), semi, pre,
            parts.get("semi", "none") not in ("none", "lp"), setting)


def _with(setting: str, **values: str) -> str:
    """The setting with some of its parts changed, e.g. _with('strategy=coreset/semi=lp', strategy='random')."""
    parts = []
    for part in setting.split("/"):
        name = part.split("=", 1)[0]
        parts.append(f"{name}={values[name]}" if name in values else part)
    return "/".join(parts)


_SEMI_NAMES = {"fm": "fixmatch"}  # +SEMI methods other than the paper's label propagation, named in the variant


def _semi(setting: str) -> str:
    """The setting's semi part's value (none when it has none), e.g. 'lp' or 'fm'."""
    return next((p.split("=", 1)[1] for p in setting.split("/") if p.startswith("semi=")), "none")


def _variant_name(variant: str, setting: str) -> str:
    """The variant as shown: '+SEMI' for label propagation (the paper's), '+SEMI fixmatch' for FixMatch."""
    semi = _semi(setting)
    return variant if semi in ("none", "lp") else f"{variant} {_SEMI_NAMES.get(semi, semi)}"


def _references(setting: str) -> list[tuple[str, str]]:
    """(against, reference setting) pairs a setting is compared with: its plain variant, Random of the same variant
    and, for a +SEMI method other than label propagation, the same setting with label propagation."""
    out = [("plain", _plain(setting)), ("random", _random(setting))]
    if _semi(setting) not in ("none", "lp"):
        out.append(("lp", _with(setting, semi="lp")))
    return [(against, ref) for against, ref in out if ref != setting]


def _plain(setting: str) -> str:
    """The same strategy and other settings without pre-training or semi-supervision."""
    return _with(setting, semi="none", pretrain="none")


def _random(setting: str) -> str:
    """Random with the same variant and other settings."""
    return _with(setting, strategy="random")


# ----------------------------------------------------------------------------- pure computations


def area_under_curve(labels: np.ndarray, accuracy: np.ndarray) -> float:
    """Trapezoidal area under accuracy(labels) divided by the labels range: a mean accuracy over the range, in the
    accuracy's unit. One point (or a zero range): its (mean) accuracy."""
    x = np.asarray(labels, dtype=np.float64)
    y = np.asarray(accuracy, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape or x.size == 0:
        raise ValueError(f"labels {x.shape} and accuracy {y.shape} must be the same non-empty [n]")
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    span = x[-1] - x[0]
    if span == 0:
        return float(y.mean())
    return float(np.sum((y[1:] + y[:-1]) / 2.0 * np.diff(x)) / span)


def labels_to_reach(labels: np.ndarray, accuracy: np.ndarray, target: float) -> tuple[float, str]:
    """The smallest number of labels at which the piecewise-linear curve accuracy(labels) reaches target, and its
    relation: "=" (reached at a point or between two), "<=" (the first point is already above: its labels),
    ">" (never reached: the largest labels)."""
    x = np.asarray(labels, dtype=np.float64)
    y = np.asarray(accuracy, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape or x.size == 0:
        raise ValueError(f"labels {x.shape} and accuracy {y.shape} must be the same non-empty [n]")
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
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
    out = []
    for (run, setting), pts in groups.items():
        for against, ref in _references(setting):
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
    out = []
    for (run, setting), pts in groups.items():
        for against, ref in _references(setting):
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
    rarest: dict[str, tuple[int, int]] = field(default_factory=dict)  # skewed run -> (rarest class, pool images)


TABLES: dict[str, type] = {"rows": Row, "auc": Area, "auc_paired": PairedArea, "labels_saved": LabelsSaved,
                           "paired": Paired, "winners": Winner}  # json keys / csv `table` values, in output order


def figures(points: list[Point], metric: str = "accuracy") -> Figures:
    """All figures of a report from the repetitions' points (whose `accuracy` holds the test figure `metric`)."""
    rows = summarise(points)
    return Figures(rows=rows, auc=auc_table(points), auc_paired=paired_auc(points), labels_saved=labels_saved(rows),
                   paired=paired(points), winners=winners(rows), metric=metric, rarest=_skewed_runs(points))


def _skewed_runs(points: list[Point]) -> dict[str, tuple[int, int]]:
    """Runs whose pool is skewed (`_rarest`): run -> (rarest class, its pool images)."""
    out: dict[str, tuple[int, int]] = {}
    for p in points:
        if p.rarest_class is not None and p.run not in out:
            out[p.run] = (p.rarest_class, p.rarest_pool)  # type: ignore[assignment]
    return out


_METRIC_NAMES = {"accuracy": "accuracy", "balanced_accuracy": "balanced accuracy", "macro_f1": "macro-F1"}


# ----------------------------------------------------------------------------- rendering


def _extra(r: Row | Area | PairedArea | LabelsSaved | Paired) -> str:
    """Swept parameters other than strategy / variant, e.g. ' (budget=100)'."""
    parts = [p for p in r.setting.split("/") if p.split("=", 1)[0] not in ("strategy", "semi", "pretrain")]
    return f" ({', '.join(parts)})" if parts else ""


def _span(values: list[int]) -> str:
    """'3' or '2–3'."""
    lo, hi = min(values), max(values)
    return f"{lo}" if lo == hi else f"{lo}–{hi}"


def _count(x: float) -> str:
    """A number of labels, rounded half up."""
    return f"{math.floor(x + 0.5):d}"


def _pivot(lead: list[str], tail: list[str], lines: list[tuple[list[str], dict[int, str], list[str]]]) -> list[str]:
    """A markdown table: lead columns, one column per number of labels (union over the lines; '' where a line has
    none), tail columns."""
    labels = sorted({n for _, cells, _ in lines for n in cells})
    out = ["| " + " | ".join([*lead, *map(str, labels), *tail]) + " |",
           "|" + "---|" * len(lead) + "---:|" * (len(labels) + len(tail))]
    for head, cells, rest in lines:
        out.append("| " + " | ".join([*head, *(cells.get(n, "") for n in labels), *rest]) + " |")
    return out


def _grouped(items: list, key: Callable[[object], object]) -> dict[object, list]:
    """Items grouped by key(item), in order of first appearance."""
    groups: dict[tuple, list] = {}
    for it in items:
        groups.setdefault(key(it), []).append(it)
    return groups


def _accuracy(mean: float, std: float) -> str:
    return "n/a" if np.isnan(mean) else f"{mean:.2f} ± {std:.2f}"


def _long_table(rows: list[Row], metric: str = "accuracy") -> list[str]:
    out = [f"| run | strategy | variant | cycle | labels | {_METRIC_NAMES[metric]} (%) | reps |",
           "|---|---|---|---:|---:|---|---:|"]
    for r in rows:
        acc = "n/a (no test set)" if np.isnan(r.accuracy_mean) else f"{r.accuracy_mean:.2f} ± {r.accuracy_std:.2f}"
        out.append(f"| {r.run} | {r.strategy}{_extra(r)} | {r.variant} | {r.cycle} | {r.n_labeled} | {acc} |"
                   f" {r.repetitions} |")
    return out


def _wide_table(rows: list[Row], metric: str = "accuracy") -> list[str]:
    out = [f"Test {_METRIC_NAMES[metric]} (%), mean ± std over repetitions; columns: number of labeled images:"]
    for run, group in _grouped(rows, lambda r: r.run).items():
        lines = []
        for setting_rows in _grouped(group, lambda r: r.setting).values():
            r0 = setting_rows[0]
            lines.append(([run, f"{r0.strategy}{_extra(r0)}", r0.variant],
                          {r.n_labeled: _accuracy(r.accuracy_mean, r.accuracy_std) for r in setting_rows},
                          [_span([r.repetitions for r in setting_rows])]))
        out += ["", *_pivot(["run", "strategy", "variant"], ["reps"], lines)]
    return out


def _pseudo_cell(r: Row) -> str:
    """'766 (90.0%)': the mean number of pseudo-labels and, when known, their mean accuracy."""
    if r.n_pseudo_mean is None:
        return ""
    correct = "" if r.pseudo_accuracy_mean is None else f" ({r.pseudo_accuracy_mean:.1f}%)"
    return f"{_count(r.n_pseudo_mean)}{correct}"


def _pseudo_table(rows: list[Row]) -> list[str]:
    """The pseudo-label section: a line per setting that trains on any pseudo-labels; empty when none does."""
    with_pseudo = {(r.run, r.setting) for r in rows if (r.n_pseudo_mean or 0) > 0}
    if not with_pseudo:
        return []
    out = ["", "Pseudo-labels: mean number of pseudo-labeled images trained on over repetitions (in brackets: mean %"
           " correct where the true labels are known; label propagation's over every propagated label); columns:"
           " number of labeled images:"]
    for run, group in _grouped([r for r in rows if (r.run, r.setting) in with_pseudo], lambda r: r.run).items():
        lines = []
        for setting_rows in _grouped(group, lambda r: r.setting).values():
            r0 = setting_rows[0]
            lines.append(([run, f"{r0.strategy}{_extra(r0)}", r0.variant],
                          {r.n_labeled: _pseudo_cell(r) for r in setting_rows}, []))
        out += ["", *_pivot(["run", "strategy", "variant"], [], lines)]
    return out


def render_markdown(figs: Figures, long: bool = False) -> str:
    """The accuracy table (wide: a line per strategy x variant and a column per number of labels; long=True: a
    line per setting and cycle), then the best variant, AUC, labels saved, paired differences and pseudo-labels."""
    out = _long_table(figs.rows, figs.metric) if long else _wide_table(figs.rows, figs.metric)
    if figs.winners:
        out += ["", "Best variant at each number of labels (highest mean accuracy):", "",
                f"| run | strategy | cycle | labels | best variant | {_METRIC_NAMES[figs.metric]} (%) | ahead of |"
                " by (points) |",
                "|---|---|---:|---:|---|---:|---|---:|"]
        out += [f"| {w.run} | {w.strategy} | {w.cycle} | {w.n_labeled} | {w.variant} | {w.accuracy_mean:.2f} |"
                f" {w.runner_up} | {w.margin:.2f} |" for w in figs.winners]
    if figs.auc:
        out += ["", f"Area under the budget curve: trapezoidal mean {_METRIC_NAMES[figs.metric]} (%) over the labels"
                " range, per repetition;"
                " mean ± std over repetitions:", "",
                "| run | strategy | variant | labels | cycles | AUC (%) | reps |", "|---|---|---|---|---:|---:|---:|"]
        out += [f"| {a.run} | {a.strategy}{_extra(a)} | {a.variant} | {a.labels_min}–{a.labels_max} | {a.cycles} |"
                f" {a.auc_mean:.2f} ± {a.auc_std:.2f} | {a.repetitions} |" for a in figs.auc]
    if figs.auc_paired:
        out += ["", "Paired AUC differences (points, setting - reference): per repetition the difference of the two"
                " areas over the cycles both have; mean ± half-width of its 95% t-interval (none with fewer than 2"
                " pairs):", "", "| run | strategy | variant | against | labels | cycles | AUC difference | pairs |",
                "|---|---|---|---|---|---:|---:|---:|"]
        out += [f"| {a.run} | {a.strategy}{_extra(a)} | {a.variant} | {a.reference_strategy} {a.reference_variant} |"
                f" {a.labels_min}–{a.labels_max} | {a.cycles} | {a.difference_mean:+.2f}"
                + ("" if a.ci_high is None else f" ± {a.ci_high - a.difference_mean:.2f}") + f" | {a.pairs} |"
                for a in figs.auc_paired]
    if figs.labels_saved:
        out += ["", "Labels saved against Random of the same variant and settings (in brackets: the labels Random"
                " needs to reach the same mean accuracy, linear interpolation of its mean curve; > : not within its"
                " range); columns: number of labeled images:"]
        sign = {"=": "", "<=": "≤ ", ">": "> "}
        for run, group in _grouped(figs.labels_saved, lambda s: s.run).items():
            lines = []
            for items in _grouped(group, lambda s: s.setting).values():
                s0 = items[0]
                lines.append(([run, f"{s0.strategy}{_extra(s0)}", s0.variant],
                              {s.n_labeled: f"{sign[s.relation]}{_count(s.saved)} ({sign[s.relation]}"
                                            f"{_count(s.random_labels)})" for s in items}, []))
            out += ["", *_pivot(["run", "strategy", "variant"], [], lines)]
    if figs.paired:
        out += ["", "Paired differences at the same number of labels (points, setting - reference): mean of the"
                " per-repetition differences ± half-width of its 95% t-interval (none with fewer than 2 pairs);"
                " columns: number of labeled images:"]
        for run, group in _grouped(figs.paired, lambda p: p.run).items():
            lines = []
            for items in _grouped(group, lambda p: (p.setting, p.against)).values():
                p0 = items[0]
                cells = {p.n_labeled: f"{p.difference_mean:+.2f}"
                         + ("" if p.ci_high is None else f" ± {p.ci_high - p.difference_mean:.2f}") for p in items}
                lines.append(([run, f"{p0.strategy}{_extra(p0)}", p0.variant,
                               f"{p0.reference_strategy} {p0.reference_variant}"], cells,
                              [_span([p.pairs for p in items])]))
            out += ["", *_pivot(["run", "strategy", "variant", "against"], ["pairs"], lines)]
    out += _pseudo_table(figs.rows)
    out += _rarest_table(figs)
    out += _time_ratio_table(figs.rows)
    return "\n".join(out)


def _rarest_table(figs: Figures) -> list[str]:
    """Labeled images of the pool's rarest class per setting and number of labels, for runs whose pools are skewed
    (their classes' pool counts known and unequal); empty otherwise."""
    skewed = {r.run for r in figs.rows if r.rarest_labeled_mean is not None} & set(figs.rarest)
    if not skewed:
        return []
    out = ["", "Labeled images of the pool's rarest class (mean over repetitions); columns: number of labeled"
           " images:"]
    for run, group in _grouped([r for r in figs.rows if r.run in skewed], lambda r: r.run).items():
        c, n = figs.rarest[run]
        lines = []
        for setting_rows in _grouped(group, lambda r: r.setting).values():
            r0 = setting_rows[0]
            lines.append(([run, f"{r0.strategy}{_extra(r0)}", r0.variant, f"{c} ({n} in the pool)"],
                          {r.n_labeled: "" if r.rarest_labeled_mean is None else f"{r.rarest_labeled_mean:.1f}"
                           for r in setting_rows}, []))
        out += ["", *_pivot(["run", "strategy", "variant", "class"], [], lines)]
    return out


def _time_ratio_table(rows: list[Row]) -> list[str]:
    """Training time per cycle (training + propagation) of each +SEMI setting other than label propagation next
    to label propagation's (the same setting with semi=lp), and their ratio; empty when there is no such pair."""
    by = {(r.run, r.setting, r.n_labeled): r for r in rows}
    lines = []
    for run, group in _grouped([r for r in rows if _semi(r.setting) not in ("none", "lp")], lambda r: r.run).items():
        for setting_rows in _grouped(group, lambda r: r.setting).values():
            r0 = setting_rows[0]
            cells = {}
            for r in setting_rows:
                ref = by.get((run, _with(r.setting, semi="lp"), r.n_labeled))
                if ref is None or r.train_seconds_mean is None or not ref.train_seconds_mean:
                    continue
                cells[r.n_labeled] = (f"{r.train_seconds_mean:.1f} / {ref.train_seconds_mean:.1f}"
                                      f" ({r.train_seconds_mean / ref.train_seconds_mean:.2f}x)")
            if cells:
                lines.append(([run, f"{r0.strategy}{_extra(r0)}", r0.variant], cells, []))
    if not lines:
        return []
    return ["", "Training time per cycle (s, training + propagation, mean over repetitions) against label"
            " propagation's, and their ratio; columns: number of labeled images:", "",
            *_pivot(["run", "strategy", "variant"], [], lines)]


def _record(item: object) -> dict:
    """A dataclass as a dict, NaN as None."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(item).items()}


def render_csv(figs: Figures) -> str:
    """CSV with one header: `table` (rows | auc | auc_paired | labels_saved | paired | winners), then the union of
    the tables' fields; a field a table lacks is empty."""
    columns = ["table"]
    for cls in TABLES.values():
        columns += [f.name for f in fields(cls) if f.name not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    for name in TABLES:
        for item in getattr(figs, name):
            writer.writerow({"table": name, **asdict(item)})
    return buf.getvalue()


def render_json(figs: Figures) -> str:
    """JSON object {"rows": [...], "auc": [...], "auc_paired": [...], "labels_saved": [...], "paired": [...],
    "winners": [...]}; NaN and missing intervals are null."""
    return json.dumps({"metric": figs.metric, **{name: [_record(item) for item in getattr(figs, name)]
                                                 for name in TABLES}}, indent=2)


def plot(rows: list[Row], path: Path, metric: str = "accuracy") -> None:
    """Learning curves (accuracy vs labels) with ±std bands, one panel per run, like the paper's figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = sorted({r.run for r in rows})
    fig, axes = plt.subplots(1, len(runs), figsize=(6 * len(runs), 4.5), squeeze=False)
    for ax, run in zip(axes[0], runs):
        settings = sorted({r.setting for r in rows if r.run == run}, key=_setting_order)
        for s in settings:
            pts = sorted((r for r in rows if r.run == run and r.setting == s), key=lambda r: r.cycle)
            x = np.array([p.n_labeled for p in pts])
            y = np.array([p.accuracy_mean for p in pts])
            e = np.array([p.accuracy_std for p in pts])
            style = "-" if pts[0].variant == "plain" else "--" if "SEMI" in pts[0].variant else "-."
            (line,) = ax.plot(x, y, style, marker="o", label=f"{pts[0].strategy}{_extra(pts[0])} {pts[0].variant}")
            ax.fill_between(x, y - e, y + e, alpha=0.15, color=line.get_color())
        ax.set_title(run)
        ax.set_xlabel("labeled images")
        ax.set_ylabel(f"test {_METRIC_NAMES[metric]} (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    suffix = path.suffix.lower().lstrip(".")
    fig.savefig(buf, dpi=120, format=suffix if suffix in fig.canvas.get_supported_filetypes() else "png")
    plt.close(fig)
    store.atomic_write_bytes(path, buf.getvalue())  # exactly at `path`: its suffix's format (.pdf, .svg, ...), else PNG


def unfinished_lines(run_dirs: list[Path]) -> list[str]:
    """One line per planned task that is not finished (running, stopped, not started)."""
    lines = []
    for run in run_dirs:
        for st in task_statuses(run) or []:
            if st.state != "finished":
                detail = f" ({st.detail})" if st.detail else ""
                lines.append(f"{st.run} task {st.index} {st.key}: {st.state}, {st.cycles_done}/{st.cycles_total}"
                             f" cycles{detail}")
    return lines


def report(run_dir: Path | None, fmt: str, plot_path: Path | None = None,
           long: bool = False, metric: str = "accuracy") -> tuple[str, list[str]]:
    """(report text over one run directory, or every run under ./runs when None; lines naming unfinished tasks).
    long: the markdown accuracy table a line per setting and cycle instead of the wide one; metric: the test
    figure every table, AUC, labels saved and paired difference uses (accuracy, balanced_accuracy, macro_f1)."""
    if metric not in METRICS:
        raise UserError(f"--metric: {terminal(str(metric), limit=40)} is not one of {', '.join(METRICS)}")
    if plot_path is not None and plot_path.is_dir():
        raise UserError(f"--plot: {plot_path} is a folder; give a file name such as {plot_path / 'curves.png'}")
    if run_dir is None:
        runs = find_runs(Path("runs"))
        if not runs:
            raise UserError("no runs under ./runs; run `alctl cycle MANIFEST.yaml` first or pass a run directory")
    else:
        if not run_dir.is_dir():
            raise UserError(f"{run_dir}: run directory not found")
        runs = [run_dir] if (run_dir / "tasks").is_dir() else find_runs(run_dir)
        if not runs:
            raise UserError(f"{run_dir}: no tasks/ inside; is this a run directory (runs/<name>)?")
    figs = figures(read_points(runs, metric=metric), metric)
    missing = unfinished_lines(runs)
    if not figs.rows:
        detail = f"; {len(missing)} tasks not finished" if missing else ""
        raise UserError(f"{', '.join(map(str, runs))}: no finished task yet{detail}")
    if plot_path is not None:
        plot(figs.rows, plot_path, metric)
    if fmt == "markdown":
        return render_markdown(figs, long=long), missing
    renderers = {"csv": render_csv, "json": render_json}
    return renderers[fmt](figs), missing
