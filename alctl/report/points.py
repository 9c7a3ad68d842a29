"""Reading runs: every repetition's test figure at every cycle (`Point`), their mean over repetitions (`Row`),
and how the settings of a run name and order their references (plain, Random, label propagation)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from alctl import store
from alctl.config.schema import FixmatchConfig
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
    from alctl import config as mf
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


# fields of FixMatch's own section (a task key names a swept field by its last name): they mean nothing to label
# propagation or to training without unlabeled images, so those references are matched whatever they read there
_FIXMATCH_FIELDS = frozenset(FixmatchConfig.model_fields)


def _parts(setting: str) -> list[tuple[str, str]]:
    """The setting's (field, value) parts in order."""
    return [tuple(p.split("=", 1)) if "=" in p else (p, "") for p in setting.split("/")]  # type: ignore[misc]


def _present(exact: str, present: set[str]) -> str:
    """A reference setting as the run holds it: `exact` or, when the run has no such setting and the reference
    trains without FixMatch (a FixMatch-only value such as semi.fixmatch.prior_epochs: 15, excluded for the other
    methods), the one setting of the run with the same method that agrees on every part but FixMatch's own
    fields."""
    if exact in present or _semi(exact) not in ("none", "lp"):
        return exact
    mine = [(f, v) for f, v in _parts(exact) if f not in _FIXMATCH_FIELDS]
    found = [s for s in present if [(f, v) for f, v in _parts(s) if f not in _FIXMATCH_FIELDS] == mine]
    return found[0] if len(found) == 1 else exact


def _settings_by_run(keys: Any) -> dict[str, set[str]]:
    """Each run's settings, from (run, setting) pairs."""
    out: dict[str, set[str]] = {}
    for run, setting in keys:
        out.setdefault(run, set()).add(setting)
    return out


def _references(setting: str, present: set[str] | None = None) -> list[tuple[str, str]]:
    """(against, reference setting) pairs a setting is compared with: its plain variant, Random of the same variant
    and, for a +SEMI method other than label propagation, label propagation with the same other settings (each as
    the run holds it among `present`, its settings: `_present`)."""
    out = [("plain", _plain(setting)), ("random", _random(setting))]
    if _semi(setting) not in ("none", "lp"):
        out.append(("lp", _with(setting, semi="lp")))
    return [(against, _present(ref, present or set())) for against, ref in out if ref != setting]


def _plain(setting: str) -> str:
    """The same strategy and other settings without pre-training or semi-supervision."""
    return _with(setting, semi="none", pretrain="none")


def _random(setting: str) -> str:
    """Random with the same variant and other settings."""
    return _with(setting, strategy="random")


def _extra(r: Any) -> str:
    """Swept parameters other than strategy / variant, e.g. ' (budget=100)'."""
    parts = [p for p in r.setting.split("/") if p.split("=", 1)[0] not in ("strategy", "semi", "pretrain")]
    return f" ({', '.join(parts)})" if parts else ""
